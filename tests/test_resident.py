"""The resident pass engine: bit-identical to the job-per-pass engine, authenticated, bounded
in time, and falling back (said once) where it cannot run."""
import logging
import socket
import time
from multiprocessing.connection import AuthenticationError, Client

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_gmm import GaussianMixture, kernel
from spark_gmm.selection import GaussianMixtureSelector
from spark_gmm.resident import CONNECT_TIMEOUT_CONF, PASS_TIMEOUT_CONF, ResidentFailure, \
    _Coordinator, task_keys
from tests.datasets import blobs


@pytest.fixture(scope="module")
def data(spark):
    X, _ = blobs(200, 3, k=3, separation=3.0, seed=5)
    w = np.random.default_rng(1).integers(0, 4, len(X)).astype(float)
    rows = [(i, [float(v) for v in x], float(wi)) for i, (x, wi) in enumerate(zip(X, w))]
    # 8 partitions: a tree level at aggregationDepth=3 (the fit keeps 8 on local[2])
    df = spark.createDataFrame(rows, "id long, features array<double>, w double") \
        .repartition(8, "id").sortWithinPartitions("id").cache()
    df.count()
    yield df
    df.unpersist()


def _facts(model):
    s = model.summary
    return {"weights": np.asarray(model.weights), "means": model.means,
            "covariances": model.covariances, "history": np.asarray(s.logLikelihoodHistory),
            "logLikelihood": s.logLikelihood, "numIter": s.numIter,
            "restarts": [r["logLikelihood"] for r in s.restarts]}


def _assert_identical(a, b):
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _both(gm, df):
    resident = gm.copy().setEngine("resident").fit(df)
    per_pass = gm.copy().setEngine("jobPerPass").fit(df)
    assert resident.summary.engine == "resident"
    assert per_pass.summary.engine == "jobPerPass"
    return resident, per_pass


@pytest.mark.parametrize("covariance_type", kernel.COVARIANCE_TYPES)
def test_bit_identical_to_job_per_pass_with_restarts(spark, data, covariance_type):
    gm = GaussianMixture(k=3, covarianceType=covariance_type, nInit=2, maxIter=8, tol=0.0,
                         seed=3, aggregationDepth=3)
    resident, per_pass = _both(gm, data)
    _assert_identical(_facts(resident), _facts(per_pass))
    assert resident.summary.numDataPasses == per_pass.summary.numDataPasses


def test_bit_identical_when_blocks_are_packed_before_the_shuffle(spark, data, monkeypatch):
    """Large fits shuffle packed blocks to the barrier tasks, not rows (PACK_VALUES): with
    several blocks per partition, still the job-per-pass engine's result bit for bit."""
    from spark_gmm import blocks, resident

    monkeypatch.setattr(resident, "PACK_VALUES", 0)
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 30)  # blocks of 10 rows of 3 features
    gm = GaussianMixture(k=3, covarianceType="full", nInit=2, maxIter=6, tol=0.0, seed=3,
                         aggregationDepth=3, weightCol="w")
    resident_fit, per_pass = _both(gm, data)
    _assert_identical(_facts(resident_fit), _facts(per_pass))


@pytest.mark.parametrize("init_mode", ["kmeans", "k-means++", "random", "randomFromData"])
def test_bit_identical_for_every_init_mode_with_weights(spark, data, init_mode):
    gm = GaussianMixture(k=3, initMode=init_mode, weightCol="w", maxIter=5, seed=9,
                         covarianceType="diag")
    resident, per_pass = _both(gm, data)
    _assert_identical(_facts(resident), _facts(per_pass))


def test_selector_bit_identical_and_same_choice(spark, data):
    selector = GaussianMixtureSelector(
        estimator=GaussianMixture(nInit=2, maxIter=10, seed=4), kValues=[1, 2, 3, 4],
        covarianceTypes=["full", "diag"])
    resident = selector.copy()
    resident.setEstimator(selector.getEstimator().copy().setEngine("resident"))
    per_pass = selector.copy()
    per_pass.setEstimator(selector.getEstimator().copy().setEngine("jobPerPass"))
    a, b = resident.fit(data), per_pass.fit(data)
    assert a.table.equals(b.table)
    assert (a.bestModel.getK(), a.bestModel.getCovarianceType()) == (3, "diag")
    np.testing.assert_array_equal(a.bestModel.means, b.bestModel.means)


def _jobs_of_fit(spark, gm, df, group):
    """The fit's model and the number of Spark jobs it started (once they have all ended:
    the resident stage's job ends just after the fit returns)."""
    sc = spark.sparkContext
    sc.setJobGroup(group, "count the Spark jobs of one fit")
    try:
        model = gm.fit(df)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    tracker = sc.statusTracker()
    deadline, seen, stable_since = time.monotonic() + 60, None, time.monotonic()
    while time.monotonic() < deadline:  # until no job runs and none came for a second
        jobs = tracker.getJobIdsForGroup(group)
        if jobs != seen or any(tracker.getJobInfo(j).status == "RUNNING" for j in jobs):
            seen, stable_since = jobs, time.monotonic()
        elif time.monotonic() - stable_since > 1.0:
            break
        time.sleep(0.1)
    return model, len(seen)


def test_no_spark_job_per_pass(spark, data):
    """Initialisation (samples, Lloyd iterations) and every EM iteration run in the resident
    stage: a fit of 20 iterations starts as many Spark jobs as a fit of 1."""
    short, few = _jobs_of_fit(spark, GaussianMixture(k=3, seed=1, maxIter=1, engine="resident"),
                              data, "one-iteration")
    long, same = _jobs_of_fit(spark, GaussianMixture(k=3, seed=1, maxIter=20, tol=0.0,
                                                     engine="resident"), data, "twenty")
    assert long.summary.numDataPasses >= short.summary.numDataPasses + 19
    assert few == same <= 6, (few, same)


def test_task_keys_spread_hash_partitions_evenly(spark):
    for n in range(1, 9):
        keys = task_keys(n)
        got = spark.createDataFrame([(k,) for k in keys], "k int") \
            .select(F.expr(f"pmod(hash(k), {n})").alias("p")).collect()
        assert [row.p for row in got] == list(range(n))


def test_coordinator_refuses_unauthenticated_peers():
    key = b"k" * 32
    coordinator = _Coordinator("127.0.0.1", key)
    try:
        with pytest.raises(AuthenticationError):
            Client(("127.0.0.1", coordinator.port), family="AF_INET", authkey=b"x" * 32)
        raw = socket.create_connection(("127.0.0.1", coordinator.port))
        raw.sendall(b"\x00\x00\x10\x00" + b"garbage" * 10)  # no HMAC answer: cut off
        raw.settimeout(10)
        assert _read_until_closed(raw)
        good = Client(("127.0.0.1", coordinator.port), family="AF_INET", authkey=key)
        good.send_bytes(b'{"partition": 0, "task": 7}')
        hello, conn = coordinator.ready.get(timeout=10)
        assert hello == {"partition": 0, "task": 7}
        assert coordinator.refused == 2 and coordinator.ready.empty()
        conn.close()
        good.close()
    finally:
        coordinator.close()


def _read_until_closed(sock) -> bool:
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, socket.timeout) as exc:
        return not isinstance(exc, socket.timeout)


def test_auto_falls_back_once_when_the_stage_cannot_start(spark, data, caplog):
    spark.conf.set(CONNECT_TIMEOUT_CONF, "0.01")
    try:
        with caplog.at_level(logging.WARNING, logger="spark_gmm"):
            first = GaussianMixture(k=2, maxIter=3, seed=1).fit(data)
            second = GaussianMixture(k=2, maxIter=3, seed=1).fit(data)
        with pytest.raises(RuntimeError, match="engine='resident' cannot run here: .*"
                                               "connectTimeout"):
            GaussianMixture(k=2, maxIter=3, engine="resident").fit(data)
    finally:
        spark.conf.unset(CONNECT_TIMEOUT_CONF)
    assert first.summary.engine == second.summary.engine == "jobPerPass"
    said = [r.getMessage() for r in caplog.records if "fell back" in r.getMessage()]
    assert len(said) == 1 and "did not start and connect within" in said[0]
    _assert_identical(_facts(first), _facts(second))


def test_a_hung_worker_ends_in_a_clear_error(spark, data, monkeypatch):
    monkeypatch.setenv("SPARK_GMM_FAULT_INJECTION", "hang-first-attempt")
    spark.conf.set(PASS_TIMEOUT_CONF, "3")
    try:
        with pytest.raises(ResidentFailure, match=r"did not answer .* within 3 s "
                                                  r"\(spark.gmm.resident.passTimeout\)"):
            GaussianMixture(k=2, maxIter=5, seed=1, engine="resident").fit(data)
    finally:
        spark.conf.unset(PASS_TIMEOUT_CONF)
    monkeypatch.delenv("SPARK_GMM_FAULT_INJECTION")
    # the cancelled stage left the session usable
    assert GaussianMixture(k=2, maxIter=2, seed=1).fit(data).summary.engine == "resident"


def test_bad_timeout_setting_is_named(spark, data):
    spark.conf.set(PASS_TIMEOUT_CONF, "soon")
    try:
        with pytest.raises(ValueError, match="spark.gmm.resident.passTimeout must be a number"):
            GaussianMixture(k=2, maxIter=1).fit(data)
    finally:
        spark.conf.unset(PASS_TIMEOUT_CONF)


def test_engine_param_is_checked_and_persisted(tmp_path):
    with pytest.raises(ValueError, match="engine must be one of auto, resident, jobPerPass"):
        GaussianMixture(engine="fast")
    gm = GaussianMixture(engine="jobPerPass")
    gm.save(str(tmp_path / "gm"))
    assert GaussianMixture.load(str(tmp_path / "gm")).getEngine() == "jobPerPass"


def test_first_fit_of_a_session_starts_python_workers_once(spark, monkeypatch):
    """start_python_workers runs one background job per session (outside the caller's job
    group), and nothing on later fits."""
    import threading

    from spark_gmm import resident

    monkeypatch.setattr(resident, "_STARTED", set())
    sc = spark.sparkContext
    sc.setJobGroup("spark_gmm-test-start-workers", "caller's group")
    try:
        before = {t.ident for t in threading.enumerate()}
        resident.start_python_workers(spark)
        resident.start_python_workers(spark)
        started = [t for t in threading.enumerate()
                   if t.name == "spark_gmm-start-workers" and t.ident not in before]
        assert len(started) <= 1 and resident._STARTED == {sc.applicationId}
        for thread in started:
            thread.join(60)
            assert not thread.is_alive()
        assert sc.statusTracker().getJobIdsForGroup("spark_gmm-test-start-workers") == []
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
