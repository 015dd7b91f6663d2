"""The fit job: `python jobs/fit.py --help`, or `spark-submit ... jobs/fit.py ...` (see README)."""

import sys

try:
    from spark_gmm.cli import main_fit
except ImportError:  # a checkout without `pip install -e .`: use the package beside jobs/
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from spark_gmm.cli import main_fit

if __name__ == "__main__":
    sys.exit(main_fit())
