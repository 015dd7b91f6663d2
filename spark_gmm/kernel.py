"""Pure NumPy EM kernel for Gaussian mixtures (no pyspark import, ever).

Shapes: n rows, d features, k components. Covariance layouts follow scikit-learn:
full (k, d, d), tied (d, d), diag (k, d), spherical (k,).

The Spark layer calls :func:`accumulate_stats` once per partition (or Arrow batch), adds the
resulting :class:`SufficientStats` on the driver and calls :func:`m_step`. The same functions
drive the single-process reference fit :func:`fit_em`, so Spark and NumPy share one loop
(:func:`run_em`).

Numerics: log-space E-step with precision Cholesky factors and log-sum-exp, as scikit-learn.
Everything is computed relative to points fixed before the pass, so large offsets (data at
1e8) do not cancel: rows minus the centre of the means, and moments accumulated around a
*shift* (:func:`stats_shift`) that the M-step subtracts again.

Every covariance type has two paths, chosen from the parameters alone (so the driver and
every task agree). While every component's mean lies within ``sqrt(EXPANSION_LIMIT)`` of its
own standard deviations of the centre of the means, the Mahalanobis terms are expanded around
that centre and shared by all components in matrix products: for full/tied, row products
Z (n, d(d+1)/2) times a (d(d+1)/2, k) matrix, the same Z giving the second moments in one
product; for diag/spherical, the squared rows times the precisions (rounding: about
eps * EXPANSION_LIMIT in a log-density). Components further apart take the exact
per-component path: ``X - mu_j`` for each j, and moments around each mean.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import linalg

from spark_gmm.hashing import hash_stream, hash_uniforms, row_hash

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

# The kernel's own row blocks (within the engines' blocks of spark_gmm.engine.blocks): the
# temporaries of about CACHE_ELEMENTS doubles (1 MiB) per block stay in a core's L2 cache;
# never fewer than MIN_BLOCK_ROWS rows (BLAS calls amortised) unless the temporaries would then
# exceed TEMPORARY_ELEMENTS doubles (8 MiB), so a pass's memory is bounded whatever its row
# count, d or k. jobs/benchmarks/bench_pass_read.py times block sizes.
CACHE_ELEMENTS = 1 << 17
TEMPORARY_ELEMENTS = 1 << 20
MIN_BLOCK_ROWS = 256
BLOCK_ROWS = 4096
# Largest squared Mahalanobis distance (in a component's own metric) from the centre of the
# means to the component's mean for which the expansion around that centre is used: its
# rounding error is about eps * this in each log-density and, relative, in each covariance
# (tests/test_kernel.py holds both below 1e-9 at the limit).
EXPANSION_LIMIT = 1e5
_LOG_2PI = math.log(2.0 * math.pi)


class CovarianceError(ValueError):
    """A covariance matrix is not positive definite (a collapsed or degenerate component)."""


def check_covariance_type(covariance_type: str) -> str:
    """``covariance_type`` if it is one of ``COVARIANCE_TYPES``, else a ValueError."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covarianceType must be one of {', '.join(COVARIANCE_TYPES)}, got {covariance_type!r}"
        )
    return covariance_type


def covariance_shape(k: int, d: int, covariance_type: str) -> tuple:
    """The shape of the covariances of k components of d features: full (k, d, d), tied
    (d, d), diag (k, d), spherical (k,)."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
        check_covariance_type(covariance_type)
    ]


def n_parameters(k: int, d: int, covariance_type: str) -> int:
    """Free parameters: k*d means + (k-1) weights + the covariance's own (scikit-learn's count)."""
    cov = {
        "full": k * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
    }[check_covariance_type(covariance_type)]
    return int(cov + k * d + k - 1)


def default_block_rows(k: int, d: int, covariance_type: str = "full") -> int:
    """Rows per block for temporaries of k log-densities plus, per row, the d(d+1)/2 pair
    products of full/tied (or the d squares of diag/spherical) and d centred features."""
    width = k + d + (d * (d + 1) // 2 if covariance_type in ("full", "tied") else d)
    rows = max(CACHE_ELEMENTS // width, min(MIN_BLOCK_ROWS, TEMPORARY_ELEMENTS // width))
    return max(1, min(BLOCK_ROWS, rows))


# --------------------------------------------------------------------------- parameters


_POTRF, _TRTRI = linalg.lapack.get_lapack_funcs(("potrf", "trtri"), dtype=np.float64)


def precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factor of each precision matrix (same layout as the covariances).

    For full/tied, ``P`` with ``P @ P.T == inv(cov)`` (upper triangular), as scikit-learn.
    For diag/spherical, ``1 / sqrt(variance)``. Raises :class:`CovarianceError` naming the
    component when a covariance is not positive definite.
    """
    advice = "lower k, raise regCovar, or scale the features"
    if covariance_type in ("full", "tied"):
        covs = covariances[None] if covariance_type == "tied" else covariances
        d = covs.shape[-1]
        out = np.empty_like(covs)
        finite = np.isfinite(covs).reshape(len(covs), -1).all(axis=1)
        for j, cov in enumerate(covs):
            # LAPACK directly (potrf, then trtri for the triangular inverse): scipy's checked
            # wrappers cost more than the factorisation of a small matrix
            cov_chol, info = _POTRF(cov, lower=1, clean=1) if finite[j] else (None, -1)
            if info == 0:
                inverse, info = _TRTRI(cov_chol, lower=1)
            if info != 0:
                which = "the tied covariance" if covariance_type == "tied" else f"component {j}"
                why = (
                    "it holds NaN or infinite values"
                    if not finite[j]
                    else f"leading minor {info} of {d} is not positive"
                )
                raise CovarianceError(
                    f"covariance of {which} is not positive definite ({why}); {advice}"
                ) from None
            out[j] = inverse.T
        return out[0] if covariance_type == "tied" else out
    if not np.all(np.isfinite(covariances)) or np.any(covariances <= 0.0):
        ok = np.isfinite(covariances) & (covariances > 0.0)
        bad = np.flatnonzero(~ok.reshape(len(covariances), -1).all(1))
        raise CovarianceError(f"variance of component(s) {bad.tolist()} is not positive; {advice}")
    return 1.0 / np.sqrt(covariances)


@dataclass(frozen=True, eq=False)
class MixtureParams:
    """Fitted or candidate mixture parameters; precision Cholesky factors derived on creation.

    weights (k,), means (k, d), covariances in the layout of ``covariance_type``.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    covariance_type: str
    precisions_cholesky: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        check_covariance_type(self.covariance_type)
        weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        means = np.atleast_2d(np.asarray(self.means, dtype=np.float64))
        covariances = np.asarray(self.covariances, dtype=np.float64)
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got {weights.shape}")
        expected = covariance_shape(k, d, self.covariance_type)
        if covariances.shape != expected:
            raise ValueError(
                f"{self.covariance_type} covariances must have shape {expected}, "
                f"got {covariances.shape}"
            )
        if not (np.all(np.isfinite(weights)) and np.all(weights >= 0) and weights.sum() > 0):
            raise ValueError("weights must be finite, non-negative and not all zero")
        if not np.all(np.isfinite(means)):
            raise ValueError("means must be finite")
        # normalised unless they sum to 1 already up to rounding: weights that come back
        # from a checkpoint (or an M-step) are then kept bit for bit
        total = weights.sum()
        object.__setattr__(
            self, "weights", weights.copy() if abs(total - 1.0) <= 1e-12 else weights / total
        )
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "covariances", covariances)
        object.__setattr__(
            self, "precisions_cholesky", precision_cholesky(covariances, self.covariance_type)
        )

    @property
    def k(self) -> int:
        """The number of components."""
        return self.means.shape[0]

    @property
    def d(self) -> int:
        """The number of features."""
        return self.means.shape[1]

    def full_covariances(self) -> np.ndarray:
        """Covariances as (k, d, d) matrices whatever the type."""
        k, d = self.means.shape
        t = self.covariance_type
        if t == "full":
            return self.covariances.copy()
        if t == "tied":
            return np.repeat(self.covariances[None], k, axis=0)
        variances = self.covariances if t == "diag" else np.repeat(self.covariances[:, None], d, 1)
        return np.einsum("kd,de->kde", variances, np.eye(d))

    def n_parameters(self) -> int:
        """The mixture's free parameters (:func:`n_parameters`: what BIC and AIC count)."""
        return n_parameters(self.k, self.d, self.covariance_type)

    def derived(self, name: str, compute: Callable[["MixtureParams"], Any]) -> Any:
        """``compute(self)``, computed once per parameters object (what every block and
        partition of a pass derives from the same parameters). Not pickled."""
        cache = self.__dict__.get("_derived")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_derived", cache)
        if name not in cache:
            cache[name] = compute(self)
        return cache[name]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_derived", None)
        return state


# --------------------------------------------------------------------------- E-step


def _center(means: np.ndarray) -> np.ndarray:
    """A point inside the data's range, subtracted before matrix-product expansions."""
    return means.mean(axis=0)


@dataclass(frozen=True, eq=False)
class _Quadratic:
    """Full/tied log-densities as one quadratic form in ``Xc = X - centre``:
    maha = pair_precisions @ Z + linear @ Xc + offset, with Z the row products
    ``Xc[a] * Xc[b]`` for a <= b (each pair once, off-diagonal precisions doubled).

    Feature-major: Xc is (d, n), Z (d(d+1)/2, n) and log-densities (k, n), so each pair
    product is one contiguous multiply and the per-row max and sum over components run along
    contiguous rows: 1M x 10, k=8 takes 0.17 s per pass on one core against 0.34 s for the
    row-major layout (``jobs/benchmarks/bench_pass_read.py``)."""

    centre: np.ndarray  # (d,)
    pair_precisions: np.ndarray  # (k, d(d+1)/2)
    linear: np.ndarray  # (k, d)
    offset: np.ndarray  # (k,)
    log_det: np.ndarray  # (k,) log det of each precision Cholesky factor
    starts: np.ndarray  # (d + 1,) pairs (a, a..d-1) fill Z rows starts[a]:starts[a+1]

    def products(self, X: np.ndarray):
        """Rows X (n, d) -> (Xc (d, n), Z (d(d+1)/2, n))."""
        n, d = X.shape
        Xc = np.empty((d, n))
        np.subtract(X.T, self.centre[:, None], out=Xc)
        Z = np.empty((self.starts[-1], n))
        for a in range(d):
            np.multiply(Xc[a], Xc[a:], out=Z[self.starts[a] : self.starts[a + 1]])
        return Xc, Z

    def log_prob(self, Xc: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """log N(x_i | mean_j, cov_j) as (k, n)."""
        maha = self.pair_precisions @ Z
        maha += self.linear @ Xc
        maha += self.offset[:, None]
        np.maximum(maha, 0.0, out=maha)  # rounding in the expansion can dip below zero
        log_prob = maha
        log_prob *= -0.5
        log_prob += (self.log_det - 0.5 * Xc.shape[0] * _LOG_2PI)[:, None]
        return log_prob


def _full_cholesky(params: MixtureParams) -> np.ndarray:
    """Full/tied precision Cholesky factors as (k, d, d)."""
    chol = params.precisions_cholesky
    if params.covariance_type == "full":
        return chol
    k, d = params.means.shape
    return np.broadcast_to(chol, (k, d, d))


def _centre_offsets(params: MixtureParams) -> np.ndarray:
    """(k,) squared Mahalanobis distance, in each component's own metric, from the centre
    of the means to the component's mean."""
    mu = params.means - _center(params.means)
    t = params.covariance_type
    if t in ("full", "tied"):
        y = np.einsum("kd,kde->ke", mu, _full_cholesky(params))
        return np.einsum("ke,ke->k", y, y)
    prec = params.precisions_cholesky**2
    return (mu**2 * (prec if t == "diag" else prec[:, None])).sum(axis=1)


def _expanded(params: MixtureParams) -> bool:
    """Whether every mean is within ``EXPANSION_LIMIT`` of the centre of the means (see the
    module docstring); NaN counts as beyond."""
    return bool(_centre_offsets(params).max() <= EXPANSION_LIMIT)


def _quadratic(params: MixtureParams) -> Optional[_Quadratic]:
    """The quadratic form of full/tied parameters, or None for diag/spherical or where it
    would lose precision (not :func:`_expanded`); built once per parameters object."""
    return params.derived("quadratic", _build_quadratic)


@functools.lru_cache(maxsize=None)
def _triu_indices(d: int) -> Tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(d)`` (row-major: the pairs (a, a..d-1) in turn), read-only."""
    rows, cols = np.triu_indices(d)
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def _build_quadratic(params: MixtureParams) -> Optional[_Quadratic]:
    if params.covariance_type not in ("full", "tied"):
        return None
    offset = _centre_offsets(params)
    if not offset.max() <= EXPANSION_LIMIT:
        return None
    d = params.d
    chol = _full_cholesky(params)
    centre = _center(params.means)
    mu = params.means - centre
    precisions = chol @ np.swapaxes(chol, 1, 2)  # (k, d, d)
    rows, cols = _triu_indices(d)
    pair = precisions[:, rows, cols] * np.where(rows == cols, 1.0, 2.0)
    return _Quadratic(
        centre,
        np.ascontiguousarray(pair),
        -2.0 * np.einsum("kde,ke->kd", precisions, mu),
        offset,
        np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1),
        np.concatenate([[0], np.cumsum(np.arange(d, 0, -1))]),
    )


def _diagonal_far_apart(params: MixtureParams) -> bool:
    """Diag/spherical parameters not :func:`_expanded`: densities and moments are then taken
    around each mean instead of the centre of the means (decided once per parameters)."""
    return params.covariance_type in ("diag", "spherical") and not params.derived(
        "expanded", _expanded
    )


def log_gaussian_prob(X: np.ndarray, params: MixtureParams) -> np.ndarray:
    """log N(x_i | mean_j, cov_j) for every row and component: (n, d) -> (n, k)."""
    return _log_density(params)(X)


def _log_density(params: MixtureParams) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`log_gaussian_prob` as a function of row blocks: the path is chosen (and the
    quadratic form built) once for all blocks."""
    quadratic = _quadratic(params)
    if quadratic is not None:
        return lambda X: quadratic.log_prob(*quadratic.products(X)).T
    far = _diagonal_far_apart(params)
    return lambda X: _log_gaussian_prob_direct(X, params, far)


def _log_gaussian_prob_direct(X: np.ndarray, params: MixtureParams, far: bool) -> np.ndarray:
    """:func:`log_gaussian_prob` without the quadratic form: per component for full/tied and
    for ``far`` diag/spherical, else expanded around the centre of the means."""
    n, d = X.shape
    means, prec_chol, t = params.means, params.precisions_cholesky, params.covariance_type
    k = means.shape[0]
    if t in ("full", "tied"):
        chols = prec_chol if t == "full" else None
        log_det = (
            np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
            if t == "full"
            else np.full(k, np.log(np.diag(prec_chol)).sum())
        )
        maha = np.empty((n, k))
        for j in range(k):
            y = (X - means[j]) @ (chols[j] if t == "full" else prec_chol)
            maha[:, j] = np.einsum("ij,ij->i", y, y)
    elif far:
        prec = prec_chol**2 if t == "diag" else np.repeat((prec_chol**2)[:, None], d, axis=1)
        log_det = np.log(prec_chol).sum(axis=1) if t == "diag" else d * np.log(prec_chol)
        maha = np.empty((n, k))
        for j in range(k):
            maha[:, j] = ((X - means[j]) ** 2) @ prec[j]
    else:
        c = _center(means)
        Xc = X - c
        Mc = means - c
        if t == "diag":
            prec = prec_chol**2  # (k, d)
            log_det = np.log(prec_chol).sum(axis=1)
            maha = (Mc**2 * prec).sum(axis=1) - 2.0 * (Xc @ (Mc * prec).T) + (Xc**2) @ prec.T
        else:
            prec = prec_chol**2  # (k,)
            log_det = d * np.log(prec_chol)
            maha = (
                (Mc**2).sum(axis=1) * prec
                - 2.0 * (Xc @ Mc.T) * prec
                + np.outer(np.einsum("ij,ij->i", Xc, Xc), prec)
            )
        np.maximum(maha, 0.0, out=maha)  # rounding in the expansion can dip below zero
    return -0.5 * (d * _LOG_2PI + maha) + log_det


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - m_safe[:, None]).sum(axis=1)) + m_safe


def _weighted_log_prob(X: np.ndarray, params: MixtureParams) -> np.ndarray:
    """log(weight_j) + log N(x_i | mean_j, cov_j): (n, d) -> (n, k)."""
    with np.errstate(divide="ignore"):
        return log_gaussian_prob(X, params) + np.log(params.weights)


def _block_weighted_log_prob(params: MixtureParams) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`_weighted_log_prob` as a function of row blocks (see :func:`_log_density`),
    made once per parameters."""
    return params.derived("weighted_log_prob", _make_block_weighted_log_prob)


def _make_block_weighted_log_prob(params: MixtureParams) -> Callable[[np.ndarray], np.ndarray]:
    density = _log_density(params)
    with np.errstate(divide="ignore"):
        log_weights = np.log(params.weights)
    return lambda X: density(X) + log_weights


def e_step(X: np.ndarray, params: MixtureParams):
    """Returns (log p(x_i) (n,), log responsibilities (n, k))."""
    weighted = _weighted_log_prob(X, params)
    log_prob_norm = _logsumexp_rows(weighted)
    return log_prob_norm, weighted - log_prob_norm[:, None]


def responsibilities(X: np.ndarray, params: MixtureParams):
    """(log p(x_i) (n,), responsibilities (n, k), most probable component (n,)).

    The same quantities as :func:`e_step`, with one ``exp`` over (n, k) instead of two.
    """
    return _normalise(_weighted_log_prob(X, params))


def _normalise(weighted: np.ndarray, axis: int = 1):
    """log(w_j) + log N(x_i | j), components along ``axis`` ((n, k), or (k, n) with axis 0)
    -> (log p(x_i) (n,), responsibilities in the same layout, most probable component (n,))."""
    m = weighted.max(axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    resp = np.exp(weighted - m_safe)
    total = resp.sum(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        resp /= total
        log_prob_norm = (np.log(total) + m_safe).reshape(-1)
    return log_prob_norm, resp, weighted.argmax(axis=axis)


# --------------------------------------------------------------------------- missing features
#
# Rows with missing features (NaN) are kept under handleInvalid='keep', their missing features
# marginalised: exact EM for values missing at random. A row's E-step uses the marginal density
# of its observed features o in each component j, N(x_o | mu_o, S_oo); its moments use the
# conditional expectation of its missing features m, x^_m = mu_m + S_mo S_oo^-1 (x_o - mu_o),
# and add their conditional covariance C = S_mm - S_mo S_oo^-1 S_om to the second moment
# (pomegranate's and Ghahramani & Jordan's EM). Diag/spherical components make the features
# independent (x^_m = mu_m, C = the variances of m): every such row is handled at once with
# masks. Full/tied rows need per pattern of missing features only the m x m blocks of the
# precision (:func:`_incomplete_full`), derived per block. Complete rows never enter this
# path: a block's complete rows take the E-step above, its others come after them.


def has_missing(X: np.ndarray) -> bool:
    """Whether X has a NaN (a missing feature): one reduction over X (docs/performance.md
    times it)."""
    return X.size > 0 and bool(np.isnan(X.min()))


def complete_rows(X: np.ndarray, sample_weight: Optional[np.ndarray]):
    """(X, sample_weight) restricted to the rows without missing features (the inputs when
    every row is complete): what the initialisation uses."""
    if not has_missing(X):
        return X, sample_weight
    keep = ~np.isnan(X).any(axis=1)
    return X[keep], None if sample_weight is None else np.asarray(sample_weight)[keep]


def missing_pattern_keys(absent: np.ndarray) -> np.ndarray:
    """A key per row of its pattern of missing features (``absent`` (n, d) bool): uint64 (the
    pattern's bits, feature 0 lowest) for d <= 64, else the packed bits as bytes. Complete
    rows have the smallest key (0); sorting rows by key groups them by pattern."""
    codes = np.packbits(absent, axis=1, bitorder="little")
    if codes.shape[1] <= 8:
        padded = np.zeros((codes.shape[0], 8), dtype=np.uint8)
        padded[:, : codes.shape[1]] = codes
        return padded.view("<u8").ravel()
    return np.ascontiguousarray(codes).view(np.dtype((np.void, codes.shape[1]))).ravel()


def _pattern_index(absent: np.ndarray):
    """Rows' missing masks (n, d) -> (the distinct patterns (p, d) bool, ``order``, bounds
    (p + 1,)): the rows of pattern g are ``order[bounds[g]:bounds[g + 1]]``. Rows already
    grouped by pattern (the engines' blocks are: :func:`spark_gmm.engine.blocks.canonical`)
    are read run by run and ``order`` is None (the rows as they are); others are sorted."""
    keys = missing_pattern_keys(absent)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    if len(np.unique(keys[starts])) == len(starts):  # one run per pattern
        return absent[starts], None, np.r_[starts, len(keys)]
    order = np.argsort(keys, kind="stable")
    starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
    return absent[order[starts]], order, np.r_[starts, len(keys)]


def _precisions(params: MixtureParams) -> np.ndarray:
    """Full/tied precision matrices (k, d, d), from the precision Cholesky factors."""
    chol = _full_cholesky(params)
    return chol @ np.swapaxes(chol, 1, 2)


# A pattern with at least this many rows in a block is marginalised on its own (its matrices
# applied to all its rows by matrix products); the rows of rarer patterns are marginalised
# together, per count of missing features, each row gathering its pattern's matrices.
GROUP_ROWS = 64


def _incomplete_full(X, w, absent, params, log_weights, block, stats):
    """E-step of full/tied rows with missing features: (log p (n,), responsibilities (n, k),
    labels (n,)); their moments added into ``stats`` when given.

    With the precision L = inv(S) and z the row minus the mean, missing entries zero: the
    conditional expectation of the missing deviations is -inv(L_mm) (L z)_m, and the row
    completed with it, f, gives the marginal's Mahalanobis distance as f^T L f (a sum of
    squares through the precision Cholesky factor), log det S_oo = log det S + log det L_mm,
    and the conditional covariance inv(L_mm). So only the m x m blocks L_mm depend on the
    pattern: they are derived per pattern, one batch per count of missing features (at most
    TEMPORARY_ELEMENTS values of them at a time)."""
    rows = _IncompleteRows(X, w, absent, params, log_weights, stats)
    k = params.k
    for count in np.unique(rows.counts):
        piece = max(1, TEMPORARY_ELEMENTS // (k * count * count))
        of_count = np.flatnonzero(rows.counts == count)
        for first in range(0, len(of_count), piece):
            rows.marginalise_patterns(of_count[first : first + piece], min(block, piece))
    return rows.out


class _IncompleteRows:
    """A block's full/tied rows with missing features, grouped by pattern
    (:func:`_pattern_index`), and the E-step outputs filled in as they are marginalised."""

    def __init__(self, X, w, absent, params, log_weights, stats):
        n = X.shape[0]
        self.X, self.w, self.absent, self.params, self.stats = X, w, absent, params, stats
        self.out = (np.empty(n), np.empty((n, params.k)), np.empty(n, np.intp))
        self.patterns, self.order, self.bounds = _pattern_index(absent)
        self.sizes, self.counts = np.diff(self.bounds), self.patterns.sum(axis=1)
        precisions = params.derived("precisions", _precisions)
        self.factors = (precisions, _full_cholesky(params), log_weights)

    def rows_of(self, patterns: np.ndarray) -> np.ndarray:
        """The rows of ``patterns`` (indices into the block's patterns), pattern after
        pattern, as indices."""
        ranges = [np.arange(self.bounds[g], self.bounds[g + 1]) for g in patterns]
        rows = np.concatenate(ranges)
        return rows if self.order is None else self.order[rows]

    def marginalise_patterns(self, these: np.ndarray, block: int) -> None:
        """Marginalises the rows of the patterns ``these`` (one count of missing features):
        a frequent pattern's rows by matrix products with its matrices, the rarer patterns'
        rows together, ``block`` at a time, each gathering its pattern's; then adds each
        pattern's conditional covariance, weighted by its rows' responsibilities, into the
        statistics."""
        k, count = self.params.k, int(self.counts[these[0]])
        missing = np.nonzero(self.patterns[these])[1].reshape(len(these), count)  # (p, c)
        block_mm = self.factors[0][:, missing[:, :, None], missing[:, None, :]]  # (k, p, c, c)
        cov_mm = np.linalg.inv(block_mm)  # the conditional covariances
        log_det_mm = np.linalg.slogdet(block_mm)[1]  # (k, p)
        pattern_weight = np.zeros((k, len(these)))  # sum of r w over each pattern's rows
        frequent = self.sizes[these] >= GROUP_ROWS
        for q in np.flatnonzero(frequent):
            end = int(self.bounds[these[q] + 1])
            for start in range(int(self.bounds[these[q]]), end, block):
                rows = slice(start, min(start + block, end))  # the rows in the block's order
                rows = rows if self.order is None else self.order[rows]
                rw = self.marginalise(rows, missing[q], cov_mm[:, q], log_det_mm[:, q, None])
                pattern_weight[:, q] += rw.sum(axis=1)
        rare = np.flatnonzero(~frequent)
        rows = self.rows_of(these[rare]) if len(rare) else np.empty(0, np.intp)
        position = np.repeat(rare, self.sizes[these[rare]])
        for start in range(0, len(rows), block):
            at = position[start : start + block]
            rw = self.marginalise(
                rows[start : start + block], missing[at], cov_mm[:, at], log_det_mm[:, at]
            )
            for j in range(k):
                pattern_weight[j] += np.bincount(at, weights=rw[j], minlength=len(these))
        if self.stats is not None:
            np.add.at(
                self.stats.second,
                (slice(None), missing[:, :, None], missing[:, None, :]),
                pattern_weight[:, :, None, None] * cov_mm,
            )

    def marginalise(self, rows, missing, cov_mm, log_det_mm) -> np.ndarray:
        """:func:`_marginal_rows` of ``rows``, its outputs stored; returns r w (k, r)."""
        X, w = self.X[rows], self.w[rows]
        log_p, resp, labels = _marginal_rows(
            X,
            self.absent[rows],
            w,
            missing,
            cov_mm,
            log_det_mm,
            self.params,
            self.factors,
            self.stats,
        )
        self.out[0][rows], self.out[1][rows], self.out[2][rows] = log_p, resp.T, labels
        return resp * w


def _marginal_rows(X, absent, w, missing, cov_mm, log_det_mm, params, factors, stats):
    """(log p (r,), responsibilities (k, r), labels (r,)) of rows X (r, d) with c missing
    features each (see :func:`_incomplete_full`); their first and second moments added into
    ``stats`` when given (the conditional covariances by the caller, per pattern).

    One pattern for all the rows: ``missing`` (c,), its conditional covariances ``cov_mm``
    (k, c, c) and log det L_mm ``log_det_mm`` (k, 1); or one per row: (r, c), (k, r, c, c)
    and (k, r). ``factors``: the precisions (k, d, d), their Cholesky factors and the log
    weights."""
    precisions, chol, log_weights = factors
    k, d = params.k, params.d
    r = X.shape[0]
    observed = (~absent).astype(np.float64)
    deviations = np.where(absent, 0.0, X)[None] - params.means[:, None, :]  # (k, r, d)
    deviations *= observed  # zero at the missing features
    pulled = deviations @ precisions  # L z, of which the missing features' entries count
    if missing.ndim == 1:
        deviations[:, :, missing] = -pulled[:, :, missing] @ cov_mm  # cov_mm is symmetric
    else:  # each row's missing features, as positions in the flattened (k, r, d) arrays
        flat = (np.arange(k * r).reshape(k, r, 1) * d + missing[None]).reshape(-1)
        pulled = pulled.reshape(-1)[flat].reshape(k, r, -1)
        deviations.reshape(-1)[flat] = -np.einsum("krcm,krm->krc", cov_mm, pulled).reshape(-1)
    # deviations: now the completed rows - means
    y = deviations @ chol
    np.square(y, out=y)
    weighted = -0.5 * (y @ np.ones(d) + (d - missing.shape[-1]) * _LOG_2PI)
    weighted += np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)[:, None]
    weighted -= 0.5 * log_det_mm
    weighted += log_weights[:, None]
    log_p, resp, labels = _normalise_components(weighted)
    if stats is not None:
        rw = resp * w
        filled = deviations
        filled += (params.means - stats.shift)[:, None, :]  # the completed rows - shift
        stats.first += (rw[:, None, :] @ filled)[:, 0]
        stats.second += np.swapaxes(filled * rw[:, :, None], 1, 2) @ filled
    return log_p, resp, labels


def _normalise_components(weighted: np.ndarray):
    """:func:`_normalise` of (k, n) log-probabilities whose per-row maximum is finite (those
    of rows with missing features: a marginal density is finite), without its guards."""
    top = weighted.max(axis=0)
    resp = np.exp(weighted - top)
    total = resp.sum(axis=0)
    resp /= total
    return np.log(total) + top, resp, weighted.argmax(axis=0)


def _incomplete_diagonal(X, w, absent, params, log_weights, block, stats):
    """E-step of diag/spherical rows with missing features, in blocks of rows: (log p (n,),
    responsibilities (n, k), labels (n,)); their moments added into ``stats`` when given.
    As for complete rows, the squared distances are expanded around the centre of the means
    unless the components are too far apart (:func:`_diagonal_far_apart`), then taken per
    component; missing features count zero in the distances."""
    n, k, d = X.shape[0], params.k, params.d
    variances = params.covariances
    if params.covariance_type == "spherical":
        variances = np.repeat(variances[:, None], d, axis=1)
    precisions, log_variances = 1.0 / variances, np.log(variances)
    far = _diagonal_far_apart(params)
    centre = _center(params.means)
    offsets = params.means - centre
    log_prob_norm, resp_out, labels_out = np.empty(n), np.empty((n, k)), np.empty(n, np.intp)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        ab = absent[rows]
        observed = (~ab).astype(np.float64)
        Xb = np.where(ab, 0.0, X[rows])  # missing features as 0, then masked again below
        if far:
            maha = np.empty((Xb.shape[0], k))
            for j in range(k):
                dev = (Xb - params.means[j]) * observed
                maha[:, j] = (dev * dev) @ precisions[j]
        else:
            Xc = (Xb - centre) * observed
            maha = (Xc * Xc) @ precisions.T
            maha -= 2.0 * (Xc @ (offsets * precisions).T)
            maha += observed @ (offsets**2 * precisions).T
            np.maximum(maha, 0.0, out=maha)  # rounding in the expansion can dip below zero
        weighted = -0.5 * (maha + observed @ log_variances.T)
        weighted -= (0.5 * _LOG_2PI) * observed.sum(axis=1)[:, None]
        weighted += log_weights
        log_prob_norm[rows], resp, labels_out[rows] = _normalise(weighted)
        resp_out[rows] = resp
        if stats is None:
            continue
        rw = resp * w[rows][:, None]
        missing_weight = rw.T @ (1.0 - observed)  # (k, d): sum of r w over missing cells
        if far:  # moments around each mean (stats_shift)
            for j in range(k):
                filled = np.where(ab, params.means[j], Xb) - stats.shift[j]
                stats.first[j] += rw[:, j] @ filled
                stats.second[j] += rw[:, j] @ (filled * filled)
        else:  # around the centre of the means: observed deviations, then the missing ones
            stats.first += rw.T @ Xc + missing_weight * offsets
            stats.second += rw.T @ (Xc * Xc) + missing_weight * offsets**2
        stats.second += missing_weight * variances
    return log_prob_norm, resp_out, labels_out


def _incomplete_e_step(X, w, absent, params, block, stats=None):
    """(log p (n,), responsibilities (n, k), labels (n,)) of rows with missing features
    (``absent`` (n, d) their NaN mask), their statistics added into ``stats`` when given."""
    log_weights = params.derived("log_weights", _log_weights)
    if params.covariance_type in ("full", "tied"):
        out = _incomplete_full(X, w, absent, params, log_weights, block, stats)
    else:
        out = _incomplete_diagonal(X, w, absent, params, log_weights, block, stats)
    if stats is not None:
        stats.resp += (out[1] * w[:, None]).sum(axis=0)
        stats.counts += np.bincount(out[2], minlength=params.k)
        stats.log_likelihood += float(w @ out[0])
        stats.weight_sum += float(w.sum())
        stats.n_rows += X.shape[0]
    return out


def score_samples(X: np.ndarray, params: MixtureParams, block_rows: Optional[int] = None):
    """Per-row log density log p(x_i): (n, d) -> (n,)."""
    return predict(X, params, block_rows)[2]


def predict(X: np.ndarray, params: MixtureParams, block_rows: Optional[int] = None):
    """(labels (n,) int32, probabilities (n, k), log densities (n,)), computed in row blocks."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    block = block_rows or default_block_rows(params.k, params.d, params.covariance_type)
    weighted = _block_weighted_log_prob(params)
    labels = np.empty(n, dtype=np.int32)
    proba = np.empty((n, params.k))
    logp = np.empty(n)
    if has_missing(X):  # complete rows as below, the others marginalised
        incomplete = np.isnan(X).any(axis=1)
        complete = np.flatnonzero(~incomplete)
        if complete.size:
            labels[complete], proba[complete], logp[complete] = predict(X[complete], params, block)
        rows = np.flatnonzero(incomplete)
        Xi = X[rows]
        logp[rows], proba[rows], labels[rows] = _incomplete_e_step(
            Xi, np.ones(len(rows)), np.isnan(Xi), params, block
        )
        return labels, proba, logp
    for start in range(0, n, block):
        sl = slice(start, start + block)
        logp[sl], proba[sl], labels[sl] = _normalise(weighted(X[sl]))
    return labels, proba, logp


# --------------------------------------------------------------------------- statistics


def moment_shift(means: np.ndarray, covariance_type: str) -> np.ndarray:
    """(k, d) points around which a pass accumulates moments, fixed before the pass: each
    component's mean for full/tied, the centre of the means for diag/spherical (whose moments
    are matrix products over all components at once)."""
    means = np.asarray(means, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        return means.copy()
    return np.repeat(_center(means)[None], means.shape[0], axis=0)


def stats_shift(params: MixtureParams) -> np.ndarray:
    """(k, d) shift of an EM pass: :func:`moment_shift`, except each mean for diag/spherical
    components too far apart for the centre of the means to serve."""
    if _diagonal_far_apart(params):
        return np.array(params.means, dtype=np.float64)
    return moment_shift(params.means, params.covariance_type)


@dataclass(eq=False)
class SufficientStats:
    """Additive sufficient statistics of one pass (sum two with ``+``).

    resp (k,): sum of w * r; first (k, d): sum of w * r * (x - shift_j);
    second: sum of w * r * (x - shift_j)(x - shift_j)^T, (k, d, d) for full/tied, its diagonal
    (k, d) for diag/spherical; counts (k,): rows whose most probable component is j;
    log_likelihood: sum of w * log p(x); weight_sum: sum of w; n_rows: row count.
    """

    covariance_type: str
    shift: np.ndarray
    resp: np.ndarray
    first: np.ndarray
    second: np.ndarray
    counts: np.ndarray
    log_likelihood: float = 0.0
    weight_sum: float = 0.0
    n_rows: int = 0

    @classmethod
    def zeros(cls, shift: np.ndarray, covariance_type: str) -> "SufficientStats":
        """Empty statistics around ``shift`` (k, d): every sum zero."""
        k, d = shift.shape
        second_shape = (k, d, d) if covariance_type in ("full", "tied") else (k, d)
        return cls(
            covariance_type,
            shift,
            np.zeros(k),
            np.zeros((k, d)),
            np.zeros(second_shape),
            np.zeros(k),
        )

    def __add__(self, other: "SufficientStats") -> "SufficientStats":
        if other.covariance_type != self.covariance_type or not np.array_equal(
            other.shift, self.shift
        ):
            raise ValueError("cannot add statistics accumulated around different shifts")
        return SufficientStats(
            self.covariance_type,
            self.shift,
            self.resp + other.resp,
            self.first + other.first,
            self.second + other.second,
            self.counts + other.counts,
            self.log_likelihood + other.log_likelihood,
            self.weight_sum + other.weight_sum,
            self.n_rows + other.n_rows,
        )

    @staticmethod
    def vector_size(k: int, d: int, covariance_type: str) -> int:
        """The length of :meth:`to_vector` for k components of d features."""
        second = k * d * d if covariance_type in ("full", "tied") else k * d
        return 3 + 2 * k + k * d + second

    def to_vector(self) -> np.ndarray:
        """Flat float64 vector (the shift is not included: the receiver knows it)."""
        head = np.array([self.log_likelihood, self.weight_sum, float(self.n_rows)])
        return np.concatenate(
            [head, self.resp, self.counts, self.first.ravel(), self.second.ravel()]
        )

    @classmethod
    def from_vector(cls, vector: np.ndarray, shift: np.ndarray, covariance_type: str):
        """The statistics of a :meth:`to_vector` vector, accumulated around ``shift`` (k, d);
        a ValueError when its length does not match."""
        out = cls.zeros(shift, covariance_type)
        k, d = shift.shape
        sizes = [k, k, k * d, out.second.size]
        expected = 3 + sum(sizes)
        if vector.shape != (expected,):
            raise ValueError(f"statistics vector has {vector.size} values, expected {expected}")
        out.log_likelihood, out.weight_sum, n_rows = (float(v) for v in vector[:3])
        out.n_rows = int(round(n_rows))
        pos = 3
        parts = []
        for size in sizes:
            parts.append(vector[pos : pos + size])
            pos += size
        out.resp = parts[0].copy()
        out.counts = parts[1].copy()
        out.first = parts[2].reshape(k, d).copy()
        out.second = parts[3].reshape(out.second.shape).copy()
        return out


def _add_moments(stats: SufficientStats, X: np.ndarray, rw: np.ndarray) -> None:
    """Adds the moments of a block with weighted responsibilities rw (n, k) into stats."""
    stats.resp += rw.sum(axis=0)
    if stats.covariance_type in ("full", "tied"):
        for j in range(stats.shift.shape[0]):
            Xc = X - stats.shift[j]
            stats.first[j] += rw[:, j] @ Xc  # a GEMV: several times faster than .sum(axis=0)
            stats.second[j] += (Xc * rw[:, j : j + 1]).T @ Xc
    elif (stats.shift == stats.shift[0]).all():
        Xc = X - stats.shift[0]
        stats.first += rw.T @ Xc
        stats.second += rw.T @ (Xc * Xc)
    else:  # components far apart: around each mean (see stats_shift)
        for j in range(stats.shift.shape[0]):
            Xc = X - stats.shift[j]
            stats.first[j] += rw[:, j] @ Xc
            stats.second[j] += rw[:, j] @ (Xc * Xc)


def _symmetric_from_pairs(pairs: np.ndarray, d: int) -> np.ndarray:
    """(k, d(d+1)/2) sums over the pairs a <= b of :meth:`_Quadratic.products` -> (k, d, d)."""
    rows, cols = _triu_indices(d)
    out = np.empty((pairs.shape[0], d, d))
    out[:, rows, cols] = pairs
    out[:, cols, rows] = pairs
    return out


def _reshifted(stats: SufficientStats, shift: np.ndarray) -> SufficientStats:
    """Full/tied statistics moved to another shift (k, d): with delta = new - old shift,
    first - r delta and second - first delta^T - delta first^T + r delta delta^T."""
    delta = shift - stats.shift
    cross = np.einsum("ki,kj->kij", stats.first, delta)
    second = (
        stats.second
        - cross
        - np.swapaxes(cross, 1, 2)
        + stats.resp[:, None, None] * np.einsum("ki,kj->kij", delta, delta)
    )
    return SufficientStats(
        stats.covariance_type,
        shift,
        stats.resp.copy(),
        stats.first - stats.resp[:, None] * delta,
        second,
        stats.counts.copy(),
        stats.log_likelihood,
        stats.weight_sum,
        stats.n_rows,
    )


def _blocks(X: np.ndarray, sample_weight: Optional[np.ndarray], block: int):
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    for start in range(0, n, block):
        yield X[start : start + block], w[start : start + block]


def accumulate_stats(
    X: np.ndarray,
    sample_weight: Optional[np.ndarray],
    params: MixtureParams,
    block_rows: Optional[int] = None,
    moved: bool = True,
) -> SufficientStats:
    """E-step plus moments of rows X (n, d) with weights (n,) or None, in row blocks,
    around :func:`stats_shift`. Full/tied moments are summed around the centre of the means
    (:func:`pass_shift`) and moved at the end; with ``moved=False`` they are not, for a
    caller that sums many partitions first and moves the sum once (:func:`moved_stats`)."""
    quadratic = _quadratic(params)
    stats = SufficientStats.zeros(pass_shift(params), params.covariance_type)
    block = block_rows or default_block_rows(params.k, params.d, params.covariance_type)
    incomplete = None
    if has_missing(X):  # rows with missing features: after the complete ones (see above)
        X, sample_weight, incomplete = _split_incomplete(X, sample_weight)
    log_weights = params.derived("log_weights", _log_weights)
    weighted = _block_weighted_log_prob(params) if quadratic is None else None
    pair_sums = None if quadratic is None else np.zeros((params.k, quadratic.starts[-1]))
    for Xb, wb in _blocks(X, sample_weight, block):
        if quadratic is None:
            log_prob_norm, resp, labels = _normalise(weighted(Xb))
            resp *= wb[:, None]
            _add_moments(stats, Xb, resp)
        else:  # the products serve the E-step and the moments, all feature-major
            Xc, Z = quadratic.products(Xb)
            log_prob_norm, resp, labels = _normalise(
                quadratic.log_prob(Xc, Z) + log_weights[:, None], axis=0
            )
            resp *= wb
            stats.resp += resp.sum(axis=1)
            stats.first += resp @ Xc.T
            pair_sums += resp @ Z.T
        stats.counts += np.bincount(labels, minlength=params.k)
        stats.log_likelihood += float(wb @ log_prob_norm)
        stats.weight_sum += float(wb.sum())
        stats.n_rows += Xb.shape[0]
    if quadratic is not None:
        stats.second += _symmetric_from_pairs(pair_sums, params.d)
    if incomplete is not None:
        _incomplete_e_step(*incomplete, params, block, stats)
    return moved_stats(stats, params) if moved else stats


def _split_incomplete(X: np.ndarray, sample_weight: Optional[np.ndarray]):
    """(complete rows, their weights, (incomplete rows, their weights, their NaN mask)) of a
    block with missing features; the complete rows a view when they come first (as the
    engines' blocks hold them)."""
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    absent = np.isnan(X)
    incomplete = absent.any(axis=1)
    n_complete = X.shape[0] - int(np.count_nonzero(incomplete))
    if not incomplete[:n_complete].any():
        return X[:n_complete], w[:n_complete], (X[n_complete:], w[n_complete:], absent[n_complete:])
    return X[~incomplete], w[~incomplete], (X[incomplete], w[incomplete], absent[incomplete])


def pass_shift(params: MixtureParams) -> np.ndarray:
    """(k, d) shift of ``accumulate_stats(..., moved=False)``: the centre of the means where
    full/tied densities use the quadratic form, else :func:`stats_shift`."""
    quadratic = _quadratic(params)
    if quadratic is None:
        return stats_shift(params)
    return np.repeat(quadratic.centre[None], params.k, axis=0)


def moved_stats(stats: SufficientStats, params: MixtureParams) -> SufficientStats:
    """Statistics around :func:`pass_shift` (summed over partitions) moved to
    :func:`stats_shift`, as ``accumulate_stats`` returns them."""
    if _quadratic(params) is None:
        return stats
    return _reshifted(stats, stats_shift(params))


def _log_weights(params: MixtureParams) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(params.weights)


def nearest_center(
    X: np.ndarray, centers: np.ndarray, scale: Optional[np.ndarray] = None
) -> np.ndarray:
    """Index of the closest center for each row: (n, d), (k, d) -> (n,). Distances are
    Euclidean, in units of ``scale`` (d,) per feature when given."""
    c = _center(centers)
    Xc, Cc = X - c, centers - c
    if scale is not None:
        Xc, Cc = Xc / scale, Cc / scale
    dist = (Cc**2).sum(axis=1) - 2.0 * (Xc @ Cc.T)  # + |x|^2, the same for every center
    return dist.argmin(axis=1)


def hard_assignment_stats(
    X: np.ndarray,
    sample_weight: Optional[np.ndarray],
    centers: np.ndarray,
    covariance_type: str,
    block_rows: Optional[int] = None,
    scale: Optional[np.ndarray] = None,
) -> SufficientStats:
    """Statistics of one-hot responsibilities from the nearest center (k-means initialisation;
    distances in units of ``scale`` per feature when given, see :func:`nearest_center`).

    Moments are taken around ``stats_shift`` of a mixture with these centers as means. Rows
    with missing features are left out (:func:`complete_rows`), as in every step of the
    initialisation.
    """
    X, sample_weight = complete_rows(X, sample_weight)
    k, d = centers.shape
    stats = SufficientStats.zeros(moment_shift(centers, covariance_type), covariance_type)
    block = block_rows or default_block_rows(k, d, covariance_type)
    for Xb, wb in _blocks(X, sample_weight, block):
        labels = nearest_center(Xb, centers, scale)
        rw = np.zeros((Xb.shape[0], k))
        rw[np.arange(Xb.shape[0]), labels] = wb
        _add_moments(stats, Xb, rw)
        stats.counts += np.bincount(labels, minlength=k)
        stats.weight_sum += float(wb.sum())
        stats.n_rows += Xb.shape[0]
    return stats


def responsibility_stats(
    X: np.ndarray,
    sample_weight: Optional[np.ndarray],
    resp: np.ndarray,
    shift: np.ndarray,
    covariance_type: str,
) -> SufficientStats:
    """Statistics of given responsibilities resp (n, k) of rows X (n, d), moments around
    ``shift`` (k, d); counts by each row's largest responsibility, no log-likelihood (a
    start from chosen responsibilities, as scikit-learn's ``_initialize``)."""
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    stats = SufficientStats.zeros(np.asarray(shift, dtype=np.float64), covariance_type)
    _add_moments(stats, X, np.asarray(resp, dtype=np.float64) * w[:, None])
    stats.counts += np.bincount(np.argmax(resp, axis=1), minlength=stats.shift.shape[0])
    stats.weight_sum += float(w.sum())
    stats.n_rows += X.shape[0]
    return stats


def random_resp_stats(
    X: np.ndarray,
    sample_weight: Optional[np.ndarray],
    origin: np.ndarray,
    k: int,
    covariance_type: str,
    seed: int,
    block_rows: Optional[int] = None,
) -> SufficientStats:
    """Statistics of uniformly random (normalised) responsibilities, scikit-learn's 'random'
    init. A row's k uniforms are drawn from its content: the splitmix64 sequence started at
    its hash (:func:`spark_gmm.hashing.row_hash` of features and weight, seeded by ``seed``),
    so a row draws the same responsibilities whichever block or partition holds it (equal
    rows draw equal ones). Rows with missing features are left out (:func:`complete_rows`)."""
    X, sample_weight = complete_rows(X, sample_weight)
    d = X.shape[1]
    shift = moment_shift(
        np.repeat(np.asarray(origin, dtype=np.float64)[None], k, 0), covariance_type
    )
    stats = SufficientStats.zeros(shift, covariance_type)
    block = block_rows or default_block_rows(k, d, covariance_type)
    for Xb, wb in _blocks(X, sample_weight, block):
        resp = hash_uniforms(hash_stream(row_hash(Xb, wb, seed), k))
        resp /= resp.sum(axis=1, keepdims=True)
        _add_moments(stats, Xb, resp * wb[:, None])
        stats.counts += np.bincount(resp.argmax(axis=1), minlength=k)
        stats.weight_sum += float(wb.sum())
        stats.n_rows += Xb.shape[0]
    return stats


def sample_rows(
    X: np.ndarray, sample_weight: Optional[np.ndarray], fraction: float, seed: int
) -> np.ndarray:
    """The rows of one block kept for a sample, with their weights as a last column:
    (m, d + 1). A row is kept when the uniform of its hash (:func:`spark_gmm.hashing.row_hash`
    of features and weight, seeded by ``seed``) is below ``fraction``, so the same rows are
    kept whichever block or partition holds them, and equal rows are kept or dropped together.
    Kept rows with equal features are collapsed into one row carrying their summed weight
    (:func:`merge_equal_rows`): the sample stays small however often a row repeats, and the
    weights still count every kept row. Rows with missing features are never kept."""
    X, sample_weight = complete_rows(np.asarray(X, dtype=np.float64), sample_weight)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    keep = hash_uniforms(row_hash(X, w, seed)) < fraction
    return merge_equal_rows(np.column_stack([X[keep], w[keep]]))


def merge_equal_rows(rows: np.ndarray) -> np.ndarray:
    """Rows (m, d + 1) of features and a last weight column, those with equal features merged
    into one row carrying the sum of their weights, sorted by features (-0.0 as 0.0). A
    group's weights are summed in ascending order, so the sum depends only on which weights
    there are, not on the order of the rows (exact for integer weights)."""
    rows = np.asarray(rows, dtype=np.float64) + 0.0
    if rows.shape[0] < 2:
        return rows
    rows = rows[np.lexsort(rows.T[::-1])]  # by features, then weight
    features = rows[:, :-1]
    starts = np.flatnonzero(np.r_[True, np.any(features[1:] != features[:-1], axis=1)])
    if len(starts) == rows.shape[0]:
        return rows
    merged = rows[starts]
    merged[:, -1] = np.add.reduceat(rows[:, -1], starts)
    return merged


def canonical_sample(rows: np.ndarray, seed: int, limit: int) -> np.ndarray:
    """The sample made of the :func:`sample_rows` rows of every block, whatever the blocks:
    rows with equal features merged (:func:`merge_equal_rows`); when more than ``limit``
    remain, the ``limit`` with the smallest hash of their features seeded by ``seed`` (ties
    by the features: a bottom-k sample, a uniform choice among the distinct rows, each with
    its weight); sorted by features. Which rows it holds and their order depend only on the
    data and ``seed``; and the order by value, unlike one by hash, does not change when a
    feature is rescaled (a positive factor), so neither does the k-means start from a
    sample of all the rows. A merged weight is exact for integer weights, while sums of
    fractional weights, already rounded per block, can differ in the last bit between
    partitionings."""
    rows = merge_equal_rows(rows)
    if rows.shape[0] > limit:
        by_hash = np.argsort(row_hash(rows[:, :-1], None, seed), kind="stable")
        rows = rows[np.sort(by_hash[:limit])]  # rows are sorted by features: ties so too
    return rows


def lloyd_update(stats: SufficientStats, centers: np.ndarray, scale: Optional[np.ndarray] = None):
    """One Lloyd step from the statistics of nearest-center assignments
    (:func:`hard_assignment_stats`): (new centers, largest squared move, in units of
    ``scale`` per feature when given). A center that no row chose stays where it is."""
    assigned = stats.resp > 0
    new = centers.copy()
    new[assigned] = stats.shift[assigned] + stats.first[assigned] / stats.resp[assigned, None]
    moves = new - centers if scale is None else (new - centers) / scale
    return new, float((moves**2).sum(axis=1).max())


def feature_scale(X: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> np.ndarray:
    """Each feature's (weighted) standard deviation over the rows of X, 1 where it is 0: the
    units in which the k-means initialisation measures distances, so that its seeds do not
    depend on the units of the features (as mclust's scaled start)."""
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if not w.sum() > 0:
        w = np.ones(X.shape[0])
    mean = (w @ X) / w.sum()
    std = np.sqrt(np.maximum((w @ (X - mean) ** 2) / w.sum(), 0.0))
    return np.where(std > 0, std, 1.0)


def kmeans_plus_plus(
    X: np.ndarray,
    k: int,
    rng: np.random.Generator,
    sample_weight: Optional[np.ndarray] = None,
    scale: Optional[np.ndarray] = None,
) -> np.ndarray:
    """k seeds chosen by greedy k-means++ among the rows of X: (n, d) -> (k, d). Each seed after
    the first is the best, by the potential it leaves (the weighted sum of squared distances to
    the nearest seed), of ``2 + int(log k)`` rows drawn by D^2 weighting (scikit-learn's
    rule); distances in units of ``scale`` per feature when given."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    Xc = X - X.mean(axis=0)  # distances are shift-invariant; centring keeps them exact
    if scale is not None:
        Xc = Xc / scale
    sq = np.einsum("ij,ij->i", Xc, Xc)
    trials = 2 + int(math.log(k)) if k > 1 else 1
    chosen = [int(rng.choice(n, p=w / w.sum()))]
    closest = np.maximum(sq + sq[chosen[0]] - 2.0 * Xc @ Xc[chosen[0]], 0.0)
    for _ in range(1, k):
        p = closest * w
        total = p.sum()
        tries = (
            rng.choice(n, size=trials, p=p / total) if total > 0 else rng.integers(n, size=trials)
        )
        dist = np.maximum(sq[None, :] + sq[tries, None] - 2.0 * (Xc[tries] @ Xc.T), 0.0)
        np.minimum(dist, closest[None, :], out=dist)
        best = int(np.argmin(dist @ w))
        chosen.append(int(tries[best]))
        closest = dist[best]
    return X[chosen]


# --------------------------------------------------------------------------- M-step


def gaussian_moments(stats: SufficientStats, reg_covar: float):
    """(nk (k,), means (k, d), covariances in the type's layout) of summed statistics:
    scikit-learn's ``_estimate_gaussian_parameters`` (nk = resp + 10 eps, so that an empty
    component divides by no zero; ``reg_covar`` added to every variance). No check that the
    covariances are positive definite (:class:`MixtureParams` makes it)."""
    t = stats.covariance_type
    nk = stats.resp + 10.0 * np.finfo(np.float64).eps
    delta = stats.first / nk[:, None]
    means = stats.shift + delta
    d = means.shape[1]
    if t in ("full", "tied"):
        scatter = stats.second - nk[:, None, None] * np.einsum("ki,kj->kij", delta, delta)
        if t == "full":
            cov = scatter / nk[:, None, None]
        else:
            cov = scatter.sum(axis=0) / nk.sum()
        cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
        cov[..., np.arange(d), np.arange(d)] += reg_covar
    else:
        var = np.maximum(stats.second / nk[:, None] - delta**2, 0.0)
        cov = (var.mean(axis=1) if t == "spherical" else var) + reg_covar
    return nk, means, cov


def m_step(stats: SufficientStats, reg_covar: float) -> MixtureParams:
    """New parameters from summed statistics (:func:`gaussian_moments`, the weights nk
    normalised); ``reg_covar`` is added to every variance."""
    nk, means, cov = gaussian_moments(stats, reg_covar)
    return MixtureParams(nk / nk.sum(), means, cov, stats.covariance_type)


def collapsed_components(stats: SufficientStats) -> np.ndarray:
    """Components supported by too few rows to estimate their covariance: fewer effective
    rows than d + 1 (full) or 2 (other types). Indices, lightest first."""
    d = stats.shift.shape[1]
    min_rows = d + 1.0 if stats.covariance_type == "full" else 2.0
    effective_rows = (
        stats.resp * (stats.n_rows / stats.weight_sum) if stats.weight_sum else stats.resp
    )
    low = np.flatnonzero(effective_rows < min_rows)
    return low[np.argsort(effective_rows[low])]


def split_heaviest(params: MixtureParams, targets: Sequence[int]) -> MixtureParams:
    """Re-seeds each target component by splitting the heaviest other component in two along
    its principal axis (+-1 standard deviation); the pair shares the weight and covariance."""
    weights, means = params.weights.copy(), params.means.copy()
    covs = params.covariances.copy()
    t = params.covariance_type
    full = params.full_covariances()
    for j in targets:
        order = np.argsort(-weights)
        h = next(int(i) for i in order if i != j)
        eigval, eigvec = np.linalg.eigh(full[h])
        offset = np.sqrt(max(eigval[-1], 0.0)) * eigvec[:, -1]
        means[j], means[h] = means[h] + offset, means[h] - offset
        weights[j] = weights[h] = weights[h] / 2.0
        if t != "tied":
            covs[j] = covs[h]
        full[j] = full[h]
    return MixtureParams(weights, means, covs, t)


# --------------------------------------------------------------------------- the EM loop


@dataclass
class EMResult:
    """One candidate's fit. ``history`` holds each iteration's objective (for maximum
    likelihood the mean per-row weighted log-likelihood of its E-step, see :func:`run_em`);
    ``final_stats`` is a pass at the returned parameters; ``recoveries`` counts collapsed
    components that were re-seeded."""

    params: MixtureParams
    n_iter: int = 0
    converged: bool = False
    history: List[float] = field(default_factory=list)
    final_stats: Optional[SufficientStats] = None
    recoveries: int = 0

    @property
    def log_likelihood(self) -> float:
        """Total weighted log-likelihood at the returned parameters (Spark's definition)."""
        return self.final_stats.log_likelihood

    @property
    def mean_log_likelihood(self) -> float:
        """Mean per-row (weighted) log-likelihood at the returned parameters."""
        return self.final_stats.log_likelihood / self.final_stats.weight_sum


@dataclass
class EMState:
    """Where a run of :func:`run_em` stands after ``iteration`` iterations: every candidate's
    result so far and the indices of those still running. JSON-serialisable (checkpoints)."""

    iteration: int
    results: List[EMResult]
    active: List[int]

    @classmethod
    def start(cls, initial: Sequence[MixtureParams]) -> "EMState":
        """The state before the first iteration: every candidate at its ``initial``
        parameters, all running."""
        return cls(0, [EMResult(params) for params in initial], list(range(len(initial))))

    def to_dict(self) -> dict:
        """The state as plain JSON-serialisable values (results without their final
        statistics)."""
        return {
            "iteration": self.iteration,
            "active": list(self.active),
            "results": [
                {
                    "params": params_to_dict(r.params),
                    "n_iter": r.n_iter,
                    "converged": r.converged,
                    "history": list(r.history),
                    "recoveries": r.recoveries,
                }
                for r in self.results
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "EMState":
        """The state of a :meth:`to_dict` dictionary."""
        results = [
            EMResult(
                params_from_dict(r["params"]),
                int(r["n_iter"]),
                bool(r["converged"]),
                [float(v) for v in r["history"]],
                None,
                int(r["recoveries"]),
            )
            for r in data["results"]
        ]
        return cls(int(data["iteration"]), results, [int(i) for i in data["active"]])


def params_to_dict(params: MixtureParams) -> dict:
    """Plain lists (floats round-trip exactly through JSON)."""
    return {
        "weights": params.weights.tolist(),
        "means": params.means.tolist(),
        "covariances": params.covariances.tolist(),
        "covariance_type": params.covariance_type,
    }


def params_from_dict(data: dict) -> MixtureParams:
    """The mixture parameters of a :func:`params_to_dict` dictionary."""
    return MixtureParams(
        np.asarray(data["weights"], dtype=np.float64),
        np.asarray(data["means"], dtype=np.float64),
        np.asarray(data["covariances"], dtype=np.float64),
        data["covariance_type"],
    )


StatsFunction = Callable[[Sequence[Any]], List[SufficientStats]]
# One EM update: (statistics of the E-step at ``state``, ``state``) -> (the next state, this
# iteration's objective, whose change against the previous one's decides convergence).
UpdateFunction = Callable[[SufficientStats, Any], Tuple[Any, float]]


def maximum_likelihood_update(reg_covar: float) -> UpdateFunction:
    """The update of maximum-likelihood EM: the M-step (:func:`m_step`), objective the mean
    per-row (weighted) log-likelihood of the E-step (scikit-learn's GaussianMixture)."""

    def update(stats: SufficientStats, state: MixtureParams):
        return m_step(stats, reg_covar), stats.log_likelihood / stats.weight_sum

    return update


def run_em(
    compute_stats: StatsFunction,
    initial: Sequence[MixtureParams],
    max_iter: int,
    tol: float,
    reg_covar: float,
    final_pass: bool = True,
    on_iteration: Optional[Callable[[int, int, float, float, float], None]] = None,
    recover_collapsed: bool = False,
    on_recovery: Optional[Callable[[int, int, Sequence[int]], None]] = None,
    resume: Optional[EMState] = None,
    on_state: Optional[Callable[[EMState], None]] = None,
    update: Optional[UpdateFunction] = None,
) -> List[EMResult]:
    """Advances every candidate together: one ``compute_stats`` call (one data pass) per
    iteration for all candidates still running. A candidate stops when the change of its
    objective is below ``tol`` (scikit-learn's rule) or after ``max_iter``.

    ``update`` turns each candidate's statistics into its next state and the iteration's
    objective: by default :func:`maximum_likelihood_update` (states are MixtureParams, the
    objective the mean per-row log-likelihood); ``spark_gmm.variational`` plugs the
    variational Bayesian update in here. ``compute_stats`` receives the states.

    With ``recover_collapsed``, components that :func:`collapsed_components` finds are
    re-seeded by :func:`split_heaviest` (at most k events per candidate, so a k larger than
    the data supports cannot keep EM from converging); that iteration does not count as
    converged. ``on_iteration(iteration, candidate, mean_log_likelihood, change, seconds)`` and
    ``on_recovery(iteration, candidate, components)`` report progress; ``on_state(state)``
    sees the state after every iteration (for checkpoints), and ``resume`` continues from
    such a state instead of ``initial``: the result is the same as an uninterrupted run.
    """
    update = update or maximum_likelihood_update(reg_covar)
    state = resume if resume is not None else EMState.start(initial)
    results = state.results
    while state.active and state.iteration < max_iter:
        state.iteration += 1
        iteration = state.iteration
        started = time.perf_counter()
        stats_list = compute_stats([results[i].params for i in state.active])
        seconds = time.perf_counter() - started
        still = []
        for i, stats in zip(state.active, stats_list):
            res = results[i]
            if stats.weight_sum <= 0:
                raise ValueError("the total weight of the rows is zero")
            res.params, objective = update(stats, res.params)
            change = objective - res.history[-1] if res.history else math.inf
            res.history.append(objective)
            res.n_iter = iteration
            if on_iteration:
                on_iteration(iteration, i, objective, change, seconds)
            targets = collapsed_components(stats) if recover_collapsed else []
            targets = targets[: max(res.params.k - res.recoveries, 0)] if res.params.k > 1 else []
            if len(targets):
                res.params = split_heaviest(res.params, targets)
                res.recoveries += len(targets)
                if on_recovery:
                    on_recovery(iteration, i, list(map(int, targets)))
                still.append(i)
            elif abs(change) < tol:
                res.converged = True
            else:
                still.append(i)
        state.active = still
        if on_state:
            on_state(state)
    if final_pass and results:
        for res, stats in zip(results, compute_stats([r.params for r in results])):
            res.final_stats = stats
    return results


def local_stats_function(
    X: np.ndarray, sample_weight: Optional[np.ndarray] = None, block_rows: Optional[int] = None
) -> StatsFunction:
    """A ``compute_stats`` over an in-memory array (the single-process reference)."""
    return lambda candidates: [
        accumulate_stats(X, sample_weight, p, block_rows) for p in candidates
    ]


def fit_em(
    X: np.ndarray,
    initial: MixtureParams,
    sample_weight: Optional[np.ndarray] = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    block_rows: Optional[int] = None,
) -> EMResult:
    """Single-process EM from given initial parameters (the numerical reference)."""
    return run_em(
        local_stats_function(X, sample_weight, block_rows), [initial], max_iter, tol, reg_covar
    )[0]


def sample(params: MixtureParams, n: int, rng: np.random.Generator):
    """n rows drawn from the mixture: (X (n, d), component labels (n,) int32)."""
    labels = rng.choice(params.k, size=n, p=params.weights).astype(np.int32)
    X = np.empty((n, params.d))
    chols = np.linalg.cholesky(params.full_covariances())
    for j in np.unique(labels):
        rows = np.flatnonzero(labels == j)
        X[rows] = params.means[j] + rng.standard_normal((len(rows), params.d)) @ chols[j].T
    return X, labels


def information_criteria(log_likelihood: float, n_parameters: int, total_weight: float):
    """(BIC, AIC) of a fit with this total log-likelihood, parameter count and total row
    weight (scikit-learn's definitions; lower is better)."""
    bic = -2.0 * log_likelihood + n_parameters * np.log(total_weight)
    return float(bic), float(-2.0 * log_likelihood + 2.0 * n_parameters)
