"""Drop-in compatibility script: a typical user script for Spark's built-in
``GaussianMixture``, run unchanged against a module given on the command line.

    python tests/scripts/dropin_script.py --module pyspark.ml.clustering \
        --module spark_gmm --master local[2] --out facts.json
    python tests/scripts/dropin_script.py --module spark_gmm \
        --remote sc://localhost:15002 --out facts.json

``--module`` may be repeated: every module runs in the same SparkSession (one
JVM / cluster / Connect client start for all of them).  Everything observable
is written to the JSON file:

    {"mode": "classic"|"connect", "master": ..., "spark_version": ...,
     "harness": {...},                       # worker env / capability probes
     "runs": {module: {"structural": {...},  # must agree across modules
                       "info": {...},        # values that may differ
                       "steps": {name: {"ok": bool, "error": str|None}},
                       "import_error": str|None}}}

A failing step is recorded (with its traceback) and the script goes on; the
exit code is 0 whenever the JSON was written, so the test decides.
"""

import argparse
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

N_PER_BLOB = 100
CENTERS = [(-10.0, -10.0), (0.0, 10.0), (10.0, -5.0)]
K = 3


def make_rows(seed: int = 42):
    rng = np.random.default_rng(seed)
    rows = []
    i = 0
    for label, (cx, cy) in enumerate(CENTERS):
        pts = rng.normal(loc=(cx, cy), scale=(1.0, 0.7), size=(N_PER_BLOB, 2))
        for x, y in pts:
            rows.append((i, label, float(x), float(y)))
            i += 1
    return rows


def type_name(obj) -> str:
    return type(obj).__name__


def schema_facts(df):
    """[(name, simpleString, dataType class name)] of a DataFrame, sorted by
    name: column *order* is recorded separately (``info``), see
    test_dropin.test_output_column_order_matches_builtin."""
    return sorted(
        [f.name, f.dataType.simpleString(), type(f.dataType).__name__] for f in df.schema.fields
    )


def nullability(df):
    return {f.name: f.nullable for f in df.schema.fields}


class Recorder:
    def __init__(self):
        self.steps = {}
        self.structural = {}
        self.info = {}

    def step(self, name, fn, *args, **kwargs):
        t0 = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - record everything
            self.steps[name] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-4000:],
                "seconds": round(time.monotonic() - t0, 2),
            }
            return None
        self.steps[name] = {"ok": True, "error": None, "seconds": round(time.monotonic() - t0, 2)}
        return result

    def ok(self, name):
        return self.steps.get(name, {}).get("ok", False)


def partition_matches(labels, preds) -> bool:
    """True iff the predicted clusters are exactly the true blobs (up to relabeling)."""
    mapping = {}
    for lab, p in zip(labels, preds):
        if mapping.setdefault(lab, p) != p:
            return False
    return len(set(mapping.values())) == len(mapping)


def run_module(spark, module_name: str, workdir: str) -> dict:
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.linalg import Vectors

    rec = Recorder()
    S, I = rec.structural, rec.info  # noqa: E741  (S: structural facts, I: informational)
    out = {"module": module_name, "import_error": None}
    try:
        mod = importlib.import_module(module_name)
        GaussianMixture = mod.GaussianMixture
        GaussianMixtureModel = mod.GaussianMixtureModel
    except Exception as exc:  # noqa: BLE001
        out["import_error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
        out.update(structural={}, info={}, steps={})
        return out

    rows = make_rows()
    raw = spark.createDataFrame(rows, ["id", "label", "x", "y"])
    df = spark.createDataFrame(
        [(i, lab, x, y, Vectors.dense([x, y])) for i, lab, x, y in rows],
        ["id", "label", "x", "y", "features"],
    )
    labels = [r[1] for r in rows]

    # ---------------------------------------------------------------- estimator
    def defaults():
        g = GaussianMixture()
        d = {
            "k": g.getK(),
            "maxIter": g.getMaxIter(),
            "featuresCol": g.getFeaturesCol(),
            "predictionCol": g.getPredictionCol(),
            "probabilityCol": g.getProbabilityCol(),
            "aggregationDepth": g.getAggregationDepth(),
            "weightCol_isSet": g.isSet(g.weightCol),
            "weightCol_isDefined": g.isDefined(g.weightCol),
            "seed_type": type_name(g.getSeed()),
        }
        return d

    S["defaults"] = rec.step("defaults", defaults)

    def tol_default():
        # deliberately not structural: spark_gmm may define tol differently
        return GaussianMixture().getTol()

    I["default_tol"] = rec.step("default_tol", tol_default)

    gm = rec.step("construct", lambda: GaussianMixture(k=K, seed=1, maxIter=50, tol=0.01))

    def setters():
        r1 = gm.setFeaturesCol("features")
        r2 = r1.setPredictionCol("prediction")
        r3 = r2.setProbabilityCol("probability")
        return all(r is gm for r in (r1, r2, r3))

    S["setters_return_self"] = rec.step("setters", setters)

    def getters():
        return {
            "k": gm.getK(),
            "seed": gm.getSeed(),
            "maxIter": gm.getMaxIter(),
            "tol": gm.getTol(),
            "featuresCol": gm.getFeaturesCol(),
            "predictionCol": gm.getPredictionCol(),
            "probabilityCol": gm.getProbabilityCol(),
            "aggregationDepth": gm.getAggregationDepth(),
            "k_param_name": gm.k.name,
            "getOrDefault_k": gm.getOrDefault("k"),
            "hasParam_k": gm.hasParam("k"),
            "isSet_k": gm.isSet(gm.k),
            "extractParamMap_has_k": any(p.name == "k" for p in gm.extractParamMap()),
        }

    S["getters"] = rec.step("getters", getters)

    I["param_names"] = rec.step("params", lambda: sorted(p.name for p in gm.params))

    def explain():
        text = gm.explainParams()
        return {"type": type_name(text), "text": text}

    e = rec.step("explainParams", explain)
    if e:
        S["explainParams_type"] = e["type"]
        I["explainParams"] = e["text"]

    def copy():
        c = gm.copy()
        c2 = gm.copy({gm.k: 5})
        return {
            "class": type_name(c),
            "is_new_object": c is not gm,
            "same_uid": c.uid == gm.uid,
            "same_k": c.getK() == gm.getK(),
            "extra_k": c2.getK(),
            "original_k_unchanged": gm.getK(),
        }

    S["copy"] = rec.step("copy", copy)
    S["estimator_class"] = type_name(gm)

    def est_save_load():
        p = os.path.join(workdir, "estimator")
        gm.save(p)
        g2 = GaussianMixture.load(p)
        return {
            "class": type_name(g2),
            "uid_same": g2.uid == gm.uid,
            "k": g2.getK(),
            "maxIter": g2.getMaxIter(),
            "seed": g2.getSeed(),
        }

    S["estimator_save_load"] = rec.step("estimator_save_load", est_save_load)

    # ---------------------------------------------------------------- fit
    model = rec.step("fit", gm.fit, df)
    if model is None:
        out.update(structural=S, info=I, steps=rec.steps)
        return out
    S["model_class"] = type_name(model)
    S["model_uid_equals_estimator_uid"] = model.uid == gm.uid

    def transform():
        t = model.transform(df)
        pdf = t.orderBy("id").select("id", "prediction", "probability").collect()
        preds = [r.prediction for r in pdf]
        probs = [r.probability for r in pdf]
        return {
            "schema": schema_facts(t),
            "_columns": t.columns,
            "count": t.count(),
            "prediction_py_type": type_name(preds[0]),
            "probability_py_type": type_name(probs[0]),
            "probability_len": len(probs[0]),
            "probability_sums_to_1": all(abs(float(sum(p)) - 1.0) < 1e-6 for p in probs),
            "argmax_is_prediction": all(
                int(np.argmax(p.toArray())) == c for p, c in zip(probs, preds)
            ),
            "prediction_range": [min(preds), max(preds)],
            "partition_matches_labels": partition_matches(labels, preds),
            "_preds": preds,
            "_nullability": nullability(t),
        }

    tr = rec.step("transform", transform)
    preds = None
    if tr:
        preds = tr.pop("_preds")
        I["transform_nullability"] = tr.pop("_nullability")
        I["transform_columns"] = tr.pop("_columns")
        S["transform"] = tr

    def weights():
        w = model.weights
        return {
            "type": type_name(w),
            "len": len(w),
            "elem_type": type_name(w[0]),
            "sum_is_1": abs(sum(w) - 1.0) < 1e-6,
            "sorted_rounded": sorted(round(float(x), 2) for x in w),
        }

    S["weights"] = rec.step("weights", weights)

    def gaussians():
        gs = model.gaussians
        g0 = gs[0]
        return {
            "type": type_name(gs),
            "len": len(gs),
            "elem_type": type_name(g0),
            "mean_type": type_name(g0.mean),
            "mean_size": int(g0.mean.size),
            "cov_type": type_name(g0.cov),
            "cov_shape": [int(g0.cov.numRows), int(g0.cov.numCols)],
            "cov_symmetric": bool(np.allclose(g0.cov.toArray(), g0.cov.toArray().T)),
            "means_near_centers": sorted(
                [round(float(v), 0) for v in g.mean.toArray()] for g in gs
            ),
        }

    S["gaussians"] = rec.step("gaussians", gaussians)

    def gaussians_df():
        gdf = model.gaussiansDF
        rows_ = gdf.collect()
        return {
            "py_type": type_name(gdf),
            "columns": gdf.columns,
            "schema": schema_facts(gdf),
            "count": len(rows_),
            "mean_py_type": type_name(rows_[0]["mean"]),
            "cov_py_type": type_name(rows_[0]["cov"]),
        }

    S["gaussiansDF"] = rec.step("gaussiansDF", gaussians_df)

    def predict():
        res = []
        for cx, cy in CENTERS:
            v = Vectors.dense([cx, cy])
            p = model.predict(v)
            pp = model.predictProbability(v)
            res.append((p, pp))
        centre_clusters = [p for p, _ in res]
        d = {
            "predict_type": type_name(res[0][0]),
            "predictProbability_type": type_name(res[0][1]),
            "predictProbability_len": len(res[0][1]),
            "predictProbability_sums_to_1": all(abs(float(sum(pp)) - 1) < 1e-6 for _, pp in res),
            "argmax_is_predict": all(int(np.argmax(pp.toArray())) == p for p, pp in res),
            "centres_distinct_clusters": len(set(centre_clusters)) == K,
        }
        if preds is not None:
            # the cluster of each blob's centre is that blob's cluster
            d["consistent_with_transform"] = all(
                preds[b * N_PER_BLOB] == centre_clusters[b] for b in range(K)
            )
        return d

    S["predict"] = rec.step("predict", predict)

    # None where the class has no numFeatures (Spark 3.5's built-in model)
    S["numFeatures"] = rec.step("numFeatures", lambda: getattr(model, "numFeatures", None))
    S["model_getK"] = rec.step("model_getK", model.getK)
    S["model_getters"] = rec.step(
        "model_getters",
        lambda: [model.getFeaturesCol(), model.getPredictionCol(), model.getProbabilityCol()],
    )
    S["hasSummary"] = rec.step("hasSummary", lambda: model.hasSummary)

    def summary():
        s = model.summary
        sizes = s.clusterSizes
        ll = s.logLikelihood
        ni = s.numIter
        pr = s.predictions
        cl = s.cluster
        pb = s.probability
        I["logLikelihood"] = ll
        I["numIter"] = ni
        I["summary_predictions_columns"] = pr.columns
        I["engine"] = getattr(s, "engine", None)  # spark_gmm's pass engine
        return {
            "class": type_name(s),
            "k": s.k,
            "clusterSizes_type": type_name(sizes),
            "clusterSizes_elem_type": type_name(sizes[0]),
            "clusterSizes_sorted": sorted(int(x) for x in sizes),
            "logLikelihood_type": type_name(ll),
            "logLikelihood_finite": math.isfinite(ll),
            "numIter_type": type_name(ni),
            "numIter_in_range": 1 <= ni <= 50,
            "predictions_schema": schema_facts(pr),
            "predictions_count": pr.count(),
            "cluster_schema": schema_facts(cl),
            "probability_schema": schema_facts(pb),
            "featuresCol": s.featuresCol,
            "predictionCol": s.predictionCol,
            "probabilityCol": s.probabilityCol,
        }

    S["summary"] = rec.step("summary", summary)

    # ---------------------------------------------------------------- persistence
    mpath = os.path.join(workdir, "model")

    def save_load():
        model.save(mpath)
        loaded = GaussianMixtureModel.load(mpath)
        lp = [
            r.prediction for r in loaded.transform(df).orderBy("id").select("prediction").collect()
        ]
        return {
            "class": type_name(loaded),
            "uid_same": loaded.uid == model.uid,
            "k": loaded.getK(),
            "numFeatures": getattr(loaded, "numFeatures", None),
            "weights_close": bool(np.allclose(sorted(loaded.weights), sorted(model.weights))),
            "predictions_equal": lp == preds,
            "hasSummary": loaded.hasSummary,
            "params_kept": [
                loaded.getFeaturesCol(),
                loaded.getPredictionCol(),
                loaded.getProbabilityCol(),
            ],
        }

    S["save_load"] = rec.step("save_load", save_load)

    def save_existing_fails():
        try:
            model.save(mpath)
        except Exception:  # noqa: BLE001
            return True
        return False

    S["save_to_existing_path_raises"] = rec.step("save_existing_raises", save_existing_fails)

    def overwrite():
        model.write().overwrite().save(mpath)
        loaded = GaussianMixtureModel.load(mpath)
        lp = [
            r.prediction for r in loaded.transform(df).orderBy("id").select("prediction").collect()
        ]
        return {"class": type_name(loaded), "predictions_equal": lp == preds}

    S["overwrite"] = rec.step("overwrite", overwrite)

    # ---------------------------------------------------------------- pipeline
    def pipeline():
        va = VectorAssembler(inputCols=["x", "y"], outputCol="features")
        g = GaussianMixture(k=K, seed=1, maxIter=50, tol=0.01)
        pipe = Pipeline(stages=[va, g])
        pm = pipe.fit(raw)
        t = pm.transform(raw)
        p1 = [r.prediction for r in t.orderBy("id").select("prediction").collect()]
        ppath = os.path.join(workdir, "pipeline_model")
        pm.write().overwrite().save(ppath)
        pm2 = PipelineModel.load(ppath)
        p2 = [r.prediction for r in pm2.transform(raw).orderBy("id").select("prediction").collect()]
        epath = os.path.join(workdir, "pipeline")
        pipe.save(epath)
        pipe2 = Pipeline.load(epath)
        return {
            "stage_classes": [type_name(s) for s in pm.stages],
            "transform_schema": schema_facts(t),
            "_columns": t.columns,
            "partition_matches_labels": partition_matches(labels, p1),
            "loaded_stage_classes": [type_name(s) for s in pm2.stages],
            "loaded_predictions_equal": p1 == p2,
            "loaded_pipeline_stage_classes": [type_name(s) for s in pipe2.getStages()],
            "loaded_pipeline_k": pipe2.getStages()[1].getK(),
        }

    pl = rec.step("pipeline", pipeline)
    if pl:
        I["pipeline_transform_columns"] = pl.pop("_columns")
    S["pipeline"] = pl

    out.update(structural=S, info=I, steps=rec.steps)
    return out


def harness_facts(spark) -> dict:
    """Where do Python workers run and what can they import? Plus the
    DataFrame capabilities the package relies on (checked in this mode)."""
    import pyarrow as pa
    from pyspark.ml.linalg import Vectors

    facts = {}
    df = spark.createDataFrame(
        [(Vectors.dense([1.0, 2.0]),), (Vectors.sparse(2, [1], [3.0]),)], ["v"]
    )

    def worker_env(it):
        import importlib.util
        import os as _os
        import sys as _sys

        for b in it:
            spec = importlib.util.find_spec("spark_gmm")
            yield pa.RecordBatch.from_pydict(
                {
                    "executable": [_sys.executable],
                    "path": [json.dumps(_sys.path)],
                    "spark_gmm_location": [str(getattr(spec, "origin", None))],
                    "omp": [_os.environ.get("OMP_NUM_THREADS")],
                    "arrow_type": [str(b.schema.field("v").type)],
                    "pid": [_os.getpid()],
                }
            )

    try:
        rows = df.mapInArrow(
            worker_env,
            "executable string, path string, spark_gmm_location string, omp string, "
            "arrow_type string, pid long",
        ).collect()
        r = rows[0]
        facts["worker_executable"] = r.executable
        facts["worker_sys_path"] = json.loads(r.path)
        facts["worker_spark_gmm_location"] = r.spark_gmm_location
        facts["worker_omp_num_threads"] = r.omp
        facts["mapInArrow_vector_arrow_type"] = r.arrow_type
        facts["mapInArrow_ok"] = True
    except Exception as exc:  # noqa: BLE001
        facts["mapInArrow_ok"] = False
        facts["mapInArrow_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    facts["driver_executable"] = sys.executable

    def check(name, fn):
        try:
            facts[name] = fn()
        except Exception as exc:  # noqa: BLE001
            facts[name] = f"ERROR {type(exc).__name__}: {exc}"[:1000]

    # DataFrame features the package relies on: toArrow (the driver engine, PySpark >= 4),
    # persist / unpersist (the job-per-pass engine's cached blocks), vector_to_array (data)
    if hasattr(df, "toArrow"):
        check("toArrow_num_rows", lambda: df.toArrow().num_rows)

    def persist_probe():
        from pyspark.storagelevel import StorageLevel

        d = spark.range(10)
        d.persist(StorageLevel.MEMORY_AND_DISK)
        d.count()
        cached = d.storageLevel
        d.unpersist()
        return [cached.useMemory and cached.useDisk, d.storageLevel.useMemory]

    check("persist_unpersist", persist_probe)

    def v2a_probe():
        from pyspark.ml.functions import array_to_vector, vector_to_array

        a = df.select(vector_to_array("v").alias("a"))
        return [list(r.v) for r in a.select(array_to_vector("a").alias("v")).collect()]

    check("vector_to_array_roundtrip", v2a_probe)
    return facts


def collect_facts(spark, modules, workdir: str, harness: bool = True) -> dict:
    """The facts of every module's run in ``spark`` (and the harness probes): what ``main``
    writes, also called in the test process with its own session (tests/test_dropin.py)."""
    result = {"spark_version": spark.version, "runs": {}}
    t0 = time.monotonic()
    try:
        if harness:
            result["harness"] = harness_facts(spark)
        for i, module in enumerate(modules):
            wd = os.path.join(workdir, f"{i}_{module.replace('.', '_')}")
            shutil.rmtree(wd, ignore_errors=True)
            os.makedirs(wd)
            t = time.monotonic()
            result["runs"][module] = run_module(spark, module, wd)
            result["runs"][module]["seconds"] = round(time.monotonic() - t, 1)
    finally:
        result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def main(argv=None) -> int:
    import _session  # tests/scripts (the script's folder); puts the repo root on sys.path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--module",
        action="append",
        required=True,
        help="module providing GaussianMixture / GaussianMixtureModel (repeatable)",
    )
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--workdir", default=None, help="directory for saved models")
    p.add_argument("--no-harness", action="store_true", help="skip worker-env probes")
    _session.add_session_args(p)
    args = p.parse_args(argv)

    spark, mode = _session.make_session(args.master, args.remote, app_name="dropin_script")
    workdir = args.workdir or tempfile.mkdtemp(prefix="dropin-")
    result = {"mode": mode, "master": args.master, "remote": args.remote}
    try:
        result.update(collect_facts(spark, args.module, workdir, harness=not args.no_harness))
    finally:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True, default=repr)
        try:
            spark.stop()
        except Exception:  # noqa: BLE001
            pass
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
