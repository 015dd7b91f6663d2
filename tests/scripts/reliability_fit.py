"""Fit a GaussianMixture on a Parquet file and write the parameters as JSON.

Used by tests/test_reliability.py: killed mid-fit and started again (checkpoints), or run
under ``--master local[2,3]`` with SPARK_GMM_FAULT_INJECTION set (task retries).
"""

import argparse
import json
import logging

from _session import add_session_args, make_session

FIT = dict(k=3, seed=2, tol=0.0)


def main():
    parser = add_session_args(argparse.ArgumentParser())
    parser.add_argument("--parquet", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--checkpoint-interval", type=int, default=2)
    parser.add_argument("--engine", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

    spark, _ = make_session(args.master, args.remote)
    from spark_gmm import GaussianMixture

    gm = GaussianMixture(maxIter=args.max_iter, engine=args.engine, **FIT)
    if args.checkpoint_dir:
        gm.setCheckpointDir(args.checkpoint_dir).setCheckpointInterval(args.checkpoint_interval)
    sc = spark.sparkContext
    sc.setJobGroup("fit", "fit")
    model = gm.fit(spark.read.parquet(args.parquet))
    tracker = sc.statusTracker()
    stages = [
        tracker.getStageInfo(stage)
        for job in tracker.getJobIdsForGroup("fit")
        for stage in tracker.getJobInfo(job).stageIds
    ]
    stages = [info for info in stages if info is not None]
    failed = sum(info.numFailedTasks for info in stages)
    retried = sum(1 for info in stages if info.currentAttemptId > 0)  # stages run again
    with open(args.out, "w") as fh:
        json.dump(
            {
                "weights": model.weights,
                "means": model.means.tolist(),
                "covariances": model.covariances.tolist(),
                "numIter": model.summary.numIter,
                "history": model.summary.logLikelihoodHistory,
                "logLikelihood": model.summary.logLikelihood,
                "failedTasks": failed,
                "retriedStages": retried,
                "engine": model.summary.engine,
            },
            fh,
        )
    spark.stop()


if __name__ == "__main__":
    main()
