"""The training log-likelihood quantiles (``training_scores.json``) that fit and select write and
the score job's anomaly threshold reads."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

import numpy as np

from spark_gmm.data import quote_name
from spark_gmm.jobs.errors import JobError, spark_error_line
from spark_gmm.jobs.job import Job

TRAINING_SCORES = "training_scores.json"
QUANTILE_PROBABILITIES = (
    0.0,
    0.0001,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.025,
    0.05,
    0.1,
    0.2,
    0.25,
    0.5,
    0.75,
    0.8,
    0.9,
    0.95,
    0.975,
    0.99,
    0.995,
    0.999,
    1.0,
)
QUANTILE_ACCURACY = 10000  # percentile_approx accuracy: relative rank error 1e-4


def score_statistics(df, column: str) -> Dict[str, Any]:
    """Row count, mean, min, max and approximate quantiles of a log-likelihood column, in one
    Spark job."""
    from pyspark.sql import functions as F

    c = F.col(quote_name(column))
    row = df.agg(
        F.count(c).alias("n"),
        F.mean(c).alias("mean"),
        F.min(c).alias("min"),
        F.max(c).alias("max"),
        F.percentile_approx(c, list(QUANTILE_PROBABILITIES), QUANTILE_ACCURACY).alias("q"),
    ).collect()[0]
    values = [float(v) for v in (row["q"] or [])]
    return {
        "column": column,
        "rows": int(row["n"]),
        "mean": _float(row["mean"]),
        "min": _float(row["min"]),
        "max": _float(row["max"]),
        "relativeError": 1.0 / QUANTILE_ACCURACY,
        "probabilities": list(QUANTILE_PROBABILITIES),
        "values": values,
    }


def quantile_threshold(scores: Dict[str, Any], q: float) -> Tuple[float, bool]:
    """(threshold, interpolated) for quantile ``q`` of saved training scores."""
    probs = [float(p) for p in scores["probabilities"]]
    values = [float(v) for v in scores["values"]]
    if len(probs) != len(values) or not probs:
        raise JobError("the training scores file is malformed: probabilities and values differ")
    if not probs[0] <= q <= probs[-1]:
        raise JobError(
            f"threshold_quantile {q} is outside the saved quantiles [{probs[0]}, {probs[-1]}]"
        )
    for p, v in zip(probs, values):
        if abs(p - q) < 1e-12:
            return v, False
    return float(np.interp(q, probs, values)), True


def _float(value) -> Optional[float]:
    return None if value is None else float(value)


def read_training_scores(job: Job, path: str) -> Dict[str, Any]:
    """The training scores saved at ``path`` (a ``training_scores.json``), or a JobError
    saying why they cannot be read."""
    try:
        exists = job.fs.exists(path)
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"cannot access training scores {path}: {spark_error_line(exc)}") from None
    if not exists:
        raise JobError(
            f"no training scores at {path} (the fit job writes {TRAINING_SCORES} beside the "
            "model folder); pass --training-scores PATH, or an absolute --threshold"
        )
    try:
        data = json.loads(job.fs.read_bytes(path).decode("utf-8"))
        data["probabilities"], data["values"]  # noqa: B018 - presence check
    except Exception:  # noqa: BLE001
        raise JobError(
            f"training scores {path} are not a training_scores.json written by the fit job"
        ) from None
    return data
