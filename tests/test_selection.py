"""Initialisation modes, restarts in shared passes, collapse recovery, BIC/AIC selection, the
Evaluator in CrossValidator / TrainValidationSplit."""

import shutil
import subprocess

import numpy as np
import pytest
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from spark_gmm import GaussianMixture, GaussianMixtureModel, kernel
from spark_gmm.selection import (
    GaussianMixtureEvaluator,
    GaussianMixtureSelectionModel,
    GaussianMixtureSelector,
)
from tests.datasets import blobs, vector_df

TYPES = list(kernel.COVARIANCE_TYPES)
IRIS_COLS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

# mclust 6.0.0 (Debian r-cran-mclust), mclustBIC(iris, G=1:6,
# modelNames=c("VVV","VVI","EEE","VII")) on scikit-learn's iris; mclust's BIC is
# 2 logL - p log n, so larger is better. Its choice: VVV (full), 2 components.
MCLUST_FAMILIES = {"VVV": "full", "VVI": "diag", "EEE": "tied", "VII": "spherical"}
MCLUST_CHOICE = ("full", 2)


@pytest.fixture(scope="module")
def iris_df(spark):
    X = load_iris().data
    df = spark.createDataFrame([[float(v) for v in x] for x in X], IRIS_COLS).repartition(2)
    df.cache().count()  # materialised, so no test counts the caching job
    return X, df


@pytest.fixture(scope="module")
def blob_df(spark):
    X, _ = blobs(200, 3, k=3, separation=4.0, seed=5)
    df = vector_df(spark, X, partitions=3)
    df.cache().count()  # materialised, so no test counts the caching job
    return X, df


def _jobs_of(spark, group, action):
    """Number of Spark jobs ``action()`` runs (classic sessions: job groups)."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    try:
        action()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return len(sc.statusTracker().getJobIdsForGroup(group))


# ---------------------------------------------------------------- initialisation and restarts


@pytest.mark.parametrize("init_mode", ["kmeans", "k-means++", "random", "randomFromData"])
def test_every_init_mode_is_reproducible_and_fits(spark, blob_df, init_mode):
    _, df = blob_df
    gm = GaussianMixture(k=3, initMode=init_mode, seed=9, maxIter=200, tol=1e-6)
    a, b = gm.fit(df), gm.fit(df)
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.covariances, b.covariances)
    # every mode finds the three blobs (one component each)
    assert sorted(a.summary.clusterSizes) == [200, 200, 200]


@pytest.mark.parametrize("init_mode", ["k-means++", "random", "randomFromData"])
def test_seed_changes_the_random_start(spark, blob_df, init_mode):
    _, df = blob_df
    starts = [
        GaussianMixture(k=3, initMode=init_mode, seed=s, maxIter=0).fit(df).means for s in (1, 2)
    ]
    assert not np.allclose(starts[0], starts[1])


def test_explicit_initial_parameters_are_the_start(spark, blob_df):
    X, df = blob_df
    means = X[:3]
    model = GaussianMixture(
        k=3,
        covarianceType="diag",
        initialMeans=means.tolist(),
        initialWeights=[0.2, 0.3, 0.5],
        initialCovariances=np.ones((3, 3)).tolist(),
        maxIter=0,
    ).fit(df)
    np.testing.assert_array_equal(model.means, means)
    np.testing.assert_array_equal(model.weights, [0.2, 0.3, 0.5])
    np.testing.assert_array_equal(model.covariances, np.ones((3, 3)))
    with pytest.raises(ValueError, match="initialMeans has shape"):
        GaussianMixture(k=2, initialMeans=means.tolist()).fit(df)


def test_restarts_share_one_pass_per_iteration(spark, blob_df):
    _, df = blob_df

    def fit(n_init):
        gm = GaussianMixture(k=3, initMode="k-means++", nInit=n_init, seed=4, tol=0.0, maxIter=6)
        out = {}
        out["jobs"] = _jobs_of(spark, f"nInit{n_init}", lambda: out.setdefault("m", gm.fit(df)))
        return out["m"], out["jobs"]

    one, jobs_one = fit(1)
    five, jobs_five = fit(5)
    assert jobs_five == jobs_one  # five restarts, not five times the Spark jobs
    # the sample and the assignment of the initialisation, 6 EM passes, the final pass
    assert five.summary.numDataPasses == one.summary.numDataPasses == 2 + 6 + 1
    restarts = five.summary.restarts
    assert len(restarts) == 5 and [r["seed"] for r in restarts] == [4, 5, 6, 7, 8]
    best = max(r["logLikelihood"] for r in restarts)
    assert five.summary.logLikelihood == best
    assert restarts[five.summary.bestRestart]["logLikelihood"] == best
    # restart 0 of nInit=5 is the nInit=1 run: more restarts are never worse
    assert restarts[0]["logLikelihood"] == pytest.approx(one.summary.logLikelihood, rel=1e-12)
    assert five.summary.logLikelihood >= one.summary.logLikelihood


def test_collapsed_component_is_reseeded_or_kept_finite(spark, blob_df):
    X, df = blob_df
    # one initial mean far from all data: its component gets no rows at once
    means = np.vstack([X[:2], X.mean(0) + 1e4])
    gm = GaussianMixture(k=3, initialMeans=means.tolist(), maxIter=100, tol=1e-6)
    recovered = gm.fit(df)
    assert recovered.summary.numRecoveredComponents >= 1
    assert min(recovered.weights) > 0.2  # the three blobs, one component each
    assert sorted(recovered.summary.clusterSizes) == [200, 200, 200]

    kept = gm.copy().setRecoverCollapsed(False).fit(df)
    assert kept.summary.numRecoveredComponents == 0
    assert min(kept.weights) < 1e-6  # left collapsed, as asked
    for values in (kept.weights, kept.means, kept.covariances):
        assert np.all(np.isfinite(values))
    scored = kept.setLogLikelihoodCol("ll").transform(df).toPandas()
    assert np.all(np.isfinite(scored["ll"]))
    assert np.all(np.isfinite(np.stack(scored["probability"].map(lambda v: v.toArray()))))


# ---------------------------------------------------------------- information criteria


def _sklearn_with(model: GaussianMixtureModel) -> SkGaussianMixture:
    sk = SkGaussianMixture(n_components=model.getK(), covariance_type=model.getCovarianceType())
    sk.weights_, sk.means_ = np.asarray(model.weights), model.means
    sk.covariances_, sk.precisions_cholesky_ = model.covariances, model.precisionsCholesky
    return sk


@pytest.mark.parametrize("covariance_type", TYPES)
def test_model_criteria_equal_sklearn_for_the_same_parameters(spark, iris_df, covariance_type):
    X, df = iris_df
    model = GaussianMixture(k=3, covarianceType=covariance_type, inputCols=IRIS_COLS, seed=1).fit(
        df
    )
    sk = _sklearn_with(model)
    assert model.numParameters == sk._n_parameters()
    assert model.bic(df) == pytest.approx(sk.bic(X), rel=1e-9)
    assert model.aic(df) == pytest.approx(sk.aic(X), rel=1e-9)
    assert model.score(df) == pytest.approx(sk.score(X), rel=1e-9)
    assert model.summary.bic == pytest.approx(sk.bic(X), rel=1e-9)


@pytest.fixture(scope="module")
def iris_selection(spark, iris_df):
    _, df = iris_df
    selector = GaussianMixtureSelector(
        estimator=GaussianMixture(inputCols=IRIS_COLS, seed=0, tol=1e-6, maxIter=500),
        kValues=[1, 2, 3, 4, 5, 6],
        covarianceTypes=TYPES,
    )
    return selector.fit(df)


def test_iris_bic_table_matches_sklearn_and_mclust_choice(spark, iris_df, iris_selection):
    X, df = iris_df
    table = iris_selection.table
    assert list(table.columns) == [
        "k",
        "covarianceType",
        "logLikelihood",
        "nParameters",
        "bic",
        "aic",
        "numIter",
        "converged",
    ]
    assert len(table) == 24 and table["converged"].all()
    best = iris_selection.bestModel
    row = table.loc[table["bic"].idxmin()]
    assert (best.getCovarianceType(), best.getK()) == (row["covarianceType"], row["k"])
    assert (row["covarianceType"], int(row["k"])) == MCLUST_CHOICE
    assert best.summary.bic == pytest.approx(row["bic"], rel=1e-12)
    # parameter counts as scikit-learn defines them, and its BIC/AIC of the same parameters
    for _, r in table.iterrows():
        sk = SkGaussianMixture(n_components=int(r["k"]), covariance_type=r["covarianceType"])
        sk.means_ = np.zeros((int(r["k"]), X.shape[1]))
        assert r["nParameters"] == sk._n_parameters()
    sk = _sklearn_with(best)
    assert row["bic"] == pytest.approx(sk.bic(X), rel=1e-3)
    assert row["aic"] == pytest.approx(sk.aic(X), rel=1e-3)
    # AIC picks a model at least as complex as BIC's choice
    aic_row = table.loc[table["aic"].idxmin()]
    assert aic_row["nParameters"] >= row["nParameters"]


def _mclust_bic(tmp_path, X):
    """mclust's BIC table {(type, k): BIC (larger better)} via Rscript, or None."""
    if shutil.which("Rscript") is None:
        return None
    csv = tmp_path / "iris.csv"
    np.savetxt(csv, X, delimiter=",")
    script = (
        "suppressMessages(library(mclust)); "
        f"X <- as.matrix(read.csv('{csv}', header=FALSE)); "
        "b <- mclustBIC(X, G=1:6, modelNames=c('VVV','VVI','EEE','VII'), verbose=FALSE); "
        "write.csv(as.data.frame(unclass(b)[,]), stdout())"
    )
    proc = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return None
    lines = [line.replace('"', "").split(",") for line in proc.stdout.strip().splitlines()]
    header = lines[0][1:]
    return {
        (MCLUST_FAMILIES[name], int(row[0])): float(value)
        for row in lines[1:]
        for name, value in zip(header, row[1:])
        if value != "NA"
    }


def test_iris_selection_agrees_with_mclust(spark, iris_df, iris_selection, tmp_path):
    X, _ = iris_df
    mclust = _mclust_bic(tmp_path, X)
    if mclust is None:
        pytest.skip("R's mclust is not installed (apt-get install r-cran-mclust)")
    choice = max(mclust, key=mclust.get)
    assert choice == MCLUST_CHOICE
    table = iris_selection.table
    ours = {(r["covarianceType"], int(r["k"])): r["bic"] for _, r in table.iterrows()}
    assert min(ours, key=ours.get) == choice
    # the same optimum for the chosen model: mclust's BIC is minus ours
    assert -mclust[choice] == pytest.approx(ours[choice], rel=1e-3)


def test_selector_grid_shares_passes(spark, blob_df):
    _, df = blob_df
    est = GaussianMixture(initMode="k-means++", seed=2, tol=0.0, maxIter=5)
    single = {}
    jobs_single = _jobs_of(
        spark, "single", lambda: single.setdefault("m", est.copy().setK(3).fit(df))
    )
    grid = {}
    selector = GaussianMixtureSelector(
        estimator=est, kValues=[1, 2, 3, 4], covarianceTypes=["full", "diag", "spherical"]
    )
    jobs_grid = _jobs_of(spark, "grid", lambda: grid.setdefault("m", selector.fit(df)))
    assert jobs_grid == jobs_single  # twelve candidates, the passes of one
    assert len(grid["m"].table) == 12
    assert grid["m"].table["numIter"].eq(5).all()


def test_selector_params_and_errors(spark, blob_df):
    _, df = blob_df
    with pytest.raises(ValueError, match="kValues"):
        GaussianMixtureSelector(kValues=[0, 2])
    with pytest.raises(ValueError, match="covarianceTypes"):
        GaussianMixtureSelector(covarianceTypes=["full", "banana"])
    with pytest.raises(ValueError, match="criterion"):
        GaussianMixtureSelector(criterion="icl")
    with pytest.raises(TypeError, match="estimator"):
        GaussianMixtureSelector(estimator="gmm")
    warm = GaussianMixture(initialMeans=[[0.0, 0.0, 0.0]] * 2)
    with pytest.raises(ValueError, match="initialModel or initialMeans"):
        GaussianMixtureSelector(estimator=warm, kValues=[2]).fit(df)


def test_selection_model_round_trip(spark, iris_df, iris_selection, tmp_path):
    from chispa import assert_df_equality

    _, df = iris_df
    path = str(tmp_path / "selection")
    iris_selection.save(path)
    loaded = GaussianMixtureSelectionModel.load(path)
    assert loaded.uid == iris_selection.uid
    assert loaded.table.equals(iris_selection.table)
    assert loaded.bestModel.uid == iris_selection.bestModel.uid
    assert_df_equality(loaded.transform(df), iris_selection.transform(df))

    selector = GaussianMixtureSelector(
        estimator=GaussianMixture(seed=5, maxIter=7), kValues=[2, 3], criterion="aic"
    )
    selector.save(str(tmp_path / "selector"))
    back = GaussianMixtureSelector.load(str(tmp_path / "selector"))
    assert back.uid == selector.uid and back.getKValues() == [2, 3]
    assert back.getCriterion() == "aic"
    assert back.getEstimator().getMaxIter() == 7 and back.getEstimator().getSeed() == 5


# ---------------------------------------------------------------- Evaluator


@pytest.mark.parametrize("metric,larger", [("logLikelihood", True), ("bic", False), ("aic", False)])
def test_evaluator_equals_model_criteria(spark, iris_df, metric, larger):
    _, df = iris_df
    model = GaussianMixture(k=2, inputCols=IRIS_COLS, logLikelihoodCol="logLikelihood", seed=3).fit(
        df
    )
    evaluator = GaussianMixtureEvaluator(metricName=metric)
    assert evaluator.isLargerBetter() is larger
    expected = {"logLikelihood": model.score, "bic": model.bic, "aic": model.aic}[metric](df)
    assert evaluator.evaluate(model.transform(df)) == pytest.approx(expected, rel=1e-12)


def test_evaluator_explains_a_missing_column(spark, iris_df):
    _, df = iris_df
    model = GaussianMixture(k=2, inputCols=IRIS_COLS, seed=3).fit(df)
    with pytest.raises(ValueError, match="set logLikelihoodCol='logLikelihood'"):
        GaussianMixtureEvaluator().evaluate(model.transform(df))
    with pytest.raises(ValueError, match="metricName"):
        GaussianMixtureEvaluator(metricName="accuracy")


def test_evaluator_in_cross_validator_and_train_validation_split(spark, blob_df, tmp_path):
    _, df = blob_df
    gm = GaussianMixture(logLikelihoodCol="logLikelihood", seed=1, maxIter=50)
    grid = (
        ParamGridBuilder()
        .addGrid(gm.k, [1, 3])
        .addGrid(gm.covarianceType, ["full", "spherical"])
        .build()
    )
    cv = CrossValidator(
        estimator=gm,
        estimatorParamMaps=grid,
        numFolds=2,
        seed=7,
        evaluator=GaussianMixtureEvaluator(metricName="logLikelihood"),
    )
    cv_model = cv.fit(df)
    assert len(cv_model.avgMetrics) == 4
    # three blobs: k=3 beats k=1 on held-out log-likelihood
    assert cv_model.bestModel.getK() == 3
    cv_model.save(str(tmp_path / "cv"))

    tvs = TrainValidationSplit(
        estimator=gm,
        estimatorParamMaps=grid,
        trainRatio=0.7,
        seed=7,
        evaluator=GaussianMixtureEvaluator(metricName="bic"),
    )
    tvs_model = tvs.fit(df)
    assert tvs_model.bestModel.getK() == 3
    best = int(np.argmin(tvs_model.validationMetrics))  # BIC: lower is better
    assert tvs_model.bestModel.getCovarianceType() == grid[best][gm.covarianceType]
