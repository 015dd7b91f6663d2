"""The score job: `python jobs/score.py --help`, or `spark-submit ... jobs/score.py ...`
(docs/jobs.md)."""

import sys

try:
    from spark_gmm.cli import main_score
except ImportError:  # a checkout without `pip install -e .`: use the package beside jobs/
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from spark_gmm.cli import main_score

if __name__ == "__main__":
    sys.exit(main_score())
