"""Soak: many fits in one session leak neither memory nor cached data.

20 fits of 20,000 rows x 5 features (k=4, maxIter=20) on an uncached DataFrame (each fit
caches its prepared data and must unpersist it), then a few on a cached input, each followed
by transform + count. Measures the RSS of the driver (this Python process), of the driver
JVM and of the Python workers after fit 5 and after the last fit, and checks that nothing is
left cached: persistent RDDs, RDD storage, the SQL cache manager and the catalog are as they
were before (apart from the caller's own cached input while it is cached).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from pyspark.ml.functions import array_to_vector
from pyspark.sql import functions as F

from spark_gmm import GaussianMixture

pytestmark = pytest.mark.slow

N_ROWS, N_FEATURES, K, MAX_ITER = 20_000, 5, 4, 20
N_UNCACHED_FITS, N_CACHED_FITS = 20, 3
MIB = 1024.0

# Bounds on the growth between the measurement after fit 5 and the one after the last fit
# (18 more fits). Measured on this 2-core machine (the test prints its numbers): driver
# +0.1 MiB, Python workers +0.0 MiB (the same reused workers, ~171 MiB each once warm), JVM
# heap in use after a full GC +7 to +12 MiB (Spark's own bookkeeping of the ~25 jobs of each
# fit is the likely cause; not investigated further). One retained copy of the input per fit
# (20,000 x 5 float64 = 0.8 MB) would add 14 MB over those 18 fits, so the driver and worker
# bounds catch a data-sized leak while leaving ~100x the measured growth for allocator noise.
# The JVM's RSS is printed but not bounded: it follows heap sizing (up to -Xmx2g), not what
# is live (it went from 1385 to 1121 MiB in one run, from 1027 to 1164 MiB in another).
DRIVER_GROWTH_MIB = 10.0
WORKER_GROWTH_MIB = 10.0
JVM_HEAP_GROWTH_MIB = 40.0


def _rss_kib(pid="self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def _worker_rss(spark) -> dict:
    """{pid: VmRSS KiB} of the Python workers that run two small tasks."""

    def probe(batches):
        import os as _os

        import pandas as pd

        for _ in batches:
            pass
        with open("/proc/self/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        yield pd.DataFrame({"pid": [_os.getpid()], "rss_kib": [rss]})

    rows = spark.range(0, 4, numPartitions=2).mapInPandas(probe, "pid long, rss_kib long").collect()
    return {r["pid"]: r["rss_kib"] for r in rows}


def _jvm_pid(spark) -> int:
    return int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())


def _jvm_heap_used_kib(spark) -> int:
    """Heap in use in the driver JVM right after a full GC."""
    jvm = spark.sparkContext._jvm
    jvm.java.lang.System.gc()
    runtime = jvm.java.lang.Runtime.getRuntime()
    return int((runtime.totalMemory() - runtime.freeMemory()) // 1024)


def _snapshot(spark, label: str) -> dict:
    gc.collect()
    snap = {
        "label": label,
        "driver": _rss_kib(),
        "jvm": _rss_kib(_jvm_pid(spark)),
        "jvm_heap": _jvm_heap_used_kib(spark),
        "workers": _worker_rss(spark),
    }
    workers = ", ".join(f"{pid}: {kib / MIB:.1f}" for pid, kib in sorted(snap["workers"].items()))
    print(
        f"[soak] {label}: driver {snap['driver'] / MIB:.1f} MiB, JVM RSS "
        f"{snap['jvm'] / MIB:.1f} MiB (heap after GC {snap['jvm_heap'] / MIB:.1f} MiB), "
        f"workers {{{workers}}} MiB"
    )
    return snap


def _cache_state(spark) -> dict:
    jsc = spark.sparkContext._jsc
    return {
        "persistent_rdds": jsc.getPersistentRDDs().size(),
        "rdd_storage": len(jsc.sc().getRDDStorageInfo()),
        "cache_manager_empty": spark._jsparkSession.sharedState().cacheManager().isEmpty(),
        "tables": sorted(t.name for t in spark.catalog.listTables()),
    }


def _blobs_df(spark, seed: int):
    """20,000 rows of 4 blobs in 5 features, computed on the executors (never cached)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 8.0, size=(K, N_FEATURES))
    component = (F.col("id") % K + 1).cast("int")
    columns = [
        F.element_at(F.array(*[F.lit(float(c)) for c in centers[:, j]]), component)
        + F.randn(seed * 100 + j)
        for j in range(N_FEATURES)
    ]
    return spark.range(0, N_ROWS, numPartitions=4).select(
        "id", array_to_vector(F.array(*columns)).alias("features")
    )


def _fit_transform_count(df, seed: int):
    model = GaussianMixture(k=K, maxIter=MAX_ITER, seed=seed).fit(df)
    assert np.all(np.isfinite(model.means)) and np.all(np.isfinite(model.covariances))
    assert model.summary.numRows == N_ROWS
    assert model.transform(df).count() == N_ROWS
    return model


def test_many_fits_leak_neither_memory_nor_cache(spark):
    started = time.perf_counter()
    before = _cache_state(spark)
    _snapshot(spark, "before the first fit")
    snapshots = {}
    fit_seconds = []
    for i in range(1, N_UNCACHED_FITS + 1):
        t = time.perf_counter()
        df = _blobs_df(spark, seed=i)
        assert not df.is_cached
        _fit_transform_count(df, seed=i)
        fit_seconds.append(time.perf_counter() - t)
        assert _cache_state(spark) == before, f"fit {i} left data cached"
        if i == 5:
            snapshots["after 5"] = _snapshot(spark, "after fit 5")
    snapshots["after uncached"] = _snapshot(spark, f"after fit {N_UNCACHED_FITS}")

    cached = _blobs_df(spark, seed=99).cache()
    assert cached.count() == N_ROWS
    while_cached = _cache_state(spark)
    assert while_cached["persistent_rdds"] == before["persistent_rdds"] + 1
    assert not while_cached["cache_manager_empty"]
    for i in range(N_CACHED_FITS):
        t = time.perf_counter()
        _fit_transform_count(cached, seed=100 + i)
        fit_seconds.append(time.perf_counter() - t)
        # the fit reads a cached input as it is: the caller's cache, nothing more
        assert cached.is_cached and _cache_state(spark) == while_cached
    cached.unpersist(blocking=True)
    assert _cache_state(spark) == before
    last = _snapshot(spark, f"after fit {N_UNCACHED_FITS + N_CACHED_FITS} (cached input)")

    first = snapshots["after 5"]
    driver_growth = (last["driver"] - first["driver"]) / MIB
    jvm_growth = (last["jvm"] - first["jvm"]) / MIB
    heap_growth = (last["jvm_heap"] - first["jvm_heap"]) / MIB
    common = set(first["workers"]) & set(last["workers"])
    worker_growth = {pid: (last["workers"][pid] - first["workers"][pid]) / MIB for pid in common}
    print(
        f"[soak] {len(fit_seconds)} fits in {sum(fit_seconds):.1f} s "
        f"(median {np.median(fit_seconds):.2f} s, max {max(fit_seconds):.2f} s); "
        f"total {time.perf_counter() - started:.1f} s"
    )
    print(
        f"[soak] growth from fit 5 to the end: driver {driver_growth:+.1f} MiB, "
        f"JVM RSS {jvm_growth:+.1f} MiB, JVM heap after GC {heap_growth:+.1f} MiB, workers "
        + (
            ", ".join(f"{pid}: {g:+.1f}" for pid, g in sorted(worker_growth.items()))
            or "(no worker pid in both probes)"
        )
        + " MiB"
    )
    assert driver_growth < DRIVER_GROWTH_MIB
    assert heap_growth < JVM_HEAP_GROWTH_MIB
    # Workers are reused, so the probe normally meets the same processes; if a worker was
    # replaced, its replacement must not be larger than the largest worker seen after fit 5.
    if worker_growth:
        assert max(worker_growth.values()) < WORKER_GROWTH_MIB
    assert max(last["workers"].values()) < max(first["workers"].values()) + WORKER_GROWTH_MIB * MIB
