"""What a Spark Connect client sees of spark_gmm beyond the drop-in script: the selector, the
errors bad input gets, the Bayesian mixture (fit, save, load, transform), missing features
kept, and (given a second URL whose host is not this machine's loopback
name) the fallback of engine='auto' where the server's executors may not reach the client.

    python tests/scripts/connect_script.py --remote sc://localhost:15002 \
        [--remote-alias sc://<other name>:15002] --out facts.json

Every fact goes to the JSON file; an exception a step raises is recorded as
{"error": type, "message": first line} and the script goes on (exit 0 when the file is
written), so the test decides. tests/test_connect.py imports ``blob_rows`` to fit the same
rows on a classic session.
"""

import argparse
import json
import os
import sys

import numpy as np

CENTERS = [(-8.0, -8.0), (0.0, 8.0), (8.0, -4.0)]


def blob_rows(seed=3, n_per=120):
    rng = np.random.default_rng(seed)
    rows = []
    for cx, cy in CENTERS:
        for x, y in rng.normal((cx, cy), 1.0, size=(n_per, 2)):
            rows.append((len(rows), float(x), float(y)))
    return rows


def attempt(fn):
    try:
        return {"ok": fn()}
    except Exception as exc:  # noqa: BLE001  (recorded for the test)
        text = str(exc).strip().splitlines()
        return {"error": type(exc).__name__, "message": text[0] if text else ""}


def selection_facts(spark, df):
    from pyspark.ml.feature import VectorAssembler

    from spark_gmm import GaussianMixture
    from spark_gmm.selection import GaussianMixtureSelector

    features = VectorAssembler(inputCols=["x", "y"], outputCol="features").transform(df)
    selector = GaussianMixtureSelector(
        estimator=GaussianMixture(seed=4, maxIter=50),
        kValues=[1, 2, 3, 4],
        covarianceTypes=["full", "diag"],
    )
    model = selector.fit(features)
    table = model.table.sort_values(["covarianceType", "k"])
    return {
        "best_k": model.bestModel.getK(),
        "best_covariance_type": model.bestModel.getCovarianceType(),
        "bic": table["bic"].tolist(),
        "rows": len(table),
        "engine": model.bestModel.summary.engine,
    }


def error_facts(spark, df):
    from pyspark.sql import functions as F

    from spark_gmm import GaussianMixture

    with_null = df.withColumn("y", F.when(F.col("id") == 7, F.lit(None)).otherwise(F.col("y")))
    with_nan = df.withColumn(
        "x", F.when(F.col("id") == 9, F.lit(float("nan"))).otherwise(F.col("x"))
    )
    text = df.withColumn("x", F.col("x").cast("string"))

    def fit(frame, **params):
        model = GaussianMixture(k=3, seed=1, maxIter=5, inputCols=["x", "y"], **params)
        return model.fit(frame).summary.numRows

    facts = {
        "null": attempt(lambda: fit(with_null)),
        "nan": attempt(lambda: fit(with_nan)),
        "null_skipped": attempt(lambda: fit(with_null, handleInvalid="skip")),
        "missing_column": attempt(
            lambda: GaussianMixture(k=2, inputCols=["x", "nope"]).fit(df).summary.numRows
        ),
        "text_column": attempt(lambda: fit(text)),
        "too_few_rows": attempt(lambda: fit(df.limit(2))),
    }
    spark.conf.set("spark.gmm.driver.maxBytes", "0")
    try:
        facts["driver_beyond_limit"] = attempt(lambda: fit(df, engine="driver"))
    finally:
        spark.conf.unset("spark.gmm.driver.maxBytes")
    return facts


def bayesian_facts(spark, df, workdir):
    from pyspark.ml.feature import VectorAssembler

    from spark_gmm import BayesianGaussianMixture, BayesianGaussianMixtureModel

    features = VectorAssembler(inputCols=["x", "y"], outputCol="features").transform(df)
    model = BayesianGaussianMixture(k=6, seed=2).fit(features)
    path = os.path.join(workdir, "bayesian-model")
    model.write().overwrite().save(path)
    loaded = BayesianGaussianMixtureModel.load(path)
    predictions = loaded.transform(features).orderBy("id").select("prediction").collect()
    return {
        "weights": model.weights,
        "means": model.means.tolist(),
        "lower_bound": model.summary.lowerBound,
        "engine": model.summary.engine,
        "loaded_weight_concentration": loaded.weightConcentration.tolist(),
        "predictions": [r.prediction for r in predictions],
    }


def missing_rows(df):
    """The rows with y null in every fifth and x NaN in every seventh (never both)."""
    from pyspark.sql import functions as F

    df = df.withColumn("y", F.when(F.col("id") % 5 == 0, F.lit(None)).otherwise(F.col("y")))
    nan_x = (F.col("id") % 7 == 1) & (F.col("id") % 5 != 0)
    return df.withColumn("x", F.when(nan_x, F.lit(float("nan"))).otherwise(F.col("x")))


def missing_facts(spark, df):
    from spark_gmm import GaussianMixture

    rows = missing_rows(df)
    model = GaussianMixture(k=3, seed=1, inputCols=["x", "y"], handleInvalid="keep").fit(rows)
    scored = model.transform(rows).orderBy("id").select("prediction").collect()
    return {
        "incomplete": model.summary.numIncompleteRows,
        "means": model.means.tolist(),
        "predictions": [r.prediction for r in scored],
    }


def remote_facts(url, rows):
    """engine='auto' and 'resident' through a URL whose host is not a loopback name."""
    import logging

    from pyspark.sql import SparkSession

    from spark_gmm import GaussianMixture

    spark = SparkSession.builder.remote(url).getOrCreate()
    try:
        df = spark.createDataFrame(rows, "id long, x double, y double").repartition(3)
        spark.conf.set("spark.gmm.driver.maxBytes", "0")  # past the driver engine
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("spark_gmm").addHandler(handler)
        gm = GaussianMixture(k=3, seed=1, maxIter=5, inputCols=["x", "y"])
        summary = gm.fit(df).summary
        return {
            "engine": summary.engine,
            "reason": summary.engineReason,
            "warnings": [r.getMessage() for r in records if r.levelno >= logging.WARNING],
            "resident": attempt(lambda: gm.copy().setEngine("resident").fit(df).summary.engine),
        }
    finally:
        spark.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--remote", required=True)
    parser.add_argument("--remote-alias", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import _session  # tests/scripts (the script's folder); puts the repo root on sys.path

    rows = blob_rows()
    spark, mode = _session.make_session(remote=args.remote, app_name="spark-gmm-connect")
    facts = {"mode": mode}
    try:
        df = spark.createDataFrame(rows, "id long, x double, y double").repartition(3)
        facts["selection"] = attempt(lambda: selection_facts(spark, df))
        facts["errors"] = error_facts(spark, df)
        workdir = os.path.dirname(os.path.abspath(args.out))
        facts["bayesian"] = attempt(lambda: bayesian_facts(spark, df, workdir))
        facts["missing"] = attempt(lambda: missing_facts(spark, df))
    finally:
        spark.stop()
    if args.remote_alias:
        facts["remote"] = attempt(lambda: remote_facts(args.remote_alias, rows))
    with open(args.out, "w") as fh:
        json.dump(facts, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
