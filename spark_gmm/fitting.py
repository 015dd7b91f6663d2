"""The fit driver shared by GaussianMixture and GaussianMixtureSelector.

Validates and prepares the input once, chooses the pass engine (:mod:`spark_gmm.engine.choose`:
the driver for small fits, else one barrier stage, else one Spark job per pass), initialises
every candidate (restarts, grid points), and advances all of them together: one pass per EM
iteration whatever their number.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from pyspark.sql import DataFrame
from threadpoolctl import threadpool_limits

from spark_gmm import kernel, variational
from spark_gmm.checkpoint import Checkpoint
from spark_gmm.data import InputReport, prepare, resolve_features
from spark_gmm.engine.choose import FitRows, open_engine, say_once
from spark_gmm.engine.driver import collect_small
from spark_gmm.engine.partitions import limited
from spark_gmm.engine.resident import start_python_workers
from spark_gmm.init import Candidate, ExplicitInit, as_params, data_moments, initial_starts

log = logging.getLogger("spark_gmm")


@dataclass(frozen=True)
class VariationalSettings:
    """A variational Bayesian fit (BayesianGaussianMixture): the prior on the weights and the
    priors the user gave (None: scikit-learn's default, from the data's moments)."""

    prior_type: str
    weight_concentration_prior: Optional[float] = None
    mean_precision_prior: Optional[float] = None
    mean_prior: Optional[tuple] = None
    degrees_of_freedom_prior: Optional[float] = None
    covariance_prior: Optional[object] = None  # nested lists in the type's layout


@dataclass(frozen=True)
class FitSettings:
    """How to fit, the same for every candidate: the input columns and the handling of invalid
    rows, the initialisation, the EM stopping rule, checkpointing and the pass engine."""

    features_col: str
    input_cols: Optional[List[str]]
    weight_col: Optional[str]
    handle_invalid: str
    aggregation_depth: int
    init_mode: str
    reg_covar: float
    max_iter: int
    tol: float
    recover_collapsed: bool
    fixed: Optional[kernel.MixtureParams] = None  # initialModel: the same for every candidate
    explicit: Optional[ExplicitInit] = None  # initialMeans (+ weights, covariances)
    description: str = "spark_gmm"
    checkpoint_dir: Optional[str] = None  # EM state saved here every checkpoint_interval
    checkpoint_interval: int = 10  # iterations; < 1 disables
    engine: str = "auto"  # one of spark_gmm.engine.choose.ENGINES
    variational: Optional[VariationalSettings] = None  # a Bayesian fit; None: maximum likelihood


@dataclass
class FitOutcome:
    """What :func:`fit_candidates` returns: the EM result of every candidate (in the order of
    ``candidates``), the report of the input validation, the number of passes over the data and
    the engine the fit ran on, with why."""

    candidates: List[Candidate]
    results: List[kernel.EMResult]
    report: InputReport
    data_passes: int
    engine: str  # driver | resident | jobPerPass
    engine_reason: str = ""  # why the fit ran on that engine
    variational: bool = False  # results hold VariationalParams and lower bounds

    def best(self, indices: Optional[Sequence[int]] = None) -> int:
        """Index of the candidate with the highest final log-likelihood (first on ties); of
        a variational fit, with the highest last lower bound (scikit-learn's choice)."""
        indices = range(len(self.results)) if indices is None else indices
        if self.variational:
            return max(indices, key=lambda i: (_last(self.results[i].history), -i))
        return max(indices, key=lambda i: (self.results[i].log_likelihood, -i))


def _last(history: List[float]) -> float:
    return history[-1] if history else -float("inf")


def fit_candidates(
    dataset: DataFrame, candidates: Sequence[Candidate], settings: FitSettings
) -> FitOutcome:
    """Fits every candidate (restarts, grid points) to ``dataset`` together: validates and
    prepares the input once, opens the pass engine, initialises the candidates (or resumes
    them from a checkpoint) and runs EM on all of them, one pass per iteration. The engine is
    closed at the end, cancelling what still runs after an error or an interrupt."""
    engine, report = _open_fit_engine(dataset, settings)
    # The driver's linear algebra is on small matrices (k x d x d): BLAS threads only cost
    # wake-ups there (with several, a tiny triangular solve took milliseconds).
    limits = threadpool_limits(limits=1, user_api="blas")
    failed = True
    try:
        results = _initialise_and_run_em(engine, candidates, settings, report)
        failed = False
    finally:
        limits.restore_original_limits()
        engine.close(failed=failed)  # an error or an interrupt cancels what still runs
    return FitOutcome(
        list(candidates),
        results,
        report,
        engine.data_passes,
        engine.name,
        engine.reason,
        settings.variational is not None,
    )


def _open_fit_engine(dataset: DataFrame, settings: FitSettings):
    """(engine, report): the pass engine of the fit and the report of the input validation.
    With engine 'auto' or 'driver', an input that Spark estimates small is collected to the
    driver engine and validated there in one Spark job; otherwise Spark validates the rows and
    :func:`_open_spark_engine` opens the engine over them."""
    source = resolve_features(dataset, settings.features_col, settings.input_cols)
    small = (
        collect_small(
            dataset,
            source,
            settings.weight_col,
            settings.handle_invalid,
            settings.aggregation_depth,
            settings.description,
        )
        if settings.engine in ("auto", "driver")
        else None
    )
    if small is not None:  # validated on the driver from the one collect
        engine, report, reason = small
        engine.reason = reason if settings.engine == "auto" else "engine='driver'"
        say_once(logging.INFO, f"the fit runs on the driver: {engine.reason}")
    else:
        if settings.engine != "driver":  # likely a fit for the executors: their Python
            start_python_workers(dataset.sparkSession)  # workers start while Spark validates
        prepared, report = prepare(dataset, source, settings.weight_col, settings.handle_invalid)
    if report.n_incomplete:
        log.info(
            "%d of %d rows have missing features, marginalised (handleInvalid=keep)",
            report.n_incomplete,
            report.n_rows,
        )
    if report.n_skipped:
        log.warning(
            "skipped %d of %d rows with null, NaN or infinite features (handleInvalid=skip)",
            report.n_skipped,
            report.n_input_rows,
        )
    if small is None:
        engine = _open_spark_engine(prepared, report, settings)
    return engine, report


def _open_spark_engine(prepared: DataFrame, report: InputReport, settings: FitSettings):
    """The engine of a fit whose rows Spark validated (``prepared``), chosen by
    :func:`open_engine` from ``settings.engine``."""
    # Every pass reads the rows packed in dense float64 blocks (about the size of the raw
    # doubles), in at most two partitions per core, coalesced before packing so that packing
    # too runs one Python task per new partition.
    rows, n_partitions = limited(prepared)
    data = FitRows(rows, report.n_rows, report.n_features, report.total_weight, n_partitions)
    return open_engine(data, settings.engine, settings.aggregation_depth, settings.description)


def _initialise_and_run_em(
    engine, candidates: Sequence[Candidate], settings: FitSettings, report: InputReport
) -> List[kernel.EMResult]:
    """EM for every candidate, from its initial parameters or, when a checkpoint of the same
    fit exists, from the saved state; the checkpoint is saved every
    ``settings.checkpoint_interval`` iterations and removed once EM completes."""
    checkpoint = Checkpoint.for_fit(settings, candidates, report)
    resume = checkpoint.load() if checkpoint else None
    init = None
    if resume is None:
        init = initial_starts(
            engine,
            report.n_rows,
            report.n_features,
            candidates,
            settings.init_mode,
            settings.reg_covar,
            weighted=bool(settings.weight_col),
            fixed=settings.fixed,
            explicit=settings.explicit,
            n_incomplete=report.n_incomplete,
        )
    pass_number = itertools.count(1)

    def on_state(state):
        if state.iteration % settings.checkpoint_interval == 0 or not state.active:
            checkpoint.save(state)

    def em_stats(params):
        return engine.em_stats(params, f"EM pass {next(pass_number)}")

    if settings.variational is None:
        update, compute_stats = None, em_stats
        if init is not None:  # initial responsibilities -> parameters: one M-step
            init = [as_params(start, settings.reg_covar) for start in init]
    else:
        init, update = _variational_start(engine, init, candidates, settings, report)
        compute_stats = variational.variational_stats_function(em_stats)
    results = kernel.run_em(
        compute_stats,
        init,
        settings.max_iter,
        settings.tol,
        settings.reg_covar,
        on_iteration=_iteration_logger(
            candidates, "mean log-likelihood" if settings.variational is None else "lower bound"
        ),
        recover_collapsed=settings.recover_collapsed,
        on_recovery=_log_recovery,
        resume=resume,
        on_state=on_state if checkpoint else None,
        update=update,
    )
    if checkpoint:
        checkpoint.remove()  # the fit is complete: nothing to resume
    return results


def _variational_start(engine, starts, candidates, settings: FitSettings, report):
    """(initial VariationalParams per candidate, the update of the variational fit): the
    priors (scikit-learn's defaults from one pass of the data's moments, where the user set
    none), and scikit-learn's ``_initialize`` from the statistics of each candidate's initial
    responsibilities; a start given as parameters ('randomFromData') takes its
    responsibilities from one E-step pass."""
    v = settings.variational
    mean, cov = data_moments(engine, engine.first_row(), full=True)
    weight = report.total_weight
    priors = {
        (c.k, c.covariance_type): variational.priors_from_moments(
            c.k,
            c.covariance_type,
            mean,
            cov * weight,
            weight,
            v.prior_type,
            v.weight_concentration_prior,
            v.mean_precision_prior,
            None if v.mean_prior is None else np.asarray(v.mean_prior, dtype=np.float64),
            v.degrees_of_freedom_prior,
            v.covariance_prior,
        )
        for c in candidates
    }
    as_params = [i for i, start in enumerate(starts) if isinstance(start, kernel.MixtureParams)]
    if as_params:
        stats = engine.em_stats([starts[i] for i in as_params], "initial responsibilities")
        starts = list(starts)
        for i, s in zip(as_params, stats):
            starts[i] = s
    states = [
        variational.initial_state(start, priors[(c.k, c.covariance_type)], settings.reg_covar)
        for c, start in zip(candidates, starts)
    ]
    updates = {
        key: variational.variational_update(p, settings.reg_covar) for key, p in priors.items()
    }

    def update(stats, state):
        return updates[(state.k, state.covariance_type)](stats, state)

    return states, update


def _iteration_logger(candidates: Sequence[Candidate], objective: str):
    """The ``on_iteration`` callback of EM: logs each iteration's ``objective`` (the mean
    log-likelihood, or the lower bound of a variational fit), its change and time, naming the
    candidate when there are several."""
    multiple = len(candidates) > 1

    def on_iteration(iteration, i, value, change, seconds):
        who = (
            f" [candidate {i}: k={candidates[i].k} {candidates[i].covariance_type}]"
            if multiple
            else ""
        )
        log.info(
            "EM iteration %d%s: %s %.8g, change %.3g, %.2f s",
            iteration,
            who,
            objective,
            value,
            change,
            seconds,
        )

    return on_iteration


def _log_recovery(iteration, i, components):
    """The ``on_recovery`` callback of EM: warns which components of a candidate collapsed."""
    log.warning(
        "EM iteration %d: component(s) %s of candidate %d collapsed (too few rows); "
        "re-seeded by splitting the heaviest component",
        iteration,
        components,
        i,
    )
