"""The user's columns -> the fit's prepared rows, and validation of the input.

Everything the fit and transform read goes through :func:`resolve_features`, which turns the
user's vector column, array column or list of numeric columns into one ``array<double>``
expression; :func:`prepare` validates it and names the prepared columns
(:mod:`spark_gmm.engine.blocks` turns their Arrow batches into NumPy blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

# types as objects, not strings: a cast by name parses it with Spark's SQL parser, whose
# first use in a session costs ~0.15 s
from pyspark.sql.types import ArrayType, DoubleType, NumericType

from spark_gmm.engine.blocks import FEATURES, WEIGHT


class InvalidInputError(ValueError):
    """Input data that cannot be fitted or scored; the message names the column."""


@dataclass(frozen=True)
class FeatureSource:
    """Where the features come from: ``description`` names it in errors."""

    description: str
    array: Column  # array<double>, null where the input row is null
    n_columns: Optional[int] = None  # known up front for inputCols


def resolve_features(
    df: DataFrame, features_col: str, input_cols: Optional[List[str]]
) -> FeatureSource:
    """The features as an ``array<double>`` column, or a clear error about the input."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    if input_cols:
        missing = [c for c in input_cols if c not in fields]
        if missing:
            raise InvalidInputError(
                f"inputCols {missing} not found; the DataFrame has columns {sorted(fields)}"
            )
        wrong = [
            f"{c} ({fields[c].simpleString()})"
            for c in input_cols
            if not isinstance(fields[c], NumericType)
        ]
        if wrong:
            raise InvalidInputError(f"inputCols must be numeric, got {', '.join(wrong)}")
        # A null column is a null element: a missing feature (handleInvalid decides).
        cols = [F.col(quote_name(c)).cast(DoubleType()) for c in input_cols]
        return FeatureSource(f"inputCols {list(input_cols)}", F.array(*cols), len(input_cols))
    if features_col not in fields:
        raise InvalidInputError(
            f"features column '{features_col}' not found; the DataFrame has columns "
            f"{sorted(fields)} (set featuresCol or inputCols)"
        )
    dtype = fields[features_col]
    col = F.col(quote_name(features_col))
    if isinstance(dtype, VectorUDT):
        # vector_to_array throws on null vectors: a null row stays null and is reported.
        array = F.when(col.isNull(), F.lit(None)).otherwise(vector_to_array(col, "float64"))
    elif isinstance(dtype, ArrayType) and isinstance(dtype.elementType, NumericType):
        array = col.cast(ArrayType(DoubleType()))
    else:
        raise InvalidInputError(
            f"features column '{features_col}' must be a vector or an array of numbers, "
            f"got {dtype.simpleString()}"
        )
    return FeatureSource(f"features column '{features_col}'", array)


def quote_name(name: str) -> str:
    """``name`` quoted with backticks for :func:`pyspark.sql.functions.col`, so that dots and
    other special characters are taken literally."""
    return "`" + name.replace("`", "``") + "`"


def _row_is_valid(array: Column) -> Column:
    """True where the array is non-null and every element is a finite number."""
    bad_element = F.exists(array, lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf")))
    return array.isNotNull() & ~bad_element


def _is_missing(x: Column) -> Column:
    return x.isNull() | F.isnan(x)


def _row_flags(array: Column, handle_invalid: str):
    """(valid, infinite, empty, incomplete) expressions of a features array: valid rows are
    fitted; the others are counted as null, infinite (an infinite element) or empty (every
    element missing, under 'keep'); incomplete: valid rows with a missing element ('keep')."""
    # null elements compare as null: coalesced, or one would make the whole row's flag null
    infinite = array.isNotNull() & F.exists(
        array, lambda x: F.coalesce(F.abs(x) == float("inf"), F.lit(False))
    )
    if handle_invalid != "keep":
        return _row_is_valid(array), infinite, F.lit(False), F.lit(False)
    empty = array.isNotNull() & ~infinite & F.forall(array, _is_missing)
    valid = array.isNotNull() & ~infinite & ~empty
    return valid, infinite, empty, valid & F.exists(array, _is_missing)


@dataclass(frozen=True)
class InputReport:
    """What validation found: row counts and the feature dimension; ``n_incomplete`` rows
    (of the valid ones) have missing features, kept under handleInvalid='keep'."""

    n_input_rows: int
    n_skipped: int
    n_features: int
    total_weight: float
    n_incomplete: int = 0

    @property
    def n_rows(self) -> int:
        """The number of valid rows: input rows minus skipped ones."""
        return self.n_input_rows - self.n_skipped


def prepare(
    df: DataFrame,
    source: FeatureSource,
    weight_col: Optional[str],
    handle_invalid: str,
    expected_features: Optional[int] = None,
):
    """Validates the input in one aggregation job and returns (prepared DataFrame, report).

    The prepared DataFrame has columns ``FEATURES`` (array<double>, all rows valid and of one
    size; under 'keep' with null or NaN elements for missing features) and ``WEIGHT``
    (double >= 0); it keeps the input's partitioning.
    """
    with_cols = unvalidated_rows(df, source, weight_col)
    x, w = F.col(FEATURES), F.col(WEIGHT)
    is_valid, infinite, empty, incomplete = _row_flags(x, handle_invalid)

    def count(condition: Column) -> Column:
        return F.sum(F.when(condition, 1).otherwise(0))

    stats = (
        with_cols.agg(
            F.count(F.lit(1)).alias("n"),
            count(~is_valid | x.isNull()).alias("invalid"),
            count(x.isNull()).alias("nulls"),
            count(infinite).alias("infinite"),
            count(empty).alias("empty"),
            count(incomplete).alias("incomplete"),
            F.min(F.when(is_valid, F.size(x))).alias("min_size"),
            F.max(F.when(is_valid, F.size(x))).alias("max_size"),
            F.sum(
                F.when(
                    is_valid & (w.isNull() | F.isnan(w) | (w < 0) | (w == float("inf"))), 1
                ).otherwise(0)
            ).alias("bad_weights"),
            F.sum(F.when(is_valid, w)).alias("total_weight"),
        )
        .collect()[0]
        .asDict()
    )
    report = check_input(stats, source, weight_col, handle_invalid, expected_features)
    prepared = with_cols.where(is_valid) if report.n_skipped else with_cols
    return prepared, report


def unvalidated_rows(df: DataFrame, source: FeatureSource, weight_col: Optional[str]) -> DataFrame:
    """The input as columns ``FEATURES`` and ``WEIGHT``, before validation."""
    return df.select(source.array.alias(FEATURES), _weight_column(df, weight_col).alias(WEIGHT))


def row_validity(
    row_null: np.ndarray, infinite: np.ndarray, n_missing: np.ndarray, sizes: np.ndarray, mode: str
):
    """(valid, empty, incomplete) (n,) bool of rows held in NumPy, as :func:`_row_flags`
    decides them in Spark: from each row's nullness, whether it has an infinite element, its
    count of missing (null or NaN) elements and its size, under handleInvalid ``mode``."""
    present = ~row_null & ~infinite
    if mode != "keep":
        valid = present & (n_missing == 0)
        return valid, np.zeros_like(valid), np.zeros_like(valid)
    empty = present & (n_missing == sizes)
    valid = present & ~empty
    return valid, empty, valid & (n_missing > 0)


def input_stats(
    X_valid: np.ndarray,
    nulls: int,
    n: int,
    sizes: np.ndarray,
    w: np.ndarray,
    infinite: int = 0,
    empty: int = 0,
    incomplete: int = 0,
) -> dict:
    """The statistics :func:`prepare` aggregates in Spark, from rows held in NumPy: ``n``
    rows, ``nulls`` of them null, ``X_valid`` (n,) whether each row is valid
    (:func:`row_validity`), ``sizes`` (n,) each row's number of features, ``w`` (n,) weights
    (NaN where null), and the counts of rows with an infinite element, of rows with every
    element missing and of valid rows with a missing element."""
    invalid = int(n - np.count_nonzero(X_valid))
    valid_sizes = sizes[X_valid]
    valid_w = w[X_valid]
    bad_weights = int(np.count_nonzero(~(np.isfinite(valid_w) & (valid_w >= 0))))
    return {
        "n": n,
        "invalid": invalid,
        "nulls": nulls,
        "infinite": infinite,
        "empty": empty,
        "incomplete": incomplete,
        "min_size": int(valid_sizes.min()) if valid_sizes.size else None,
        "max_size": int(valid_sizes.max()) if valid_sizes.size else None,
        "bad_weights": bad_weights,
        "total_weight": float(valid_w.sum()) if valid_sizes.size and not bad_weights else None,
    }


def check_input(
    stats: dict,
    source: FeatureSource,
    weight_col: Optional[str],
    handle_invalid: str,
    expected_features: Optional[int] = None,
) -> "InputReport":
    """The report of validation statistics (:func:`prepare`, :func:`input_stats`), or the
    error that names the column and the problem."""
    n, invalid = int(stats["n"]), int(stats["invalid"] or 0)
    if n == 0:
        raise InvalidInputError(f"the input DataFrame is empty: no rows in {source.description}")
    if invalid and handle_invalid == "keep":
        raise InvalidInputError(_unkept(stats, source, invalid, n))
    if invalid and handle_invalid == "error":
        nulls = int(stats["nulls"] or 0)
        what = []
        if nulls:
            what.append(f"{nulls} null")
        if invalid - nulls:
            what.append(f"{invalid - nulls} with NaN, infinite or null values")
        raise InvalidInputError(
            f"{source.description} has {invalid} invalid row(s) of {n} ({', '.join(what)}); "
            "clean them or set handleInvalid='skip' to drop them"
            + (
                " (or GaussianMixture's 'keep' to keep the rows with null or NaN features, "
                "marginalised)"
                if invalid - nulls - int(stats.get("infinite") or 0) > 0
                else ""
            )
        )
    if invalid == n:
        raise InvalidInputError(
            f"all {n} rows of {source.description} are invalid (null, NaN or infinite); "
            "nothing is left to fit"
        )
    lo, hi = int(stats["min_size"]), int(stats["max_size"])
    if lo != hi:
        raise InvalidInputError(
            f"{source.description} has vectors of different sizes ({lo} to {hi}); "
            "all rows must have the same number of features"
        )
    if lo == 0:
        raise InvalidInputError(f"{source.description} has vectors of size 0")
    if expected_features is not None and lo != expected_features:
        raise InvalidInputError(
            f"{source.description} has {lo} features but the model expects {expected_features}"
        )
    if int(stats["bad_weights"] or 0):
        raise InvalidInputError(
            f"weight column '{weight_col}' has {int(stats['bad_weights'])} null, NaN, "
            "negative or infinite value(s); weights must be finite and >= 0"
        )
    total_weight = float(stats["total_weight"] or 0.0)
    if total_weight <= 0:
        raise InvalidInputError(
            f"weight column '{weight_col}' sums to zero over the valid rows: nothing to fit"
        )
    return InputReport(n, invalid, lo, total_weight, int(stats.get("incomplete") or 0))


def _unkept(stats: dict, source: FeatureSource, invalid: int, n: int) -> str:
    """The error of rows that handleInvalid='keep' cannot keep: null rows and rows with
    every feature missing (nothing to marginalise over), rows with infinite values."""
    counts = (
        (int(stats["nulls"] or 0), "null (every feature missing)"),
        (int(stats.get("empty") or 0), "with every feature null or NaN"),
        (int(stats.get("infinite") or 0), "with infinite values"),
    )
    what = ", ".join(f"{count} {label}" for count, label in counts if count)
    return (
        f"{source.description} has {invalid} row(s) of {n} that handleInvalid='keep' cannot "
        f"keep ({what}); clean them or set handleInvalid='skip' to drop them"
    )


def _weight_column(df: DataFrame, weight_col: Optional[str]) -> Column:
    if not weight_col:
        return F.lit(1.0)
    fields = {f.name: f.dataType for f in df.schema.fields}
    if weight_col not in fields:
        raise InvalidInputError(
            f"weight column '{weight_col}' not found; the DataFrame has columns {sorted(fields)}"
        )
    if not isinstance(fields[weight_col], NumericType):
        raise InvalidInputError(
            f"weight column '{weight_col}' must be numeric, got {fields[weight_col].simpleString()}"
        )
    return F.col(quote_name(weight_col)).cast(DoubleType())


def valid_rows(source: FeatureSource) -> Column:
    """Filter expression keeping rows whose features are present and finite."""
    return _row_is_valid(source.array)
