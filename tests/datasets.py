"""The tests' data: the package's generated sets (spark_gmm.datasets) and the DataFrames the
Spark-layer tests build from them."""

from __future__ import annotations

import numpy as np
from pyspark.ml.linalg import Vectors

from spark_gmm.datasets import blobs, one_d_mixture  # noqa: F401  (the tests import them here)


def vector_df(spark, X, partitions: int = 2, extra=None):
    """A DataFrame with a dense `features` vector column and an `id` column."""
    rows = [(i, Vectors.dense(x)) for i, x in enumerate(np.asarray(X, dtype=float))]
    df = spark.createDataFrame(rows, ["id", "features"])
    return df.repartition(partitions, "id").sortWithinPartitions("id")


def array_df(spark, X, partitions: int = 2, dtype: str = "double"):
    """A DataFrame with an `id` column and an array<dtype> `features` column."""
    rows = [(i, [float(v) for v in x]) for i, x in enumerate(np.asarray(X, dtype=float))]
    df = spark.createDataFrame(rows, f"id long, features array<{dtype}>")
    return df.repartition(partitions, "id").sortWithinPartitions("id")


def adjusted_rand_index(a, b) -> float:
    """scikit-learn's adjusted Rand index of two labelings."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(a), np.asarray(b)))
