"""EM checkpoints: the state of a fit saved every few iterations, so that a fit started again
with the same settings on the same data resumes where the last one stopped.

A checkpoint is one JSON file on the driver's file system (a local path, or a mounted one such
as ``/dbfs/...``): EM state lives on the driver (the client, on Spark Connect). It is written
atomically (a temporary file, fsync, rename), so a half-written checkpoint is never read, and
named by a fingerprint of everything that determines the fit, so a fit with other settings or
other data never picks it up. JSON only: nothing is unpickled or evaluated.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from spark_gmm import kernel

log = logging.getLogger("spark_gmm")

FORMAT_VERSION = 1


def local_dir(path: Optional[str]) -> Optional[str]:
    """``path`` as a directory of the driver's file system, or a clear error."""
    if not path:
        return None
    if path.startswith("file:"):
        path = path[len("file:") :]
        while path.startswith("//"):
            path = path[1:]
    elif "://" in path:
        raise ValueError(
            f"checkpointDir {path!r}: EM checkpoints are written by the driver, so it must be a "
            "directory of the driver's file system (local or mounted), not a distributed file "
            "system URI"
        )
    return path


@dataclass(frozen=True)
class Checkpoint:
    """The checkpoint file of one fit: its ``path`` and the ``fingerprint`` of the settings and
    data that determine the fit, which a saved state must match to be resumed."""

    path: str
    fingerprint: str

    @classmethod
    def for_fit(cls, settings, candidates: Sequence, report) -> Optional["Checkpoint"]:
        """The checkpoint of a fit, or None when checkpoints are off."""
        if not settings.checkpoint_dir or settings.checkpoint_interval < 1:
            return None

        def params(p):
            return None if p is None else kernel.params_to_dict(p)

        explicit = settings.explicit
        key = {
            "format": FORMAT_VERSION,
            "candidates": [[c.k, c.covariance_type, c.seed] for c in candidates],
            "init_mode": settings.init_mode,
            "tol": settings.tol,
            "reg_covar": settings.reg_covar,
            "recover_collapsed": settings.recover_collapsed,
            "features": [
                settings.features_col,
                settings.input_cols,
                settings.weight_col,
                settings.handle_invalid,
            ],
            "fixed": params(settings.fixed),
            "explicit": None
            if explicit is None
            else [
                None if a is None else a.tolist()
                for a in (explicit.means, explicit.weights, explicit.covariances)
            ],
            # rows with missing features only when there are some: the fingerprints of
            # complete inputs stay those of earlier versions (their checkpoints resume)
            "data": [report.n_input_rows, report.n_skipped, report.n_features, report.total_weight]
            + ([report.n_incomplete] if report.n_incomplete else []),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return cls(os.path.join(settings.checkpoint_dir, f"spark_gmm-{digest[:24]}.json"), digest)

    def load(self) -> Optional[kernel.EMState]:
        """The saved state, or None when there is none (an unreadable one is ignored, with a
        warning: it cannot have been written completely)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable checkpoint %s (%s)", self.path, exc)
            return None
        try:
            if data["format"] != FORMAT_VERSION or data["fingerprint"] != self.fingerprint:
                log.warning("ignoring the checkpoint %s: written by another fit", self.path)
                return None
            state = kernel.EMState.from_dict(data["state"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring the malformed checkpoint %s (%s)", self.path, exc)
            return None
        log.info("resuming from checkpoint %s at iteration %d", self.path, state.iteration)
        return state

    def save(self, state: kernel.EMState) -> None:
        """Writes the state atomically: readers see the previous checkpoint or this one."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        temporary = f"{self.path}.tmp-{os.getpid()}"
        payload = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "state": state.to_dict(),
        }
        with open(temporary, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, self.path)
        log.info("checkpoint at iteration %d: %s", state.iteration, self.path)

    def remove(self) -> None:
        """Removes the checkpoint and any temporary file of a writer killed mid-save."""
        for path in [self.path] + glob.glob(glob.escape(self.path) + ".tmp-*"):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
