"""Writing a job's outputs: output column checks, the file formats' column types, the writers."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from spark_gmm.data import quote_name
from spark_gmm.jobs.errors import JobError, columns_text
from spark_gmm.jobs.job import Job


def check_new_columns(df, desc: str, names: Dict[str, str]) -> None:
    """Raises a JobError naming the flags whose output column names (``names``: flag -> name,
    empty for none) are columns of ``df`` (described as ``desc``) already."""
    taken = [f"{name} ({flag})" for flag, name in names.items() if name and name in df.columns]
    if taken:
        raise JobError(
            f"{desc} already has column(s) {', '.join(taken)}: choose other output "
            "names with those flags"
        )


def output_columns(cfg, df, desc: str, anomaly_col: Optional[str] = None):
    """The job's output column names (prediction, probability, log-likelihood, and the
    anomaly flag when given), checked to be new in ``df`` and distinct from each other."""
    names = {
        "--prediction-col": cfg["output.prediction_col"],
        "--probability-col": cfg["output.probability_col"],
        "--log-likelihood-col": cfg["output.log_likelihood_col"],
        "--anomaly-column": anomaly_col,
    }
    check_new_columns(df, desc, names)
    given = {flag: name for flag, name in names.items() if name}
    if len(set(given.values())) < len(given):
        raise JobError(
            "the output column names must differ: "
            + ", ".join(f"{flag} {name}" for flag, name in given.items())
        )
    return tuple(names.values())


def check_partition_by(df, cols: Sequence[str]) -> None:
    """Checks that every column of ``cols`` is in the output ``df`` and holds plain values
    (no arrays, maps, structs or vectors) that a partitioned write can split on."""
    from pyspark.sql.types import ArrayType, MapType, StructType, UserDefinedType

    fields = {f.name: f.dataType for f in df.schema.fields}
    for c in cols:
        if c not in fields:
            raise JobError(
                f"partition_by column '{c}' is not in the output; its columns are: "
                f"{columns_text(df)}"
            )
        if isinstance(fields[c], (ArrayType, MapType, StructType, UserDefinedType)):
            raise JobError(
                f"cannot partition the output by '{c}' "
                f"({fields[c].simpleString()}): choose a column of plain values"
            )


def for_format(df, fmt: str, probability_col: Optional[str], k: int):
    """Output columns a file format can hold: probability vectors become array<double>; for
    CSV they become one column per component and other nested values JSON text."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, MapType, StructType

    if probability_col and probability_col in df.columns:
        df = df.withColumn(probability_col, vector_to_array(F.col(quote_name(probability_col))))
    if fmt != "csv":
        return df
    cols = []
    for field in df.schema.fields:
        c = F.col(quote_name(field.name))
        if field.name == probability_col:
            cols += [c[j].alias(f"{probability_col}_{j}") for j in range(k)]
        elif isinstance(field.dataType, VectorUDT):
            cols.append(F.to_json(vector_to_array(c)).alias(field.name))
        elif isinstance(field.dataType, (ArrayType, MapType, StructType)):
            cols.append(F.to_json(c).alias(field.name))
        else:
            cols.append(c)
    return df.select(*cols)


def write_frame(
    job: Job, df, path: str, fmt: str, partition_by: Sequence[str] = (), num_files: int = 0
) -> None:
    """Writes ``df`` to ``path`` in format ``fmt`` (CSV with a header), partitioned by the
    ``partition_by`` columns, repartitioned into ``num_files`` first when given; an existing
    path is an error unless output.overwrite."""
    from pyspark.sql import functions as F

    if num_files:
        df = (
            df.repartition(num_files, *[F.col(quote_name(c)) for c in partition_by])
            if partition_by
            else df.repartition(num_files)
        )
    writer = df.write.format(fmt).mode(
        "overwrite" if job.cfg.get("output.overwrite") else "errorifexists"
    )
    if fmt == "csv":
        writer = writer.option("header", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)


def save_model(job: Job, model, what: str = "the model") -> str:
    """Saves ``model`` as model/ in the output folder (replacing it under --overwrite)."""
    model_path = job.out("model")
    job.describe(f"saving {what} to {model_path}")
    with job.timed("save_model"):
        writer = model.write()
        if job.cfg.get("output.overwrite"):
            writer = writer.overwrite()
        writer.save(model_path)
    return model_path
