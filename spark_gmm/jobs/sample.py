"""The sample job: draw synthetic rows from a saved model and write them."""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

from spark_gmm import config as _config
from spark_gmm.jobs.errors import JobError
from spark_gmm.jobs.inputs import load_model, model_features
from spark_gmm.jobs.job import RESOLVED_CONFIG, Job, spark_info
from spark_gmm.jobs.outputs import for_format, write_frame
from spark_gmm.jobs.runner import run_job

log = logging.getLogger("spark_gmm")


SAMPLE_OUTPUTS = ("samples", "summary.json", RESOLVED_CONFIG)


def main_sample(argv: Optional[Sequence[str]] = None) -> int:
    """``sample``: draw synthetic rows from a saved model."""
    return run_job(_config.SAMPLE, run_sample, argv)


def run_sample(job: Job) -> None:
    """Runs the sample job: loads the model, draws ``sample.n`` rows from it, writes them to
    samples/ in the output folder (one column per input column with output.expand), then
    summary.json and the resolved configuration."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    cfg = job.cfg
    if not cfg.get("model.path"):
        raise JobError("no model: give --model PATH (model.path)")
    if not cfg.get("output.path"):
        raise JobError("no output folder: give --output PATH (output.path)")
    job.start_spark()
    job.prepare_output(SAMPLE_OUTPUTS)
    model, model_path = load_model(job, cfg["model.path"])
    n, seed = int(cfg["sample.n"]), int(cfg["sample.seed"])
    fmt = cfg["output.format"]
    job.describe(f"drawing {n:,} rows from the model")
    df = model.sample(n, seed)
    input_cols, _ = model_features(model)
    if cfg.get("output.expand") and input_cols:
        arr = vector_to_array(F.col(model.getFeaturesCol()))
        df = df.select(*[arr[j].alias(c) for j, c in enumerate(input_cols)], "component")
    path = job.out("samples")
    job.describe(f"writing {n:,} sampled rows ({fmt}) to {path}")
    with job.timed("write"):
        write_frame(
            job,
            for_format(df, fmt, None, model.getK()),
            path,
            fmt,
            (),
            int(cfg.get("output.num_files") or 0),
        )
    back = job.spark.read.format(fmt).load(path) if fmt in ("parquet", "orc") else df
    counts_rows = back.groupBy("component").count().collect()
    counts = [0] * model.getK()
    for row in counts_rows:
        counts[int(row["component"])] = int(row["count"])
    summary = {
        "job": "sample",
        "spark": spark_info(job),
        "model": model_path,
        "rows": sum(counts),
        "seed": seed,
        "componentCounts": counts,
        "columns": back.columns,
        "outputs": {"samples": path, "config": job.out(RESOLVED_CONFIG)},
        "seconds": dict(job.timings, total=time.time() - job.started),
    }
    job.write_json("summary.json", summary)
    job.write_resolved_config()
    log.info("done in %.1f s: %d rows in %s", time.time() - job.started, sum(counts), path)
