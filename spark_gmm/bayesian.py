"""BayesianGaussianMixture / BayesianGaussianMixtureModel: scikit-learn's variational Bayesian
Gaussian mixture as a pyspark.ml estimator.

``k`` is an upper bound: with a Dirichlet-process prior on the weights (the default), the
components the data does not need end with weights near zero, so one fit replaces a grid over
k. The fit is :mod:`spark_gmm.fitting`'s, on the same pass engines, with the variational update
of :mod:`spark_gmm.variational`; the model scores rows as scikit-learn's does (``predict_proba``
and ``predict`` from the variational posterior) and offers everything GaussianMixtureModel
does (:class:`spark_gmm.estimator.FittedMixture`).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.sql import DataFrame

from spark_gmm import kernel
from spark_gmm.estimator import EstimatorSetters, FittedMixture, MixtureSetters
from spark_gmm.fitting import FitSettings, VariationalSettings, fit_candidates
from spark_gmm.init import Candidate
from spark_gmm.params import _BayesianGaussianMixtureParams
from spark_gmm.persistence import ModelFileError, PersistentStage, read_data
from spark_gmm.summary import GaussianMixtureSummary
from spark_gmm.variational import VariationalParams

# The posterior's arrays as the model saves them (Parquet columns of flattened values, each
# with its shape), by VariationalParams field.
_SAVED_ARRAYS = {
    "weightConcentration": "weight_concentration",
    "meanPrecision": "mean_precision",
    "means": "means",
    "degreesOfFreedom": "degrees_of_freedom",
    "covariances": "covariances",
}


class BayesianGaussianMixture(
    MixtureSetters, EstimatorSetters, Estimator, _BayesianGaussianMixtureParams, PersistentStage
):
    """Variational Bayesian Gaussian mixture (scikit-learn's BayesianGaussianMixture).

    >>> bgm = BayesianGaussianMixture(k=10, seed=7)   # k: the most components to use
    >>> model = bgm.fit(df)                           # doctest: +SKIP
    >>> [w for w in model.weights if w > 0.01]        # doctest: +SKIP  the ones the data needs
    """

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        k: int = 1,
        probabilityCol: str = "probability",
        tol: float = 1e-3,
        maxIter: int = 100,
        seed: Optional[int] = None,
        aggregationDepth: int = 2,
        weightCol: Optional[str] = None,
        covarianceType: str = "full",
        regCovar: float = 1e-6,
        logLikelihoodCol: str = "",
        inputCols: Optional[List[str]] = None,
        handleInvalid: str = "error",
        initMode: str = "kmeans",
        nInit: int = 1,
        engine: str = "auto",
        weightConcentrationPriorType: str = "dirichlet_process",
        weightConcentrationPrior: Optional[float] = None,
        meanPrecisionPrior: Optional[float] = None,
        meanPrior: Optional[List[float]] = None,
        degreesOfFreedomPrior: Optional[float] = None,
        covariancePrior=None,
    ):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        k: int = 1,
        probabilityCol: str = "probability",
        tol: float = 1e-3,
        maxIter: int = 100,
        seed: Optional[int] = None,
        aggregationDepth: int = 2,
        weightCol: Optional[str] = None,
        covarianceType: str = "full",
        regCovar: float = 1e-6,
        logLikelihoodCol: str = "",
        inputCols: Optional[List[str]] = None,
        handleInvalid: str = "error",
        initMode: str = "kmeans",
        nInit: int = 1,
        engine: str = "auto",
        weightConcentrationPriorType: str = "dirichlet_process",
        weightConcentrationPrior: Optional[float] = None,
        meanPrecisionPrior: Optional[float] = None,
        meanPrior: Optional[List[float]] = None,
        degreesOfFreedomPrior: Optional[float] = None,
        covariancePrior=None,
    ) -> "BayesianGaussianMixture":
        """Sets params for BayesianGaussianMixture."""
        return self._set(**self._input_kwargs)

    def setWeightConcentrationPriorType(self, value: str) -> "BayesianGaussianMixture":
        """Sets the value of :py:attr:`weightConcentrationPriorType`."""
        return self._set(weightConcentrationPriorType=value)

    def setWeightConcentrationPrior(self, value: float) -> "BayesianGaussianMixture":
        """Sets the value of :py:attr:`weightConcentrationPrior`."""
        return self._set(weightConcentrationPrior=value)

    def setMeanPrecisionPrior(self, value: float) -> "BayesianGaussianMixture":
        """Sets the value of :py:attr:`meanPrecisionPrior`."""
        return self._set(meanPrecisionPrior=value)

    def setMeanPrior(self, value: List[float]) -> "BayesianGaussianMixture":
        """Sets the value of :py:attr:`meanPrior`."""
        return self._set(meanPrior=value)

    def setDegreesOfFreedomPrior(self, value: float) -> "BayesianGaussianMixture":
        """Sets the value of :py:attr:`degreesOfFreedomPrior`."""
        return self._set(degreesOfFreedomPrior=value)

    def setCovariancePrior(self, value) -> "BayesianGaussianMixture":
        """Sets the value of :py:attr:`covariancePrior`."""
        return self._set(covariancePrior=value)

    # ------------------------------------------------------------------ fit

    def _settings(self) -> FitSettings:
        return FitSettings(
            features_col=self.getFeaturesCol(),
            input_cols=self._opt(self.inputCols),
            weight_col=self._opt(self.weightCol),
            handle_invalid=self.getHandleInvalid(),
            aggregation_depth=self.getAggregationDepth(),
            init_mode=self.getInitMode(),
            reg_covar=self.getRegCovar(),
            max_iter=self.getMaxIter(),
            tol=self.getTol(),
            recover_collapsed=False,  # the prior empties the components the data does not need
            description=f"spark_gmm {self.uid}",
            engine=self.getEngine(),
            variational=VariationalSettings(
                prior_type=self.getWeightConcentrationPriorType(),
                weight_concentration_prior=self.getWeightConcentrationPrior(),
                mean_precision_prior=self.getMeanPrecisionPrior(),
                mean_prior=self.getMeanPrior(),
                degrees_of_freedom_prior=self.getDegreesOfFreedomPrior(),
                covariance_prior=self.getCovariancePrior(),
            ),
        )

    def _fit(self, dataset: DataFrame) -> "BayesianGaussianMixtureModel":
        seed, k, covariance_type = self._seed(), self.getK(), self.getCovarianceType()
        candidates = [Candidate(k, covariance_type, seed + r) for r in range(self.getNInit())]
        outcome = fit_candidates(dataset, candidates, self._settings())
        best = outcome.best()
        model = BayesianGaussianMixtureModel._create(outcome.results[best].params, self.uid)
        self._copyValues(model)
        model._summary = BayesianGaussianMixtureSummary(model, dataset, outcome, best)
        return model

    # ------------------------------------------------------------------ persistence

    def _save_parts(self, spark):
        return {}, None, {}

    @classmethod
    def _from_saved(cls, spark, path, metadata):
        return cls()


class BayesianGaussianMixtureModel(FittedMixture, _BayesianGaussianMixtureParams):
    """A fitted variational Bayesian mixture: the posterior (``weightConcentration``,
    ``meanPrecision``, ``degreesOfFreedom``) beside ``weights``, ``means`` and
    ``covariances`` (scikit-learn's fitted attributes). ``transform`` and ``predict`` give
    scikit-learn's ``predict_proba`` and ``predict``; the logLikelihood column is the log
    density of the mixture whose weights are the variational ones (exp E[log weight],
    normalised), which scikit-learn's ``score_samples`` exceeds by the constant
    :attr:`logWeightNormaliser`; ``score``, ``bic``, ``aic`` and the summary's logLikelihood
    are on the same scale. ``weights``, ``gaussians`` and ``sample`` are those of the mixture
    of expected weights, means and covariances."""

    def __init__(self):
        super().__init__()
        self._posterior: Optional[VariationalParams] = None

    @classmethod
    def _create(cls, posterior: VariationalParams, uid: Optional[str] = None):
        model = cls()
        if uid is not None:
            model._resetUid(uid)
        model._posterior = posterior
        model._mixture = posterior.gaussian
        model._set(
            k=posterior.k,
            covarianceType=posterior.covariance_type,
            weightConcentrationPriorType=posterior.prior_type,
        )
        return model

    def _generative(self) -> kernel.MixtureParams:
        p = self._posterior
        return kernel.MixtureParams(p.weights, p.means, p.covariances, p.covariance_type)

    @property
    def weightConcentration(self) -> np.ndarray:
        """The posterior on the weights: (2, k) Beta parameters of the stick-breaking
        process (dirichlet_process; scikit-learn's pair of arrays, stacked) or (k,) Dirichlet
        parameters (dirichlet_distribution)."""
        return self._posterior.weight_concentration.copy()

    @property
    def meanPrecision(self) -> np.ndarray:
        """Posterior precision of each component's mean (k,)."""
        return self._posterior.mean_precision.copy()

    @property
    def degreesOfFreedom(self) -> np.ndarray:
        """Posterior degrees of freedom of each component's Wishart (k,); one value (a 0-d
        array) for tied covariances."""
        return self._posterior.degrees_of_freedom.copy()

    @property
    def logWeightNormaliser(self) -> float:
        """log sum_j exp(E[log weight_j] + the per-component constant of the expected log
        density): scikit-learn's score_samples is the logLikelihood column plus this."""
        return float(self._posterior.log_weight_normaliser)

    @property
    def summary(self) -> "BayesianGaussianMixtureSummary":
        """The BayesianGaussianMixtureSummary of the fit that made this model (an error after
        load)."""
        return super().summary

    # ------------------------------------------------------------------ persistence

    def _save_parts(self, spark):
        state = self._posterior.to_dict()
        arrays = {name: np.asarray(state[field]) for name, field in _SAVED_ARRAYS.items()}
        row = []
        schema = []
        for name, array in arrays.items():
            row += [array.ravel().tolist(), list(array.shape)]
            schema += [f"{name} array<double>", f"{name}Shape array<int>"]
        data = spark.createDataFrame([tuple(row)], ", ".join(schema))
        extra = {
            "covarianceType": self._posterior.covariance_type,
            "weightConcentrationPriorType": self._posterior.prior_type,
        }
        return extra, data, {}

    @classmethod
    def _from_saved(cls, spark, path, metadata):
        rows = read_data(spark, path)
        if len(rows) != 1:
            raise ModelFileError(f"the data of the model at {path} has {len(rows)} rows, not 1")
        row = rows[0]
        state = {
            field: np.asarray(row[name], dtype=np.float64).reshape(row[f"{name}Shape"])
            for name, field in _SAVED_ARRAYS.items()
        }
        state["covariance_type"] = metadata["covarianceType"]
        state["prior_type"] = metadata["weightConcentrationPriorType"]
        return cls._create(VariationalParams.from_dict(state))


class BayesianGaussianMixtureSummary(GaussianMixtureSummary):
    """Training summary of a BayesianGaussianMixture: GaussianMixtureSummary's fields (its
    logLikelihood is the training data's under the model's scoring mixture) and the
    variational lower bound of each iteration, which tol is compared on."""

    @property
    def lowerBound(self) -> float:
        """The lower bound of the last iteration (scikit-learn's ``lower_bound_``)."""
        history = self._result.history
        return history[-1] if history else float("-inf")

    @property
    def lowerBoundHistory(self) -> List[float]:
        """The lower bound of each iteration (scikit-learn's ``lower_bounds_``)."""
        return list(self._result.history)

    @property
    def logLikelihoodHistory(self) -> List[float]:
        """Not tracked by a variational fit, which tracks :attr:`lowerBoundHistory`."""
        raise AttributeError(
            "a BayesianGaussianMixture fit tracks its lower bound: see lowerBoundHistory"
        )

    @property
    def restarts(self) -> List[dict]:
        """Each run's seed, final lower bound, iterations and convergence."""
        return [
            {
                "seed": c.seed,
                "lowerBound": r.history[-1] if r.history else float("-inf"),
                "numIter": r.n_iter,
                "converged": r.converged,
            }
            for c, r in zip(self._outcome.candidates, self._outcome.results)
        ]
