"""Proof that the fit job runs distributed: a real Spark standalone cluster on localhost.

A master and two workers are started from the installed PySpark (``$SPARK_HOME/bin/spark-class
org.apache.spark.deploy.master.Master`` / ``...worker.Worker``; SPARK_HOME is the pyspark
package folder), and the fit job runs with ``--master spark://127.0.0.1:<port>`` on demo data.
The package ships as the README's cluster recipe says: the built wheel copied to
``spark_gmm.zip``, with ``spark-submit --py-files``. The test checks the outputs, that the
wheel holds every module of the package, and that the executors (separate JVMs started by the
workers) imported spark_gmm from it. The cluster is always stopped: every daemon runs in its
own process group, killed in the fixture's teardown (and on interpreter exit / parent death as
a backstop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from connect_server import _die_with_parent, free_port, python_env, spark_home

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

WORKERS = 2
START_TIMEOUT = 90.0
SUBMIT_TIMEOUT = 300.0


def _cluster_env(tmp: Path) -> dict:
    env = python_env()
    # The executors must get spark_gmm from the shipped zip, not from the checkout.
    env["PYTHONPATH"] = os.pathsep.join(
        p
        for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p and Path(p).resolve() != REPO_ROOT
    )
    env["SPARK_HOME"] = str(spark_home())
    env["SPARK_CONF_DIR"] = str(tmp / "conf")  # no stray spark-defaults.conf / log4j2 config
    env["SPARK_LOG_DIR"] = str(tmp / "logs")
    env["SPARK_DAEMON_MEMORY"] = "512m"  # master and worker JVMs
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env["SPARK_LOCAL_DIRS"] = str(tmp / "local")
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    for d in ("conf", "logs", "local"):
        (tmp / d).mkdir(exist_ok=True)
    return env


class StandaloneCluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = _cluster_env(tmp)
        self.port = free_port()
        self.ui_port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _spawn(self, name: str, *args: str) -> None:
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [str(spark_home() / "bin" / "spark-class"), *args],
                cwd=str(self.tmp),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.procs.append(proc)

    def _alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as r:
                return int(json.load(r).get("aliveworkers", 0))
        except (OSError, ValueError):
            return -1

    def start(self) -> "StandaloneCluster":
        self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
        )
        for i in range(WORKERS):
            work = self.tmp / f"work{i}"
            work.mkdir()
            self._spawn(
                f"worker{i}",
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "1536m",
                "--webui-port",
                str(free_port()),
                "--work-dir",
                str(work),
                self.url,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while self._alive_workers() < WORKERS:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"standalone cluster did not come up ({self._alive_workers()} workers "
                    f"alive, {len(dead)} daemons exited):\n{self.log_tails()}"
                )
            time.sleep(0.5)
        return self

    def log_tails(self, n: int = 25) -> str:
        out = []
        for log in self.logs:
            try:
                lines = log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"--- {log.name} ---\n" + "\n".join(lines[-n:]))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs:  # workers and master: SIGTERM each process group
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever survived (executor JVMs are children of the workers)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    cluster = StandaloneCluster(tmp_path_factory.mktemp("standalone"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _wheel_as_zip(tmp: Path) -> Path:
    """The README's cluster recipe: ``pip wheel --no-deps -w dist .``, the wheel copied to
    ``spark_gmm.zip`` (Spark puts only .zip/.egg/.jar files of --py-files on the Python
    path)."""
    readme = (REPO_ROOT / "README.md").read_text()
    assert "pip wheel --no-deps -w dist ." in readme
    assert "cp dist/spark_gmm-*.whl spark_gmm.zip" in readme
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps"]
        + ["-w", str(dist), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    (wheel,) = dist.glob("spark_gmm-*-py3-none-any.whl")
    package = tmp / "spark_gmm.zip"
    package.write_bytes(wheel.read_bytes())
    with zipfile.ZipFile(package) as zf:  # every module of the package, subpackages too
        shipped = {n for n in zf.namelist() if n.endswith(".py")}
    expected = {
        p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "spark_gmm").rglob("*.py")
    }
    assert shipped == expected, expected ^ shipped
    return package


def test_fit_job_on_a_standalone_cluster(standalone_cluster, tmp_path):
    cluster = standalone_cluster
    package = _wheel_as_zip(tmp_path)
    out = tmp_path / "out"
    cmd = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        cluster.url,
        "--deploy-mode",
        "client",
        "--properties-file",
        str(REPO_ROOT / "conf" / "spark-cluster.properties"),
        # the small cluster: 2 workers x 1 core
        "--conf",
        "spark.executor.cores=1",
        "--conf",
        "spark.cores.max=2",
        "--conf",
        "spark.executor.memory=512m",
        "--conf",
        "spark.executor.memoryOverhead=384m",
        "--conf",
        "spark.driver.memory=1g",
        "--conf",
        "spark.sql.shuffle.partitions=4",
        "--conf",
        "spark.default.parallelism=4",
        # 6,000 rows would run on the driver engine: the limit 0 sends the fit to the
        # executors, whose resident stage this test proves
        "--conf",
        "spark.gmm.driver.maxBytes=0",
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.driver.bindAddress=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        "--py-files",
        str(package),
        str(REPO_ROOT / "jobs" / "fit.py"),
        "--demo",
        "--demo-rows",
        "6000",
        "--output",
        str(out),
        "--k",
        "4",
        "--partition-by",
        "prediction",
        "--num-files",
        "2",
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=str(tmp_path),
        env=cluster.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SUBMIT_TIMEOUT,
    )
    seconds = time.monotonic() - t0
    (tmp_path / "spark-submit.stderr").write_text(proc.stderr)
    assert proc.returncode == 0, (
        f"spark-submit failed ({proc.returncode}) after {seconds:.0f}s\n"
        f"--- stderr ---\n{proc.stderr[-6000:]}\n{cluster.log_tails()}"
    )
    # progress lines reach the console (spark-submit merges the driver's stderr into stdout)
    console = proc.stdout + proc.stderr
    assert "INFO spark_gmm: EM iteration 1:" in console
    assert "FileNotFoundException" not in console  # noisy loggers are quieted

    report = json.loads((out / "report" / "report.json").read_text())
    assert report["spark"]["master"] == cluster.url
    assert report["spark"]["mode"] == "spark-submit"
    # the executors' Python imported spark_gmm from the shipped zip
    executors = report["spark"]["executors"]
    assert executors and all("error" not in e for e in executors), executors
    assert all("spark_gmm.zip" in e["spark_gmm_path"] for e in executors), executors
    assert {e["executable"] for e in executors} == {sys.executable}
    assert report["model"]["k"] == 4 and report["fit"]["numRows"] == 6000
    assert report["fit"]["converged"]
    # the whole fit ran in one barrier stage of the two workers' executors
    assert report["fit"]["engine"] == "resident"
    assert "INFO spark_gmm: resident engine: 6000 rows" in console

    # model, predictions partitioned as asked, training scores, resolved configuration
    assert (out / "model" / "metadata").is_dir() and (out / "model" / "data").is_dir()
    partitions = sorted(p.name for p in (out / "predictions").glob("prediction=*"))
    assert partitions == [f"prediction={j}" for j in range(4)]
    import pyarrow.dataset as ds

    table = ds.dataset(str(out / "predictions"), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 6000
    assert {"id", "x", "y", "z", "prediction", "probability", "logLikelihood"} <= set(
        table.column_names
    )
    scores = json.loads((out / "training_scores.json").read_text())
    assert scores["rows"] == 6000
    assert "master" not in (out / "resolved-config.toml").read_text().split("[spark]")[-1]
    print(f"standalone fit: {seconds:.1f}s")
