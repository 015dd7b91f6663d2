"""model.sample: rows drawn on the executors, reproducible, with the model's moments."""

import numpy as np
import pytest

from spark_gmm import GaussianMixture, GaussianMixtureModel

WEIGHTS = [0.3, 0.7]
MEANS = [[0.0, 0.0, 0.0], [6.0, -2.0, 1.0]]
COVARIANCES = [
    [[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 0.5]],
    [[0.5, 0.0, 0.1], [0.0, 1.0, -0.2], [0.1, -0.2, 2.0]],
]


@pytest.fixture(scope="module")
def model():
    return GaussianMixtureModel.fromArrays(WEIGHTS, MEANS, COVARIANCES, "full")


def _collect(df, features="features"):
    pdf = df.toPandas()
    return np.stack(pdf[features].map(lambda v: v.toArray())), pdf["component"].to_numpy()


def test_sample_has_the_model_moments(spark, model):
    n = 100_000
    df = model.sample(n, seed=1)
    assert df.columns == ["features", "component"]
    assert dict(df.dtypes)["component"] == "int"
    X, labels = _collect(df)
    assert len(X) == n
    counts = np.bincount(labels, minlength=2)
    # binomial sampling error of the component counts: within 5 standard deviations
    sd = np.sqrt(n * np.asarray(WEIGHTS) * (1 - np.asarray(WEIGHTS)))
    assert np.all(np.abs(counts - n * np.asarray(WEIGHTS)) < 5 * sd)
    for j in range(2):
        rows = X[labels == j]
        cov = np.asarray(COVARIANCES[j])
        standard_error = np.sqrt(np.diag(cov) / len(rows))
        assert np.all(np.abs(rows.mean(0) - MEANS[j]) < 5 * standard_error)
        # sample covariance entries: standard error about sqrt((s_ii s_jj + s_ij^2) / n)
        se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / len(rows))
        assert np.all(np.abs(np.cov(rows.T) - cov) < 5 * se_cov)


def test_sample_is_reproducible_whatever_the_partitioning(spark, model):
    a = _collect(model.sample(10_000, seed=4, numPartitions=1))
    b = _collect(model.sample(10_000, seed=4, numPartitions=7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = _collect(model.sample(10_000, seed=5, numPartitions=1))
    assert not np.array_equal(a[0], c[0])


def test_sample_runs_on_the_executors(spark, model):
    df = model.sample(3_000_000, seed=2, numPartitions=4)
    plan = df._jdf.queryExecution().executedPlan().toString()
    assert "Range" in plan and "LocalTableScan" not in plan  # generated, not shipped
    assert df.count() == 3_000_000
    assert df.rdd.getNumPartitions() == 4
    assert model.sample(0, seed=1).count() == 0
    with pytest.raises(ValueError, match="n must be >= 0"):
        model.sample(-1)


def test_fitting_a_large_sample_recovers_the_model(spark, model):
    df = model.sample(200_000, seed=11).cache()
    fitted = GaussianMixture(k=2, seed=0, tol=1e-6).fit(df)
    order = np.argsort(fitted.means[:, 0])  # component 0 has the smaller first mean
    np.testing.assert_allclose(np.asarray(fitted.weights)[order], WEIGHTS, atol=0.01)
    np.testing.assert_allclose(fitted.means[order], MEANS, atol=0.03)
    np.testing.assert_allclose(fitted.covariances[order], COVARIANCES, atol=0.05)
    df.unpersist()


def test_sample_uses_the_models_features_column(spark, model):
    renamed = model.copy().setFeaturesCol("x")
    assert renamed.sample(5, seed=0).columns == ["x", "component"]
