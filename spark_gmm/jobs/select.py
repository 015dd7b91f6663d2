"""The select job: BIC/AIC over a grid of k and covariance types, then the table, the best model
and its report."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Sequence

from spark_gmm import config as _config
from spark_gmm.jobs.inputs import start_on_input
from spark_gmm.jobs.job import RESOLVED_CONFIG, Job, spark_info
from spark_gmm.jobs.outputs import save_model
from spark_gmm.jobs.report import model_description, plot_sample, summary_description, write_report
from spark_gmm.jobs.runner import run_job
from spark_gmm.jobs.training_scores import TRAINING_SCORES, score_statistics

log = logging.getLogger("spark_gmm")


SELECT_OUTPUTS = (
    "model",
    "report",
    "selection.csv",
    "selection.json",
    TRAINING_SCORES,
    RESOLVED_CONFIG,
)


def main_select(argv: Optional[Sequence[str]] = None) -> int:
    """``select``: BIC/AIC over a grid of k and covariance types; table + best model."""
    return run_job(_config.SELECT, run_select, argv)


def run_select(job: Job) -> None:
    """Runs the select job: fits every k and covariance type of the grid, writes the
    criteria table (selection.csv, selection.json), the best model, its training scores,
    the report and the resolved configuration."""
    from spark_gmm.selection import GaussianMixtureSelector

    cfg = job.cfg
    df, desc, demo, input_cols, features_col = start_on_input(job, SELECT_OUTPUTS)
    params = _grid(cfg)
    estimator = _estimator(cfg, input_cols, features_col)
    selector = GaussianMixtureSelector(estimator=estimator, **params)
    job.describe(
        f"selecting among k in {params['kValues']} x {params['covarianceTypes']} "
        f"by {params['criterion'].upper()} on {desc}"
    )
    with job.timed("select"):
        result = selector.fit(df)
    table = result.table
    best = result.bestModel
    log.info("best: k=%d %s", best.getK(), best.getCovarianceType())

    _set_output_columns(best, input_cols, features_col)
    job.write_text("selection.csv", table.to_csv(index=False))
    job.write_json("selection.json", table.to_dict(orient="records"))
    model_path = save_model(job, best, "the best model")
    scores = _write_training_scores(job, df, best, model_path)

    X, labels = plot_sample(job, df, best, None, scores["rows"], estimator.getSeed())
    source = {
        "source": desc,
        "rows": scores["rows"],
        "inputCols": input_cols,
        "featuresCol": None if input_cols else features_col,
        "demo": demo,
    }
    report = _report(job, source, params["criterion"], table, best, model_path, scores)
    write_report(job, report, best, X, labels, table=table)
    job.write_resolved_config()
    log.info("done in %.1f s: %s", time.time() - job.started, job.output)


def _grid(cfg) -> Dict[str, Any]:
    """The selector's grid and criterion, as GaussianMixtureSelector parameters."""
    return dict(
        kValues=list(cfg["selection.k_values"]),
        covarianceTypes=list(cfg["selection.covariance_types"]),
        criterion=cfg["selection.criterion"],
    )


def _estimator(cfg, input_cols, features_col):
    """The GaussianMixture every candidate of the grid is fitted with, reading the input's
    feature columns (``input_cols``) or its vector column (``features_col``)."""
    from spark_gmm import GaussianMixture

    estimator = GaussianMixture(
        seed=int(cfg["selection.seed"]),
        maxIter=int(cfg["selection.max_iter"]),
        tol=float(cfg["selection.tol"]),
        regCovar=float(cfg["selection.reg_covar"]),
        handleInvalid=cfg["input.handle_invalid"],
    )
    if input_cols:
        estimator.setInputCols(input_cols)
    else:
        estimator.setFeaturesCol(features_col)
    return estimator


def _set_output_columns(best, input_cols, features_col) -> None:
    """Sets the best model's input columns and the output columns it is saved and scored with."""
    best.setFeaturesCol(features_col)
    if input_cols:
        best.setInputCols(input_cols)
    best.setPredictionCol("prediction").setProbabilityCol("probability")
    best.setLogLikelihoodCol("logLikelihood")


def _write_training_scores(job: Job, df, best, model_path: str) -> Dict[str, Any]:
    """Scores ``df`` with the best model and writes the log-likelihood statistics (with the
    model's path) to the training scores file; returns them."""
    job.describe("computing the training log-likelihood quantiles of the best model")
    with job.timed("training_scores"):
        scored = best.transform(df)
        scores = score_statistics(scored, "logLikelihood")
    scores["model"] = model_path
    job.write_json(TRAINING_SCORES, scores)
    return scores


def _report(job: Job, source, criterion, table, best, model_path, scores) -> Dict[str, Any]:
    """The select job's report: its input (``source``), the criteria table, the best model,
    its fit and training scores, and the outputs."""
    return {
        "job": "select",
        "spark": spark_info(job),
        "input": source,
        "criterion": criterion,
        "table": table.to_dict(orient="records"),
        "best": {"k": best.getK(), "covarianceType": best.getCovarianceType()},
        "model": model_description(best),
        "fit": summary_description(best),
        "trainingScores": {k: v for k, v in scores.items() if k != "model"},
        "outputs": {
            "folder": job.output,
            "model": model_path,
            "table": job.out("selection.csv"),
            "config": job.out(RESOLVED_CONFIG),
        },
    }
