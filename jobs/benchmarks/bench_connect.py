"""Seconds per EM iteration on Spark Connect beside a classic session: spark_gmm and Spark's
built-in GaussianMixture. A hand-run benchmark, never a test.

    .venv/bin/python jobs/benchmarks/bench_connect.py [--rows 1000000 --features 10 --k 8]
        [--max-iter 5] [--partitions 4] [--repeats 3] [--workdir /tmp/spark_gmm_bench]
        [--remote sc://host:port]

The same Parquet file of seeded blobs (``spark_gmm.datasets.blobs``) as
jobs/benchmarks/bench_gmm.py (written once under --workdir), read, assembled into a "features"
vector column, repartitioned and cached, then timed with bench_gmm's method (tol=0; one warm-up
fit; seconds per iteration by differencing the fastest maxIter=M and maxIter=1 fits of
--repeats rounds; for spark_gmm also the mean of its logged per-iteration seconds) in two
sessions one after the other, never at once (two JVMs would share the two cores):

1. classic: a ``local[2]`` SparkSession in this process;
2. connect: a Spark Connect server on ``local[2]`` started from the installed PySpark
   (tests/connect_server.py), and this process as its client; or, with ``--remote sc://...``,
   a running Connect server (then the figures are that server's, not local[2]'s).

Prints one JSON object (seconds per iteration and the ratio to the built-in in each session,
and each implementation's Connect/classic ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import bench_gmm  # this script's directory
import common


def measure(spark, args) -> dict:
    path = bench_gmm.write_parquet(Path(args.workdir), args.rows, args.features, args.k, args.seed)[
        "path"
    ]
    df, n = bench_gmm.load_cached(spark, path, args.features, args.partitions)
    out = {"cached_rows": n}
    try:
        for name, run in (
            ("spark_gmm", lambda: bench_gmm.run_spark_gmm(df, args, args.k, "full")),
            ("builtin", lambda: bench_gmm.run_builtin(df, args, args.k)),
        ):
            bench_gmm.progress(f"{name}: {args.rows} rows")
            result = run()
            result.pop("params", None)
            out[name] = {
                key: result[key]
                for key in (
                    "seconds_per_iteration",
                    "seconds_per_iteration_log",
                    "fit_seconds",
                    "iterations_of_timed_fits",
                    "num_iter",
                    "log_likelihood_reported",
                    "warning",
                )
                if key in result
            }
    finally:
        df.unpersist()
    gmm, builtin = (out[i]["seconds_per_iteration"] for i in ("spark_gmm", "builtin"))
    out["ratio_to_builtin"] = gmm / builtin if gmm and builtin else None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-iter", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed fits per maxIter; the fastest counts (default 3)",
    )
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "spark_gmm_bench"))
    parser.add_argument(
        "--remote",
        metavar="URL",
        help="a running Spark Connect server (sc://host:port) instead of "
        "starting one; --workdir must be readable by it",
    )
    args = parser.parse_args(argv)
    # what bench_gmm's runners read from their arguments
    args.short_iter, args.no_warmup, args.init_mode = 1, False, "k-means++"

    connect_server = common.connect_server_module()
    os.environ.update(connect_server.python_env())
    result = {"settings": vars(args).copy()}

    started = time.perf_counter()
    spark = common.session(conf={"spark.app.name": "bench_connect", "spark.driver.memory": "4g"})
    try:
        result["classic"] = measure(spark, args)
    finally:
        spark.stop()

    def on_connect(url: str) -> dict:
        spark = common.session(remote=url)
        try:
            return measure(spark, args)
        finally:
            spark.stop()

    if args.remote:
        result["connect"] = on_connect(args.remote)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-connect-") as logs:
            server = connect_server.ConnectServer(Path(logs), driver_memory="4g").start()
            try:
                result["connect"] = on_connect(server.url)
            finally:
                server.stop()

    for name in ("spark_gmm", "builtin"):
        classic = result["classic"][name]["seconds_per_iteration"]
        connect = result["connect"][name]["seconds_per_iteration"]
        result[f"{name}_connect_over_classic"] = connect / classic if classic and connect else None
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
