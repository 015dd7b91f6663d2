"""The sample job: `python jobs/sample.py --help`, or `spark-submit ... jobs/sample.py ...`
(docs/jobs.md)."""

import sys

try:
    from spark_gmm.cli import main_sample
except ImportError:  # a checkout without `pip install -e .`: use the package beside jobs/
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from spark_gmm.cli import main_sample

if __name__ == "__main__":
    sys.exit(main_sample())
