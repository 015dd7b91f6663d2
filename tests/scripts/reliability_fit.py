"""Fit a GaussianMixture on a Parquet file and write the parameters as JSON.

Used by tests/test_reliability.py (which imports ``FIT`` and ``fitted``): killed mid-fit and
started again (checkpoints), or run under ``--master local[2,3]`` with
SPARK_GMM_FAULT_INJECTION set (task retries).
"""

import argparse
import json
import logging

FIT = dict(k=3, seed=2, tol=0.0)


def fitted(model) -> dict:
    """What the tests compare of a fit: its parameters, iterations and log-likelihoods."""
    return {
        "weights": model.weights,
        "means": model.means.tolist(),
        "covariances": model.covariances.tolist(),
        "numIter": model.summary.numIter,
        "history": model.summary.logLikelihoodHistory,
        "logLikelihood": model.summary.logLikelihood,
    }


def fit(spark, args, engine: str) -> dict:
    """The fitted parameters, and the failed tasks and retried stages of the fit's jobs."""
    from spark_gmm import GaussianMixture

    gm = GaussianMixture(maxIter=args.max_iter, engine=engine, **FIT)
    if args.checkpoint_dir:
        gm.setCheckpointDir(args.checkpoint_dir).setCheckpointInterval(args.checkpoint_interval)
    sc = spark.sparkContext
    group = f"fit-{engine}"
    sc.setJobGroup(group, group)
    model = gm.fit(spark.read.parquet(args.parquet))
    tracker = sc.statusTracker()
    stages = [
        tracker.getStageInfo(stage)
        for job in tracker.getJobIdsForGroup(group)
        for stage in tracker.getJobInfo(job).stageIds
    ]
    stages = [info for info in stages if info is not None]
    return {
        **fitted(model),
        "failedTasks": sum(info.numFailedTasks for info in stages),
        "retriedStages": sum(1 for info in stages if info.currentAttemptId > 0),
        "engine": model.summary.engine,
    }


def main():
    from _session import add_session_args, make_session  # tests/scripts, the script's folder

    parser = add_session_args(argparse.ArgumentParser())
    parser.add_argument("--parquet", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--checkpoint-interval", type=int, default=2)
    parser.add_argument("--engine", default="auto", help="an engine, or several: a,b")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

    spark, _ = make_session(args.master, args.remote)
    results = {}
    for engine in args.engine.split(","):
        results[engine] = fit(spark, args, engine)
    # one engine: its result alone (the checkpoint test); several: by engine
    with open(args.out, "w") as fh:
        json.dump(results[engine] if len(results) == 1 else results, fh)
    spark.stop()


if __name__ == "__main__":
    main()
