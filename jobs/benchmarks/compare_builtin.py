"""Side by side with Spark's built-in GaussianMixture on the cases where it is known to fail.

    .venv/bin/python jobs/benchmarks/compare_builtin.py [--rows-per-blob 200] [--output FILE.json]

Three well-separated blobs (``spark_gmm.datasets.blobs``, the tests' data) in 10-D scaled by
100, by 1e-4, shifted by 1e8, and in 40-D (plus the plain 10-D case as a control). For each
case and each implementation: the adjusted Rand index against the true blobs, whether the fit
raised, the smallest covariance eigenvalue and the number of distinct components.
scikit-learn's ARI is the reference. Run by hand; the README quotes its output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import common
import numpy as np

# the tests' blobs, so the README's table and the tests measure the same data
from spark_gmm.datasets import blobs

CASES = [
    ("plain 10-D", 1.0, 0.0, 10),
    ("scaled by 100", 100.0, 0.0, 10),
    ("scaled by 1e-4", 1e-4, 0.0, 10),
    ("shifted by 1e8", 1.0, 1e8, 10),
    ("40 features", 1.0, 0.0, 40),
]


def _fit(cls, df, seed):
    started = time.time()
    try:
        model = cls(k=3, seed=seed, maxIter=100).fit(df)
        rows = model.transform(df).orderBy("id").select("prediction").collect()
        covs = [np.asarray(g.cov.toArray()) for g in model.gaussians]
        means = np.asarray([g.mean.toArray() for g in model.gaussians])
        return {
            "predictions": [r[0] for r in rows],
            "min_eigenvalue": float(min(np.linalg.eigvalsh(c).min() for c in covs)),
            "distinct_components": int(len(np.unique(means.round(6), axis=0))),
            "seconds": round(time.time() - started, 2),
            "error": None,
        }
    except Exception as exc:  # the built-in raises on some of these inputs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {
            "error": f"{type(exc).__name__}: {first[:200]}",
            "seconds": round(time.time() - started, 2),
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-blob", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", help="write the results as JSON here too")
    args = parser.parse_args(argv)

    from pyspark.ml.clustering import GaussianMixture as BuiltinGMM
    from pyspark.ml.linalg import Vectors
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture as SkGMM

    from spark_gmm import GaussianMixture

    spark = common.session(
        conf={"spark.app.name": "compare_builtin", "spark.sql.shuffle.partitions": "4"}
    )
    results = []
    for name, scale, offset, d in CASES:
        X, labels = blobs(args.rows_per_blob, d, seed=args.seed)
        X = X * scale + offset
        df = (
            spark.createDataFrame(
                [(i, Vectors.dense(x)) for i, x in enumerate(X)], ["id", "features"]
            )
            .repartition(2)
            .cache()
        )
        row = {
            "case": name,
            "rows": len(X),
            "features": d,
            "sklearn_ari": round(
                float(adjusted_rand_score(labels, SkGMM(3, random_state=0).fit(X).predict(X))), 4
            ),
        }
        for label, cls in (("builtin", BuiltinGMM), ("spark_gmm", GaussianMixture)):
            out = _fit(cls, df, args.seed)
            if out.get("predictions") is not None:
                out["ari"] = round(float(adjusted_rand_score(labels, out.pop("predictions"))), 4)
            row[label] = out
        df.unpersist()
        results.append(row)
        print(json.dumps(row), flush=True)
    spark.stop()
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"spark": "local[2]", "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
