"""MLflow: a ``PipelineModel`` holding our ``GaussianMixtureModel`` through
``mlflow.spark.log_model`` / ``load_model`` and ``mlflow.pyfunc``, and the fit job's ``--mlflow``
run (model, params, metrics, report), all against a local SQLite tracking store.

MLflow is the optional ``spark-gmm[mlflow]`` extra (in ``[test]``); without it the option is
one error line naming the extra (tested with MLflow hidden).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from spark_gmm import GaussianMixture, GaussianMixtureModel, cli

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def mlflow():
    return pytest.importorskip(
        "mlflow", reason="MLflow not installed: pip install 'spark-gmm[mlflow]'"
    )


@pytest.fixture(scope="module")
def store(mlflow, tmp_path_factory):
    """A fresh SQLite tracking store (created once: its schema migrations take seconds) and an
    experiment with its own artifact folder; restores the tracking URI after."""
    d = tmp_path_factory.mktemp("mlflow")
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{d / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment(
        "spark-gmm-test", artifact_location=(d / "artifacts").as_uri()
    )
    try:
        yield uri, experiment
    finally:
        mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def points(spark):
    rng = np.random.default_rng(5)
    centers = np.array([[0.0, 0.0], [8.0, 1.0], [3.0, 9.0]])
    X = np.vstack([rng.normal(c, 0.8, size=(100, 2)) for c in centers])
    return spark.createDataFrame([(float(x), float(y)) for x, y in X], "x double, y double")


def test_pipeline_model_round_trip_spark_flavor_and_pyfunc(spark, mlflow, store, points):
    import mlflow.pyfunc
    import mlflow.spark
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import VectorAssembler

    _, experiment = store
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=["x", "y"], outputCol="features"),
            GaussianMixture(k=3, seed=1, tol=1e-6),
        ]
    ).fit(points)
    with mlflow.start_run(experiment_id=experiment) as run:
        # pip_requirements given: MLflow would otherwise infer them in a second Spark app
        mlflow.spark.log_model(pipeline, "gmm", pip_requirements=["pyspark"])
    uri = f"runs:/{run.info.run_id}/gmm"

    loaded = mlflow.spark.load_model(uri)
    assert isinstance(loaded, PipelineModel)
    assert isinstance(loaded.stages[-1], GaussianMixtureModel)
    expected = [r.prediction for r in pipeline.transform(points).select("prediction").collect()]
    got = [r.prediction for r in loaded.transform(points).select("prediction").collect()]
    assert got == expected
    np.testing.assert_array_equal(loaded.stages[-1].means, pipeline.stages[-1].means)

    pyfunc = mlflow.pyfunc.load_model(uri)
    frame = points.toPandas()
    predicted = pyfunc.predict(frame)
    assert len(predicted) == len(frame)
    assert [int(p) for p in np.asarray(predicted).ravel()] == expected
    assert len(set(expected)) == 3


def test_bayesian_mixture_round_trip_spark_flavor(spark, mlflow, store, points):
    import mlflow.spark
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler

    from spark_gmm import BayesianGaussianMixture, BayesianGaussianMixtureModel

    _, experiment = store
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=["x", "y"], outputCol="features"),
            BayesianGaussianMixture(k=6, seed=1),
        ]
    ).fit(points)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.spark.log_model(pipeline, "bgm", pip_requirements=["pyspark"])
    loaded = mlflow.spark.load_model(f"runs:/{run.info.run_id}/bgm")
    assert isinstance(loaded.stages[-1], BayesianGaussianMixtureModel)
    np.testing.assert_array_equal(
        loaded.stages[-1].weightConcentration, pipeline.stages[-1].weightConcentration
    )
    expected = pipeline.transform(points).select("prediction", "probability").collect()
    assert loaded.transform(points).select("prediction", "probability").collect() == expected


def test_fit_job_logs_model_params_and_metrics(spark, mlflow, store, points, tmp_path, capsys):
    import mlflow.spark
    from mlflow.tracking import MlflowClient

    uri, _ = store
    # the job's experiment, made here only to keep its artifacts out of ./mlruns
    mlflow.create_experiment("fit-job", artifact_location=(tmp_path / "runs").as_uri())
    data = tmp_path / "points"
    points.write.parquet(str(data))
    out = tmp_path / "out"
    code = cli.main_fit(
        [
            "--input",
            str(data),
            "--input-cols",
            "x,y",
            "--k",
            "3",
            "--seed",
            "2",
            "--output",
            str(out),
            "--no-plots",
            "--log-level",
            "ERROR",
            "--mlflow",
            "--mlflow-tracking-uri",
            uri,
            "--mlflow-experiment",
            "fit-job",
            "--mlflow-run-name",
            "nightly",
        ]
    )
    assert code == 0, capsys.readouterr().err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fit-job")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "nightly" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["k"] == "3" and params["covariance_type"] == "full"
    assert params["input_cols"] == "x,y" and params["seed"] == "2"
    assert params["num_features"] == "2" and "spark_version" in params

    report = json.loads((out / "report" / "report.json").read_text())
    metrics = run.data.metrics
    assert metrics["num_iter"] == report["fit"]["numIter"]
    assert metrics["bic"] == pytest.approx(report["fit"]["bic"], rel=1e-12)
    assert metrics["aic"] == pytest.approx(report["fit"]["aic"], rel=1e-12)
    assert metrics["log_likelihood"] == pytest.approx(report["fit"]["logLikelihood"], rel=1e-12)
    assert metrics["num_rows"] == 300
    history = client.get_metric_history(run.info.run_id, "mean_log_likelihood_by_iteration")
    assert len(history) == len(report["fit"]["logLikelihoodHistory"])

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "report", "resolved-config.toml"} <= artifacts
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/report.html" in reports

    model = mlflow.spark.load_model(f"runs:/{run.info.run_id}/model")
    saved = GaussianMixtureModel.load(str(out / "model"))
    np.testing.assert_array_equal(model.stages[0].means, saved.means)
    scored = model.transform(points).select("prediction").toPandas()
    assert (
        scored["prediction"].tolist()
        == saved.transform(points).select("prediction").toPandas()["prediction"].tolist()
    )


def test_mlflow_option_without_mlflow_is_one_line(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    out = tmp_path / "o"
    code = cli.main_fit(["--demo", "--output", str(out), "--mlflow", "--log-level", "ERROR"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(
        "spark-gmm fit: error: --mlflow needs MLflow"
    ), err
    assert "pip install 'spark-gmm[mlflow]'" in lines[0]
    assert not out.exists()  # failed before any work


def test_mlflow_settings_resolve_from_toml(tmp_path, capsys):
    conf = tmp_path / "fit.toml"
    conf.write_text(
        '[mlflow]\nenabled = true\ntracking_uri = "sqlite:///x.db"\n'
        'experiment = "e"\nrun_name = "r"\n'
    )
    assert cli.main_fit(["--config", str(conf), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "[mlflow]" in printed and 'tracking_uri = "sqlite:///x.db"' in printed
    assert "enabled = true" in printed and 'run_name = "r"' in printed
