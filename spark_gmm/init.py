"""Initial parameters for a list of candidates (restarts, grid points) in shared data passes.

Modes: 'kmeans' (Spark's KMeans, k-means||, then one M-step from its hard assignments, as
scikit-learn's default), 'k-means++' (seeds by k-means++ on a bounded driver sample, then the
same M-step), 'random' (random responsibilities, then an M-step, as scikit-learn's 'random'),
'randomFromData' (k distinct rows as means, the data covariance for every component); or
fixed initial parameters (a model or explicit arrays) for every candidate.
All candidates' assignment passes run in one Spark job.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_gmm import kernel
from spark_gmm.data import FEATURES, WEIGHT, InvalidInputError
from spark_gmm.em import SparkPasses

log = logging.getLogger("spark_gmm")

SAMPLE_ROWS = 20_000  # rows collected to the driver for k-means++ and randomFromData


@dataclass(frozen=True)
class Candidate:
    """One EM run to initialise: k components of a covariance type, seeded by ``seed``."""

    k: int
    covariance_type: str
    seed: int


@dataclass(frozen=True)
class ExplicitInit:
    """Initial means (k, d), with optional weights (k,) and covariances (type layout)."""

    means: np.ndarray
    weights: Optional[np.ndarray] = None
    covariances: Optional[np.ndarray] = None


def data_moments(passes: SparkPasses, origin: np.ndarray, full: bool):
    """Weighted mean (d,) and covariance ((d, d) if ``full`` else variances (d,)) of the
    prepared rows, accumulated around ``origin`` (a data row) so offsets do not cancel."""
    stats = passes.hard_assignment_stats(
        [origin[None, :]], ["full" if full else "diag"], "data moments"
    )[0]
    delta = stats.first[0] / stats.resp[0]
    mean = stats.shift[0] + delta
    with np.errstate(over="ignore", invalid="ignore"):
        squares_overflow = not np.all(np.isfinite(stats.second[0] / stats.resp[0]))
    if squares_overflow or not np.all(np.isfinite(mean)):
        raise InvalidInputError(
            "the features are too large for float64: the squares of their deviations "
            "overflow (values beyond ~1e154); scale the features"
        )
    if full:
        cov = stats.second[0] / stats.resp[0] - np.outer(delta, delta)
        cov = 0.5 * (cov + cov.T)
    else:
        cov = np.maximum(stats.second[0] / stats.resp[0] - delta**2, 0.0)
    return mean, cov


def _first_row(prepared: DataFrame) -> np.ndarray:
    row = prepared.select(FEATURES).limit(1).collect()
    return np.asarray(row[0][0], dtype=np.float64)


def _sample_rows(prepared: DataFrame, n_rows: int, seed: int, limit: int):
    """Up to ``limit`` rows (and their weights) drawn without replacement."""
    fraction = min(1.0, 2.0 * limit / max(n_rows, 1))
    sample = prepared
    if fraction < 1.0:
        sample = sample.sample(withReplacement=False, fraction=fraction, seed=seed)
    rows = sample.limit(limit).collect()
    X = np.asarray([r[FEATURES] for r in rows], dtype=np.float64)
    return X, np.asarray([r[WEIGHT] for r in rows], dtype=np.float64)


def _distinct_rows(prepared: DataFrame, k: int) -> np.ndarray:
    """Up to k distinct rows among those of positive weight (zero weight = no row)."""
    rows = prepared.where(F.col(WEIGHT) > 0).select(FEATURES).distinct().limit(k).collect()
    return np.asarray([r[0] for r in rows], dtype=np.float64)


def _too_few_distinct(found: int, k: int) -> InvalidInputError:
    return InvalidInputError(
        f"the features have only {found} distinct row(s), fewer than k={k}: lower k"
    )


def _check_distinct(prepared: DataFrame, rows: np.ndarray, k: int,
                    weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Distinct rows (of positive weight) of a sample, topped up from the whole data when the
    sample has fewer than k."""
    distinct = np.unique(rows if weights is None else rows[weights > 0], axis=0)
    if len(distinct) < k:
        distinct = _distinct_rows(prepared, k)
        if len(distinct) < k:
            raise _too_few_distinct(len(distinct), k)
    return distinct


def check_fixed(params: kernel.MixtureParams, c: Candidate, n_features: int, what: str):
    """``params`` if they fit the candidate, else an error saying what differs."""
    if params.k != c.k or params.d != n_features or params.covariance_type != c.covariance_type:
        raise ValueError(
            f"{what} has k={params.k}, {params.d} features, covarianceType="
            f"{params.covariance_type!r}; this fit has k={c.k}, {n_features} features, "
            f"covarianceType={c.covariance_type!r}"
        )
    return params


def _covariances_from_data(cov: np.ndarray, k: int, covariance_type: str, reg_covar: float):
    """The data covariance (full (d, d) or variances (d,)) in a covariance type's layout."""
    if covariance_type in ("full", "tied"):
        cov = cov + reg_covar * np.eye(cov.shape[0])
        return cov if covariance_type == "tied" else np.repeat(cov[None], k, axis=0)
    variances = (np.diag(cov) if cov.ndim == 2 else cov) + reg_covar
    return np.repeat(variances[None], k, 0) if covariance_type == "diag" else np.full(k, variances.mean())


def _kmeans_centers(prepared: DataFrame, passes: SparkPasses, pairs, weighted: bool):
    """Spark's KMeans for each (k, seed), on centred data divided by one global scale (an
    isotropic map, so the clustering is unchanged but offsets of 1e8 or scales of 1e-4 are
    harmless). Returns {(k, seed): centers in the data's units}."""
    mean, variances = data_moments(passes, _first_row(prepared), full=False)
    scale = float(np.sqrt(variances.mean()))
    if not scale > 0:
        if max(k for k, _ in pairs) > 1:
            raise _too_few_distinct(1, max(k for k, _ in pairs))
        scale = 1.0
    mean_col = F.array(*[F.lit(float(m)) for m in mean])
    standardized = prepared.select(
        array_to_vector(
            F.transform(F.col(FEATURES), lambda x, i: (x - F.element_at(mean_col, i + 1)) / scale)
        ).alias("features"),
        F.col(WEIGHT),
    )
    out = {}
    for k, seed in pairs:
        if k == 1:  # Spark's KMeans needs k >= 2; one cluster's center is the mean
            out[(k, seed)] = mean[None, :]
            continue
        km = KMeans(k=k, seed=seed, featuresCol="features", initMode="k-means||", maxIter=20)
        if weighted:
            km.setWeightCol(WEIGHT)
        centers = np.unique(np.asarray(km.fit(standardized).clusterCenters()), axis=0)
        if len(centers) < k:
            # KMeans returns fewer centers when the data has fewer distinct points.
            distinct = (_check_distinct(prepared, np.empty((0, len(mean))), k) - mean) / scale
            extra = [r for r in distinct if not (np.abs(centers - r).sum(axis=1) == 0).any()]
            centers = np.vstack([centers, np.asarray(extra)[: k - len(centers)]])
        out[(k, seed)] = centers * scale + mean
    return out


def initial_params(
    passes: SparkPasses,
    prepared: DataFrame,
    n_rows: int,
    n_features: int,
    candidates: Sequence[Candidate],
    init_mode: str,
    reg_covar: float,
    weighted: bool,
    fixed: Optional[kernel.MixtureParams] = None,
    explicit: Optional[ExplicitInit] = None,
) -> List[kernel.MixtureParams]:
    """Initial parameters of every candidate, with the data passes shared between them."""
    k_max = max(c.k for c in candidates)
    if n_rows < k_max:
        raise InvalidInputError(f"only {n_rows} valid row(s), fewer than k={k_max}: lower k")
    if fixed is not None:
        return [check_fixed(fixed, c, n_features, "initialModel") for c in candidates]
    if explicit is not None:
        return [_explicit_params(passes, prepared, explicit, c, n_features, reg_covar)
                for c in candidates]

    if init_mode == "random":
        X, w = _sample_rows(prepared, n_rows, candidates[0].seed, SAMPLE_ROWS)
        _check_distinct(prepared, X, k_max, w)
        origin = X[0]
        passes_ = [
            partial(kernel.random_resp_stats, origin=origin, k=c.k,
                    covariance_type=c.covariance_type, seed=c.seed)
            for c in candidates
        ]
        shifts = [kernel.moment_shift(np.repeat(origin[None], c.k, 0), c.covariance_type)
                  for c in candidates]
        stats = passes.stats(passes_, shifts, [c.covariance_type for c in candidates],
                             "random responsibilities")
        return [kernel.m_step(s, reg_covar) for s in stats]

    if init_mode == "randomFromData":
        X, w = _sample_rows(prepared, n_rows, candidates[0].seed, SAMPLE_ROWS)
        distinct = _check_distinct(prepared, X, k_max, w)
        full = any(c.covariance_type in ("full", "tied") for c in candidates)
        _, cov = data_moments(passes, X[0], full)
        out = []
        for c in candidates:
            rng = np.random.default_rng(c.seed)
            means = distinct[np.sort(rng.choice(len(distinct), size=c.k, replace=False))]
            out.append(kernel.MixtureParams(
                np.full(c.k, 1.0 / c.k), means,
                _covariances_from_data(cov, c.k, c.covariance_type, reg_covar),
                c.covariance_type,
            ))
        return out

    # Hard-assignment modes: centers per (k, seed), one assignment pass for all candidates.
    pairs = sorted({(c.k, c.seed) for c in candidates})
    if init_mode == "k-means++":
        X, w = _sample_rows(prepared, n_rows, candidates[0].seed, SAMPLE_ROWS)
        _check_distinct(prepared, X, k_max, w)
        centers: Dict[Tuple[int, int], np.ndarray] = {
            (k, seed): kernel.kmeans_plus_plus(X, k, np.random.default_rng(seed), w)
            for k, seed in pairs
        }
    else:
        centers = _kmeans_centers(prepared, passes, pairs, weighted)
    stats = passes.hard_assignment_stats(
        [centers[(c.k, c.seed)] for c in candidates], [c.covariance_type for c in candidates],
        f"{init_mode} assignment",
    )
    return [kernel.m_step(s, reg_covar) for s in stats]


def _explicit_params(passes, prepared, explicit: ExplicitInit, c: Candidate, n_features: int,
                     reg_covar: float) -> kernel.MixtureParams:
    means = np.atleast_2d(explicit.means)
    if means.shape != (c.k, n_features):
        raise ValueError(
            f"initialMeans has shape {means.shape}; this fit needs k={c.k} means of "
            f"{n_features} features"
        )
    weights = np.full(c.k, 1.0 / c.k) if explicit.weights is None else explicit.weights
    covariances = explicit.covariances
    if covariances is None:
        full = c.covariance_type in ("full", "tied")
        _, cov = data_moments(passes, _first_row(prepared), full)
        covariances = _covariances_from_data(cov, c.k, c.covariance_type, reg_covar)
    try:
        params = kernel.MixtureParams(weights, means, covariances, c.covariance_type)
    except ValueError as exc:
        raise ValueError(f"initialWeights/initialMeans/initialCovariances: {exc}") from None
    return params
