"""Where the driver engine stops being the faster one: whole default fits on the driver and
resident engines, side by side in one local[2] session, over growing tables. A hand-run
benchmark, never a test; it chose ``spark.gmm.driver.maxBytes``'s default (README "How a fit
runs").

    .venv/bin/python jobs/benchmarks/bench_crossover.py [--rows 20000,100000,300000,1000000]
        [--features 10] [--k 8] [--max-iter 20] [--repeats 3] [--partitions 4]

Per row count: seeded blobs from ``spark_gmm.datasets.blobs`` (``--k`` blobs, centres
N(0, 5^2), unit standard deviation, seed 0), a cached DataFrame of ``--partitions``
partitions, then for each engine one untimed warm-up fit and the median of ``--repeats`` timed
fits (k-means++ init, tol=0, ``--max-iter`` iterations, so both engines run the same passes).
Prints one JSON object: seconds per fit, packed megabytes and the resident/driver ratio per
size (> 1: the driver engine is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import common


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,100000,300000,1000000")
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)
    import pandas as pd

    from spark_gmm import GaussianMixture

    spark = common.session(
        conf={
            "spark.driver.memory": "4g",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.gmm.driver.maxBytes": "2g",  # no limit here
        }
    )
    out = {"features": args.features, "k": args.k, "max_iter": args.max_iter, "sizes": []}
    for n in [int(v) for v in args.rows.split(",")]:
        X = common.blob_rows(n, args.features, args.k, separation=5.0, seed=0)
        pdf = pd.DataFrame({"features": list(X)})
        df = (
            spark.createDataFrame(pdf, "features array<double>")
            .repartition(args.partitions)
            .cache()
        )
        df.count()
        row = {"rows": n, "packed_mb": round(8 * n * (args.features + 1) / 2**20, 2)}
        for engine in ("driver", "resident"):
            gm = GaussianMixture(
                k=args.k,
                maxIter=args.max_iter,
                tol=0.0,
                seed=1,
                initMode="k-means++",
                engine=engine,
            )
            gm.fit(df)
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                gm.fit(df)
                times.append(time.perf_counter() - started)
            row[f"{engine}_fit_s"] = round(statistics.median(times), 3)
        row["resident_over_driver"] = round(row["resident_fit_s"] / row["driver_fit_s"], 2)
        out["sizes"].append(row)
        print(json.dumps(row), file=sys.stderr)
        df.unpersist()
    spark.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
