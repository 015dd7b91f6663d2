"""Initial parameters: Spark's KMeans (k-means||), random distinct rows, or a fitted model."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_gmm import kernel
from spark_gmm.data import FEATURES, WEIGHT, InvalidInputError
from spark_gmm.em import SparkPasses

log = logging.getLogger("spark_gmm")

SAMPLE_ROWS = 20_000  # rows collected to the driver for random initialisation


def data_moments(passes: SparkPasses, origin: np.ndarray, full: bool):
    """Weighted mean (d,) and covariance ((d, d) if ``full`` else variances (d,)) of the
    prepared rows, accumulated around ``origin`` (a data row) so offsets do not cancel."""
    stats = passes.hard_assignment_stats(
        origin[None, :], "full" if full else "diag", "data moments"
    )
    delta = stats.first[0] / stats.resp[0]
    mean = stats.shift[0] + delta
    if full:
        cov = stats.second[0] / stats.resp[0] - np.outer(delta, delta)
        cov = 0.5 * (cov + cov.T)
    else:
        cov = np.maximum(stats.second[0] / stats.resp[0] - delta**2, 0.0)
    return mean, cov


def _first_row(prepared: DataFrame) -> np.ndarray:
    row = prepared.select(FEATURES).limit(1).collect()
    return np.asarray(row[0][0], dtype=np.float64)


def _sample_rows(prepared: DataFrame, n_rows: int, seed: int, limit: int) -> np.ndarray:
    fraction = min(1.0, 2.0 * limit / max(n_rows, 1))
    sample = prepared.select(FEATURES)
    if fraction < 1.0:
        sample = sample.sample(withReplacement=False, fraction=fraction, seed=seed)
    rows = sample.limit(limit).collect()
    return np.asarray([r[0] for r in rows], dtype=np.float64)


def _distinct_rows(prepared: DataFrame, k: int) -> np.ndarray:
    rows = prepared.select(FEATURES).distinct().limit(k).collect()
    return np.asarray([r[0] for r in rows], dtype=np.float64)


def _too_few_distinct(found: int, k: int) -> InvalidInputError:
    return InvalidInputError(
        f"the features have only {found} distinct row(s), fewer than k={k}: lower k"
    )


def from_model(model, k: int, n_features: int, covariance_type: str) -> kernel.MixtureParams:
    params = model._mixture
    if params.k != k or params.d != n_features or params.covariance_type != covariance_type:
        raise ValueError(
            f"initialModel has k={params.k}, {params.d} features, covarianceType="
            f"{params.covariance_type!r}; this fit has k={k}, {n_features} features, "
            f"covarianceType={covariance_type!r}"
        )
    return params


def random_rows(
    passes: SparkPasses, prepared: DataFrame, n_rows: int, k: int, covariance_type: str,
    seed: int, reg_covar: float,
) -> kernel.MixtureParams:
    """k distinct rows as means, the data covariance (plus regCovar) for every component."""
    sample = _sample_rows(prepared, n_rows, seed, SAMPLE_ROWS)
    distinct = np.unique(sample, axis=0)
    if len(distinct) < k:
        distinct = _distinct_rows(prepared, k)
        if len(distinct) < k:
            raise _too_few_distinct(len(distinct), k)
    rng = np.random.default_rng(seed)
    means = distinct[np.sort(rng.choice(len(distinct), size=k, replace=False))]
    full = covariance_type in ("full", "tied")
    _, cov = data_moments(passes, sample[0], full)
    d = means.shape[1]
    if full:
        cov = cov + reg_covar * np.eye(d)
        covariances = cov if covariance_type == "tied" else np.repeat(cov[None], k, axis=0)
    else:
        variances = cov + reg_covar
        covariances = (
            np.repeat(variances[None], k, axis=0)
            if covariance_type == "diag"
            else np.full(k, variances.mean())
        )
    return kernel.MixtureParams(np.full(k, 1.0 / k), means, covariances, covariance_type)


def kmeans(
    passes: SparkPasses, prepared: DataFrame, k: int, covariance_type: str, seed: int,
    reg_covar: float, weighted: bool,
) -> kernel.MixtureParams:
    """Spark's KMeans (k-means||) on centred data divided by one global scale (an isotropic
    map, so the clustering is unchanged but offsets of 1e8 or scales of 1e-4 are harmless),
    then one M-step from the hard assignments, as scikit-learn's kmeans init."""
    mean, variances = data_moments(passes, _first_row(prepared), full=False)
    scale = float(np.sqrt(variances.mean()))
    if not scale > 0:
        if k > 1:
            raise _too_few_distinct(1, k)
        scale = 1.0
    mean_col = F.array(*[F.lit(float(m)) for m in mean])
    standardized = prepared.select(
        array_to_vector(
            F.transform(F.col(FEATURES), lambda x, i: (x - F.element_at(mean_col, i + 1)) / scale)
        ).alias("features"),
        F.col(WEIGHT),
    )
    km = KMeans(k=k, seed=seed, featuresCol="features", initMode="k-means||", maxIter=20)
    if weighted:
        km.setWeightCol(WEIGHT)
    centers = np.asarray(km.fit(standardized).clusterCenters(), dtype=np.float64)
    centers = np.unique(centers, axis=0)
    if len(centers) < k:
        # KMeans returns fewer centers when the data has fewer distinct points.
        distinct = _distinct_rows(prepared, k)
        if len(distinct) < k:
            raise _too_few_distinct(len(distinct), k)
        extra = (distinct - mean) / scale
        keep = [row for row in extra if not (np.abs(centers - row).sum(axis=1) == 0).any()]
        centers = np.vstack([centers, np.asarray(keep)[: k - len(centers)]])
    centers = centers * scale + mean
    stats = passes.hard_assignment_stats(centers, covariance_type, "k-means assignment")
    return kernel.m_step(stats, reg_covar)


def initial_params(
    passes: SparkPasses,
    prepared: DataFrame,
    n_rows: int,
    k: int,
    covariance_type: str,
    init_mode: str,
    seed: int,
    reg_covar: float,
    weighted: bool,
    initial_model: Optional[object] = None,
    n_features: Optional[int] = None,
) -> kernel.MixtureParams:
    if n_rows < k:
        raise InvalidInputError(f"only {n_rows} valid row(s), fewer than k={k}: lower k")
    if initial_model is not None:
        return from_model(initial_model, k, n_features, covariance_type)
    if init_mode == "random":
        return random_rows(passes, prepared, n_rows, k, covariance_type, seed, reg_covar)
    return kmeans(passes, prepared, k, covariance_type, seed, reg_covar, weighted)
