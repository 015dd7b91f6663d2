"""The test plumbing itself: the in-process ``spark`` fixture and the
subprocess helper.  Also pins the Arrow form of VectorUDT columns that the
package's mapInArrow code relies on."""

import sys
from pathlib import Path

import pyarrow as pa

REPO_ROOT = Path(__file__).resolve().parent.parent

# VectorUDT.sqlType() as Arrow: type 0 = sparse (size, indices, values),
# type 1 = dense (values only; size and indices null).
VECTOR_ARROW_TYPE = pa.struct(
    [
        pa.field("type", pa.int8(), nullable=False),
        pa.field("size", pa.int32()),
        pa.field("indices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
        pa.field("values", pa.list_(pa.field("element", pa.float64(), nullable=False))),
    ]
)


def test_spark_fixture_is_classic_local(spark):
    conf = spark.sparkContext.getConf()
    assert spark.sparkContext.master == "local[2]"
    assert conf.get("spark.ui.enabled") == "false"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
    assert conf.get("spark.default.parallelism") == "4"
    assert conf.get("spark.executorEnv.OMP_NUM_THREADS") == "1"
    assert type(spark).__module__ == "pyspark.sql.session"


def test_python_workers_use_this_interpreter(spark):
    def probe(it):
        import importlib.util
        import os
        import sys as _sys

        for _ in it:
            spec = importlib.util.find_spec("spark_gmm")
            yield pa.RecordBatch.from_pydict(
                {
                    "exe": [_sys.executable],
                    "pkg": [str(spec.origin) if spec else ""],
                    "omp": [os.environ.get("OMP_NUM_THREADS", "")],
                }
            )

    rows = (
        spark.range(2, numPartitions=2)
        .mapInArrow(probe, "exe string, pkg string, omp string")
        .collect()
    )
    assert {r.exe for r in rows} == {sys.executable}
    assert all(r.pkg.startswith(str(REPO_ROOT)) for r in rows), rows
    assert {r.omp for r in rows} == {"1"}


def test_mapinarrow_vectorudt_roundtrip(spark):
    from pyspark.ml.linalg import DenseVector, SparseVector, Vectors, VectorUDT
    from pyspark.sql.types import StructField, StructType

    df = spark.createDataFrame(
        [(Vectors.dense([1.0, 2.0]),), (Vectors.sparse(2, [1], [5.0]),)], ["v"]
    ).coalesce(1)

    def identity_and_double(it):
        for b in it:
            col = b.column(0)
            # report what arrived, send it back plus a new dense vector column
            assert col.type == VECTOR_ARROW_TYPE, col.type
            doubled = pa.array(
                [
                    {
                        "type": 1,
                        "size": None,
                        "indices": None,
                        "values": [2.0 * x for x in _dense(v)],
                    }
                    for v in col.to_pylist()
                ],
                type=VECTOR_ARROW_TYPE,
            )
            yield pa.RecordBatch.from_arrays([col, doubled], names=["v", "w"])

    schema = StructType([StructField("v", VectorUDT()), StructField("w", VectorUDT())])
    rows = df.mapInArrow(identity_and_double, schema).collect()
    assert isinstance(rows[0].v, DenseVector) and isinstance(rows[1].v, SparseVector)
    assert [list(r.w) for r in rows] == [[2.0, 4.0], [0.0, 10.0]]


def _dense(v):
    if v["type"] == 1:
        return v["values"]
    out = [0.0] * v["size"]
    for i, x in zip(v["indices"], v["values"]):
        out[i] = x
    return out


def test_run_json_script_env(run_json_script, tmp_path):
    script = tmp_path / "env_probe.py"
    script.write_text(
        "import json, os, sys, argparse\n"
        "p = argparse.ArgumentParser(); p.add_argument('--out'); a = p.parse_args()\n"
        "json.dump({k: os.environ.get(k) for k in ('PYSPARK_PYTHON', 'PYTHONPATH',"
        " 'SPARK_REMOTE', 'OMP_NUM_THREADS')} | {'exe': sys.executable}, open(a.out, 'w'))\n"
    )
    got = run_json_script(script, out=tmp_path / "env.json")
    assert got["exe"] == sys.executable
    assert got["PYSPARK_PYTHON"] == sys.executable
    assert got["PYTHONPATH"].split(":")[0] == str(REPO_ROOT)
    assert got["SPARK_REMOTE"] is None
    assert got["OMP_NUM_THREADS"] == "1"
