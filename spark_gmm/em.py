"""EM on Spark: one job per pass, partition statistics reduced to the driver.

Built only on DataFrame operations (``mapInArrow``, ``repartition``, ``collect``), so it runs
the same on classic sessions and on Spark Connect. The model parameters travel to the tasks
inside the task closure (no broadcast, which Connect lacks); each partition sends back one row
holding the float64 statistics of every requested pass, and the driver sums them in partition
order, so results do not depend on task timing and a retried task changes nothing.
"""
from __future__ import annotations

import logging
import math
import os
from functools import partial
from typing import Callable, List, Optional, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_gmm import kernel
from spark_gmm.data import batch_to_numpy

log = logging.getLogger("spark_gmm")

_STATS_SCHEMA = "pid int, stats binary"
# Packed data: one row per block of prepared rows, float64 row-major bytes (X) and weights.
BLOCKS_SCHEMA = "n int, x binary, w binary"
# Rows x features doubles per packed block: at most 2**20 (8 MiB per value).
_BLOCK_ELEMENTS = 1 << 20
# Partitions per core that EM passes read at most (see limit_partitions).
TASKS_PER_CORE = 2
# Test-only switch: "exit-first-attempt" kills the Python worker on each statistics task's
# first attempt (tests/test_reliability.py shows a retried fit equals a clean one).
FAULT_INJECTION = "SPARK_GMM_FAULT_INJECTION"

# A pass computes one statistics vector from (X, w): kernel functions bound with partial.
PassFunction = Callable[[np.ndarray, np.ndarray], kernel.SufficientStats]


def _pack(n_features: int):
    """The mapInArrow function: Arrow batches of prepared rows -> rows of packed blocks."""
    block = max(1, _BLOCK_ELEMENTS // n_features)

    def run(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, block):
                X, w = batch_to_numpy(batch.slice(start, block), n_features)
                if X.shape[0]:
                    yield pa.RecordBatch.from_pydict({
                        "n": pa.array([X.shape[0]], pa.int32()),
                        "x": pa.array([np.ascontiguousarray(X).tobytes()], pa.binary()),
                        "w": pa.array([w.tobytes()], pa.binary()),
                    })

    return run


def pack_blocks(prepared: DataFrame, n_features: int) -> DataFrame:
    """The prepared rows as dense float64 blocks (columns of ``BLOCKS_SCHEMA``), in the same
    partitions and order. Cached, they are about the size of the raw doubles, and a pass
    reads them without converting a row at a time (jobs/bench_pass_read.py compares)."""
    return prepared.mapInArrow(_pack(n_features), BLOCKS_SCHEMA)


def limit_partitions(df: DataFrame, per_core: int = TASKS_PER_CORE) -> DataFrame:
    """``df`` coalesced (no shuffle) to ``per_core`` partitions per core of the session when
    it has more: every pass launches one Python task per partition, at a fixed cost of tens of
    milliseconds each (``jobs/bench_pass_read.py --partitions 200`` times an empty job), so
    inputs of hundreds of small partitions (e.g. after a shuffle) would spend most of each EM
    iteration starting tasks. Spark Connect exposes no core count: there the partitioning is
    kept."""
    n = num_partitions(df)
    if n:  # a classic session (Spark Connect reports 0)
        target = per_core * df.sparkSession.sparkContext.defaultParallelism
        if n > target:
            return df.coalesce(target)
    return df


def _read_blocks(batch: pa.RecordBatch, n_features: int):
    """(X, w) of each packed row of a batch, viewing the Arrow buffers without copies."""
    ns = batch.column("n").to_numpy(zero_copy_only=False)
    xs, ws = batch.column("x"), batch.column("w")
    for i, n in enumerate(ns):
        X = np.frombuffer(xs[i].as_buffer(), dtype=np.float64).reshape(int(n), n_features)
        yield X, np.frombuffer(ws[i].as_buffer(), dtype=np.float64)


def _read_rows(batch: pa.RecordBatch, n_features: int):
    yield batch_to_numpy(batch, n_features)


def _partition_stats(n_features: int, passes: Sequence[PassFunction], packed: bool):
    """The mapInArrow function: Arrow batches of prepared rows (or packed blocks) -> one row
    of statistics."""
    read = _read_blocks if packed else _read_rows

    def run(batches):
        from pyspark import TaskContext
        from threadpoolctl import threadpool_limits

        if os.environ.get(FAULT_INJECTION) == "exit-first-attempt" \
                and TaskContext.get().attemptNumber() == 0:
            os._exit(3)  # a crashing Python worker, for the retry tests
        total = None
        # Two tasks share two cores: more BLAS threads per task only oversubscribe.
        with threadpool_limits(limits=1, user_api="blas"):
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                for X, w in read(batch, n_features):
                    vector = np.concatenate([p(X, w).to_vector() for p in passes])
                    total = vector if total is None else total + vector
        if total is not None:
            pid = TaskContext.get().partitionId()
            yield pa.RecordBatch.from_pydict(
                {"pid": pa.array([pid], pa.int32()), "stats": pa.array([total.tobytes()])}
            )

    return run


def _sum_rows(batches):
    """Tree level: sums the statistics rows of a bucket in partition order."""
    rows = []
    for batch in batches:
        rows.extend(zip(batch.column("pid").to_pylist(), batch.column("stats").to_pylist()))
    if rows:
        rows.sort(key=lambda r: r[0])
        total = np.frombuffer(rows[0][1]).copy()
        for _, blob in rows[1:]:
            total += np.frombuffer(blob)
        yield pa.RecordBatch.from_pydict(
            {"pid": pa.array([rows[0][0]], pa.int32()), "stats": pa.array([total.tobytes()])}
        )


def _tree_scale(n_partitions: int, depth: int) -> Optional[int]:
    """Buckets of the intermediate level, or None when a flat collect is cheaper
    (Spark's treeAggregate rule)."""
    if depth < 2 or n_partitions <= 1:
        return None
    scale = max(int(math.ceil(n_partitions ** (1.0 / depth))), 2)
    return scale if n_partitions > scale + n_partitions // scale else None


class SparkPasses:
    """Runs statistics passes over a prepared DataFrame (columns of :mod:`spark_gmm.data`),
    or over its :func:`pack_blocks` form when ``packed``."""

    def __init__(
        self,
        prepared: DataFrame,
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
        self.jobs = 0  # data passes run so far

    def run(self, passes: Sequence[PassFunction], label: str) -> np.ndarray:
        """One Spark job: the summed statistics vectors of all ``passes``, concatenated."""
        stats = self.prepared.mapInArrow(
            _partition_stats(self.n_features, list(passes), self.packed), _STATS_SCHEMA
        )
        scale = _tree_scale(self.n_partitions, self.aggregation_depth)
        if scale:
            stats = stats.repartition(scale, (F.col("pid") % scale)).mapInArrow(
                _sum_rows, _STATS_SCHEMA
            )
        _set_job_description(self.prepared, f"{self.description}: {label}")
        rows = stats.collect()
        self.jobs += 1
        if not rows:
            raise ValueError("no rows reached the statistics pass")
        rows.sort(key=lambda r: r["pid"])
        total = np.frombuffer(rows[0]["stats"]).copy()
        for row in rows[1:]:
            total += np.frombuffer(row["stats"])
        return total

    def stats(self, passes: Sequence[PassFunction], shifts, types, label) -> List[kernel.SufficientStats]:
        """Runs ``passes`` and splits the result into SufficientStats with the given shifts."""
        vector = self.run(passes, label)
        out, pos = [], 0
        for shift, covariance_type in zip(shifts, types):
            size = kernel.SufficientStats.zeros(shift, covariance_type).to_vector().size
            out.append(
                kernel.SufficientStats.from_vector(vector[pos : pos + size], shift, covariance_type)
            )
            pos += size
        return out

    def em_stats(self, candidates: Sequence[kernel.MixtureParams], label: str = "EM pass"):
        """E-step statistics of every candidate in one data pass (the ``run_em`` callback)."""
        passes = [partial(kernel.accumulate_stats, params=p) for p in candidates]
        return self.stats(
            passes,
            [kernel.stats_shift(p) for p in candidates],
            [p.covariance_type for p in candidates],
            label,
        )

    def hard_assignment_stats(self, centers_list: Sequence[np.ndarray],
                              types: Sequence[str], label: str):
        """Statistics of nearest-center assignments, one per (centers, covariance type), in
        one data pass (initialisation and data moments)."""
        passes = [partial(kernel.hard_assignment_stats, centers=centers, covariance_type=t)
                  for centers, t in zip(centers_list, types)]
        shifts = [kernel.moment_shift(c, t) for c, t in zip(centers_list, types)]
        return self.stats(passes, shifts, types, label)


def num_partitions(df: DataFrame) -> int:
    try:
        return df.rdd.getNumPartitions()  # classic sessions
    except Exception:  # Spark Connect has no RDDs: treat as unknown, collect flat
        return 0


def _set_job_description(df: DataFrame, text: str) -> None:
    """Names the job in the Spark UI on classic sessions (Connect has no such call)."""
    try:
        df.sparkSession.sparkContext.setJobDescription(text)
    except Exception:
        pass
