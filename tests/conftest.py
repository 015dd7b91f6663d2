"""Shared fixtures.

* ``spark``           -- ONE classic ``local[2]`` SparkSession for the whole run.
* ``run_script``      -- run a Python script in a subprocess with the right
                         environment (venv interpreter for Python workers,
                         repo root on PYTHONPATH, single-threaded BLAS).
* ``run_json_script`` -- same, and return the JSON file the script wrote.
* ``connect_url``     -- a Spark Connect server (started once per session,
                         always stopped); clients run in subprocesses with
                         ``--remote <url>`` / ``SPARK_REMOTE``.
* ``local_cluster_master`` -- master string for the local-cluster harness
                         (separate executor JVMs); use it in subprocess
                         scripts only, and only in one test module run.

Tests that use ``connect_url`` are marked ``connect``, tests that use
``local_cluster_master`` are marked ``cluster`` (and both ``slow``)
automatically, so ``-m "not connect"`` etc. work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SCRIPTS_DIR = TESTS_DIR / "scripts"

if str(TESTS_DIR) not in sys.path:  # make ``import connect_server`` work
    sys.path.insert(0, str(TESTS_DIR))

import class_archive  # noqa: E402
from connect_server import (  # noqa: E402
    TEST_JVM_OPTIONS,  # noqa: F401  (test_artifact imports it from here)
    ConnectServer,
    ConnectServerUnavailable,
    jvm_options_for_tests,
    python_env,
)

LOCAL_CLUSTER_MASTER = "local-cluster[2,1,1024]"
SCRIPT_TIMEOUT = float(os.environ.get("SPARK_GMM_TEST_SCRIPT_TIMEOUT", "900"))

# --------------------------------------------------------------------------
# Environment of THIS process.  Must happen before any SparkContext starts:
# the JVM launched by pyspark (and the Python workers it forks) inherit it.
# Without PYSPARK_PYTHON the workers run whatever ``python3`` is on PATH,
# which is not the venv and cannot import pyarrow / our package.
# --------------------------------------------------------------------------
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
for _var in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
    os.environ.pop(_var, None)  # the in-process session is always classic
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
_pp = os.environ.get("PYTHONPATH", "")
if str(REPO_ROOT) not in _pp.split(os.pathsep):
    os.environ["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + _pp if _pp else "")


# Test processes (pytest-xdist, `-n 2 --dist loadscope` in pyproject): a module stays in one
# process, so its module fixtures run once; the modules that use the Connect server share one
# process, so the run starts one server, not one per process.
# (xdist's own `--dist loadgroup` cannot do this under pytest 9: it renames `item._nodeid`,
# which pytest 9 no longer reports.)
CONNECT_SERVER_MODULES = frozenset(
    {"tests/test_dropin.py", "tests/test_connect.py", "tests/test_benchmarks.py"}
)


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "connect-server" if module in CONNECT_SERVER_MODULES else module

    return ModuleScheduling(config, log)


# The integration tier (`pytest -m integration`, README "Tests"): whatever needs separate
# executor JVMs (the `cluster` marker: local-cluster, a standalone cluster, the wheel in a fresh
# venv on local-cluster, host loss), and these modules: the PySpark 3.5 environment's
# round trip, the benchmarks' smoke runs, the soak test. The default run leaves them out
# (pyproject addopts: -m "not integration").
INTEGRATION_MODULES = frozenset(
    {"tests/test_cross_version.py", "tests/test_benchmarks.py", "tests/test_soak.py"}
)


@pytest.hookimpl(tryfirst=True)  # before pytest's -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    connect_modules = set()
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "connect_url" in names:
            item.add_marker(pytest.mark.connect)
            item.add_marker(pytest.mark.slow)
            connect_modules.add(item.nodeid.split("::")[0])
        if "local_cluster_master" in names:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("cluster") or (
            item.nodeid.split("::")[0] in INTEGRATION_MODULES
        ):
            item.add_marker(pytest.mark.integration)
    if connect_modules - CONNECT_SERVER_MODULES:
        warnings.warn(
            pytest.PytestWarning(
                f"{sorted(connect_modules - CONNECT_SERVER_MODULES)} use the Connect server: add "
                "them to CONNECT_SERVER_MODULES (tests/conftest.py), or their test process starts "
                "a second server"
            )
        )
    # a run with subprocess JVMs makes the class archive they map, if missing
    # (tests/class_archive.py; in the background: the first ones start without it)
    if not config.option.collectonly and any(item.get_closest_marker("slow") for item in items):
        class_archive.start_making(python_env())


# --------------------------------------------------------------------------
# classic in-process session
# --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    base = tmp_path_factory.mktemp("spark")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("spark-gmm-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.memory", "2g")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.warehouse.dir", str(base / "spark-warehouse"))
        .config(
            "spark.driver.extraJavaOptions", f"-Dderby.system.home={base} {jvm_options_for_tests()}"
        )
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .config("spark.executorEnv.OPENBLAS_NUM_THREADS", "1")
        .config("spark.executorEnv.MKL_NUM_THREADS", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("WARN")
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture
def spark_tmp_dir(tmp_path):
    """A fresh directory for Spark to write into (save/load round trips)."""
    d = tmp_path / "spark-out"
    d.mkdir()
    return d


# --------------------------------------------------------------------------
# subprocess scripts
# --------------------------------------------------------------------------
def script_env(extra: dict | None = None) -> dict:
    env = python_env()
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def _tail(text: str, n: int = 60) -> str:
    lines = (text or "").splitlines()
    return "\n".join(lines[-n:])


def _run_script(script, *args, env=None, timeout=SCRIPT_TIMEOUT, check=True, cwd=None):
    script = Path(script)
    if not script.is_absolute():
        script = SCRIPTS_DIR / script
    cmd = [sys.executable, str(script), *map(str, args)]
    proc = subprocess.run(
        cmd,
        cwd=str(cwd or REPO_ROOT),
        env=script_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"script failed with exit code {proc.returncode}: {' '.join(cmd)}\n"
            f"--- stdout (tail) ---\n{_tail(proc.stdout)}\n"
            f"--- stderr (tail) ---\n{_tail(proc.stderr)}",
            pytrace=False,
        )
    return proc


def _run_json_script(script, *args, out, env=None, timeout=SCRIPT_TIMEOUT):
    out = Path(out)
    proc = _run_script(script, *args, "--out", out, env=env, timeout=timeout)
    if not out.exists():
        pytest.fail(
            f"script did not write {out}\n--- stderr (tail) ---\n{_tail(proc.stderr)}",
            pytrace=False,
        )
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def run_script():
    """``run_script(script, *args, env=None, timeout=..., check=True)``.

    ``script`` is a path, or a file name relative to ``tests/scripts``.
    Returns the ``CompletedProcess`` (stdout/stderr as text); fails the test
    with the output tails if the exit code is non-zero and ``check``.
    """
    return _run_script


@pytest.fixture(scope="session")
def run_json_script():
    """``run_json_script(script, *args, out=path, env=None)`` -> parsed JSON.

    Appends ``--out <path>`` to the arguments.
    """
    return _run_json_script


# --------------------------------------------------------------------------
# Spark Connect
# --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    for attempt in (1, 2):  # a second try covers losing the free port to a race
        server = ConnectServer(tmp_path_factory.mktemp("connect-server"), driver_memory="2g")
        try:
            server.start(timeout=120)
            break
        except ConnectServerUnavailable as exc:
            pytest.skip(f"Spark Connect server not available: {exc}")
        except RuntimeError:
            if attempt == 2:
                raise
    print(
        f"\nSpark Connect server {server.url} up in {server.startup_seconds:.1f}s "
        f"(log: {server.log_path})"
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def connect_url(connect_server):
    """``sc://localhost:<port>`` of the session's Spark Connect server."""
    return connect_server.url


# --------------------------------------------------------------------------
# local-cluster
# --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def local_cluster_master():
    """Master string of the local-cluster harness: 2 executor JVMs, 1 core,
    1 GiB each.  Only for subprocess scripts (``--master`` of the scripts
    in ``tests/scripts`` sets ``spark.executorEnv.PYTHONPATH`` & co.); each
    run costs ~30 s, so start it once."""
    return LOCAL_CLUSTER_MASTER
