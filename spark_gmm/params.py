"""The Params mixins: one shared by GaussianMixture and GaussianMixtureModel, one by
BayesianGaussianMixture and its model, both on a base of the params every mixture has.

Spark's built-in names and defaults where they exist (featuresCol, predictionCol,
probabilityCol, k, maxIter, seed, weightCol, aggregationDepth); scikit-learn's meaning for
the rest. ``tol`` differs from Spark on purpose: see its doc.
"""

from __future__ import annotations

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasAggregationDepth,
    HasCheckpointInterval,
    HasFeaturesCol,
    HasInputCols,
    HasMaxIter,
    HasPredictionCol,
    HasProbabilityCol,
    HasSeed,
    HasTol,
    HasWeightCol,
)

from spark_gmm.choices import (
    BAYESIAN_GAUSSIAN_MIXTURE_DEFAULTS,
    BAYESIAN_HANDLE_INVALID,
    GAUSSIAN_MIXTURE_DEFAULTS,
    HANDLE_INVALID,
    INIT_MODES,
)
from spark_gmm.engine import ENGINES
from spark_gmm.kernel import COVARIANCE_TYPES
from spark_gmm.variational import WEIGHT_CONCENTRATION_PRIOR_TYPES


def one_of(name, allowed):
    """A type converter accepting the strings in ``allowed``; any other value is a ValueError
    naming the param ``name`` and the choices."""

    def convert(value):
        value = TypeConverters.toString(value)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value

    return convert


def _at_least(name, low, to_type):
    def convert(value):
        value = to_type(value)
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
        return value

    return convert


def _identity(value):
    return value


def _nested_floats(value):
    """Nested lists of floats (JSON-serialisable, so they persist with the params)."""
    import numpy as np

    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("values must be finite numbers")
    return array.tolist()


class _MixtureParams(
    HasFeaturesCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasMaxIter,
    HasTol,
    HasSeed,
    HasWeightCol,
    HasAggregationDepth,
    HasInputCols,
):
    """Params every mixture estimator and model has: the columns, k and covarianceType, the
    EM settings, the initialisation and the pass engine (defaults set by each subclass)."""

    k = Param(
        Params._dummy(),
        "k",
        "Number of Gaussian components in the mixture (>= 1).",
        typeConverter=_at_least("k", 1, TypeConverters.toInt),
    )
    covarianceType = Param(
        Params._dummy(),
        "covarianceType",
        "Covariance structure: full (one matrix per component), tied (one shared matrix), "
        "diag (one variance vector per component) or spherical (one variance per component).",
        typeConverter=one_of("covarianceType", COVARIANCE_TYPES),
    )
    regCovar = Param(
        Params._dummy(),
        "regCovar",
        "Non-negative value added to the diagonal of every covariance, so that components "
        "that collapse onto few points stay positive definite (scikit-learn's reg_covar).",
        typeConverter=_at_least("regCovar", 0.0, TypeConverters.toFloat),
    )
    logLikelihoodCol = Param(
        Params._dummy(),
        "logLikelihoodCol",
        "Output column for each row's log density log p(x) (scikit-learn's score_samples). "
        "Empty (the default) adds no column.",
        typeConverter=TypeConverters.toString,
    )
    handleInvalid = Param(
        Params._dummy(),
        "handleInvalid",
        "What to do with rows whose features are null, NaN or infinite: 'error' (the default) "
        "raises an error naming the column; 'skip' drops them (fit reports how many); 'keep' "
        "keeps rows with null or NaN features and marginalises those features in the fit and "
        "in transform (exact EM for values missing at random; infinite values and rows with "
        "every feature missing stay an error).",
        typeConverter=one_of("handleInvalid", HANDLE_INVALID),
    )
    initMode = Param(
        Params._dummy(),
        "initMode",
        "Initialisation: 'kmeans' (k-means++ seeds from a sample of at most 20,000 rows, Lloyd "
        "iterations over all rows, then one M-step from the hard assignments), 'k-means++' "
        "(the same seeds and M-step without the Lloyd iterations), 'random' (random "
        "responsibilities, then an M-step) or "
        "'randomFromData' (k distinct rows as means, the data covariance for each).",
        typeConverter=one_of("initMode", INIT_MODES),
    )
    nInit = Param(
        Params._dummy(),
        "nInit",
        "Number of EM runs from different seeds; all advance together in one data pass per "
        "iteration and the highest final log-likelihood wins.",
        typeConverter=_at_least("nInit", 1, TypeConverters.toInt),
    )
    engine = Param(
        Params._dummy(),
        "engine",
        "How the passes of a fit run: 'driver' collects the rows to the driver once and runs "
        "every pass there (small tables); 'resident' holds the rows in the Python workers of "
        "one barrier stage for the whole fit (one Spark job); 'jobPerPass' runs one Spark job "
        "per pass over cached blocks; 'auto' (the default) is the driver up to "
        "spark.gmm.driver.maxBytes of rows (12 MiB by default), else resident wherever a "
        "barrier stage can run, else job-per-pass, and says once why.",
        typeConverter=one_of("engine", ENGINES),
    )

    def getK(self) -> int:
        """Gets the value of :py:attr:`k` or its default value."""
        return self.getOrDefault(self.k)

    def getCovarianceType(self) -> str:
        """Gets the value of :py:attr:`covarianceType` or its default value."""
        return self.getOrDefault(self.covarianceType)

    def getRegCovar(self) -> float:
        """Gets the value of :py:attr:`regCovar` or its default value."""
        return self.getOrDefault(self.regCovar)

    def getLogLikelihoodCol(self) -> str:
        """Gets the value of :py:attr:`logLikelihoodCol` or its default value."""
        return self.getOrDefault(self.logLikelihoodCol)

    def getHandleInvalid(self) -> str:
        """Gets the value of :py:attr:`handleInvalid` or its default value."""
        return self.getOrDefault(self.handleInvalid)

    def getInitMode(self) -> str:
        """Gets the value of :py:attr:`initMode` or its default value."""
        return self.getOrDefault(self.initMode)

    def getNInit(self) -> int:
        """Gets the value of :py:attr:`nInit` or its default value."""
        return self.getOrDefault(self.nInit)

    def getEngine(self) -> str:
        """Gets the value of :py:attr:`engine` or its default value."""
        return self.getOrDefault(self.engine)

    def _opt(self, param):
        """The value of an optional param (no default), or None when unset."""
        return self.getOrDefault(param) if self.isDefined(param) else None

    def _seed(self) -> int:
        """The seed, or the stable default when seed=None, as a non-negative 31-bit int."""
        seed = self.getOrDefault(self.seed)
        return int(seed if seed is not None else self._defaultParamMap[self.seed]) % (2**31)


class _GaussianMixtureParams(_MixtureParams, HasCheckpointInterval):
    """Params shared by GaussianMixture and GaussianMixtureModel."""

    recoverCollapsed = Param(
        Params._dummy(),
        "recoverCollapsed",
        "Re-seed a component that collapses (fewer effective rows than d + 1 for full "
        "covariances, 2 otherwise) by splitting the heaviest component, at most k times per "
        "run; events are logged and counted in the summary. False leaves such components as "
        "they are (regCovar still keeps them finite).",
        typeConverter=TypeConverters.toBoolean,
    )
    initialWeights = Param(
        Params._dummy(),
        "initialWeights",
        "Explicit initial weights (k numbers); used with initialMeans.",
        typeConverter=TypeConverters.toListFloat,
    )
    initialMeans = Param(
        Params._dummy(),
        "initialMeans",
        "Explicit initial means (k lists of d numbers). Weights default to uniform and "
        "covariances to the data covariance plus regCovar.",
        typeConverter=_nested_floats,
    )
    initialCovariances = Param(
        Params._dummy(),
        "initialCovariances",
        "Explicit initial covariances in covarianceType's layout: full k x d x d, tied d x d, "
        "diag k x d, spherical k numbers; used with initialMeans.",
        typeConverter=_nested_floats,
    )
    checkpointDir = Param(
        Params._dummy(),
        "checkpointDir",
        "Directory of the driver's file system where the EM state is saved every "
        "checkpointInterval iterations (atomically); a fit started again with the same "
        "settings on the same data resumes from it. Unset (the default): no checkpoints.",
        typeConverter=TypeConverters.toString,
    )
    initialModel = Param(
        Params._dummy(),
        "initialModel",
        "A fitted GaussianMixtureModel to start EM from (warm start); its k, number of "
        "features and covarianceType must match.",
        typeConverter=_identity,
    )

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(**GAUSSIAN_MIXTURE_DEFAULTS)

    def getInitialModel(self):
        """Gets the value of :py:attr:`initialModel` or its default value."""
        return self.getOrDefault(self.initialModel)

    def getRecoverCollapsed(self) -> bool:
        """Gets the value of :py:attr:`recoverCollapsed` or its default value."""
        return self.getOrDefault(self.recoverCollapsed)

    def getCheckpointDir(self) -> str:
        """Gets the value of :py:attr:`checkpointDir` or its default value."""
        return self.getOrDefault(self.checkpointDir)

    def getInitialWeights(self):
        """Gets the value of :py:attr:`initialWeights` or its default value."""
        return self.getOrDefault(self.initialWeights)

    def getInitialMeans(self):
        """Gets the value of :py:attr:`initialMeans` or its default value."""
        return self.getOrDefault(self.initialMeans)

    def getInitialCovariances(self):
        """Gets the value of :py:attr:`initialCovariances` or its default value."""
        return self.getOrDefault(self.initialCovariances)


# The tol doc is ours, not Spark's: it is scale-free.
_MixtureParams.tol = Param(
    Params._dummy(),
    "tol",
    "Convergence tolerance on the change of the mean per-row (weighted) log-likelihood "
    "between iterations, as scikit-learn's tol. Spark's built-in compares the total "
    "log-likelihood instead, which depends on the row count. 0 runs maxIter iterations.",
    typeConverter=_at_least("tol", 0.0, TypeConverters.toFloat),
)
_MixtureParams.maxIter = Param(
    Params._dummy(),
    "maxIter",
    "Maximum number of EM iterations (>= 0).",
    typeConverter=_at_least("maxIter", 0, TypeConverters.toInt),
)


class _BayesianGaussianMixtureParams(_MixtureParams):
    """Params shared by BayesianGaussianMixture and its model: scikit-learn's
    BayesianGaussianMixture's priors in Spark's naming. An unset prior takes scikit-learn's
    default, computed from the data in one pass."""

    weightConcentrationPriorType = Param(
        Params._dummy(),
        "weightConcentrationPriorType",
        "Prior on the weights: 'dirichlet_process' (the default; stick-breaking, an infinite "
        "mixture truncated at k) or 'dirichlet_distribution' (a finite mixture).",
        typeConverter=one_of("weightConcentrationPriorType", WEIGHT_CONCENTRATION_PRIOR_TYPES),
    )
    weightConcentrationPrior = Param(
        Params._dummy(),
        "weightConcentrationPrior",
        "Dirichlet concentration of each component on the weights (> 0; unset: 1 / k). "
        "Smaller values put more weight on fewer components.",
        typeConverter=TypeConverters.toFloat,
    )
    meanPrecisionPrior = Param(
        Params._dummy(),
        "meanPrecisionPrior",
        "Precision prior on the means (> 0; unset: 1). Larger values pull the means to meanPrior.",
        typeConverter=TypeConverters.toFloat,
    )
    meanPrior = Param(
        Params._dummy(),
        "meanPrior",
        "Prior on the means (numFeatures numbers; unset: the data's mean).",
        typeConverter=TypeConverters.toListFloat,
    )
    degreesOfFreedomPrior = Param(
        Params._dummy(),
        "degreesOfFreedomPrior",
        "Degrees-of-freedom prior of the Wishart on the precisions (> numFeatures - 1; "
        "unset: numFeatures).",
        typeConverter=TypeConverters.toFloat,
    )
    covariancePrior = Param(
        Params._dummy(),
        "covariancePrior",
        "Covariance prior of the Wishart, in covarianceType's layout of one component: full "
        "and tied d x d, diag d numbers, spherical one number (unset: the data's covariance, "
        "as scikit-learn's default).",
        typeConverter=_nested_floats,
    )

    handleInvalid = Param(
        Params._dummy(),
        "handleInvalid",
        "What to do with rows whose features are null, NaN or infinite: 'error' (the default) "
        "raises an error naming the column; 'skip' drops them (fit reports how many). "
        "('keep' is GaussianMixture's: the variational bound and constants here are those "
        "of complete rows.)",
        typeConverter=one_of("handleInvalid", BAYESIAN_HANDLE_INVALID),
    )

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(**BAYESIAN_GAUSSIAN_MIXTURE_DEFAULTS)

    def getWeightConcentrationPriorType(self) -> str:
        """Gets the value of :py:attr:`weightConcentrationPriorType` or its default value."""
        return self.getOrDefault(self.weightConcentrationPriorType)

    def getWeightConcentrationPrior(self) -> float:
        """Gets the value of :py:attr:`weightConcentrationPrior` (None when unset)."""
        return self._opt(self.weightConcentrationPrior)

    def getMeanPrecisionPrior(self) -> float:
        """Gets the value of :py:attr:`meanPrecisionPrior` (None when unset)."""
        return self._opt(self.meanPrecisionPrior)

    def getMeanPrior(self):
        """Gets the value of :py:attr:`meanPrior` (None when unset)."""
        return self._opt(self.meanPrior)

    def getDegreesOfFreedomPrior(self) -> float:
        """Gets the value of :py:attr:`degreesOfFreedomPrior` (None when unset)."""
        return self._opt(self.degreesOfFreedomPrior)

    def getCovariancePrior(self):
        """Gets the value of :py:attr:`covariancePrior` (None when unset)."""
        return self._opt(self.covariancePrior)


# The Bayesian mixture's tol and nInit mean scikit-learn's BayesianGaussianMixture's.
_BayesianGaussianMixtureParams.tol = Param(
    Params._dummy(),
    "tol",
    "Convergence tolerance on the change of the variational lower bound between iterations "
    "(scikit-learn's BayesianGaussianMixture: the total over the rows, not a mean). 0 runs "
    "maxIter iterations.",
    typeConverter=_at_least("tol", 0.0, TypeConverters.toFloat),
)
_BayesianGaussianMixtureParams.nInit = Param(
    Params._dummy(),
    "nInit",
    "Number of runs from different seeds; all advance together in one data pass per "
    "iteration and the highest final lower bound wins.",
    typeConverter=_at_least("nInit", 1, TypeConverters.toInt),
)
