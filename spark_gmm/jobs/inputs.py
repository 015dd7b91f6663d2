"""What a job reads: the input table (or the demo data), its feature columns checked against the
schema, and a saved model."""

from __future__ import annotations

from typing import List, Optional, Tuple

from spark_gmm.jobs.demo import apply_demo
from spark_gmm.jobs.errors import JobError, columns_text, one_line, spark_error_line
from spark_gmm.jobs.job import Job


def read_input(job: Job):
    """(DataFrame, description) of input.path / input.table; one-line errors."""
    from pyspark.errors import AnalysisException

    cfg = job.cfg
    table, path = cfg.get("input.table"), cfg.get("input.path")
    if table:
        job.describe(f"reading table {table}")
        try:
            df = job.spark.table(table)
        except AnalysisException as exc:
            if "TABLE_OR_VIEW_NOT_FOUND" in str(exc):
                raise JobError(f"table {table} not found in the Spark catalog") from None
            raise JobError(f"cannot read table {table}: {one_line(str(exc))}") from None
        return df, f"table {table}"
    if not path:
        raise JobError(
            "no input: give --input PATH or --table NAME (input.path / "
            "input.table)" + (", or --demo" if "demo.enabled" in cfg.values else "")
        )
    fmt = cfg.get("input.format") or _guess_format(path)
    try:
        found = job.fs.glob_exists(path)
    except Exception as exc:  # noqa: BLE001 - e.g. no FileSystem for the scheme
        raise JobError(f"cannot access input {path}: {spark_error_line(exc)}") from None
    if not found:
        raise JobError(f"input path {path} does not exist")
    options = {"header": "true", "inferSchema": "true"} if fmt == "csv" else {}
    options.update(cfg.get("input.options") or {})
    job.describe(f"reading {fmt} input {path}")
    try:
        df = job.spark.read.format(fmt).options(**options).load(path)
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"cannot read input {path} as {fmt}: {spark_error_line(exc)}") from None
    if not df.columns:
        raise JobError(f"input {path} has no columns (is it {fmt}?)")
    return df, f"{fmt} input {path}"


def _guess_format(path: str) -> str:
    base = path.rstrip("/").lower()
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "csv"),
        (".json", "json"),
        (".jsonl", "json"),
        (".ndjson", "json"),
        (".orc", "orc"),
        (".parquet", "parquet"),
    ):
        if base.endswith(ext) or base.endswith(ext + ".gz"):
            return fmt
    return "parquet"


def _type_hint(fmt_desc: str) -> str:
    if fmt_desc.startswith("csv"):
        return (
            " (CSV is read with inferSchema=true: one non-numeric value makes the whole "
            "column a string)"
        )
    return ""


def check_features(
    df, desc: str, input_cols: Optional[List[str]], features_col: Optional[str]
) -> Tuple[Optional[List[str]], str]:
    """Validates the feature columns against the schema: (input_cols or None, features_col)."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import ArrayType, NumericType

    fields = {f.name: f.dataType for f in df.schema.fields}
    if input_cols:
        dupes = sorted({c for c in input_cols if input_cols.count(c) > 1})
        if dupes:
            raise JobError(f"input_cols lists {', '.join(dupes)} more than once")
        missing = [c for c in input_cols if c not in fields]
        if missing:
            raise JobError(
                f"column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
                f"not found in {desc}; its columns are: {columns_text(df)}"
            )
        for c in input_cols:
            if not isinstance(fields[c], NumericType):
                raise JobError(
                    f"column '{c}' of {desc} is {fields[c].simpleString()}, not numeric; "
                    "input_cols must be numeric columns (or give a vector column as "
                    f"--features-col){_type_hint(desc)}"
                )
        return list(input_cols), features_col or "features"
    col = features_col or "features"
    if col not in fields:
        raise JobError(
            f"features column '{col}' not found in {desc}; its columns are: "
            f"{columns_text(df)}. Give the numeric columns to cluster with --input-cols "
            "a,b,c, or a vector column with --features-col"
        )
    dtype = fields[col]
    ok = isinstance(dtype, VectorUDT) or (
        isinstance(dtype, ArrayType) and isinstance(dtype.elementType, NumericType)
    )
    if not ok:
        hint = (
            " (a single numeric column is clustered with --input-cols " + col + ")"
            if isinstance(dtype, NumericType)
            else ""
        )
        raise JobError(
            f"features column '{col}' of {desc} is {dtype.simpleString()}, not a vector or "
            f"an array of numbers{hint}"
        )
    return None, col


def check_numeric(df, desc: str, col: Optional[str], what: str) -> None:
    """Checks that column ``col`` of ``df`` (described as ``desc``) exists and is numeric,
    raising a JobError that names it as ``what``; nothing to check when ``col`` is empty."""
    from pyspark.sql.types import NumericType

    if not col:
        return
    fields = {f.name: f.dataType for f in df.schema.fields}
    if col not in fields:
        raise JobError(f"{what} '{col}' not found in {desc}; its columns are: {columns_text(df)}")
    if not isinstance(fields[col], NumericType):
        raise JobError(
            f"{what} '{col}' of {desc} is {fields[col].simpleString()}, not numeric"
            f"{_type_hint(desc)}"
        )


def start_on_input(job: Job, outputs):
    """Checks the input and output settings, starts Spark, prepares the output folder (and
    the demo data) and reads the input: (df, description, demo, inputCols, featuresCol)."""
    cfg = job.cfg
    demo = bool(cfg.get("demo.enabled"))
    if not demo and not (cfg.get("input.path") or cfg.get("input.table")):
        raise JobError(
            "no input: give --input PATH or --table NAME (input.path / input.table), or --demo"
        )
    if not cfg.get("output.path"):
        raise JobError("no output folder: give --output PATH (output.path)")
    job.start_spark()
    job.prepare_output(outputs + (("data",) if demo else ()))
    if demo:
        apply_demo(job)
    with job.timed("read"):
        df, desc = read_input(job)
    input_cols, features_col = check_features(
        df, desc, cfg.get("input.input_cols"), cfg.get("input.features_col")
    )
    return df, desc, demo, input_cols, features_col


def load_model(job: Job, path: str):
    """The model at ``path`` (or at ``path``/model, for a fit/select output folder)."""
    from spark_gmm import GaussianMixtureModel

    fs = job.fs
    try:
        if not fs.exists(path):
            raise JobError(f"model path {path} does not exist")
        if not fs.exists(fs.join(path, "metadata")) and fs.exists(
            fs.join(path, "model", "metadata")
        ):
            path = fs.join(path, "model")
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"cannot access model path {path}: {spark_error_line(exc)}") from None
    job.describe(f"loading the model {path}")
    return GaussianMixtureModel.load(path), path


def model_features(model) -> Tuple[Optional[List[str]], str]:
    """(inputCols or None, featuresCol) of a fitted model: the columns it reads its features
    from."""
    cols = model.getOrDefault(model.inputCols) if model.isDefined(model.inputCols) else None
    return (list(cols) if cols else None), model.getFeaturesCol()
