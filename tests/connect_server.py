"""Start and stop a local Spark Connect server for the test-suite.

The server is launched from the pip-installed PySpark (``SPARK_HOME`` is the
directory of the ``pyspark`` package; PySpark 4.x bundles
``jars/spark-connect_2.13-<version>.jar``) with::

    $SPARK_HOME/bin/spark-submit \
        --class org.apache.spark.sql.connect.service.SparkConnectServer \
        --master local[2] --conf spark.connect.grpc.binding.port=<port> ...

The server's Python workers run *our* UDFs, so the server process gets
``PYSPARK_PYTHON=sys.executable`` and a ``PYTHONPATH`` containing the repo
root.  Everything the server starts lives in its own process group, which is
killed on :meth:`ConnectServer.stop`.

Usable stand-alone for manual experiments::

    python tests/connect_server.py          # prints the sc:// URL, Ctrl-C stops
"""

from __future__ import annotations

import atexit
import glob
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import class_archive

REPO_ROOT = Path(__file__).resolve().parent.parent

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


class ConnectServerUnavailable(RuntimeError):
    """The installed PySpark does not ship what is needed to run a server."""


def spark_home() -> Path:
    """SPARK_HOME of the *installed* pyspark (the package directory)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def connect_jar(home: Path | None = None) -> Path | None:
    home = home or spark_home()
    jars = sorted(glob.glob(str(home / "jars" / "spark-connect_*.jar")))
    return Path(jars[0]) if jars else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _prepend_path(value: str, existing: str | None) -> str:
    return value if not existing else value + os.pathsep + existing


# Every JVM of the test run (the in-process session, and the jobs, scripts, servers and clusters
# our subprocesses start) runs with the C1 compiler alone and the serial collector. The run is
# CPU-bound (two test processes and the compat suite on two cores), and most of these JVMs live
# for seconds to a few minutes: C2's compiling costs more CPU than its faster code saves.
# Measured (CPU-seconds busy from /proc/stat; `pytest -n 0 -p no:cacheprovider` with
# JDK_JAVA_OPTIONS set for the in-process session, one after the other):
# tests/test_hostile_input.py 221 default, 181 with these options, wall 143 s vs 149 s;
# test_hostile_input + test_estimator + test_selection 373 default, 331 with C1 alone, 302 with
# both. `python jobs/fit.py --demo`: 50.7 and 51.0 with C2, 31.2 and 36.0 with C1 alone.
# Java prints one "NOTE: Picked up JDK_JAVA_OPTIONS" line per subprocess JVM on stderr.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def jvm_options_for_tests() -> str:
    """TEST_JVM_OPTIONS, and the class archive once it is made (tests/class_archive.py)."""
    return f"{TEST_JVM_OPTIONS} {class_archive.jvm_options()}".strip()


def python_env(base: dict | None = None) -> dict:
    """Environment for any process that runs (or spawns) our Python code.

    * PYSPARK_PYTHON / PYSPARK_DRIVER_PYTHON = this interpreter (the venv's),
      so Python workers can import pyarrow, numpy and our package;
    * PYTHONPATH starts with the repo root;
    * single-threaded BLAS (2-core machine, several worker processes);
    * JVMs with the C1 compiler only and the serial collector (TEST_JVM_OPTIONS), and
      the class archive;
    * no inherited Spark Connect switches (they flip pyspark into remote mode).
    """
    env = dict(os.environ if base is None else base)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["PYTHONPATH"] = _prepend_path(str(REPO_ROOT), env.get("PYTHONPATH"))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("JDK_JAVA_OPTIONS", jvm_options_for_tests())
    for var in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        env.pop(var, None)
    return env


try:  # resolved here, not in the forked child (no imports between fork and exec)
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except Exception:  # noqa: BLE001 - not Linux
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: SIGTERM the server (the JVM, after exec) if the process that
    started it dies without running its teardown (e.g. pytest killed)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


_LIVE: "set[ConnectServer]" = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop(grace=10.0)


class ConnectServer:
    """A Spark Connect server child process (``local[2]`` master)."""

    def __init__(
        self,
        log_dir: Path | str,
        port: int | None = None,
        master: str = "local[2]",
        extra_conf: dict | None = None,
        driver_memory: str = "2g",
    ):
        self.log_dir = Path(log_dir)
        self.port = port or free_port()
        self.master = master
        self.extra_conf = dict(extra_conf or {})
        self.driver_memory = driver_memory
        self.proc: subprocess.Popen | None = None
        self.log_path = self.log_dir / "connect-server.log"
        self.startup_seconds: float | None = None
        self._log_file = None
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        return f"sc://localhost:{self.port}"

    def command(self) -> list[str]:
        home = spark_home()
        conf = {
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.sql.warehouse.dir": str(self.log_dir / "spark-warehouse"),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={self.log_dir}",
            "spark.executorEnv.PYTHONPATH": str(REPO_ROOT),
            "spark.executorEnv.OMP_NUM_THREADS": "1",
            "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
            "spark.executorEnv.MKL_NUM_THREADS": "1",
            "spark.pyspark.python": sys.executable,
            "spark.pyspark.driver.python": sys.executable,
        }
        conf.update(self.extra_conf)
        cmd = [
            str(home / "bin" / "spark-submit"),
            "--class",
            SERVER_CLASS,
            "--name",
            "spark-gmm-tests-connect-server",
            "--master",
            self.master,
            "--driver-memory",
            self.driver_memory,
        ]
        for k, v in conf.items():
            cmd += ["--conf", f"{k}={v}"]
        # No primary resource: the class is on the classpath (pyspark/jars)
        # and spark-submit's launcher supplies "spark-internal" for it.
        return cmd

    def start(self, timeout: float = 120.0) -> "ConnectServer":
        home = spark_home()
        if connect_jar(home) is None:
            import pyspark

            raise ConnectServerUnavailable(
                f"no spark-connect_*.jar in {home / 'jars'} (PySpark {pyspark.__version__}; "
                "the pip package ships the server jar from Spark 4.0 on)"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = python_env()
        env["SPARK_HOME"] = str(home)
        env["SPARK_CONNECT_MODE"] = "0"  # the server itself is classic Spark
        env.setdefault("SPARK_CONF_DIR", str(self.log_dir / "conf"))  # ignore stray confs
        (self.log_dir / "conf").mkdir(exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(self.log_dir),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group -> killpg at stop()
            preexec_fn=_die_with_parent,
        )
        _LIVE.add(self)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(
                    f"Spark Connect server exited with code {code} "
                    f"before accepting connections. Log tail:\n{tail}"
                )
            if _port_open(self.port):
                break
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(
                    f"Spark Connect server did not open port {self.port} within "
                    f"{timeout:.0f}s. Log tail:\n{tail}"
                )
            time.sleep(0.25)
        self.startup_seconds = time.monotonic() - t0
        return self

    def log_tail(self, n: int = 80) -> str:
        try:
            if self._log_file is not None:
                self._log_file.flush()
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole process group, SIGKILL after ``grace`` seconds."""
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session=True: pid == pgid
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            # the JVM is gone (or hung): make sure nothing of the group survives
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.returncode = proc.returncode
        _LIVE.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "ConnectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # manual use: python tests/connect_server.py
    import tempfile

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    d = tempfile.mkdtemp(prefix="spark-connect-")
    srv = ConnectServer(d)
    try:
        srv.start()
        print(f"{srv.url}  (started in {srv.startup_seconds:.1f}s, log {srv.log_path})", flush=True)
        while srv.proc is not None and srv.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
