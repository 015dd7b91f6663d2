"""Initial parameters for a list of candidates (restarts, grid points) in shared data engine.

Modes: 'kmeans' (greedy k-means++ seeds on a bounded sample, Lloyd iterations over all the
rows, then one M-step from the hard assignments, as scikit-learn's default), 'k-means++' (the
same seeds and M-step without the Lloyd iterations), 'random' (random responsibilities, then
an M-step, as scikit-learn's 'random'), 'randomFromData' (k distinct rows as means, the data
covariance for every component); or fixed initial parameters (a model or explicit arrays) for
every candidate. The two k-means modes measure distances in standard deviations of each
feature (of the sample), so that the start does not depend on the features' units
(scikit-learn uses the raw units; mclust scales too). Rows with missing features
(handleInvalid='keep') take no part in any mode: the samples, assignments and moments are
those of the complete rows. Every step is a pass of the fit's pass
engine (:mod:`spark_gmm.engine`), shared by all candidates: on the driver and resident engines
no step starts a Spark job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from spark_gmm import kernel
from spark_gmm.data import InvalidInputError
from spark_gmm.engine.base import PassEngine

log = logging.getLogger("spark_gmm")

SAMPLE_ROWS = 20_000  # rows sampled to the driver for k-means++ seeds and randomFromData
KMEANS_MAX_ITER = 20  # Lloyd iterations of the 'kmeans' mode at most (Spark KMeans' default)
KMEANS_TOL = 1e-4  # ... until no center moves more, in standard deviations of the data


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


def data_moments(engine: PassEngine, origin: np.ndarray, full: bool):
    """Weighted mean (d,) and covariance ((d, d) if ``full`` else variances (d,)) of the
    prepared rows, accumulated around ``origin`` (a data row) so offsets do not cancel."""
    stats = engine.hard_assignment_stats(
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


def _sample_rows(engine: PassEngine, n_rows: int, seed: int, limit: int):
    """Up to ``limit`` distinct rows and their weights (equal rows merged), chosen by content
    and ``seed`` and sorted by features (:meth:`PassEngine.sample`): the same whatever the
    partitioning and order of the data."""
    return engine.sample(min(1.0, 2.0 * limit / max(n_rows, 1)), seed, limit)


def _distinct_of_block(X: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Up to k distinct complete rows of positive weight of one block, weight 1 appended."""
    X, w = kernel.complete_rows(X, w)
    rows = np.unique(X[w > 0], axis=0)[:k]
    return np.column_stack([rows, np.ones(len(rows))])


def _distinct_rows(engine: PassEngine, k: int) -> np.ndarray:
    """Up to k distinct rows among those of positive weight (zero weight = no row): each
    block's first k distinct rows hold at least k distinct ones when the data has them."""
    rows = engine.gather(partial(_distinct_of_block, k=k), "distinct rows")
    return np.empty((0, engine.n_features)) if rows is None else np.unique(rows[:, :-1], axis=0)[:k]


def _too_few_distinct(found: int, k: int) -> InvalidInputError:
    return InvalidInputError(
        f"the features have only {found} distinct row(s), fewer than k={k}: lower k"
    )


def _check_distinct(
    engine: PassEngine, rows: np.ndarray, k: int, weights: Optional[np.ndarray] = None
) -> np.ndarray:
    """Distinct rows (of positive weight) of a sample, topped up from all the rows when the
    sample has fewer than k."""
    distinct = np.unique(rows if weights is None else rows[weights > 0], axis=0)
    if len(distinct) < k:
        distinct = _distinct_rows(engine, k)
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
    return (
        np.repeat(variances[None], k, 0)
        if covariance_type == "diag"
        else np.full(k, variances.mean())
    )


def _lloyd(engine: PassEngine, centers: Dict[Tuple[int, int], np.ndarray], scale: np.ndarray):
    """Lloyd iterations over all the rows for every (k, seed) at once, one pass each, until
    no center moves more than ``KMEANS_TOL`` or ``KMEANS_MAX_ITER``, with distances in units
    of ``scale`` per feature. The moments of each pass are taken around the centre of the
    centers, so offsets do not cancel."""
    active = [pair for pair in sorted(centers) if pair[0] > 1]
    for iteration in range(1, KMEANS_MAX_ITER + 1):
        if not active:
            break
        stats = engine.hard_assignment_stats(
            [centers[pair] for pair in active],
            ["spherical"] * len(active),
            f"k-means iteration {iteration}",
            scale,
        )
        still = []
        for pair, s in zip(active, stats):
            centers[pair], moved = kernel.lloyd_update(s, centers[pair], scale)
            if moved > KMEANS_TOL**2:
                still.append(pair)
        active = still
    return centers


def _sample_and_distinct(engine: PassEngine, n_rows: int, candidates: Sequence[Candidate]):
    """The driver sample (rows and weights, by the first candidate's seed) and its distinct
    rows, topped up from all the rows when the sample has fewer than the largest k."""
    X, w = _sample_rows(engine, n_rows, candidates[0].seed, SAMPLE_ROWS)
    distinct = _check_distinct(engine, X, max(c.k for c in candidates), w)
    return X, w, distinct


def _random_responsibilities_init(
    engine: PassEngine, n_rows: int, candidates: Sequence[Candidate], reg_covar: float
) -> List[kernel.SufficientStats]:
    """'random': the statistics of random responsibilities for every row, per candidate."""
    X, _, _ = _sample_and_distinct(engine, n_rows, candidates)
    origin = X[0]
    functions = [
        partial(
            kernel.random_resp_stats,
            origin=origin,
            k=c.k,
            covariance_type=c.covariance_type,
            seed=c.seed,
        )
        for c in candidates
    ]
    shifts = [
        kernel.moment_shift(np.repeat(origin[None], c.k, 0), c.covariance_type) for c in candidates
    ]
    return engine.stats(
        functions, shifts, [c.covariance_type for c in candidates], "random responsibilities"
    )


def _random_rows_init(
    engine: PassEngine, n_rows: int, candidates: Sequence[Candidate], reg_covar: float
) -> List[kernel.MixtureParams]:
    """'randomFromData': k distinct rows as means, equal weights and the data covariance for
    every component."""
    X, _, distinct = _sample_and_distinct(engine, n_rows, candidates)
    full = any(c.covariance_type in ("full", "tied") for c in candidates)
    _, cov = data_moments(engine, X[0], full)
    out = []
    for c in candidates:
        rng = np.random.default_rng(c.seed)
        means = distinct[np.sort(rng.choice(len(distinct), size=c.k, replace=False))]
        out.append(
            kernel.MixtureParams(
                np.full(c.k, 1.0 / c.k),
                means,
                _covariances_from_data(cov, c.k, c.covariance_type, reg_covar),
                c.covariance_type,
            )
        )
    return out


def _kmeans_plus_plus_centers(engine: PassEngine, n_rows: int, candidates: Sequence[Candidate]):
    """k-means++ centers per (k, seed) on the driver sample, and the scale of the distances
    (the standard deviation of each feature of the sample)."""
    X, w, distinct = _sample_and_distinct(engine, n_rows, candidates)
    if len(distinct) > len(np.unique(X[w > 0], axis=0)):  # topped up from all the rows
        X, w = distinct, np.ones(len(distinct))
    scale = kernel.feature_scale(X, w)  # distances in standard deviations of each feature
    centers: Dict[Tuple[int, int], np.ndarray] = {
        (k, seed): kernel.kmeans_plus_plus(X, k, np.random.default_rng(seed), w, scale)
        for k, seed in sorted({(c.k, c.seed) for c in candidates})
    }
    return centers, scale


def _hard_assignment_init(
    engine: PassEngine,
    n_rows: int,
    candidates: Sequence[Candidate],
    reg_covar: float,
    mode: str,
    lloyd: bool,
) -> List[kernel.SufficientStats]:
    """'kmeans' (``lloyd``) and 'k-means++': the statistics of hard assignments to centers
    per (k, seed) (:func:`initial_centers`), in one pass for all the candidates."""
    centers, scale = initial_centers(engine, n_rows, candidates, lloyd)
    return engine.hard_assignment_stats(
        [centers[(c.k, c.seed)] for c in candidates],
        [c.covariance_type for c in candidates],
        f"{mode} assignment",
        scale,
    )


def initial_centers(
    engine: PassEngine, n_rows: int, candidates: Sequence[Candidate], lloyd: bool
) -> Tuple[Dict[Tuple[int, int], np.ndarray], np.ndarray]:
    """(centers per (k, seed), the scale of the distances): k-means++ seeds on the driver
    sample, refined by Lloyd iterations over all the rows if ``lloyd`` ('kmeans')."""
    centers, scale = _kmeans_plus_plus_centers(engine, n_rows, candidates)
    if lloyd:
        centers = _lloyd(engine, centers, scale)
    return centers, scale


# The initialisation of each mode of spark_gmm.choices.INIT_MODES, called with
# (engine, n_rows, candidates, reg_covar): statistics of initial responsibilities, or
# initial parameters, per candidate.
_INIT_BY_MODE: Dict[str, Callable[..., list]] = {
    "kmeans": partial(_hard_assignment_init, mode="kmeans", lloyd=True),
    "k-means++": partial(_hard_assignment_init, mode="k-means++", lloyd=False),
    "random": _random_responsibilities_init,
    "randomFromData": _random_rows_init,
}


def as_params(start, reg_covar: float) -> kernel.MixtureParams:
    """Initial parameters of a start of :func:`initial_starts`: statistics of initial
    responsibilities through one M-step, parameters as they are."""
    if isinstance(start, kernel.SufficientStats):
        return kernel.m_step(start, reg_covar)
    return start


def initial_starts(
    engine: PassEngine,
    n_rows: int,
    n_features: int,
    candidates: Sequence[Candidate],
    init_mode: str,
    reg_covar: float,
    weighted: bool,
    fixed: Optional[kernel.MixtureParams] = None,
    explicit: Optional[ExplicitInit] = None,
    n_incomplete: int = 0,
) -> list:
    """The start of every candidate, with the data passes shared between them: the
    statistics of its initial responsibilities ('kmeans', 'k-means++', 'random': scikit-learn
    starts from responsibilities too) or its initial parameters ('randomFromData', fixed or
    explicit ones). Of the ``n_rows`` valid rows, ``n_incomplete`` have missing features
    (handleInvalid='keep'): every initialisation mode uses the complete rows only."""
    k_max = max(c.k for c in candidates)
    if n_rows < k_max:
        raise InvalidInputError(f"only {n_rows} valid row(s), fewer than k={k_max}: lower k")
    if fixed is not None:  # reads no rows
        return [check_fixed(fixed, c, n_features, "initialModel") for c in candidates]
    n_complete = n_rows - n_incomplete
    if explicit is None:
        needed = k_max
    else:  # explicit covariances read no rows; otherwise the data covariance is taken
        needed = 0 if explicit.covariances is not None else 1
    if n_complete < needed:
        raise InvalidInputError(
            f"only {n_complete} row(s) without missing features; the initialisation "
            + (
                "(initialMeans without initialCovariances: the data covariance) "
                if explicit is not None
                else f"(initMode={init_mode!r}) "
            )
            + f"uses those and needs {needed}: lower k, give initialModel or initial "
            "parameters, or fill some features"
        )
    if explicit is not None:
        return [_explicit_params(engine, explicit, c, n_features, reg_covar) for c in candidates]
    return _INIT_BY_MODE[init_mode](engine, n_complete, candidates, reg_covar)


def _explicit_params(
    engine, explicit: ExplicitInit, c: Candidate, n_features: int, reg_covar: float
) -> kernel.MixtureParams:
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
        _, cov = data_moments(engine, engine.first_row(), full)
        covariances = _covariances_from_data(cov, c.k, c.covariance_type, reg_covar)
    try:
        params = kernel.MixtureParams(weights, means, covariances, c.covariance_type)
    except ValueError as exc:
        raise ValueError(f"initialWeights/initialMeans/initialCovariances: {exc}") from None
    return params
