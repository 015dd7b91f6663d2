"""Where ``engine='auto'`` cannot use a barrier stage it says why and runs one Spark job per
pass (spark_gmm.engine.resident.plan, spark_gmm.engine.choose.open_engine):

* dynamic allocation (Spark refuses barrier stages under it),
* a Spark Connect server that is not on this machine (its executors may not reach us),
* a session with no SparkContext whose master does not tell how many tasks run at once.

``plan`` is asked with stub sessions that look like each case as plan reads it (settings,
session kind, the Connect client's host, the master); then whole fits on the test session
with dynamic allocation as plan reads it: on job-per-pass, with the reason in the summary and
the log, bit-identical to a forced job-per-pass fit.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from spark_gmm import GaussianMixture
from spark_gmm.engine import choose, resident
from spark_gmm.engine.driver import DRIVER_MAX_BYTES_CONF
from tests.datasets import blobs

pytestmark = pytest.mark.compat  # also on PySpark 3.5 (.ci/run)


class _Conf:
    def __init__(self, values):
        self._values = dict(values)

    def get(self, key, default=None):
        return self._values.get(key, default)


class _ClassicSession:
    """What plan reads of a classic session: its settings and its SparkContext's slot count."""

    def __init__(self, settings, slots=4, app="stub-classic"):
        self.conf = _Conf(settings)
        jsc = SimpleNamespace(
            maxNumConcurrentTasks=lambda profile: slots,
            resourceProfileManager=lambda: SimpleNamespace(defaultResourceProfile=lambda: None),
        )
        self.sparkContext = SimpleNamespace(
            applicationId=app, _conf=_Conf({}), _jsc=SimpleNamespace(sc=lambda: jsc)
        )


class _ConnectSession:
    """What plan reads of a Spark Connect session: the client's host and the settings the
    server reports; it has no SparkContext."""

    __module__ = "pyspark.sql.connect.session"

    def __init__(self, host, settings, session_id):
        self.conf = _Conf(settings)
        self.client = SimpleNamespace(_builder=SimpleNamespace(host=host))
        self.session_id = session_id

    @property
    def sparkContext(self):
        raise RuntimeError("[JVM_ATTRIBUTE_NOT_SUPPORTED] sparkContext is not supported")


def _plan(session, n_partitions=4):
    return resident.plan(SimpleNamespace(sparkSession=session), n_partitions, 1000)


def test_a_classic_local_session_can_run_a_barrier_stage():
    settings, why = _plan(_ClassicSession({"spark.master": "local[4]"}, slots=4))
    assert why == "" and settings.n_tasks == 4


def test_dynamic_allocation_falls_back():
    session = _ClassicSession(
        {"spark.master": "yarn", "spark.dynamicAllocation.enabled": "true"}, app="stub-dyn"
    )
    settings, why = _plan(session)
    assert settings is None
    assert why == "dynamic allocation is enabled, and Spark runs no barrier stage under it"


def test_a_connect_server_elsewhere_falls_back():
    session = _ConnectSession("spark.example.com", {"spark.master": "local[2]"}, "stub-remote")
    settings, why = _plan(session)
    assert settings is None
    assert why == (
        "the Spark Connect server (spark.example.com) runs its tasks where they cannot be "
        "assumed to reach this client"
    )


@pytest.mark.parametrize("master", ["local[3]", "local-cluster[3,1,1024]"])
def test_a_local_connect_server_counts_its_slots_from_the_master(master):
    session = _ConnectSession("localhost", {"spark.master": master}, f"stub-{master}")
    settings, why = _plan(session, n_partitions=8)
    assert why == "" and settings.n_tasks == 3 and settings.advertise_host == "127.0.0.1"


@pytest.mark.parametrize("master", ["yarn", "k8s://https://api:6443", "spark://head:7077", None])
def test_no_known_slot_count_falls_back(master):
    settings = {} if master is None else {"spark.master": master}
    session = _ConnectSession("localhost", settings, f"stub-slots-{master}")
    planned, why = _plan(session)
    assert planned is None
    assert why.startswith("this session has no SparkContext") and "must know" in why


# ------------------------------------------------------------------ whole fits, auto


@pytest.fixture(scope="module")
def rows(spark):
    X, _ = blobs(200, 2, k=3, separation=6.0, seed=2)
    df = spark.createDataFrame([(x.tolist(),) for x in X], "features array<double>")
    return df.repartition(3).cache()


@pytest.fixture
def dynamic_allocation(spark, monkeypatch):
    """The session as plan reads it under dynamic allocation, and rows beyond the driver
    engine's limit (so auto considers the resident engine)."""
    read = resident.conf_true
    monkeypatch.setattr(
        resident,
        "conf_true",
        lambda s, key: key == "spark.dynamicAllocation.enabled" or read(s, key),
    )
    spark.conf.set(DRIVER_MAX_BYTES_CONF, "0")
    choose._SAID.clear()
    yield
    spark.conf.unset(DRIVER_MAX_BYTES_CONF)


def test_auto_fits_one_job_per_pass_under_dynamic_allocation_and_says_why(
    rows, dynamic_allocation, caplog
):
    gm = GaussianMixture(k=3, seed=5, maxIter=5, tol=0.0)
    with caplog.at_level(logging.INFO, logger="spark_gmm"):
        auto = gm.fit(rows)
        again = gm.fit(rows)
    assert auto.summary.engine == again.summary.engine == "jobPerPass"
    assert auto.summary.engineReason.endswith(
        "and the resident engine cannot run here (dynamic allocation is enabled, and Spark "
        "runs no barrier stage under it)"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if "dynamic allocation" in w] == [
        "the fit runs one Spark job per pass (engine='auto' fell back from the resident "
        "engine): dynamic allocation is enabled, and Spark runs no barrier stage under it"
    ]  # said once for two fits
    forced = gm.copy().setEngine("jobPerPass").fit(rows)
    assert forced.summary.engineReason == "engine='jobPerPass'"
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(getattr(auto, name), getattr(forced, name))


def test_forcing_the_resident_engine_under_dynamic_allocation_says_why(rows, dynamic_allocation):
    with pytest.raises(RuntimeError, match="engine='resident' cannot run here: dynamic alloc"):
        GaussianMixture(k=2, maxIter=1, engine="resident").fit(rows)
