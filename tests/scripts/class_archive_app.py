"""A small Spark application whose driver JVM writes a class-data-sharing archive at exit
(``tests/class_archive.py``): it loads the classes a test's Spark application loads (session
start, Parquet and CSV I/O, Python workers through mapInArrow, a fit on each engine, model
persistence).

    python tests/scripts/class_archive_app.py ARCHIVE
"""

import os
import shutil
import sys
import tempfile

import _session  # noqa: F401  (the checkout on sys.path, Python worker environment)


def main(archive: str) -> int:
    from pyspark.sql import SparkSession

    from spark_gmm import GaussianMixture

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("spark-gmm-class-archive")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", f"-XX:ArchiveClassesAtExit={archive}")
        .getOrCreate()
    )
    work = tempfile.mkdtemp(prefix="class-archive-")
    df = spark.createDataFrame(
        [(float(i % 7), float(i % 5)) for i in range(200)], "x double, y double"
    )
    df.write.parquet(os.path.join(work, "p"))
    df.write.csv(os.path.join(work, "c"), header=True)
    df = spark.read.parquet(os.path.join(work, "p"))
    spark.read.csv(os.path.join(work, "c"), header=True, inferSchema=True).count()
    model = GaussianMixture(k=2, inputCols=["x", "y"], maxIter=2, seed=1).fit(df)
    GaussianMixture(k=2, inputCols=["x", "y"], maxIter=1, seed=1, engine="jobPerPass").fit(df)
    model.transform(df).write.parquet(os.path.join(work, "t"))
    model.save(os.path.join(work, "m"))
    shutil.rmtree(work, ignore_errors=True)
    jvm = spark.sparkContext._gateway.proc  # the driver JVM (spark-submit execs java)
    spark.stop()
    # the JVM exits when its standard input closes, and writes the archive as it exits: wait
    # for that, so that whoever started this process finds the whole archive
    jvm.stdin.close()
    return 0 if jvm.wait(timeout=600) == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
