"""The pure-NumPy EM kernel against scikit-learn and scipy, for every covariance type.

"Relative" tolerances below are scale-relative: ``|a - b| <= rtol * max|b|`` element-wise,
so near-zero entries of a matrix are judged against the size of the matrix, not themselves.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import (
    _compute_precision_cholesky,
    _estimate_gaussian_parameters,
)

from spark_gmm import kernel as K
from spark_gmm.kernel import CovarianceError, MixtureParams, SufficientStats

COV_TYPES = list(K.COVARIANCE_TYPES)
DATASETS = ["separated", "overlapping", "d1", "d5"]


# --------------------------------------------------------------------------- helpers


def assert_close(actual, desired, rtol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=what)


def assert_params_close(ours: MixtureParams, theirs, rtol, what=""):
    """``theirs``: a MixtureParams or a fitted sklearn GaussianMixture."""
    if isinstance(theirs, MixtureParams):
        w, m, c, p = theirs.weights, theirs.means, theirs.covariances, theirs.precisions_cholesky
    else:
        w, m, c, p = (
            theirs.weights_,
            theirs.means_,
            theirs.covariances_,
            theirs.precisions_cholesky_,
        )
    assert_close(ours.weights, w, rtol, f"{what} weights")
    assert_close(ours.means, m, rtol, f"{what} means")
    assert_close(ours.covariances, c, rtol, f"{what} covariances")
    assert_close(ours.precisions_cholesky, p, rtol, f"{what} precisions_cholesky")


def _blobs(rng, centers, n_per, scales):
    centers = np.asarray(centers, dtype=np.float64)
    d = centers.shape[1]
    parts, labels = [], []
    for j, (c, s) in enumerate(zip(centers, scales)):
        a = rng.normal(size=(d, d)) * 0.3 + np.eye(d)  # mildly anisotropic, correlated
        parts.append(c + s * rng.normal(size=(n_per, d)) @ a)
        labels.append(np.full(n_per, j))
    X, y = np.concatenate(parts), np.concatenate(labels)
    order = rng.permutation(len(X))
    return X[order], y[order]


@functools.lru_cache(maxsize=None)
def dataset(name):
    """(X, true labels, k), deterministic and cached (callers must not mutate)."""
    rng = np.random.default_rng({"separated": 1, "overlapping": 2, "d1": 3, "d5": 4}[name])
    if name == "separated":
        X, y = _blobs(rng, [[0, 0], [12, 0], [0, 12]], 120, [1.0, 0.7, 1.3])
    elif name == "overlapping":
        X, y = _blobs(rng, [[0, 0], [2, 0], [1, 1.5]], 150, [1.0, 0.8, 1.2])
    elif name == "d1":
        X, y = _blobs(rng, [[-3.0], [0.5], [4.0]], 130, [1.0, 0.5, 1.5])
    elif name == "d5":
        X, y = _blobs(rng, rng.normal(scale=4.0, size=(3, 5)), 110, [1.0, 1.5, 0.8])
    else:
        raise KeyError(name)
    X.setflags(write=False)
    return X, y, int(y.max()) + 1


def random_init(X, k, covariance_type, seed=0):
    """Random (valid) initial parameters near the data, as (MixtureParams, sklearn kwargs)."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    weights = rng.dirichlet(np.full(k, 5.0))
    means = X[rng.choice(n, size=k, replace=False)] + 0.1 * rng.normal(size=(k, d))
    base = np.cov(X.T, bias=True).reshape(d, d)

    def spd():
        a = rng.normal(size=(d, d)) * 0.3
        c = base * rng.uniform(0.3, 1.0) + a @ a.T + 0.05 * np.eye(d)
        return 0.5 * (c + c.T)

    if covariance_type == "full":
        covs = np.stack([spd() for _ in range(k)])
        precisions = np.stack([np.linalg.inv(c) for c in covs])
        precisions = 0.5 * (precisions + np.swapaxes(precisions, 1, 2))
    elif covariance_type == "tied":
        covs = spd()
        precisions = np.linalg.inv(covs)
        precisions = 0.5 * (precisions + precisions.T)
    elif covariance_type == "diag":
        covs = np.diag(base)[None] * rng.uniform(0.3, 1.5, size=(k, d))
        precisions = 1.0 / covs
    else:
        covs = np.trace(base) / d * rng.uniform(0.3, 1.5, size=k)
        precisions = 1.0 / covs
    params = MixtureParams(weights, means, covs, covariance_type)
    sk = dict(weights_init=weights, means_init=means, precisions_init=precisions)
    return params, sk


def sklearn_fit(X, k, covariance_type, sk_init, max_iter, tol=1e-3, reg_covar=1e-6):
    gm = GaussianMixture(
        n_components=k,
        covariance_type=covariance_type,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        init_params="random_from_data",
        random_state=0,
        **sk_init,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    return gm


def sklearn_from_params(params: MixtureParams) -> GaussianMixture:
    """An sklearn model holding exactly these parameters (precisions from sklearn's own code)."""
    gm = GaussianMixture(n_components=params.k, covariance_type=params.covariance_type)
    gm.weights_ = params.weights.copy()
    gm.means_ = params.means.copy()
    gm.covariances_ = params.covariances.copy()
    gm.precisions_cholesky_ = _compute_precision_cholesky(
        params.covariances, params.covariance_type
    )
    gm.n_features_in_ = params.d
    gm.converged_, gm.n_iter_, gm.lower_bound_ = True, 1, 0.0
    return gm


def empirical_params(X, resp, sample_weight, covariance_type, reg_covar):
    """Weighted empirical weights/means/covariances (np.cov), the definition itself."""
    w = np.ones(len(X)) if sample_weight is None else sample_weight
    rw = resp * w[:, None]
    nk = rw.sum(axis=0)
    k, d = resp.shape[1], X.shape[1]
    means = np.stack([np.average(X, axis=0, weights=rw[:, j]) for j in range(k)])
    covs = np.stack([np.cov(X.T, aweights=rw[:, j], bias=True).reshape(d, d) for j in range(k)])
    if covariance_type == "full":
        cov = covs + reg_covar * np.eye(d)
    elif covariance_type == "tied":
        cov = np.einsum("k,kij->ij", nk, covs) / nk.sum() + reg_covar * np.eye(d)
    elif covariance_type == "diag":
        cov = np.diagonal(covs, axis1=1, axis2=2) + reg_covar
    else:
        cov = np.diagonal(covs, axis1=1, axis2=2).mean(axis=1) + reg_covar
    return nk / nk.sum(), means, cov


def stats_with_resp(X, resp, sample_weight, shift, covariance_type):
    """Statistics of given responsibilities (what accumulate_stats does after its E-step)."""
    stats = SufficientStats.zeros(shift, covariance_type)
    w = np.ones(len(X)) if sample_weight is None else sample_weight
    K._add_moments(stats, X, resp * w[:, None])
    stats.weight_sum = float(w.sum())
    stats.n_rows = len(X)
    return stats


def init_from_centers(X, centers, covariance_type, reg_covar=1e-6, sample_weight=None):
    """The k-means-style initial parameters of the Spark layer: hard assignment + M-step."""
    stats = K.hard_assignment_stats(X, sample_weight, centers, covariance_type)
    return K.m_step(stats, reg_covar)


# --------------------------------------------------------------------------- vs scikit-learn EM


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_one_em_step_matches_sklearn(name, covariance_type):
    X, _, k = dataset(name)
    init, sk_init = random_init(X, k, covariance_type, seed=11)
    gm = sklearn_fit(X, k, covariance_type, sk_init, max_iter=1)
    res = K.fit_em(X, init, max_iter=1, tol=1e-3)
    assert_params_close(res.params, gm, 1e-6, "one step")
    assert res.n_iter == gm.n_iter_ == 1
    assert res.converged is bool(gm.converged_) is False
    assert len(res.history) == 1
    assert res.history[-1] == pytest.approx(gm.lower_bound_, rel=1e-10)
    # the lower bound is the mean log-likelihood at the *initial* parameters
    assert res.history[-1] == pytest.approx(K.score_samples(X, init).mean(), rel=1e-12)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_full_fit_matches_sklearn(name, covariance_type):
    X, _, k = dataset(name)
    init, sk_init = random_init(X, k, covariance_type, seed=5)
    gm = sklearn_fit(X, k, covariance_type, sk_init, max_iter=100, tol=1e-3)
    res = K.fit_em(X, init, max_iter=100, tol=1e-3)
    assert_params_close(res.params, gm, 1e-6, "full fit")
    assert res.n_iter == gm.n_iter_
    assert res.converged == bool(gm.converged_)
    assert res.history[-1] == pytest.approx(gm.lower_bound_, rel=1e-9)
    assert_close(res.history, gm.lower_bounds_, 1e-9, "history")
    # final_stats is a pass at the returned parameters: sklearn's score
    assert res.mean_log_likelihood == pytest.approx(gm.score(X), rel=1e-9)
    assert res.log_likelihood == pytest.approx(gm.score(X) * len(X), rel=1e-9)
    assert res.final_stats.weight_sum == len(X) and res.final_stats.n_rows == len(X)
    np.testing.assert_array_equal(res.final_stats.counts, np.bincount(gm.predict(X), minlength=k))


def test_full_fit_actually_iterates():
    """Guard against the comparisons above being vacuous (e.g. everything stopping at once)."""
    iters = []
    for name in DATASETS:
        X, _, k = dataset(name)
        for t in COV_TYPES:
            init, _ = random_init(X, k, t, seed=5)
            iters.append(K.fit_em(X, init, max_iter=100, tol=1e-3).n_iter)
    assert max(iters) >= 10 and min(iters) >= 2


# --------------------------------------------------------------------------- E-step


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_log_gaussian_prob_matches_scipy(name, covariance_type):
    X, _, k = dataset(name)
    params, _ = random_init(X, k, covariance_type, seed=3)
    ours = K.log_gaussian_prob(X, params)
    assert ours.shape == (len(X), k)
    covs = params.full_covariances()
    for j in range(k):
        ref = multivariate_normal(mean=params.means[j], cov=covs[j]).logpdf(X)
        assert_close(ours[:, j], np.atleast_1d(ref), 1e-10, f"component {j}")


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_e_step_responsibilities(name, covariance_type):
    X, _, k = dataset(name)
    params, _ = random_init(X, k, covariance_type, seed=4)
    log_prob_norm, log_resp = K.e_step(X, params)
    assert log_prob_norm.shape == (len(X),) and log_resp.shape == (len(X), k)
    np.testing.assert_allclose(np.exp(log_resp).sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # log p(x) = logsumexp_j (log w_j + log N_j)
    ref = np.log(np.exp(K.log_gaussian_prob(X, params)) @ params.weights)
    assert_close(log_prob_norm, ref, 1e-9)
    assert np.all(log_resp <= 1e-12)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("block_rows", [None, 7])
def test_score_samples_and_predict_match_sklearn(name, covariance_type, block_rows):
    X, _, k = dataset(name)
    init, sk_init = random_init(X, k, covariance_type, seed=8)
    gm = sklearn_fit(X, k, covariance_type, sk_init, max_iter=3)
    params = MixtureParams(gm.weights_, gm.means_, gm.covariances_, covariance_type)
    assert_close(params.precisions_cholesky, gm.precisions_cholesky_, 1e-12)
    assert_close(K.score_samples(X, params, block_rows), gm.score_samples(X), 1e-10)
    labels, proba, logp = K.predict(X, params, block_rows)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, gm.predict(X))
    np.testing.assert_allclose(proba, gm.predict_proba(X), rtol=1e-9, atol=1e-12)
    assert_close(logp, gm.score_samples(X), 1e-10)
    # the same on a model built directly from our own parameters
    sk = sklearn_from_params(init)
    assert_close(K.score_samples(X, init, block_rows), sk.score_samples(X), 1e-10)
    np.testing.assert_array_equal(K.predict(X, init, block_rows)[0], sk.predict(X))


def test_predict_empty_input():
    X, _, k = dataset("separated")
    params, _ = random_init(X, k, "full")
    labels, proba, logp = K.predict(np.empty((0, 2)), params)
    assert labels.shape == (0,) and proba.shape == (0, k) and logp.shape == (0,)


# --------------------------------------------------------------------------- statistics / M-step


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("weighted", [False, True])
def test_suffstats_match_empirical_covariance(name, covariance_type, weighted):
    """As sklearn's test_suffstat_sk_*: given responsibilities, m_step(stats) is the weighted
    empirical estimate and sklearn's _estimate_gaussian_parameters (unweighted)."""
    X, _, k = dataset(name)
    rng = np.random.default_rng(21)
    n, d = X.shape
    resp = rng.dirichlet(np.ones(k), size=n)
    w = rng.uniform(0.0, 3.0, size=n) if weighted else None
    reg = 1e-6
    # any shift must give the same estimate: the means of a candidate, or something far off
    for shift in (X[rng.choice(n, k)], np.full((k, d), 50.0), np.zeros((k, d))):
        if covariance_type in ("diag", "spherical"):
            shift = np.repeat(shift[:1], k, axis=0)
        stats = stats_with_resp(X, resp, w, shift, covariance_type)
        ours = K.m_step(stats, reg)
        ew, em, ec = empirical_params(X, resp, w, covariance_type, reg)
        assert_close(ours.weights, ew, 1e-10, "weights")
        assert_close(ours.means, em, 1e-10, "means")
        assert_close(ours.covariances, ec, 1e-9, "covariances")
        if not weighted:
            sw, sm, sc = _estimate_gaussian_parameters(X, resp, reg, covariance_type)
            assert_close(ours.weights, sw / sw.sum(), 1e-12, "sk weights")
            assert_close(ours.means, sm, 1e-10, "sk means")
            assert_close(ours.covariances, sc, 1e-9, "sk covariances")
            assert_close(
                ours.precisions_cholesky, _compute_precision_cholesky(sc, covariance_type), 1e-8
            )


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_accumulate_stats_then_m_step_is_sklearn_step(name, covariance_type):
    X, _, k = dataset(name)
    params, _ = random_init(X, k, covariance_type, seed=9)
    stats = K.accumulate_stats(X, None, params)
    log_prob_norm, log_resp = K.e_step(X, params)
    resp = np.exp(log_resp)
    assert_close(stats.resp, resp.sum(axis=0), 1e-12)
    assert stats.log_likelihood == pytest.approx(log_prob_norm.sum(), rel=1e-12)
    assert stats.weight_sum == len(X) and stats.n_rows == len(X)
    np.testing.assert_array_equal(stats.counts, np.bincount(log_resp.argmax(1), minlength=k))
    np.testing.assert_array_equal(stats.shift, K.stats_shift(params))
    sw, sm, sc = _estimate_gaussian_parameters(X, resp, 1e-6, covariance_type)
    new = K.m_step(stats, 1e-6)
    assert_close(new.weights, sw / sw.sum(), 1e-12)
    assert_close(new.means, sm, 1e-10)
    assert_close(new.covariances, sc, 1e-9)


def test_n_parameters():
    expected = {"full": 41, "tied": 26, "diag": 21, "spherical": 13}
    for t, p in expected.items():
        assert K.n_parameters(2, 5, t) == p
        cov = {
            "full": np.stack([np.eye(5)] * 2),
            "tied": np.eye(5),
            "diag": np.ones((2, 5)),
            "spherical": np.ones(2),
        }[t]
        params = MixtureParams(np.ones(2), np.zeros((2, 5)), cov, t)
        assert params.n_parameters() == p
        assert sklearn_from_params(params)._n_parameters() == p
    for k in (1, 3):
        for d in (1, 4):
            for t in COV_TYPES:
                gm = GaussianMixture(n_components=k, covariance_type=t)
                gm.means_ = np.zeros((k, d))
                assert K.n_parameters(k, d, t) == gm._n_parameters()


def test_covariance_shape_and_type_check():
    assert K.covariance_shape(3, 2, "full") == (3, 2, 2)
    assert K.covariance_shape(3, 2, "tied") == (2, 2)
    assert K.covariance_shape(3, 2, "diag") == (3, 2)
    assert K.covariance_shape(3, 2, "spherical") == (3,)
    with pytest.raises(ValueError, match="covarianceType"):
        K.check_covariance_type("Full")


# --------------------------------------------------------------------------- EM properties


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_log_likelihood_never_decreases(covariance_type):
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        d = int(rng.integers(1, 5))
        k = int(rng.integers(1, 5))
        centers = rng.normal(scale=rng.uniform(0.5, 5.0), size=(k + 1, d))
        X, _ = _blobs(rng, centers, int(rng.integers(20, 80)), rng.uniform(0.3, 2.0, k + 1))
        init, _ = random_init(X, k, covariance_type, seed=seed)
        w = rng.uniform(0.0, 2.0, size=len(X)) if seed % 2 else None
        res = K.fit_em(X, init, sample_weight=w, max_iter=40, tol=0.0)
        assert res.n_iter == 40 and not res.converged
        h = np.asarray(res.history + [res.mean_log_likelihood])
        assert np.all(np.isfinite(h))
        assert np.all(np.diff(h) >= -1e-10), (seed, np.diff(h).min())


def test_reg_covar_dents_monotonicity_exactly_like_sklearn():
    """Found by the hypothesis suite: with reg_covar, S + reg*I is not the exact M-step, so the
    log-likelihood can drop slightly when a component's scatter is comparable to reg_covar.
    sklearn's lower bound drops by the same amount: a property of regularised EM, not a bug."""
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0078125, 0.0], [0.0, 0.0]])
    w0, means, precisions = [1 - 1e-300, 1e-300], np.zeros((2, 2)), np.stack([np.eye(2)] * 2)
    init = MixtureParams(w0, means, precisions, "full")
    res = K.fit_em(X, init, max_iter=6, tol=0.0, reg_covar=1e-6)
    h = np.diff(res.history + [res.mean_log_likelihood])
    gm = sklearn_fit(
        X,
        2,
        "full",
        dict(weights_init=w0, means_init=means, precisions_init=precisions),
        max_iter=6,
        tol=0.0,
    )
    sk = np.diff(list(gm.lower_bounds_) + [gm.score(X)])
    # atol: the 1e-6-variance component sits near EXPANSION_LIMIT from the centre of the
    # means, where the expansion's rounding is about eps * 1e5 = 2e-11 per log-density
    np.testing.assert_allclose(h, sk, rtol=1e-6, atol=2e-11)
    assert -1e-7 < h.min() < -1e-8


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_integer_sample_weights_equal_duplicated_rows(covariance_type):
    X, _, k = dataset("overlapping")
    rng = np.random.default_rng(7)
    w = rng.integers(0, 4, size=len(X))  # zero drops the row
    init, _ = random_init(X, k, covariance_type, seed=2)
    weighted = K.fit_em(X, init, sample_weight=w.astype(float), max_iter=100, tol=1e-3)
    dup = K.fit_em(np.repeat(X, w, axis=0), init, max_iter=100, tol=1e-3)
    assert weighted.n_iter == dup.n_iter and weighted.converged == dup.converged
    assert weighted.n_iter >= 3
    assert_params_close(weighted.params, dup.params, 1e-10)
    assert_close(weighted.history, dup.history, 1e-10)
    assert weighted.final_stats.weight_sum == dup.final_stats.weight_sum == w.sum()
    assert weighted.log_likelihood == pytest.approx(dup.log_likelihood, rel=1e-10)
    assert weighted.final_stats.n_rows == len(X)  # rows read, not weight


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_uniform_sample_weights_change_nothing(covariance_type):
    X, _, k = dataset("d5")
    init, _ = random_init(X, k, covariance_type, seed=1)
    a = K.fit_em(X, init, max_iter=100)
    b = K.fit_em(X, init, sample_weight=np.full(len(X), 2.5), max_iter=100)
    assert a.n_iter == b.n_iter
    assert_params_close(b.params, a.params, 1e-10)
    assert_close(b.history, a.history, 1e-12)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", ["overlapping", "d5"])
def test_block_rows_do_not_matter(name, covariance_type):
    X, _, k = dataset(name)
    init, _ = random_init(X, k, covariance_type, seed=6)
    ref = K.fit_em(X, init, max_iter=100, tol=1e-3)
    for block_rows in (1000000, 64, 7):
        res = K.fit_em(X, init, max_iter=100, tol=1e-3, block_rows=block_rows)
        assert res.n_iter == ref.n_iter
        assert_params_close(res.params, ref.params, 1e-9, f"block_rows={block_rows}")
        assert_close(res.history, ref.history, 1e-9)
    # statistics themselves
    s1 = K.accumulate_stats(X, None, init)
    s2 = K.accumulate_stats(X, None, init, block_rows=13)
    for a, b in zip(s1.to_vector(), s2.to_vector()):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9 * np.abs(s1.to_vector()).max())


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_chunked_stats_add_up_and_round_trip(name, covariance_type):
    X, _, k = dataset(name)
    rng = np.random.default_rng(17)
    w = rng.uniform(0.0, 2.0, size=len(X))
    params, _ = random_init(X, k, covariance_type, seed=12)
    whole = K.accumulate_stats(X, w, params)
    cuts = np.sort(rng.choice(np.arange(1, len(X)), size=5, replace=False))
    bounds = [0, *cuts.tolist(), len(X)]
    chunks = [K.accumulate_stats(X[a:b], w[a:b], params) for a, b in zip(bounds, bounds[1:])]
    chunks.append(K.accumulate_stats(X[:0], w[:0], params))  # an empty partition
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    v_whole, v_total = whole.to_vector(), total.to_vector()
    assert_close(v_total, v_whole, 1e-9)
    assert total.n_rows == len(X)
    np.testing.assert_array_equal(total.counts, whole.counts)
    assert_params_close(K.m_step(total, 1e-6), K.m_step(whole, 1e-6), 1e-9)
    # to_vector / from_vector round trip (exactly)
    back = SufficientStats.from_vector(v_total, total.shift, covariance_type)
    np.testing.assert_array_equal(back.to_vector(), v_total)
    for attr in ("resp", "first", "second", "counts", "shift"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(total, attr))
        assert getattr(back, attr).shape == getattr(total, attr).shape
    assert (back.log_likelihood, back.weight_sum, back.n_rows) == (
        total.log_likelihood,
        total.weight_sum,
        total.n_rows,
    )
    assert isinstance(back.n_rows, int)
    with pytest.raises(ValueError, match="expected"):
        SufficientStats.from_vector(v_total[:-1], total.shift, covariance_type)


def test_adding_stats_with_different_shifts_raises():
    X, _, k = dataset("separated")
    a, _ = random_init(X, k, "full", seed=1)
    b, _ = random_init(X, k, "full", seed=2)
    with pytest.raises(ValueError, match="shift"):
        K.accumulate_stats(X, None, a) + K.accumulate_stats(X, None, b)
    c, _ = random_init(X, k, "diag", seed=1)
    with pytest.raises(ValueError):
        K.accumulate_stats(X, None, a) + K.accumulate_stats(X, None, c)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_run_em_over_partitions_through_vectors(covariance_type):
    """The Spark layer's shape: per-partition stats, shipped as vectors, added on the driver."""
    X, _, k = dataset("d5")
    w = np.random.default_rng(3).uniform(0.5, 1.5, size=len(X))
    parts = np.array_split(np.arange(len(X)), 4)
    inits = [random_init(X, k, covariance_type, seed=s)[0] for s in (1, 2)]

    def compute_stats(candidates):
        out = []
        for p in candidates:
            vec = sum(K.accumulate_stats(X[i], w[i], p, block_rows=10).to_vector() for i in parts)
            out.append(SufficientStats.from_vector(vec, K.stats_shift(p), covariance_type))
        return out

    calls = []
    results = K.run_em(
        compute_stats,
        inits,
        max_iter=100,
        tol=1e-3,
        reg_covar=1e-6,
        on_iteration=lambda *a: calls.append(a),
    )
    for init, res in zip(inits, results):
        ref = K.fit_em(X, init, sample_weight=w, max_iter=100, tol=1e-3)
        assert res.n_iter == ref.n_iter and res.converged == ref.converged
        assert_params_close(res.params, ref.params, 1e-9)
        assert_close(res.history, ref.history, 1e-9)
        assert res.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-9)
    assert len(calls) == sum(r.n_iter for r in results)
    assert all(len(c) == 5 for c in calls)


def test_run_em_zero_weight_raises():
    X, _, k = dataset("separated")
    init, _ = random_init(X, k, "full")
    with pytest.raises(ValueError, match="zero"):
        K.fit_em(X, init, sample_weight=np.zeros(len(X)))


# --------------------------------------------------------------------------- offsets and scale


def _true_center_init(X, y, k, covariance_type, scale=1.0):
    centers = np.stack([X[np.flatnonzero(y == j)[0]] for j in range(k)])  # one row per blob
    return init_from_centers(X, centers, covariance_type, reg_covar=1e-6 * scale**2)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", ["separated", "overlapping", "d1", "d5"])
def test_offset_1e8_gives_same_covariances(name, covariance_type):
    X, y, k = dataset(name)
    offset = 1e8
    Xs = X + offset
    init = _true_center_init(X, y, k, covariance_type)
    init_s = MixtureParams(init.weights, init.means + offset, init.covariances, covariance_type)
    a = K.fit_em(X, init, max_iter=30, tol=0.0)
    b = K.fit_em(Xs, init_s, max_iter=30, tol=0.0)
    # the rows themselves are only stored to ~1.5e-8 at 1e8, hence ~1e-6 relative
    assert_close(b.params.covariances, a.params.covariances, 2e-6, "covariances")
    assert_close(b.params.weights, a.params.weights, 1e-6, "weights")
    np.testing.assert_allclose(b.params.means - offset, a.params.means, rtol=0, atol=1e-6)
    assert_close(b.history, a.history, 1e-6, "history")
    assert_close(K.score_samples(Xs, b.params), K.score_samples(X, a.params), 1e-6)
    # the hard-assignment initialisation is offset-proof too
    init_s2 = _true_center_init(Xs, y, k, covariance_type)
    assert_close(init_s2.covariances, init.covariances, 1e-6)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("scale", [1e-4, 100.0])
def test_scaled_data_recovers_clustering(covariance_type, scale):
    rng = np.random.default_rng(31)
    X, y = _blobs(rng, [[0, 0], [100, 0], [0, 100], [100, 100]], 80, [1.0, 2.0, 0.7, 1.5])
    k = 4
    Xs = X * scale
    # default reg_covar (an absolute floor, as sklearn): the blobs are separated enough
    res = K.fit_em(Xs, _true_center_init(Xs, y, k, covariance_type), max_iter=100)
    assert adjusted_rand_score(y, K.predict(Xs, res.params)[0]) == 1.0
    # with reg_covar scaled alongside, the fit is exactly equivariant
    a = K.fit_em(X, _true_center_init(X, y, k, covariance_type), max_iter=100, reg_covar=1e-6)
    b = K.fit_em(
        Xs,
        _true_center_init(Xs, y, k, covariance_type, scale),
        max_iter=100,
        reg_covar=1e-6 * scale**2,
    )
    assert a.n_iter == b.n_iter
    assert_close(b.params.weights, a.params.weights, 1e-6)
    assert_close(b.params.means / scale, a.params.means, 1e-6)
    assert_close(b.params.covariances / scale**2, a.params.covariances, 1e-6)
    np.testing.assert_array_equal(K.predict(Xs, b.params)[0], K.predict(X, a.params)[0])


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_hard_assignment_matches_sklearn_kmeans_init(name, covariance_type):
    X, _, k = dataset(name)
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(X)
    centers = km.cluster_centers_
    labels = K.nearest_center(X, centers)
    brute = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(labels, brute)
    np.testing.assert_array_equal(labels, km.labels_)
    resp = np.eye(k)[labels]
    stats = K.hard_assignment_stats(X, None, centers, covariance_type, block_rows=50)
    np.testing.assert_array_equal(stats.counts, np.bincount(labels, minlength=k))
    assert stats.weight_sum == len(X) and stats.n_rows == len(X)
    ours = K.m_step(stats, 1e-6)
    sw, sm, sc = _estimate_gaussian_parameters(X, resp, 1e-6, covariance_type)
    assert_close(ours.weights, sw / len(X), 1e-12)
    assert_close(ours.means, sm, 1e-10)
    assert_close(ours.covariances, sc, 1e-9)
    # the same numbers as sklearn's own k-means initialisation (max_iter=0: init only)
    gm = GaussianMixture(k, covariance_type=covariance_type, max_iter=0, random_state=0).fit(X)
    assert_params_close(ours, gm, 1e-9, "kmeans init")


def test_hard_assignment_weighted():
    X, y, k = dataset("separated")
    w = np.random.default_rng(0).integers(0, 3, size=len(X)).astype(float)
    centers = np.stack([X[y == j].mean(0) for j in range(k)])
    for t in COV_TYPES:
        a = K.m_step(K.hard_assignment_stats(X, w, centers, t), 1e-6)
        b = K.m_step(
            K.hard_assignment_stats(np.repeat(X, w.astype(int), 0), None, centers, t), 1e-6
        )
        assert_params_close(a, b, 1e-10, t)


# --------------------------------------------------------------------------- errors


def test_precision_cholesky_singular_raises_naming_component():
    good, singular = np.eye(2), np.array([[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(CovarianceError, match="component 1"):
        K.precision_cholesky(np.stack([good, singular]), "full")
    with pytest.raises(CovarianceError, match="component 0"):
        K.precision_cholesky(np.stack([singular, good]), "full")
    with pytest.raises(CovarianceError, match="component 1"):
        K.precision_cholesky(np.stack([good, -good]), "full")
    with pytest.raises(CovarianceError, match="component 0"):
        K.precision_cholesky(np.stack([np.full((2, 2), np.nan), good]), "full")
    with pytest.raises(CovarianceError, match="tied"):
        K.precision_cholesky(singular, "tied")
    with pytest.raises(CovarianceError, match=r"component\(s\) \[1\]"):
        K.precision_cholesky(np.array([[1.0, 1.0], [1.0, 0.0]]), "diag")
    with pytest.raises(CovarianceError, match=r"\[0, 2\]"):
        K.precision_cholesky(np.array([-1.0, 1.0, 0.0]), "spherical")
    with pytest.raises(CovarianceError, match=r"\[1\]"):
        K.precision_cholesky(np.array([1.0, np.inf]), "spherical")
    assert issubclass(CovarianceError, ValueError)
    with pytest.raises(ValueError, match="regCovar"):
        K.precision_cholesky(np.zeros((1, 1, 1)), "full")


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_m_step_collapsed_component_without_regularisation_raises(covariance_type):
    # component 1 owns two identical rows: zero covariance
    X = np.array([[0.0, 0.0], [1.0, 0.5], [-1.0, 0.3], [0.2, -1.0], [5.0, 5.0], [5.0, 5.0]])
    stats = K.hard_assignment_stats(X, None, np.array([[0.0, 0.0], [5.0, 5.0]]), covariance_type)
    if covariance_type == "tied":
        K.m_step(stats, 0.0)  # pooled with component 0: fine
    elif covariance_type == "full":
        with pytest.raises(CovarianceError, match="component 1"):
            K.m_step(stats, 0.0)
    else:
        # diag/spherical accumulate around the centre of the means, so the 10*eps added to the
        # responsibilities (as sklearn) leaves a variance of ~eps * |mean - centre|^2 instead of
        # an exact zero (sklearn: ~eps * |mean|^2): either an error or an effectively-zero variance
        try:
            collapsed = K.m_step(stats, 0.0).full_covariances()[1]
        except CovarianceError as exc:
            assert "[1]" in str(exc)
        else:
            assert np.all(np.diagonal(collapsed) < 1e-12)
    params = K.m_step(stats, 1e-6)  # the regularisation rescues it
    np.testing.assert_allclose(params.means[1], [5.0, 5.0])


def test_precision_cholesky_matches_sklearn():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 4))
    full = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(4)
    cases = {
        "full": full,
        "tied": full[0],
        "diag": rng.uniform(0.1, 3, (3, 4)),
        "spherical": rng.uniform(0.1, 3, 3),
    }
    for t, cov in cases.items():
        p = K.precision_cholesky(cov, t)
        assert_close(p, _compute_precision_cholesky(cov, t), 1e-12, t)
        if t in ("full", "tied"):
            pp = p.reshape(-1, 4, 4)
            for c, pj in zip(cov.reshape(-1, 4, 4), pp):
                np.testing.assert_allclose(pj @ pj.T @ c, np.eye(4), atol=1e-9)
                np.testing.assert_array_equal(np.tril(pj, -1), 0.0)


def test_mixture_params_validation():
    ok = dict(weights=np.array([0.5, 0.5]), means=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="covarianceType"):
        MixtureParams(**ok, covariances=np.ones(2), covariance_type="sphere")
    with pytest.raises(ValueError, match="weights must have shape"):
        MixtureParams(np.ones(3), np.zeros((2, 3)), np.ones(2), "spherical")
    bad_shapes = {
        "full": np.ones((2, 3)),
        "tied": np.stack([np.eye(3)] * 2),
        "diag": np.ones(2),
        "spherical": np.ones((2, 3)),
    }
    for t, cov in bad_shapes.items():
        with pytest.raises(ValueError, match="covariances must have shape"):
            MixtureParams(**ok, covariances=cov, covariance_type=t)
    for w in ([-0.1, 1.1], [0.0, 0.0], [np.nan, 1.0], [np.inf, 1.0]):
        with pytest.raises(ValueError, match="weights must be finite"):
            MixtureParams(np.array(w), np.zeros((2, 3)), np.ones(2), "spherical")
    with pytest.raises(ValueError, match="means must be finite"):
        MixtureParams(
            np.ones(2), np.array([[0.0, np.nan, 0.0], [0, 0, 0]]), np.ones(2), "spherical"
        )
    with pytest.raises(CovarianceError):
        MixtureParams(**ok, covariances=np.array([1.0, 0.0]), covariance_type="spherical")
    # valid: weights normalised, zero weight allowed, derived precisions
    p = MixtureParams(np.array([1.0, 3.0, 0.0]), np.zeros((3, 2)), np.ones((3, 2)), "diag")
    np.testing.assert_allclose(p.weights, [0.25, 0.75, 0.0])
    assert (p.k, p.d) == (3, 2)
    np.testing.assert_array_equal(p.full_covariances(), np.stack([np.eye(2)] * 3))
    with pytest.raises(Exception):
        p.weights = np.ones(3)  # frozen


# --------------------------------------------------------------------------- BIC


@pytest.mark.parametrize("name", ["overlapping", "d5"])
def test_bic_from_our_pieces_matches_sklearn(name):
    X, _, _ = dataset(name)
    n = len(X)
    bic = {}
    for k in (1, 3):
        for t in COV_TYPES:
            init, sk_init = random_init(X, k, t, seed=4)
            res = K.fit_em(X, init, max_iter=100, tol=1e-3)
            ours = -2.0 * res.log_likelihood + res.params.n_parameters() * math.log(n)
            # the same parameters in sklearn
            assert ours == pytest.approx(sklearn_from_params(res.params).bic(X), rel=1e-10)
            # and sklearn's own fit from the same start
            gm = sklearn_fit(X, k, t, sk_init, max_iter=100, tol=1e-3)
            assert ours == pytest.approx(gm.bic(X), rel=1e-8)
            bic[k, t] = (ours, res.params)
    # one component: full and tied are the same model (same fit, same parameter count)
    assert bic[1, "full"][0] == pytest.approx(bic[1, "tied"][0], rel=1e-12)
    assert_params_close(
        bic[1, "full"][1],
        MixtureParams(
            bic[1, "tied"][1].weights,
            bic[1, "tied"][1].means,
            bic[1, "tied"][1].covariances[None],
            "full",
        ),
        1e-12,
    )
    # ... while diag and spherical are different models with different counts
    assert bic[1, "diag"][0] != pytest.approx(bic[1, "spherical"][0], rel=1e-6)
    assert (
        K.n_parameters(1, X.shape[1], "diag") != K.n_parameters(1, X.shape[1], "spherical")
        or X.shape[1] == 1
    )


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_far_apart_components_keep_precision(covariance_type):
    """Components 1e6 sigma apart: an expansion around the centre of the means would cancel
    catastrophically, so diag/spherical take the per-component path."""
    rng = np.random.default_rng(0)
    sep = 1e6
    X = np.concatenate([rng.normal(0.0, 1.0, (200, 2)), rng.normal(sep, 1.0, (200, 2))])
    cov = np.ones((2, 2)) if covariance_type == "diag" else np.ones(2)
    params = MixtureParams([0.5, 0.5], [[0.0, 0.0], [sep, sep]], cov, covariance_type)
    ref = multivariate_normal(mean=[0.0, 0.0], cov=np.eye(2)).logpdf(X[:200])
    new = K.m_step(K.accumulate_stats(X, None, params), 0.0)
    var = np.var(X[:200], axis=0)
    var = var if covariance_type == "diag" else var.mean()
    assert_close(K.log_gaussian_prob(X[:200], params)[:, 0], ref, 1e-9)
    assert_close(new.covariances[0], var, 1e-9)


def test_far_apart_components_full_is_exact():
    rng = np.random.default_rng(0)
    sep = 1e6
    X = np.concatenate([rng.normal(0.0, 1.0, (200, 2)), rng.normal(sep, 1.0, (200, 2))])
    for t, cov in (("full", np.stack([np.eye(2)] * 2)), ("tied", np.eye(2))):
        params = MixtureParams([0.5, 0.5], [[0.0, 0.0], [sep, sep]], cov, t)
        ref = multivariate_normal(mean=[0.0, 0.0], cov=np.eye(2)).logpdf(X[:200])
        assert_close(K.log_gaussian_prob(X[:200], params)[:, 0], ref, 1e-12)
        new = K.m_step(K.accumulate_stats(X, None, params), 0.0)
        if t == "full":
            assert_close(new.covariances[0], np.cov(X[:200].T, bias=True), 1e-9)


@pytest.mark.parametrize("covariance_type", K.COVARIANCE_TYPES)
@pytest.mark.parametrize("offset", [0.0, 1e8])
@pytest.mark.parametrize("name", ["separated", "d5"])
def test_expanded_and_per_component_paths_agree(monkeypatch, name, covariance_type, offset):
    """Every type takes the expansion around the centre of the means (full/tied: one shared
    quadratic form) while every mean is within sqrt(EXPANSION_LIMIT) standard deviations of
    it, else the exact per-component path: both give the same densities and statistics
    (around each mean)."""
    X, _, k = dataset(name)
    X = X + offset
    init, _ = random_init(X, k, covariance_type, seed=2)
    w = np.random.default_rng(3).uniform(0.5, 2.0, len(X))
    assert K._expanded(init)  # these blobs are well within the limit
    quadratic_ll = K.log_gaussian_prob(X, init)
    quadratic = K.accumulate_stats(X, w, init, block_rows=50)
    monkeypatch.setattr(K, "EXPANSION_LIMIT", 0.0)
    # a new parameters object: what is derived from parameters is derived once per object
    init = K.MixtureParams(init.weights, init.means, init.covariances, init.covariance_type)
    assert not K._expanded(init) and K._quadratic(init) is None
    assert K._diagonal_far_apart(init) == (covariance_type in ("diag", "spherical"))
    assert_close(quadratic_ll, K.log_gaussian_prob(X, init), 1e-12)
    exact = K.accumulate_stats(X, w, init, block_rows=50)
    assert_close(quadratic.resp, exact.resp, 1e-12)
    np.testing.assert_array_equal(quadratic.counts, exact.counts)
    assert_close(quadratic.log_likelihood, exact.log_likelihood, 1e-12)
    np.testing.assert_array_equal(exact.shift, init.means)
    assert_params_close(K.m_step(quadratic, 1e-6), K.m_step(exact, 1e-6), 1e-9, "m_step")
    if covariance_type in ("diag", "spherical"):
        return  # their expanded moments stay around the centre of the means
    np.testing.assert_array_equal(quadratic.shift, exact.shift)
    # moments around each mean: the quadratic path moves them from the centre of the means
    np.testing.assert_allclose(
        quadratic.first, exact.first, rtol=0, atol=1e-9 * np.abs(exact.first).max()
    )
    assert_close(quadratic.second, exact.second, 1e-9)


@pytest.mark.parametrize("covariance_type", K.COVARIANCE_TYPES)
def test_expansion_error_at_the_limit_stays_below_1e_9(monkeypatch, covariance_type):
    """Two unit-variance blobs whose means sit just inside sqrt(EXPANSION_LIMIT) standard
    deviations of the centre of the means (data offset by 1e3): the expansion is used, and its
    log-densities (absolute) and covariances (relative) agree with the exact per-component
    path to 1e-9 (covariances: of their largest entry)."""
    rng = np.random.default_rng(0)
    d = 5
    reach = 0.99 * math.sqrt(K.EXPANSION_LIMIT)  # standard deviations from the centre
    X = (
        np.concatenate(
            [rng.normal(0.0, 1.0, (2000, d)), rng.normal(2 * reach / math.sqrt(d), 1.0, (2000, d))]
        )
        + 1e3
    )
    means = np.stack([X[:2000].mean(axis=0), X[2000:].mean(axis=0)])
    cov = {
        "full": np.stack([np.eye(d)] * 2),
        "tied": np.eye(d),
        "diag": np.ones((2, d)),
        "spherical": np.ones(2),
    }[covariance_type]
    params = MixtureParams([0.5, 0.5], means, cov, covariance_type)
    assert K._expanded(params)
    expanded_ll = K.log_gaussian_prob(X, params)
    expanded = K.m_step(K.accumulate_stats(X, None, params), 0.0)
    monkeypatch.setattr(K, "EXPANSION_LIMIT", 0.0)
    # a new parameters object: what is derived from parameters is derived once per object
    params = MixtureParams([0.5, 0.5], means, cov, covariance_type)
    assert K._quadratic(params) is None and not K._expanded(params)
    exact_ll = K.log_gaussian_prob(X, params)
    exact = K.m_step(K.accumulate_stats(X, None, params), 0.0)
    own = exact_ll[np.arange(len(X)), np.repeat([0, 1], 2000)]  # each row's own component
    assert np.abs(expanded_ll - exact_ll)[exact_ll >= own.min()].max() < 1e-9
    scale = np.abs(exact.covariances).max()
    np.testing.assert_allclose(expanded.covariances, exact.covariances, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(expanded.means, exact.means, rtol=1e-12)
