"""The fit driver shared by GaussianMixture and GaussianMixtureSelector.

Validates and prepares the input once, chooses the pass engine (resident: the whole fit in
one barrier stage; or one Spark job per pass), initialises every candidate (restarts, grid
points), and advances all of them together: one pass per EM iteration whatever their number.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

from pyspark.sql import DataFrame
from pyspark.storagelevel import StorageLevel
from threadpoolctl import threadpool_limits

from spark_gmm import kernel
from spark_gmm.checkpoint import Checkpoint
from spark_gmm.data import InputReport, prepare, resolve_features
from spark_gmm.em import PassEngine, SparkPasses, limit_partitions, num_partitions, \
    pack_blocks
from spark_gmm.init import Candidate, ExplicitInit, initial_params
from spark_gmm.resident import ResidentPasses, ResidentUnavailable, plan, start_python_workers

log = logging.getLogger("spark_gmm")


@dataclass(frozen=True)
class FitSettings:
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
    engine: str = "auto"  # auto | resident | jobPerPass


@dataclass
class FitOutcome:
    candidates: List[Candidate]
    results: List[kernel.EMResult]
    report: InputReport
    data_passes: int
    engine: str  # resident | jobPerPass

    def best(self, indices: Optional[Sequence[int]] = None) -> int:
        """Index of the candidate with the highest final log-likelihood (first on ties)."""
        indices = range(len(self.results)) if indices is None else indices
        return max(indices, key=lambda i: (self.results[i].log_likelihood, -i))


def fit_candidates(
    dataset: DataFrame, candidates: Sequence[Candidate], settings: FitSettings
) -> FitOutcome:
    source = resolve_features(dataset, settings.features_col, settings.input_cols)
    start_python_workers(dataset.sparkSession)  # in the background, while prepare validates
    prepared, report = prepare(dataset, source, settings.weight_col, settings.handle_invalid)
    if report.n_skipped:
        log.warning(
            "skipped %d of %d rows with null, NaN or infinite features (handleInvalid=skip)",
            report.n_skipped, report.n_input_rows,
        )
    # Every pass reads the rows packed in dense float64 blocks (about the size of the raw
    # doubles), in at most two partitions per core, coalesced before packing so that packing
    # too runs one Python task per new partition.
    rows = limit_partitions(prepared)
    n_partitions = num_partitions(rows)
    passes = _resident(settings, rows, report, n_partitions)
    if passes is None:  # job-per-pass: the blocks cached for the fit
        blocks = pack_blocks(rows, report.n_features).persist(StorageLevel.MEMORY_AND_DISK)
        passes = SparkPasses(
            blocks, report.n_features, settings.aggregation_depth, settings.description,
            packed=True, n_partitions=n_partitions,
        )
    # The driver's linear algebra is on small matrices (k x d x d): BLAS threads only cost
    # wake-ups there (with several, a tiny triangular solve took milliseconds).
    limits = threadpool_limits(limits=1, user_api="blas")
    failed = True
    try:
        checkpoint = Checkpoint.for_fit(settings, candidates, report)
        resume = checkpoint.load() if checkpoint else None
        init = None
        if resume is None:
            init = initial_params(
                passes, report.n_rows, report.n_features, candidates,
                settings.init_mode, settings.reg_covar, weighted=bool(settings.weight_col),
                fixed=settings.fixed, explicit=settings.explicit,
            )
        pass_number = itertools.count(1)
        multiple = len(candidates) > 1

        def on_iteration(iteration, i, mean_ll, change, seconds):
            who = f" [candidate {i}: k={candidates[i].k} {candidates[i].covariance_type}]" \
                if multiple else ""
            log.info("EM iteration %d%s: mean log-likelihood %.8g, change %.3g, %.2f s",
                     iteration, who, mean_ll, change, seconds)

        def on_recovery(iteration, i, components):
            log.warning(
                "EM iteration %d: component(s) %s of candidate %d collapsed (too few rows); "
                "re-seeded by splitting the heaviest component", iteration, components, i,
            )

        def on_state(state):
            if state.iteration % settings.checkpoint_interval == 0 or not state.active:
                checkpoint.save(state)

        results = kernel.run_em(
            lambda params: passes.em_stats(params, f"EM pass {next(pass_number)}"),
            init, settings.max_iter, settings.tol, settings.reg_covar,
            on_iteration=on_iteration, recover_collapsed=settings.recover_collapsed,
            on_recovery=on_recovery, resume=resume,
            on_state=on_state if checkpoint else None,
        )
        if checkpoint:
            checkpoint.remove()  # the fit is complete: nothing to resume
        failed = False
    finally:
        limits.restore_original_limits()
        if isinstance(passes, ResidentPasses):
            passes.close(cancel=failed)  # an error or an interrupt cancels the stage at once
        else:
            blocks.unpersist()
    return FitOutcome(list(candidates), results, report, passes.jobs,
                      "resident" if isinstance(passes, ResidentPasses) else "jobPerPass")


_SAID = set()  # fallback reasons already logged by this process


def _resident(settings: FitSettings, rows: DataFrame, report: InputReport,
              n_partitions: int) -> Optional[PassEngine]:
    """The started resident engine, or None for the job-per-pass one: by ``settings.engine``,
    and where 'auto' finds that a barrier stage cannot run (said once per reason)."""
    if settings.engine == "jobPerPass":
        return None
    resident, why = plan(rows, n_partitions, report.n_rows * (report.n_features + 1))
    if resident is not None:
        try:
            return ResidentPasses(rows, report.n_rows, report.total_weight, report.n_features,
                                  n_partitions, settings.aggregation_depth,
                                  settings.description, resident).start()
        except ResidentUnavailable as exc:
            why = str(exc)
    if settings.engine == "resident":
        raise RuntimeError(f"engine='resident' cannot run here: {why}")
    if why not in _SAID:
        _SAID.add(why)
        log.warning("the fit runs one Spark job per pass (engine='auto' fell back from the "
                    "resident engine): %s", why)
    return None
