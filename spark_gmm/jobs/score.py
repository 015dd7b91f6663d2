"""The score job: apply a saved model to new data, with the anomaly flag below a log-likelihood
threshold (absolute, or a quantile of the training scores)."""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

from spark_gmm import config as _config
from spark_gmm.data import quote_name
from spark_gmm.jobs.errors import JobError
from spark_gmm.jobs.inputs import check_features, load_model, model_features, read_input
from spark_gmm.jobs.job import RESOLVED_CONFIG, Job, spark_info
from spark_gmm.jobs.outputs import check_partition_by, for_format, output_columns, write_frame
from spark_gmm.jobs.runner import run_job
from spark_gmm.jobs.training_scores import TRAINING_SCORES, quantile_threshold, read_training_scores

log = logging.getLogger("spark_gmm")


SCORE_OUTPUTS = ("predictions", "summary.json", RESOLVED_CONFIG)


def main_score(argv: Optional[Sequence[str]] = None) -> int:
    """``score``: apply a saved model to new data, with an optional anomaly flag."""
    return run_job(_config.SCORE, run_score, argv)


def run_score(job: Job) -> None:
    """The score job: loads the model and the anomaly threshold, checks the input's features
    and the new columns, writes the predictions, then the summary (summary.json) and the
    resolved config."""
    cfg = job.cfg
    _check_settings(cfg)
    job.start_spark()
    job.prepare_output(SCORE_OUTPUTS)
    model, model_path = load_model(job, cfg["model.path"])
    d = model.numFeatures
    threshold, threshold_info = _anomaly_threshold(job, model_path)

    with job.timed("read"):
        df, desc = read_input(job)
    input_cols, features_col = _feature_columns(cfg, df, desc, model, d)
    anomaly_col = cfg["anomaly.column"] if threshold is not None else None
    pred_col, prob_col, ll_col, anomaly_col = output_columns(cfg, df, desc, anomaly_col)
    _set_model_columns(model, cfg, features_col, input_cols, pred_col, prob_col, ll_col)
    report = _validate_features(job, df, desc, features_col, input_cols, d)

    scored = _with_anomaly_flag(model.transform(df), ll_col, anomaly_col, threshold)
    k = model.getK()
    path, source_df = _write_predictions(job, scored, desc, prob_col, k)
    counts, anomalies, total_ll = _cluster_totals(job, source_df, k, pred_col, ll_col, anomaly_col)
    n = sum(counts)
    summary = {
        "job": "score",
        "spark": spark_info(job),
        "model": model_path,
        "input": _input_description(report, desc, input_cols, features_col),
        "rows": n,
        "meanLogLikelihood": total_ll / n if n else None,
        "clusterSizes": counts,
        "anomaly": _anomaly_summary(threshold_info, anomaly_col, anomalies, n),
        "outputs": {"predictions": path, "config": job.out(RESOLVED_CONFIG)},
        "seconds": dict(job.timings, total=time.time() - job.started),
    }
    job.write_json("summary.json", summary)
    job.write_resolved_config()
    _log_scores(n, total_ll, sum(anomalies), anomaly_col, threshold)
    log.info("done in %.1f s: %s", time.time() - job.started, job.output)


def _check_settings(cfg) -> None:
    """Checks that the settings name a model, an input and an output folder."""
    if not cfg.get("model.path"):
        raise JobError("no model: give --model PATH (model.path)")
    if not (cfg.get("input.path") or cfg.get("input.table")):
        raise JobError("no input: give --input PATH or --table NAME (input.path / input.table)")
    if not cfg.get("output.path"):
        raise JobError("no output folder: give --output PATH (output.path)")


def _anomaly_threshold(job: Job, model_path: str):
    """(threshold, its description for the summary): anomaly.threshold as given, or the
    anomaly.threshold_quantile of the training scores; (None, None) without either."""
    cfg = job.cfg
    if cfg.get("anomaly.threshold") is not None:
        threshold = float(cfg["anomaly.threshold"])
        return threshold, {"threshold": threshold, "source": "absolute (anomaly.threshold)"}
    if cfg.get("anomaly.threshold_quantile") is None:
        return None, None
    q = float(cfg["anomaly.threshold_quantile"])
    scores_path = cfg.get("anomaly.training_scores") or _training_scores_beside(job, model_path)
    scores = read_training_scores(job, scores_path)
    threshold, interpolated = quantile_threshold(scores, q)
    log.info(
        "anomaly threshold: log-likelihood < %.6g (%s quantile of the training scores%s)",
        threshold,
        f"{q:g}",
        ", interpolated" if interpolated else "",
    )
    return threshold, {
        "threshold": threshold,
        "quantile": q,
        "trainingScores": scores_path,
        "interpolated": interpolated,
        "source": f"quantile {q:g} of the training log-likelihoods",
    }


def _training_scores_beside(job: Job, model_path: str) -> str:
    """The training scores a fit job wrote beside the model at ``model_path`` (in the folder
    that holds it)."""
    return job.fs.join(
        model_path.rstrip("/").rsplit("/", 1)[0] if "/" in model_path.rstrip("/") else ".",
        TRAINING_SCORES,
    )


def _feature_columns(cfg, df, desc: str, model, d: int):
    """(input_cols or None, features_col) to score: the input settings' if given, else the
    model's, checked against the schema and the model's ``d`` features."""
    model_cols, model_features_col = model_features(model)
    if cfg.get("input.input_cols") or cfg.get("input.features_col"):
        input_cols, features_col = check_features(
            df, desc, cfg.get("input.input_cols"), cfg.get("input.features_col")
        )
    else:
        input_cols, features_col = check_features(df, desc, model_cols, model_features_col)
    if input_cols and len(input_cols) != d:
        raise JobError(
            f"the model expects {d} features but input_cols lists {len(input_cols)} "
            f"({', '.join(input_cols)})"
        )
    return input_cols, features_col


def _set_model_columns(model, cfg, features_col, input_cols, pred_col, prob_col, ll_col) -> None:
    """Points the model at the input's feature columns and the output column names, with the
    input's handleInvalid."""
    model.setFeaturesCol(features_col)
    if input_cols:
        model.setInputCols(input_cols)
    else:
        model.clear(model.inputCols)
    model.setPredictionCol(pred_col).setProbabilityCol(prob_col).setLogLikelihoodCol(ll_col)
    model.setHandleInvalid(cfg["input.handle_invalid"])


def _validate_features(job: Job, df, desc: str, features_col: str, input_cols, d: int):
    """The InputReport of one validation pass over the features: clear errors for NaNs, nulls
    and vectors of the wrong size here, instead of a failed Spark task later."""
    from spark_gmm.data import prepare, resolve_features

    job.describe(f"checking the features of {desc}")
    with job.timed("validate"):
        source = resolve_features(df, features_col, input_cols)
        _, report = prepare(df, source, None, job.cfg["input.handle_invalid"], expected_features=d)
    if report.n_skipped:
        log.warning(
            "skipping %d of %d rows with null, NaN or infinite features",
            report.n_skipped,
            report.n_input_rows,
        )
    return report


def _with_anomaly_flag(scored, ll_col: str, anomaly_col: Optional[str], threshold):
    """``scored`` with the anomaly column (log-likelihood below ``threshold``), if any."""
    from pyspark.sql import functions as F

    if anomaly_col:
        scored = scored.withColumn(anomaly_col, F.col(quote_name(ll_col)) < F.lit(threshold))
    return scored


def _write_predictions(job: Job, scored, desc: str, prob_col: str, k: int):
    """Writes the predictions; returns (their path, a DataFrame of them to summarise: read back
    for columnar formats, else ``scored``)."""
    cfg = job.cfg
    fmt = cfg["output.format"]
    partition_by = cfg.get("output.partition_by") or []
    check_partition_by(scored, partition_by)
    path = job.out("predictions")
    job.describe(f"scoring {desc} and writing the predictions ({fmt}) to {path}")
    with job.timed("predictions"):
        write_frame(
            job,
            for_format(scored, fmt, prob_col, k),
            path,
            fmt,
            partition_by,
            int(cfg.get("output.num_files") or 0),
        )
    source_df = job.spark.read.format(fmt).load(path) if fmt in ("parquet", "orc") else scored
    return path, source_df


def _cluster_totals(job: Job, source_df, k: int, pred_col: str, ll_col: str, anomaly_col):
    """(rows per cluster, anomalies per cluster, total log-likelihood) of the predictions, in
    one Spark job."""
    from pyspark.sql import functions as F

    job.describe("summarising the scores")
    with job.timed("summary"):
        aggs = [F.count(F.lit(1)).alias("rows"), F.sum(F.col(quote_name(ll_col))).alias("ll")]
        if anomaly_col:
            aggs.append(F.sum(F.col(quote_name(anomaly_col)).cast("long")).alias("anomalies"))
        per_cluster = source_df.groupBy(F.col(quote_name(pred_col)).alias("c")).agg(*aggs).collect()
    counts = [0] * k
    anomalies = [0] * k
    total_ll = 0.0
    for row in per_cluster:
        counts[int(row["c"])] = int(row["rows"])
        total_ll += float(row["ll"] or 0.0)
        if anomaly_col:
            anomalies[int(row["c"])] = int(row["anomalies"] or 0)
    return counts, anomalies, total_ll


def _input_description(report, desc: str, input_cols, features_col: str):
    """The summary's "input" section: the source, its rows (from the validation ``report``)
    and the columns scored."""
    return {
        "source": desc,
        "rows": report.n_input_rows,
        "skippedRows": report.n_skipped,
        "incompleteRows": report.n_incomplete,
        "inputCols": input_cols,
        "featuresCol": None if input_cols else features_col,
    }


def _anomaly_summary(threshold_info, anomaly_col: Optional[str], anomalies, n: int):
    """The summary's "anomaly" section: the threshold, the column and the anomalies in all
    and per cluster; None without an anomaly column."""
    if not anomaly_col:
        return None
    return dict(
        threshold_info,
        column=anomaly_col,
        rows=sum(anomalies),
        fraction=sum(anomalies) / n if n else None,
        perCluster=anomalies,
    )


def _log_scores(n: int, total_ll: float, n_anomalies: int, anomaly_col, threshold) -> None:
    """Logs the number of rows scored, with the anomalies or the mean log-likelihood."""
    if anomaly_col:
        log.info(
            "scored %d rows: %d anomalies (%.2f%%) below log-likelihood %.6g",
            n,
            n_anomalies,
            100.0 * n_anomalies / max(n, 1),
            threshold,
        )
    else:
        log.info("scored %d rows, mean log-likelihood %.6g", n, total_ll / max(n, 1))
