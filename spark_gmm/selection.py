"""Model selection: a BIC/AIC grid over k and covariance types in shared data passes, and an
Evaluator for CrossValidator / TrainValidationSplit.

``GaussianMixtureSelector(estimator=GaussianMixture(...), kValues=[1, 2, 3],
covarianceTypes=["full", "diag"])`` initialises every grid point (times the estimator's nInit
restarts) and advances all of them together: one Spark job per EM iteration for the whole grid.
"""

from __future__ import annotations

import copy
from typing import List, Optional

import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.evaluation import Evaluator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasWeightCol
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType

from spark_gmm import kernel
from spark_gmm.choices import CRITERIA, SELECTOR_DEFAULTS
from spark_gmm.data import InvalidInputError, quote_name
from spark_gmm.estimator import (
    NUM_PARAMETERS_METADATA,
    GaussianMixture,
    GaussianMixtureModel,
    fit_settings,
    model_of,
    restart_candidates,
)
from spark_gmm.fitting import FitOutcome, fit_candidates
from spark_gmm.params import one_of
from spark_gmm.persistence import PersistentStage, load_child, read_data

TABLE_COLUMNS = [
    "k",
    "covarianceType",
    "logLikelihood",
    "nParameters",
    "bic",
    "aic",
    "numIter",
    "converged",
]


def _unique_ints(value) -> List[int]:
    values = [TypeConverters.toInt(v) for v in TypeConverters.toList(value)]
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise ValueError(f"kValues must be distinct integers >= 1, got {values}")
    return values


def _covariance_types(value) -> List[str]:
    values = TypeConverters.toListString(value)
    wrong = [v for v in values if v not in kernel.COVARIANCE_TYPES]
    if not values or wrong or len(set(values)) != len(values):
        raise ValueError(
            f"covarianceTypes must be distinct values of {kernel.COVARIANCE_TYPES}, got {values}"
        )
    return values


class _SelectorParams(Params):
    kValues = Param(
        Params._dummy(),
        "kValues",
        "numbers of components to try (each >= 1)",
        typeConverter=_unique_ints,
    )
    covarianceTypes = Param(
        Params._dummy(),
        "covarianceTypes",
        f"covariance types to try, of {', '.join(kernel.COVARIANCE_TYPES)}",
        typeConverter=_covariance_types,
    )
    criterion = Param(
        Params._dummy(),
        "criterion",
        "selection criterion, lower is better: bic or aic",
        typeConverter=one_of("criterion", CRITERIA),
    )

    def __init__(self):
        super().__init__()
        self._setDefault(**copy.deepcopy(SELECTOR_DEFAULTS))

    def getKValues(self) -> List[int]:
        """Gets the value of :py:attr:`kValues` or its default value."""
        return self.getOrDefault(self.kValues)

    def getCovarianceTypes(self) -> List[str]:
        """Gets the value of :py:attr:`covarianceTypes` or its default value."""
        return self.getOrDefault(self.covarianceTypes)

    def getCriterion(self) -> str:
        """Gets the value of :py:attr:`criterion` or its default value."""
        return self.getOrDefault(self.criterion)


class GaussianMixtureSelector(Estimator, _SelectorParams, PersistentStage):
    """Fits ``estimator`` for every k in kValues and every type in covarianceTypes, in shared
    data passes, and keeps the one with the lowest criterion.

    The estimator supplies every other setting (columns, weights, maxIter, tol, regCovar,
    initMode, nInit, seed, handleInvalid); its k and covarianceType are ignored.
    """

    @keyword_only
    def __init__(
        self,
        *,
        estimator: Optional[GaussianMixture] = None,
        kValues: Optional[List[int]] = None,
        covarianceTypes: Optional[List[str]] = None,
        criterion: str = "bic",
    ):
        super().__init__()
        self._estimator = GaussianMixture()
        kwargs = dict(self._input_kwargs)
        self.setParams(**kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        estimator: Optional[GaussianMixture] = None,
        kValues: Optional[List[int]] = None,
        covarianceTypes: Optional[List[str]] = None,
        criterion: str = "bic",
    ) -> "GaussianMixtureSelector":
        """Sets params for GaussianMixtureSelector; ``estimator`` as :meth:`setEstimator` does."""
        kwargs = dict(self._input_kwargs)
        if kwargs.get("estimator") is not None:
            self.setEstimator(kwargs["estimator"])
        kwargs.pop("estimator", None)
        kwargs = {name: value for name, value in kwargs.items() if value is not None}
        return self._set(**kwargs)

    def setEstimator(self, value: GaussianMixture) -> "GaussianMixtureSelector":
        """Sets the GaussianMixture that supplies every setting of the grid's fits but k and
        covarianceType (a TypeError for any other estimator)."""
        if not isinstance(value, GaussianMixture):
            raise TypeError(f"estimator must be a spark_gmm.GaussianMixture, got {type(value)}")
        self._estimator = value
        return self

    def getEstimator(self) -> GaussianMixture:
        """Gets the GaussianMixture that supplies the settings of the grid's fits."""
        return self._estimator

    def setKValues(self, value: List[int]) -> "GaussianMixtureSelector":
        """Sets the value of :py:attr:`kValues`."""
        return self._set(kValues=value)

    def setCovarianceTypes(self, value: List[str]) -> "GaussianMixtureSelector":
        """Sets the value of :py:attr:`covarianceTypes`."""
        return self._set(covarianceTypes=value)

    def setCriterion(self, value: str) -> "GaussianMixtureSelector":
        """Sets the value of :py:attr:`criterion`."""
        return self._set(criterion=value)

    def copy(self, extra=None) -> "GaussianMixtureSelector":
        """A copy of this selector with the same uid and the ``extra`` params applied, holding
        a copy of its estimator."""
        new = super().copy(extra)
        new._estimator = self._estimator.copy()
        return new

    def _fit(self, dataset: DataFrame) -> "GaussianMixtureSelectionModel":
        estimator = self._estimator
        settings = fit_settings(estimator)
        if settings.fixed is not None or settings.explicit is not None:
            raise ValueError(
                "the selector's estimator has initialModel or initialMeans set; a grid over k "
                "and covarianceType needs data-driven initialisation"
            )
        n_init = estimator.getNInit()
        grid = [(k, t) for t in self.getCovarianceTypes() for k in self.getKValues()]
        candidates = restart_candidates(estimator, grid)
        outcome = fit_candidates(dataset, candidates, settings)

        rows, chosen = [], []
        for g, (k, covariance_type) in enumerate(grid):
            indices = list(range(g * n_init, (g + 1) * n_init))
            best = outcome.best(indices)
            result = outcome.results[best]
            n_parameters = result.params.n_parameters()
            bic, aic = kernel.information_criteria(
                result.log_likelihood, n_parameters, result.final_stats.weight_sum
            )
            rows.append(
                {
                    "k": k,
                    "covarianceType": covariance_type,
                    "logLikelihood": result.log_likelihood,
                    "nParameters": n_parameters,
                    "bic": bic,
                    "aic": aic,
                    "numIter": result.n_iter,
                    "converged": result.converged,
                }
            )
            chosen.append((indices, best))
        table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
        winner = int(table[self.getCriterion()].idxmin())  # first of equal values
        indices, best = chosen[winner]

        restarts = FitOutcome(
            [outcome.candidates[i] for i in indices],
            [outcome.results[i] for i in indices],
            outcome.report,
            outcome.data_passes,
            outcome.engine,
            outcome.engine_reason,
        )
        model = model_of(estimator, dataset, restarts, indices.index(best))
        selection = GaussianMixtureSelectionModel._create(model, table, uid=self.uid)
        self._copyValues(selection)
        return selection

    # persistence: the params, with the estimator as a child stage
    def _save_parts(self, spark):
        return {}, None, {"estimator": self._estimator}

    @classmethod
    def _from_saved(cls, spark, path, metadata):
        selector = cls()
        selector.setEstimator(load_child(GaussianMixture, path, "estimator", metadata))
        return selector


class GaussianMixtureSelectionModel(Model, _SelectorParams, PersistentStage):
    """The selected model (``bestModel``, used by ``transform``) and the ``table`` of every
    grid point: k, covarianceType, logLikelihood, nParameters, bic, aic, numIter, converged."""

    def __init__(self):
        super().__init__()
        self.bestModel: Optional[GaussianMixtureModel] = None
        self.table: Optional[pd.DataFrame] = None

    @classmethod
    def _create(cls, best: GaussianMixtureModel, table: pd.DataFrame, uid=None):
        model = cls()
        if uid is not None:
            model._resetUid(uid)
        model.bestModel, model.table = best, table
        return model

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return self.bestModel.transform(dataset)

    def copy(self, extra=None) -> "GaussianMixtureSelectionModel":
        """A copy of this model with the same uid and the ``extra`` params applied, holding
        copies of its best model and its table."""
        new = super().copy(extra)
        new.bestModel, new.table = self.bestModel.copy(), self.table.copy()
        return new

    def _save_parts(self, spark):
        table = self.table.astype(
            {"k": "int64", "nParameters": "int64", "numIter": "int64", "converged": "bool"}
        )
        data = spark.createDataFrame(
            [tuple(row) for row in table.itertuples(index=False)],
            "k long, covarianceType string, logLikelihood double, nParameters long, "
            "bic double, aic double, numIter long, converged boolean",
        )
        return {}, data, {"bestModel": self.bestModel}

    @classmethod
    def _from_saved(cls, spark, path, metadata):
        rows = read_data(spark, path)
        table = pd.DataFrame([row.asDict() for row in rows], columns=TABLE_COLUMNS)
        best = load_child(GaussianMixtureModel, path, "bestModel", metadata)
        return cls._create(best, table)


class GaussianMixtureEvaluator(Evaluator, HasWeightCol, PersistentStage):
    """Scores a transformed DataFrame by its per-row log-likelihood column.

    metricName: "logLikelihood" (weighted mean per row; larger is better), "bic" or "aic"
    (lower is better; the parameter count comes from the column's metadata, which
    GaussianMixtureModel.transform writes). Set ``logLikelihoodCol`` on the GaussianMixture.
    """

    metricName = Param(
        Params._dummy(),
        "metricName",
        "logLikelihood, bic or aic",
        typeConverter=one_of("metricName", ("logLikelihood", "bic", "aic")),
    )
    logLikelihoodCol = Param(
        Params._dummy(),
        "logLikelihoodCol",
        "column of per-row log densities",
        typeConverter=TypeConverters.toString,
    )

    @keyword_only
    def __init__(
        self,
        *,
        metricName: str = "logLikelihood",
        logLikelihoodCol: str = "logLikelihood",
        weightCol: Optional[str] = None,
    ):
        super().__init__()
        self._setDefault(metricName="logLikelihood", logLikelihoodCol="logLikelihood")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        metricName: str = "logLikelihood",
        logLikelihoodCol: str = "logLikelihood",
        weightCol: Optional[str] = None,
    ) -> "GaussianMixtureEvaluator":
        """Sets params for GaussianMixtureEvaluator."""
        kwargs = {name: value for name, value in self._input_kwargs.items() if value is not None}
        return self._set(**kwargs)

    def setMetricName(self, value: str) -> "GaussianMixtureEvaluator":
        """Sets the value of :py:attr:`metricName`."""
        return self._set(metricName=value)

    def getMetricName(self) -> str:
        """Gets the value of :py:attr:`metricName` or its default value."""
        return self.getOrDefault(self.metricName)

    def setLogLikelihoodCol(self, value: str) -> "GaussianMixtureEvaluator":
        """Sets the value of :py:attr:`logLikelihoodCol`."""
        return self._set(logLikelihoodCol=value)

    def getLogLikelihoodCol(self) -> str:
        """Gets the value of :py:attr:`logLikelihoodCol` or its default value."""
        return self.getOrDefault(self.logLikelihoodCol)

    def setWeightCol(self, value: str) -> "GaussianMixtureEvaluator":
        """Sets the value of :py:attr:`weightCol`."""
        return self._set(weightCol=value)

    def isLargerBetter(self) -> bool:
        """Whether a larger metric is better: True for logLikelihood, False for bic and aic."""
        return self.getMetricName() == "logLikelihood"

    def _evaluate(self, dataset: DataFrame) -> float:
        name = self.getLogLikelihoodCol()
        fields = {f.name: f for f in dataset.schema.fields}
        if name not in fields:
            raise InvalidInputError(
                f"log-likelihood column '{name}' not found (columns: {sorted(fields)}); set "
                f"logLikelihoodCol='{name}' on the GaussianMixture so transform writes it"
            )
        ll = F.col(quote_name(name))
        weight_col = self.getOrDefault(self.weightCol) if self.isDefined(self.weightCol) else None
        w = F.col(quote_name(weight_col)).cast(DoubleType()) if weight_col else F.lit(1.0)
        row = dataset.agg(F.sum(ll * w).alias("total"), F.sum(w).alias("weight")).collect()[0]
        if row["weight"] is None or not row["weight"] > 0:
            raise InvalidInputError(f"no rows (or zero total weight) to evaluate in '{name}'")
        total, weight = float(row["total"]), float(row["weight"])
        metric = self.getMetricName()
        if metric == "logLikelihood":
            return total / weight
        n_parameters = fields[name].metadata.get(NUM_PARAMETERS_METADATA)
        if n_parameters is None:
            raise InvalidInputError(
                f"column '{name}' carries no parameter count in its metadata, so {metric} "
                "cannot be computed: evaluate the output of GaussianMixtureModel.transform"
            )
        bic, aic = kernel.information_criteria(total, int(n_parameters), weight)
        return bic if metric == "bic" else aic

    def _save_parts(self, spark):
        return {}, None, {}

    @classmethod
    def _from_saved(cls, spark, path, metadata):
        return cls()
