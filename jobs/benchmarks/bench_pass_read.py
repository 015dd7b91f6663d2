"""Where a spark_gmm EM pass spends its time, in two hand-run measurements (never a test).

    .venv/bin/python jobs/benchmarks/bench_pass_read.py [--rows 1000000] [--features 10] [--k 8]
        [--partitions 4]

1. Spark (local[2], --partitions partitions, default 4): seconds of a job that only reads
   the data in Python, for a tiny cached DataFrame of as many partitions (the fixed cost of a
   job), the prepared rows cached as array<double> (how passes read before packing), the
   rows packed in dense blocks and cached as a DataFrame of binary columns read by
   ``mapInArrow`` (how passes read on Spark Connect) and as the RDD of NumPy blocks that
   ``spark_gmm.engine.job_per_pass.pack_blocks`` gives on classic sessions; then one EM pass (full
   covariance, k components) over each packed form, and over the RDD packed from rows
   coalesced by ``spark_gmm.engine.partitions.limit_partitions`` (what a fit does on a
   classic session).
2. The NumPy kernel alone, one BLAS thread: ``kernel.accumulate_stats`` (the E-step and
   moments of one pass, full covariance) over the same number of rows for several block sizes.

Prints one JSON object; each figure is the fastest of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import common
import numpy as np


def _fastest(fn, repeats: int):
    """(seconds of the fastest of ``repeats`` calls of fn, what the last call returned)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return round(best, 3), value


def spark_reads(rows: int, d: int, k: int, partitions: int, repeats: int) -> dict:
    import pyarrow as pa
    from pyspark.sql import functions as F

    from spark_gmm import kernel
    from spark_gmm.engine.blocks import (
        BLOCKS_SCHEMA,
        FEATURES,
        WEIGHT,
        batch_to_numpy,
        pack,
        read_packed,
    )
    from spark_gmm.engine.job_per_pass import JobPerPassEngine, pack_blocks
    from spark_gmm.engine.partitions import limit_partitions

    spark = common.session(conf={"spark.driver.memory": "4g"})
    prepared = (
        spark.range(rows, numPartitions=partitions)
        .select(F.array(*[F.randn(i) for i in range(d)]).alias(FEATURES), F.lit(1.0).alias(WEIGHT))
        .persist()
    )
    arrow_blocks = prepared.mapInArrow(pack(d), BLOCKS_SCHEMA).persist()
    rdd_blocks = pack_blocks(prepared, d).persist()
    coalesced = pack_blocks(limit_partitions(prepared), d).persist()
    tiny = spark.range(partitions, numPartitions=partitions).persist()
    for data in (prepared, arrow_blocks, rdd_blocks, coalesced, tiny):
        data.count()

    def reader(read):
        def run(batches):
            n = 0
            for batch in batches:
                for X, _ in read(batch):
                    n += X.shape[0]
            yield pa.RecordBatch.from_pydict({"n": [n]})

        return run

    def job(df, read):
        return lambda: sum(row.n for row in df.mapInArrow(reader(read), "n long").collect())

    def rdd_job(rdd):
        return lambda: sum(
            rdd.mapPartitions(lambda blocks: [sum(X.shape[0] for X, _ in blocks)]).collect()
        )

    params = kernel.MixtureParams(
        np.full(k, 1.0 / k),
        np.arange(k * d, dtype=float).reshape(k, d) % 3,
        np.repeat(np.eye(d)[None], k, 0),
        "full",
    )

    def em_pass(data):
        passes = JobPerPassEngine(data, d, packed=True)
        return lambda: passes.em_stats([params])[0]

    out = {
        "partitions": partitions,
        "partitions_coalesced": coalesced.getNumPartitions(),
        "empty_job_seconds": _fastest(job(tiny, lambda b: iter(())), repeats)[0],
    }
    # what each form read and what each pass summed, beside its time: every form must agree
    rows_read, passes = {}, {}
    for name, measure in [
        ("array_rows", job(prepared, lambda b: [batch_to_numpy(b, d)])),
        ("packed_blocks_arrow", job(arrow_blocks, lambda b: read_packed(b, d))),
        ("packed_blocks_rdd", rdd_job(rdd_blocks)),
    ]:
        out[f"read_{name}_seconds"], rows_read[name] = _fastest(measure, repeats)
    for name, data in [
        ("arrow_blocks", arrow_blocks),
        ("rdd_blocks", rdd_blocks),
        ("rdd_coalesced", coalesced),
    ]:
        out[f"em_pass_seconds_{name}"], stats = _fastest(em_pass(data), repeats)
        passes[name] = {"weight_sum": stats.weight_sum, "log_likelihood": stats.log_likelihood}
    out["rows_read"], out["em_pass"] = rows_read, passes
    spark.stop()
    return out


def kernel_blocks(rows: int, d: int, k: int, repeats: int) -> dict:
    from threadpoolctl import threadpool_limits

    from spark_gmm import kernel

    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, d)) + rng.integers(0, 5, size=(rows, 1))
    params = kernel.MixtureParams(
        np.full(k, 1.0 / k), X[:k].copy(), np.repeat(np.eye(d)[None], k, 0), "full"
    )
    out, log_likelihoods = {}, {}
    with threadpool_limits(limits=1, user_api="blas"):
        for block in sorted({256, 1024, kernel.default_block_rows(k, d), 4096, 16_384}):
            seconds, stats = _fastest(
                lambda: kernel.accumulate_stats(X, None, params, block), repeats
            )
            out[f"accumulate_stats_seconds_block_{block}"] = seconds
            log_likelihoods[str(block)] = stats.log_likelihood
    out["accumulate_stats_log_likelihood_by_block"] = log_likelihoods
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = {"rows": args.rows, "features": args.features, "k": args.k, "cores": os.cpu_count()}
    result.update(spark_reads(args.rows, args.features, args.k, args.partitions, args.repeats))
    result.update(kernel_blocks(args.rows, args.features, args.k, args.repeats))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
