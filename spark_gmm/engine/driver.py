"""The driver engine: a small fit's rows collected once to the driver, every pass in process.

The prepared rows, tagged with their Spark partition, come to the driver in one Spark job as
Arrow (:func:`collect_arrow`: no Python worker runs), are held in the blocks the other engines
hold (:func:`spark_gmm.engine.blocks.partition_blocks`: each partition's rows in canonical
order, cut into the same blocks) and every pass of the fit runs on them here with the same
kernel. Statistics are summed per partition in partition order with
:func:`~spark_gmm.engine.base.ordered_sum`, so the result is bit-identical to the resident and
job-per-pass engines on the same partitioning. It needs no slots, no sockets and no barrier
stage, so it runs the same on classic sessions, Spark Connect (local or remote) and under
dynamic allocation; :func:`driver_limit` says up to what size it is chosen.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_gmm.data import (
    FeatureSource,
    InputReport,
    check_input,
    input_stats,
    row_validity,
    unvalidated_rows,
)
from spark_gmm.engine.base import PassEngine, in_order, ordered_sum, tree_scale
from spark_gmm.engine.blocks import (
    FEATURES,
    WEIGHT,
    GatherFunction,
    PassFunction,
    accumulate,
    gather,
    list_array_to_numpy,
    partition_blocks,
)
from spark_gmm.engine.partitions import limited, set_job_description
from spark_gmm.engine.spark_conf import conf_value, size_bytes

log = logging.getLogger("spark_gmm")

# Spark configuration key: packed bytes (rows x (features + 1) x 8) up to which engine='auto'
# runs a fit on the driver. Default: DRIVER_MAX_BYTES (README "How a fit runs": the measured
# crossover with the resident engine).
DRIVER_MAX_BYTES_CONF = "spark.gmm.driver.maxBytes"
DRIVER_MAX_BYTES = 12 << 20
# The collect's Arrow bytes per row beyond the features' doubles: the weight (8), the
# partition id (4) and the list offset (4).
ARROW_ROW_BYTES = 16
# collect_small tries a single collect when Spark estimates the input at most this many times
# the driver engine's limit (an estimate counts more than the features: other columns, row
# overhead; the collect itself is bounded by the limit).
SMALL_ESTIMATE_FACTOR = 4
# What the driver's Python process holds at its peak, in multiples of the packed bytes: the
# Arrow table, its NumPy copy and the canonically ordered blocks.
DRIVER_PEAK = 3.0


def packed_bytes(n_rows: int, n_features: int) -> int:
    """The bytes a fit's rows take as float64 blocks (features and weight)."""
    return 8 * n_rows * (n_features + 1)


def within_limit(n_rows: int, n_features: int, limit: int, what: str) -> str:
    """Why ``engine='auto'`` runs a fit of this size on the driver."""
    return (
        f"its rows take {packed_bytes(n_rows, n_features) / 2**20:.2f} MiB as float64 "
        f"blocks, within the driver engine's limit of {limit / 2**20:.1f} MiB ({what})"
    )


def driver_limit(spark, n_features: int) -> Tuple[int, str]:
    """(packed bytes up to which a fit runs on the driver, what sets that limit): the smallest
    of ``spark.gmm.driver.maxBytes`` (default ``DRIVER_MAX_BYTES``), what the collect may
    bring back (``spark.driver.maxResultSize``, half of it, in Arrow bytes), the driver JVM's
    heap (a quarter of ``spark.driver.memory``, which holds the collected batches) and the
    driver's free memory (a third, for ``DRIVER_PEAK``)."""
    limits = []
    configured = conf_value(spark, DRIVER_MAX_BYTES_CONF)
    limits.append(
        (
            size_bytes(configured, "b") if configured else DRIVER_MAX_BYTES,
            f"{DRIVER_MAX_BYTES_CONF}={configured}"
            if configured
            else f"the default {DRIVER_MAX_BYTES_CONF} ({DRIVER_MAX_BYTES >> 20} MiB)",
        )
    )
    # collected bytes -> packed bytes, for this many features
    to_packed = (8 * (n_features + 1)) / (8 * n_features + ARROW_ROW_BYTES)
    result = conf_value(spark, "spark.driver.maxResultSize")
    result_bytes = size_bytes(result or "1g", "b")
    if result_bytes > 0:  # 0: unlimited
        limits.append(
            (
                int(result_bytes / 2 * to_packed),
                f"half of spark.driver.maxResultSize ({result or '1g'})",
            )
        )
    heap = conf_value(spark, "spark.driver.memory")
    limits.append(
        (
            int(size_bytes(heap or "1g", "m") / 4 * to_packed),
            f"a quarter of spark.driver.memory ({heap or '1g'})",
        )
    )
    free = _available_memory()
    if free:
        limits.append(
            (
                int(free / DRIVER_PEAK),
                f"a third of the driver's free memory ({free / 2**30:.1f} GiB)",
            )
        )
    return min(limits)


def _available_memory() -> Optional[int]:
    """The machine's available memory in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def collect_arrow(df: DataFrame) -> Optional[pa.Table]:
    """``df`` as one Arrow table, collected by the JVM (or the Connect server) without Python
    workers; None when it has no rows. PySpark 4 has ``toArrow`` on both session kinds;
    PySpark 3.5 has the same collect under other names."""
    if hasattr(df, "toArrow"):  # PySpark >= 4.0
        table = df.toArrow()
    elif hasattr(df, "_collect_as_arrow"):  # classic PySpark 3.5
        batches = df._collect_as_arrow()
        table = pa.Table.from_batches(batches) if batches else None
    else:  # Spark Connect, PySpark 3.5
        client = df._session.client
        table, _ = client.to_table(df._plan.to_proto(client))
    return table if table is not None and table.num_rows else None


def estimated_bytes(df: DataFrame) -> Optional[int]:
    """Spark's estimate of ``df``'s size (the optimizer's statistics: exact for cached and
    local data, the files' size for file sources), None where it cannot be read (Spark
    Connect) or Spark has none."""
    try:
        size = df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()
        size = int(size if isinstance(size, int) else size.toString())  # a Scala BigInt
    except Exception:
        return None
    return None if size >= 1 << 62 else size  # spark.sql.defaultSizeInBytes: unknown


def collect_small(
    dataset: DataFrame,
    source: FeatureSource,
    weight_col: Optional[str],
    handle_invalid: str,
    aggregation_depth: int,
    description: str,
) -> Optional[Tuple["DriverEngine", InputReport, str]]:
    """(engine, report, reason) of an input small enough for the driver engine, validated on
    the driver from one collect (one Spark job instead of a validation job and a collect);
    None when Spark's size estimate (:func:`estimated_bytes`) does not show it small, or the
    rows turn out to exceed the driver engine's limit (the caller validates in Spark then).
    Errors in the input are raised as :func:`spark_gmm.data.prepare` raises them."""
    spark = dataset.sparkSession
    d_hint = source.n_columns or 1  # the fewest features: the most rows the limit allows
    limit, what = driver_limit(spark, d_hint)
    estimate = estimated_bytes(dataset)
    if estimate is None or estimate > SMALL_ESTIMATE_FACTOR * limit:
        return None
    max_rows = limit // (8 * (d_hint + 1))
    rows, n_partitions = limited(unvalidated_rows(dataset, source, weight_col))
    tagged = rows.select(F.spark_partition_id().alias("pid"), FEATURES, WEIGHT).limit(max_rows + 1)
    set_job_description(dataset, f"{description}: rows to the driver")
    table = collect_arrow(tagged)
    n = 0 if table is None else table.num_rows
    if n > max_rows:
        return None
    held = _validated(table, n, handle_invalid)
    report = check_input(held.stats, source, weight_col, handle_invalid)
    if report.n_features != d_hint:  # the limit as the other path computes it
        limit, what = driver_limit(spark, report.n_features)
    if packed_bytes(report.n_rows, report.n_features) > limit:
        return None
    valid = held.valid
    X = held.values[np.repeat(valid, held.sizes)].reshape(-1, report.n_features)
    engine = DriverEngine(
        partition_blocks(held.pid[valid], X, held.w[valid], report.n_features),
        report.n_features,
        n_partitions,
        aggregation_depth,
    )
    return engine, report, within_limit(report.n_rows, report.n_features, limit, what)


@dataclass
class _Collected:
    pid: np.ndarray  # (n,) each row's partition
    values: np.ndarray  # every element of the non-null rows, row after row (NaN for nulls)
    sizes: np.ndarray  # (n,) each row's number of elements (0 when null)
    w: np.ndarray  # (n,) weights (NaN for nulls)
    valid: np.ndarray  # (n,) rows to fit (spark_gmm.data.row_validity)
    stats: dict  # spark_gmm.data.input_stats


def _validated(table: Optional[pa.Table], n: int, handle_invalid: str) -> _Collected:
    """The collected rows (pid, FEATURES, WEIGHT) and what validation counts of them under
    ``handle_invalid``."""
    if table is None or n == 0:
        empty = np.empty(0)
        return _Collected(
            np.empty(0, np.int64),
            empty,
            np.empty(0, np.int64),
            empty,
            np.empty(0, bool),
            {"n": 0, "invalid": 0, "nulls": 0},
        )
    features = table.column(FEATURES).combine_chunks()
    row_null = features.is_null().to_numpy(zero_copy_only=False)
    sizes = (
        pc.fill_null(pc.list_value_length(features), 0)
        .to_numpy(zero_copy_only=False)
        .astype(np.int64)
    )
    flat = features.flatten()  # the elements of the non-null rows, in order
    values = (
        pc.fill_null(flat, float("nan"))
        .to_numpy(zero_copy_only=False)
        .astype(np.float64, copy=False)
    )
    row_of_value = np.repeat(np.arange(n), sizes)
    infinite = np.bincount(row_of_value[np.isinf(values)], minlength=n) > 0
    n_missing = np.bincount(row_of_value[np.isnan(values)], minlength=n)
    valid, empty, incomplete = row_validity(row_null, infinite, n_missing, sizes, handle_invalid)
    w = pc.fill_null(table.column(WEIGHT), float("nan")).to_numpy().astype(np.float64, copy=False)
    pid = table.column("pid").to_numpy().astype(np.int64, copy=False)
    counts = (np.count_nonzero(flags) for flags in (row_null, infinite, empty, incomplete))
    nulls, n_infinite, n_empty, n_incomplete = (int(c) for c in counts)
    return _Collected(
        pid,
        values,
        sizes,
        w,
        valid,
        input_stats(valid, nulls, n, sizes, w, n_infinite, n_empty, n_incomplete),
    )


class DriverEngine(PassEngine):
    """Runs every pass of a fit in the driver's process over rows collected once
    (:meth:`collect`); ``held`` is [(pid, [(X, w) blocks])] in pid order."""

    name = "driver"

    def __init__(
        self,
        held: List[Tuple[int, list]],
        n_features: int,
        n_partitions: int,
        aggregation_depth: int,
    ):
        self.held = held
        self.n_features = n_features
        self.scale = tree_scale(n_partitions, aggregation_depth)
        self.data_passes = 0

    @classmethod
    def collect(
        cls,
        rows: DataFrame,
        n_rows: int,
        total_weight: float,
        n_features: int,
        n_partitions: int,
        aggregation_depth: int,
        description: str,
    ) -> "DriverEngine":
        """The engine holding ``rows`` (the fit's prepared rows in their ``n_partitions``
        partitions, ``n_rows`` of ``total_weight`` as validated: anything else is an error,
        never a model)."""
        tagged = rows.select(F.spark_partition_id().alias("pid"), FEATURES, WEIGHT)
        set_job_description(rows, f"{description}: rows to the driver")
        table = collect_arrow(tagged)
        if table is None:
            raise RuntimeError(f"the driver engine read no rows, {n_rows} were validated")
        pid = table.column("pid").to_numpy().astype(np.int64, copy=False)
        X = list_array_to_numpy(table.column(FEATURES), n_features)
        w = table.column(WEIGHT).to_numpy().astype(np.float64, copy=False)
        del table
        weight = math.fsum(w)
        if X.shape[0] != n_rows or not math.isclose(
            weight, total_weight, rel_tol=1e-9, abs_tol=1e-12
        ):
            raise RuntimeError(
                f"the driver engine read {X.shape[0]} rows of total weight {weight!r}, but "
                f"validation counted {n_rows} of {total_weight!r}: the input changed between "
                "two reads (a non-deterministic source?)"
            )
        engine = cls(
            partition_blocks(pid, X, w, n_features), n_features, n_partitions, aggregation_depth
        )
        log.info(
            "driver engine: %d rows (%.1f MB) in %d partitions held by the driver",
            n_rows,
            packed_bytes(n_rows, n_features) / 1e6,
            len(engine.held),
        )
        return engine

    def close(self, failed: bool = False) -> None:
        """Frees the rows."""
        self.held = []

    def run(
        self, passes: Sequence[PassFunction], label: str, size: Optional[int] = None
    ) -> np.ndarray:
        """The summed statistics vectors of all ``passes``: per partition in block order,
        then over partitions in partition order."""
        self.data_passes += 1
        work = partial(accumulate, passes=list(passes))
        pairs = [
            (pid, vector)
            for pid, blocks in self.held
            for vector in (work(blocks),)
            if vector is not None
        ]
        return ordered_sum(pairs, self.scale)

    def gather(self, function: GatherFunction, label: str) -> Optional[np.ndarray]:
        """The rows ``function`` keeps of every held block, joined in partition and block
        order; None when none."""
        self.data_passes += 1
        pieces = [
            (pid, rows)
            for pid, blocks in self.held
            for rows in (gather(blocks, function),)
            if rows is not None
        ]
        return in_order(pieces)


def driver_unavailable(spark, n_rows: int, n_features: int) -> Optional[str]:
    """None when a fit of this size may run on the driver, else why not (with the figures)."""
    limit, what = driver_limit(spark, n_features)
    size = packed_bytes(n_rows, n_features)
    if size <= limit:
        return None
    return (
        f"its rows take {size / 2**20:.1f} MiB as float64 blocks ({n_rows} x "
        f"{n_features + 1}), beyond the driver engine's limit of {limit / 2**20:.1f} MiB "
        f"set by {what}"
    )
