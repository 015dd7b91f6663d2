"""The Python functions that score and sample on Spark: Arrow batches in, the model's outputs
(or drawn rows) out, for ``GaussianMixtureModel.transform`` and ``sample``."""

from __future__ import annotations

from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spark_gmm import kernel
from spark_gmm.engine.blocks import list_array_to_numpy
from spark_gmm.engine.tasks import task_scope


def scoring_function(
    params: kernel.MixtureParams,
    description: str,
    kinds: List[str],
    names: List[str],
    keep_missing: bool = False,
):
    """mapInArrow function: batches of (input columns..., features array) -> (input columns...,
    the outputs named in kinds: probability array, prediction int, logLikelihood double).
    With ``keep_missing`` (handleInvalid='keep'), null and NaN features are marginalised."""
    k, d = params.k, params.d

    def score(batches):
        with task_scope():
            for batch in batches:
                yield _score_batch(batch, params, k, d, description, kinds, names, keep_missing)

    return score


def check_scored_rows(X: np.ndarray, description: str, keep_missing: bool) -> None:
    """An error unless every row of X can be scored: finite features, or under
    ``keep_missing`` null/NaN features with at least one present and none infinite."""
    if keep_missing:
        if np.isinf(X).any():
            raise ValueError(
                f"{description} has infinite values; set handleInvalid='skip' to drop those rows"
            )
        if X.shape[1] and np.isnan(X).all(axis=1).any():
            raise ValueError(
                f"{description} has a row with every feature null or NaN (handleInvalid='keep' "
                "needs one present); set handleInvalid='skip' to drop such rows"
            )
    elif not np.all(np.isfinite(X)):
        keep = ", or 'keep' to marginalise the null and NaN features" if np.isnan(X).any() else ""
        raise ValueError(
            f"{description} has NaN, infinite or null values; set handleInvalid='skip' to drop "
            f"those rows{keep}"
        )


def _score_batch(batch: pa.RecordBatch, params, k, d, description, kinds, names, keep_missing):
    features = batch.column(batch.num_columns - 1)
    n = len(features)
    if features.null_count:
        raise ValueError(f"{description} has null rows; set handleInvalid='skip' to drop them")
    lengths = pc.list_value_length(features).to_numpy(zero_copy_only=False)
    if n and (lengths != d).any():
        bad = int(lengths[lengths != d][0])
        raise ValueError(f"{description} has a vector of size {bad}; the model expects {d}")
    X = list_array_to_numpy(features, d)
    check_scored_rows(X, description, keep_missing)
    labels, proba, logp = kernel.predict(X, params)
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    outputs = {
        "probability": pa.ListArray.from_arrays(offsets, pa.array(proba.ravel())),
        "prediction": pa.array(labels, pa.int32()),
        "logLikelihood": pa.array(logp),
    }
    columns = batch.columns[:-1] + [outputs[kind] for kind in kinds]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names[:-1] + names)


SAMPLE_CHUNK = 4096


def sampling_function(params: kernel.MixtureParams, seed: int, n: int):
    """mapInArrow function: batches of ids -> (features array, component) drawn per chunk of
    SAMPLE_CHUNK consecutive ids with a generator seeded by (seed, chunk number)."""
    d = params.d

    def draw(batches):
        with task_scope():
            for batch in batches:
                ids = batch.column(0).to_numpy()
                if len(ids):
                    yield _draw_batch(ids, params, seed, n, d)

    return draw


def _draw_batch(ids, params: kernel.MixtureParams, seed: int, n: int, d: int):
    X = np.empty((len(ids), d))
    labels = np.empty(len(ids), dtype=np.int32)
    for chunk in range(ids[0] // SAMPLE_CHUNK, ids[-1] // SAMPLE_CHUNK + 1):
        lo = chunk * SAMPLE_CHUNK
        size = min(SAMPLE_CHUNK, n - lo)
        rng = np.random.default_rng([seed % 2**63, chunk])
        Xc, lc = kernel.sample(params, size, rng)
        rows = (ids >= lo) & (ids < lo + size)  # ids are consecutive within a batch
        X[rows], labels[rows] = Xc[ids[rows] - lo], lc[ids[rows] - lo]
    offsets = pa.array(np.arange(0, (len(ids) + 1) * d, d, dtype=np.int32))
    return pa.RecordBatch.from_arrays(
        [pa.ListArray.from_arrays(offsets, pa.array(X.ravel())), pa.array(labels, pa.int32())],
        names=["features", "component"],
    )
