"""Pass engines: what runs a statistics pass over the fit's rows, and the job-per-pass engine.

:class:`PassEngine` is everything the initialisation and ``run_em`` ask of the data: summed
statistics of some passes, and rows gathered to the driver (samples). :class:`SparkPasses`
runs each pass as one Spark job; :mod:`spark_gmm.resident` holds the rows in one barrier
stage's Python workers for the whole fit. Both sum the same per-partition vectors in the same
order (:func:`ordered_sum`), so they give bit-identical results.

In the job-per-pass engine a pass maps every partition to one row holding the float64 statistics of every requested
pass, and the driver sums them in partition order, so results do not depend on task timing
and a retried task changes nothing. The model parameters travel to the tasks inside the task
closure (no broadcast, which Connect lacks).

What a fit's passes read (:func:`pack_blocks`): on classic sessions an RDD of (X, w) NumPy
blocks, whose cache holds the pickled arrays, so a pass streams bytes to Python with no
conversion in the JVM; on Spark Connect, which has no RDDs (and on classic clusters that
forbid them), a DataFrame of the same blocks as binary columns, read with ``mapInArrow``
(the JVM converts the cached columns to Arrow on every pass: ``jobs/bench_pass_read.py``
measures both). The blocks and their order are the same, so both give identical results.
"""
from __future__ import annotations

import logging
import math
import os
from functools import partial
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
from pyspark.rdd import RDD
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_gmm import kernel
from spark_gmm.blocks import BLOCKS_SCHEMA, GatherFunction, PassFunction, accumulate, \
    batch_to_numpy, gather, pack, read_packed
from spark_gmm.tasks import task_scope

log = logging.getLogger("spark_gmm")

_STATS_SCHEMA = "pid int, stats binary"
# Partitions per core that EM passes read at most (see limit_partitions).
TASKS_PER_CORE = 2
# Test-only switch: "exit-first-attempt" kills the Python worker on each statistics task's
# first attempt (tests/test_reliability.py shows a retried fit equals a clean one).
FAULT_INJECTION = "SPARK_GMM_FAULT_INJECTION"


def _unpack(row, n_features: int):
    return np.frombuffer(row.x).reshape(row.n, n_features), np.frombuffer(row.w)


def pack_blocks(prepared: DataFrame, n_features: int) -> Union[RDD, DataFrame]:
    """The prepared rows as dense float64 blocks, in the same partitions and order: an RDD of
    (X (n, d), w (n,)) pairs on classic sessions, a DataFrame of ``BLOCKS_SCHEMA`` rows where
    RDDs are not available (Spark Connect). Cached, either is about the size of the raw
    doubles, and a pass reads it without converting a row at a time."""
    blocks = prepared.mapInArrow(pack(n_features), BLOCKS_SCHEMA)
    rdd = _rdd_or_none(blocks)
    return blocks if rdd is None else rdd.map(partial(_unpack, n_features=n_features))


def limit_partitions(df: DataFrame, per_core: int = TASKS_PER_CORE) -> DataFrame:
    """``df`` coalesced (no shuffle) to ``per_core`` partitions per core of the session when
    it has more: every pass launches one Python task per partition, at a fixed cost of tens of
    milliseconds each (``jobs/bench_pass_read.py --partitions 200`` times an empty job), so
    inputs of hundreds of small partitions (e.g. after a shuffle) would spend most of each EM
    iteration starting tasks. Spark Connect exposes no core count: there the partitioning is
    kept."""
    n = num_partitions(df)
    if n:  # a classic session with RDDs (Spark Connect reports 0)
        target = per_core * df.sparkSession.sparkContext.defaultParallelism
        if n > target:
            return df.coalesce(target)
    return df


def _read_rows(batch: pa.RecordBatch, n_features: int):
    yield batch_to_numpy(batch, n_features)


def _in_task(compute):
    """Runs ``compute()`` inside a job-per-pass task (:func:`task_scope`), and the test-only
    fault injection (a crashing Python worker on the task's first attempt)."""
    from pyspark import TaskContext

    if os.environ.get(FAULT_INJECTION) == "exit-first-attempt" \
            and TaskContext.get().attemptNumber() == 0:
        os._exit(3)  # a crashing Python worker, for the retry tests
    with task_scope():
        return compute()


def _arrow_task(n_features: int, work, packed: bool):
    """The mapInArrow function: Arrow batches of prepared rows (or packed blocks) -> one
    (pid, float64 bytes) row holding ``work(blocks)`` (nothing when it is None)."""
    read = read_packed if packed else _read_rows

    def run(batches):
        from pyspark import TaskContext

        total = _in_task(lambda: work(
            block for batch in batches if batch.num_rows for block in read(batch, n_features)
        ))
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


def _sum_in_order(pairs: Iterable[Tuple[int, np.ndarray]]) -> Optional[Tuple[int, np.ndarray]]:
    """(first pid, sum of the vectors in pid order) of (pid, vector) pairs; None if none."""
    pairs = sorted(pairs, key=lambda pair: pair[0])
    if not pairs:
        return None
    total = np.array(pairs[0][1], dtype=np.float64)
    for _, vector in pairs[1:]:
        total += vector
    return pairs[0][0], total


def _sum_buckets(pairs: Iterable[Tuple[int, np.ndarray]], scale: int):
    """Tree level: (first pid, sum in pid order) of each bucket ``pid % scale`` present among
    (pid, vector) pairs. Summing per bucket, not per task, keeps the grouping the same
    whichever partition a bucket's rows were shuffled to."""
    buckets = {}
    for pid, vector in pairs:
        buckets.setdefault(pid % scale, []).append((pid, vector))
    return [_sum_in_order(group) for _, group in sorted(buckets.items())]


def _sum_rows(scale: int):
    """The mapInArrow function of the tree level (DataFrame): statistics rows -> bucket sums."""

    def run(batches):
        pairs = [(pid, np.frombuffer(blob)) for batch in batches
                 for pid, blob in zip(batch.column("pid").to_pylist(),
                                      batch.column("stats").to_pylist())]
        summed = _sum_buckets(pairs, scale)
        if summed:
            yield pa.RecordBatch.from_pydict({
                "pid": pa.array([pid for pid, _ in summed], pa.int32()),
                "stats": pa.array([total.tobytes() for _, total in summed]),
            })

    return run


def ordered_sum(pairs: Iterable[Tuple[int, np.ndarray]], scale: Optional[int]) -> np.ndarray:
    """The sum of (pid, vector) pairs as every engine forms it: in pid order, through buckets
    ``pid % scale`` first when there is a tree level (:func:`_tree_scale`)."""
    pairs = list(pairs)
    if scale:
        pairs = _sum_buckets(pairs, scale)
    summed = _sum_in_order(pairs)
    if summed is None:
        raise ValueError("no rows reached the statistics pass")
    return summed[1]


def in_order(pieces: Iterable[Tuple[int, np.ndarray]]) -> Optional[np.ndarray]:
    """(pid, rows) pieces joined in pid order (None when there are none)."""
    pieces = sorted(pieces, key=lambda piece: piece[0])
    return np.concatenate([rows for _, rows in pieces]) if pieces else None


def _tree_scale(n_partitions: int, depth: int) -> Optional[int]:
    """Buckets of the intermediate level, or None when a flat collect is cheaper
    (Spark's treeAggregate rule)."""
    if depth < 2 or n_partitions <= 1:
        return None
    scale = max(int(math.ceil(n_partitions ** (1.0 / depth))), 2)
    return scale if n_partitions > scale + n_partitions // scale else None


class PassEngine:
    """Runs statistics passes over a fit's rows, wherever they are held. Subclasses provide
    :meth:`run` (summed statistics vectors) and :meth:`gather` (kept rows, in order)."""

    n_features: int
    jobs: int  # data passes run so far

    def run(self, passes: Sequence[PassFunction], label: str,
            size: Optional[int] = None) -> np.ndarray:
        """The summed statistics vectors of all ``passes``, concatenated (``size`` values in
        all, when the caller knows it)."""
        raise NotImplementedError

    def gather(self, function: GatherFunction, label: str) -> Optional[np.ndarray]:
        """The rows ``function`` keeps of every block (arrays of ``n_features + 1`` columns,
        features then weight), joined in partition and block order; None when none."""
        raise NotImplementedError

    def stats(self, passes: Sequence[PassFunction], shifts, types, label) -> List[kernel.SufficientStats]:
        """Runs ``passes`` and splits the result into SufficientStats with the given shifts."""
        sizes = [kernel.SufficientStats.zeros(shift, t).to_vector().size
                 for shift, t in zip(shifts, types)]
        vector = self.run(passes, label, size=sum(sizes))
        out, pos = [], 0
        for shift, covariance_type, size in zip(shifts, types, sizes):
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
                              types: Sequence[str], label: str,
                              scale: Optional[np.ndarray] = None):
        """Statistics of nearest-center assignments, one per (centers, covariance type), in
        one data pass (initialisation and data moments); distances in units of ``scale``."""
        passes = [partial(kernel.hard_assignment_stats, centers=centers, covariance_type=t,
                          scale=scale)
                  for centers, t in zip(centers_list, types)]
        shifts = [kernel.moment_shift(c, t) for c, t in zip(centers_list, types)]
        return self.stats(passes, shifts, types, label)

    def sample(self, fraction: float, seed: int, limit: int):
        """(X, w) of at most ``limit`` distinct rows: those :func:`kernel.sample_rows` keeps
        (each with probability ``fraction``, by its content), rows with equal features merged
        (weights summed), the ``limit`` with the smallest hash kept, sorted by features
        (:func:`kernel.canonical_sample`). Neither the rows nor their order depend on how the
        data is partitioned or ordered, nor on the engine."""
        rows = self.gather(partial(kernel.sample_rows, fraction=fraction, seed=seed),
                           "sample rows")
        if rows is None:
            rows = np.empty((0, self.n_features + 1))
        rows = kernel.canonical_sample(rows, seed, limit)
        return rows[:, :-1], rows[:, -1]

    def first_row(self) -> np.ndarray:
        """The first row of the data (an origin for offset-safe moments)."""
        rows = self.gather(_first_row_of_block, "first row")
        if rows is None:
            raise ValueError("no rows reached the pass")
        return rows[0, :-1]


def _first_row_of_block(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.append(X[0], w[0])[None, :]


class SparkPasses(PassEngine):
    """Runs statistics passes over a prepared DataFrame (columns of :mod:`spark_gmm.data`),
    or over its :func:`pack_blocks` form (an RDD, or a DataFrame when ``packed``): one Spark
    job per pass."""

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
        self.jobs = 0

    def _collect(self, work, label: str, scale: Optional[int] = None):
        """One Spark job: (pid, ``work(blocks)``) of every partition, or of every bucket
        ``pid % scale`` (summed by :func:`_sum_buckets`) when ``scale``."""
        self.jobs += 1
        if isinstance(self.prepared, RDD):
            self.prepared.context.setJobDescription(f"{self.description}: {label}")
            out = self.prepared.mapPartitionsWithIndex(_rdd_task(work))
            if scale:
                out = out.keyBy(lambda pair: pair[0] % scale).partitionBy(scale) \
                    .mapPartitions(lambda keyed: _sum_buckets((pair for _, pair in keyed), scale))
            return out.collect()
        out = self.prepared.mapInArrow(
            _arrow_task(self.n_features, work, self.packed), _STATS_SCHEMA
        )
        if scale:
            out = out.repartition(scale, (F.col("pid") % scale)).mapInArrow(
                _sum_rows(scale), _STATS_SCHEMA
            )
        _set_job_description(self.prepared, f"{self.description}: {label}")
        return [(row["pid"], np.frombuffer(row["stats"])) for row in out.collect()]

    def run(self, passes: Sequence[PassFunction], label: str,
            size: Optional[int] = None) -> np.ndarray:
        """One Spark job: the summed statistics vectors of all ``passes``, concatenated."""
        scale = _tree_scale(self.n_partitions, self.aggregation_depth)
        pairs = self._collect(partial(accumulate, passes=list(passes)), label, scale)
        return ordered_sum(pairs, None)  # any tree level was summed by the job

    def gather(self, function: GatherFunction, label: str) -> Optional[np.ndarray]:
        pieces = self._collect(partial(gather, function=function), label)
        width = self.n_features + 1
        return in_order((pid, rows.reshape(-1, width)) for pid, rows in pieces)


def _rdd_or_none(df: DataFrame) -> Optional[RDD]:
    """``df.rdd``, or None where RDDs are not available: Spark Connect, and classic clusters
    whose access mode forbids them (the call raises there; the DataFrame forms still work)."""
    try:
        return df.rdd
    except Exception:
        return None


def num_partitions(data: Union[DataFrame, RDD]) -> int:
    """Partitions of an RDD or a DataFrame; 0 (unknown) where RDDs are not available."""
    if isinstance(data, RDD):
        return data.getNumPartitions()
    rdd = _rdd_or_none(data)
    return 0 if rdd is None else rdd.getNumPartitions()


def _set_job_description(df: DataFrame, text: str) -> None:
    """Names the job in the Spark UI on classic sessions (Connect has no such call)."""
    try:
        df.sparkSession.sparkContext.setJobDescription(text)
    except Exception:  # Spark Connect, or a cluster that forbids the SparkContext
        pass
