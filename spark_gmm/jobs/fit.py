"""The fit job: cluster a table, then write the model, the predictions, the training scores and
the report."""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

from spark_gmm import config as _config
from spark_gmm.jobs.inputs import check_numeric, load_model, start_on_input
from spark_gmm.jobs.job import RESOLVED_CONFIG, Job, spark_info
from spark_gmm.jobs.outputs import (
    check_partition_by,
    for_format,
    output_columns,
    save_model,
    write_frame,
)
from spark_gmm.jobs.report import model_description, plot_sample, summary_description, write_report
from spark_gmm.jobs.runner import run_job
from spark_gmm.jobs.training_scores import TRAINING_SCORES, score_statistics

log = logging.getLogger("spark_gmm")


FIT_OUTPUTS = ("model", "predictions", "report", TRAINING_SCORES, RESOLVED_CONFIG)


def main_fit(argv: Optional[Sequence[str]] = None) -> int:
    """``fit``: cluster a table, write model, predictions and report. Returns the exit code."""
    return run_job(_config.FIT, run_fit, argv)


def run_fit(job: Job) -> None:
    """The fit job: checks the input and the output columns, fits a GaussianMixture, then writes
    the model, the predictions (if asked), the training scores, the report and the resolved
    config, and logs the fit to MLflow with --mlflow."""
    from spark_gmm import tracking

    cfg = job.cfg
    tracker = tracking.fit_tracker(cfg)  # None unless --mlflow; fails now if MLflow is missing
    df, desc, demo, input_cols, features_col = start_on_input(job, FIT_OUTPUTS)
    weight_col = cfg.get("input.weight_col")
    check_numeric(df, desc, weight_col, "weight column")
    pred_col, prob_col, ll_col, _ = output_columns(cfg, df, desc)
    fmt = cfg["output.format"]
    partition_by = cfg.get("output.partition_by") or []
    if cfg.get("output.predictions"):
        _check_prediction_partitioning(df, partition_by, pred_col, prob_col, ll_col)

    params = _estimator_params(cfg, input_cols, features_col, weight_col)
    model = _fit(job, df, desc, params)
    s = model.summary
    model_path = save_model(job, model)

    scored_source, pred_path = _write_predictions(job, model, df, desc, fmt, partition_by)
    scores = _write_training_scores(job, scored_source, ll_col, model_path)

    inputs = _input_description(s, desc, input_cols, features_col, weight_col, demo)
    X, labels = plot_sample(job, scored_source, model, pred_col, s.numRows, params["seed"])
    report = _fit_report(job, model, params, inputs, scores, model_path, pred_path)
    write_report(job, report, model, X, labels)
    job.write_resolved_config()
    if tracker is not None:
        _log_to_mlflow(job, tracker, model, params, desc)
    log.info("done in %.1f s: %s", time.time() - job.started, job.output)


def _check_prediction_partitioning(df, partition_by, pred_col: str, prob_col: str, ll_col: str):
    """Checks ``partition_by`` against the columns of the predictions before the fit, on an
    empty frame with the input's columns and the output columns."""
    from pyspark.sql import functions as F

    probe = (
        df.limit(0)
        .withColumn(pred_col, F.lit(0))
        .withColumn(ll_col, F.lit(0.0))
        .withColumn(prob_col, F.array(F.lit(0.0)))
    )
    check_partition_by(probe, partition_by)


def _estimator_params(cfg, input_cols, features_col: str, weight_col: Optional[str]):
    """The GaussianMixture params of the job's settings (also what MLflow logs)."""
    params = dict(
        k=int(cfg["model.k"]),
        covarianceType=cfg["model.covariance_type"],
        maxIter=int(cfg["model.max_iter"]),
        tol=float(cfg["model.tol"]),
        seed=int(cfg["model.seed"]),
        regCovar=float(cfg["model.reg_covar"]),
        initMode=cfg["model.init_mode"],
        handleInvalid=cfg["input.handle_invalid"],
        predictionCol=cfg["output.prediction_col"],
        probabilityCol=cfg["output.probability_col"],
        logLikelihoodCol=cfg["output.log_likelihood_col"],
        featuresCol=features_col,
    )
    if input_cols:
        params["inputCols"] = input_cols
    if weight_col:
        params["weightCol"] = weight_col
    return params


def _fit(job: Job, df, desc: str, params):
    """Fits a GaussianMixture of ``params`` (from model.initial_model if set) to ``df`` and
    logs a one-line summary of the fit; returns the model."""
    from spark_gmm import GaussianMixture

    gm = GaussianMixture(**params)
    if job.cfg.get("model.initial_model"):
        initial, _ = load_model(job, job.cfg["model.initial_model"])
        gm.setInitialModel(initial)

    input_cols = params.get("inputCols")
    what = (
        f"columns {', '.join(input_cols)}"
        if input_cols
        else f"vector column '{params['featuresCol']}'"
    )
    job.describe(f"fitting k={params['k']} {params['covarianceType']} on {what} of {desc}")
    with job.timed("fit"):
        model = gm.fit(df)
    s = model.summary
    log.info(
        "fitted: %d rows (%d skipped, %d with missing features), %d iterations, %s, "
        "mean log-likelihood %.6g, BIC %.6g",
        s.numRows,
        s.numSkippedRows,
        s.numIncompleteRows,
        s.numIter,
        "converged" if s.converged else "NOT converged (raise max_iter?)",
        s.logLikelihood / s.totalWeight,
        s.bic,
    )
    return model


def _write_training_scores(job: Job, scored_source, ll_col: str, model_path: str):
    """Computes the statistics of the training log-likelihoods (the quantiles the score job's
    anomaly.threshold_quantile reads), writes them to training_scores.json and returns them."""
    job.describe("computing the training log-likelihood quantiles")
    with job.timed("training_scores"):
        scores = score_statistics(scored_source, ll_col)
    scores["model"] = model_path
    job.write_json(TRAINING_SCORES, scores)
    return scores


def _input_description(s, desc: str, input_cols, features_col: str, weight_col, demo: bool):
    """The report's "input" section: the source, its rows (from the fit summary ``s``) and
    the columns the fit read."""
    return {
        "source": desc,
        "rows": s.numRows + s.numSkippedRows,
        "skippedRows": s.numSkippedRows,
        "incompleteRows": s.numIncompleteRows,
        "inputCols": input_cols,
        "featuresCol": None if input_cols else features_col,
        "weightCol": weight_col,
        "demo": demo,
    }


def _fit_report(job: Job, model, params, inputs, scores, model_path: str, pred_path):
    """The fit's report (report/report.json, once write_report adds the plots and timings)."""
    return {
        "job": "fit",
        "spark": spark_info(job),
        "input": inputs,
        "model": model_description(model),
        "fit": dict(
            summary_description(model),
            maxIter=params["maxIter"],
            tol=params["tol"],
            seed=params["seed"],
            initMode=params["initMode"],
        ),
        "trainingScores": {k: v for k, v in scores.items() if k != "model"},
        "outputs": {
            "folder": job.output,
            "model": model_path,
            "predictions": pred_path,
            "trainingScores": job.out(TRAINING_SCORES),
            "config": job.out(RESOLVED_CONFIG),
        },
    }


def _log_to_mlflow(job: Job, tracker, model, params, desc: str) -> None:
    """Logs the fit (params, metrics, model, report and config) to MLflow."""
    with job.timed("mlflow"):
        tracker.log_fit(
            model,
            params,
            artifacts=[job.out("report"), job.out(RESOLVED_CONFIG)],
            extra_params={"input": desc, "spark_version": job.spark.version},
        )


def _write_predictions(job: Job, model, df, desc: str, fmt: str, partition_by):
    """Writes the predictions (if asked) and returns (a DataFrame with the scores for the
    statistics, the predictions path or None)."""
    cfg = job.cfg
    k = model.getK()
    prob_col = cfg["output.probability_col"]
    if not cfg.get("output.predictions"):
        return model.transform(df), None
    path = job.out("predictions")
    job.describe(f"writing the predictions ({fmt}) to {path}")
    with job.timed("predictions"):
        out = for_format(model.transform(df), fmt, prob_col, k)
        write_frame(job, out, path, fmt, partition_by, int(cfg.get("output.num_files") or 0))
    if fmt in ("parquet", "orc"):  # columnar: reading back the scores is cheaper than rescoring
        return job.spark.read.format(fmt).load(path), path
    return model.transform(df), path
