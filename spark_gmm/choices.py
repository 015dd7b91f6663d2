"""The defaults and choices of the estimators' parameters, in one light module (no pyspark):
``spark_gmm.params`` and ``spark_gmm.selection`` set their Params' defaults from here and
validate with these choices, and ``spark_gmm.config`` derives the batch jobs' settings from the
same values. The covariance types are the kernel's (``kernel.COVARIANCE_TYPES``), the engines
the engine package's (``engine.ENGINES``)."""

import zlib

INIT_MODES = ("kmeans", "k-means++", "random", "randomFromData")
# error: any null, NaN or infinite feature is an error; skip: such rows are dropped; keep: rows
# with null or NaN features are kept and those features marginalised (infinite ones and rows
# with every feature missing are still an error)
HANDLE_INVALID = ("error", "skip", "keep")
# BayesianGaussianMixture's: its variational bound and per-component constants are those of
# complete rows, so it does not keep rows with missing features
BAYESIAN_HANDLE_INVALID = ("error", "skip")
CRITERIA = ("bic", "aic")

# What every mixture estimator defaults to (each estimator's keyword arguments repeat its
# defaults, as pyspark.ml's do: tests/test_estimator.py checks that the signatures agree).
_MIXTURE_DEFAULTS = {
    "featuresCol": "features",
    "predictionCol": "prediction",
    "probabilityCol": "probability",
    "maxIter": 100,
    "tol": 1e-3,
    "aggregationDepth": 2,
    "covarianceType": "full",
    "regCovar": 1e-6,
    "logLikelihoodCol": "",
    "handleInvalid": "error",
    "initMode": "kmeans",
    "nInit": 1,
    "engine": "auto",
}

# GaussianMixture's defaults.
GAUSSIAN_MIXTURE_DEFAULTS = {
    **_MIXTURE_DEFAULTS,
    "k": 2,
    # A stable default: Spark hashes the class name too, but Python's str hash is randomised
    # per process, which would make default runs unrepeatable.
    "seed": zlib.crc32(b"GaussianMixture"),
    "recoverCollapsed": True,
    "checkpointInterval": 10,
}

# GaussianMixtureSelector's defaults.
SELECTOR_DEFAULTS = {
    "kValues": [1, 2, 3, 4, 5, 6],
    "covarianceTypes": ["full"],
    "criterion": "bic",
}

# BayesianGaussianMixture's defaults: scikit-learn's BayesianGaussianMixture (n_components=1,
# tol=1e-3 on the lower bound, reg_covar=1e-6, max_iter=100, n_init=1, kmeans init, a
# Dirichlet-process prior); an unset prior means scikit-learn's data-dependent default
# (spark_gmm.variational.priors_from_moments).
BAYESIAN_GAUSSIAN_MIXTURE_DEFAULTS = {
    **_MIXTURE_DEFAULTS,
    "k": 1,
    "seed": zlib.crc32(b"BayesianGaussianMixture"),
    "weightConcentrationPriorType": "dirichlet_process",
}
