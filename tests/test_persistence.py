"""Save/load of estimator and model, alone and inside Pipelines: identical transform output."""

import json
import os

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F

from spark_gmm import GaussianMixture, GaussianMixtureModel, ModelFileError
from tests.datasets import blobs, vector_df

pytestmark = pytest.mark.compat  # also run on PySpark 3.5 (.ci/run)


@pytest.fixture(scope="module")
def fitted(spark):
    X, _ = blobs(60, 3, k=3, seed=4)
    df = vector_df(spark, X, 2)
    gm = GaussianMixture(k=3, seed=5, covarianceType="diag", logLikelihoodCol="ll")
    return df, gm, gm.fit(df)


def test_model_round_trip(fitted, tmp_path):
    df, _, model = fitted
    path = str(tmp_path / "model")
    model.save(path)
    loaded = GaussianMixtureModel.load(path)
    assert loaded.uid == model.uid
    assert loaded.getCovarianceType() == "diag" and loaded.getLogLikelihoodCol() == "ll"
    np.testing.assert_array_equal(loaded.covariances, model.covariances)
    assert_df_equality(model.transform(df), loaded.transform(df))
    assert not loaded.hasSummary
    metadata = json.loads(open(next((tmp_path / "model" / "metadata").glob("part-*"))).read())
    assert metadata["class"] == "spark_gmm.estimator.GaussianMixtureModel"
    assert metadata["formatVersion"] == 1 and metadata["uid"] == model.uid
    assert any(p.endswith(".parquet") for p in os.listdir(tmp_path / "model" / "data"))


def test_save_never_clobbers_unless_asked(fitted, tmp_path):
    model = fitted[2]
    path = str(tmp_path / "model")
    model.save(path)
    with pytest.raises(FileExistsError, match="already exists; use write\\(\\).overwrite\\(\\)"):
        model.save(path)
    other = tmp_path / "user-data"
    other.mkdir()
    (other / "precious.csv").write_text("a,b\n")
    with pytest.raises(FileExistsError):
        model.save(str(other))
    assert (other / "precious.csv").read_text() == "a,b\n"
    model.write().overwrite().save(path)
    assert GaussianMixtureModel.load(path).uid == model.uid


def test_estimator_round_trip_with_initial_model(fitted, tmp_path):
    df, gm, model = fitted
    warm = gm.copy().setInitialModel(model).setMaxIter(5)
    path = str(tmp_path / "estimator")
    warm.save(path)
    loaded = GaussianMixture.load(path)
    assert loaded.uid == warm.uid and loaded.getMaxIter() == 5 and loaded.getK() == 3
    np.testing.assert_array_equal(loaded.getInitialModel().means, model.means)
    assert_df_equality(warm.fit(df).transform(df), loaded.fit(df).transform(df))


def test_pipeline_round_trip(spark, tmp_path):
    X, _ = blobs(50, 2, k=2, seed=6)
    df = spark.createDataFrame([(float(a), float(b)) for a, b in X], ["a", "b"])
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=["a", "b"], outputCol="features"),
            GaussianMixture(k=2, seed=3, covarianceType="tied"),
        ]
    )
    fitted = pipeline.fit(df)
    fitted.save(str(tmp_path / "pm"))
    loaded = PipelineModel.load(str(tmp_path / "pm"))
    assert isinstance(loaded.stages[1], GaussianMixtureModel)
    assert_df_equality(fitted.transform(df), loaded.transform(df))
    pipeline.save(str(tmp_path / "p"))
    again = Pipeline.load(str(tmp_path / "p")).fit(df)
    assert_df_equality(fitted.transform(df), again.transform(df))


def _drop_checksums(folder):
    for crc in folder.glob(".*.crc"):
        crc.unlink()


def test_load_errors_are_clear(spark, fitted, tmp_path):
    with pytest.raises(ModelFileError, match="no saved GaussianMixtureModel at .* does not exist"):
        GaussianMixtureModel.load(str(tmp_path / "missing"))
    from pyspark.ml.clustering import KMeans

    km_path = str(tmp_path / "kmeans")
    KMeans(k=2).fit(fitted[0]).save(km_path)
    with pytest.raises(ModelFileError, match="holds a org.apache.spark.ml.clustering.KMeansModel"):
        GaussianMixtureModel.load(km_path)
    path = tmp_path / "truncated"
    fitted[2].save(str(path))
    part = next((path / "metadata").glob("part-*"))
    part.write_text(part.read_text()[:40])
    with pytest.raises(ModelFileError, match="metadata of the stage at .* truncated or corrupt"):
        GaussianMixtureModel.load(str(path))  # the checksum file no longer matches
    _drop_checksums(path / "metadata")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        GaussianMixtureModel.load(str(path))
    future = tmp_path / "future"
    fitted[2].save(str(future))
    part = next((future / "metadata").glob("part-*"))
    part.write_text(part.read_text().replace('"formatVersion":1', '"formatVersion":99'))
    _drop_checksums(future / "metadata")
    with pytest.raises(ModelFileError, match="format version 99"):
        GaussianMixtureModel.load(str(future))
    nodata = tmp_path / "nodata"
    fitted[2].save(str(nodata))
    for f in (nodata / "data").iterdir():
        f.unlink()
    (nodata / "data").rmdir()
    with pytest.raises(ModelFileError, match="data of the stage at .* is missing"):
        GaussianMixtureModel.load(str(nodata))


def test_gaussians_df_matches_builtin_layout(fitted):
    model = fitted[2]
    gdf = model.gaussiansDF
    assert gdf.columns == ["mean", "cov"] and dict(gdf.dtypes) == {
        "mean": "vector",
        "cov": "matrix",
    }
    rows = gdf.collect()
    for row, mean, var in zip(rows, model.means, model.covariances):
        np.testing.assert_allclose(row["mean"].toArray(), mean)
        np.testing.assert_allclose(row["cov"].toArray(), np.diag(var))
    assert gdf.select(F.count("*")).collect()[0][0] == 3
