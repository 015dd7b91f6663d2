"""Running a job: settings resolved from defaults, ``--config`` and flags, the job's log, and any
failure turned into one error line and an exit code."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Callable, Optional, Sequence

from spark_gmm import config as _config
from spark_gmm.config import ConfigError, JobSpec
from spark_gmm.jobs.errors import EXIT_CONFIG, EXIT_FAILED, describe_error, is_expected, one_line
from spark_gmm.jobs.job import Job, config_header

log = logging.getLogger("spark_gmm")


def run_job(
    spec: JobSpec, runner: Callable[["Job"], None], argv: Optional[Sequence[str]] = None
) -> int:
    """Resolve the configuration, run the job, turn any failure into one stderr line + code."""
    prog = f"spark-gmm {spec.name}"
    try:
        cfg = _config.resolve(spec, argv, prog=prog)
    except SystemExit as exc:  # --help, or argparse's own one-line error
        return int(exc.code or 0)
    except ConfigError as exc:
        _print_error(prog, str(exc))
        return EXIT_CONFIG
    if cfg.print_config:
        sys.stdout.write(cfg.to_toml(config_header(cfg, None)))
        return 0
    saved_logging = _setup_logging(cfg["log_level"])
    job = Job(spec, cfg)
    try:
        runner(job)
        return 0
    except KeyboardInterrupt:
        _print_error(prog, "interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        message, code = describe_error(exc)
        if cfg.traceback:
            traceback.print_exc()
        elif code == EXIT_FAILED and not is_expected(exc):
            message += " (run with --traceback for the Python traceback)"
        _print_error(prog, message)
        return code
    finally:
        job.close()
        _restore_logging(saved_logging)


def _print_error(prog: str, message: str) -> None:
    sys.stdout.flush()
    for handler in log.handlers:
        handler.flush()
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


class _JobLogHandler(logging.StreamHandler):
    """Marks the handler this module installs (so repeated runs in one process add one)."""


def _setup_logging(level: str):
    """Job log lines (one per EM iteration at INFO) on stderr; returns what to restore."""
    saved = (log.level, log.propagate)
    for handler in list(log.handlers):
        if isinstance(handler, _JobLogHandler):
            log.removeHandler(handler)
    handler = _JobLogHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%y/%m/%d %H:%M:%S"
        )
    )
    log.addHandler(handler)
    log.setLevel(getattr(logging, level))
    log.propagate = False
    return saved


def _restore_logging(saved) -> None:
    """Leaves the logger as it was (a job run inside a notebook or a test session)."""
    for handler in list(log.handlers):
        if isinstance(handler, _JobLogHandler):
            handler.flush()
            log.removeHandler(handler)
    log.setLevel(saved[0])
    log.propagate = saved[1]
