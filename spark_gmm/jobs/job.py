"""The :class:`Job` of one run: its settings, Spark session, file system, outputs and timings."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from spark_gmm.config import JobSpec, ResolvedConfig
from spark_gmm.jobs.errors import JobError, spark_error_line
from spark_gmm.jobs.filesystem import FileSystem
from spark_gmm.jobs.session import BLAS_THREAD_VARS, JOB_SQL_CONF, start_session

log = logging.getLogger("spark_gmm")


RESOLVED_CONFIG = "resolved-config.toml"


class Job:
    """One run: its configuration, the Spark session, the file system, the outputs, timings."""

    def __init__(self, spec: JobSpec, cfg: ResolvedConfig):
        self.spec = spec
        self.cfg = cfg
        self.spark = None
        self.fs: Optional[FileSystem] = None
        self.created_session = False
        self.mode = None  # "local", "spark-submit" or "existing session"
        self.output: Optional[str] = None
        self.timings: Dict[str, float] = {}
        self.started = time.time()
        self._temp_files: List[str] = []
        self._restore_conf: List[Tuple[str, Optional[str]]] = []

    # ---------------------------------------------------------------- Spark

    def start_spark(self):
        """Starts the job's Spark session (or takes the active one), sets up its file system
        and SQL settings, and returns the session."""
        t0 = time.perf_counter()
        self.spark, self.created_session, self.mode = start_session(self.cfg, self._temp_files)
        self.fs = FileSystem(self.spark)
        self.timings["spark_start"] = time.perf_counter() - t0
        for key, value in JOB_SQL_CONF.items():
            self.set_sql_conf(key, value)
        sc = self.spark.sparkContext
        log.info(
            "Spark %s, master %s (%s), application %s",
            self.spark.version,
            sc.master,
            self.mode,
            sc.applicationId,
        )
        return self.spark

    def set_sql_conf(self, key: str, value: str) -> None:
        """A runtime SQL setting for this job; the previous value is restored at close (the
        session may be a notebook's)."""
        try:
            previous = self.spark.conf.get(key, None)
            if previous != value:
                self.spark.conf.set(key, value)
                self._restore_conf.append((key, previous))
        except Exception:  # noqa: BLE001 - an unknown setting on another Spark version
            pass

    def describe(self, text: str) -> None:
        """Names the following Spark jobs in the Spark UI."""
        log.info("%s", text)
        try:
            self.spark.sparkContext.setJobDescription(f"spark_gmm {self.spec.name}: {text}")
        except Exception:  # noqa: BLE001 - cosmetic
            pass

    def close(self) -> None:
        """Restores the SQL settings the job changed, stops the session if the job created
        it, and removes the job's temporary files."""
        if self.spark is not None:
            try:
                self.spark.sparkContext.setJobDescription(None)
                for key, previous in reversed(self._restore_conf):
                    if previous is None:
                        self.spark.conf.unset(key)
                    else:
                        self.spark.conf.set(key, previous)
            except Exception:  # noqa: BLE001
                pass
            if self.created_session:
                try:
                    self.spark.stop()
                except Exception:  # noqa: BLE001
                    pass
        for path in self._temp_files:
            try:
                os.unlink(path)
            except OSError:
                pass

    # ---------------------------------------------------------------- timing

    def timed(self, name: str):
        """A context manager that adds the seconds its block takes to ``timings[name]``."""
        job = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                job.timings[name] = job.timings.get(name, 0.0) + time.perf_counter() - self.t0

        return _Timer()

    # ---------------------------------------------------------------- outputs

    def prepare_output(self, entries: Sequence[str]) -> str:
        """Checks the output folder: refuses a non-empty one unless output.overwrite, in which
        case only ``entries`` (what this job writes) are removed. Returns the folder."""
        path = self.cfg.get("output.path")
        if not path:
            raise JobError("no output folder: give --output PATH (output.path)")
        fs = self.fs
        overwrite = bool(self.cfg.get("output.overwrite"))
        try:
            exists = fs.exists(path)
            if exists and not fs.is_dir(path):
                raise JobError(f"output path {path} exists and is a file, not a folder")
            if exists and fs.list_names(path):
                if not overwrite:
                    raise JobError(
                        f"output folder {path} already exists and is not empty; pass "
                        "--overwrite to replace this job's outputs in it, or choose another "
                        "--output"
                    )
                for entry in entries:
                    target = fs.join(path, entry)
                    if fs.exists(target):
                        log.info("--overwrite: removing %s", target)
                        fs.delete(target)
            # nothing is created yet: a run that fails on its input leaves no folder behind
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"cannot use output folder {path}: {spark_error_line(exc)}") from None
        self.output = path
        return path

    def out(self, *parts: str) -> str:
        """The path of ``parts`` inside the output folder."""
        return self.fs.join(self.output, *parts)

    def write_text(self, name: str, text: str) -> str:
        """Writes ``text`` (UTF-8) to the file ``name`` of the output folder; returns its path."""
        path = self.out(name)
        self.fs.write_bytes(path, text.encode("utf-8"))
        return path

    def write_json(self, name: str, data: Any) -> str:
        """Writes ``data`` as indented JSON (NumPy values as plain ones, non-finite floats as
        strings) to the file ``name`` of the output folder; returns its path."""
        return self.write_text(name, json.dumps(_jsonable(data), indent=2) + "\n")

    def write_resolved_config(self) -> str:
        """Writes the resolved configuration as TOML to ``resolved-config.toml`` in the output
        folder, with a header saying where the values came from; returns its path."""
        path = self.write_text(RESOLVED_CONFIG, self.cfg.to_toml(config_header(self.cfg, self)))
        log.info("resolved configuration: %s", path)
        return path


def config_header(cfg: ResolvedConfig, job: Optional[Job]) -> List[str]:
    """The comment lines heading a resolved configuration: the order of the sources, which
    keys each non-default source set, when and on what Spark it was written (given a started
    ``job``), and how to run it again."""
    import spark_gmm

    header = [
        f"spark_gmm {cfg.spec.name}: resolved configuration",
        "(built-in defaults, then the --config file, then the command line)",
    ]
    by_source: Dict[str, List[str]] = {}
    for key, source in cfg.sources.items():
        if source != "default" and cfg.values.get(key) is not None:
            by_source.setdefault(source, []).append(key)
    for source, keys in by_source.items():
        header.append(f"from {source}: {', '.join(keys)}")
    if job is not None and job.spark is not None:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        header.append(
            f"written {now} by spark_gmm {spark_gmm.__version__} "
            f"(Spark {job.spark.version}, master {job.spark.sparkContext.master})"
        )
    script = {"select": "select_model"}.get(cfg.spec.name, cfg.spec.name)
    header.append(f"run again: python jobs/{script}.py --config <this file> --overwrite")
    return header


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def spark_info(job: Job) -> Dict[str, Any]:
    """The job's Spark and Python environment for its report: Spark version, master, mode,
    application id, the driver's spark_gmm and Python, and the executors' environments."""
    import spark_gmm

    sc = job.spark.sparkContext
    return {
        "version": job.spark.version,
        "master": sc.master,
        "mode": job.mode,
        "applicationId": sc.applicationId,
        "spark_gmm": spark_gmm.__version__,
        "spark_gmm_path": os.path.dirname(os.path.abspath(spark_gmm.__file__)),
        "python": sys.version.split()[0],
        "executors": _executor_environment(job),
    }


def _probe_python(_rows):
    """Runs in the executors' Python workers: which Python and which spark_gmm they use."""
    import socket

    import spark_gmm

    yield {
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "spark_gmm": spark_gmm.__version__,
        "spark_gmm_path": os.path.dirname(os.path.abspath(spark_gmm.__file__)),
        "blasThreads": {var: os.environ.get(var) for var in BLAS_THREAD_VARS},
    }


def _executor_environment(job: Job) -> List[Dict[str, Any]]:
    """The distinct Python environments of the executors (version skew between the driver's
    spark_gmm and the one shipped to the executors shows here)."""
    try:
        job.describe("checking the executors' Python environment")
        sc = job.spark.sparkContext
        n = max(2, sc.defaultParallelism)
        rows = sc.parallelize(range(n), n).mapPartitions(_probe_python).collect()
    except Exception as exc:  # noqa: BLE001 - informational only
        return [{"error": spark_error_line(exc)}]
    return [json.loads(r) for r in sorted({json.dumps(r, sort_keys=True) for r in rows})]
