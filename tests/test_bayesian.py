"""BayesianGaussianMixture on Spark: equal to scikit-learn's from the same initial
responsibilities, bit-identical on every engine, pruning what the data does not need, and a
pyspark.ml stage like GaussianMixture (persistence and Pipelines here, MLflow in
tests/test_mlflow.py). The kernel side (spark_gmm.variational against scikit-learn, every
attribute) is tests/test_variational.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from sklearn.exceptions import ConvergenceWarning

from spark_gmm import BayesianGaussianMixture, BayesianGaussianMixtureModel, kernel
from spark_gmm.data import resolve_features
from spark_gmm.engine import ENGINES
from spark_gmm.engine.driver import collect_small
from spark_gmm.init import Candidate, initial_centers
from spark_gmm.variational import WEIGHT_CONCENTRATION_PRIOR_TYPES
from tests.datasets import blobs, vector_df
from tests.test_variational import FixedStart, sklearn_concentration


@pytest.fixture(scope="module")
def three_blobs(spark):
    """Three blobs of 1,000 rows in 2 dimensions, well separated, in 2 partitions."""
    X, labels = blobs(1000, 2, k=3, separation=8.0, seed=21)
    return X, labels, vector_df(spark, X)


def _our_initial_resp(df, X, k, seed, covariance_type):
    """The one-hot responsibilities our 'kmeans' start assigns to the rows X: the centers
    the fit's own (driver) engine finds, each row to its nearest."""
    engine, report, _ = collect_small(
        df, resolve_features(df, "features", None), None, "error", 2, "t"
    )
    centers, scale = initial_centers(
        engine, report.n_rows, [Candidate(k, covariance_type, seed)], lloyd=True
    )
    labels = kernel.nearest_center(X, centers[(k, seed)], scale)
    return np.eye(k)[labels]


@pytest.mark.parametrize("prior_type", WEIGHT_CONCENTRATION_PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", kernel.COVARIANCE_TYPES)
def test_equals_scikit_learn_from_the_same_initial_responsibilities(
    spark, three_blobs, covariance_type, prior_type, monkeypatch
):
    from spark_gmm.engine import driver

    monkeypatch.setattr(driver, "estimated_bytes", lambda df: 1)  # collected: the driver engine
    X, _, df = three_blobs
    k, seed = 5, 3
    model = BayesianGaussianMixture(
        k=k,
        covarianceType=covariance_type,
        weightConcentrationPriorType=prior_type,
        seed=seed,
        maxIter=40,
    ).fit(df)
    assert model.summary.engine == "driver"
    resp = _our_initial_resp(df, X, k, seed, covariance_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = FixedStart(
            resp=resp,
            n_components=k,
            covariance_type=covariance_type,
            weight_concentration_prior_type=prior_type,
            max_iter=40,
        ).fit(X)
    rtol = 1e-6
    assert model.summary.numIter == sk.n_iter_ and model.summary.converged == sk.converged_
    np.testing.assert_allclose(model.summary.lowerBound, sk.lower_bound_, rtol=rtol)
    np.testing.assert_allclose(model.weights, sk.weights_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(model.means, sk.means_, rtol=rtol)
    np.testing.assert_allclose(model.covariances, sk.covariances_, rtol=rtol)
    np.testing.assert_allclose(model.weightConcentration, sklearn_concentration(sk), rtol=rtol)
    np.testing.assert_allclose(model.meanPrecision, sk.mean_precision_, rtol=rtol)
    np.testing.assert_allclose(model.degreesOfFreedom, sk.degrees_of_freedom_, rtol=rtol)
    scored = model.setLogLikelihoodCol("ll").transform(df).orderBy("id").toPandas()
    np.testing.assert_allclose(
        np.stack(scored["probability"].map(lambda v: v.toArray())),
        sk.predict_proba(X),
        rtol=rtol,
        atol=1e-12,
    )
    np.testing.assert_array_equal(scored["prediction"], sk.predict(X))
    np.testing.assert_allclose(
        scored["ll"] + model.logWeightNormaliser, sk.score_samples(X), rtol=1e-9
    )


@pytest.mark.compat
def test_bit_identical_on_every_engine(spark, three_blobs):
    *_, df = three_blobs
    weighted = df.withColumn("w", (df["id"] % 2 + 1).cast("double"))
    bgm = BayesianGaussianMixture(
        k=4, covarianceType="diag", initMode="random", nInit=2, weightCol="w", seed=4, maxIter=8
    )
    fits = {engine: bgm.copy().setEngine(engine).fit(weighted) for engine in ENGINES[1:]}
    assert [m.summary.engine for m in fits.values()] == list(ENGINES[1:])
    first = fits["driver"]
    for engine, model in fits.items():
        for name in ("weights", "means", "covariances", "weightConcentration", "degreesOfFreedom"):
            np.testing.assert_array_equal(
                getattr(model, name), getattr(first, name), err_msg=f"{engine} {name}"
            )
        assert model.summary.lowerBoundHistory == first.summary.lowerBoundHistory


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_upper_bound_of_ten_keeps_the_three_blobs(spark, three_blobs, seed):
    """k=10, the Dirichlet-process prior, full covariances: the seven components the data
    does not need end with weights below 0.01, one component per blob keeps the rest."""
    X, labels, df = three_blobs
    model = BayesianGaussianMixture(k=10, seed=seed).fit(df)
    kept = np.flatnonzero(np.asarray(model.weights) > 0.01)
    assert len(kept) == 3, model.weights
    predicted = model.transform(df).orderBy("id").toPandas()["prediction"]
    assert set(predicted) == set(kept.tolist())
    from tests.datasets import adjusted_rand_index

    assert adjusted_rand_index(predicted, labels) > 0.99


@pytest.mark.compat
def test_persistence_and_pipelines(spark, three_blobs, tmp_path):
    *_, df = three_blobs
    pipeline = Pipeline(stages=[BayesianGaussianMixture(k=6, covarianceType="tied", seed=2)])
    fitted = pipeline.fit(df)
    fitted.write().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    original, restored = fitted.stages[0], loaded.stages[0]
    assert isinstance(restored, BayesianGaussianMixtureModel) and not restored.hasSummary
    for name in (
        "weights",
        "means",
        "covariances",
        "weightConcentration",
        "meanPrecision",
        "degreesOfFreedom",
        "precisionsCholesky",
    ):
        np.testing.assert_array_equal(getattr(restored, name), getattr(original, name), name)
    assert restored.getWeightConcentrationPriorType() == "dirichlet_process"
    assert restored.getCovarianceType() == "tied" and restored.uid == original.uid
    a = fitted.transform(df).orderBy("id").select("prediction", "probability").collect()
    b = loaded.transform(df).orderBy("id").select("prediction", "probability").collect()
    assert a == b
    assert restored.score(df) == original.score(df)
    estimator = BayesianGaussianMixture(k=3, meanPrior=[1.0, 2.0], degreesOfFreedomPrior=4.0)
    estimator.write().save(str(tmp_path / "estimator"))
    again = BayesianGaussianMixture.load(str(tmp_path / "estimator"))
    assert again.getMeanPrior() == [1.0, 2.0] and again.getDegreesOfFreedomPrior() == 4.0
    drawn = restored.sample(3000, seed=1).toPandas()
    counts = np.bincount(drawn["component"], minlength=6) / 3000
    np.testing.assert_allclose(counts, restored.weights, atol=0.03)


def test_given_priors_and_bad_ones(spark, three_blobs):
    X, _, df = three_blobs
    model = BayesianGaussianMixture(
        k=3,
        covarianceType="diag",
        weightConcentrationPriorType="dirichlet_distribution",
        weightConcentrationPrior=0.5,
        meanPrecisionPrior=2.0,
        meanPrior=[0.0, 0.0],
        degreesOfFreedomPrior=3.0,
        covariancePrior=[1.0, 2.0],
        seed=1,
    ).fit(df)
    concentration = model.weightConcentration
    assert concentration.shape == (3,)
    # the Dirichlet posterior: the prior plus each component's rows
    np.testing.assert_allclose(concentration.sum(), 0.5 * 3 + len(X), rtol=1e-9)
    np.testing.assert_allclose(model.meanPrecision.sum(), 2.0 * 3 + len(X), rtol=1e-9)
    cases = [
        (dict(degreesOfFreedomPrior=0.5), "degreesOfFreedomPrior"),
        (dict(meanPrior=[1.0, 2.0, 3.0]), "meanPrior"),
        (dict(covariancePrior=[[1.0, 2.0], [2.0, 1.0]]), "covariancePrior"),
        (dict(weightConcentrationPrior=-1.0), "weightConcentrationPrior"),
    ]
    for given, name in cases:
        with pytest.raises(ValueError, match=name):
            BayesianGaussianMixture(k=2, **given).fit(df)
    with pytest.raises(ValueError, match="weightConcentrationPriorType"):
        BayesianGaussianMixture(weightConcentrationPriorType="pitman_yor")
    with pytest.raises(ValueError, match="handleInvalid must be one of error, skip"):
        BayesianGaussianMixture(k=2, handleInvalid="keep")
    with pytest.raises(ValueError, match="handleInvalid must be one of error, skip"):
        BayesianGaussianMixtureModel().setHandleInvalid("keep")
