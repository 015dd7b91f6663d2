"""The pass-engine interface, and the one way every engine sums statistics.

:class:`PassEngine` is everything the initialisation and ``kernel.run_em`` ask of the data:
summed statistics of some passes, and rows gathered to the driver (samples). The engines
(:mod:`~spark_gmm.engine.driver`, :mod:`~spark_gmm.engine.resident`,
:mod:`~spark_gmm.engine.job_per_pass`) hold the same blocks per partition and sum the same
per-partition vectors in the same order (:func:`ordered_sum`), so they give bit-identical
results on the same partitioning. No pyspark here.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from spark_gmm import kernel
from spark_gmm.engine.blocks import GatherFunction, PassFunction


def _sum_in_order(pairs: Iterable[Tuple[int, np.ndarray]]) -> Optional[Tuple[int, np.ndarray]]:
    """(first pid, sum of the vectors in pid order) of (pid, vector) pairs; None if none."""
    pairs = sorted(pairs, key=lambda pair: pair[0])
    if not pairs:
        return None
    total = np.array(pairs[0][1], dtype=np.float64)
    for _, vector in pairs[1:]:
        total += vector
    return pairs[0][0], total


def sum_buckets(pairs: Iterable[Tuple[int, np.ndarray]], scale: int):
    """Tree level: (first pid, sum in pid order) of each bucket ``pid % scale`` present among
    (pid, vector) pairs. Summing per bucket, not per task, keeps the grouping the same
    whichever partition a bucket's rows were shuffled to."""
    buckets = {}
    for pid, vector in pairs:
        buckets.setdefault(pid % scale, []).append((pid, vector))
    return [_sum_in_order(group) for _, group in sorted(buckets.items())]


def ordered_sum(pairs: Iterable[Tuple[int, np.ndarray]], scale: Optional[int]) -> np.ndarray:
    """The sum of (pid, vector) pairs as every engine forms it: in pid order, through buckets
    ``pid % scale`` first when there is a tree level (:func:`tree_scale`)."""
    pairs = list(pairs)
    if scale:
        pairs = sum_buckets(pairs, scale)
    summed = _sum_in_order(pairs)
    if summed is None:
        raise ValueError("no rows reached the statistics pass")
    return summed[1]


def in_order(pieces: Iterable[Tuple[int, np.ndarray]]) -> Optional[np.ndarray]:
    """(pid, rows) pieces joined in pid order (None when there are none)."""
    pieces = sorted(pieces, key=lambda piece: piece[0])
    return np.concatenate([rows for _, rows in pieces]) if pieces else None


def tree_scale(n_partitions: int, depth: int) -> Optional[int]:
    """Buckets of the intermediate level, or None when a flat collect is cheaper
    (Spark's treeAggregate rule)."""
    if depth < 2 or n_partitions <= 1:
        return None
    scale = max(int(math.ceil(n_partitions ** (1.0 / depth))), 2)
    return scale if n_partitions > scale + n_partitions // scale else None


class PassEngine:
    """Runs statistics passes over a fit's rows, wherever they are held. Subclasses provide
    :meth:`run` (summed statistics vectors), :meth:`gather` (kept rows, in order) and
    :meth:`close` (frees what the engine holds)."""

    name: str  # what the fit summary reports: "driver", "resident" or "jobPerPass"
    reason: str = ""  # why a fit runs on this engine (set where it is chosen)
    n_features: int
    data_passes: int  # passes over the data run so far

    def close(self, failed: bool = False) -> None:
        """Frees what the engine holds; ``failed``: the fit ended in an error or an
        interrupt, so anything still running for it is cancelled at once."""

    def run(
        self, passes: Sequence[PassFunction], label: str, size: Optional[int] = None
    ) -> np.ndarray:
        """The summed statistics vectors of all ``passes``, concatenated (``size`` values in
        all, when the caller knows it)."""
        raise NotImplementedError

    def gather(self, function: GatherFunction, label: str) -> Optional[np.ndarray]:
        """The rows ``function`` keeps of every block (arrays of ``n_features + 1`` columns,
        features then weight), joined in partition and block order; None when none."""
        raise NotImplementedError

    def stats(
        self, passes: Sequence[PassFunction], shifts, types, label
    ) -> List[kernel.SufficientStats]:
        """Runs ``passes`` and splits the result into SufficientStats with the given shifts."""
        sizes = [
            kernel.SufficientStats.vector_size(*np.shape(shift), t)
            for shift, t in zip(shifts, types)
        ]
        vector = self.run(passes, label, size=sum(sizes))
        out, pos = [], 0
        for shift, covariance_type, size in zip(shifts, types, sizes):
            out.append(
                kernel.SufficientStats.from_vector(vector[pos : pos + size], shift, covariance_type)
            )
            pos += size
        return out

    def em_stats(self, candidates: Sequence[kernel.MixtureParams], label: str = "EM pass"):
        """E-step statistics of every candidate in one data pass (the ``run_em`` callback).
        Partitions' moments are summed around each candidate's :func:`kernel.pass_shift`
        and moved once, after the sum."""
        passes = [partial(kernel.accumulate_stats, params=p, moved=False) for p in candidates]
        summed = self.stats(
            passes,
            [kernel.pass_shift(p) for p in candidates],
            [p.covariance_type for p in candidates],
            label,
        )
        return [kernel.moved_stats(s, p) for s, p in zip(summed, candidates)]

    def hard_assignment_stats(
        self,
        centers_list: Sequence[np.ndarray],
        types: Sequence[str],
        label: str,
        scale: Optional[np.ndarray] = None,
    ):
        """Statistics of nearest-center assignments, one per (centers, covariance type), in
        one data pass (initialisation and data moments); distances in units of ``scale``."""
        passes = [
            partial(kernel.hard_assignment_stats, centers=centers, covariance_type=t, scale=scale)
            for centers, t in zip(centers_list, types)
        ]
        shifts = [kernel.moment_shift(c, t) for c, t in zip(centers_list, types)]
        return self.stats(passes, shifts, types, label)

    def sample(self, fraction: float, seed: int, limit: int):
        """(X, w) of at most ``limit`` distinct rows: those :func:`kernel.sample_rows` keeps
        (each with probability ``fraction``, by its content), rows with equal features merged
        (weights summed), the ``limit`` with the smallest hash kept, sorted by features
        (:func:`kernel.canonical_sample`). Neither the rows nor their order depend on how the
        data is partitioned or ordered, nor on the engine."""
        rows = self.gather(partial(kernel.sample_rows, fraction=fraction, seed=seed), "sample rows")
        if rows is None:
            rows = np.empty((0, self.n_features + 1))
        rows = kernel.canonical_sample(rows, seed, limit)
        return rows[:, :-1], rows[:, -1]

    def first_row(self) -> np.ndarray:
        """The first complete row of the data (an origin for offset-safe moments)."""
        rows = self.gather(_first_row_of_block, "first row")
        if rows is None:
            raise ValueError("no rows reached the pass")
        return rows[0, :-1]


def _first_row_of_block(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    X, w = kernel.complete_rows(X, w)  # an origin needs every feature
    return np.append(X[0], w[0])[None, :] if X.shape[0] else np.empty((0, X.shape[1] + 1))
