"""The resident pass engine: bit-identical to the job-per-pass engine, authenticated, bounded
in time, and falling back (said once) where it cannot run."""

import time

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_gmm import GaussianMixture, kernel
from spark_gmm.engine.resident import PASS_TIMEOUT_CONF, ResidentFailure, task_keys
from spark_gmm.selection import GaussianMixtureSelector
from tests.datasets import blobs


@pytest.fixture(scope="module")
def data(spark):
    X, _ = blobs(200, 3, k=3, separation=3.0, seed=5)
    w = np.random.default_rng(1).integers(0, 4, len(X)).astype(float)
    rows = [(i, [float(v) for v in x], float(wi)) for i, (x, wi) in enumerate(zip(X, w))]
    # 8 partitions: a tree level at aggregationDepth=3 (the fit keeps 8 on local[2])
    df = (
        spark.createDataFrame(rows, "id long, features array<double>, w double")
        .repartition(8, "id")
        .sortWithinPartitions("id")
        .cache()
    )
    df.count()
    yield df
    df.unpersist()


def _facts(model):
    s = model.summary
    return {
        "weights": np.asarray(model.weights),
        "means": model.means,
        "covariances": model.covariances,
        "history": np.asarray(s.logLikelihoodHistory),
        "logLikelihood": s.logLikelihood,
        "numIter": s.numIter,
        "restarts": [r["logLikelihood"] for r in s.restarts],
    }


def _assert_identical(a, b):
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _both(gm, df):
    resident = gm.copy().setEngine("resident").fit(df)
    per_pass = gm.copy().setEngine("jobPerPass").fit(df)
    assert resident.summary.engine == "resident"
    assert per_pass.summary.engine == "jobPerPass"
    return resident, per_pass


@pytest.mark.parametrize(  # on PySpark 3.5 too (.ci/run): the barrier stage is what differs
    "covariance_type",
    [
        pytest.param(t, marks=pytest.mark.compat) if t == "full" else t
        for t in kernel.COVARIANCE_TYPES
    ],
)
def test_bit_identical_to_job_per_pass_with_restarts(spark, data, covariance_type):
    gm = GaussianMixture(
        k=3, covarianceType=covariance_type, nInit=2, maxIter=8, tol=0.0, seed=3, aggregationDepth=3
    )
    resident, per_pass = _both(gm, data)
    _assert_identical(_facts(resident), _facts(per_pass))
    assert resident.summary.numDataPasses == per_pass.summary.numDataPasses


def test_bit_identical_when_blocks_are_packed_before_the_shuffle(spark, data, monkeypatch):
    """Large fits shuffle packed blocks to the barrier tasks, not rows (PACK_VALUES): with
    several blocks per partition, still the job-per-pass engine's result bit for bit."""
    from spark_gmm.engine import blocks, resident

    monkeypatch.setattr(resident, "PACK_VALUES", 0)
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 30)  # blocks of 10 rows of 3 features
    gm = GaussianMixture(
        k=3,
        covarianceType="full",
        nInit=2,
        maxIter=6,
        tol=0.0,
        seed=3,
        aggregationDepth=3,
        weightCol="w",
    )
    resident_fit, per_pass = _both(gm, data)
    _assert_identical(_facts(resident_fit), _facts(per_pass))


@pytest.mark.parametrize("init_mode", ["kmeans", "k-means++", "random", "randomFromData"])
def test_bit_identical_for_every_init_mode_with_weights(spark, data, init_mode):
    gm = GaussianMixture(
        k=3, initMode=init_mode, weightCol="w", maxIter=5, seed=9, covarianceType="diag"
    )
    resident, per_pass = _both(gm, data)
    _assert_identical(_facts(resident), _facts(per_pass))


def test_selector_bit_identical_and_same_choice(spark, data):
    selector = GaussianMixtureSelector(
        estimator=GaussianMixture(nInit=2, maxIter=10, seed=4),
        kValues=[1, 2, 3, 4],
        covarianceTypes=["full", "diag"],
    )
    resident = selector.copy()
    resident.setEstimator(selector.getEstimator().copy().setEngine("resident"))
    per_pass = selector.copy()
    per_pass.setEstimator(selector.getEstimator().copy().setEngine("jobPerPass"))
    a, b = resident.fit(data), per_pass.fit(data)
    assert a.table.equals(b.table)
    assert (a.bestModel.getK(), a.bestModel.getCovarianceType()) == (3, "diag")
    np.testing.assert_array_equal(a.bestModel.means, b.bestModel.means)


def _status_caught_up(sc, timeout=120.0):
    """Returns once the status tracker has seen every Spark job that ended before the call.

    The tracker is fed by Spark's asynchronous listener bus, in order: a marker job run now
    is seen ended only after the events of every job before it."""
    import secrets

    group = f"spark_gmm-test-marker-{secrets.token_hex(4)}"
    previous = sc.getLocalProperty("spark.jobGroup.id")
    sc.setLocalProperty("spark.jobGroup.id", group)
    try:
        sc.parallelize([0], 1).count()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", previous)
    tracker, deadline = sc.statusTracker(), time.monotonic() + timeout
    while not [
        j
        for j in tracker.getJobIdsForGroup(group)
        if tracker.getJobInfo(j) is not None and tracker.getJobInfo(j).status == "SUCCEEDED"
    ]:
        assert time.monotonic() < deadline, "the status tracker never saw the marker job end"
        time.sleep(0.05)


def _jobs_of_fit(spark, gm, df, group):
    """The fit's model and the number of Spark jobs it started (in its job group), counted
    once the status tracker has seen all of them and none of them runs any more."""
    sc = spark.sparkContext
    sc.setJobGroup(group, "count the Spark jobs of one fit")
    try:
        model = gm.fit(df)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    # every job of the fit was submitted before it returned (its close() waits for the
    # resident stage's job): once the tracker caught up, the count is exact
    _status_caught_up(sc)
    tracker, deadline = sc.statusTracker(), time.monotonic() + 120
    while any(
        getattr(tracker.getJobInfo(j), "status", None) == "RUNNING"
        for j in tracker.getJobIdsForGroup(group)
    ):
        assert time.monotonic() < deadline, f"a job of the fit still runs: {group}"
        time.sleep(0.05)
    return model, len(tracker.getJobIdsForGroup(group))


@pytest.mark.compat
def test_no_spark_job_per_pass(spark, data):
    """Initialisation (samples, Lloyd iterations) and every EM iteration run in the resident
    stage: a fit of 20 iterations starts as many Spark jobs as a fit of 1."""
    import secrets

    token = secrets.token_hex(4)
    short, few = _jobs_of_fit(
        spark,
        GaussianMixture(k=3, seed=1, maxIter=1, engine="resident"),
        data,
        f"spark_gmm-test-one-iteration-{token}",
    )
    long, same = _jobs_of_fit(
        spark,
        GaussianMixture(k=3, seed=1, maxIter=20, tol=0.0, engine="resident"),
        data,
        f"spark_gmm-test-twenty-{token}",
    )
    assert short.summary.engine == long.summary.engine == "resident"
    assert long.summary.numDataPasses >= short.summary.numDataPasses + 19
    assert 1 <= few == same <= 6, (few, same)


def test_task_keys_spread_hash_partitions_evenly(spark):
    for n in range(1, 9):
        keys = task_keys(n)
        got = (
            spark.createDataFrame([(k,) for k in keys], "k int")
            .select(F.expr(f"pmod(hash(k), {n})").alias("p"))
            .collect()
        )
        assert [row.p for row in got] == list(range(n))


def test_a_hung_worker_ends_in_a_clear_error(spark, data, monkeypatch):
    """Worker 0 hangs on its third command (a test fault); the others answer. The pass
    timeout names that worker and that pass, after the timeout and not before, and the
    same fit without the fault runs under the same timeout."""
    spark.conf.set(PASS_TIMEOUT_CONF, "3")
    try:
        healthy = GaussianMixture(k=2, maxIter=5, seed=1, engine="resident").fit(data)
        monkeypatch.setenv("SPARK_GMM_FAULT_INJECTION", "hang-first-attempt")
        started = time.monotonic()
        with pytest.raises(
            ResidentFailure,
            match=r"worker\(s\) \[0\] did not answer "
            r"'[^']+' within 3 s "
            r"\(spark.gmm.resident.passTimeout\)",
        ):
            GaussianMixture(k=2, maxIter=5, seed=1, engine="resident").fit(data)
        waited = time.monotonic() - started
    finally:
        spark.conf.unset(PASS_TIMEOUT_CONF)
    monkeypatch.delenv("SPARK_GMM_FAULT_INJECTION")
    assert healthy.summary.engine == "resident"
    assert 3 <= waited < 30, waited
    # the cancelled stage left the session usable
    assert (
        GaussianMixture(k=2, maxIter=2, seed=1, engine="resident").fit(data).summary.engine
        == "resident"
    )


def test_bad_timeout_setting_is_named(spark, data):
    spark.conf.set(PASS_TIMEOUT_CONF, "soon")
    try:
        with pytest.raises(ValueError, match="spark.gmm.resident.passTimeout must be a number"):
            GaussianMixture(k=2, maxIter=1, engine="resident").fit(data)
    finally:
        spark.conf.unset(PASS_TIMEOUT_CONF)


def test_engine_param_is_checked_and_persisted(tmp_path):
    with pytest.raises(
        ValueError, match="engine must be one of auto, driver, resident, jobPerPass"
    ):
        GaussianMixture(engine="fast")
    gm = GaussianMixture(engine="jobPerPass")
    gm.save(str(tmp_path / "gm"))
    assert GaussianMixture.load(str(tmp_path / "gm")).getEngine() == "jobPerPass"


def test_first_fit_of_a_session_starts_python_workers_once(spark, monkeypatch):
    """The first start_python_workers of a session starts one background thread, which runs
    one Spark job outside the caller's job group; a second call starts nothing."""
    import secrets
    import threading
    import types

    from spark_gmm.engine import resident

    sc = spark.sparkContext
    token = secrets.token_hex(4)
    caller_group = f"spark_gmm-test-caller-{token}"
    thread_group = f"spark_gmm-test-start-workers-{token}"  # set by the thread: to count its jobs
    started = []

    class Recorded(threading.Thread):
        def start(self):
            started.append(self)
            super().start()

        def run(self):
            self.inherited_group = sc.getLocalProperty("spark.jobGroup.id")
            sc.setLocalProperty("spark.jobGroup.id", thread_group)
            try:
                super().run()
            finally:  # the JVM thread behind this one may serve another Python thread later
                sc.setLocalProperty("spark.jobGroup.id", None)

    monkeypatch.setattr(
        resident, "threading", types.SimpleNamespace(**{**vars(threading), "Thread": Recorded})
    )
    monkeypatch.setattr(resident, "_STARTED", set())
    sc.setJobGroup(caller_group, "caller's group")
    try:
        resident.start_python_workers(spark)
        assert [t.name for t in started] == ["spark_gmm-start-workers"]
        resident.start_python_workers(spark)
        assert len(started) == 1, [t.name for t in started]  # the second call starts nothing
        assert resident._STARTED == {sc.applicationId}
        started[0].join(120)
        assert not started[0].is_alive()
        assert started[0].inherited_group != caller_group
        _status_caught_up(sc)
        tracker = sc.statusTracker()
        assert tracker.getJobIdsForGroup(caller_group) == []
        jobs = tracker.getJobIdsForGroup(thread_group)
        assert [tracker.getJobInfo(j).status for j in jobs] == ["SUCCEEDED"]  # one job
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
