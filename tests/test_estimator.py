"""Spark layer: the estimator against the NumPy kernel, Spark's failure cases, the summary."""

import math

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors
from pyspark.rdd import RDD
from pyspark.sql import functions as F
from scipy import stats as sps

from spark_gmm import GaussianMixture, GaussianMixtureModel, kernel
from spark_gmm.data import prepare, resolve_features
from spark_gmm.engine.base import tree_scale
from spark_gmm.engine.blocks import BLOCKS_SCHEMA, pack
from spark_gmm.engine.job_per_pass import JobPerPassEngine, pack_blocks
from spark_gmm.engine.partitions import limit_partitions
from tests.datasets import adjusted_rand_index, array_df, blobs, one_d_mixture, vector_df

TYPES = kernel.COVARIANCE_TYPES


def _start(X, k, covariance_type, seed=3):
    """Deliberately rough initial parameters: k rows as means, identity-like covariances."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    means = X[rng.choice(len(X), k, replace=False)]
    cov = {
        "full": np.repeat(np.eye(d)[None], k, 0) * 4.0,
        "tied": np.eye(d) * 4.0,
        "diag": np.full((k, d), 4.0),
        "spherical": np.full(k, 4.0),
    }[covariance_type]
    return kernel.MixtureParams(np.full(k, 1.0 / k), means, cov, covariance_type)


def _assert_params_close(model, params, rtol):
    np.testing.assert_allclose(model.weights, params.weights, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(model.means, params.means, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(model.covariances, params.covariances, rtol=rtol, atol=1e-10)


@pytest.fixture(scope="module")
def blob_data():
    return blobs(150, 4, k=3, separation=3.0, seed=11)


@pytest.mark.parametrize(
    "covariance_type,partitions",
    [
        ("full", 1),
        ("full", 3),
        ("full", 8),
        ("full", 40),
        ("tied", 3),
        ("diag", 8),
        ("spherical", 3),
    ],
)
def test_spark_fit_equals_kernel_fit(spark, blob_data, covariance_type, partitions):
    X, _ = blob_data
    start = _start(X, 3, covariance_type)
    reference = kernel.fit_em(X, start, max_iter=15, tol=1e-8, reg_covar=1e-6)
    initial = GaussianMixtureModel.fromArrays(
        start.weights, start.means, start.covariances, covariance_type
    )
    gm = GaussianMixture(
        k=3, covarianceType=covariance_type, maxIter=15, tol=1e-8, initialModel=initial
    )
    model = gm.fit(vector_df(spark, X, partitions))
    _assert_params_close(model, reference.params, rtol=1e-9)
    assert model.summary.numIter == reference.n_iter
    np.testing.assert_allclose(model.summary.logLikelihoodHistory, reference.history, rtol=1e-12)
    assert model.summary.logLikelihood == pytest.approx(reference.log_likelihood, rel=1e-12)


def test_passes_read_at_most_two_partitions_per_core(spark):
    """Many small partitions are coalesced for the EM passes (each task has a fixed cost);
    fewer are kept as they are."""
    cores = spark.sparkContext.defaultParallelism
    many = spark.range(1000, numPartitions=10 * cores)
    assert limit_partitions(many).rdd.getNumPartitions() == 2 * cores
    assert limit_partitions(many).count() == 1000
    few = spark.range(1000, numPartitions=cores + 1)
    assert limit_partitions(few).rdd.getNumPartitions() == cores + 1


def test_packing_joins_batches_into_full_blocks(monkeypatch):
    """Arrow batches (maxRecordsPerBatch rows, some empty) are joined into blocks of
    BLOCK_ELEMENTS // d rows, only the last one shorter, rows and weights together in the
    partition's canonical order."""
    import pyarrow as pa

    from spark_gmm.engine import blocks as blocks_module
    from spark_gmm.engine.blocks import FEATURES, WEIGHT

    monkeypatch.setattr(blocks_module, "BLOCK_ELEMENTS", 30)  # 10 rows of 3 features
    rng = np.random.default_rng(0)
    X, w = rng.standard_normal((57, 3)), rng.random(57)
    cuts = [0, 4, 4, 27, 30, 57]
    batches = [
        pa.RecordBatch.from_pydict(
            {
                FEATURES: pa.array(X[lo:hi].tolist(), pa.list_(pa.float64())),
                WEIGHT: pa.array(w[lo:hi]),
            }
        )
        for lo, hi in zip(cuts, cuts[1:])
    ]
    blocks = [
        block
        for packed in blocks_module.pack(3)(batches)
        for block in blocks_module.read_packed(packed, 3)
    ]
    assert [len(Xb) for Xb, _ in blocks] == [10, 10, 10, 10, 10, 7]
    X_canonical, w_canonical = blocks_module.canonical(X, w)
    assert not np.array_equal(X_canonical, X)
    np.testing.assert_array_equal(np.concatenate([Xb for Xb, _ in blocks]), X_canonical)
    np.testing.assert_array_equal(np.concatenate([wb for _, wb in blocks]), w_canonical)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_packed_block_forms_agree_with_each_other_and_the_kernel(spark, blob_data, depth):
    """The RDD of NumPy blocks (classic sessions) and the DataFrame of packed bytes (what
    Spark Connect reads) give bit-identical statistics over 40 partitions, some empty,
    summed flat (depth 1) or through a tree level, equal to the kernel's."""
    X, _ = blob_data
    d = X.shape[1]
    df = vector_df(spark, X, 40)
    prepared, _ = prepare(df, resolve_features(df, "features", None), None, "error")
    params = _start(X, 3, "full")
    assert (tree_scale(40, depth) is None) == (depth == 1)
    rdd = pack_blocks(prepared, d)
    assert isinstance(rdd, RDD) and rdd.getNumPartitions() == 40
    frame = prepared.mapInArrow(pack(d), BLOCKS_SCHEMA)
    from_rdd = JobPerPassEngine(rdd, d, depth).em_stats([params])[0].to_vector()
    from_frame = JobPerPassEngine(frame, d, depth, packed=True).em_stats([params])[0].to_vector()
    np.testing.assert_array_equal(from_rdd, from_frame)
    reference = kernel.accumulate_stats(X, None, params).to_vector()
    np.testing.assert_allclose(from_rdd, reference, rtol=1e-9, atol=1e-9)


def test_fits_the_same_where_rdds_are_forbidden(spark, blob_data, monkeypatch):
    """Some classic clusters (shared access modes) forbid ``DataFrame.rdd``: the passes then
    read the DataFrame form of the blocks, and the fit ends bit-identical."""
    from pyspark.sql.classic.dataframe import DataFrame as ClassicDataFrame

    X, _ = blob_data
    start = _start(X, 3, "full")
    initial = GaussianMixtureModel.fromArrays(start.weights, start.means, start.covariances)
    gm = GaussianMixture(k=3, maxIter=5, tol=0.0, initialModel=initial)
    df = vector_df(spark, X, 3)
    expected = gm.fit(df)

    def forbidden(self):
        raise RuntimeError("RDD APIs are not allowed on this cluster")

    monkeypatch.setattr(ClassicDataFrame, "rdd", property(forbidden))
    prepared, _ = prepare(df, resolve_features(df, "features", None), None, "error")
    assert not isinstance(pack_blocks(prepared, X.shape[1]), RDD)
    model = gm.fit(df)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(getattr(model, name), getattr(expected, name))
    assert model.summary.logLikelihood == expected.summary.logLikelihood


def test_integer_weights_equal_duplicated_rows(spark, blob_data):
    X, _ = blob_data
    counts = np.random.default_rng(5).integers(1, 4, size=len(X))
    start = _start(X, 3, "full")
    initial = GaussianMixtureModel.fromArrays(start.weights, start.means, start.covariances)
    weighted = spark.createDataFrame(
        [(Vectors.dense(x), int(c)) for x, c in zip(X, counts)], ["features", "w"]
    )
    duplicated = vector_df(spark, np.repeat(X, counts, axis=0), 3)
    fit = dict(k=3, maxIter=20, tol=1e-9, initialModel=initial)
    a = GaussianMixture(weightCol="w", **fit).fit(weighted)
    b = GaussianMixture(**fit).fit(duplicated)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-9)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-9)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-9, atol=1e-12)
    assert a.summary.logLikelihood == pytest.approx(b.summary.logLikelihood, rel=1e-9)
    assert a.summary.totalWeight == pytest.approx(counts.sum())


@pytest.mark.parametrize(
    "case,scale,offset,d",
    [
        ("scaled by 100", 100.0, 0.0, 10),
        ("scaled by 1e-4", 1e-4, 0.0, 10),
        ("shifted by 1e8", 1.0, 1e8, 10),
        ("40 features", 1.0, 0.0, 40),
    ],
)
def test_recovers_blobs_where_spark_builtin_fails(spark, case, scale, offset, d):
    from sklearn.mixture import GaussianMixture as SkGMM

    X, labels = blobs(200, d, k=3, separation=10.0, seed=1)
    X = X * scale + offset
    sk_ari = adjusted_rand_index(labels, SkGMM(3, random_state=0).fit(X).predict(X))
    model = GaussianMixture(k=3, seed=1).fit(vector_df(spark, X, 2))
    predicted = model.transform(vector_df(spark, X, 2)).orderBy("id").select("prediction")
    ours = adjusted_rand_index(labels, [r[0] for r in predicted.collect()])
    assert sk_ari >= 0.95, f"{case}: scikit-learn itself reaches only {sk_ari}"
    assert ours >= 0.95, f"{case}: adjusted Rand index {ours}"
    assert np.all(np.isfinite(model.covariances))
    assert all(np.linalg.eigvalsh(c).min() > 0 for c in model.covariances)


def test_one_d_density_matches_log_likelihood_column_and_integrates_to_one(spark):
    X = one_d_mixture()
    df = vector_df(spark, X, 4)
    # At tol=1e-3 EM (ours and scikit-learn's alike) stops on a plateau after ~4 iterations
    # with means (-0.54, -0.08, 0.23); a tight tol reaches the generating mixture.
    model = GaussianMixture(
        k=3, seed=2, tol=1e-8, maxIter=500, logLikelihoodCol="logLikelihood"
    ).fit(df)

    def density(x):
        return sum(
            w * sps.norm.pdf(x, m[0], math.sqrt(c[0, 0]))
            for w, m, c in zip(model.weights, model.means, model.covariances)
        )

    rows = model.transform(df).select("features", "logLikelihood").limit(500).collect()
    x = np.array([r[0][0] for r in rows])
    np.testing.assert_allclose(np.exp([r[1] for r in rows]), density(x), rtol=1e-10)
    grid = np.linspace(-4.0, 4.0, 400_001)
    assert np.trapezoid(density(grid), grid) == pytest.approx(1.0, abs=1e-8)
    # the fit finds the three generating components
    order = np.argsort(model.means[:, 0])
    np.testing.assert_allclose(model.means[order, 0], [-0.5, -0.1, 0.2], atol=0.03)
    np.testing.assert_allclose(np.array(model.weights)[order], [2 / 17, 5 / 17, 10 / 17], atol=0.03)
    from sklearn.mixture import GaussianMixture as SkGMM

    sk = SkGMM(3, tol=1e-8, max_iter=500, random_state=0).fit(X)
    assert model.summary.logLikelihood / len(X) == pytest.approx(sk.score(X), abs=1e-6)


def test_log_likelihood_history_is_monotone_and_summary_consistent(spark, blob_data):
    X, _ = blob_data
    df = vector_df(spark, X, 3)
    model = GaussianMixture(k=3, seed=4, initMode="randomFromData", tol=0.0, maxIter=12).fit(df)
    s = model.summary
    history = np.array(s.logLikelihoodHistory)
    assert len(history) == s.numIter == 12 and not s.converged
    assert np.all(np.diff(history) >= -1e-10)
    assert sum(s.clusterSizes) == s.numRows == len(X)
    assert s.logLikelihood / s.totalWeight >= history[-1] - 1e-10
    p = model.numParameters
    assert p == kernel.n_parameters(3, 4, "full")
    assert s.bic == pytest.approx(-2 * s.logLikelihood + p * math.log(len(X)))
    assert s.aic == pytest.approx(-2 * s.logLikelihood + 2 * p)
    assert model.bic(df) == pytest.approx(s.bic, rel=1e-12)
    assert model.score(df) == pytest.approx(s.logLikelihood / len(X), rel=1e-12)
    assert s.k == 3 and s.cluster.columns == ["prediction"]
    assert s.probability.columns == ["probability"]
    sizes = {r[0]: r[1] for r in s.predictions.groupBy("prediction").count().collect()}
    assert [sizes.get(j, 0) for j in range(3)] == s.clusterSizes


def test_converges_by_mean_log_likelihood_whatever_the_row_count(spark):
    X, _ = blobs(100, 2, k=2, separation=6.0, seed=8)
    small = GaussianMixture(k=2, seed=1).fit(vector_df(spark, X, 2))
    large = GaussianMixture(k=2, seed=1).fit(vector_df(spark, np.tile(X, (20, 1)), 2))
    assert small.summary.converged and large.summary.converged
    assert abs(small.summary.numIter - large.summary.numIter) <= 1


def test_transform_columns_and_single_row_methods(spark, blob_data):
    X, _ = blob_data
    df = vector_df(spark, X, 2)
    model = GaussianMixture(k=3, seed=4).fit(df)
    model.setLogLikelihoodCol("ll")
    out = model.transform(df)
    types = dict(out.dtypes)
    assert types["prediction"] == "int" and types["probability"] == "vector"
    assert types["ll"] == "double" and out.columns[:2] == ["id", "features"]
    for row in out.limit(20).collect():
        assert row["prediction"] == model.predict(row["features"])
        np.testing.assert_allclose(
            row["probability"].toArray(),
            model.predictProbability(row["features"]).toArray(),
            rtol=1e-12,
        )
        assert row["ll"] == pytest.approx(model.logLikelihood(row["features"]), rel=1e-12)
        assert row["probability"].toArray().sum() == pytest.approx(1.0)
    model.setProbabilityCol("")
    assert "probability" not in model.transform(df).columns


def test_input_cols_array_and_vector_inputs_agree(spark, blob_data):
    X, _ = blob_data
    X = X.copy()
    X[:, 0] = np.round(X[:, 0] * 1000) / 1000  # column `a` arrives as integers / 1000
    start = _start(X, 3, "diag")
    initial = GaussianMixtureModel.fromArrays(start.weights, start.means, start.covariances, "diag")
    fit = dict(k=3, covarianceType="diag", maxIter=10, tol=0.0, initialModel=initial)
    by_vector = GaussianMixture(**fit).fit(vector_df(spark, X, 2))
    by_array = GaussianMixture(**fit).fit(array_df(spark, X, 2))
    cols = spark.createDataFrame(
        [(i, int(round(x[0] * 1000)), *map(float, x[1:])) for i, x in enumerate(X)],
        ["id", "a", "b", "c", "d"],
    ).withColumn("a", F.col("a") / 1000.0)
    by_cols = GaussianMixture(inputCols=["a", "b", "c", "d"], **fit).fit(cols)
    for other in (by_array, by_cols):
        np.testing.assert_allclose(other.means, by_vector.means, rtol=1e-12)
    out = by_cols.transform(cols)
    assert {"prediction", "probability"} <= set(out.columns) and out.count() == len(X)
    f32 = GaussianMixture(**fit).fit(array_df(spark, X, 2, dtype="float"))
    np.testing.assert_allclose(f32.means, by_vector.means, rtol=1e-5)


def test_collapsing_component_stays_finite(spark):
    rng = np.random.default_rng(0)
    X = np.vstack([np.zeros((50, 3)), rng.normal(5, 1, (200, 3)), rng.normal(-5, 1, (200, 3))])
    df = vector_df(spark, X, 2)
    model = GaussianMixture(k=4, seed=3, logLikelihoodCol="ll").fit(df)
    assert np.all(np.isfinite(model.covariances)) and np.all(np.isfinite(model.means))
    out = model.transform(df).agg(F.sum("ll"), F.max("prediction")).collect()[0]
    assert math.isfinite(out[0])


def test_caches_only_what_the_caller_did_not(spark, blob_data):
    X, _ = blob_data
    jsc = spark.sparkContext._jsc
    df = vector_df(spark, X, 2)
    before = jsc.getPersistentRDDs().size()
    GaussianMixture(k=2, seed=1, maxIter=3).fit(df)
    assert jsc.getPersistentRDDs().size() == before
    cached = vector_df(spark, X, 2).cache()
    cached.count()
    GaussianMixture(k=2, seed=1, maxIter=3).fit(cached)
    assert cached.is_cached and jsc.getPersistentRDDs().size() == before + 1
    cached.unpersist(blocking=True)


def test_fit_is_deterministic_given_seed_and_partitioning(spark, blob_data):
    X, _ = blob_data
    a = GaussianMixture(k=3, seed=9).fit(vector_df(spark, X, 3))
    b = GaussianMixture(k=3, seed=9).fit(vector_df(spark, X, 3))
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.covariances, b.covariances)
