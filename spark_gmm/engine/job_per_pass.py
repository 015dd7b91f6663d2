"""The job-per-pass engine: every pass is one Spark job over the fit's cached blocks.

A pass maps every partition to one row holding the float64 statistics of every requested pass,
and the driver sums them in partition order (:func:`~spark_gmm.engine.base.ordered_sum`), so
results do not depend on task timing and a retried task changes nothing. The model parameters
travel to the tasks inside the task closure (no broadcast, which Connect lacks).

What a fit's passes read (:func:`pack_blocks`): on classic sessions an RDD of (X, w) NumPy
blocks, whose cache holds the pickled arrays, so a pass streams bytes to Python with no
conversion in the JVM; on Spark Connect, which has no RDDs (and on classic clusters that
forbid them), a DataFrame of the same blocks as binary columns, read with ``mapInArrow``
(the JVM converts the cached columns to Arrow on every pass: ``jobs/benchmarks/bench_pass_read.py``
measures both). The blocks and their order are the same, so both give identical results.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import Optional, Sequence, Union

import numpy as np
import pyarrow as pa
from pyspark.rdd import RDD
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.storagelevel import StorageLevel

from spark_gmm.engine.base import PassEngine, in_order, ordered_sum, sum_buckets, tree_scale
from spark_gmm.engine.blocks import (
    BLOCKS_SCHEMA,
    GatherFunction,
    PassFunction,
    accumulate,
    batch_to_numpy,
    gather,
    pack,
    read_packed,
)
from spark_gmm.engine.faults import FAULT_INJECTION
from spark_gmm.engine.partitions import num_partitions, rdd_or_none, set_job_description
from spark_gmm.engine.tasks import task_scope

log = logging.getLogger("spark_gmm")

_STATS_SCHEMA = "pid int, stats binary"


def _unpack(row, n_features: int):
    return np.frombuffer(row.x).reshape(row.n, n_features), np.frombuffer(row.w)


def pack_blocks(prepared: DataFrame, n_features: int) -> Union[RDD, DataFrame]:
    """The prepared rows as dense float64 blocks, in the same partitions and order: an RDD of
    (X (n, d), w (n,)) pairs on classic sessions, a DataFrame of ``BLOCKS_SCHEMA`` rows where
    RDDs are not available (Spark Connect). Cached, either is about the size of the raw
    doubles, and a pass reads it without converting a row at a time."""
    blocks = prepared.mapInArrow(pack(n_features), BLOCKS_SCHEMA)
    rdd = rdd_or_none(blocks)
    return blocks if rdd is None else rdd.map(partial(_unpack, n_features=n_features))


def _read_rows(batch: pa.RecordBatch, n_features: int):
    yield batch_to_numpy(batch, n_features)


def _in_task(compute):
    """Runs ``compute()`` inside a job-per-pass task (:func:`task_scope`), and the test-only
    fault injection (a crashing Python worker on the task's first attempt)."""
    from pyspark import TaskContext

    if (
        os.environ.get(FAULT_INJECTION) == "exit-first-attempt"
        and TaskContext.get().attemptNumber() == 0
    ):
        os._exit(3)  # a crashing Python worker, for the retry tests
    with task_scope():
        return compute()


def _arrow_task(n_features: int, work, packed: bool):
    """The mapInArrow function: Arrow batches of prepared rows (or packed blocks) -> one
    (pid, float64 bytes) row holding ``work(blocks)`` (nothing when it is None)."""
    read = read_packed if packed else _read_rows

    def run(batches):
        from pyspark import TaskContext

        total = _in_task(
            lambda: work(
                block for batch in batches if batch.num_rows for block in read(batch, n_features)
            )
        )
        if total is not None:
            pid = TaskContext.get().partitionId()
            yield pa.RecordBatch.from_pydict(
                {"pid": pa.array([pid], pa.int32()), "stats": pa.array([total.tobytes()])}
            )

    return run


def _rdd_task(work):
    """The mapPartitionsWithIndex function: (X, w) blocks -> one (pid, ``work(blocks)``) pair
    (nothing when it is None)."""

    def run(pid, blocks):
        total = _in_task(lambda: work(blocks))
        if total is not None:
            yield pid, total

    return run


def _sum_rows(scale: int):
    """The mapInArrow function of the tree level (DataFrame): statistics rows -> bucket sums."""

    def run(batches):
        pairs = [
            (pid, np.frombuffer(blob))
            for batch in batches
            for pid, blob in zip(batch.column("pid").to_pylist(), batch.column("stats").to_pylist())
        ]
        summed = sum_buckets(pairs, scale)
        if summed:
            yield pa.RecordBatch.from_pydict(
                {
                    "pid": pa.array([pid for pid, _ in summed], pa.int32()),
                    "stats": pa.array([total.tobytes() for _, total in summed]),
                }
            )

    return run


class JobPerPassEngine(PassEngine):
    """Runs statistics passes over a prepared DataFrame (columns of :mod:`spark_gmm.data`),
    or over its :func:`pack_blocks` form (an RDD, or a DataFrame when ``packed``): one Spark
    job per pass. :meth:`for_fit` packs and caches a fit's rows, and :meth:`close` frees
    them."""

    name = "jobPerPass"

    def __init__(
        self,
        prepared: Union[DataFrame, RDD],
        n_features: int,
        aggregation_depth: int = 2,
        description: str = "spark_gmm",
        packed: bool = False,
        n_partitions: Optional[int] = None,
    ):
        self.prepared = prepared
        self.packed = packed
        self.n_features = n_features
        self.aggregation_depth = aggregation_depth
        self.description = description
        # given when known: asking a persisted DataFrame not yet filled can be slow
        self.n_partitions = num_partitions(prepared) if n_partitions is None else n_partitions
        self.data_passes = 0
        self._cached = None  # what close() unpersists

    @classmethod
    def for_fit(
        cls,
        rows: DataFrame,
        n_features: int,
        aggregation_depth: int,
        description: str,
        n_partitions: int,
    ) -> "JobPerPassEngine":
        """The engine of a fit: its rows packed into blocks and cached for all its passes
        (about the size of the raw doubles), freed by :meth:`close`."""
        blocks = pack_blocks(rows, n_features).persist(StorageLevel.MEMORY_AND_DISK)
        engine = cls(
            blocks,
            n_features,
            aggregation_depth,
            description,
            packed=True,
            n_partitions=n_partitions,
        )
        engine._cached = blocks
        return engine

    def close(self, failed: bool = False) -> None:
        """Unpersists the blocks :meth:`for_fit` cached."""
        if self._cached is not None:
            self._cached.unpersist()
            self._cached = None

    def _collect(self, work, label: str, scale: Optional[int] = None):
        """One Spark job: (pid, ``work(blocks)``) of every partition, or of every bucket
        ``pid % scale`` (summed by :func:`sum_buckets`) when ``scale``."""
        self.data_passes += 1
        if isinstance(self.prepared, RDD):
            self.prepared.context.setJobDescription(f"{self.description}: {label}")
            out = self.prepared.mapPartitionsWithIndex(_rdd_task(work))
            if scale:
                out = (
                    out.keyBy(lambda pair: pair[0] % scale)
                    .partitionBy(scale)
                    .mapPartitions(lambda keyed: sum_buckets((pair for _, pair in keyed), scale))
                )
            return out.collect()
        out = self.prepared.mapInArrow(
            _arrow_task(self.n_features, work, self.packed), _STATS_SCHEMA
        )
        if scale:
            out = out.repartition(scale, (F.col("pid") % scale)).mapInArrow(
                _sum_rows(scale), _STATS_SCHEMA
            )
        set_job_description(self.prepared, f"{self.description}: {label}")
        return [(row["pid"], np.frombuffer(row["stats"])) for row in out.collect()]

    def run(
        self, passes: Sequence[PassFunction], label: str, size: Optional[int] = None
    ) -> np.ndarray:
        """One Spark job: the summed statistics vectors of all ``passes``, concatenated."""
        scale = tree_scale(self.n_partitions, self.aggregation_depth)
        pairs = self._collect(partial(accumulate, passes=list(passes)), label, scale)
        return ordered_sum(pairs, None)  # any tree level was summed by the job

    def gather(self, function: GatherFunction, label: str) -> Optional[np.ndarray]:
        """One Spark job: the rows ``function`` keeps of every block, joined in partition and
        block order; None when none."""
        pieces = self._collect(partial(gather, function=function), label)
        width = self.n_features + 1
        return in_order((pid, rows.reshape(-1, width)) for pid, rows in pieces)
