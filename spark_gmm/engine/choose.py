"""Which engine runs a fit, and why: ``engine='auto'`` takes the driver engine for rows that
fit in the driver's limit, else the resident engine where a barrier stage can run, else one
Spark job per pass; ``driver``, ``resident`` and ``jobPerPass`` force one (an error saying
why when it cannot run)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Tuple

from pyspark.sql import DataFrame

from spark_gmm.engine.base import PassEngine
from spark_gmm.engine.driver import (
    DriverEngine,
    driver_limit,
    driver_unavailable,
    within_limit,
)
from spark_gmm.engine.job_per_pass import JobPerPassEngine
from spark_gmm.engine.resident import (
    ResidentEngine,
    ResidentUnavailable,
    plan,
)

log = logging.getLogger("spark_gmm")


@dataclass(frozen=True)
class FitRows:
    """A fit's prepared rows, as validated: ``n_rows`` rows of ``n_features`` features and
    ``total_weight`` in ``n_partitions`` partitions (0: unknown, Spark Connect)."""

    rows: DataFrame
    n_rows: int
    n_features: int
    total_weight: float
    n_partitions: int


_SAID = set()  # engine choices and fallback reasons this process logged already


def say_once(level: int, message: str) -> None:
    """Logs ``message`` at ``level`` the first time this process says it, and never again."""
    if message not in _SAID:
        _SAID.add(message)
        log.log(level, message)


def open_engine(
    data: FitRows, requested: str, aggregation_depth: int, description: str
) -> PassEngine:
    """The started engine of a fit (its ``reason`` says why it was chosen), by ``requested``
    (one of ``ENGINES``). The choice and its reason are logged once per process."""
    spark = data.rows.sparkSession
    why_not = None  # why the driver engine does not run it
    if requested in ("auto", "driver"):
        why_not = driver_unavailable(spark, data.n_rows, data.n_features)
        if why_not is None:
            return _open_driver(data, spark, requested, aggregation_depth, description)
        if requested == "driver":
            raise ValueError(f"engine='driver' cannot run this fit: {why_not}")
    reason = "engine='jobPerPass'"
    if requested != "jobPerPass":
        engine, why = _try_resident(data, requested, aggregation_depth, description, why_not)
        if engine is not None:
            return engine
        if requested == "resident":
            raise RuntimeError(f"engine='resident' cannot run here: {why}")
        reason = (
            f"too large for the driver engine ({why_not}), and the resident engine "
            f"cannot run here ({why})"
        )
        say_once(
            logging.WARNING,
            "the fit runs one Spark job per pass (engine='auto' fell "
            f"back from the resident engine): {why}",
        )
    engine = JobPerPassEngine.for_fit(
        data.rows, data.n_features, aggregation_depth, description, data.n_partitions
    )
    engine.reason = reason
    return engine


def _open_driver(
    data: FitRows, spark, requested: str, aggregation_depth: int, description: str
) -> DriverEngine:
    """The driver engine, with the rows collected to the driver, for a fit it can run; logs
    (once) that the fit runs there and why."""
    limit, what = driver_limit(spark, data.n_features)
    reason = (
        within_limit(data.n_rows, data.n_features, limit, what)
        if requested == "auto"
        else "engine='driver'"
    )
    say_once(logging.INFO, f"the fit runs on the driver: {reason}")
    engine = DriverEngine.collect(
        data.rows,
        data.n_rows,
        data.total_weight,
        data.n_features,
        data.n_partitions,
        aggregation_depth,
        description,
    )
    engine.reason = reason
    return engine


def _try_resident(
    data: FitRows,
    requested: str,
    aggregation_depth: int,
    description: str,
    why_not: Optional[str],
) -> Tuple[Optional[ResidentEngine], Optional[str]]:
    """(the started resident engine, None), or (None, why it cannot run here). ``why_not`` is
    why the driver engine does not run the fit (for the engine's ``reason``)."""
    resident, why = plan(data.rows, data.n_partitions, data.n_rows * (data.n_features + 1))
    if resident is not None:
        try:
            engine = ResidentEngine(
                data.rows,
                data.n_rows,
                data.total_weight,
                data.n_features,
                data.n_partitions,
                aggregation_depth,
                description,
                resident,
            ).start()
            engine.reason = (
                "engine='resident'"
                if requested == "resident"
                else f"too large for the driver engine ({why_not})"
            )
            return engine, None
        except ResidentUnavailable as exc:
            why = str(exc)
    return None, why
