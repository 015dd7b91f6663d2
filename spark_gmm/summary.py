"""GaussianMixtureSummary: what a fit reports beside its model (Spark's summary fields, the
log-likelihood history, convergence, BIC/AIC, restarts, the engine that ran it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from pyspark.sql import DataFrame

from spark_gmm import kernel

if TYPE_CHECKING:  # the model imports this module
    from spark_gmm.estimator import GaussianMixtureModel


class GaussianMixtureSummary:
    """Training summary: Spark's fields plus the log-likelihood history, convergence, BIC, AIC,
    and every restart's outcome."""

    def __init__(self, model: "GaussianMixtureModel", dataset: DataFrame, outcome, best: int):
        self._model = model
        self._dataset = dataset
        self._outcome = outcome
        self._result = outcome.results[best]
        self._report = outcome.report
        self._best = best
        self._predictions: Optional[DataFrame] = None

    @property
    def predictions(self) -> DataFrame:
        """The training DataFrame transformed by the model (computed lazily)."""
        if self._predictions is None:
            self._predictions = self._model.transform(self._dataset)
        return self._predictions

    @property
    def predictionCol(self) -> str:
        """The name of the prediction column of ``predictions``."""
        return self._model.getPredictionCol()

    @property
    def probabilityCol(self) -> str:
        """The name of the probability column of ``predictions``."""
        return self._model.getProbabilityCol()

    @property
    def featuresCol(self) -> str:
        """The name of the features column the model read."""
        return self._model.getFeaturesCol()

    @property
    def k(self) -> int:
        """Number of components."""
        return self._model.getK()

    @property
    def cluster(self) -> DataFrame:
        """The ``predictions``' prediction column (each row's most probable component)."""
        return self.predictions.select(self.predictionCol)

    @property
    def probability(self) -> DataFrame:
        """The ``predictions``' probability column (each row's component probabilities)."""
        return self.predictions.select(self.probabilityCol)

    @property
    def clusterSizes(self) -> List[int]:
        """Rows whose most probable component is each component (at the final parameters)."""
        return [int(round(c)) for c in self._result.final_stats.counts]

    @property
    def numIter(self) -> int:
        """EM iterations the returned run took."""
        return self._result.n_iter

    @property
    def converged(self) -> bool:
        """Whether the returned run stopped by ``tol`` rather than ``maxIter``."""
        return self._result.converged

    @property
    def logLikelihood(self) -> float:
        """Total weighted log-likelihood of the training rows at the returned parameters."""
        return self._result.log_likelihood

    @property
    def logLikelihoodHistory(self) -> List[float]:
        """Mean per-row log-likelihood of each iteration's E-step (what tol is compared on)."""
        return list(self._result.history)

    @property
    def numRows(self) -> int:
        """Rows fitted (after any skipped by handleInvalid='skip')."""
        return self._report.n_rows

    @property
    def numSkippedRows(self) -> int:
        """Rows skipped for null, NaN or infinite features (handleInvalid='skip')."""
        return self._report.n_skipped

    @property
    def numIncompleteRows(self) -> int:
        """Rows fitted with missing (null or NaN) features, marginalised
        (handleInvalid='keep'); 0 under the other modes."""
        return self._report.n_incomplete

    @property
    def totalWeight(self) -> float:
        """Sum of the fitted rows' weights (their count without weightCol)."""
        return self._result.final_stats.weight_sum

    @property
    def bic(self) -> float:
        """Bayesian information criterion of the fit on its training data (lower is better)."""
        return kernel.information_criteria(
            self.logLikelihood, self._model.numParameters, self.totalWeight
        )[0]

    @property
    def aic(self) -> float:
        """Akaike information criterion of the fit on its training data (lower is better)."""
        return kernel.information_criteria(
            self.logLikelihood, self._model.numParameters, self.totalWeight
        )[1]

    @property
    def numRecoveredComponents(self) -> int:
        """Collapsed components re-seeded during the winning run (see recoverCollapsed)."""
        return self._result.recoveries

    @property
    def bestRestart(self) -> int:
        """Index in ``restarts`` of the run whose parameters were returned."""
        return self._best

    @property
    def restarts(self) -> List[dict]:
        """Each run's seed, final total log-likelihood, iterations, convergence, recoveries."""
        return [
            {
                "seed": c.seed,
                "logLikelihood": r.log_likelihood,
                "numIter": r.n_iter,
                "converged": r.converged,
                "numRecoveredComponents": r.recoveries,
            }
            for c, r in zip(self._outcome.candidates, self._outcome.results)
        ]

    @property
    def numDataPasses(self) -> int:
        """Statistics passes over the data this fit ran (initialisation and EM)."""
        return self._outcome.data_passes

    @property
    def engine(self) -> str:
        """The pass engine that ran the fit: 'driver', 'resident' or 'jobPerPass'."""
        return self._outcome.engine

    @property
    def engineReason(self) -> str:
        """Why the fit ran on :attr:`engine` (the size of its rows against the driver
        engine's limit, a forced engine, or why the resident engine could not run)."""
        return self._outcome.engine_reason
