"""The select job: `python jobs/select_model.py --help`, or `spark-submit ... jobs/select_model.py`.

(Not named select.py: the folder of a script comes first on sys.path, and a select.py there
would hide the standard library's select module that Spark's Python code needs.)
"""

import sys

try:
    from spark_gmm.cli import main_select
except ImportError:  # a checkout without `pip install -e .`: use the package beside jobs/
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from spark_gmm.cli import main_select

if __name__ == "__main__":
    sys.exit(main_select())
