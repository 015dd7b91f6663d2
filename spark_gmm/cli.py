"""The command line of the batch jobs: ``spark-gmm JOB ...``, ``python -m spark_gmm.cli JOB ...``
and the console scripts (the jobs themselves live in :mod:`spark_gmm.jobs`)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from spark_gmm import config as _config
from spark_gmm.jobs.errors import EXIT_CONFIG
from spark_gmm.jobs.fit import main_fit
from spark_gmm.jobs.sample import main_sample
from spark_gmm.jobs.score import main_score
from spark_gmm.jobs.select import main_select

__all__ = ["main", "main_fit", "main_score", "main_select", "main_sample"]

_MAINS = {"fit": main_fit, "score": main_score, "select": main_select, "sample": main_sample}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m spark_gmm.cli JOB [flags]`` / ``spark-gmm JOB [flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _MAINS:
        out = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        print("usage: spark-gmm {fit,score,select,sample} [--help] [flags...]", file=out)
        for name, spec in _config.JOBS.items():
            print(f"  {name:<7} {spec.description}", file=out)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"spark-gmm: error: unknown job {argv[0]!r}", file=sys.stderr)
        return 0 if out is sys.stdout else EXIT_CONFIG
    return _MAINS[argv[0]](argv[1:])


if __name__ == "__main__":  # python -m spark_gmm.cli JOB ...
    sys.exit(main())
