"""Seconds per EM iteration of a fit whose features have missing cells (handleInvalid='keep'),
against the same fit on complete data, in one local[2] session.

usage: python jobs/benchmarks/bench_missing.py [--rows N] [--features D] [--k K]
           [--missing 0,0.2] [--handle-invalid keep] [--covariance-type full] [--iters 10]
           [--repeats 3] [--data DIR]

For each fraction of missing cells, rows of k blobs (common.blob_rows) have each cell null with
that probability (missing completely at random; a row never loses every cell), written once to
Parquet under --data as D double columns (nulls for the missing cells) and fitted with
inputCols. Per-iteration cost: the median time of the EM passes (each a call of the
statistics function ``kernel.run_em`` is given, timed around it) of --repeats fits of ITERS
iterations after a warm-up fit, so reading, validation, initialisation and set-up are excluded
and the noise of whole-fit times is not in it. Prints one JSON line per fraction, last the
package path it measured (run it with PYTHONPATH set to another checkout to compare two
versions on complete data, where --handle-invalid error works on both).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common  # noqa: F401  (spark_gmm importable, workers' Python)
import numpy as np


def write_rows(spark, path: Path, n: int, d: int, k: int, fraction: float) -> None:
    """The benchmark's rows with ``fraction`` of their cells null, as Parquet at ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = common.blob_rows(n, d, k, separation=4.0, seed=1)
    rng = np.random.default_rng(2)
    absent = rng.random(X.shape) < fraction
    absent[absent.all(axis=1), 0] = False
    path.mkdir(parents=True, exist_ok=True)
    columns = {f"x{j}": pa.array(X[:, j], mask=absent[:, j]) for j in range(d)}
    pq.write_table(pa.table(columns), str(path / "part-0.parquet"))


def timing_passes(kernel, times: list):
    """Wraps ``kernel.run_em`` so that each call of its statistics function (one EM pass)
    appends its seconds to ``times``."""
    run_em = kernel.run_em

    def timed_run_em(compute_stats, *args, **kwargs):
        def timed(states):
            started = time.perf_counter()
            out = compute_stats(states)
            times.append(time.perf_counter() - started)
            return out

        return run_em(timed, *args, **kwargs)

    kernel.run_em = timed_run_em


def missing_patterns(path: Path) -> int:
    """The number of distinct patterns of missing cells among the rows at ``path`` that
    miss any."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    absent = np.column_stack([np.asarray(table.column(c).is_null()) for c in table.column_names])
    incomplete = absent[absent.any(axis=1)]
    return len(np.unique(np.packbits(incomplete, axis=1), axis=0)) if len(incomplete) else 0


def per_iteration(make, df, iters: int, repeats: int, times: list):
    """(median seconds of an EM pass, the last fit's model) as the docstring says."""
    make(iters).fit(df)  # warm-up
    del times[:]
    model = None
    for _ in range(repeats):
        model = make(iters).fit(df)
    return sorted(times)[len(times) // 2], model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--missing", default="0,0.2", help="fractions of missing cells")
    parser.add_argument("--handle-invalid", default="keep")
    parser.add_argument("--covariance-type", default="full")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default="/tmp/spark-gmm-bench-missing")
    args = parser.parse_args()

    import spark_gmm
    from spark_gmm import GaussianMixture, kernel

    times: list = []
    timing_passes(kernel, times)

    spark = common.session(conf={"spark.driver.memory": "8g"})
    cols = [f"x{j}" for j in range(args.features)]
    for fraction in (float(f) for f in args.missing.split(",")):
        path = Path(args.data) / f"n{args.rows}-d{args.features}-k{args.k}-missing{fraction}"
        if not path.exists():
            write_rows(spark, path, args.rows, args.features, args.k, fraction)
        df = spark.read.parquet(str(path)).repartition(4).cache()
        df.count()
        seconds, model = per_iteration(
            lambda n: GaussianMixture(
                k=args.k,
                maxIter=n,
                tol=0.0,
                seed=1,
                inputCols=cols,
                handleInvalid=args.handle_invalid,
                covarianceType=args.covariance_type,
            ),
            df,
            args.iters,
            args.repeats,
            times,
        )
        s = model.summary
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "features": args.features,
                    "k": args.k,
                    "covarianceType": args.covariance_type,
                    "missing_cells": fraction,
                    "missing_patterns": missing_patterns(path),
                    "rows_with_missing": s.numIncompleteRows
                    if hasattr(s, "numIncompleteRows")
                    else 0,
                    "handleInvalid": args.handle_invalid,
                    "engine": s.engine,
                    "s_per_iter": round(seconds, 4),
                    "log_likelihood": s.logLikelihood,
                }
            ),
            flush=True,
        )
        df.unpersist()
    print(json.dumps({"spark_gmm": str(Path(spark_gmm.__file__).parent)}))
    spark.stop()


if __name__ == "__main__":
    main()
