"""Spark Connect beyond the drop-in script (tests/test_dropin.py): the selector, the errors bad
input gets, and engine='auto' through a server that does not look local, all from a Connect
client (tests/scripts/connect_script.py against the session's server)."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import numpy as np
import pytest

from spark_gmm import GaussianMixture
from spark_gmm.selection import GaussianMixtureSelector
from tests.scripts.connect_script import blob_rows

pytestmark = pytest.mark.slow


def _alias_of_loopback():
    """A name of this machine other than localhost that resolves to 127.0.0.1 (the Connect
    server listens there), e.g. its host name; None when it has none."""
    for name in (socket.gethostname(), socket.getfqdn()):
        if not name or name == "localhost":
            continue
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)}
        except OSError:
            continue
        if addresses == {"127.0.0.1"}:
            return name
    return None


@pytest.fixture(scope="module")
def facts(run_json_script, tmp_path_factory, connect_url):
    args = ["--remote", connect_url]
    alias = _alias_of_loopback()
    if alias:
        url = urlparse(connect_url)
        args += ["--remote-alias", f"sc://{alias}:{url.port}"]
    out = tmp_path_factory.mktemp("connect") / "facts.json"
    return run_json_script("connect_script.py", *args, out=out)


def test_the_client_is_a_connect_client(facts):
    assert facts["mode"] == "connect"


def test_the_selector_picks_as_it_does_on_a_classic_session(facts, spark):
    connect = facts["selection"]
    assert "ok" in connect, connect
    connect = connect["ok"]
    df = spark.createDataFrame(blob_rows(), "id long, x double, y double")
    from pyspark.ml.feature import VectorAssembler

    features = VectorAssembler(inputCols=["x", "y"], outputCol="features").transform(
        df.repartition(3)
    )
    classic = GaussianMixtureSelector(
        estimator=GaussianMixture(seed=4, maxIter=50),
        kValues=[1, 2, 3, 4],
        covarianceTypes=["full", "diag"],
    ).fit(features)
    table = classic.table.sort_values(["covarianceType", "k"])
    assert connect["rows"] == len(table) == 8
    assert (connect["best_k"], connect["best_covariance_type"]) == (
        classic.bestModel.getK(),
        classic.bestModel.getCovarianceType(),
    )
    assert connect["best_k"] == 3
    np.testing.assert_allclose(connect["bic"], table["bic"].to_numpy(), rtol=1e-6)
    assert connect["engine"] == "driver"  # a small table, on the driver on Connect too


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("null", "InvalidInputError", ["'y'", "null"]),
        ("nan", "InvalidInputError", ["'x'", "NaN"]),
        ("missing_column", "InvalidInputError", ["nope"]),
        ("text_column", "InvalidInputError", ["must be numeric", "x (string)"]),
        ("too_few_rows", "InvalidInputError", ["only 2 valid row(s)", "k=3"]),
        ("driver_beyond_limit", "ValueError", ["engine='driver' cannot run this fit"]),
    ],
)
def test_bad_input_gets_the_same_clear_errors_on_connect(facts, case, error, words):
    got = facts["errors"][case]
    assert got.get("error") == error, got
    for word in words:
        assert word in got["message"], (word, got)
    assert "Traceback" not in got["message"] and "org.apache" not in got["message"]


def test_skipping_invalid_rows_works_on_connect(facts):
    assert facts["errors"]["null_skipped"] == {"ok": 359}


def test_auto_falls_back_when_the_server_is_not_on_this_machine(facts):
    if "remote" not in facts:
        pytest.skip("this machine has no name other than localhost for 127.0.0.1")
    remote = facts["remote"]
    assert "ok" in remote, remote
    remote = remote["ok"]
    assert remote["engine"] == "jobPerPass"
    assert "runs its tasks where they cannot be assumed to reach this client" in remote["reason"]
    assert any("cannot be assumed to reach" in w for w in remote["warnings"])
    assert remote["resident"]["error"] == "RuntimeError"
    assert remote["resident"]["message"].startswith("engine='resident' cannot run here: the ")


def test_the_bayesian_mixture_fits_saves_and_loads_as_on_a_classic_session(facts, spark):
    from pyspark.ml.feature import VectorAssembler

    from spark_gmm import BayesianGaussianMixture

    connect = facts["bayesian"]
    assert "ok" in connect, connect
    connect = connect["ok"]
    df = spark.createDataFrame(blob_rows(), "id long, x double, y double").repartition(3)
    features = VectorAssembler(inputCols=["x", "y"], outputCol="features").transform(df)
    classic = BayesianGaussianMixture(k=6, seed=2).fit(features)
    np.testing.assert_allclose(connect["weights"], classic.weights, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(connect["means"], classic.means, rtol=1e-6)
    assert connect["lower_bound"] == pytest.approx(classic.summary.lowerBound, rel=1e-9)
    np.testing.assert_allclose(
        connect["loaded_weight_concentration"], classic.weightConcentration, rtol=1e-6
    )
    assert sum(w > 0.01 for w in connect["weights"]) == 3 and connect["engine"] == "driver"
    assert len(connect["predictions"]) == 360 and len(set(connect["predictions"])) == 3


def test_missing_features_are_kept_as_on_a_classic_session(facts, spark):
    from tests.scripts.connect_script import missing_rows

    connect = facts["missing"]
    assert "ok" in connect, connect
    connect = connect["ok"]
    rows = missing_rows(spark.createDataFrame(blob_rows(), "id long, x double, y double"))
    classic = GaussianMixture(k=3, seed=1, inputCols=["x", "y"], handleInvalid="keep").fit(
        rows.repartition(3)
    )
    assert connect["incomplete"] == classic.summary.numIncompleteRows == 72 + 52 - 10
    np.testing.assert_allclose(connect["means"], classic.means, rtol=1e-6)
    assert len(connect["predictions"]) == 360
