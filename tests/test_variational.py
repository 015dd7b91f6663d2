"""The variational Bayesian mixture (spark_gmm.variational) against scikit-learn's
BayesianGaussianMixture, started from the same responsibilities, for every covariance type
and both weight priors. Pure NumPy: no Spark."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture
from threadpoolctl import threadpool_limits

from spark_gmm import kernel as K
from spark_gmm import variational as V

COV_TYPES = list(K.COVARIANCE_TYPES)
PRIOR_TYPES = list(V.WEIGHT_CONCENTRATION_PRIOR_TYPES)
DIMS = {"full": 3, "tied": 2, "diag": 3, "spherical": 2}
RTOL = 1e-6


class FixedStart(BayesianGaussianMixture):
    """scikit-learn's model started from given responsibilities instead of its init_params."""

    def __init__(self, resp=None, **kwargs):
        super().__init__(**kwargs)
        self.resp = resp

    def _initialize_parameters(self, X, random_state, xp=None):
        self._initialize(X, self.resp)


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded BLAS and OpenMP: small problems, and other processes may hold the
    cores (scikit-learn's threads then wait on each other, 20 times slower)."""
    with threadpool_limits(limits=1):
        yield


# --------------------------------------------------------------------------- helpers


def blobs(seed: int, d: int, n_per: int = 100):
    """Three Gaussian blobs of n_per rows each in d dimensions."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, -1.0], [-1.0, 6.0, 3.0]])[:, :d]
    scales = [1.0, 0.6, 1.4]
    return np.vstack([c + s * rng.standard_normal((n_per, d)) for c, s in zip(centers, scales)])


def random_resp(seed: int, n: int, k: int):
    """A fixed random normalised responsibility matrix (scikit-learn's 'random' init, its
    uniforms raised to the 4th power: uniform ones start every component nearly alike)."""
    resp = np.random.default_rng(seed).random((n, k)) ** 4
    return resp / resp.sum(axis=1, keepdims=True)


def fit_sklearn(X, resp, covariance_type, prior_type, max_iter, tol, reg_covar=1e-6, **priors):
    model = FixedStart(
        resp=resp,
        n_components=resp.shape[1],
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior_type,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        n_init=1,
        **priors,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X)


def sklearn_concentration(model):
    """scikit-learn's weight_concentration_ as one array ((2, k) for the process)."""
    if model.weight_concentration_prior_type == "dirichlet_process":
        return np.vstack(model.weight_concentration_)
    return np.asarray(model.weight_concentration_)


def assert_matches_sklearn(result: K.EMResult, model, X):
    """Every fitted attribute and prediction of ``result`` equals the model's to RTOL."""
    state = result.params

    def close(ours, theirs, what, atol=0.0):
        ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
        assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=atol, err_msg=what)

    close(state.weights, model.weights_, "weights_", atol=1e-12)
    close(state.means, model.means_, "means_", atol=1e-12)
    close(state.covariances, model.covariances_, "covariances_", atol=1e-12)
    close(state.weight_concentration, sklearn_concentration(model), "weight_concentration_")
    close(state.mean_precision, model.mean_precision_, "mean_precision_")
    close(state.degrees_of_freedom, model.degrees_of_freedom_, "degrees_of_freedom_")
    close(state.precisions_cholesky, model.precisions_cholesky_, "precisions_cholesky_", atol=1e-12)
    close(result.history[-1], np.squeeze(model.lower_bound_), "lower_bound_")
    close(result.history, np.squeeze(model.lower_bounds_), "lower_bounds_")
    assert result.n_iter == model.n_iter_
    assert result.converged == model.converged_
    labels, proba, log_density = V.predict(X, state)
    close(proba, model.predict_proba(X), "predict_proba", atol=1e-12)
    np.testing.assert_array_equal(labels, model.predict(X))
    close(log_density, model.score_samples(X), "score_samples")
    # the same through the kernel directly: the gaussian's E-step plus the normaliser
    close(
        K.score_samples(X, state.gaussian) + state.log_weight_normaliser,
        model.score_samples(X),
        "score_samples (kernel)",
    )


# --------------------------------------------------------------------------- scikit-learn


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_default_priors_match_sklearn(covariance_type, prior_type):
    d = DIMS[covariance_type]
    X = blobs(1, d)
    resp = random_resp(2, X.shape[0], 4)
    model = fit_sklearn(X, resp, covariance_type, prior_type, max_iter=300, tol=1e-4)
    priors = V.priors_from_data(X, 4, covariance_type, prior_type)
    result = V.fit_variational(X, resp, priors, max_iter=300, tol=1e-4)
    assert result.converged and result.n_iter > 5  # a real run, not the first iterations
    assert_matches_sklearn(result, model, X)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_explicit_priors_match_sklearn(covariance_type):
    """Every prior given, a one-hot start, both weight priors."""
    d = DIMS[covariance_type]
    X = blobs(3, d)
    labels = np.random.default_rng(4).integers(0, 3, X.shape[0])
    resp = np.eye(3)[labels]
    cov_prior = {
        "full": np.array([[2.0, 0.3, 0.1], [0.3, 1.5, -0.2], [0.1, -0.2, 1.0]])[:d, :d],
        "tied": np.array([[2.0, 0.3], [0.3, 1.5]]),
        "diag": np.array([2.0, 1.5, 1.0])[:d],
        "spherical": 1.7,
    }[covariance_type]
    given = dict(
        weight_concentration_prior=0.5,
        mean_precision_prior=0.2,
        mean_prior=np.linspace(-1.0, 2.0, d),
        degrees_of_freedom_prior=d + 1.5,
        covariance_prior=cov_prior,
    )
    for prior_type in PRIOR_TYPES:
        model = fit_sklearn(X, resp, covariance_type, prior_type, 200, 1e-4, 1e-5, **given)
        priors = V.priors_from_data(X, 3, covariance_type, prior_type, **given)
        result = V.fit_variational(X, resp, priors, max_iter=200, tol=1e-4, reg_covar=1e-5)
        assert_matches_sklearn(result, model, X)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_unconverged_run_matches_sklearn(covariance_type):
    """Stopped by max_iter: the same state, both unconverged."""
    X = blobs(5, DIMS[covariance_type])
    resp = random_resp(6, X.shape[0], 5)
    model = fit_sklearn(X, resp, covariance_type, "dirichlet_process", max_iter=4, tol=1e-8)
    priors = V.priors_from_data(X, 5, covariance_type)
    result = V.fit_variational(X, resp, priors, max_iter=4, tol=1e-8)
    assert not result.converged and result.n_iter == 4
    assert_matches_sklearn(result, model, X)


def test_initial_state_is_sklearn_initialize():
    """max_iter=0 keeps scikit-learn's _initialize; our initial_state is the same posterior."""
    X = blobs(7, 3)
    resp = random_resp(8, X.shape[0], 3)
    for covariance_type in COV_TYPES:
        model = fit_sklearn(X, resp, covariance_type, "dirichlet_distribution", 0, 1e-3)
        priors = V.priors_from_data(X, 3, covariance_type, "dirichlet_distribution")
        state = V.initial_state(V.initial_resp_stats(X, resp, covariance_type), priors, 1e-6)
        np.testing.assert_allclose(state.means, model.means_, rtol=RTOL)
        np.testing.assert_allclose(state.covariances, model.covariances_, rtol=RTOL)
        np.testing.assert_allclose(state.weights, model.weights_, rtol=RTOL)
        np.testing.assert_allclose(state.degrees_of_freedom, model.degrees_of_freedom_, rtol=RTOL)


def test_singular_sample_covariance_without_regularisation():
    """A component of one row and reg_covar=0: its sample covariance is singular, which the
    Wishart prior repairs (the kernel's m_step would refuse it); still scikit-learn's fit."""
    X = blobs(9, 3)
    labels = np.where(np.arange(X.shape[0]) < 150, 0, 1)
    labels[-1] = 2  # component 2 starts from a single row
    resp = np.eye(3)[labels]
    model = fit_sklearn(X, resp, "full", "dirichlet_process", 100, 1e-3, reg_covar=0.0)
    priors = V.priors_from_data(X, 3, "full")
    result = V.fit_variational(X, resp, priors, max_iter=100, tol=1e-3, reg_covar=0.0)
    assert_matches_sklearn(result, model, X)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_process_finds_three_components(seed):
    """Three well-separated blobs, k=10 started from k-means: the process keeps exactly three
    components above 1 % weight, as scikit-learn on the same start."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 9.0]])
    X = np.vstack([c + rng.standard_normal((1000, 2)) for c in centers])
    labels = KMeans(n_clusters=10, n_init=1, random_state=seed).fit(X).labels_
    resp = np.eye(10)[labels]
    priors = V.priors_from_data(X, 10, "full", "dirichlet_process")
    result = V.fit_variational(X, resp, priors, max_iter=500, tol=1e-3)
    model = fit_sklearn(X, resp, "full", "dirichlet_process", max_iter=500, tol=1e-3)
    assert result.converged
    heavy = np.flatnonzero(result.params.weights > 0.01)
    assert len(heavy) == 3
    np.testing.assert_array_equal(heavy, np.flatnonzero(model.weights_ > 0.01))
    # each kept component sits on one blob
    nearest = np.argmin(
        ((result.params.means[heavy, None, :] - centers[None]) ** 2).sum(-1), axis=1
    )
    assert sorted(nearest.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(result.params.weights, model.weights_, rtol=RTOL, atol=1e-12)
    assert result.n_iter == model.n_iter_


# --------------------------------------------------------------------------- priors


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_prior_defaults_equal_sklearn_attributes(covariance_type):
    X = blobs(10, DIMS[covariance_type])
    resp = random_resp(11, X.shape[0], 4)
    model = fit_sklearn(X, resp, covariance_type, "dirichlet_process", 1, 1e-3)
    mean, scatter, total = V.data_moments(X)
    priors = V.priors_from_moments(4, covariance_type, mean, scatter, total)
    assert priors.weight_concentration_prior == model.weight_concentration_prior_ == 0.25
    assert priors.mean_precision_prior == model.mean_precision_prior_ == 1.0
    assert priors.degrees_of_freedom_prior == model.degrees_of_freedom_prior_ == X.shape[1]
    np.testing.assert_allclose(priors.mean_prior, model.mean_prior_, rtol=1e-12)
    np.testing.assert_allclose(priors.covariance_prior, model.covariance_prior_, rtol=1e-12)
    assert np.shape(priors.covariance_prior) == np.shape(model.covariance_prior_)
    if covariance_type in ("diag", "spherical"):  # the diagonal of the scatter is enough
        diagonal = V.priors_from_moments(4, covariance_type, mean, np.diag(scatter), total)
        np.testing.assert_array_equal(diagonal.covariance_prior, priors.covariance_prior)


def _valid(covariance_type="full", **given):
    X = blobs(12, 3)
    return V.priors_from_data(X, 3, covariance_type, "dirichlet_process", **given)


BAD_PRIORS = [
    ("full", {"weight_concentration_prior": 0.0}, "weightConcentrationPrior"),
    ("full", {"weight_concentration_prior": -1.0}, "weightConcentrationPrior"),
    ("full", {"weight_concentration_prior": float("nan")}, "weightConcentrationPrior"),
    ("full", {"weight_concentration_prior": "x"}, "weightConcentrationPrior"),
    ("full", {"mean_precision_prior": 0.0}, "meanPrecisionPrior"),
    ("full", {"mean_precision_prior": float("inf")}, "meanPrecisionPrior"),
    ("full", {"mean_prior": [0.0, 1.0]}, "meanPrior"),
    ("full", {"mean_prior": [0.0, 1.0, float("nan")]}, "meanPrior"),
    ("full", {"degrees_of_freedom_prior": 2.0}, "degreesOfFreedomPrior"),
    ("full", {"degrees_of_freedom_prior": -1.0}, "degreesOfFreedomPrior"),
    ("full", {"covariance_prior": np.eye(2)}, "covariancePrior"),
    ("full", {"covariance_prior": [[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]}, "covariancePrior"),
    ("tied", {"covariance_prior": np.diag([1.0, -1.0, 1.0])}, "covariancePrior"),
    ("tied", {"covariance_prior": np.full((3, 3), np.nan)}, "covariancePrior"),
    ("diag", {"covariance_prior": [1.0, 1.0]}, "covariancePrior"),
    ("diag", {"covariance_prior": [1.0, 0.0, 1.0]}, "covariancePrior"),
    ("spherical", {"covariance_prior": -2.0}, "covariancePrior"),
    ("spherical", {"covariance_prior": [1.0, 1.0, 1.0]}, "covariancePrior"),
]


@pytest.mark.parametrize("covariance_type,given,name", BAD_PRIORS)
def test_invalid_prior_names_the_parameter(covariance_type, given, name):
    with pytest.raises(ValueError, match=name):
        _valid(covariance_type, **given)


@pytest.mark.parametrize(
    "covariance_type,given",
    [
        ("full", {"degrees_of_freedom_prior": 2.0}),
        ("full", {"covariance_prior": [[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]}),
        ("tied", {"covariance_prior": np.diag([1.0, -1.0, 1.0])}),
        ("diag", {"covariance_prior": [1.0, 0.0, 1.0]}),
        ("spherical", {"covariance_prior": -2.0}),
        ("full", {"mean_prior": [0.0, 1.0]}),
    ],
)
def test_sklearn_rejects_the_same_priors(covariance_type, given):
    """(The stock class: FixedStart's signature hides the other parameters from
    scikit-learn's parameter validation.)"""
    model = BayesianGaussianMixture(
        n_components=3, covariance_type=covariance_type, max_iter=1, **given
    )
    with pytest.raises(ValueError):
        model.fit(blobs(12, 3))


def test_boundary_priors_are_accepted():
    """degreesOfFreedomPrior just above d - 1 and a tiny positive covariance prior pass."""
    priors = _valid("full", degrees_of_freedom_prior=2.0001)
    assert priors.degrees_of_freedom_prior == 2.0001
    assert _valid("spherical", covariance_prior=1e-9).covariance_prior == 1e-9


def test_invalid_types_and_moments():
    X = blobs(12, 3)
    mean, scatter, total = V.data_moments(X)
    with pytest.raises(ValueError, match="weightConcentrationPriorType"):
        V.priors_from_moments(3, "full", mean, scatter, total, "dirichlet")
    with pytest.raises(ValueError, match="covarianceType"):
        V.priors_from_moments(3, "fully", mean, scatter, total)
    with pytest.raises(ValueError, match="k must be"):
        V.priors_from_moments(0, "full", mean, scatter, total)
    with pytest.raises(ValueError, match="covariancePrior"):  # ddof=1 needs W > 1
        V.priors_from_moments(3, "full", mean, scatter, 1.0)
    with pytest.raises(ValueError, match="scatter"):
        V.priors_from_moments(3, "full", mean, np.diag(scatter), total)
    # given covariancePrior: the total weight does not matter
    given = V.priors_from_moments(3, "diag", mean, scatter, 0.5, covariance_prior=[1.0, 2, 3])
    np.testing.assert_array_equal(given.covariance_prior, [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_integer_weights_equal_repeated_rows(covariance_type):
    d = DIMS[covariance_type]
    X = blobs(13, d, n_per=60)
    resp = random_resp(14, X.shape[0], 4)
    weights = np.where(np.arange(X.shape[0]) % 3 == 0, 2.0, 1.0)
    repeat = np.repeat(np.arange(X.shape[0]), weights.astype(int))
    for prior_type in PRIOR_TYPES:
        weighted = V.fit_variational(
            X,
            resp,
            V.priors_from_data(X, 4, covariance_type, prior_type, sample_weight=weights),
            max_iter=60,
            tol=1e-6,
            sample_weight=weights,
        )
        repeated = V.fit_variational(
            X[repeat],
            resp[repeat],
            V.priors_from_data(X[repeat], 4, covariance_type, prior_type),
            max_iter=60,
            tol=1e-6,
        )
        a, b = weighted.params, repeated.params
        assert weighted.n_iter == repeated.n_iter
        for name in (
            "weights",
            "means",
            "covariances",
            "weight_concentration",
            "mean_precision",
            "degrees_of_freedom",
        ):
            np.testing.assert_allclose(
                getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-13, err_msg=name
            )
        np.testing.assert_allclose(weighted.history, repeated.history, rtol=1e-9)
    # and weights 2 on every row differ from weights 1 (the weights are used)
    doubled = V.fit_variational(
        X,
        resp,
        V.priors_from_data(X, 4, covariance_type, sample_weight=np.full(len(X), 2.0)),
        max_iter=3,
        sample_weight=np.full(len(X), 2.0),
    )
    single = V.fit_variational(X, resp, V.priors_from_data(X, 4, covariance_type), max_iter=3)
    assert not np.allclose(doubled.params.mean_precision, single.params.mean_precision)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_entropy_from_statistics_equals_direct_sum(covariance_type):
    """-sum_i w_i sum_j r_ij log r_ij from the statistics equals the sum over rows, with
    fractional weights and moments around a shift away from the means."""
    X = blobs(15, DIMS[covariance_type]) + 100.0
    w = np.random.default_rng(16).uniform(0.1, 3.0, X.shape[0])
    priors = V.priors_from_data(X, 4, covariance_type, sample_weight=w)
    state = V.fit_variational(X, random_resp(17, len(X), 4), priors, 5, 0.0, sample_weight=w)
    state = state.params
    _, log_resp = K.e_step(X, state.gaussian)
    direct = -float(w @ (np.exp(log_resp) * log_resp).sum(axis=1))
    stats = K.accumulate_stats(X, w, state.gaussian)
    np.testing.assert_allclose(V.responsibility_entropy(stats, state), direct, rtol=1e-9)
    # moments moved to another shift give the same entropy
    d = X.shape[1]
    shifted = K.responsibility_stats(X, w, np.exp(log_resp), np.full((4, d), 99.0), covariance_type)
    shifted.log_likelihood = stats.log_likelihood
    np.testing.assert_allclose(V.responsibility_entropy(shifted, state), direct, rtol=1e-9)


# --------------------------------------------------------------------------- the state


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_state_round_trips_through_json(covariance_type, prior_type):
    X = blobs(18, DIMS[covariance_type])
    priors = V.priors_from_data(X, 3, covariance_type, prior_type)
    state = V.fit_variational(X, random_resp(19, len(X), 3), priors, max_iter=3).params
    back = V.VariationalParams.from_dict(json.loads(json.dumps(state.to_dict())))
    for name in (
        "weight_concentration",
        "mean_precision",
        "means",
        "degrees_of_freedom",
        "covariances",
        "weights",
    ):
        ours, theirs = getattr(state, name), getattr(back, name)
        assert ours.shape == theirs.shape, name
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    np.testing.assert_array_equal(back.gaussian.weights, state.gaussian.weights)
    assert back.log_weight_normaliser == state.log_weight_normaliser
    assert (back.covariance_type, back.prior_type) == (covariance_type, prior_type)
    prior_back = V.VariationalPriors.from_dict(json.loads(json.dumps(priors.to_dict())))
    np.testing.assert_array_equal(prior_back.covariance_prior, priors.covariance_prior)
    np.testing.assert_array_equal(prior_back.mean_prior, priors.mean_prior)


def test_state_shape_checks():
    X = blobs(20, 2)
    state = V.fit_variational(X, random_resp(21, len(X), 3), V.priors_from_data(X, 3, "full"), 2)
    data = state.params.to_dict()
    with pytest.raises(ValueError, match="weight_concentration"):
        V.VariationalParams.from_dict({**data, "weight_concentration": [1.0, 2.0]})
    with pytest.raises(ValueError, match="degrees_of_freedom"):
        V.VariationalParams.from_dict({**data, "degrees_of_freedom": [3.0, -1.0, 3.0]})
    with pytest.raises(ValueError, match="weightConcentrationPriorType"):
        V.VariationalParams.from_dict({**data, "prior_type": "beta"})


def test_candidates_run_together_as_alone():
    """The statistics adapter keeps candidates apart in one run_em call."""
    X = blobs(22, 2)
    priors = V.priors_from_data(X, 3, "diag")
    starts = [
        V.initial_state(V.initial_resp_stats(X, random_resp(s, len(X), 3), "diag"), priors, 1e-6)
        for s in (23, 24)
    ]
    compute = V.variational_stats_function(K.local_stats_function(X))
    update = V.variational_update(priors, 1e-6)
    together = K.run_em(compute, starts, 50, 1e-4, 1e-6, update=update)
    for start, res in zip(starts, together):
        alone = K.run_em(compute, [start], 50, 1e-4, 1e-6, update=update)[0]
        assert res.history == alone.history
        np.testing.assert_array_equal(res.params.means, alone.params.means)
    assert together[0].history != together[1].history
