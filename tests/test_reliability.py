"""Faults and checkpoints: a fit whose tasks crash, and a fit whose driver is killed, end with
the parameters of a clean, uninterrupted fit."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spark_gmm import GaussianMixture, kernel
from spark_gmm.checkpoint import Checkpoint
from tests.conftest import SCRIPTS_DIR, script_env
from tests.datasets import blobs
from tests.scripts.reliability_fit import FIT, fitted

SCRIPT = SCRIPTS_DIR / "reliability_fit.py"


@pytest.fixture(scope="module")
def parquet_data(spark, tmp_path_factory):
    X, _ = blobs(300, 4, k=3, separation=3.0, seed=8)
    path = str(tmp_path_factory.mktemp("reliability") / "data.parquet")
    df = spark.createDataFrame([([float(v) for v in x],) for x in X], "features array<double>")
    df.repartition(3).write.parquet(path)
    return path


def _reference(spark, path, max_iter):
    return fitted(GaussianMixture(maxIter=max_iter, **FIT).fit(spark.read.parquet(path)))


def _assert_same_fit(got, expected):
    for key in ("weights", "means", "covariances", "history"):
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]), key)
    assert got["numIter"] == expected["numIter"]
    assert got["logLikelihood"] == expected["logLikelihood"]


# ------------------------------------------------------------------ kernel level


def _two_candidates(X):
    starts = []
    for covariance_type, rows in (("full", [0, 1, 2]), ("diag", [3, 4, 5])):
        stats = kernel.hard_assignment_stats(X, None, X[rows], covariance_type)
        starts.append(kernel.m_step(stats, 1e-6))
    return starts


def test_resumed_em_equals_uninterrupted_em():
    X, _ = blobs(100, 3, k=3, separation=2.0, seed=1)
    stats = kernel.local_stats_function(X)
    initial = _two_candidates(X)
    whole = kernel.run_em(stats, initial, 25, 0.0, 1e-6)
    saved = {}
    kernel.run_em(
        stats,
        initial,
        9,
        0.0,
        1e-6,
        final_pass=False,
        on_state=lambda s: saved.update(text=json.dumps(s.to_dict())),
    )
    state = kernel.EMState.from_dict(json.loads(saved["text"]))  # through JSON, as on disk
    assert state.iteration == 9
    resumed = kernel.run_em(stats, [], 25, 0.0, 1e-6, resume=state)
    for a, b in zip(resumed, whole):
        np.testing.assert_array_equal(a.params.means, b.params.means)
        np.testing.assert_array_equal(a.params.covariances, b.params.covariances)
        assert a.history == b.history and a.n_iter == b.n_iter == 25
        assert a.log_likelihood == b.log_likelihood


def test_checkpoint_file_is_atomic_and_only_read_by_its_fit(tmp_path):
    X, _ = blobs(50, 2, k=2, seed=3)
    state = kernel.EMState.start(_two_candidates(X))
    checkpoint = Checkpoint(str(tmp_path / "cp" / "state.json"), "fingerprint-a")
    checkpoint.save(state)
    assert os.listdir(tmp_path / "cp") == ["state.json"]  # no temporary file left
    assert checkpoint.load().to_dict() == state.to_dict()
    assert Checkpoint(checkpoint.path, "fingerprint-b").load() is None  # another fit's
    text = Path(checkpoint.path).read_text()
    Path(checkpoint.path).write_text(text[: len(text) // 2])  # a torn write
    assert checkpoint.load() is None
    checkpoint.remove()
    checkpoint.remove()
    assert not os.path.exists(checkpoint.path)


def test_checkpoint_dir_must_be_on_the_driver(spark, parquet_data):
    gm = GaussianMixture(maxIter=2, checkpointDir="hdfs://namenode/tmp/gmm", **FIT)
    with pytest.raises(ValueError, match="driver's file system"):
        gm.fit(spark.read.parquet(parquet_data))


def test_fit_with_checkpoints_equals_fit_without(spark, parquet_data, tmp_path):
    plain = _reference(spark, parquet_data, 12)
    model = GaussianMixture(
        maxIter=12, checkpointDir=str(tmp_path / "cp"), checkpointInterval=3, **FIT
    ).fit(spark.read.parquet(parquet_data))
    _assert_same_fit(fitted(model), plain)
    assert os.listdir(tmp_path / "cp") == []  # a finished fit leaves no checkpoint


# ------------------------------------------------------------------ processes


@pytest.mark.slow
def test_killed_driver_resumes_from_its_checkpoint(spark, parquet_data, tmp_path, run_script):
    import re
    import textwrap

    max_iter = 60
    checkpoints = tmp_path / "checkpoints"
    args = [
        "--parquet",
        parquet_data,
        "--max-iter",
        max_iter,
        "--checkpoint-dir",
        checkpoints,
        "--checkpoint-interval",
        2,
    ]
    # the first run is the script whose driver, once it saved a checkpoint at iteration >= 6,
    # says so in a file and waits there (in the fit) to be killed: no race with the fit's end
    held = tmp_path / "held"
    hold = textwrap.dedent("""\
        import os, runpy, sys, time
        from spark_gmm.checkpoint import Checkpoint
        save, held, script = Checkpoint.save, sys.argv[1], sys.argv[2]
        def save_and_hold(self, state):
            save(self, state)
            if state.iteration >= 6:
                with open(held + ".tmp", "w") as fh:
                    fh.write(str(state.iteration))
                os.replace(held + ".tmp", held)
                time.sleep(3600)  # killed here, mid-fit
        Checkpoint.save = save_and_hold
        sys.argv = sys.argv[2:]
        sys.path.insert(0, os.path.dirname(script))
        runpy.run_path(script, run_name="__main__")
    """)
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            hold,
            str(held),
            str(SCRIPT),
            *map(str, args),
            "--out",
            str(tmp_path / "first.json"),
        ],
        env=script_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its JVM too is killed with the group
    )
    try:
        deadline = time.monotonic() + 600
        while not held.exists():
            assert proc.poll() is None, (
                "the fit ended without holding",
                (tmp_path / "first.log").read_text()[-3000:],
            )
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        saved = glob.glob(str(checkpoints / "spark_gmm-*.json"))
        assert len(saved) == 1, saved
        with open(saved[0]) as fh:  # atomic writes: always a whole JSON document
            killed_at = json.load(fh)["state"]["iteration"]
        assert killed_at == int(held.read_text()) >= 6
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # killed above, the group gone
                pass
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "first.json").exists()  # it really died mid-fit

    second = run_script(SCRIPT, *args, "--out", tmp_path / "second.json")
    # from the checkpoint it was killed at
    assert re.search(rf"resuming from checkpoint \S+ at iteration {killed_at}\b", second.stderr)
    resumed = json.loads((tmp_path / "second.json").read_text())
    _assert_same_fit(resumed, _reference(spark, parquet_data, max_iter))
    assert glob.glob(str(checkpoints / "*")) == []  # removed once the fit finished


@pytest.mark.slow
def test_crashing_python_workers_are_retried_to_the_same_result(
    spark, parquet_data, tmp_path, run_script
):
    """One application, a fit on each engine. jobPerPass: every first attempt of a statistics
    task crashes, and Spark retries the task. resident: one worker crashes mid-fit (its third
    pass), and Spark retries the whole barrier stage; the driver runs the interrupted pass
    again on the new attempt."""
    run = run_script(
        SCRIPT,
        "--master",
        "local[2,3]",
        "--parquet",
        parquet_data,
        "--max-iter",
        3,
        "--engine",
        "resident,jobPerPass",
        "--out",
        tmp_path / "retried.json",
        env={"SPARK_GMM_FAULT_INJECTION": "exit-first-attempt"},
    )
    retried = json.loads((tmp_path / "retried.json").read_text())
    reference = _reference(spark, parquet_data, 3)
    resident, per_pass = retried["resident"], retried["jobPerPass"]
    assert (resident["engine"], per_pass["engine"]) == ("resident", "jobPerPass")
    # resident: the barrier stage failed and ran again
    assert "waiting for Spark to retry the barrier stage" in run.stderr
    assert resident["retriedStages"] > 0
    _assert_same_fit(resident, reference)
    assert per_pass["failedTasks"] > 0  # the first attempts did crash
    _assert_same_fit(per_pass, reference)
