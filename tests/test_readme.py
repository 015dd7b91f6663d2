"""The README's Python examples run as written, in order, on a small table (the model path
moved to a temporary folder): usage, columns without a VectorAssembler, the selector, missing
values, the Bayesian mixture."""

import re
from pathlib import Path

import numpy as np
from pyspark.ml.linalg import Vectors

REPO_ROOT = Path(__file__).resolve().parents[1]


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)


def test_the_readme_examples_run(spark, tmp_path):
    blocks = _python_blocks()
    assert len(blocks) == 5, "the README's Python examples changed: update this test"
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 1.0, (100, 3)) for c in (0.0, 6.0, 12.0)])
    df = spark.createDataFrame(
        [(Vectors.dense(x), *map(float, x), 1.0) for x in X], ["features", "x", "y", "z", "w"]
    )
    path = str(tmp_path / "table.parquet")
    df.select("x", "y", "z", "w").write.parquet(path)
    scope = {"df": df, "spark": spark, "path": path}
    exec(blocks[0].replace("/models/gmm", str(tmp_path / "gmm")), scope)
    assert scope["model"].getK() == 3 and scope["model"].numFeatures == 3
    assert {"probability", "prediction", "logLikelihood"} <= set(scope["scored"].columns)
    exec(blocks[1], scope)
    exec(blocks[2], scope)
    assert len(scope["selection"].table) == 24
    assert scope["selection"].bestModel.getK() == 3
    exec(blocks[3], scope)
    assert scope["model"].summary.numIncompleteRows > 30
    assert scope["scored"].count() == 300
    exec(blocks[4], scope)
    assert len(scope["used"]) == 3
