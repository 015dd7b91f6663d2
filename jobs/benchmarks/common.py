"""What the benchmarks in this folder share: spark_gmm importable from this checkout, the Python
their Spark workers run, the SparkSession and the blob rows they fit.

The scripts run as ``python jobs/benchmarks/NAME.py``, so this folder is first on sys.path and
each imports this module (``import common``) before spark_gmm.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]

try:
    import spark_gmm  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: the package beside jobs/
    sys.path.insert(0, str(REPO))
    # the Python workers Spark starts import it too
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
    )

# Spark's Python workers (and a Connect session's driver side) run this interpreter
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def session(
    master: str = "local[2]", remote: Optional[str] = None, conf: Optional[Dict[str, str]] = None
):
    """A classic SparkSession on ``master`` with the UI and the console progress bar off, the
    log level ERROR and the benchmark's own settings ``conf`` (e.g. spark.driver.memory,
    spark.app.name); or, with ``remote`` (an sc:// URL), a Spark Connect session to that
    server, which keeps its own settings (``conf`` does not apply)."""
    from pyspark.sql import SparkSession

    if remote:
        return SparkSession.builder.remote(remote).getOrCreate()
    builder = (
        SparkSession.builder.master(master)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def blob_rows(
    n: int,
    d: int,
    k: int,
    separation: float,
    seed: int,
    scale: Tuple[float, float] = (1.0, 1.0),
):
    """Exactly ``n`` rows (an (n, d) float64 array) of ``spark_gmm.datasets.blobs``: k blobs
    of ceil(n / k) rows each (centres N(0, separation^2) per coordinate, each blob's standard
    deviation uniform in ``scale``), in their random order, cut to the first n."""
    from spark_gmm.datasets import blobs

    X, _ = blobs(math.ceil(n / k), d, k, separation, seed, scale=scale)
    return X[:n]


def connect_server_module():
    """tests/connect_server.py of this checkout (``ConnectServer`` starts a local Spark Connect
    server; ``python_env()`` is the environment of the processes that run spark_gmm), imported
    with tests/ on sys.path as it expects."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import connect_server

    return connect_server
