"""SparkSession construction shared by the subprocess test scripts.

Scripts are run as ``python tests/scripts/<name>.py ...`` so this directory is
``sys.path[0]`` and ``import _session`` works without installing anything.

``--master local[2]`` / ``--master local-cluster[2,1,1024]`` gives a classic
session, ``--remote sc://host:port`` a Spark Connect one.  Without either the
``SPARK_REMOTE`` environment variable (if set) is honoured, else local[2].
"""

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# The driver side of a script imports the package from the checkout too
# (as the Python workers do through PYTHONPATH), installed or not.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))


def add_session_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--master", default=None, help="classic master, e.g. local[2]")
    g.add_argument("--remote", default=None, help="Spark Connect URL sc://host:port")
    return parser


def _python_worker_env() -> None:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    pp = os.environ.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")


def _private_spark_home() -> str:
    """A SPARK_HOME made of symlinks to the installed pyspark's entries.

    local-cluster Workers put their work dirs (executor stdout/stderr, app
    files) into ``$SPARK_HOME/work`` -- for a pip-installed pyspark that is
    inside site-packages.  Pointing SPARK_HOME at a temporary mirror keeps
    the installed package clean; the mirror is removed at exit unless
    SPARK_GMM_KEEP_SPARK_HOME is set (to read executor logs).
    """
    import pyspark

    real = Path(pyspark.__file__).resolve().parent
    home = Path(tempfile.mkdtemp(prefix="spark-home-"))
    for entry in real.iterdir():
        if entry.name != "work":
            (home / entry.name).symlink_to(entry)
    (home / "work").mkdir()
    if not os.environ.get("SPARK_GMM_KEEP_SPARK_HOME"):
        atexit.register(shutil.rmtree, home, True)
    else:
        print(f"local-cluster SPARK_HOME (kept): {home}", file=sys.stderr)
    return str(home)


def make_session(
    master: str | None = None, remote: str | None = None, app_name: str = "spark-gmm-test-script"
):
    """Return ``(spark, mode)`` where mode is 'classic' or 'connect'."""
    from pyspark.sql import SparkSession

    if master is None and remote is None:
        remote = os.environ.get("SPARK_REMOTE") or None
        if remote is None:
            master = "local[2]"

    if remote is not None:
        os.environ.pop("SPARK_REMOTE", None)  # builder.remote() is explicit
        spark = SparkSession.builder.remote(remote).appName(app_name).getOrCreate()
        return spark, "connect"

    for var in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
        os.environ.pop(var, None)
    _python_worker_env()
    b = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.memory", "1g")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        .config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .config("spark.executorEnv.OPENBLAS_NUM_THREADS", "1")
        .config("spark.executorEnv.MKL_NUM_THREADS", "1")
    )
    if master.startswith("local-cluster"):
        os.environ["SPARK_HOME"] = _private_spark_home()
        # local-cluster[N,cores,memMB]: executors must fit into a worker.
        b = b.config("spark.executor.memory", "768m")
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark, "classic"
