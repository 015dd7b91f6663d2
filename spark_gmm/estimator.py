"""GaussianMixture / GaussianMixtureModel / GaussianMixtureSummary: the pyspark.ml face.

A drop-in replacement for ``pyspark.ml.clustering.GaussianMixture`` (same params, columns,
``weights``/``gaussians``/``gaussiansDF``, summary) with covariance types, regularisation,
per-row log densities and warm starts. The arithmetic lives in :mod:`spark_gmm.kernel`,
the Spark passes in :mod:`spark_gmm.em`.
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import List, Optional

import numpy as np
import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import DenseMatrix, DenseVector, MatrixUDT, Vector, VectorUDT
from pyspark.ml.stat import MultivariateGaussian
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType
from pyspark.storagelevel import StorageLevel

from spark_gmm import kernel
from spark_gmm.data import (
    InvalidInputError,
    list_array_to_numpy,
    prepare,
    resolve_features,
    valid_rows,
)
from spark_gmm.em import SparkPasses
from spark_gmm.init import initial_params
from spark_gmm.params import _GaussianMixtureParams
from spark_gmm.persistence import (
    ModelFileError,
    StageReader,
    StageWriter,
    load_child,
    read_data,
)

log = logging.getLogger("spark_gmm")

_SCORES = "__gmm_scores"


class _ParamSetters:
    """setX methods shared by estimator and model (each returns self)."""

    def setFeaturesCol(self, value: str):
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str):
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value: str):
        return self._set(probabilityCol=value)

    def setLogLikelihoodCol(self, value: str):
        return self._set(logLikelihoodCol=value)

    def setInputCols(self, value: List[str]):
        return self._set(inputCols=value)

    def setHandleInvalid(self, value: str):
        return self._set(handleInvalid=value)


class GaussianMixture(_ParamSetters, Estimator, _GaussianMixtureParams, MLReadable, MLWritable):
    """Gaussian mixture model fitted by distributed EM.

    >>> gm = GaussianMixture(k=3, covarianceType="full", seed=7)
    >>> model = gm.fit(df)            # doctest: +SKIP
    >>> model.transform(df)           # doctest: +SKIP  adds prediction, probability
    """

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        k: int = 2,
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
        initialModel: Optional["GaussianMixtureModel"] = None,
    ):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        k: int = 2,
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
        initialModel: Optional["GaussianMixtureModel"] = None,
    ) -> "GaussianMixture":
        return self._set(**self._input_kwargs)

    def setK(self, value: int) -> "GaussianMixture":
        return self._set(k=value)

    def setMaxIter(self, value: int) -> "GaussianMixture":
        return self._set(maxIter=value)

    def setTol(self, value: float) -> "GaussianMixture":
        return self._set(tol=value)

    def setSeed(self, value: int) -> "GaussianMixture":
        return self._set(seed=value)

    def setWeightCol(self, value: str) -> "GaussianMixture":
        return self._set(weightCol=value)

    def setAggregationDepth(self, value: int) -> "GaussianMixture":
        return self._set(aggregationDepth=value)

    def setCovarianceType(self, value: str) -> "GaussianMixture":
        return self._set(covarianceType=value)

    def setRegCovar(self, value: float) -> "GaussianMixture":
        return self._set(regCovar=value)

    def setInitMode(self, value: str) -> "GaussianMixture":
        return self._set(initMode=value)

    def setInitialModel(self, value: "GaussianMixtureModel") -> "GaussianMixture":
        return self._set(initialModel=value)

    # ------------------------------------------------------------------ fit

    def _opt(self, param) -> Optional[object]:
        """The value of an optional param (no default), or None when unset or empty."""
        return self.getOrDefault(param) if self.isDefined(param) else None

    def _seed(self) -> int:
        seed = self.getOrDefault(self.seed)
        return int(seed if seed is not None else self._defaultParamMap[self.seed]) % (2**31)

    def _fit(self, dataset: DataFrame) -> "GaussianMixtureModel":
        k, covariance_type = self.getK(), self.getCovarianceType()
        weight_col = self._opt(self.weightCol)
        source = resolve_features(dataset, self.getFeaturesCol(), self._opt(self.inputCols))
        prepared, report = prepare(dataset, source, weight_col, self.getHandleInvalid())
        if report.n_skipped:
            log.warning(
                "skipped %d of %d rows with null, NaN or infinite features (handleInvalid=skip)",
                report.n_skipped, report.n_input_rows,
            )
        # Cache only what the caller did not: a cached input is read as it is.
        persist = dataset.storageLevel == StorageLevel.NONE
        if persist:
            prepared = prepared.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            passes = SparkPasses(
                prepared, report.n_features, self.getAggregationDepth(),
                description=f"spark_gmm {self.uid}",
            )
            init = initial_params(
                passes, prepared, report.n_rows, k, covariance_type, self.getInitMode(),
                self._seed(), self.getRegCovar(), weighted=bool(weight_col),
                initial_model=self._opt(self.initialModel), n_features=report.n_features,
            )
            pass_number = itertools.count(1)
            result = kernel.run_em(
                lambda candidates: passes.em_stats(candidates, f"EM pass {next(pass_number)}"),
                [init], self.getMaxIter(), self.getTol(), self.getRegCovar(),
                on_iteration=_log_iteration,
            )[0]
        finally:
            if persist:
                prepared.unpersist()
        model = GaussianMixtureModel._create(result.params, uid=self.uid)
        self._copyValues(model)
        model.clear(model.initialModel)
        model._summary = GaussianMixtureSummary(model, dataset, result, report)
        return model

    # ------------------------------------------------------------------ persistence

    def write(self) -> StageWriter:
        return StageWriter(self)

    @classmethod
    def read(cls) -> StageReader:
        return StageReader(cls)

    def _save_parts(self, spark):
        initial = self._opt(self.initialModel)
        return {}, None, ({"initialModel": initial} if initial is not None else {})

    @classmethod
    def _from_saved(cls, spark, path, metadata):
        estimator = cls()
        initial = load_child(GaussianMixtureModel, path, "initialModel", metadata)
        if initial is not None:
            estimator.setInitialModel(initial)
        return estimator


def _log_iteration(iteration, candidate, mean_ll, change, seconds):
    log.info(
        "EM iteration %d: mean log-likelihood %.8g, change %.3g, %.2f s",
        iteration, mean_ll, change, seconds,
    )


class GaussianMixtureModel(_ParamSetters, Model, _GaussianMixtureParams, MLReadable, MLWritable):
    """A fitted mixture: weights (k,), means (k, d), covariances in covarianceType's layout."""

    def __init__(self):
        super().__init__()
        self._mixture: Optional[kernel.MixtureParams] = None
        self._summary: Optional[GaussianMixtureSummary] = None

    @classmethod
    def _create(cls, params: kernel.MixtureParams, uid: Optional[str] = None):
        model = cls()
        if uid is not None:
            model._resetUid(uid)
        model._mixture = params
        model._set(k=params.k, covarianceType=params.covariance_type)
        return model

    @classmethod
    def fromArrays(cls, weights, means, covariances, covarianceType: str = "full"):
        """A model from explicit parameters (for warm starts and tests); covariances in the
        layout of covarianceType: full (k, d, d), tied (d, d), diag (k, d), spherical (k,)."""
        return cls._create(kernel.MixtureParams(weights, means, covariances, covarianceType))

    # ------------------------------------------------------------------ fitted values

    @property
    def weights(self) -> List[float]:
        return self._mixture.weights.tolist()

    @property
    def means(self) -> np.ndarray:
        return self._mixture.means.copy()

    @property
    def covariances(self) -> np.ndarray:
        return self._mixture.covariances.copy()

    @property
    def precisionsCholesky(self) -> np.ndarray:
        return self._mixture.precisions_cholesky.copy()

    @property
    def numFeatures(self) -> int:
        return self._mixture.d

    @property
    def numParameters(self) -> int:
        return self._mixture.n_parameters()

    @property
    def gaussians(self) -> List[MultivariateGaussian]:
        d = self._mixture.d
        return [
            MultivariateGaussian(DenseVector(mean), DenseMatrix(d, d, cov.ravel(order="F")))
            for mean, cov in zip(self._mixture.means, self._mixture.full_covariances())
        ]

    @property
    def gaussiansDF(self) -> DataFrame:
        schema = StructType([StructField("mean", VectorUDT()), StructField("cov", MatrixUDT())])
        rows = [(g.mean, g.cov) for g in self.gaussians]
        return SparkSession.active().createDataFrame(rows, schema)

    @property
    def hasSummary(self) -> bool:
        return self._summary is not None

    @property
    def summary(self) -> "GaussianMixtureSummary":
        if self._summary is None:
            raise RuntimeError(
                f"No training summary available for this {type(self).__name__}"
            )
        return self._summary

    # ------------------------------------------------------------------ single rows

    def _row(self, value) -> np.ndarray:
        x = np.asarray(value.toArray() if isinstance(value, Vector) else value, dtype=np.float64)
        if x.shape != (self._mixture.d,):
            raise ValueError(f"expected a vector of {self._mixture.d} features, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("the vector has NaN or infinite values")
        return x[None, :]

    def predict(self, value) -> int:
        """Most probable component of one feature vector."""
        return int(kernel.predict(self._row(value), self._mixture)[0][0])

    def predictProbability(self, value) -> DenseVector:
        """Component probabilities of one feature vector."""
        return DenseVector(kernel.predict(self._row(value), self._mixture)[1][0])

    def logLikelihood(self, value) -> float:
        """log p(x) of one feature vector."""
        return float(kernel.predict(self._row(value), self._mixture)[2][0])

    # ------------------------------------------------------------------ whole DataFrames

    def _transform(self, dataset: DataFrame) -> DataFrame:
        outputs = {
            "prediction": self.getPredictionCol(),
            "probability": self.getProbabilityCol(),
            "logLikelihood": self.getLogLikelihoodCol(),
        }
        outputs = {field: name for field, name in outputs.items() if name}
        taken = [name for name in outputs.values() if name in dataset.columns]
        if taken:
            raise ValueError(
                f"output column(s) {taken} already exist in the DataFrame; set "
                "predictionCol / probabilityCol / logLikelihoodCol to other names"
            )
        if not outputs:
            log.warning("%s: all output columns are empty, nothing to add", self.uid)
            return dataset
        source = resolve_features(dataset, self.getFeaturesCol(), self._opt_input_cols())
        if self.getHandleInvalid() == "skip":
            dataset = dataset.where(valid_rows(source))
        scored = dataset.withColumn(_SCORES, _scoring_udf(self._mixture, source.description)(
            source.array
        ))
        cols = [F.col("`" + c.replace("`", "``") + "`") for c in dataset.columns]
        s = F.col(_SCORES)
        if "prediction" in outputs:
            cols.append(s["prediction"].alias(outputs["prediction"]))
        if "probability" in outputs:
            cols.append(array_to_vector(s["probability"]).alias(outputs["probability"]))
        if "logLikelihood" in outputs:
            cols.append(s["logLikelihood"].alias(outputs["logLikelihood"]))
        return scored.select(*cols)

    def _opt_input_cols(self):
        return self.getOrDefault(self.inputCols) if self.isDefined(self.inputCols) else None

    def _evaluate(self, dataset: DataFrame):
        """(total weighted log-likelihood, total weight) of a DataFrame at these parameters."""
        weight_col = self.getOrDefault(self.weightCol) if self.isDefined(self.weightCol) else None
        source = resolve_features(dataset, self.getFeaturesCol(), self._opt_input_cols())
        prepared, report = prepare(
            dataset, source, weight_col, self.getHandleInvalid(), self._mixture.d
        )
        passes = SparkPasses(prepared, report.n_features, self.getAggregationDepth())
        stats = passes.em_stats([self._mixture], "score")[0]
        return stats.log_likelihood, stats.weight_sum

    def score(self, dataset: DataFrame) -> float:
        """Mean per-row (weighted) log-likelihood of a DataFrame (scikit-learn's score)."""
        total, weight = self._evaluate(dataset)
        return total / weight

    def bic(self, dataset: DataFrame) -> float:
        """Bayesian information criterion on a DataFrame (lower is better)."""
        total, weight = self._evaluate(dataset)
        return -2.0 * total + self.numParameters * math.log(weight)

    def aic(self, dataset: DataFrame) -> float:
        """Akaike information criterion on a DataFrame (lower is better)."""
        total, _ = self._evaluate(dataset)
        return -2.0 * total + 2.0 * self.numParameters

    # ------------------------------------------------------------------ persistence

    def write(self) -> StageWriter:
        return StageWriter(self)

    @classmethod
    def read(cls) -> StageReader:
        return StageReader(cls)

    def _save_parts(self, spark):
        p = self._mixture
        data = spark.createDataFrame(
            [(
                p.weights.tolist(),
                p.means.tolist(),
                p.covariances.ravel().tolist(),
                list(p.covariances.shape),
            )],
            "weights array<double>, means array<array<double>>, covariances array<double>, "
            "covarianceShape array<int>",
        )
        return {"covarianceType": p.covariance_type}, data, {}

    @classmethod
    def _from_saved(cls, spark, path, metadata):
        rows = read_data(spark, path)
        if len(rows) != 1:
            raise ModelFileError(f"the data of the model at {path} has {len(rows)} rows, not 1")
        row = rows[0]
        covariances = np.asarray(row["covariances"], dtype=np.float64).reshape(
            row["covarianceShape"]
        )
        params = kernel.MixtureParams(
            np.asarray(row["weights"]), np.asarray(row["means"]), covariances,
            metadata["covarianceType"],
        )
        return cls._create(params)


def _scoring_udf(params: kernel.MixtureParams, description: str):
    """Arrow UDF: features array -> struct(prediction, probability array, logLikelihood)."""
    from pyspark.sql.functions import arrow_udf

    k, d = params.k, params.d
    return_type = "struct<prediction:int,probability:array<double>,logLikelihood:double>"

    @arrow_udf(return_type)
    def score(features: pa.Array) -> pa.Array:
        from threadpoolctl import threadpool_limits

        if isinstance(features, pa.ChunkedArray):
            features = features.combine_chunks()
        n = len(features)
        if features.null_count:
            raise ValueError(
                f"{description} has null rows; set handleInvalid='skip' to drop them"
            )
        lengths = pa.compute.list_value_length(features).to_numpy(zero_copy_only=False)
        if n and (lengths != d).any():
            bad = int(lengths[lengths != d][0])
            raise ValueError(f"{description} has a vector of size {bad}; the model expects {d}")
        X = list_array_to_numpy(features, d)
        if not np.all(np.isfinite(X)):
            raise ValueError(
                f"{description} has NaN or infinite values; set handleInvalid='skip' to drop "
                "those rows"
            )
        with threadpool_limits(limits=1, user_api="blas"):
            labels, proba, logp = kernel.predict(X, params)
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
        return pa.StructArray.from_arrays(
            [
                pa.array(labels, pa.int32()),
                pa.ListArray.from_arrays(offsets, pa.array(proba.ravel())),
                pa.array(logp),
            ],
            names=["prediction", "probability", "logLikelihood"],
        )

    return score


class GaussianMixtureSummary:
    """Training summary: Spark's fields plus the log-likelihood history, convergence, BIC, AIC."""

    def __init__(self, model: GaussianMixtureModel, dataset: DataFrame, result, report):
        self._model = model
        self._dataset = dataset
        self._result = result
        self._report = report
        self._predictions: Optional[DataFrame] = None

    @property
    def predictions(self) -> DataFrame:
        """The training DataFrame transformed by the model (computed lazily)."""
        if self._predictions is None:
            self._predictions = self._model.transform(self._dataset)
        return self._predictions

    @property
    def predictionCol(self) -> str:
        return self._model.getPredictionCol()

    @property
    def probabilityCol(self) -> str:
        return self._model.getProbabilityCol()

    @property
    def featuresCol(self) -> str:
        return self._model.getFeaturesCol()

    @property
    def k(self) -> int:
        return self._model.getK()

    @property
    def cluster(self) -> DataFrame:
        return self.predictions.select(self.predictionCol)

    @property
    def probability(self) -> DataFrame:
        return self.predictions.select(self.probabilityCol)

    @property
    def clusterSizes(self) -> List[int]:
        """Rows whose most probable component is each component (at the final parameters)."""
        return [int(round(c)) for c in self._result.final_stats.counts]

    @property
    def numIter(self) -> int:
        return self._result.n_iter

    @property
    def converged(self) -> bool:
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
        return self._report.n_rows

    @property
    def numSkippedRows(self) -> int:
        return self._report.n_skipped

    @property
    def totalWeight(self) -> float:
        return self._result.final_stats.weight_sum

    @property
    def bic(self) -> float:
        return -2.0 * self.logLikelihood + self._model.numParameters * math.log(self.totalWeight)

    @property
    def aic(self) -> float:
        return -2.0 * self.logLikelihood + 2.0 * self._model.numParameters
