"""A fit in a session whose own traffic Spark authenticates and encrypts
(spark.authenticate, spark.network.crypto.enabled): writes JSON saying which engine ran,
whether the resident engine's channel was encrypted, and whether any of the pickled commands
crossed it in clear. Used by tests/test_resident_faults.py."""

import argparse
import json
import os

from _session import add_session_args, make_session


def main():
    parser = add_session_args(argparse.ArgumentParser())
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ["PYSPARK_SUBMIT_ARGS"] = (
        "--conf spark.authenticate=true --conf spark.authenticate.secret=test-secret "
        "--conf spark.network.crypto.enabled=true pyspark-shell"
    )
    spark, _ = make_session(args.master, args.remote)

    from _pytest.monkeypatch import MonkeyPatch

    from spark_gmm import GaussianMixture
    from tests.datasets import blobs
    from tests.tcp_proxy import intercept

    created = intercept(MonkeyPatch())
    X, _ = blobs(200, 3, k=3, separation=3.0, seed=4)
    df = spark.createDataFrame([([float(v) for v in x],) for x in X], "features array<double>")
    model = GaussianMixture(k=3, seed=1, maxIter=10, engine="resident").fit(df)
    proxy = created[-1].proxy
    wire = bytes(proxy.upstream) + bytes(proxy.downstream)
    with open(args.out, "w") as fh:
        json.dump(
            {
                "engine": model.summary.engine,
                "sparkEncrypts": spark.sparkContext.getConf().get("spark.network.crypto.enabled"),
                "channelEncrypted": created[-1].encrypt,
                "wireBytes": len(wire),
                "commandsInClear": b"accumulate_stats" in wire,
            },
            fh,
        )
    spark.stop()


if __name__ == "__main__":
    main()
