"""The demo data set of ``--demo``: four Gaussian blobs in 3-D, generated, written and used as the
input."""

from __future__ import annotations

import math

import numpy as np

from spark_gmm.jobs.errors import JobError
from spark_gmm.jobs.job import Job
from spark_gmm.jobs.outputs import write_frame

DEMO_COLUMNS = ["x", "y", "z"]


def demo_frame(rows: int, seed: int = 7):
    """A pandas DataFrame of 4 Gaussian blobs in 3-D (columns id, x, y, z): elongated,
    rotated, unequal weights, two of them overlapping in x."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    weights = np.array([0.35, 0.25, 0.25, 0.15])
    means = np.array([[-4.0, -2.0, 0.0], [3.0, 4.0, 1.0], [4.5, -3.5, -2.0], [-0.5, 5.5, 3.0]])
    scales = np.array([[1.6, 0.6, 0.5], [0.8, 1.7, 0.7], [1.0, 0.6, 1.0], [0.7, 0.7, 0.6]])
    angles = np.array([0.5, -0.7, 0.25, 0.0])
    counts = rng.multinomial(rows, weights)
    blocks = []
    for mean, scale, angle, count in zip(means, scales, angles, counts):
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        blocks.append(mean + (rng.standard_normal((count, 3)) * scale) @ rotation.T)
    X = np.vstack(blocks)[rng.permutation(rows)]
    frame = pd.DataFrame(np.round(X, 5), columns=DEMO_COLUMNS)
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    return frame


def _write_demo_data(job: Job) -> str:
    path = job.out("data")
    rows = int(job.cfg["demo.rows"])
    job.describe(f"writing {rows:,} rows of demo data to {path}")
    with job.timed("demo_data"):
        frame = demo_frame(rows)
        df = job.spark.createDataFrame(frame).repartition(4)
        write_frame(job, df, path, "parquet")
    return path


def apply_demo(job: Job) -> None:
    """--demo: the generated data is the input; columns x, y, z and k=4 unless set."""
    cfg = job.cfg
    if cfg.get("input.path") or cfg.get("input.table"):
        raise JobError("--demo generates its own input: drop --input / --table")
    path = _write_demo_data(job)
    cfg.values["input.path"], cfg.sources["input.path"] = path, "demo"
    cfg.values["input.format"], cfg.sources["input.format"] = "parquet", "demo"
    if not cfg.get("input.input_cols") and not cfg.get("input.features_col"):
        cfg.values["input.input_cols"], cfg.sources["input.input_cols"] = list(DEMO_COLUMNS), "demo"
    if cfg.sources.get("model.k") == "default":
        cfg.values["model.k"], cfg.sources["model.k"] = 4, "demo"
