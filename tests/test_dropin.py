"""Drop-in compatibility: a typical user script written for
``pyspark.ml.clustering.GaussianMixture`` must behave the same, structurally,
when ``GaussianMixture``/``GaussianMixtureModel`` come from ``spark_gmm``.

The script (tests/scripts/dropin_script.py) runs twice:

* local[2]      -- built-in and spark_gmm on the test session, in this process;
* Spark Connect -- built-in and spark_gmm in a subprocess, through ``--remote`` against the
                   session's Connect server.

(The package on separate executor JVMs: tests/test_standalone_cluster.py, the fit job on a
standalone cluster with the wheel shipped; tests/test_host_loss.py on local-cluster.)

Each run writes JSON; ``structural`` facts must be equal between modules,
``info`` facts are free to differ (numbers, nullability, column order, ...).
"""

import json
import math
import sys
from pathlib import Path

import pyspark
import pytest

BUILTIN = "pyspark.ml.clustering"
OURS = "spark_gmm"
REPO_ROOT = Path(__file__).resolve().parent.parent
PYSPARK_MAJOR = int(pyspark.__version__.split(".")[0])

MODES = [  # compat: local and Connect also run on PySpark 3.5 (.ci/run)
    pytest.param("local", marks=[pytest.mark.slow, pytest.mark.compat], id="local"),
    pytest.param(
        "connect", marks=[pytest.mark.connect, pytest.mark.slow, pytest.mark.compat], id="connect"
    ),
]

VECTOR = ["vector", "VectorUDT"]
VECTOR_ARROW = (
    "struct<type: int8 not null, size: int32, indices: list<element: int32 not null>, "
    "values: list<element: double not null>>"
)


# --------------------------------------------------------------------------
# runs (once per session each)
# --------------------------------------------------------------------------
def _dropin(run_json_script, tmp_path_factory, name, modules, *session_args):
    d = tmp_path_factory.mktemp(f"dropin-{name}")
    args = []
    for m in modules:
        args += ["--module", m]
    return run_json_script(
        "dropin_script.py", *args, *session_args, "--workdir", d / "work", out=d / "facts.json"
    )


@pytest.fixture(scope="session")
def dropin_local(spark, tmp_path_factory):
    """The script's facts on the test session (local[2], this process): the same user script,
    without a Spark application of its own."""
    from tests.scripts.dropin_script import collect_facts

    work = tmp_path_factory.mktemp("dropin-local")
    facts = {"mode": "classic", "master": spark.sparkContext.master, "remote": None}
    facts.update(collect_facts(spark, [BUILTIN, OURS], str(work)))
    return json.loads(json.dumps(facts, sort_keys=True, default=repr))  # as the script writes


@pytest.fixture(scope="session")
def dropin_connect(run_json_script, tmp_path_factory, connect_url):
    return _dropin(
        run_json_script, tmp_path_factory, "connect", [BUILTIN, OURS], "--remote", connect_url
    )


def _builtin_reference(request, mode):
    """Built-in facts to compare with, of the same mode."""
    return request.getfixturevalue(f"dropin_{mode}")["runs"][BUILTIN]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _failed_steps(run):
    return {
        name: f"{s['error']}\n{s.get('traceback', '')}"
        for name, s in run["steps"].items()
        if not s["ok"]
    }


def _require_run(facts_, module):
    run = facts_["runs"][module]
    if run["import_error"]:
        pytest.fail(f"cannot use {module}:\n{run['import_error']}", pytrace=False)
    return run


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _diff(expected, actual):
    e, a = _flatten(expected), _flatten(actual)
    missing = object()
    lines = []
    for key in sorted(set(e) | set(a)):
        ev, av = e.get(key, missing), a.get(key, missing)
        if ev != av:
            ev = "<missing>" if ev is missing else json.dumps(ev)
            av = "<missing>" if av is missing else json.dumps(av)
            lines.append(f"  {key}: built-in={ev}  spark_gmm={av}")
    return lines


_STRUCTURAL_KEYS = (
    "defaults",
    "setters_return_self",
    "getters",
    "copy",
    "estimator_save_load",
    "transform",
    "weights",
    "gaussians",
    "gaussiansDF",
    "predict",
    "numFeatures",
    "model_getK",
    "hasSummary",
    "summary",
    "save_load",
    "overwrite",
    "save_to_existing_path_raises",
    "pipeline",
)


# what Spark 3.5's built-in model lacks (spark_gmm has it on every PySpark)
_SPARK4_ONLY = ("numFeatures", "save_load.numFeatures")


def _builtin_lacks(run):
    return _SPARK4_ONLY if run["module"] == BUILTIN and PYSPARK_MAJOR < 4 else ()


def check_expected_facts(run):
    """What Spark's built-in does on 3 well-separated blobs (and so must we)."""
    s = run["structural"]
    lacks = _builtin_lacks(run)
    missing = sorted(k for k in _STRUCTURAL_KEYS if s.get(k) is None and k not in lacks)
    if missing:
        failed = _failed_steps(run)
        pytest.fail(
            f"{run['module']}: no facts for {missing}; failed steps:\n"
            + "\n".join(f"--- {k}: {v}" for k, v in failed.items()),
            pytrace=False,
        )
    t = s["transform"]
    schema = {name: [simple, cls] for name, simple, cls in t["schema"]}
    assert schema["prediction"] == ["int", "IntegerType"]
    assert schema["probability"] == VECTOR
    assert schema["features"] == VECTOR
    assert {"id", "label", "x", "y"} <= set(schema)
    assert t["count"] == 300
    assert t["prediction_py_type"] == "int"
    assert t["probability_py_type"] == "DenseVector"
    assert t["probability_len"] == 3
    assert t["probability_sums_to_1"] and t["argmax_is_prediction"]
    assert t["prediction_range"] == [0, 2]
    assert t["partition_matches_labels"]

    assert s["weights"]["type"] == "list" and s["weights"]["len"] == 3
    assert s["weights"]["elem_type"] == "float" and s["weights"]["sum_is_1"]
    g = s["gaussians"]
    assert (g["type"], g["len"], g["elem_type"]) == ("list", 3, "MultivariateGaussian")
    assert (g["mean_type"], g["mean_size"]) == ("DenseVector", 2)
    assert (g["cov_type"], g["cov_shape"]) == ("DenseMatrix", [2, 2])
    assert g["means_near_centers"] == [[-10.0, -10.0], [0.0, 10.0], [10.0, -5.0]]
    gdf = s["gaussiansDF"]
    assert gdf["columns"] == ["mean", "cov"]
    assert gdf["schema"] == [["cov", "matrix", "MatrixUDT"], ["mean", "vector", "VectorUDT"]]
    assert gdf["count"] == 3
    assert (gdf["mean_py_type"], gdf["cov_py_type"]) == ("DenseVector", "DenseMatrix")

    p = s["predict"]
    assert p["predict_type"] == "int" and p["predictProbability_type"] == "DenseVector"
    assert p["predictProbability_len"] == 3 and p["predictProbability_sums_to_1"]
    assert p["argmax_is_predict"] and p["centres_distinct_clusters"]
    assert p["consistent_with_transform"]

    assert s["model_getK"] == 3
    if not lacks:
        assert s["numFeatures"] == 2 and s["save_load"]["numFeatures"] == 2
    assert s["hasSummary"] is True
    sm = s["summary"]
    assert sm["k"] == 3
    assert sm["clusterSizes_sorted"] == [100, 100, 100]
    assert sm["clusterSizes_type"] == "list" and sm["clusterSizes_elem_type"] == "int"
    assert sm["logLikelihood_type"] == "float" and sm["logLikelihood_finite"]
    assert sm["numIter_type"] == "int" and sm["numIter_in_range"]
    assert sm["cluster_schema"] == [["prediction", "int", "IntegerType"]]
    assert sm["probability_schema"] == [["probability", *VECTOR]]
    assert (sm["featuresCol"], sm["predictionCol"], sm["probabilityCol"]) == (
        "features",
        "prediction",
        "probability",
    )

    sl = s["save_load"]
    assert sl["class"] == "GaussianMixtureModel" and sl["uid_same"]
    assert sl["predictions_equal"] and sl["weights_close"]
    assert s["overwrite"]["predictions_equal"]
    assert s["save_to_existing_path_raises"] is True
    assert s["estimator_save_load"]["k"] == 3 and s["estimator_save_load"]["uid_same"]

    pl = s["pipeline"]
    assert pl["stage_classes"] == ["VectorAssembler", "GaussianMixtureModel"]
    assert pl["loaded_stage_classes"] == ["VectorAssembler", "GaussianMixtureModel"]
    assert pl["loaded_pipeline_stage_classes"] == ["VectorAssembler", "GaussianMixture"]
    assert pl["partition_matches_labels"] and pl["loaded_predictions_equal"]

    c = s["copy"]
    assert (
        c["is_new_object"]
        and c["same_uid"]
        and c["extra_k"] == 5
        and c["original_k_unchanged"] == 3
    )
    assert s["setters_return_self"] is True


# --------------------------------------------------------------------------
# the harness itself (passes with the built-in alone)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_harness_python_workers(request, mode):
    """Python workers (executors / Connect server) run this interpreter,
    import the package from this checkout, use 1 BLAS thread, and the
    DataFrame features the package relies on work in this mode."""
    h = request.getfixturevalue(f"dropin_{mode}")["harness"]
    assert h["mapInArrow_ok"], h.get("mapInArrow_error")
    assert h["worker_executable"] == sys.executable
    assert h["worker_spark_gmm_location"].startswith(str(REPO_ROOT)), h["worker_spark_gmm_location"]
    assert h["worker_omp_num_threads"] == "1"
    # VectorUDT reaches mapInArrow as its sqlType struct (type 1 = dense)
    assert h["mapInArrow_vector_arrow_type"] == VECTOR_ARROW
    if PYSPARK_MAJOR >= 4:  # the driver engine reads rows with toArrow on PySpark 4
        assert h["toArrow_num_rows"] == 2
    assert h["persist_unpersist"] == [True, False]
    assert h["vector_to_array_roundtrip"] == [[1.0, 2.0], [0.0, 3.0]]


@pytest.mark.parametrize("mode", MODES)
def test_builtin_baseline(request, mode):
    """Spark's own GaussianMixture passes the script: validates the script."""
    run = _require_run(request.getfixturevalue(f"dropin_{mode}"), BUILTIN)
    failed = _failed_steps(run)
    assert not failed, "built-in failed steps:\n" + "\n".join(
        f"{k}: {v}" for k, v in failed.items()
    )
    check_expected_facts(run)


# --------------------------------------------------------------------------
# spark_gmm as a drop-in
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_spark_gmm_steps_succeed(request, mode):
    run = _require_run(request.getfixturevalue(f"dropin_{mode}"), OURS)
    failed = _failed_steps(run)
    assert not failed, f"spark_gmm failed steps ({mode}):\n" + "\n".join(
        f"--- {k}: {v}" for k, v in failed.items()
    )


@pytest.mark.parametrize("mode", MODES)
def test_spark_gmm_expected_facts(request, mode):
    run = _require_run(request.getfixturevalue(f"dropin_{mode}"), OURS)
    check_expected_facts(run)


@pytest.mark.parametrize("mode", MODES)
def test_spark_gmm_matches_builtin(request, mode):
    """Every structural fact (schemas, Python types, shapes, sorted cluster
    sizes, getters, persistence behaviour, ...) equals the built-in's."""
    ours = _require_run(request.getfixturevalue(f"dropin_{mode}"), OURS)
    ref = _builtin_reference(request, mode)
    lines = [
        line
        for line in _diff(ref["structural"], ours["structural"])
        if line.split(":")[0].strip() not in _builtin_lacks(ref)
    ]
    assert not lines, f"spark_gmm differs from {BUILTIN} ({mode}):\n" + "\n".join(lines)


@pytest.mark.parametrize("mode", MODES)
def test_spark_gmm_params_superset(request, mode):
    f = request.getfixturevalue(f"dropin_{mode}")
    ours = _require_run(f, OURS)
    ref = f["runs"][BUILTIN]
    missing = set(ref["info"]["param_names"]) - set(ours["info"]["param_names"] or [])
    assert not missing, f"params of the built-in missing from spark_gmm: {sorted(missing)}"
    text = ours["info"].get("explainParams") or ""
    for name in ref["info"]["param_names"]:
        assert f"{name}:" in text, f"explainParams() does not document {name}"


@pytest.mark.slow
@pytest.mark.compat
def test_spark_gmm_loglikelihood_close_to_builtin(dropin_local):
    """Both converge to the same maximum on well-separated blobs."""
    ours = _require_run(dropin_local, OURS)
    ref = dropin_local["runs"][BUILTIN]
    ll_ours, ll_ref = ours["info"].get("logLikelihood"), ref["info"]["logLikelihood"]
    assert ll_ours is not None
    assert math.isclose(ll_ours, ll_ref, rel_tol=1e-4), (ll_ours, ll_ref)


@pytest.mark.slow
@pytest.mark.compat
def test_output_column_order_matches_builtin(dropin_local):
    """Spark appends ``probability`` then ``prediction``; a script that
    relies on ``df.columns`` positions sees the same order with spark_gmm."""
    ours = _require_run(dropin_local, OURS)
    ref = dropin_local["runs"][BUILTIN]
    for key in ("transform_columns", "summary_predictions_columns", "pipeline_transform_columns"):
        assert ours["info"].get(key) == ref["info"][key], key


@pytest.mark.parametrize("mode", MODES)
def test_ours_fits_small_tables_on_the_driver_everywhere(request, mode):
    """On local[2] and through a local Connect server, the default fit of the drop-in
    script's small table runs on the driver engine."""
    ours = _require_run(request.getfixturevalue(f"dropin_{mode}"), OURS)
    assert ours["info"]["engine"] == "driver"
