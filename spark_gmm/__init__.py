"""Gaussian mixture models for Apache Spark: a drop-in for pyspark.ml.clustering.GaussianMixture."""

from importlib import import_module

# Imported on first use (PEP 562), so that the Python workers of a fit, which import
# spark_gmm.kernel and spark_gmm.engine.blocks, do not also import pyspark.ml and the estimator.
_EXPORTS = {
    "BayesianGaussianMixture": "spark_gmm.bayesian",
    "BayesianGaussianMixtureModel": "spark_gmm.bayesian",
    "BayesianGaussianMixtureSummary": "spark_gmm.bayesian",
    "CovarianceError": "spark_gmm.kernel",
    "GaussianMixture": "spark_gmm.estimator",
    "GaussianMixtureModel": "spark_gmm.estimator",
    "GaussianMixtureSummary": "spark_gmm.summary",
    "InvalidInputError": "spark_gmm.data",
    "ModelFileError": "spark_gmm.persistence",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spark_gmm' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
