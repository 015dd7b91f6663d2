"""Variational Bayesian Gaussian mixtures on the EM kernel (no pyspark import, ever).

scikit-learn's ``BayesianGaussianMixture`` (``sklearn/mixture/_bayesian_mixture.py``) as pure
functions of the kernel's additive statistics, so that the Spark layer and the single-process
reference share :func:`spark_gmm.kernel.run_em`:

* the loop's state is a :class:`VariationalParams` (the variational posterior);
* its E-step is the kernel's ordinary Gaussian-mixture E-step at
  :attr:`VariationalParams.gaussian`, a :class:`~spark_gmm.kernel.MixtureParams` whose log
  weights absorb scikit-learn's expected log weights and the per-component constants of its
  expected log densities (:func:`variational_stats_function` hands those to any engine's
  statistics function);
* :func:`variational_update` is the M-step (:func:`variational_m_step`) and the lower bound
  (:func:`lower_bound`), the objective whose change decides convergence, as scikit-learn.

Sample weights w generalise scikit-learn's sums over rows to weighted sums (integer weights
equal repeated rows). The prior defaults come from weighted moments of the data
(:func:`priors_from_moments`), which the Spark side gathers in one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
from scipy.special import betaln, digamma, gammaln

from spark_gmm import kernel
from spark_gmm.kernel import EMResult, MixtureParams, SufficientStats

WEIGHT_CONCENTRATION_PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
_LOG_2PI = math.log(2.0 * math.pi)
_EPS10 = 10.0 * np.finfo(np.float64).eps  # scikit-learn's guard against empty components


def check_prior_type(prior_type: str) -> str:
    """``prior_type`` if it is one of ``WEIGHT_CONCENTRATION_PRIOR_TYPES``, else a ValueError."""
    if prior_type not in WEIGHT_CONCENTRATION_PRIOR_TYPES:
        raise ValueError(
            "weightConcentrationPriorType must be one of "
            f"{', '.join(WEIGHT_CONCENTRATION_PRIOR_TYPES)}, got {prior_type!r}"
        )
    return prior_type


# --------------------------------------------------------------------------- priors


@dataclass(frozen=True, eq=False)
class VariationalPriors:
    """The priors of a variational fit (scikit-learn's ``*_prior_`` attributes).

    weight_concentration_prior: the Dirichlet (process) concentration; mean_precision_prior
    and mean_prior (d,): the Gaussian prior of the means; degrees_of_freedom_prior and
    covariance_prior: the Wishart prior of the precisions, covariance_prior (d, d) for
    full/tied, (d,) for diag, a float for spherical.
    """

    covariance_type: str
    prior_type: str
    weight_concentration_prior: float
    mean_precision_prior: float
    mean_prior: np.ndarray
    degrees_of_freedom_prior: float
    covariance_prior: np.ndarray

    @property
    def d(self) -> int:
        """The number of features."""
        return self.mean_prior.shape[0]

    def to_dict(self) -> dict:
        """Plain JSON-serialisable values (floats round-trip exactly)."""
        return {
            "covariance_type": self.covariance_type,
            "prior_type": self.prior_type,
            "weight_concentration_prior": float(self.weight_concentration_prior),
            "mean_precision_prior": float(self.mean_precision_prior),
            "mean_prior": self.mean_prior.tolist(),
            "degrees_of_freedom_prior": float(self.degrees_of_freedom_prior),
            "covariance_prior": np.asarray(self.covariance_prior).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "VariationalPriors":
        """The priors of a :meth:`to_dict` dictionary."""
        cov = np.asarray(data["covariance_prior"], dtype=np.float64)
        return cls(
            data["covariance_type"],
            data["prior_type"],
            float(data["weight_concentration_prior"]),
            float(data["mean_precision_prior"]),
            np.asarray(data["mean_prior"], dtype=np.float64),
            float(data["degrees_of_freedom_prior"]),
            cov if cov.ndim else float(cov),
        )


def _positive(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def _covariance_prior(value, covariance_type: str, d: int):
    """A user's covariance prior checked as scikit-learn does: shape, symmetric positive
    definite (full/tied), positive (diag/spherical)."""
    name = "covariancePrior"
    if covariance_type == "spherical":
        if np.ndim(value) != 0:
            raise ValueError(f"spherical {name} must be a number, got shape {np.shape(value)}")
        return _positive(value, name)
    expected = (d, d) if covariance_type in ("full", "tied") else (d,)
    try:
        cov = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {value!r}") from None
    if cov.shape != expected:
        raise ValueError(f"{covariance_type} {name} must have shape {expected}, got {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ValueError(f"{name} must be finite")
    if covariance_type == "diag":
        if np.any(cov <= 0.0):
            raise ValueError(f"diag {name} must be positive")
    elif not (
        np.allclose(cov, cov.T, rtol=1e-5, atol=1e-8) and np.all(np.linalg.eigvalsh(cov) > 0)
    ):
        raise ValueError(f"{covariance_type} {name} must be symmetric, positive definite")
    return cov


def priors_from_moments(
    k: int,
    covariance_type: str,
    mean: np.ndarray,
    scatter: np.ndarray,
    weight_sum: float,
    prior_type: str = "dirichlet_process",
    weight_concentration_prior: Optional[float] = None,
    mean_precision_prior: Optional[float] = None,
    mean_prior: Optional[np.ndarray] = None,
    degrees_of_freedom_prior: Optional[float] = None,
    covariance_prior=None,
) -> VariationalPriors:
    """The priors of a fit of k components, scikit-learn's defaults where a value is None,
    from the data's weighted moments: ``mean`` (d,) = sum w x / W, ``scatter`` = sum w
    (x - mean)(x - mean)^T (d, d), or its diagonal (d,) for diag/spherical, and ``weight_sum``
    W = sum w (the row count without weights).

    Defaults: weight concentration 1/k; mean precision 1; mean prior the data mean; degrees
    of freedom d; covariance prior the data covariance with ddof=1, scatter / (W - 1), its
    diagonal for diag and the mean of that for spherical (scikit-learn's ``np.cov(X.T)`` and
    ``np.var(X, axis=0, ddof=1)``). Given values are checked as scikit-learn does; a
    ValueError names the parameter (Spark naming).
    """
    kernel.check_covariance_type(covariance_type)
    check_prior_type(prior_type)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    d = mean.shape[0]
    if d < 1 or not np.all(np.isfinite(mean)):
        raise ValueError("the data mean must be a finite (d,) vector")

    wcp = 1.0 / k if weight_concentration_prior is None else None
    if wcp is None:
        wcp = _positive(weight_concentration_prior, "weightConcentrationPrior")
    mpp = (
        1.0
        if mean_precision_prior is None
        else _positive(mean_precision_prior, "meanPrecisionPrior")
    )
    if mean_prior is None:
        mp = mean.copy()
    else:
        try:
            mp = np.array(mean_prior, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"meanPrior must be numeric, got {mean_prior!r}") from None
        if mp.shape != (d,):
            raise ValueError(f"meanPrior must have shape ({d},), got {mp.shape}")
        if not np.all(np.isfinite(mp)):
            raise ValueError("meanPrior must be finite")
    if degrees_of_freedom_prior is None:
        dof = float(d)
    else:
        dof = _positive(degrees_of_freedom_prior, "degreesOfFreedomPrior")
        if not dof > d - 1.0:
            raise ValueError(
                f"degreesOfFreedomPrior must be greater than {d - 1} (the number of features "
                f"minus 1), got {degrees_of_freedom_prior!r}"
            )
    if covariance_prior is None:
        cov = _default_covariance_prior(covariance_type, scatter, weight_sum, d)
    else:
        cov = _covariance_prior(covariance_prior, covariance_type, d)
    return VariationalPriors(covariance_type, prior_type, wcp, mpp, mp, dof, cov)


def _default_covariance_prior(covariance_type: str, scatter, weight_sum: float, d: int):
    """The data covariance with ddof=1 in the layout of ``covariance_type``."""
    if not weight_sum > 1.0:
        raise ValueError(
            "the default covariancePrior (the data covariance, ddof=1) needs a total row "
            f"weight above 1, got {weight_sum!r}; give covariancePrior"
        )
    scatter = np.asarray(scatter, dtype=np.float64)
    if scatter.shape == (d, d):
        diagonal = np.diagonal(scatter).copy()
    elif scatter.shape == (d,) and covariance_type in ("diag", "spherical"):
        diagonal = scatter
    else:
        raise ValueError(f"scatter must have shape ({d}, {d}), got {scatter.shape}")
    if covariance_type in ("full", "tied"):
        return scatter / (weight_sum - 1.0)
    variances = diagonal / (weight_sum - 1.0)
    return variances if covariance_type == "diag" else float(variances.mean())


def data_moments(
    X: np.ndarray, sample_weight: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray, float]:
    """(mean (d,), scatter (d, d), weight sum) of rows X (n, d) with weights (n,) or None:
    what :func:`priors_from_moments` takes."""
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    total = float(w.sum())
    mean = (w @ X) / total
    Xc = X - mean
    return mean, (Xc * w[:, None]).T @ Xc, total


def priors_from_data(
    X: np.ndarray,
    k: int,
    covariance_type: str,
    prior_type: str = "dirichlet_process",
    sample_weight: Optional[np.ndarray] = None,
    **given,
) -> VariationalPriors:
    """:func:`priors_from_moments` of the (weighted) moments of an in-memory array; keyword
    arguments are the given priors (``weight_concentration_prior=...``, ...)."""
    mean, scatter, total = data_moments(X, sample_weight)
    return priors_from_moments(k, covariance_type, mean, scatter, total, prior_type, **given)


# --------------------------------------------------------------------------- the posterior


def _log_lambda(dof: np.ndarray, d: int) -> np.ndarray:
    """scikit-learn's expected log determinant of the (unnormalised) precision, per component
    (shape (1,) for a tied scalar dof)."""
    return d * math.log(2.0) + np.sum(
        digamma(0.5 * (np.asarray(dof) - np.arange(d)[:, None])), axis=0
    )


def expected_log_weights(weight_concentration: np.ndarray, prior_type: str) -> np.ndarray:
    """scikit-learn's ``_estimate_log_weights``: E[log pi_j] under the posterior (k,)."""
    if prior_type == "dirichlet_process":
        a, b = weight_concentration
        digamma_sum = digamma(a + b)
        digamma_b = digamma(b)
        return digamma(a) - digamma_sum + np.hstack((0, np.cumsum(digamma_b - digamma_sum)[:-1]))
    return digamma(weight_concentration) - digamma(np.sum(weight_concentration))


def posterior_weights(weight_concentration: np.ndarray, prior_type: str) -> np.ndarray:
    """scikit-learn's ``weights_``: the expected stick-breaking weights of the process, the
    normalised concentrations of the distribution."""
    if prior_type == "dirichlet_process":
        a, b = weight_concentration
        total = a + b
        weights = a / total * np.hstack((1, np.cumprod(b / total)[:-1]))
        return weights / np.sum(weights)
    return weight_concentration / np.sum(weight_concentration)


@dataclass(frozen=True, eq=False)
class VariationalParams:
    """The variational posterior of a mixture (scikit-learn's fitted attributes), the state of
    the variational EM loop.

    weight_concentration: (2, k) Beta parameters for dirichlet_process (scikit-learn's tuple
    stacked), (k,) Dirichlet parameters for dirichlet_distribution; mean_precision (k,);
    means (k, d); degrees_of_freedom (k,), a 0-d array for tied (scikit-learn's scalar);
    covariances in the kernel's layouts, the Wishart scale divided by the degrees of freedom
    (scikit-learn's ``covariances_``).

    Derived on creation: ``weights`` (scikit-learn's ``weights_``), ``log_weights``
    (``_estimate_log_weights()``) and ``gaussian``, the MixtureParams whose ordinary E-step is
    the variational E-step (its responsibilities are ``predict_proba``; its log density plus
    :attr:`log_weight_normaliser` is ``score_samples``).
    """

    covariance_type: str
    prior_type: str
    weight_concentration: np.ndarray
    mean_precision: np.ndarray
    means: np.ndarray
    degrees_of_freedom: np.ndarray
    covariances: np.ndarray
    weights: np.ndarray = field(init=False, repr=False)
    log_weights: np.ndarray = field(init=False, repr=False)
    gaussian: MixtureParams = field(init=False, repr=False)
    component_log_constants: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        kernel.check_covariance_type(self.covariance_type)
        check_prior_type(self.prior_type)
        means = np.atleast_2d(np.asarray(self.means, dtype=np.float64))
        k, d = means.shape
        concentration = np.asarray(self.weight_concentration, dtype=np.float64)
        expected = (2, k) if self.prior_type == "dirichlet_process" else (k,)
        if concentration.shape != expected:
            raise ValueError(
                f"{self.prior_type} weight_concentration must have shape {expected}, "
                f"got {concentration.shape}"
            )
        mean_precision = np.asarray(self.mean_precision, dtype=np.float64).reshape(-1)
        if mean_precision.shape != (k,):
            raise ValueError(f"mean_precision must have shape ({k},), got {mean_precision.shape}")
        dof = np.asarray(self.degrees_of_freedom, dtype=np.float64)
        dof_shape = () if self.covariance_type == "tied" else (k,)
        if dof.shape != dof_shape:
            raise ValueError(f"degrees_of_freedom must have shape {dof_shape}, got {dof.shape}")
        covariances = np.asarray(self.covariances, dtype=np.float64)
        for name, value in (
            ("weight_concentration", concentration),
            ("mean_precision", mean_precision),
            ("degrees_of_freedom", dof),
        ):
            if not (np.all(np.isfinite(value)) and np.all(value > 0)):
                raise ValueError(f"{name} must be finite and positive")
        log_weights = expected_log_weights(concentration, self.prior_type)
        # scikit-learn's _estimate_log_prob beyond log N(x | mean, covariance)
        constants = log_weights + (
            -0.5 * d * np.log(dof) + 0.5 * (_log_lambda(dof, d) - d / mean_precision)
        )
        if not np.all(np.isfinite(constants)):
            raise ValueError("the expected log weights are not finite")
        relative = np.exp(constants - constants.max())  # the largest is 1: no overflow
        for name, value in (
            ("weight_concentration", concentration),
            ("mean_precision", mean_precision),
            ("means", means),
            ("degrees_of_freedom", dof),
            ("covariances", covariances),
        ):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "weights", posterior_weights(concentration, self.prior_type))
        object.__setattr__(self, "log_weights", log_weights)
        object.__setattr__(self, "component_log_constants", constants)
        object.__setattr__(
            self, "gaussian", MixtureParams(relative, means, covariances, self.covariance_type)
        )

    @property
    def k(self) -> int:
        """The number of components."""
        return self.means.shape[0]

    @property
    def d(self) -> int:
        """The number of features."""
        return self.means.shape[1]

    @property
    def precisions_cholesky(self) -> np.ndarray:
        """scikit-learn's ``precisions_cholesky_`` (of ``covariances``)."""
        return self.gaussian.precisions_cholesky

    @property
    def log_weight_normaliser(self) -> float:
        """log sum_j exp(component_log_constants_j): scikit-learn's ``score_samples`` is the
        log density of :attr:`gaussian` plus this."""
        j = int(np.argmax(self.component_log_constants))
        return float(self.component_log_constants[j] - np.log(self.gaussian.weights[j]))

    @property
    def gaussian_log_weights(self) -> np.ndarray:
        """The log weights of :attr:`gaussian`, finite where its weights underflow to 0."""
        return self.component_log_constants - self.log_weight_normaliser

    def to_dict(self) -> dict:
        """Plain JSON-serialisable values (floats round-trip exactly)."""
        return {
            "covariance_type": self.covariance_type,
            "prior_type": self.prior_type,
            "weight_concentration": self.weight_concentration.tolist(),
            "mean_precision": self.mean_precision.tolist(),
            "means": self.means.tolist(),
            "degrees_of_freedom": self.degrees_of_freedom.tolist(),
            "covariances": self.covariances.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "VariationalParams":
        """The posterior of a :meth:`to_dict` dictionary."""
        return cls(
            data["covariance_type"],
            data["prior_type"],
            np.asarray(data["weight_concentration"], dtype=np.float64),
            np.asarray(data["mean_precision"], dtype=np.float64),
            np.asarray(data["means"], dtype=np.float64),
            np.asarray(data["degrees_of_freedom"], dtype=np.float64),
            np.asarray(data["covariances"], dtype=np.float64),
        )


# --------------------------------------------------------------------------- M-step


def _weight_concentration(nk: np.ndarray, priors: VariationalPriors) -> np.ndarray:
    """scikit-learn's ``_estimate_weights``."""
    wcp = priors.weight_concentration_prior
    if priors.prior_type == "dirichlet_process":
        return np.vstack((1.0 + nk, wcp + np.hstack((np.cumsum(nk[::-1])[-2::-1], 0))))
    return wcp + nk


def _wishart(nk, xk, sk, mean_precision, priors: VariationalPriors):
    """scikit-learn's ``_estimate_wishart_*``: (degrees of freedom, normalised covariances)."""
    t = priors.covariance_type
    k = nk.shape[0]
    mpp, cov0 = priors.mean_precision_prior, priors.covariance_prior
    diff = xk - priors.mean_prior
    if t == "full":
        dof = priors.degrees_of_freedom_prior + nk
        cov = (
            cov0
            + nk[:, None, None] * sk
            + (nk * mpp / mean_precision)[:, None, None] * np.einsum("ki,kj->kij", diff, diff)
        )
        return dof, cov / dof[:, None, None]
    if t == "tied":
        dof = np.asarray(priors.degrees_of_freedom_prior + nk.sum() / k)
        cov = cov0 + sk * nk.sum() / k + mpp / k * np.dot((nk / mean_precision) * diff.T, diff)
        return dof, cov / dof
    dof = priors.degrees_of_freedom_prior + nk
    if t == "diag":
        cov = cov0 + nk[:, None] * (sk + (mpp / mean_precision)[:, None] * np.square(diff))
        return dof, cov / dof[:, None]
    cov = cov0 + nk * (sk + mpp / mean_precision * np.mean(np.square(diff), axis=1))
    return dof, cov / dof


def variational_m_step(
    stats: SufficientStats, priors: VariationalPriors, reg_covar: float
) -> VariationalParams:
    """The posterior from summed statistics: scikit-learn's ``_m_step`` (and ``_initialize``
    for statistics of initial responsibilities)."""
    if stats.covariance_type != priors.covariance_type:
        raise ValueError(
            f"statistics of {stats.covariance_type} covariances, priors of {priors.covariance_type}"
        )
    if stats.shift.shape[1] != priors.d:
        raise ValueError(f"statistics of {stats.shift.shape[1]} features, priors of {priors.d}")
    nk, xk, sk = kernel.gaussian_moments(stats, reg_covar)
    mean_precision = priors.mean_precision_prior + nk
    weighted_sums = priors.mean_precision_prior * priors.mean_prior + nk[:, None] * xk
    means = weighted_sums / mean_precision[:, None]
    dof, covariances = _wishart(nk, xk, sk, mean_precision, priors)
    return VariationalParams(
        priors.covariance_type,
        priors.prior_type,
        _weight_concentration(nk, priors),
        mean_precision,
        means,
        dof,
        covariances,
    )


# --------------------------------------------------------------------------- lower bound


def _log_det_cholesky(chol: np.ndarray, covariance_type: str, d: int) -> np.ndarray:
    """log det of each precision Cholesky factor (scikit-learn's ``_compute_log_det_cholesky``)."""
    if covariance_type == "full":
        return np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
    if covariance_type == "tied":
        return np.sum(np.log(np.diag(chol)))
    if covariance_type == "diag":
        return np.sum(np.log(chol), axis=1)
    return d * np.log(chol)


def _expected_log_density_sums(stats: SufficientStats, params: MixtureParams) -> np.ndarray:
    """sum_i w_i r_ij log N(x_i | mean_j, cov_j) per component (k,), from the statistics:
    resp_j (log det P_j^(1/2) - d/2 log 2 pi) - tr(P_j M_j) / 2, with M_j the weighted scatter
    around mean_j (the moments moved from the shift to the mean)."""
    t = stats.covariance_type
    d = params.d
    chol = params.precisions_cholesky
    delta = params.means - stats.shift
    log_det = _log_det_cholesky(chol, t, d)
    if t in ("full", "tied"):
        cross = np.einsum("ki,kj->kij", stats.first, delta)
        scatter = (
            stats.second
            - cross
            - np.swapaxes(cross, 1, 2)
            + stats.resp[:, None, None] * np.einsum("ki,kj->kij", delta, delta)
        )
        # tr(P M) = tr(C^T M C) with P = C C^T
        chols = np.broadcast_to(chol, scatter.shape) if t == "tied" else chol
        trace = np.einsum("kab,kac,kcb->k", chols, scatter, chols)
    else:
        scatter = stats.second - 2.0 * stats.first * delta + stats.resp[:, None] * delta**2
        precision = chol**2
        trace = (
            np.sum(scatter * precision, axis=1)
            if t == "diag"
            else precision * np.sum(scatter, axis=1)
        )
    return stats.resp * (log_det - 0.5 * d * _LOG_2PI) - 0.5 * trace


def responsibility_entropy(stats: SufficientStats, e_step_state: VariationalParams) -> float:
    """-sum_i w_i sum_j r_ij log r_ij of the E-step at ``e_step_state`` that gave ``stats``,
    from the statistics alone: log r_ij = log pi_j + log N_j(x_i) - log p(x_i), pi the
    weights of ``e_step_state.gaussian``."""
    gaussian = e_step_state.gaussian
    per_component = stats.resp * e_step_state.gaussian_log_weights + _expected_log_density_sums(
        stats, gaussian
    )
    return float(stats.log_likelihood - per_component.sum())


def lower_bound(
    stats: SufficientStats,
    e_step_state: VariationalParams,
    new_state: VariationalParams,
    priors: VariationalPriors,
) -> float:
    """scikit-learn's ``_compute_lower_bound``: the responsibilities' entropy of the E-step at
    ``e_step_state`` (that gave ``stats``) and the parameter terms of ``new_state`` (the
    M-step's result), constants dropped as scikit-learn."""
    d = new_state.d
    t = new_state.covariance_type
    dof = new_state.degrees_of_freedom
    log_det = _log_det_cholesky(new_state.precisions_cholesky, t, d) - 0.5 * d * np.log(dof)
    log_wishart_norm = -(
        dof * log_det
        + dof * d * 0.5 * math.log(2.0)
        + np.sum(gammaln(0.5 * (dof - np.arange(d)[:, None])), axis=0)
    )
    log_wishart = (
        new_state.k * float(np.sum(log_wishart_norm)) if t == "tied" else np.sum(log_wishart_norm)
    )
    concentration = new_state.weight_concentration
    if new_state.prior_type == "dirichlet_process":
        log_norm_weight = -np.sum(betaln(concentration[0], concentration[1]))
    else:
        log_norm_weight = gammaln(np.sum(concentration)) - np.sum(gammaln(concentration))
    return float(
        responsibility_entropy(stats, e_step_state)
        - log_wishart
        - log_norm_weight
        - 0.5 * d * np.sum(np.log(new_state.mean_precision))
    )


# --------------------------------------------------------------------------- the EM loop


def variational_update(priors: VariationalPriors, reg_covar: float) -> kernel.UpdateFunction:
    """The update of variational EM for :func:`spark_gmm.kernel.run_em`: (statistics of the
    E-step at a state, the state) -> (:func:`variational_m_step`, :func:`lower_bound`)."""

    def update(stats: SufficientStats, state: VariationalParams):
        new_state = variational_m_step(stats, priors, reg_covar)
        return new_state, lower_bound(stats, state, new_state, priors)

    return update


def variational_stats_function(compute_stats: kernel.StatsFunction) -> kernel.StatsFunction:
    """An engine's statistics function over MixtureParams as one over VariationalParams
    states: each state's E-step is that of its :attr:`VariationalParams.gaussian`."""
    return lambda states: compute_stats([state.gaussian for state in states])


def initial_state(
    stats: SufficientStats, priors: VariationalPriors, reg_covar: float
) -> VariationalParams:
    """The state before the first iteration from statistics of initial responsibilities
    (scikit-learn's ``_initialize``)."""
    return variational_m_step(stats, priors, reg_covar)


def initial_resp_stats(
    X: np.ndarray,
    resp: np.ndarray,
    covariance_type: str,
    sample_weight: Optional[np.ndarray] = None,
) -> SufficientStats:
    """Statistics of initial responsibilities resp (n, k) of rows X (n, d), moments around
    :func:`spark_gmm.kernel.moment_shift` of the responsibility-weighted means."""
    X = np.asarray(X, dtype=np.float64)
    resp = np.asarray(resp, dtype=np.float64)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    rw = resp * w[:, None]
    means = (rw.T @ X) / (rw.sum(axis=0) + _EPS10)[:, None]
    shift = kernel.moment_shift(means, covariance_type)
    return kernel.responsibility_stats(X, sample_weight, resp, shift, covariance_type)


def fit_variational(
    X: np.ndarray,
    initial_resp: np.ndarray,
    priors: VariationalPriors,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    sample_weight: Optional[np.ndarray] = None,
    block_rows: Optional[int] = None,
) -> EMResult:
    """Single-process variational EM from initial responsibilities (the numerical reference):
    the result's ``params`` is the final :class:`VariationalParams`, ``history`` the lower
    bound of each iteration (its last is scikit-learn's ``lower_bound_``)."""
    stats = initial_resp_stats(X, initial_resp, priors.covariance_type, sample_weight)
    start = initial_state(stats, priors, reg_covar)
    compute = variational_stats_function(kernel.local_stats_function(X, sample_weight, block_rows))
    return kernel.run_em(
        compute, [start], max_iter, tol, reg_covar, update=variational_update(priors, reg_covar)
    )[0]


def predict(X: np.ndarray, state: VariationalParams, block_rows: Optional[int] = None):
    """(labels (n,) int32, probabilities (n, k), log densities (n,)) of rows X: scikit-learn's
    ``predict``, ``predict_proba`` and ``score_samples``."""
    labels, proba, logp = kernel.predict(X, state.gaussian, block_rows)
    return labels, proba, logp + state.log_weight_normaliser
