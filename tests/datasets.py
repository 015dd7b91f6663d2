"""Generated data sets shared by the Spark-layer tests (no downloads)."""

from __future__ import annotations

import numpy as np
from pyspark.ml.linalg import Vectors


def blobs(n_per: int, d: int, k: int = 3, separation: float = 10.0, seed: int = 0):
    """k well-separated spherical blobs in d dimensions: (X (k*n_per, d), labels)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, separation, size=(k, d))
    X = np.vstack([rng.normal(c, 1.0, size=(n_per, d)) for c in centers])
    labels = np.repeat(np.arange(k), n_per)
    order = rng.permutation(len(X))
    return X[order], labels[order]


def one_d_mixture(seed: int = 0):
    """N(-0.5, 0.2) x 2000, N(-0.1, 0.07) x 5000, N(0.2, 0.13) x 10000 (stds)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [rng.normal(-0.5, 0.2, 2000), rng.normal(-0.1, 0.07, 5000), rng.normal(0.2, 0.13, 10000)]
    )
    return rng.permutation(x)[:, None]


def vector_df(spark, X, partitions: int = 2, extra=None):
    """A DataFrame with a dense `features` vector column and an `id` column."""
    rows = [(i, Vectors.dense(x)) for i, x in enumerate(np.asarray(X, dtype=float))]
    df = spark.createDataFrame(rows, ["id", "features"])
    return df.repartition(partitions, "id").sortWithinPartitions("id")


def array_df(spark, X, partitions: int = 2, dtype: str = "double"):
    rows = [(i, [float(v) for v in x]) for i, x in enumerate(np.asarray(X, dtype=float))]
    df = spark.createDataFrame(rows, f"id long, features array<{dtype}>")
    return df.repartition(partitions, "id").sortWithinPartitions("id")


def adjusted_rand_index(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(a), np.asarray(b)))
