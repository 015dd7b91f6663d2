"""A fresh machine: the README's first quickstart command in a fresh copy of the repository
(its tracked files), then the built wheel in that environment.

* The first quickstart command, verbatim (taken from the README), makes its own ``.venv``
  (dependencies from the package index, as a user gets them) and writes the demo report with
  its PNG plots and the HTML page; its stderr has a progress line per EM iteration, and its
  local-mode workers run the venv's interpreter with one BLAS thread.
* ``pip wheel --no-deps -w dist .`` builds the wheel; it replaces the editable install in that
  environment (``pip install`` checks its dependencies), and its console script
  ``spark-gmm-fit`` runs the fit job from a folder outside the copy.
(The README's cluster recipe, the wheel shipped as ``spark_gmm.zip`` with ``spark-submit
--py-files`` to separate executor JVMs: tests/test_standalone_cluster.py.)

Nothing of this checkout is on PYTHONPATH in these runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SCRIPT_TIMEOUT, TEST_JVM_OPTIONS, _tail

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

PIP_FLAGS = ("--disable-pip-version-check", "-q")


def _pip(python: Path, command: str, *args) -> list:
    return [python, "-m", "pip", command, *PIP_FLAGS, *args]


PNGS = ["clusters_x_y.png", "density_x.png", "density_y.png", "density_z.png", "log_likelihood.png"]


def _run(cmd, cwd, env, timeout=SCRIPT_TIMEOUT, shell=False):
    proc = subprocess.run(
        cmd if shell else [str(c) for c in cmd],
        cwd=str(cwd),
        env=env,
        timeout=timeout,
        shell=shell,
        executable="/bin/bash" if shell else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"{cmd if shell else ' '.join(map(str, cmd))}: exit "
        f"{proc.returncode}\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
    )
    return proc


def _clean_env(tmp: Path) -> dict:
    """The environment of a new shell: nothing of this checkout or this venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYSPARK_", "SPARK_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO_ROOT))
    )
    env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_CONF_DIR=str(tmp / "conf"))
    env.setdefault("JDK_JAVA_OPTIONS", TEST_JVM_OPTIONS)  # as every test JVM (conftest)
    (tmp / "conf").mkdir(exist_ok=True)
    return env


def quickstart_command(number: int) -> str:
    """Command ``number`` of the README's quickstart block (the line after its comment)."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return commands[number - 1]


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Path:
    """The repository's tracked (and new, not ignored) files, as a fresh clone has them."""
    copy = tmp_path_factory.mktemp("fresh") / "spark_gmm"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = REPO_ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


@pytest.fixture(scope="module")
def quickstart_run(fresh_copy):
    """(the fresh copy, the finished process of the README's first command run in it)."""
    command = quickstart_command(1)
    assert "jobs/fit.py --demo --output out/demo" in command, command
    proc = _run(command, cwd=fresh_copy, env=_clean_env(fresh_copy.parent), shell=True)
    return fresh_copy, proc


@pytest.fixture(scope="module")
def quickstart(quickstart_run):
    return quickstart_run[0]


def test_first_quickstart_command_writes_the_plots_and_the_page(quickstart_run):
    quickstart, proc = quickstart_run
    report_dir = quickstart / "out" / "demo" / "report"
    report = json.loads((report_dir / "report.json").read_text())
    assert "Traceback" not in proc.stderr
    # progress: one log line per EM iteration on stderr
    iterations = [
        line for line in proc.stderr.splitlines() if "INFO spark_gmm: EM iteration" in line
    ]
    assert len(iterations) == report["fit"]["numIter"] >= 1
    assert "change" in iterations[0] and iterations[0].rstrip().endswith(" s")
    # local mode: the workers run the venv's interpreter with single-threaded BLAS
    spark = report["spark"]
    assert spark["mode"] == "local" and spark["master"] == "local[*]"
    venv_python = str(quickstart / ".venv" / "bin" / "python")
    assert {e["executable"] for e in _executors(report)} == {venv_python}
    assert all(
        e["blasThreads"]["OMP_NUM_THREADS"] == "1"
        and e["blasThreads"]["OPENBLAS_NUM_THREADS"] == "1"
        for e in spark["executors"]
    )
    assert report["plots"]["status"] == "5 plot(s) written", report["plots"]
    assert sorted(p.name for p in report_dir.glob("*.png")) == PNGS
    for png in PNGS:
        assert (report_dir / png).read_bytes().startswith(b"\x89PNG")
    assert (report_dir / "report.html").read_text().count('src="data:image/png;base64,') == 5
    assert report["fit"]["numRows"] == 20000


@pytest.fixture(scope="module")
def wheel(quickstart) -> Path:
    python = quickstart / ".venv" / "bin" / "python"
    dist = quickstart / "dist"
    _run(
        _pip(python, "wheel", "--no-deps", "-w", dist, "."),
        cwd=quickstart,
        env=_clean_env(quickstart.parent),
    )
    (built,) = dist.glob("spark_gmm-*-py3-none-any.whl")
    with zipfile.ZipFile(built) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "spark_gmm/cli.py" in names and "spark_gmm/tracking.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    assert "Requires-Dist: pyspark>=3.5.0" in metadata
    assert re.search(r'Requires-Dist: mlflow>=3; extra == "mlflow"', metadata)
    return built


@pytest.fixture(scope="module")
def installed(quickstart, wheel) -> Path:
    """The quickstart's environment with the wheel instead of the editable install."""
    python = quickstart / ".venv" / "bin" / "python"
    env = _clean_env(quickstart.parent)
    _run(_pip(python, "uninstall", "-y", "spark-gmm"), cwd=quickstart.parent, env=env)
    _run(_pip(python, "install", wheel), cwd=quickstart.parent, env=env)
    _run(_pip(python, "check"), cwd=quickstart.parent, env=env)
    return python


def _executors(report):
    executors = report["spark"]["executors"]
    assert executors and all("error" not in e for e in executors), executors
    return executors


def test_the_wheel_installs_and_its_fit_job_runs(installed, tmp_path):
    out = tmp_path / "out"
    _run(
        [
            installed.parent / "spark-gmm-fit",
            "--demo",
            "--demo-rows",
            "3000",
            "--k",
            "3",
            "--output",
            out,
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
        ],
        cwd=tmp_path,
        env=_clean_env(tmp_path),
    )
    report = json.loads((out / "report" / "report.json").read_text())
    site = installed.parent.parent / "lib"
    assert all(Path(e["spark_gmm_path"]).is_relative_to(site) for e in _executors(report))
    assert report["fit"]["numRows"] == 3000 and report["model"]["k"] == 3
    assert (out / "model" / "metadata").is_dir() and report["plots"]["status"].endswith("written")
