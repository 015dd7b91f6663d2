"""Seconds per EM iteration of a fit whose features have missing cells (handleInvalid='keep'),
against the same fit on complete data, in one local[2] session.

usage: python jobs/benchmarks/bench_missing.py [--rows N] [--features D] [--k K]
           [--missing 0,0.2] [--handle-invalid keep] [--iters 5] [--repeats 3] [--data DIR]

For each fraction of missing cells, rows of k blobs (common.blob_rows) have each cell null with
that probability (missing completely at random; a row never loses every cell), written once to
Parquet under --data as D double columns (nulls for the missing cells) and fitted with
inputCols. Per-iteration cost is the median over --repeats of (fit with 1+ITERS iterations -
fit with 1 iteration) / ITERS after a warm-up fit, so reading, validation, initialisation and
set-up are excluded. Prints one JSON line per fraction, last the package path it measured (run
it with PYTHONPATH set to another checkout to compare two versions on complete data, where
--handle-invalid error works on both).
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


def per_iteration(make, df, iters: int, repeats: int):
    """(median seconds per iteration, the last fit's model) as the docstring says."""
    make(1).fit(df)  # warm-up
    costs, model = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        make(1).fit(df)
        t1 = time.perf_counter()
        model = make(1 + iters).fit(df)
        t2 = time.perf_counter()
        costs.append(((t2 - t1) - (t1 - t0)) / iters)
    return sorted(costs)[len(costs) // 2], model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--missing", default="0,0.2", help="fractions of missing cells")
    parser.add_argument("--handle-invalid", default="keep")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default="/tmp/spark-gmm-bench-missing")
    args = parser.parse_args()

    import spark_gmm
    from spark_gmm import GaussianMixture

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
            ),
            df,
            args.iters,
            args.repeats,
        )
        s = model.summary
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "features": args.features,
                    "k": args.k,
                    "missing_cells": fraction,
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
