"""Spark partitions as the engines see them: how many, at most how many per core, and the
job description the Spark UI shows."""

from __future__ import annotations

from typing import Optional, Tuple, Union

from pyspark.rdd import RDD
from pyspark.sql import DataFrame

# Partitions per core that EM passes read at most (see limit_partitions).
TASKS_PER_CORE = 2


def limit_partitions(df: DataFrame, per_core: int = TASKS_PER_CORE) -> DataFrame:
    """``df`` coalesced (no shuffle) to ``per_core`` partitions per core of the session when
    it has more (:func:`limited`)."""
    return limited(df, per_core)[0]


def limited(df: DataFrame, per_core: int = TASKS_PER_CORE) -> Tuple[DataFrame, int]:
    """(``df`` coalesced, its partitions): at most ``per_core`` partitions per core of the
    session: every pass launches one Python task per partition, at a fixed cost of tens of
    milliseconds each (``jobs/benchmarks/bench_pass_read.py --partitions 200`` times an empty
    job), so inputs of hundreds of small partitions (e.g. after a shuffle) would spend most of
    each EM iteration starting tasks. Spark Connect exposes no core count: there the
    partitioning is kept (and reported as 0, unknown)."""
    n = num_partitions(df)
    if n:  # a classic session with RDDs (Spark Connect reports 0)
        target = per_core * df.sparkSession.sparkContext.defaultParallelism
        if n > target:
            return df.coalesce(target), target
    return df, n


def rdd_or_none(df: DataFrame) -> Optional[RDD]:
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
    try:  # the JVM's RDD of the plan: no Python RDD, no row deserializer to generate
        return int(data._jdf.queryExecution().toRdd().getNumPartitions())
    except Exception:  # Spark Connect (no _jdf), or a cluster that forbids it
        pass
    rdd = rdd_or_none(data)
    return 0 if rdd is None else rdd.getNumPartitions()


def set_job_description(df: DataFrame, text: str) -> None:
    """Names the job in the Spark UI on classic sessions (Connect has no such call)."""
    try:
        df.sparkSession.sparkContext.setJobDescription(text)
    except Exception:  # Spark Connect, or a cluster that forbids the SparkContext
        pass
