"""MLflow tracking for the fit job (optional: ``pip install 'spark-gmm[mlflow]'``).

With ``--mlflow`` (or ``[mlflow] enabled = true`` in the TOML file) the fit job records one
MLflow run: the model (a ``PipelineModel`` holding the fitted ``GaussianMixtureModel``, logged
with ``mlflow.spark.log_model``, so it loads back with ``mlflow.spark.load_model`` and as an
``mlflow.pyfunc`` model), the params (k, covariance type, ...), the metrics (log-likelihood,
BIC, AIC, iterations, ...; the per-iteration mean log-likelihood as a stepped metric) and the
report and resolved configuration as artifacts.

MLflow is never imported unless asked for; without it, asking fails at once (before Spark
starts any work) with one line naming the extra.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, Iterable, Optional

from spark_gmm.config import ConfigError

log = logging.getLogger("spark_gmm")

EXTRA = "spark-gmm[mlflow]"
MODEL_ARTIFACT = "model"


def require_mlflow():
    """``mlflow`` (with its Spark flavour), or a one-line ConfigError naming the extra."""
    try:
        import mlflow
        import mlflow.spark  # noqa: F401 - the flavour the model is logged with
    except ImportError as exc:
        raise ConfigError(
            f"--mlflow needs MLflow, which cannot be imported here ({exc}): pip install '{EXTRA}'"
        ) from None
    return mlflow


def fit_tracker(cfg) -> Optional["FitTracker"]:
    """The tracker of a fit job's run, or None when MLflow tracking is off. Sets the tracking
    URI and the experiment at once, so a missing MLflow or an unusable store fails the job
    before the fit."""
    if not cfg.get("mlflow.enabled"):
        return None
    return FitTracker(
        tracking_uri=cfg.get("mlflow.tracking_uri"),
        experiment=cfg.get("mlflow.experiment"),
        run_name=cfg.get("mlflow.run_name"),
    )


class FitTracker:
    """Records a fitted model, its settings and its summary as one MLflow run."""

    def __init__(
        self,
        tracking_uri: Optional[str] = None,
        experiment: Optional[str] = None,
        run_name: Optional[str] = None,
    ):
        self.mlflow = require_mlflow()
        if tracking_uri:
            self.mlflow.set_tracking_uri(tracking_uri)
        self.experiment_id = None
        if experiment:
            self.experiment_id = self.mlflow.set_experiment(experiment).experiment_id
        self.run_name = run_name

    def log_fit(
        self,
        model,
        params: Dict[str, Any],
        *,
        artifacts: Iterable[str] = (),
        extra_params: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, str]:
        """Logs one run; returns its ids and the model URI (``runs:/<id>/model``)."""
        mlflow = self.mlflow
        with mlflow.start_run(run_name=self.run_name, experiment_id=self.experiment_id) as run:
            mlflow.log_params(fit_params(model, params, extra_params))
            mlflow.log_metrics(fit_metrics(model))
            history = getattr(model.summary, "logLikelihoodHistory", None) or []
            for step, value in enumerate(history):
                if math.isfinite(value):
                    mlflow.log_metric("mean_log_likelihood_by_iteration", float(value), step=step)
            for path in artifacts:
                local = _local_path(path)
                if local is None:
                    log.info("MLflow: %s is not on the local file system; not logged", path)
                elif os.path.isdir(local):
                    mlflow.log_artifacts(local, artifact_path=os.path.basename(local))
                elif os.path.isfile(local):
                    mlflow.log_artifact(local)
            log_model(model)
            info = {
                "run_id": run.info.run_id,
                "experiment_id": run.info.experiment_id,
                "tracking_uri": mlflow.get_tracking_uri(),
                "model_uri": f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}",
            }
        log.info(
            "MLflow run %s (experiment %s) at %s: model %s",
            info["run_id"],
            info["experiment_id"],
            info["tracking_uri"],
            info["model_uri"],
        )
        return info


def log_model(model, name: str = MODEL_ARTIFACT):
    """``mlflow.spark.log_model`` of a ``PipelineModel`` holding ``model`` (a PipelineModel is
    logged as it is), in the active run. The pip requirements are given, not inferred (MLflow
    would otherwise load the model again in a second Spark application to find them)."""
    import mlflow.spark
    import pyspark
    from pyspark.ml import PipelineModel

    import spark_gmm

    pipeline = model if isinstance(model, PipelineModel) else PipelineModel(stages=[model])
    requirements = [f"spark-gmm=={spark_gmm.__version__}", f"pyspark=={pyspark.__version__}"]
    return mlflow.spark.log_model(pipeline, name, pip_requirements=requirements)


def fit_params(
    model, params: Dict[str, Any], extra: Optional[Dict[str, Any]] = None
) -> Dict[str, str]:
    """The estimator settings as MLflow params (snake_case names, strings)."""
    names = {
        "k": "k",
        "covarianceType": "covariance_type",
        "maxIter": "max_iter",
        "tol": "tol",
        "seed": "seed",
        "regCovar": "reg_covar",
        "initMode": "init_mode",
        "handleInvalid": "handle_invalid",
        "inputCols": "input_cols",
        "featuresCol": "features_col",
        "weightCol": "weight_col",
    }
    out = {names[key]: value for key, value in params.items() if key in names}
    if "input_cols" in out:
        out.pop("features_col", None)
        out["input_cols"] = ",".join(out["input_cols"])
    out["num_features"] = model.numFeatures
    out.update(extra or {})
    return {key: str(value) for key, value in out.items() if value is not None}


def fit_metrics(model) -> Dict[str, float]:
    """The summary's numbers as MLflow metrics (non-finite ones left out)."""
    s = model.summary
    values = {
        "log_likelihood": s.logLikelihood,
        "mean_log_likelihood": s.logLikelihood / s.totalWeight if s.totalWeight else None,
        "bic": s.bic,
        "aic": s.aic,
        "num_iter": s.numIter,
        "converged": 1.0 if s.converged else 0.0,
        "num_rows": s.numRows,
        "num_skipped_rows": s.numSkippedRows,
        "total_weight": s.totalWeight,
        "num_parameters": model.numParameters,
        "num_recovered_components": getattr(s, "numRecoveredComponents", None),
        "num_data_passes": getattr(s, "numDataPasses", None),
    }
    return {key: float(v) for key, v in values.items() if v is not None and math.isfinite(float(v))}


def _local_path(path: str) -> Optional[str]:
    """The local file-system path of ``path`` (plain or ``file:``), else None."""
    if path.startswith("file:"):
        path = path[len("file:") :]
        if path.startswith("//"):
            path = path[2:]
    elif "://" in path:
        return None
    return path
