"""Hostile input: one test (or parametrised case) per item of the requirement

    NaN, +-Inf, nulls, mixed vector sizes, sparse vectors, empty partitions, a single row,
    all rows identical, fewer distinct rows than k, a constant feature, features at scale
    1e-8 and 1e8, huge offsets, float32 input, k=1, k much larger than the clusters,
    weights all zero.

Each case asserts the exact error (the message names the column and the problem) or the
exact outcome. Cases already in tests/test_errors.py (NaN / +Inf / null in a dense vector
column at fit time, mixed dense sizes at fit time, bad and all-zero weights on a plain
column, 2 distinct rows with k=3, one row with k=2, the empty DataFrame) and in
tests/test_estimator.py (scale 1e-4, offset 1e8 with full covariances, float32 with an
initialModel) are not repeated: these cover the other column kinds (array, float32 array,
sparse vector, inputCols), the transform side and the remaining items.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from pyspark.errors import PythonException
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, LongType, StructField, StructType

from spark_gmm import CovarianceError, GaussianMixture, GaussianMixtureModel, InvalidInputError
from tests.datasets import adjusted_rand_index, array_df, blobs, vector_df

INIT_MODES = ["kmeans", "k-means++", "random", "randomFromData"]
COV_TYPES = ["full", "tied", "diag", "spherical"]
REG = 1e-6  # the default regCovar

FEATURES_ONLY = StructType([StructField("features", VectorUDT())])
VECTOR_AND_WEIGHT = StructType(
    [StructField("features", VectorUDT()), StructField("w", DoubleType())]
)
NAN, INF = float("nan"), float("inf")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def three_blobs():
    """300 rows, 3 features, 3 well separated blobs: (X, labels)."""
    return blobs(100, 3, k=3, separation=8.0, seed=4)


@pytest.fixture(scope="module")
def small_model(spark, three_blobs):
    """A k=3 model fitted once for the transform-side cases."""
    X, _ = three_blobs
    return GaussianMixture(k=3, seed=1).fit(vector_df(spark, X, 2))


def _sparse(x):
    return Vectors.sparse(len(x), {j: float(v) for j, v in enumerate(x) if v != 0.0})


def _order(model):
    """Component order that does not depend on labels: lexicographic on the means."""
    return np.lexsort(model.means.T[::-1])


def _canonical(model):
    order = _order(model)
    cov = model.covariances
    if model.getCovarianceType() != "tied":
        cov = cov[order]
    return np.asarray(model.weights)[order], model.means[order], cov


def _assert_same_fit(a, b, rtol=1e-9, atol=1e-12):
    for x, y in zip(_canonical(a), _canonical(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _predictions(model, df):
    """(ids, predictions, probabilities (n, k), logLikelihood (n,)) ordered by id."""
    out = model.copy().setLogLikelihoodCol("ll").transform(df).orderBy("id").collect()
    ids = np.array([r["id"] for r in out])
    pred = np.array([r["prediction"] for r in out])
    proba = np.array([r["probability"].toArray() for r in out])
    ll = np.array([r["ll"] for r in out])
    return ids, pred, proba, ll


def _ari(model, df, labels):
    ids, pred, _, _ = _predictions(model, df)
    return adjusted_rand_index(labels[ids], pred)


def _assert_finite_model(model):
    assert np.all(np.isfinite(model.weights)) and np.all(np.isfinite(model.means))
    assert np.all(np.isfinite(model.covariances))
    assert np.all(np.isfinite(model.precisionsCholesky))


# --------------------------------------------------------------------------- NaN, +-Inf, nulls
# (fit time, every kind of column test_errors.py does not cover)


def _array_rows(X, extra):
    return [([float(v) for v in x],) for x in X] + [(e,) for e in extra]


@pytest.mark.parametrize(
    "kind,bad,problem",
    [
        ("array<double>", [NAN, 1.0, 2.0], "1 with NaN, infinite or null values"),
        ("array<double>", [1.0, INF, 2.0], "1 with NaN, infinite or null values"),
        ("array<double>", [1.0, 2.0, -INF], "1 with NaN, infinite or null values"),
        ("array<double>", [1.0, None, 2.0], "1 with NaN, infinite or null values"),
        ("array<double>", None, "1 null"),
        ("array<float>", [NAN, 1.0, 2.0], "1 with NaN, infinite or null values"),
        ("array<float>", [1.0, -INF, 2.0], "1 with NaN, infinite or null values"),
        ("vector", Vectors.dense([1.0, -INF, 2.0]), "1 with NaN, infinite or null values"),
        ("sparse", Vectors.sparse(3, [1], [NAN]), "1 with NaN, infinite or null values"),
        ("sparse", Vectors.sparse(3, [2], [-INF]), "1 with NaN, infinite or null values"),
    ],
    ids=[
        "array-nan",
        "array-inf",
        "array-neg-inf",
        "array-null-element",
        "array-null-row",
        "float32-nan",
        "float32-neg-inf",
        "vector-neg-inf",
        "sparse-nan",
        "sparse-neg-inf",
    ],
)
def test_fit_rejects_nan_inf_null_in_any_column_kind(spark, three_blobs, kind, bad, problem):
    X = three_blobs[0][:40]
    if kind.startswith("array"):
        df = spark.createDataFrame(_array_rows(X, [bad]), f"features {kind}")
    else:
        rows = [(Vectors.dense(x) if kind == "vector" else _sparse(x),) for x in X] + [(bad,)]
        df = spark.createDataFrame(rows, FEATURES_ONLY)
    with pytest.raises(
        InvalidInputError, match=re.escape("features column 'features' has 1 invalid row(s) of 41")
    ) as e:
        GaussianMixture(k=2).fit(df)
    assert f"({problem})" in str(e.value) and "handleInvalid='skip'" in str(e.value)


def test_fit_rejects_nan_inf_null_in_input_cols_and_skip_drops_them(spark, three_blobs):
    X = three_blobs[0][:60, :2]
    rows = [(float(a), float(b)) for a, b in X] + [(NAN, 1.0), (None, 2.0), (1.0, -INF)]
    df = spark.createDataFrame(rows, "a double, b double")
    with pytest.raises(
        InvalidInputError,
        match=re.escape(
            "inputCols ['a', 'b'] has 3 invalid row(s) of 63 (3 with NaN, infinite or null values)"
        ),
    ):
        GaussianMixture(k=2, inputCols=["a", "b"]).fit(df)
    model = GaussianMixture(k=2, seed=1, inputCols=["a", "b"], handleInvalid="skip").fit(df)
    assert model.summary.numSkippedRows == 3 and model.summary.numRows == 60
    _assert_finite_model(model)
    assert model.transform(df).count() == 60  # the model keeps handleInvalid='skip'


# transform time: the message comes back from the Python worker inside a PythonException
@pytest.mark.parametrize(
    "rows,schema,message",
    [
        (
            [(Vectors.dense([1.0, 2.0, 3.0]),), (None,)],
            FEATURES_ONLY,
            "features column 'features' has null rows; set handleInvalid='skip'",
        ),
        (
            [(Vectors.dense([1.0, -INF, 3.0]),)],
            FEATURES_ONLY,
            "features column 'features' has NaN, infinite or null values; set handleInvalid='skip'",
        ),
        (
            [(Vectors.sparse(3, [1], [NAN]),)],
            FEATURES_ONLY,
            "features column 'features' has NaN, infinite or null values; set handleInvalid='skip'",
        ),
        (
            [([1.0, None, 3.0],)],
            "features array<double>",
            "features column 'features' has NaN, infinite or null values; set handleInvalid='skip'",
        ),
        (
            [([1.0, 2.0, 3.0],), ([1.0, 2.0],)],
            "features array<double>",
            "features column 'features' has a vector of size 2; the model expects 3",
        ),
    ],
    ids=["null-vector", "neg-inf", "sparse-nan", "array-null-element", "mixed-sizes"],
)
def test_transform_error_names_column_and_problem(spark, small_model, rows, schema, message):
    df = spark.createDataFrame(rows, schema).coalesce(1)
    with pytest.raises(PythonException, match=re.escape(message)):
        small_model.transform(df).collect()


def test_transform_skip_drops_nan_inf_null_rows(spark, small_model):
    rows = [
        (0, Vectors.dense([1.0, 2.0, 3.0])),
        (1, None),
        (2, Vectors.dense([NAN, 0.0, 0.0])),
        (3, Vectors.sparse(3, [0], [-INF])),
        (4, Vectors.sparse(3, [], [])),
    ]
    schema = StructType([StructField("id", LongType()), StructField("features", VectorUDT())])
    df = spark.createDataFrame(rows, schema)
    out = small_model.copy().setHandleInvalid("skip").transform(df).orderBy("id").collect()
    assert [r["id"] for r in out] == [0, 4]
    assert all(math.isclose(r["probability"].toArray().sum(), 1.0) for r in out)


# --------------------------------------------------------------------------- mixed vector sizes


@pytest.mark.parametrize(
    "rows,schema,message",
    [
        (
            [([1.0, 2.0],), ([1.0],), ([3.0, 4.0],)],
            "features array<double>",
            "features column 'features' has vectors of different sizes (1 to 2)",
        ),
        (
            [(Vectors.sparse(2, [0], [1.0]),), (Vectors.sparse(3, [0], [1.0]),)],
            FEATURES_ONLY,
            "features column 'features' has vectors of different sizes (2 to 3)",
        ),
        (
            [(Vectors.dense([1.0, 2.0]),), (Vectors.sparse(4, [3], [1.0]),)],
            FEATURES_ONLY,
            "features column 'features' has vectors of different sizes (2 to 4)",
        ),
        (
            [([],), ([],)],
            "features array<double>",
            "features column 'features' has vectors of size 0",
        ),
    ],
    ids=["array", "sparse", "sparse-and-dense", "empty-arrays"],
)
def test_mixed_vector_sizes_in_other_column_kinds(spark, rows, schema, message):
    df = spark.createDataFrame(rows, schema)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        GaussianMixture(k=1).fit(df)


# --------------------------------------------------------------------------- sparse vectors


@pytest.fixture(scope="module")
def sparse_data():
    X, _ = blobs(60, 4, k=3, separation=5.0, seed=5)
    X[np.abs(X) < 1.5] = 0.0  # ~19% exact zeros, so the sparse vectors really are sparse
    return X


@pytest.mark.parametrize(
    "covariance_type,init_mode",
    [("full", "kmeans"), ("full", "randomFromData"), ("diag", "k-means++")],
)
def test_sparse_vectors_fit_exactly_like_dense(spark, sparse_data, covariance_type, init_mode):
    X = sparse_data
    assert (X == 0).mean() > 0.1

    def frame(make):
        df = spark.createDataFrame([(i, make(i, x)) for i, x in enumerate(X)], ["id", "features"])
        return df.repartition(2, "id").sortWithinPartitions("id")

    dense = frame(lambda i, x: Vectors.dense(x))
    sparse = frame(lambda i, x: _sparse(x))
    mixed = frame(lambda i, x: _sparse(x) if i % 2 else Vectors.dense(x))
    assert type(sparse.first()["features"]).__name__ == "SparseVector"
    fit = dict(k=3, seed=3, covarianceType=covariance_type, initMode=init_mode)
    reference = GaussianMixture(**fit).fit(dense)
    for other in (sparse, mixed):
        model = GaussianMixture(**fit).fit(other)
        # same seed, same rows: the same parameters, component for component
        np.testing.assert_allclose(model.weights, reference.weights, rtol=1e-9)
        np.testing.assert_allclose(model.means, reference.means, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(model.covariances, reference.covariances, rtol=1e-9, atol=1e-12)
        assert model.summary.numIter == reference.summary.numIter
    _, pred_d, proba_d, ll_d = _predictions(reference, dense)
    _, pred_s, proba_s, ll_s = _predictions(reference, sparse)
    np.testing.assert_array_equal(pred_s, pred_d)
    np.testing.assert_allclose(proba_s, proba_d, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ll_s, ll_d, rtol=1e-12)


# --------------------------------------------------------------------------- empty partitions


FIVE_ROWS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [6.0, 5.0]])


@pytest.mark.parametrize("k,covariance_type", [(1, "full"), (2, "diag")])
def test_empty_partitions_from_repartition(spark, k, covariance_type):
    compact = vector_df(spark, FIVE_ROWS, 1)
    spread = vector_df(spark, FIVE_ROWS, 1).repartition(8)
    sizes = spread.rdd.glom().map(len).collect()
    assert len(sizes) == 8 and sizes.count(0) >= 3 and sum(sizes) == 5
    fit = dict(k=k, seed=3, covarianceType=covariance_type)
    a = GaussianMixture(**fit).fit(compact)
    b = GaussianMixture(**fit).fit(spread)
    _assert_finite_model(b)
    _assert_same_fit(a, b)
    assert b.summary.numRows == 5 and sum(b.summary.clusterSizes) == 5
    assert b.transform(spread).count() == 5


def test_empty_partitions_from_filter(spark):
    X, _ = blobs(50, 3, k=2, seed=7)
    df = vector_df(spark, X, 4)
    filtered = df.where(F.spark_partition_id() < 2)  # partitions 2 and 3 become empty
    sizes = filtered.rdd.glom().map(len).collect()
    assert len(sizes) == 4 and sizes[2:] == [0, 0] and min(sizes[:2]) > 0
    kept = sorted(r["id"] for r in filtered.select("id").collect())
    without_empty = vector_df(spark, X[kept], 1)
    a = GaussianMixture(k=2, seed=3).fit(filtered)
    b = GaussianMixture(k=2, seed=3).fit(without_empty)
    _assert_finite_model(a)
    _assert_same_fit(a, b)
    assert a.summary.numRows == len(kept)
    assert a.summary.logLikelihood == pytest.approx(b.summary.logLikelihood, rel=1e-9)


# --------------------------------------------------------------------------- a single row


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_single_row_with_k1(spark, covariance_type):
    row = np.array([3.0, -4.0, 1e3])
    df = vector_df(spark, row[None, :], 1)
    model = GaussianMixture(k=1, covarianceType=covariance_type).fit(df)
    _assert_finite_model(model)
    d = len(row)
    expected = {
        "full": REG * np.eye(d)[None],
        "tied": REG * np.eye(d),
        "diag": np.full((1, d), REG),
        "spherical": np.array([REG]),
    }[covariance_type]
    assert model.weights == [1.0]
    np.testing.assert_allclose(model.means, row[None, :], rtol=1e-15)
    np.testing.assert_allclose(model.covariances, expected, rtol=1e-9, atol=0)
    assert model.summary.converged and model.summary.numRows == 1
    _, pred, proba, ll = _predictions(model, df)
    assert pred.tolist() == [0] and proba.tolist() == [[1.0]]
    # log N(x | x, regCovar I) = -d/2 log(2 pi regCovar)
    assert ll[0] == pytest.approx(-0.5 * d * math.log(2 * math.pi * REG), rel=1e-12)


# --------------------------------------------------------------------------- all rows identical


@pytest.fixture(scope="module")
def identical(spark):
    return vector_df(spark, np.tile([[3.0, 4.0]], (50, 1)), 2)


@pytest.mark.parametrize("init_mode", INIT_MODES)
def test_all_rows_identical_with_k2_is_a_clear_error(identical, init_mode):
    with pytest.raises(
        InvalidInputError,
        match=re.escape("the features have only 1 distinct row(s), fewer than k=2: lower k"),
    ):
        GaussianMixture(k=2, initMode=init_mode).fit(identical)


def test_all_rows_identical_with_k1_is_finite(identical):
    model = GaussianMixture(k=1, logLikelihoodCol="ll").fit(identical)
    _assert_finite_model(model)
    np.testing.assert_allclose(model.means, [[3.0, 4.0]], rtol=1e-15)
    np.testing.assert_allclose(model.covariances, [REG * np.eye(2)], rtol=1e-9, atol=0)
    lls = [r["ll"] for r in model.transform(identical).select("ll").collect()]
    assert len(lls) == 50 and all(math.isfinite(v) for v in lls)


# ------------------------------------------------------------------ fewer distinct rows than k


def test_fewer_distinct_valid_rows_than_k_after_skip(spark):
    # 3 distinct rows, but the third one is invalid and skipped: 2 are left for k=3
    rows = (
        [(Vectors.dense([1.0, 2.0]),)] * 30
        + [(Vectors.dense([3.0, 4.0]),)] * 30
        + [(Vectors.dense([5.0, NAN]),)] * 5
    )
    df = spark.createDataFrame(rows, FEATURES_ONLY)
    with pytest.raises(
        InvalidInputError, match=re.escape("only 2 distinct row(s), fewer than k=3")
    ):
        GaussianMixture(k=3, handleInvalid="skip").fit(df)


@pytest.mark.parametrize("init_mode", INIT_MODES)
def test_exactly_k_distinct_rows_put_one_component_on_each(spark, init_mode):
    points = np.array([[1.0, 2.0], [3.0, 4.0], [9.0, -1.0]])
    X = np.repeat(points, [30, 20, 10], axis=0)
    model = GaussianMixture(k=3, seed=1, initMode=init_mode).fit(vector_df(spark, X, 2))
    weights, means, covs = _canonical(model)
    np.testing.assert_allclose(means, points, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(weights, [0.5, 1 / 3, 1 / 6], rtol=1e-9)
    np.testing.assert_allclose(covs, np.repeat(REG * np.eye(2)[None], 3, 0), rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------- a constant feature


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_constant_feature_gives_finite_model_and_outputs(spark, three_blobs, covariance_type):
    X, labels = three_blobs
    X = X.copy()
    X[:, 1] = 7.0
    df = vector_df(spark, X, 2)
    model = GaussianMixture(k=3, seed=1, covarianceType=covariance_type).fit(df)
    _assert_finite_model(model)
    np.testing.assert_allclose(model.means[:, 1], 7.0, rtol=1e-12)
    # regCovar is what keeps the constant feature's variance positive
    cov = model.covariances
    if covariance_type == "full":
        np.testing.assert_allclose(cov[:, 1, 1], REG, rtol=1e-6)
        assert all(np.linalg.eigvalsh(c).min() > 0 for c in cov)
    elif covariance_type == "tied":
        assert cov[1, 1] == pytest.approx(REG, rel=1e-6) and np.linalg.eigvalsh(cov).min() > 0
    elif covariance_type == "diag":
        np.testing.assert_allclose(cov[:, 1], REG, rtol=1e-6)
    else:
        assert np.all(cov > REG)
    ids, pred, proba, ll = _predictions(model, df)
    assert len(ids) == len(X)
    assert np.all(np.isfinite(proba)) and np.all(np.isfinite(ll))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert adjusted_rand_index(labels[ids], pred) >= 0.95


# --------------------------------------------------------------------------- scale 1e-8 and 1e8


@pytest.fixture(scope="module")
def unscaled_fit(spark, three_blobs):
    return GaussianMixture(k=3, seed=1).fit(vector_df(spark, three_blobs[0], 2))


@pytest.mark.parametrize("init_mode", ["kmeans", "k-means++", "randomFromData"])
def test_scale_1e_minus_8_with_lowered_reg_covar_recovers_clusters(
    spark, three_blobs, unscaled_fit, init_mode
):
    X, labels = three_blobs
    df = vector_df(spark, X * 1e-8, 2)
    # regCovar scaled like the variances (1e-16): the same problem as the unscaled one
    model = GaussianMixture(k=3, seed=1, regCovar=1e-22, initMode=init_mode).fit(df)
    _assert_finite_model(model)
    assert _ari(model, df, labels) >= 0.95
    if init_mode == "kmeans":  # same init as the unscaled reference: the same fit, rescaled
        weights, means, covs = _canonical(model)
        ref_w, ref_m, ref_c = _canonical(unscaled_fit)
        np.testing.assert_allclose(weights, ref_w, rtol=1e-6)
        np.testing.assert_allclose(means * 1e8, ref_m, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(covs * 1e16, ref_c, rtol=1e-5, atol=1e-6)


def test_scale_1e_minus_8_with_default_reg_covar_is_finite(spark, three_blobs):
    X, _ = three_blobs
    df = vector_df(spark, X * 1e-8, 2)
    model = GaussianMixture(k=3, seed=1).fit(df)
    _assert_finite_model(model)
    # regCovar (1e-6 absolute, scikit-learn's semantics) dominates variances of ~1e-15
    assert np.all(np.linalg.eigvalsh(model.covariances) >= REG)
    assert np.all(np.linalg.eigvalsh(model.covariances) < REG * (1 + 1e-6))
    assert math.isfinite(model.summary.logLikelihood)
    _, _, proba, ll = _predictions(model, df)
    assert np.all(np.isfinite(proba)) and np.all(np.isfinite(ll))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


def test_scale_1e8_recovers_clusters_and_is_the_rescaled_fit(spark, three_blobs, unscaled_fit):
    X, labels = three_blobs
    df = vector_df(spark, X * 1e8, 2)
    model = GaussianMixture(k=3, seed=1).fit(df)
    _assert_finite_model(model)
    assert _ari(model, df, labels) >= 0.95
    weights, means, covs = _canonical(model)
    ref_w, ref_m, ref_c = _canonical(unscaled_fit)
    # regCovar=1e-6 is ~1e-6 of the unscaled variances and nothing at scale 1e16
    np.testing.assert_allclose(weights, ref_w, rtol=1e-5)
    np.testing.assert_allclose(means / 1e8, ref_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(covs / 1e16, ref_c, rtol=1e-5, atol=1e-5)
    _, _, proba, ll = _predictions(model, df)
    assert np.all(np.isfinite(proba)) and np.all(np.isfinite(ll))


@pytest.mark.parametrize(
    "init_mode",
    INIT_MODES,
)
def test_values_whose_squares_overflow_get_an_error_saying_so(spark, three_blobs, init_mode):
    """Beyond 1e8: at 1e160 the squares overflow float64. Finite parameters cannot come
    out; the error should say to scale the features, not blame the data's distinctness."""
    df = vector_df(spark, three_blobs[0] * 1e160, 2)
    with pytest.raises((CovarianceError, InvalidInputError), match="scale the features"):
        GaussianMixture(k=2, seed=1, initMode=init_mode).fit(df)


# --------------------------------------------------------------------------- huge offsets


@pytest.fixture(scope="module")
def offset_free_fits(spark, three_blobs):
    return {}


@pytest.mark.parametrize(
    "covariance_type,offset",
    [("full", 1e12), ("tied", 1e10), ("diag", 1e10), ("spherical", 1e10)],
)
def test_huge_offset_changes_nothing_but_the_means(
    spark, three_blobs, offset_free_fits, covariance_type, offset
):
    X, labels = three_blobs
    if covariance_type not in offset_free_fits:
        offset_free_fits[covariance_type] = GaussianMixture(
            k=3, seed=1, covarianceType=covariance_type
        ).fit(vector_df(spark, X, 2))
    reference = offset_free_fits[covariance_type]
    df = vector_df(spark, X + offset, 2)
    model = GaussianMixture(k=3, seed=1, covarianceType=covariance_type).fit(df)
    _assert_finite_model(model)
    assert _ari(model, df, labels) == pytest.approx(1.0)
    weights, means, covs = _canonical(model)
    ref_w, ref_m, ref_c = _canonical(reference)
    # float64 resolves ~offset * 2e-16 in each coordinate: 2e-6 at 1e10, 2e-4 at 1e12
    np.testing.assert_allclose(means - offset, ref_m, atol=offset * 1e-15)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-6)
    np.testing.assert_allclose(covs, ref_c, rtol=offset * 1e-15, atol=offset * 1e-16)
    per_row = model.summary.logLikelihood / len(X)
    assert per_row == pytest.approx(reference.summary.logLikelihood / len(X), abs=1e-4)


# --------------------------------------------------------------------------- float32 input


def test_float32_array_column_fits_and_scores_like_double(spark, three_blobs):
    X, labels = three_blobs
    X32 = X.astype(np.float32).astype(np.float64)  # values a float column holds exactly
    as_float = array_df(spark, X32, 2, dtype="float")
    as_double = array_df(spark, X32, 2, dtype="double")
    assert dict(as_float.dtypes)["features"] == "array<float>"
    a = GaussianMixture(k=3, seed=2).fit(as_float)
    b = GaussianMixture(k=3, seed=2).fit(as_double)
    assert a.numFeatures == 3
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-12)
    out = a.copy().setLogLikelihoodCol("ll").transform(as_float)
    assert dict(out.dtypes) == {
        "id": "bigint",
        "features": "array<float>",
        "probability": "vector",
        "prediction": "int",
        "ll": "double",
    }
    ids_f, pred_f, proba_f, ll_f = _predictions(a, as_float)
    ids_d, pred_d, proba_d, ll_d = _predictions(a, as_double)
    np.testing.assert_array_equal(pred_f, pred_d)
    np.testing.assert_allclose(proba_f, proba_d, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ll_f, ll_d, rtol=1e-12)
    assert adjusted_rand_index(labels[ids_f], pred_f) >= 0.95


# --------------------------------------------------------------------------- k = 1


@pytest.mark.parametrize(
    "covariance_type,weighted", [(t, False) for t in COV_TYPES] + [("full", True)]
)
def test_k1_is_the_data_mean_and_covariance(spark, three_blobs, covariance_type, weighted):
    X, _ = three_blobs
    w = (
        np.random.default_rng(3).integers(1, 5, size=len(X)).astype(float)
        if weighted
        else np.ones(len(X))
    )
    if weighted:
        df = spark.createDataFrame(
            [(Vectors.dense(x), float(v)) for x, v in zip(X, w)], VECTOR_AND_WEIGHT
        )
        gm = GaussianMixture(k=1, covarianceType=covariance_type, weightCol="w")
    else:
        df = vector_df(spark, X, 3)
        gm = GaussianMixture(k=1, covarianceType=covariance_type)
    model = gm.fit(df)
    mean = np.average(X, axis=0, weights=w)
    cov = np.cov(X.T, aweights=w, bias=True)
    d = X.shape[1]
    expected = {
        "full": (cov + REG * np.eye(d))[None],
        "tied": cov + REG * np.eye(d),
        "diag": (np.diag(cov) + REG)[None],
        "spherical": np.array([np.diag(cov).mean() + REG]),
    }[covariance_type]
    assert model.weights == [1.0]
    np.testing.assert_allclose(model.means, mean[None], rtol=1e-9)
    np.testing.assert_allclose(model.covariances, expected, rtol=1e-9)
    assert model.summary.converged
    assert model.summary.totalWeight == pytest.approx(w.sum())


# --------------------------------------------------------------------------- k >> clusters


@pytest.mark.parametrize(
    "covariance_type,init_mode",
    [("full", "kmeans"), ("full", "random"), ("diag", "random")],
)
def test_k_much_larger_than_the_clusters(
    spark, three_blobs, small_model, covariance_type, init_mode
):
    """k=12 on 3 blobs: a finite model whose extra components split blobs and never merge
    two, at least as likely as the k=3 fit, every row in a component of its own blob."""
    X, labels = three_blobs
    df = vector_df(spark, X, 2)
    model = GaussianMixture(
        k=12, seed=1, covarianceType=covariance_type, initMode=init_mode, maxIter=60
    ).fit(df)
    s = model.summary
    _assert_finite_model(model)
    assert model.getK() == 12 and len(model.weights) == 12
    assert 0 <= s.numRecoveredComponents <= 12  # at most k re-seeds per run
    assert s.restarts[0]["numRecoveredComponents"] == s.numRecoveredComponents
    assert sum(s.clusterSizes) == len(X)
    # more components fit the training rows at least as well as the three true ones
    assert s.logLikelihood >= small_model.summary.logLikelihood - 1e-6 * len(X)
    ids, pred, proba, ll = _predictions(model, df)
    assert np.all(np.isfinite(proba)) and np.all(np.isfinite(ll))
    assert pred.min() >= 0 and pred.max() < 12
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    # every predicted component holds rows of one blob only (a refinement of the truth)
    for component in np.unique(pred):
        assert len(np.unique(labels[ids][pred == component])) == 1, component


# --------------------------------------------------------------------------- weights all zero


def test_weights_zero_on_every_valid_row_with_skip(spark, three_blobs):
    # the only row with weight is skipped as invalid: nothing is left to fit
    rows = [(Vectors.dense(x), 0.0) for x in three_blobs[0][:20]] + [
        (Vectors.dense([NAN, 0.0, 0.0]), 1.0)
    ]
    df = spark.createDataFrame(rows, VECTOR_AND_WEIGHT)
    with pytest.raises(
        InvalidInputError,
        match=re.escape("weight column 'w' sums to zero over the valid rows: nothing to fit"),
    ):
        GaussianMixture(k=2, weightCol="w", handleInvalid="skip").fit(df)


def test_weights_all_zero_in_an_integer_column_with_input_cols(spark, three_blobs):
    X = three_blobs[0][:20]
    df = spark.createDataFrame(
        [(float(a), float(b), 0) for a, b, _ in X], "a double, b double, n int"
    )
    with pytest.raises(
        InvalidInputError,
        match=re.escape("weight column 'n' sums to zero over the valid rows: nothing to fit"),
    ):
        GaussianMixture(k=2, inputCols=["a", "b"], weightCol="n").fit(df)


def test_zero_weight_rows_are_the_same_as_dropped_rows(spark, three_blobs):
    X, _ = three_blobs
    keep = np.arange(len(X)) % 3 != 0
    initial = GaussianMixtureModel.fromArrays(
        [1 / 3] * 3, X[[1, 2, 4]], np.repeat(4.0 * np.eye(3)[None], 3, 0)
    )
    weighted = spark.createDataFrame(
        [(Vectors.dense(x), float(k)) for x, k in zip(X, keep)], VECTOR_AND_WEIGHT
    )
    fit = dict(k=3, initialModel=initial, maxIter=10, tol=0.0)
    a = GaussianMixture(weightCol="w", **fit).fit(weighted)
    b = GaussianMixture(**fit).fit(vector_df(spark, X[keep], 2))
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-9)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-9)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-9)
    assert a.summary.logLikelihood == pytest.approx(b.summary.logLikelihood, rel=1e-9)
    assert a.summary.totalWeight == pytest.approx(keep.sum())


@pytest.mark.parametrize(
    "init_mode",
    INIT_MODES,
)
def test_weight_on_a_single_row_with_k2_is_the_identical_rows_error(spark, three_blobs, init_mode):
    """Weights zero on all rows but one are, to the fit, one distinct row: k=2 must give
    the same error as 50 identical rows (test_all_rows_identical_with_k2_is_a_clear_error)."""
    rows = [(Vectors.dense(x), 1.0 if i == 0 else 0.0) for i, x in enumerate(three_blobs[0][:30])]
    df = spark.createDataFrame(rows, VECTOR_AND_WEIGHT)
    with pytest.raises(InvalidInputError, match=re.escape("1 distinct row(s), fewer than k=2")):
        GaussianMixture(k=2, seed=1, weightCol="w", initMode=init_mode).fit(df)
