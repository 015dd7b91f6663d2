"""The driver engine (spark_gmm.engine.driver): a small fit's rows collected once to the
driver, every pass in process.

* On the same partitioning it gives the bits the resident and job-per-pass engines give:
  every covariance type, every init mode, weights, restarts, the selector.
* ``engine='auto'`` takes it up to ``spark.gmm.driver.maxBytes`` (the summary and the log say
  why), and leaves it above; ``engine='driver'`` above the limit is an error naming the size.
* It starts no Python worker: a fit on it runs no Python task at all.
* The limit follows the settings that bound what the driver can hold.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from spark_gmm import GaussianMixture, kernel
from spark_gmm.engine import driver
from spark_gmm.engine.driver import DRIVER_MAX_BYTES_CONF, driver_limit, packed_bytes
from spark_gmm.estimator import fit_settings
from spark_gmm.fitting import fit_candidates
from spark_gmm.init import Candidate
from spark_gmm.selection import GaussianMixtureSelector
from tests.datasets import blobs

INIT_MODES = ["kmeans", "k-means++", "random", "randomFromData"]


@pytest.fixture(scope="module")
def weighted(spark):
    """Three blobs, 900 x 3, weights 0..3, in 3 partitions (cached)."""
    X, _ = blobs(300, 3, k=3, separation=4.0, seed=4)
    w = np.random.default_rng(9).integers(0, 4, len(X)).astype(float)
    data = [(i, [float(v) for v in x], float(wi)) for i, (x, wi) in enumerate(zip(X, w))]
    df = (
        spark.createDataFrame(data, "id long, features array<double>, w double")
        .repartition(3, "id")
        .cache()
    )
    df.count()
    yield df
    df.unpersist()


def _outcome(df, init_mode: str, engine: str):
    """Every covariance type, two restarts each, as one fit's candidates."""
    gm = GaussianMixture(
        k=3, initMode=init_mode, weightCol="w", maxIter=4, tol=0.0, seed=3, engine=engine
    )
    candidates = [Candidate(3, t, seed) for t in kernel.COVARIANCE_TYPES for seed in (3, 4)]
    return fit_candidates(df, candidates, fit_settings(gm))


def _assert_same_bits(outcome, reference):
    assert len(outcome.results) == len(reference.results) == 8
    for result, expected in zip(outcome.results, reference.results):
        what = f"{outcome.engine} vs {reference.engine}"
        for name in ("weights", "means", "covariances"):
            np.testing.assert_array_equal(
                getattr(result.params, name), getattr(expected.params, name), err_msg=what
            )
        np.testing.assert_array_equal(result.history, expected.history, err_msg=what)
        assert result.log_likelihood == expected.log_likelihood


@pytest.mark.parametrize(  # kmeans on the oldest versions too (.ci/run)
    "init_mode",
    [pytest.param(m, marks=pytest.mark.compat) if m == "kmeans" else m for m in INIT_MODES],
)
def test_bit_identical_to_the_resident_engine(weighted, init_mode):
    on_driver = _outcome(weighted, init_mode, "driver")
    resident = _outcome(weighted, init_mode, "resident")
    assert (on_driver.engine, resident.engine) == ("driver", "resident")
    _assert_same_bits(on_driver, resident)


# the job-per-pass engine runs a Spark job per pass: two init modes of different kinds
@pytest.mark.parametrize("init_mode", ["kmeans", "random"])
def test_bit_identical_to_the_job_per_pass_engine(weighted, init_mode):
    on_driver = _outcome(weighted, init_mode, "driver")
    per_pass = _outcome(weighted, init_mode, "jobPerPass")
    assert per_pass.engine == "jobPerPass"
    _assert_same_bits(on_driver, per_pass)


def test_the_selector_chooses_the_same_on_every_engine(weighted):
    tables = {}
    for engine in ("driver", "resident"):
        selector = GaussianMixtureSelector(
            estimator=GaussianMixture(weightCol="w", seed=2, maxIter=5, engine=engine),
            kValues=[1, 2, 3],
            covarianceTypes=["full", "diag"],
        )
        model = selector.fit(weighted)
        assert model.bestModel.summary.engine == engine
        tables[engine] = model.table
    assert tables["driver"].equals(tables["resident"])


@pytest.mark.compat
def test_auto_takes_it_for_a_small_table_and_says_why(weighted, caplog):
    with caplog.at_level(logging.INFO, logger="spark_gmm"):
        model = GaussianMixture(k=3, weightCol="w", seed=1, maxIter=3).fit(weighted)
    assert model.summary.engine == "driver"
    size = packed_bytes(900, 3)
    assert f"{size / 2**20:.2f} MiB" in model.summary.engineReason
    assert DRIVER_MAX_BYTES_CONF in model.summary.engineReason


def test_auto_leaves_it_above_the_limit_and_driver_is_then_an_error(spark, weighted):
    size = packed_bytes(900, 3)
    spark.conf.set(DRIVER_MAX_BYTES_CONF, str(size - 1))
    try:
        model = GaussianMixture(k=3, weightCol="w", seed=1, maxIter=3).fit(weighted)
        assert model.summary.engine == "resident"
        assert "too large for the driver engine" in model.summary.engineReason
        with pytest.raises(
            ValueError,
            match=r"engine='driver' cannot run this fit: its rows "
            r"take 0.0 MiB .*900 x 4.*spark.gmm.driver.max",
        ):
            GaussianMixture(k=3, weightCol="w", engine="driver").fit(weighted)
    finally:
        spark.conf.unset(DRIVER_MAX_BYTES_CONF)
    assert GaussianMixture(k=3, weightCol="w", maxIter=2).fit(weighted).summary.engine == "driver"


def test_the_limit_follows_what_the_driver_can_hold(monkeypatch):
    settings = {}
    monkeypatch.setattr(driver, "conf_value", lambda spark, key: settings.get(key))
    monkeypatch.setattr(driver, "_available_memory", lambda: 64 << 30)
    assert driver_limit(None, 3) == (12 << 20, f"the default {DRIVER_MAX_BYTES_CONF} (12 MiB)")
    settings[DRIVER_MAX_BYTES_CONF] = "1g"
    limit, what = driver_limit(None, 3)  # a quarter of the default 1g heap, as packed
    assert what.startswith("a quarter of spark.driver.memory") and limit < 1 << 30
    settings["spark.driver.maxResultSize"] = "4m"
    limit, what = driver_limit(None, 3)
    assert what.startswith("half of spark.driver.maxResultSize") and limit < 2 << 20
    monkeypatch.setattr(driver, "_available_memory", lambda: 3 << 20)
    assert driver_limit(None, 3) == (1 << 20, "a third of the driver's free memory (0.0 GiB)")


@pytest.mark.compat
def test_it_needs_no_python_worker(weighted, monkeypatch):
    """The rows come as Arrow from the JVM (a plan without a Python node) and every pass runs
    here; the background start of Python workers is left to the fits that need them."""
    from spark_gmm import fitting

    plans = []
    original = driver.collect_arrow

    def collect(df):
        plans.append(df._jdf.queryExecution().executedPlan().toString())
        return original(df)

    def no_workers(spark):
        raise AssertionError("the driver engine started Python workers")

    monkeypatch.setattr(driver, "collect_arrow", collect)
    monkeypatch.setattr(fitting, "start_python_workers", no_workers)
    model = GaussianMixture(k=3, weightCol="w", seed=1, maxIter=3).fit(weighted)
    assert model.summary.engine == "driver" and len(plans) == 1
    assert "InMemoryTableScan" in plans[0]  # the plan is the cached input's ...
    for python_node in ("Python", "ArrowEval", "MapInArrow", "MapInPandas"):
        assert python_node not in plans[0], plans[0]  # ... and no Python runs on it


# --------------------------------------------------------------- validation on the driver

BAD_INPUTS = {
    "a null row": [([1.0, 2.0], 1.0), (None, 1.0)],
    "a NaN": [([1.0, 2.0], 1.0), ([float("nan"), 2.0], 1.0)],
    "a null element": [([1.0, 2.0], 1.0), ([None, 2.0], 1.0)],
    "an infinity": [([1.0, 2.0], 1.0), ([1.0, float("-inf")], 1.0)],
    "two sizes": [([1.0, 2.0], 1.0), ([1.0, 2.0, 3.0], 1.0)],
    "size 0": [([], 1.0), ([], 1.0)],
    "a negative weight": [([1.0, 2.0], 1.0), ([3.0, 2.0], -1.0)],
    "a null weight": [([1.0, 2.0], 1.0), ([3.0, 2.0], None)],
    "zero weight": [([1.0, 2.0], 0.0), ([3.0, 2.0], 0.0)],
    "nothing valid": [(None, 1.0), ([float("nan"), 1.0], 1.0)],
}


def _frame(spark, rows, repeat=20):
    data = [(x, w) for _ in range(repeat) for x, w in rows]
    return spark.createDataFrame(data, "features array<double>, w double").repartition(2).cache()


@pytest.mark.parametrize(  # "error" on the oldest versions too (.ci/run): the collect differs
    "handle_invalid", [pytest.param("error", marks=pytest.mark.compat), "skip"]
)
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_the_driver_validates_as_spark_does(spark, case, handle_invalid):
    """Small inputs are validated on the driver from the collected rows (one Spark job);
    the error is the one Spark's validation gives (engine='jobPerPass' validates in Spark)."""
    df = _frame(spark, BAD_INPUTS[case])
    outcomes = {}
    for engine in ("auto", "jobPerPass"):
        gm = GaussianMixture(
            k=1, weightCol="w", maxIter=2, handleInvalid=handle_invalid, engine=engine
        )
        try:
            model = gm.fit(df)
            outcomes[engine] = (
                model.summary.engine,
                model.summary.numRows,
                np.asarray(model.means).tobytes(),
            )
        except Exception as exc:
            outcomes[engine] = (type(exc).__name__, str(exc))
    df.unpersist()
    auto, per_pass = outcomes["auto"], outcomes["jobPerPass"]
    if per_pass[0] == "jobPerPass":  # a fit: the same rows kept, the same bits
        assert auto[0] == "driver" and auto[1:] == per_pass[1:]
    else:
        assert auto == per_pass and per_pass[0] == "InvalidInputError", outcomes


@pytest.mark.compat
def test_an_input_spark_estimates_large_is_validated_in_spark(spark, weighted, monkeypatch):
    """Where Spark's size estimate is unknown or large (Spark Connect, big files), the input
    is validated by Spark's aggregation first; a small one still runs on the driver."""
    calls = []
    original = driver.collect_arrow
    monkeypatch.setattr(driver, "collect_arrow", lambda df: calls.append(df) or original(df))
    monkeypatch.setattr(driver, "estimated_bytes", lambda df: None)
    model = GaussianMixture(k=3, weightCol="w", seed=1, maxIter=3).fit(weighted)
    assert model.summary.engine == "driver" and len(calls) == 1
    reference = _outcome(weighted, "kmeans", "driver")
    monkeypatch.setattr(driver, "estimated_bytes", lambda df: 1)
    again = _outcome(weighted, "kmeans", "driver")
    _assert_same_bits(again, reference)


# --------------------------------------------------------------- the same everywhere


def test_the_driver_engine_needs_nothing_the_resident_engine_checks(weighted, monkeypatch):
    """Dynamic allocation, a remote Spark Connect server, unknown slots: the checks of
    resident.plan. A small fit never reaches them (they fail here if asked) and needs no
    SparkContext: the rows come from the DataFrame's own collect."""
    from spark_gmm.engine import choose

    def refuse(*args, **kwargs):
        raise AssertionError("a small fit asked whether a barrier stage can run")

    monkeypatch.setattr(choose, "plan", refuse)
    for estimated in (True, False):  # validated on the driver, or by Spark first (Connect)
        if not estimated:
            monkeypatch.setattr(driver, "estimated_bytes", lambda df: None)
        model = GaussianMixture(k=3, weightCol="w", seed=1, maxIter=3).fit(weighted)
        assert model.summary.engine == "driver"


def test_two_fits_at_once_and_a_parallel_cross_validator(spark, weighted):
    import threading

    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    from spark_gmm.selection import GaussianMixtureEvaluator

    gm = GaussianMixture(k=3, weightCol="w", seed=1, maxIter=5, logLikelihoodCol="logLikelihood")
    alone = gm.fit(weighted)
    results = [None, None]

    def fit(i):
        results[i] = gm.fit(weighted)

    threads = [threading.Thread(target=fit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for model in results:
        assert model.summary.engine == "driver"
        np.testing.assert_array_equal(np.asarray(model.means), np.asarray(alone.means))
    grid = ParamGridBuilder().addGrid(gm.k, [2, 3]).build()
    metrics = []
    for parallelism in (1, 2):
        cv = CrossValidator(
            estimator=gm,
            estimatorParamMaps=grid,
            numFolds=2,
            seed=3,
            evaluator=GaussianMixtureEvaluator(),
            parallelism=parallelism,
        )
        metrics.append(cv.fit(weighted).avgMetrics)
    assert metrics[0] == metrics[1]
