"""Bad input: every case gets an error naming the column and the problem."""

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StructField, StructType

from spark_gmm import GaussianMixture, GaussianMixtureModel, InvalidInputError
from tests.datasets import blobs, vector_df

pytestmark = pytest.mark.compat  # also run on PySpark 3.5 (.ci/run)


@pytest.fixture(scope="module")
def clean(spark):
    X, _ = blobs(40, 2, k=2, seed=2)
    return X, vector_df(spark, X, 2)


FEATURES_ONLY = StructType([StructField("features", VectorUDT())])


def _with_rows(spark, X, extra):
    rows = [(Vectors.dense(x),) for x in X] + extra
    return spark.createDataFrame(rows, FEATURES_ONLY)


@pytest.mark.parametrize(
    "extra,problem",
    [
        ([(Vectors.dense([np.nan, 1.0]),)], "1 with NaN, infinite or null values"),
        ([(Vectors.dense([np.inf, 1.0]),)], "1 with NaN, infinite or null values"),
        ([(None,)], "1 null"),
    ],
)
def test_invalid_features_error_names_column(spark, clean, extra, problem):
    df = _with_rows(spark, clean[0], extra)
    with pytest.raises(InvalidInputError, match="features column 'features' has 1 invalid") as e:
        GaussianMixture(k=2).fit(df)
    assert problem in str(e.value) and "handleInvalid='skip'" in str(e.value)


def test_skip_drops_invalid_rows_and_reports_them(spark, clean):
    X = clean[0]
    extra = [(Vectors.dense([np.nan, 1.0]),), (None,), (Vectors.dense([1.0, -np.inf]),)]
    df = _with_rows(spark, X, extra)
    model = GaussianMixture(k=2, seed=1, handleInvalid="skip").fit(df)
    assert model.summary.numSkippedRows == 3 and model.summary.numRows == len(X)
    assert model.transform(df).count() == len(X)
    assert np.all(np.isfinite(model.means))


def test_transform_error_on_nan_names_the_column(spark, clean):
    X, df = clean
    model = GaussianMixture(k=2, seed=1).fit(df)
    bad = _with_rows(spark, X[:3], [(Vectors.dense([np.nan, 1.0]),)])
    with pytest.raises(Exception, match="features column 'features' has NaN, infinite or null"):
        model.transform(bad).collect()


def test_mixed_vector_sizes(spark, clean):
    df = _with_rows(spark, clean[0], [(Vectors.dense([1.0, 2.0, 3.0]),)])
    with pytest.raises(InvalidInputError, match="vectors of different sizes \\(2 to 3\\)"):
        GaussianMixture(k=2).fit(df)


def test_transform_with_other_feature_count(spark, clean):
    model = GaussianMixture(k=2, seed=1).fit(clean[1])
    df = spark.createDataFrame([(Vectors.dense([1.0, 2.0, 3.0]),)], ["features"])
    with pytest.raises(Exception, match="vector of size 3; the model expects 2"):
        model.transform(df).collect()
    with pytest.raises(InvalidInputError, match="has 3 features but the model expects 2"):
        model.score(df)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), None, float("inf")])
def test_bad_weights(spark, clean, weight):
    X = clean[0]
    rows = [(Vectors.dense(x), 1.0) for x in X] + [(Vectors.dense([0.0, 0.0]), weight)]
    schema = StructType([StructField("features", VectorUDT()), StructField("w", DoubleType())])
    df = spark.createDataFrame(rows, schema)
    with pytest.raises(
        InvalidInputError, match="weight column 'w' has 1 null, NaN, negative or infinite value"
    ):
        GaussianMixture(k=2, weightCol="w").fit(df)


def test_weights_all_zero(spark, clean):
    df = clean[1].withColumn("w", F.lit(0.0))
    with pytest.raises(InvalidInputError, match="weight column 'w' sums to zero"):
        GaussianMixture(k=2, weightCol="w").fit(df)


def test_k_below_one_and_unknown_params():
    with pytest.raises(ValueError, match="k must be >= 1"):
        GaussianMixture(k=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'kk'"):
        GaussianMixture(kk=3)
    with pytest.raises(ValueError, match="covarianceType must be one of"):
        GaussianMixture(covarianceType="banana")
    with pytest.raises(ValueError, match="regCovar must be >= 0"):
        GaussianMixture(regCovar=-1.0)


@pytest.mark.parametrize("init_mode", ["kmeans", "k-means++", "random", "randomFromData"])
def test_fewer_distinct_rows_than_k(spark, init_mode):
    rows = [(Vectors.dense([1.0, 2.0]),)] * 30 + [(Vectors.dense([3.0, 4.0]),)] * 30
    df = spark.createDataFrame(rows, ["features"])
    with pytest.raises(InvalidInputError, match="only 2 distinct row\\(s\\), fewer than k=3"):
        GaussianMixture(k=3, initMode=init_mode).fit(df)


def test_fewer_rows_than_k(spark):
    df = spark.createDataFrame([(Vectors.dense([1.0, 2.0]),)], ["features"])
    with pytest.raises(InvalidInputError, match="only 1 valid row\\(s\\), fewer than k=2"):
        GaussianMixture(k=2).fit(df)


def test_empty_input(spark):
    df = spark.createDataFrame([], FEATURES_ONLY)
    with pytest.raises(InvalidInputError, match="the input DataFrame is empty"):
        GaussianMixture(k=2).fit(df)


def test_missing_and_wrongly_typed_columns(spark, clean):
    df = clean[1]
    with pytest.raises(InvalidInputError, match="features column 'feats' not found"):
        GaussianMixture(featuresCol="feats").fit(df)
    with pytest.raises(
        InvalidInputError, match="must be a vector or an array of numbers, got bigint"
    ):
        GaussianMixture(featuresCol="id").fit(df)
    with pytest.raises(InvalidInputError, match="inputCols \\['nope'\\] not found"):
        GaussianMixture(inputCols=["id", "nope"]).fit(df)
    with pytest.raises(InvalidInputError, match="inputCols must be numeric, got s \\(string\\)"):
        GaussianMixture(inputCols=["id", "s"]).fit(df.withColumn("s", F.lit("x")))
    with pytest.raises(InvalidInputError, match="weight column 'w' not found"):
        GaussianMixture(weightCol="w").fit(df)


def test_output_column_is_never_overwritten(spark, clean):
    df = clean[1]
    model = GaussianMixture(k=2, seed=1).fit(df)
    with pytest.raises(ValueError, match="output column\\(s\\) \\['prediction'\\] already exist"):
        model.transform(df.withColumn("prediction", F.lit(1)))


def test_initial_model_must_match(spark, clean):
    initial = GaussianMixtureModel.fromArrays(
        [0.5, 0.5], [[0, 0, 0], [1, 1, 1]], [1.0, 1.0], "spherical"
    )
    with pytest.raises(ValueError, match="initialModel has k=2, 3 features"):
        GaussianMixture(k=2, covarianceType="spherical", initialModel=initial).fit(clean[1])


def test_singular_without_regularisation_explains_itself(spark):
    rows = [(Vectors.dense([float(i % 5), 1.0]),) for i in range(50)]  # second feature constant
    df = spark.createDataFrame(rows, ["features"])
    with pytest.raises(ValueError, match="not positive definite.*raise regCovar"):
        GaussianMixture(k=2, regCovar=0.0, seed=1).fit(df)
    model = GaussianMixture(k=2, seed=1).fit(df)
    assert np.all(np.isfinite(model.covariances))
