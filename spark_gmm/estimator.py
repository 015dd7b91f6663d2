"""GaussianMixture / GaussianMixtureModel: the pyspark.ml face.

A drop-in replacement for ``pyspark.ml.clustering.GaussianMixture`` (same params, columns,
``weights``/``gaussians``/``gaussiansDF``, summary) with covariance types, regularisation,
per-row log densities and warm starts. The arithmetic lives in :mod:`spark_gmm.kernel`, the
fit in :mod:`spark_gmm.fitting`, the scoring functions in :mod:`spark_gmm.scoring`, the
summary in :mod:`spark_gmm.summary`.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import DenseMatrix, DenseVector, MatrixUDT, Vector, VectorUDT
from pyspark.ml.stat import MultivariateGaussian
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StructField, StructType

from spark_gmm import kernel
from spark_gmm.checkpoint import local_dir
from spark_gmm.data import (
    prepare,
    quote_name,
    resolve_features,
    valid_rows,
)
from spark_gmm.engine.job_per_pass import JobPerPassEngine
from spark_gmm.fitting import FitSettings, fit_candidates
from spark_gmm.init import Candidate, ExplicitInit
from spark_gmm.params import _GaussianMixtureParams
from spark_gmm.persistence import (
    ModelFileError,
    PersistentStage,
    load_child,
    read_data,
)
from spark_gmm.scoring import check_scored_rows, sampling_function, scoring_function
from spark_gmm.summary import GaussianMixtureSummary

log = logging.getLogger("spark_gmm")

_FEATURES = "__gmm_features"
# column metadata key of the logLikelihood output: the model's free parameter count
NUM_PARAMETERS_METADATA = "spark_gmm.numParameters"


class MixtureSetters:
    """setX methods shared by estimator and model (each returns self)."""

    def setFeaturesCol(self, value: str):
        """Sets the value of :py:attr:`featuresCol`."""
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str):
        """Sets the value of :py:attr:`predictionCol`."""
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value: str):
        """Sets the value of :py:attr:`probabilityCol`."""
        return self._set(probabilityCol=value)

    def setLogLikelihoodCol(self, value: str):
        """Sets the value of :py:attr:`logLikelihoodCol`."""
        return self._set(logLikelihoodCol=value)

    def setInputCols(self, value: List[str]):
        """Sets the value of :py:attr:`inputCols`."""
        return self._set(inputCols=value)

    def setHandleInvalid(self, value: str):
        """Sets the value of :py:attr:`handleInvalid`."""
        return self._set(handleInvalid=value)


class EstimatorSetters:
    """setX methods every mixture estimator has (each returns self)."""

    def setK(self, value: int):
        """Sets the value of :py:attr:`k`."""
        return self._set(k=value)

    def setMaxIter(self, value: int):
        """Sets the value of :py:attr:`maxIter`."""
        return self._set(maxIter=value)

    def setTol(self, value: float):
        """Sets the value of :py:attr:`tol`."""
        return self._set(tol=value)

    def setSeed(self, value: int):
        """Sets the value of :py:attr:`seed`."""
        return self._set(seed=value)

    def setWeightCol(self, value: str):
        """Sets the value of :py:attr:`weightCol`."""
        return self._set(weightCol=value)

    def setAggregationDepth(self, value: int):
        """Sets the value of :py:attr:`aggregationDepth`."""
        return self._set(aggregationDepth=value)

    def setCovarianceType(self, value: str):
        """Sets the value of :py:attr:`covarianceType`."""
        return self._set(covarianceType=value)

    def setRegCovar(self, value: float):
        """Sets the value of :py:attr:`regCovar`."""
        return self._set(regCovar=value)

    def setInitMode(self, value: str):
        """Sets the value of :py:attr:`initMode`."""
        return self._set(initMode=value)

    def setNInit(self, value: int):
        """Sets the value of :py:attr:`nInit`."""
        return self._set(nInit=value)

    def setEngine(self, value: str):
        """Sets the value of :py:attr:`engine`."""
        return self._set(engine=value)


class GaussianMixture(
    MixtureSetters, EstimatorSetters, Estimator, _GaussianMixtureParams, PersistentStage
):
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
        nInit: int = 1,
        recoverCollapsed: bool = True,
        initialWeights: Optional[List[float]] = None,
        initialMeans: Optional[List[List[float]]] = None,
        initialCovariances: Optional[list] = None,
        checkpointInterval: int = 10,
        checkpointDir: Optional[str] = None,
        engine: str = "auto",
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
        nInit: int = 1,
        recoverCollapsed: bool = True,
        initialWeights: Optional[List[float]] = None,
        initialMeans: Optional[List[List[float]]] = None,
        initialCovariances: Optional[list] = None,
        checkpointInterval: int = 10,
        checkpointDir: Optional[str] = None,
        engine: str = "auto",
    ) -> "GaussianMixture":
        """Sets params for GaussianMixture."""
        return self._set(**self._input_kwargs)

    def setInitialModel(self, value: "GaussianMixtureModel") -> "GaussianMixture":
        """Sets the value of :py:attr:`initialModel`."""
        return self._set(initialModel=value)

    def setRecoverCollapsed(self, value: bool) -> "GaussianMixture":
        """Sets the value of :py:attr:`recoverCollapsed`."""
        return self._set(recoverCollapsed=value)

    def setInitialWeights(self, value: List[float]) -> "GaussianMixture":
        """Sets the value of :py:attr:`initialWeights`."""
        return self._set(initialWeights=value)

    def setInitialMeans(self, value: List[List[float]]) -> "GaussianMixture":
        """Sets the value of :py:attr:`initialMeans`."""
        return self._set(initialMeans=value)

    def setInitialCovariances(self, value: list) -> "GaussianMixture":
        """Sets the value of :py:attr:`initialCovariances`."""
        return self._set(initialCovariances=value)

    def setCheckpointInterval(self, value: int) -> "GaussianMixture":
        """Sets the value of :py:attr:`checkpointInterval`."""
        return self._set(checkpointInterval=value)

    def setCheckpointDir(self, value: str) -> "GaussianMixture":
        """Sets the value of :py:attr:`checkpointDir`."""
        return self._set(checkpointDir=value)

    # ------------------------------------------------------------------ fit

    def _settings(self) -> FitSettings:
        """What every fit needs from the params (:func:`fit_settings`)."""
        initial = self._opt(self.initialModel)
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
            recover_collapsed=self.getRecoverCollapsed(),
            fixed=initial._mixture if initial is not None else None,
            explicit=self._explicit_initial(),
            description=f"spark_gmm {self.uid}",
            checkpoint_dir=local_dir(self._opt(self.checkpointDir)),
            checkpoint_interval=self.getCheckpointInterval(),
            engine=self.getEngine(),
        )

    def _explicit_initial(self):
        means = self._opt(self.initialMeans)
        if means is None:
            for param in (self.initialWeights, self.initialCovariances):
                if self._opt(param) is not None:
                    raise ValueError(f"{param.name} needs initialMeans")
            return None
        return ExplicitInit(
            np.asarray(means),
            _array_or_none(self._opt(self.initialWeights)),
            _array_or_none(self._opt(self.initialCovariances)),
        )

    def _fit(self, dataset: DataFrame) -> "GaussianMixtureModel":
        outcome = fit_candidates(
            dataset,
            restart_candidates(self, [(self.getK(), self.getCovarianceType())]),
            fit_settings(self),
        )
        return model_of(self, dataset, outcome, outcome.best())

    # ------------------------------------------------------------------ persistence

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


def _array_or_none(value):
    return None if value is None else np.asarray(value, dtype=np.float64)


# ---------------------------------------------------------------------- the fit's internal API
# What GaussianMixtureSelector (and tests) ask of an estimator to run fits like its own.


def fit_settings(estimator: GaussianMixture) -> FitSettings:
    """What every fit needs from the estimator's params."""
    return estimator._settings()


def restart_candidates(
    estimator: GaussianMixture, grid: Sequence[Tuple[int, str]]
) -> List[Candidate]:
    """The candidates of the (k, covariance type) pairs of ``grid``: ``nInit`` restarts each,
    seeded ``seed, seed + 1, ...`` (one run where fixed initial parameters make every run
    equal)."""
    n_init = estimator.getNInit()
    settings = fit_settings(estimator)
    if n_init > 1 and (settings.fixed is not None or settings.explicit is not None):
        log.warning("nInit=%d ignored: fixed initial parameters make every run equal", n_init)
        n_init = 1
    seed = estimator._seed()
    return [Candidate(k, t, seed + r) for k, t in grid for r in range(n_init)]


def model_of(
    estimator: GaussianMixture, dataset: DataFrame, outcome, best: int
) -> "GaussianMixtureModel":
    """The model of candidate ``best`` of a fit, with the estimator's uid and params (the
    initial* ones aside) and a summary of the outcome's runs."""
    model = GaussianMixtureModel._create(outcome.results[best].params, uid=estimator.uid)
    estimator._copyValues(model)
    for param in (
        model.initialModel,
        model.initialWeights,
        model.initialMeans,
        model.initialCovariances,
    ):
        model.clear(param)
    model._summary = GaussianMixtureSummary(model, dataset, outcome, best)
    return model


class FittedMixture(MixtureSetters, Model, PersistentStage):
    """What every fitted mixture model offers, whatever fitted it: its components, scoring
    (``transform``, one-row ``predict``, ``score``/``bic``/``aic``), sampling and the summary.
    ``_mixture`` is the mixture that scores rows; the components and ``sample`` use
    :meth:`_generative` (the same mixture unless a subclass says otherwise). Subclasses add
    their Params mixin and their persistence."""

    def __init__(self):
        super().__init__()
        self._mixture: Optional[kernel.MixtureParams] = None
        self._summary = None

    def _generative(self) -> kernel.MixtureParams:
        """The mixture of the components the model reports and samples from."""
        return self._mixture

    # ------------------------------------------------------------------ fitted values

    @property
    def weights(self) -> List[float]:
        """Mixing weights of the k components (a list of floats summing to 1)."""
        return self._generative().weights.tolist()

    @property
    def means(self) -> np.ndarray:
        """Component means, k rows of numFeatures values."""
        return self._mixture.means.copy()

    @property
    def covariances(self) -> np.ndarray:
        """Component covariances in the layout of covarianceType: full (k, d, d), tied (d, d), diag
        (k, d), spherical (k,)."""
        return self._mixture.covariances.copy()

    @property
    def precisionsCholesky(self) -> np.ndarray:
        """Cholesky factors of the precision matrices, in the covariances' layout (scikit-learn's
        precisions_cholesky_)."""
        return self._mixture.precisions_cholesky.copy()

    @property
    def numFeatures(self) -> int:
        """Number of features d the model was fitted on."""
        return self._mixture.d

    @property
    def numParameters(self) -> int:
        """Free parameters of the mixture (what BIC and AIC count)."""
        return self._mixture.n_parameters()

    @property
    def gaussians(self) -> List[MultivariateGaussian]:
        """The components as Spark's MultivariateGaussian objects (mean, full covariance), as the
        built-in model gives them."""
        mixture = self._generative()
        d = mixture.d
        return [
            MultivariateGaussian(DenseVector(mean), DenseMatrix(d, d, cov.ravel(order="F")))
            for mean, cov in zip(mixture.means, mixture.full_covariances())
        ]

    @property
    def gaussiansDF(self) -> DataFrame:
        """The components as a DataFrame of (mean vector, cov matrix) rows, as the built-in model
        gives them."""
        schema = StructType([StructField("mean", VectorUDT()), StructField("cov", MatrixUDT())])
        rows = [(g.mean, g.cov) for g in self.gaussians]
        return SparkSession.active().createDataFrame(rows, schema)

    @property
    def hasSummary(self) -> bool:
        """Whether the model carries the summary of the fit that made it (not after load)."""
        return self._summary is not None

    @property
    def summary(self):
        """The summary of the fit that made this model (an error after load)."""
        if self._summary is None:
            raise RuntimeError(f"No training summary available for this {type(self).__name__}")
        return self._summary

    # ------------------------------------------------------------------ single rows

    def _row(self, value) -> np.ndarray:
        x = np.asarray(value.toArray() if isinstance(value, Vector) else value, dtype=np.float64)
        if x.shape != (self._mixture.d,):
            raise ValueError(
                f"expected a vector of {self._mixture.d} features, got shape {x.shape}"
            )
        check_scored_rows(x[None, :], "the vector", self.getHandleInvalid() == "keep")
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
        source = resolve_features(dataset, self.getFeaturesCol(), self._opt(self.inputCols))
        if self.getHandleInvalid() == "skip":
            dataset = dataset.where(valid_rows(source))
        # mapInArrow rather than an Arrow UDF: Spark 4.3's columnar Arrow-UDF input fails on
        # any vector (UDT) column of a Parquet scan, so a UDF could not score such tables.
        # Spark's built-in appends probability, then prediction.
        fields = [
            StructField(name, dtype)
            for field, name, dtype in (
                ("probability", outputs.get("probability"), ArrayType(DoubleType())),
                ("prediction", outputs.get("prediction"), IntegerType()),
                ("logLikelihood", outputs.get("logLikelihood"), DoubleType()),
            )
            if name
        ]
        kinds = [
            field for field in ("probability", "prediction", "logLikelihood") if field in outputs
        ]
        scored = dataset.withColumn(_FEATURES, source.array).mapInArrow(
            scoring_function(
                self._mixture,
                source.description,
                kinds,
                [outputs[kind] for kind in kinds],
                keep_missing=self.getHandleInvalid() == "keep",
            ),
            StructType(dataset.schema.fields + fields),
        )
        cols = [F.col(quote_name(c)) for c in dataset.columns]
        for kind in kinds:
            col = F.col(quote_name(outputs[kind]))
            if kind == "probability":
                col = array_to_vector(col).alias(outputs[kind])
            elif kind == "logLikelihood":  # for GaussianMixtureEvaluator's BIC/AIC
                col = col.alias(
                    outputs[kind], metadata={NUM_PARAMETERS_METADATA: self.numParameters}
                )
            cols.append(col)
        return scored.select(*cols)

    def sample(
        self, n: int, seed: Optional[int] = None, numPartitions: Optional[int] = None
    ) -> DataFrame:
        """A DataFrame of ``n`` rows drawn from the mixture on the executors (nothing goes
        through the driver): the features as a vector column named by featuresCol, and
        ``component`` (int), the component each row was drawn from.

        Rows come in chunks of 4096 consecutive ids, each drawn with its own generator seeded
        by (seed, chunk), so the result depends on seed and n only, not on the partitioning.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        seed = self._seed() if seed is None else int(seed)
        spark = SparkSession.active()
        ids = spark.range(0, n, numPartitions=numPartitions) if numPartitions else spark.range(0, n)
        drawn = ids.mapInArrow(
            sampling_function(self._generative(), seed, n),
            "features array<double>, component int",
        )
        return drawn.select(
            array_to_vector(F.col("features")).alias(self.getFeaturesCol()), F.col("component")
        )

    def _evaluate(self, dataset: DataFrame):
        """(total weighted log-likelihood, total weight) of a DataFrame at these parameters."""
        weight_col = self._opt(self.weightCol)
        source = resolve_features(dataset, self.getFeaturesCol(), self._opt(self.inputCols))
        prepared, report = prepare(
            dataset, source, weight_col, self.getHandleInvalid(), self._mixture.d
        )
        engine = JobPerPassEngine(prepared, report.n_features, self.getAggregationDepth())
        stats = engine.em_stats([self._mixture], "score")[0]
        return stats.log_likelihood, stats.weight_sum

    def score(self, dataset: DataFrame) -> float:
        """Mean per-row (weighted) log-likelihood of a DataFrame (scikit-learn's score)."""
        total, weight = self._evaluate(dataset)
        return total / weight

    def bic(self, dataset: DataFrame) -> float:
        """Bayesian information criterion on a DataFrame (lower is better)."""
        return kernel.information_criteria(*self._criteria_inputs(dataset))[0]

    def aic(self, dataset: DataFrame) -> float:
        """Akaike information criterion on a DataFrame (lower is better)."""
        return kernel.information_criteria(*self._criteria_inputs(dataset))[1]

    def _criteria_inputs(self, dataset: DataFrame):
        total, weight = self._evaluate(dataset)
        return total, self.numParameters, weight


class GaussianMixtureModel(FittedMixture, _GaussianMixtureParams):
    """A fitted mixture: weights (k,), means (k, d), covariances in covarianceType's layout."""

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

    @property
    def summary(self) -> "GaussianMixtureSummary":
        """The GaussianMixtureSummary of the fit that made this model (an error after load)."""
        return super().summary

    # ------------------------------------------------------------------ persistence

    def _save_parts(self, spark):
        p = self._mixture
        data = spark.createDataFrame(
            [
                (
                    p.weights.tolist(),
                    p.means.tolist(),
                    p.covariances.ravel().tolist(),
                    list(p.covariances.shape),
                )
            ],
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
            np.asarray(row["weights"]),
            np.asarray(row["means"]),
            covariances,
            metadata["covarianceType"],
        )
        return cls._create(params)
