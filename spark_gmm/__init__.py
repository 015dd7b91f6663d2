"""Gaussian mixture models for Apache Spark: a drop-in for pyspark.ml.clustering.GaussianMixture."""
from spark_gmm.data import InvalidInputError
from spark_gmm.estimator import GaussianMixture, GaussianMixtureModel
from spark_gmm.summary import GaussianMixtureSummary
from spark_gmm.kernel import CovarianceError
from spark_gmm.persistence import ModelFileError

__all__ = [
    "CovarianceError",
    "GaussianMixture",
    "GaussianMixtureModel",
    "GaussianMixtureSummary",
    "InvalidInputError",
    "ModelFileError",
]
__version__ = "0.1.0"
