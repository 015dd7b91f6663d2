"""A model saved under one PySpark line loads under the other (4.x <-> 3.5), alone and inside
a ``PipelineModel``, and predicts the same.

This process saves, the other line's interpreter (a subprocess) loads what we saved and saves
its own, which this process loads. The other interpreter: ``SPARK_GMM_OTHER_PYTHON``, else
``.venv-oldest/bin/python`` or ``.venv/bin/python`` of this checkout, whichever runs another
PySpark line than this one (``bash .ci/run`` builds both; under CI a missing one fails).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyspark
import pytest

from tests.conftest import REPO_ROOT, SCRIPT_TIMEOUT, SCRIPTS_DIR, _tail, script_env
from tests.scripts.persistence_script import fit_and_save, load_and_predict

pytestmark = pytest.mark.slow


def _line(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _pyspark_of(python: str):
    proc = subprocess.run(
        [python, "-c", "import pyspark; print(pyspark.__version__)"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def other_python():
    given = os.environ.get("SPARK_GMM_OTHER_PYTHON")
    candidates = (
        [given]
        if given
        else [
            str(REPO_ROOT / ".venv-oldest" / "bin" / "python"),
            str(REPO_ROOT / ".venv" / "bin" / "python"),
        ]
    )
    for python in candidates:
        if Path(python).exists():
            version = _pyspark_of(python)
            if version and _line(version) != _line(pyspark.__version__):
                return python, version
    reason = (
        f"no interpreter with another PySpark line than {pyspark.__version__} among "
        f"{candidates} (bash .ci/run builds .venv-oldest)"
    )
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _same(theirs: dict, ours: dict) -> None:
    np.testing.assert_allclose(theirs["means"], ours["means"], rtol=0, atol=0)
    np.testing.assert_allclose(theirs["weights"], ours["weights"], rtol=0, atol=0)
    assert theirs["predictions"] == ours["predictions"]
    np.testing.assert_allclose(theirs["probability"], ours["probability"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(theirs["pipeline_means"], ours["pipeline_means"], rtol=0, atol=0)
    assert theirs["pipeline_predictions"] == ours["pipeline_predictions"]
    assert len(set(ours["predictions"])) == 3


def test_models_load_across_pyspark_lines(spark, other_python, tmp_path):
    python, version = other_python
    ours_dir, theirs_dir, out = tmp_path / "ours", tmp_path / "theirs", tmp_path / "facts.json"
    ours = fit_and_save(spark, ours_dir)

    env = script_env({"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python})
    cmd = [
        python,
        str(SCRIPTS_DIR / "persistence_script.py"),
        "--load",
        str(ours_dir),
        "--save",
        str(theirs_dir),
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        cmd,
        cwd=str(REPO_ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{_tail(proc.stderr)}"
    facts = json.loads(out.read_text())
    assert _line(facts["loaded"]["pyspark"]) == _line(version) != _line(pyspark.__version__)

    # saved here, loaded there: the same parameters and predictions
    _same(facts["loaded"], ours)
    # saved there, loaded here
    _same(load_and_predict(spark, theirs_dir), facts["saved"])
