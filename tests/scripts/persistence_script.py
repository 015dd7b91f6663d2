"""Cross-version persistence, the other side (tests/test_cross_version.py runs it with the
interpreter of the other PySpark line): load the models the test saved, save our own.

    python tests/scripts/persistence_script.py --load DIR --save DIR --out facts.json

The helpers are imported by the test too, so both sides fit, save and predict the same way.
"""

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ["x", "y"]


def frame(spark):
    """180 rows of 3 blobs in 2-D (the same on every PySpark)."""
    import numpy as np

    rng = np.random.default_rng(21)
    centers = np.array([[0.0, 0.0], [7.0, 2.0], [2.0, 8.0]])
    X = np.vstack([rng.normal(c, 0.8, size=(60, 2)) for c in centers])
    rows = [(i, float(a), float(b)) for i, (a, b) in enumerate(X)]
    return spark.createDataFrame(rows, "id long, x double, y double")


def fit_and_save(spark, folder: Path) -> dict:
    """A model on columns and a PipelineModel (VectorAssembler + ours), saved under folder."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler

    from spark_gmm import GaussianMixture

    df = frame(spark)
    model = GaussianMixture(k=3, seed=4, inputCols=COLUMNS, tol=1e-6).fit(df)
    model.save(str(folder / "model"))
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=COLUMNS, outputCol="features"),
            GaussianMixture(k=3, seed=4, covarianceType="diag"),
        ]
    ).fit(df)
    pipeline.save(str(folder / "pipeline"))
    return predict(spark, model, pipeline)


def load_and_predict(spark, folder: Path) -> dict:
    from pyspark.ml import PipelineModel

    from spark_gmm import GaussianMixtureModel

    return predict(
        spark,
        GaussianMixtureModel.load(str(folder / "model")),
        PipelineModel.load(str(folder / "pipeline")),
    )


def predict(spark, model, pipeline) -> dict:
    import pyspark

    df = frame(spark)

    def column(scored, name):
        return [r[0] for r in scored.orderBy("id").select(name).collect()]

    return {
        "pyspark": pyspark.__version__,
        "means": model.means.tolist(),
        "weights": list(model.weights),
        "predictions": column(model.transform(df), "prediction"),
        "probability": [list(v) for v in column(model.transform(df), "probability")],
        "pipeline_means": pipeline.stages[-1].means.tolist(),
        "pipeline_predictions": column(pipeline.transform(df), "prediction"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", type=Path, help="folder with model/ and pipeline/ to load")
    p.add_argument("--save", type=Path, help="folder to save model/ and pipeline/ into")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _session

    spark, _ = _session.make_session(master="local[2]", app_name="spark-gmm-cross-version")
    facts = {}
    try:
        if args.load:
            facts["loaded"] = load_and_predict(spark, args.load)
        if args.save:
            facts["saved"] = fit_and_save(spark, args.save)
    finally:
        spark.stop()
    args.out.write_text(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
