"""The batch jobs: fit, score, select, sample (``jobs/*.py`` are thin wrappers around these).

Each job runs the same way under ``spark-submit`` (any master; the job joins the session that
spark-submit set up) and as a plain Python program (``python jobs/fit.py``, ``python -m
spark_gmm.cli fit``, or a console script), where it starts Spark in local mode itself.

Every job:

* reads its settings from the built-in defaults, then ``--config FILE`` (TOML), then the flags
  (:mod:`spark_gmm.config`), and writes the resolved settings beside its outputs;
* refuses to write into an existing, non-empty output folder unless ``--overwrite``;
* checks its input before any costly work, and reports any problem as ONE line on stderr
  (``spark-gmm fit: error: ...``) with a non-zero exit code: 2 for bad settings, 1 for bad
  data, paths or a failed Spark job (``--traceback`` adds the Python traceback).

Paths go through Hadoop's FileSystem API of the running Spark, so ``hdfs://``, ``s3a://``,
``abfss://`` ... work wherever Spark itself can read and write them.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
import os
import re
import site
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from spark_gmm import config as _config
from spark_gmm.config import ConfigError, JobSpec, ResolvedConfig

log = logging.getLogger("spark_gmm")

RESOLVED_CONFIG = "resolved-config.toml"
TRAINING_SCORES = "training_scores.json"
BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
QUANTILE_PROBABILITIES = (
    0.0, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5,
    0.75, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999, 1.0,
)
QUANTILE_ACCURACY = 10000  # percentile_approx accuracy: relative rank error 1e-4
DEMO_COLUMNS = ["x", "y", "z"]

EXIT_CONFIG = 2
EXIT_FAILED = 1


class JobError(Exception):
    """A problem the user can fix (input, output, model path); the message is the one line."""


# =========================================================================== entry points

def main_fit(argv: Optional[Sequence[str]] = None) -> int:
    """``fit``: cluster a table, write model, predictions and report. Returns the exit code."""
    return run_job(_config.FIT, _run_fit, argv)


def main_score(argv: Optional[Sequence[str]] = None) -> int:
    """``score``: apply a saved model to new data, with an optional anomaly flag."""
    return run_job(_config.SCORE, _run_score, argv)


def main_select(argv: Optional[Sequence[str]] = None) -> int:
    """``select``: BIC/AIC over a grid of k and covariance types; table + best model."""
    return run_job(_config.SELECT, _run_select, argv)


def main_sample(argv: Optional[Sequence[str]] = None) -> int:
    """``sample``: draw synthetic rows from a saved model."""
    return run_job(_config.SAMPLE, _run_sample, argv)


_MAINS = {"fit": main_fit, "score": main_score, "select": main_select, "sample": main_sample}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m spark_gmm.cli JOB [flags]`` / ``spark-gmm JOB [flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _MAINS:
        out = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        print("usage: spark-gmm {fit,score,select,sample} [--help] [flags...]", file=out)
        for name, spec in _config.JOBS.items():
            print(f"  {name:<7} {spec.description}", file=out)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"spark-gmm: error: unknown job {argv[0]!r}", file=sys.stderr)
        return 0 if out is sys.stdout else EXIT_CONFIG
    return _MAINS[argv[0]](argv[1:])


def run_job(spec: JobSpec, runner: Callable[["Job"], None],
            argv: Optional[Sequence[str]] = None) -> int:
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
        sys.stdout.write(cfg.to_toml(_config_header(cfg, None)))
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
        elif code == EXIT_FAILED and not _is_expected(exc):
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
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _one_line(text: str, limit: int = 600) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _is_expected(exc: BaseException) -> bool:
    from spark_gmm import CovarianceError, InvalidInputError, ModelFileError

    return isinstance(exc, (JobError, ConfigError, InvalidInputError, ModelFileError,
                            CovarianceError, FileExistsError))


def describe_error(exc: BaseException) -> Tuple[str, int]:
    """(one-line message, exit code) for any exception a job can raise."""
    if isinstance(exc, ConfigError):
        return _one_line(str(exc)), EXIT_CONFIG
    if _is_expected(exc):
        return _one_line(str(exc)), EXIT_FAILED
    return _spark_error_line(exc), EXIT_FAILED


def _spark_error_line(exc: BaseException) -> str:
    """The informative line of a Py4J / PySpark / Python exception."""
    text = str(exc)
    name = type(exc).__name__
    if name == "Py4JJavaError" or "\n\tat " in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # the Java exception line ("org.apache.spark.SparkException: ...") says what went wrong
        for line in lines:
            m = re.match(r"^(?::\s*)?(?:Caused by: )?([\w.$]+(?:Exception|Error)): (.*)$", line)
            if m and "py4j" not in m.group(1).lower():
                return f"{m.group(1).rsplit('.', 1)[-1]}: {_one_line(m.group(2))}"
        return _one_line(lines[1] if len(lines) > 1 else text)
    first = _one_line(text) if text.strip() else ""
    if isinstance(exc, (ValueError, TypeError)) and first:
        return first
    if hasattr(exc, "getErrorClass") or type(exc).__module__.startswith("pyspark"):
        return first or name
    return f"{name}: {first}" if first else name


# =========================================================================== logging

class _JobLogHandler(logging.StreamHandler):
    """Marks the handler this module installs (so repeated runs in one process add one)."""


def _setup_logging(level: str):
    """Job log lines (one per EM iteration at INFO) on stderr; returns what to restore."""
    saved = (log.level, log.propagate)
    for handler in list(log.handlers):
        if isinstance(handler, _JobLogHandler):
            log.removeHandler(handler)
    handler = _JobLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%y/%m/%d %H:%M:%S"
    ))
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


_LOG4J2 = """\
# written by spark_gmm.cli for a job that starts Spark itself: Spark's log on stderr, one line
# per event (stack traces are left out: the job prints one error line instead).
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n
appender.console.layout.alwaysWriteExceptions = false
{quiet}
"""


# At WARN and above: platform notices, and task failures (whose messages embed Python
# tracebacks; the job reports the failure itself in one line) are left out.
_LOG4J2_QUIET = """\
# noise: platform notices, and task failures (whose messages embed Python tracebacks; the job
# reports the failure itself)
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
logger.tasks.name = org.apache.spark.scheduler.TaskSetManager
logger.tasks.level = off
logger.executor.name = org.apache.spark.executor.Executor
logger.executor.level = off
logger.sink.name = org.apache.spark.sql.execution.streaming.sinks.FileStreamSink
logger.sink.level = error
logger.sink2.name = org.apache.spark.sql.execution.streaming.FileStreamSink
logger.sink2.level = error
logger.parquet.name = org.apache.parquet
logger.parquet.level = error
logger.parquet2.name = parquet
logger.parquet2.level = error
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.hive.name = org.apache.hadoop.hive
logger.hive.level = error
"""


# Runtime SQL settings of every job. Spark 4.3's columnar input to Arrow UDFs fails on
# DataFrames read from Parquet that hold a vector (UDT) column, as soon as the model's scoring
# UDF runs over them ([UNSUPPORTED_DATATYPE] ... RowToColumnConverter); the row-based input
# path works.
_JOB_SQL_CONF = {"spark.sql.execution.arrow.pythonUDF.columnarInput.enabled": "false"}


# =========================================================================== the job context

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
        t0 = time.perf_counter()
        self.spark, self.created_session, self.mode = _start_spark(self.cfg, self._temp_files)
        self.fs = FileSystem(self.spark)
        self.timings["spark_start"] = time.perf_counter() - t0
        for key, value in _JOB_SQL_CONF.items():
            self.set_sql_conf(key, value)
        sc = self.spark.sparkContext
        log.info("Spark %s, master %s (%s), application %s", self.spark.version, sc.master,
                 self.mode, sc.applicationId)
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
            raise JobError(f"cannot use output folder {path}: {_spark_error_line(exc)}") from None
        self.output = path
        return path

    def out(self, *parts: str) -> str:
        return self.fs.join(self.output, *parts)

    def write_text(self, name: str, text: str) -> str:
        path = self.out(name)
        self.fs.write_bytes(path, text.encode("utf-8"))
        return path

    def write_json(self, name: str, data: Any) -> str:
        return self.write_text(name, json.dumps(_jsonable(data), indent=2) + "\n")

    def write_resolved_config(self) -> str:
        path = self.write_text(RESOLVED_CONFIG, self.cfg.to_toml(_config_header(self.cfg, self)))
        log.info("resolved configuration: %s", path)
        return path

    # ---------------------------------------------------------------- input

    def read_input(self):
        """(DataFrame, description) of input.path / input.table; one-line errors."""
        from pyspark.errors import AnalysisException

        cfg = self.cfg
        table, path = cfg.get("input.table"), cfg.get("input.path")
        if table:
            self.describe(f"reading table {table}")
            try:
                df = self.spark.table(table)
            except AnalysisException as exc:
                if "TABLE_OR_VIEW_NOT_FOUND" in str(exc):
                    raise JobError(f"table {table} not found in the Spark catalog") from None
                raise JobError(f"cannot read table {table}: {_one_line(str(exc))}") from None
            return df, f"table {table}"
        if not path:
            raise JobError("no input: give --input PATH or --table NAME (input.path / "
                           "input.table)" + (", or --demo" if "demo.enabled" in cfg.values
                                             else ""))
        fmt = cfg.get("input.format") or _guess_format(path)
        try:
            found = self.fs.glob_exists(path)
        except Exception as exc:  # noqa: BLE001 - e.g. no FileSystem for the scheme
            raise JobError(f"cannot access input {path}: {_spark_error_line(exc)}") from None
        if not found:
            raise JobError(f"input path {path} does not exist")
        options = {"header": "true", "inferSchema": "true"} if fmt == "csv" else {}
        options.update(cfg.get("input.options") or {})
        self.describe(f"reading {fmt} input {path}")
        try:
            df = self.spark.read.format(fmt).options(**options).load(path)
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"cannot read input {path} as {fmt}: {_spark_error_line(exc)}") \
                from None
        if not df.columns:
            raise JobError(f"input {path} has no columns (is it {fmt}?)")
        return df, f"{fmt} input {path}"


def _guess_format(path: str) -> str:
    base = path.rstrip("/").lower()
    for ext, fmt in ((".csv", "csv"), (".tsv", "csv"), (".json", "json"), (".jsonl", "json"),
                     (".ndjson", "json"), (".orc", "orc"), (".parquet", "parquet")):
        if base.endswith(ext) or base.endswith(ext + ".gz"):
            return fmt
    return "parquet"


def _config_header(cfg: ResolvedConfig, job: Optional[Job]) -> List[str]:
    import spark_gmm

    header = [f"spark_gmm {cfg.spec.name}: resolved configuration",
              "(built-in defaults, then the --config file, then the command line)"]
    by_source: Dict[str, List[str]] = {}
    for key, source in cfg.sources.items():
        if source != "default" and cfg.values.get(key) is not None:
            by_source.setdefault(source, []).append(key)
    for source, keys in by_source.items():
        header.append(f"from {source}: {', '.join(keys)}")
    if job is not None and job.spark is not None:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        header.append(f"written {now} by spark_gmm {spark_gmm.__version__} "
                      f"(Spark {job.spark.version}, master {job.spark.sparkContext.master})")
    script = {"select": "select_model"}.get(cfg.spec.name, cfg.spec.name)
    header.append(f"run again: python jobs/{script}.py --config <this file> --overwrite")
    return header


# =========================================================================== Spark start

def _start_spark(cfg: ResolvedConfig, temp_files: List[str]):
    """(session, created, mode): the active session, the one spark-submit prepared, or a new
    local one with the environment Python workers need."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:  # e.g. main_fit([...]) from a notebook: its session as it is
        if cfg.get("spark.conf") or cfg.get("spark.properties_file") or cfg.get("spark.master"):
            log.info("using the active Spark session: the job's Spark settings are not applied")
        return active, False, "existing session"
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # started by spark-submit / pyspark
    conf: Dict[str, str] = {}
    if submitted:
        if cfg.get("spark.master"):
            log.warning("spark.master is ignored under spark-submit (its --master wins)")
        if cfg.get("spark.properties_file"):
            log.warning("spark.properties_file is ignored under spark-submit: pass "
                        "--properties-file to spark-submit")
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()  # attach to spark-submit's JVM to read its conf
        present = SparkConf()
        mode = "spark-submit"
    else:
        conf["spark.ui.showConsoleProgress"] = "false"
        props = read_properties(cfg["spark.properties_file"]) \
            if cfg.get("spark.properties_file") else {}
        # the master: --master / spark.master, else the properties file's, else local[*]
        master = cfg.get("spark.master") or (cfg.get("spark.conf") or {}).get("spark.master") \
            or props.get("spark.master") or "local[*]"
        _local_environment(master)
        if master.startswith("local"):
            conf["spark.driver.host"] = "127.0.0.1"
            conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf.update(props)
        conf["spark.master"] = master
        conf["spark.pyspark.python"] = sys.executable
        conf["spark.pyspark.driver.python"] = sys.executable
        present = None
        mode = "local" if master.startswith("local") else "client"
    conf.update({k: v for k, v in (cfg.get("spark.conf") or {}).items() if k != "spark.master"})
    for var in BLAS_THREAD_VARS:  # one BLAS thread per task: tasks already fill the cores
        key = f"spark.executorEnv.{var}"
        if key not in conf and not (present is not None and present.contains(key)):
            conf[key] = "1"
    if not submitted:
        level = cfg["spark.log_level"]
        fd, log4j = tempfile.mkstemp(prefix="spark-gmm-log4j2-", suffix=".properties")
        with os.fdopen(fd, "w") as fh:
            quiet = _LOG4J2_QUIET if level in ("WARN", "ERROR", "FATAL", "OFF") else ""
            fh.write(_LOG4J2.format(level=level.lower(), quiet=quiet))
        temp_files.append(log4j)
        java_opts = conf.get("spark.driver.extraJavaOptions", "")
        if "log4j2.configurationFile" not in java_opts:
            conf["spark.driver.extraJavaOptions"] = \
                f"{java_opts} -Dlog4j2.configurationFile=file:{log4j}".strip()
    builder = SparkSession.builder.appName(cfg["spark.app_name"])
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"Spark did not start: {_spark_error_line(exc)}") from None
    spark.sparkContext.setLogLevel(cfg["spark.log_level"])
    if submitted and cfg["spark.log_level"] in ("WARN", "ERROR", "FATAL", "OFF"):
        _quiet_loggers(spark)
    return spark, True, mode


# Loggers whose WARNs are noise for a job (a Java stack trace for every existence check of a
# path that is not there yet, platform notices); under spark-submit the job sets them to ERROR.
_NOISY_LOGGERS = (
    "org.apache.hadoop.util.NativeCodeLoader",
    "org.apache.spark.sql.execution.streaming.sinks.FileStreamSink",
    "org.apache.spark.sql.execution.streaming.FileStreamSink",
    "org.apache.parquet",
)


def _quiet_loggers(spark) -> None:
    try:
        jvm = spark.sparkContext._jvm
        level = jvm.org.apache.logging.log4j.Level.ERROR
        for name in _NOISY_LOGGERS:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)
    except Exception:  # noqa: BLE001 - another logging backend: leave it alone
        pass


def _local_environment(master: str) -> None:
    """What a local-mode run needs before the JVM starts (it and its Python workers inherit
    this process's environment)."""
    os.environ["PYSPARK_PYTHON"] = sys.executable  # else workers run another python
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    for var in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        os.environ.pop(var, None)  # the jobs need a classic session
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")
    # Workers must import spark_gmm too: when it is not installed (a checkout on sys.path),
    # put its folder on the workers' PYTHONPATH.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site_dirs = {os.path.abspath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    if root not in site_dirs:
        current = os.environ.get("PYTHONPATH", "")
        if root not in current.split(os.pathsep):
            os.environ["PYTHONPATH"] = root + (os.pathsep + current if current else "")


def read_properties(path: str) -> Dict[str, str]:
    """A Spark properties file (``key value``, ``key=value`` or ``key: value`` per line)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"Spark properties file {path} cannot be read: "
                          f"{exc.strerror or exc}") from None
    out: Dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"^([^\s=:]+)\s*[=:\s]\s*(.*)$", line)
        if not m:
            raise ConfigError(f"{path}:{number}: expected 'key value', got {raw!r}")
        out[m.group(1)] = m.group(2).strip()
    return out


# =========================================================================== file system

class FileSystem:
    """Hadoop FileSystem calls through the session's JVM (any scheme Spark can use)."""

    def __init__(self, spark):
        sc = spark.sparkContext
        self._jvm = sc._jvm
        self._conf = sc._jsc.hadoopConfiguration()

    def _path(self, path: str):
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self, p):
        return p.getFileSystem(self._conf)

    @staticmethod
    def join(base: str, *parts: str) -> str:
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])

    def qualify(self, path: str) -> str:
        p = self._path(path)
        return str(self._fs(p).makeQualified(p).toString())

    def exists(self, path: str) -> bool:
        p = self._path(path)
        return bool(self._fs(p).exists(p))

    def glob_exists(self, path: str) -> bool:
        p = self._path(path)
        statuses = self._fs(p).globStatus(p)
        return statuses is not None and len(statuses) > 0

    def is_dir(self, path: str) -> bool:
        p = self._path(path)
        return bool(self._fs(p).getFileStatus(p).isDirectory())

    def list_names(self, path: str) -> List[str]:
        p = self._path(path)
        return [str(s.getPath().getName()) for s in self._fs(p).listStatus(p)]

    def delete(self, path: str) -> None:
        p = self._path(path)
        self._fs(p).delete(p, True)

    def mkdirs(self, path: str) -> None:
        p = self._path(path)
        self._fs(p).mkdirs(p)

    def write_bytes(self, path: str, data: bytes) -> None:
        p = self._path(path)
        fs = self._fs(p)
        if str(fs.getUri().getScheme()) == "file":  # no .crc files beside local reports
            for _ in range(4):  # LocalFileSystem (or Hive's proxy of it) -> RawLocalFileSystem
                if fs.getClass().getName() == "org.apache.hadoop.fs.RawLocalFileSystem":
                    break
                try:
                    fs = fs.getRawFileSystem()
                except Exception:  # noqa: BLE001 - not a wrapper: write through it
                    break
        stream = fs.create(p, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def read_bytes(self, path: str) -> bytes:
        p = self._path(path)
        stream = self._fs(p).open(p)
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()


# =========================================================================== columns

def _columns_text(df) -> str:
    names = df.columns
    shown = ", ".join(names[:25])
    return shown + (f", ... ({len(names)} columns)" if len(names) > 25 else "")


def _type_hint(fmt_desc: str) -> str:
    if fmt_desc.startswith("csv"):
        return (" (CSV is read with inferSchema=true: one non-numeric value makes the whole "
                "column a string)")
    return ""


def check_features(df, desc: str, input_cols: Optional[List[str]],
                   features_col: Optional[str]) -> Tuple[Optional[List[str]], str]:
    """Validates the feature columns against the schema: (input_cols or None, features_col)."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import ArrayType, NumericType

    fields = {f.name: f.dataType for f in df.schema.fields}
    if input_cols:
        dupes = sorted({c for c in input_cols if input_cols.count(c) > 1})
        if dupes:
            raise JobError(f"input_cols lists {', '.join(dupes)} more than once")
        missing = [c for c in input_cols if c not in fields]
        if missing:
            raise JobError(
                f"column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
                f"not found in {desc}; its columns are: {_columns_text(df)}"
            )
        for c in input_cols:
            if not isinstance(fields[c], NumericType):
                raise JobError(
                    f"column '{c}' of {desc} is {fields[c].simpleString()}, not numeric; "
                    "input_cols must be numeric columns (or give a vector column as "
                    f"--features-col){_type_hint(desc)}"
                )
        return list(input_cols), features_col or "features"
    col = features_col or "features"
    if col not in fields:
        raise JobError(
            f"features column '{col}' not found in {desc}; its columns are: "
            f"{_columns_text(df)}. Give the numeric columns to cluster with --input-cols "
            "a,b,c, or a vector column with --features-col"
        )
    dtype = fields[col]
    ok = isinstance(dtype, VectorUDT) or (
        isinstance(dtype, ArrayType) and isinstance(dtype.elementType, NumericType)
    )
    if not ok:
        hint = " (a single numeric column is clustered with --input-cols " + col + ")" \
            if isinstance(dtype, NumericType) else ""
        raise JobError(
            f"features column '{col}' of {desc} is {dtype.simpleString()}, not a vector or "
            f"an array of numbers{hint}"
        )
    return None, col


def check_numeric(df, desc: str, col: Optional[str], what: str) -> None:
    from pyspark.sql.types import NumericType

    if not col:
        return
    fields = {f.name: f.dataType for f in df.schema.fields}
    if col not in fields:
        raise JobError(f"{what} '{col}' not found in {desc}; its columns are: {_columns_text(df)}")
    if not isinstance(fields[col], NumericType):
        raise JobError(f"{what} '{col}' of {desc} is {fields[col].simpleString()}, not numeric"
                       f"{_type_hint(desc)}")


def _check_new_columns(df, desc: str, names: Dict[str, str]) -> None:
    taken = [f"{name} ({flag})" for flag, name in names.items() if name and name in df.columns]
    if taken:
        raise JobError(f"{desc} already has column(s) {', '.join(taken)}: choose other output "
                       "names with those flags")


def _check_partition_by(df, cols: Sequence[str]) -> None:
    from pyspark.sql.types import ArrayType, MapType, StructType, UserDefinedType

    fields = {f.name: f.dataType for f in df.schema.fields}
    for c in cols:
        if c not in fields:
            raise JobError(f"partition_by column '{c}' is not in the output; its columns are: "
                           f"{_columns_text(df)}")
        if isinstance(fields[c], (ArrayType, MapType, StructType, UserDefinedType)):
            raise JobError(f"cannot partition the output by '{c}' "
                           f"({fields[c].simpleString()}): choose a column of plain values")


# =========================================================================== writing data

def _for_format(df, fmt: str, probability_col: Optional[str], k: int):
    """Output columns a file format can hold: probability vectors become array<double>; for
    CSV they become one column per component and other nested values JSON text."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, MapType, StructType

    if probability_col and probability_col in df.columns:
        df = df.withColumn(probability_col, vector_to_array(F.col(_q(probability_col))))
    if fmt != "csv":
        return df
    cols = []
    for field in df.schema.fields:
        c = F.col(_q(field.name))
        if field.name == probability_col:
            cols += [c[j].alias(f"{probability_col}_{j}") for j in range(k)]
        elif isinstance(field.dataType, VectorUDT):
            cols.append(F.to_json(vector_to_array(c)).alias(field.name))
        elif isinstance(field.dataType, (ArrayType, MapType, StructType)):
            cols.append(F.to_json(c).alias(field.name))
        else:
            cols.append(c)
    return df.select(*cols)


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _write_frame(job: Job, df, path: str, fmt: str, partition_by: Sequence[str] = (),
                 num_files: int = 0) -> None:
    from pyspark.sql import functions as F

    if num_files:
        df = df.repartition(num_files, *[F.col(_q(c)) for c in partition_by]) if partition_by \
            else df.repartition(num_files)
    writer = df.write.format(fmt).mode("overwrite" if job.cfg.get("output.overwrite")
                                       else "errorifexists")
    if fmt == "csv":
        writer = writer.option("header", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)


# =========================================================================== training scores

def score_statistics(df, column: str) -> Dict[str, Any]:
    """Row count, mean, min, max and approximate quantiles of a log-likelihood column, in one
    Spark job."""
    from pyspark.sql import functions as F

    c = F.col(_q(column))
    row = df.agg(
        F.count(c).alias("n"), F.mean(c).alias("mean"), F.min(c).alias("min"),
        F.max(c).alias("max"),
        F.percentile_approx(c, list(QUANTILE_PROBABILITIES), QUANTILE_ACCURACY).alias("q"),
    ).collect()[0]
    values = [float(v) for v in (row["q"] or [])]
    return {
        "column": column,
        "rows": int(row["n"]),
        "mean": _float(row["mean"]),
        "min": _float(row["min"]),
        "max": _float(row["max"]),
        "relativeError": 1.0 / QUANTILE_ACCURACY,
        "probabilities": list(QUANTILE_PROBABILITIES),
        "values": values,
    }


def quantile_threshold(scores: Dict[str, Any], q: float) -> Tuple[float, bool]:
    """(threshold, interpolated) for quantile ``q`` of saved training scores."""
    probs = [float(p) for p in scores["probabilities"]]
    values = [float(v) for v in scores["values"]]
    if len(probs) != len(values) or not probs:
        raise JobError("the training scores file is malformed: probabilities and values differ")
    if not probs[0] <= q <= probs[-1]:
        raise JobError(f"threshold_quantile {q} is outside the saved quantiles "
                       f"[{probs[0]}, {probs[-1]}]")
    for p, v in zip(probs, values):
        if abs(p - q) < 1e-12:
            return v, False
    return float(np.interp(q, probs, values)), True


def _float(value) -> Optional[float]:
    return None if value is None else float(value)


# =========================================================================== demo data

def demo_frame(rows: int, seed: int = 7):
    """A pandas DataFrame of 4 Gaussian blobs in 3-D (columns id, x, y, z): elongated,
    rotated, unequal weights, two of them overlapping in x."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    weights = np.array([0.35, 0.25, 0.25, 0.15])
    means = np.array([[-4.0, -2.0, 0.0], [3.0, 4.0, 1.0], [4.5, -3.5, -2.0], [-0.5, 5.5, 3.0]])
    scales = np.array([[1.6, 0.6, 0.5], [0.8, 1.7, 0.7], [1.0, 0.6, 1.0], [0.7, 0.7, 0.6]])
    angles = np.array([0.5, -0.7, 0.25, 0.0])
    counts = rng.multinomial(rows, weights)
    blocks = []
    for mean, scale, angle, count in zip(means, scales, angles, counts):
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        blocks.append(mean + (rng.standard_normal((count, 3)) * scale) @ rotation.T)
    X = np.vstack(blocks)[rng.permutation(rows)]
    frame = pd.DataFrame(np.round(X, 5), columns=DEMO_COLUMNS)
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    return frame


def _write_demo_data(job: Job) -> str:
    path = job.out("data")
    rows = int(job.cfg["demo.rows"])
    job.describe(f"writing {rows:,} rows of demo data to {path}")
    with job.timed("demo_data"):
        frame = demo_frame(rows)
        df = job.spark.createDataFrame(frame).repartition(4)
        _write_frame(job, df, path, "parquet")
    return path


def _apply_demo(job: Job) -> None:
    """--demo: the generated data is the input; columns x, y, z and k=4 unless set."""
    cfg = job.cfg
    if cfg.get("input.path") or cfg.get("input.table"):
        raise JobError("--demo generates its own input: drop --input / --table")
    path = _write_demo_data(job)
    cfg.values["input.path"], cfg.sources["input.path"] = path, "demo"
    cfg.values["input.format"], cfg.sources["input.format"] = "parquet", "demo"
    if not cfg.get("input.input_cols") and not cfg.get("input.features_col"):
        cfg.values["input.input_cols"], cfg.sources["input.input_cols"] = \
            list(DEMO_COLUMNS), "demo"
    if cfg.sources.get("model.k") == "default":
        cfg.values["model.k"], cfg.sources["model.k"] = 4, "demo"


# =========================================================================== model loading

def load_model(job: Job, path: str):
    """The model at ``path`` (or at ``path``/model, for a fit/select output folder)."""
    from spark_gmm import GaussianMixtureModel

    fs = job.fs
    try:
        if not fs.exists(path):
            raise JobError(f"model path {path} does not exist")
        if not fs.exists(fs.join(path, "metadata")) and fs.exists(fs.join(path, "model",
                                                                          "metadata")):
            path = fs.join(path, "model")
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"cannot access model path {path}: {_spark_error_line(exc)}") from None
    job.describe(f"loading the model {path}")
    return GaussianMixtureModel.load(path), path


def _model_features(model) -> Tuple[Optional[List[str]], str]:
    cols = model.getOrDefault(model.inputCols) if model.isDefined(model.inputCols) else None
    return (list(cols) if cols else None), model.getFeaturesCol()


# =========================================================================== reports

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


def model_description(model) -> Dict[str, Any]:
    from spark_gmm.plot import _params, feature_names

    mixture = _params(model)
    full = mixture.full_covariances()
    return {
        "k": model.getK(),
        "covarianceType": model.getCovarianceType(),
        "numFeatures": model.numFeatures,
        "numParameters": model.numParameters,
        "features": feature_names(model),
        "components": [
            {"index": j, "weight": float(mixture.weights[j]), "mean": mixture.means[j],
             "covariance": full[j]}
            for j in range(mixture.k)
        ],
    }


def _summary_description(model) -> Dict[str, Any]:
    if not model.hasSummary:
        return {}
    s = model.summary
    return {
        "numIter": s.numIter,
        "converged": s.converged,
        "logLikelihood": s.logLikelihood,
        "meanLogLikelihood": s.logLikelihood / s.totalWeight if s.totalWeight else None,
        "bic": s.bic,
        "aic": s.aic,
        "numRows": s.numRows,
        "numSkippedRows": s.numSkippedRows,
        "clusterSizes": s.clusterSizes,
        "logLikelihoodHistory": s.logLikelihoodHistory,
    }


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "feature"


def make_plots(model, X: Optional[np.ndarray], labels: Optional[np.ndarray], *,
               plot_features: Sequence[str] = (), max_histograms: int = 4,
               table=None, with_history: bool = True) -> Tuple[List[Tuple[str, str, bytes]], str]:
    """([(file name, caption, PNG bytes)], status) for a report; never raises for a missing
    matplotlib (the status says the plots were skipped)."""
    try:
        import matplotlib

        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
    except ImportError:
        from spark_gmm.plot import MATPLOTLIB_MISSING

        return [], f"skipped: {MATPLOTLIB_MISSING}"
    from spark_gmm import plot

    out: List[Tuple[str, str, bytes]] = []
    names = plot.feature_names(model)
    if table is not None and len(table):
        ax = plot.plot_criteria(table)
        out.append(("criteria.png", "BIC and AIC by k and covariance type",
                    plot.save_figure(ax)))
    if with_history and model.hasSummary and model.summary.logLikelihoodHistory:
        ax = plot.plot_log_likelihood(model.summary)
        out.append(("log_likelihood.png", "mean log-likelihood per EM iteration",
                    plot.save_figure(ax)))
    if X is not None and len(X):
        d = X.shape[1]
        if d >= 2:
            pair = list(plot_features) if plot_features else [0, 1]
            ax = plot.plot_clusters_2d(model, X, features=pair, labels=labels)
            i, j = (plot._feature_index(model, f) for f in pair)
            out.append((f"clusters_{_safe_name(names[i])}_{_safe_name(names[j])}.png",
                        f"{names[i]} vs {names[j]}: sampled rows by cluster, 1σ and 2σ "
                        "ellipses", plot.save_figure(ax)))
        for j in range(min(d, max_histograms)):
            ax = plot.plot_density_1d(model, X, feature=j)
            out.append((f"density_{_safe_name(names[j])}.png",
                        f"{names[j]}: histogram, mixture density and each weighted component",
                        plot.save_figure(ax)))
    return out, f"{len(out)} plot(s) written" if out else "no plots (no data sampled)"


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
figcaption {{ font-size: 0.85em; color: #555; max-width: 640px; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
code {{ background: #f5f5f5; padding: 0 0.2em; }}
</style></head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def _html_table(rows: Sequence[Sequence[Any]], header: Optional[Sequence[str]] = None) -> str:
    parts = ["<table>"]
    if header:
        parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) +
                     "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) +
                     "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "" if value is None else str(value)


def html_report(title: str, summary_rows: Sequence[Tuple[str, Any]], model_info: Dict[str, Any],
                plots: Sequence[Tuple[str, str, bytes]], plot_status: str,
                table=None) -> str:
    body = ["<h2>Summary</h2>", _html_table(summary_rows)]
    if table is not None and len(table):
        body += ["<h2>Model selection</h2>",
                 _html_table(table.values.tolist(), list(table.columns))]
    comps = model_info.get("components", [])
    if comps:
        sizes = model_info.get("clusterSizes") or [None] * len(comps)
        body += [
            "<h2>Components</h2>",
            _html_table(
                [(c["index"], c["weight"], size, np.asarray(c["mean"]).tolist(),
                  np.sqrt(np.diag(np.asarray(c["covariance"]))).tolist())
                 for c, size in zip(comps, sizes)],
                ["component", "weight", "rows (most probable)",
                 "mean (" + ", ".join(map(str, model_info.get("features", []))) + ")",
                 "standard deviations"],
            ),
        ]
    body.append("<h2>Plots</h2>")
    if plots:
        for name, caption, png in plots:
            data = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
                        f'{data}"><figcaption>{html.escape(caption)} '
                        f"(<code>{html.escape(name)}</code>)</figcaption></figure>")
    else:
        body.append(f"<p>Plots {html.escape(plot_status, quote=False)}.</p>")
    return _HTML.format(title=html.escape(title), body="\n".join(body))


def _write_report(job: Job, report: Dict[str, Any], model, X, labels, *, table=None,
                  with_history=True) -> None:
    """report/report.json, report/*.png, report/report.html."""
    cfg = job.cfg
    plots: List[Tuple[str, str, bytes]] = []
    if cfg.get("report.plots"):
        job.describe("drawing the report's plots")
        with job.timed("plots"):
            plots, status = make_plots(
                model, X, labels, plot_features=cfg.get("report.plot_features") or (),
                max_histograms=int(cfg.get("report.max_histograms", 4)), table=table,
                with_history=with_history,
            )
    else:
        status = "disabled (report.plots = false)"
    if status.startswith("skipped"):
        log.warning("plots %s", status)
    for name, _, png in plots:
        job.fs.write_bytes(job.out("report", name), png)
    report["plots"] = {"status": status, "files": [f"report/{name}" for name, _, _ in plots]}
    report["seconds"] = dict(job.timings, total=time.time() - job.started)
    job.write_json("report/report.json", report)
    info = dict(report.get("model", {}))
    info["clusterSizes"] = report.get("fit", {}).get("clusterSizes")
    fit = report.get("fit", {})
    rows = [
        ("input", report.get("input", {}).get("source")),
        ("rows", report.get("input", {}).get("rows")),
        ("skipped rows", report.get("input", {}).get("skippedRows")),
        ("features", info.get("features")),
        ("k", info.get("k")),
        ("covariance type", info.get("covarianceType")),
        ("EM iterations", fit.get("numIter")),
        ("converged", fit.get("converged")),
        ("mean log-likelihood", fit.get("meanLogLikelihood")),
        ("BIC", fit.get("bic")),
        ("AIC", fit.get("aic")),
        ("1% quantile of log p(x)", _quantile(report.get("trainingScores"), 0.01)),
        ("model", report.get("outputs", {}).get("model")),
        ("predictions", report.get("outputs", {}).get("predictions")),
        ("Spark", f"{report.get('spark', {}).get('version')} "
                  f"({report.get('spark', {}).get('master')})"),
        ("seconds", f"{report['seconds']['total']:.1f}"),
    ]
    rows = [r for r in rows if r[1] is not None]
    title = f"spark_gmm {job.spec.name} report"
    job.write_text("report/report.html",
                   html_report(title, rows, info, plots, status, table=table))
    log.info("report: %s (%s)", job.out("report", "report.html"), status)


def _quantile(scores: Optional[Dict[str, Any]], q: float) -> Optional[float]:
    if not scores:
        return None
    return quantile_threshold(scores, q)[0]


def _spark_info(job: Job) -> Dict[str, Any]:
    import spark_gmm

    sc = job.spark.sparkContext
    return {"version": job.spark.version, "master": sc.master, "mode": job.mode,
            "applicationId": sc.applicationId, "spark_gmm": spark_gmm.__version__,
            "spark_gmm_path": os.path.dirname(os.path.abspath(spark_gmm.__file__)),
            "python": sys.version.split()[0], "executors": _executor_environment(job)}


def _probe_python(_rows):
    """Runs in the executors' Python workers: which Python and which spark_gmm they use."""
    import socket

    import spark_gmm

    yield {"host": socket.gethostname(), "python": sys.version.split()[0],
           "executable": sys.executable, "spark_gmm": spark_gmm.__version__,
           "spark_gmm_path": os.path.dirname(os.path.abspath(spark_gmm.__file__)),
           "blasThreads": {var: os.environ.get(var) for var in BLAS_THREAD_VARS}}


def _executor_environment(job: Job) -> List[Dict[str, Any]]:
    """The distinct Python environments of the executors (version skew between the driver's
    spark_gmm and the one shipped to the executors shows here)."""
    try:
        job.describe("checking the executors' Python environment")
        sc = job.spark.sparkContext
        n = max(2, sc.defaultParallelism)
        rows = sc.parallelize(range(n), n).mapPartitions(_probe_python).collect()
    except Exception as exc:  # noqa: BLE001 - informational only
        return [{"error": _spark_error_line(exc)}]
    return [json.loads(r) for r in sorted({json.dumps(r, sort_keys=True) for r in rows})]


def _plot_sample(job: Job, df, model, prediction_col: Optional[str], total_rows: Optional[int],
                 seed: int):
    """A bounded sample of (features, cluster) for the plots, drawn on Spark."""
    if not job.cfg.get("report.plots"):
        return None, None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None, None  # the report says the plots were skipped
    from spark_gmm import plot

    job.describe(f"sampling up to {job.cfg['report.sample_size']:,} rows for the plots")
    with job.timed("plot_sample"):
        return plot.sample_features(df, model, n=int(job.cfg["report.sample_size"]), seed=seed,
                                    prediction_col=prediction_col, total_rows=total_rows)


# =========================================================================== fit

def _start_on_input(job: Job, outputs):
    """Checks the input and output settings, starts Spark, prepares the output folder (and
    the demo data) and reads the input: (df, description, demo, inputCols, featuresCol)."""
    cfg = job.cfg
    demo = bool(cfg.get("demo.enabled"))
    if not demo and not (cfg.get("input.path") or cfg.get("input.table")):
        raise JobError("no input: give --input PATH or --table NAME (input.path / "
                       "input.table), or --demo")
    if not cfg.get("output.path"):
        raise JobError("no output folder: give --output PATH (output.path)")
    job.start_spark()
    job.prepare_output(outputs + (("data",) if demo else ()))
    if demo:
        _apply_demo(job)
    with job.timed("read"):
        df, desc = job.read_input()
    input_cols, features_col = check_features(df, desc, cfg.get("input.input_cols"),
                                              cfg.get("input.features_col"))
    return df, desc, demo, input_cols, features_col


FIT_OUTPUTS = ("model", "predictions", "report", TRAINING_SCORES, RESOLVED_CONFIG)


def _run_fit(job: Job) -> None:
    from spark_gmm import GaussianMixture, tracking

    cfg = job.cfg
    tracker = tracking.fit_tracker(cfg)  # None unless --mlflow; fails now if MLflow is missing
    df, desc, demo, input_cols, features_col = _start_on_input(job, FIT_OUTPUTS)
    weight_col = cfg.get("input.weight_col")
    check_numeric(df, desc, weight_col, "weight column")
    pred_col, prob_col, ll_col = (cfg["output.prediction_col"], cfg["output.probability_col"],
                                  cfg["output.log_likelihood_col"])
    _check_new_columns(df, desc, {"--prediction-col": pred_col,
                                  "--probability-col": prob_col,
                                  "--log-likelihood-col": ll_col})
    if len({pred_col, prob_col, ll_col}) < 3:
        raise JobError("prediction_col, probability_col and log_likelihood_col must differ")
    fmt = cfg["output.format"]
    partition_by = cfg.get("output.partition_by") or []
    if cfg.get("output.predictions"):
        from pyspark.sql import functions as F

        probe = df.limit(0).withColumn(pred_col, F.lit(0)).withColumn(ll_col, F.lit(0.0)) \
            .withColumn(prob_col, F.array(F.lit(0.0)))
        _check_partition_by(probe, partition_by)

    params = dict(
        k=int(cfg["model.k"]), covarianceType=cfg["model.covariance_type"],
        maxIter=int(cfg["model.max_iter"]), tol=float(cfg["model.tol"]),
        seed=int(cfg["model.seed"]), regCovar=float(cfg["model.reg_covar"]),
        initMode=cfg["model.init_mode"], handleInvalid=cfg["input.handle_invalid"],
        predictionCol=pred_col, probabilityCol=prob_col, logLikelihoodCol=ll_col,
        featuresCol=features_col,
    )
    if input_cols:
        params["inputCols"] = input_cols
    if weight_col:
        params["weightCol"] = weight_col
    gm = GaussianMixture(**params)
    if cfg.get("model.initial_model"):
        initial, _ = load_model(job, cfg["model.initial_model"])
        gm.setInitialModel(initial)

    what = f"columns {', '.join(input_cols)}" if input_cols else f"vector column '{features_col}'"
    job.describe(f"fitting k={params['k']} {params['covarianceType']} on {what} of {desc}")
    with job.timed("fit"):
        model = gm.fit(df)
    s = model.summary
    log.info("fitted: %d rows (%d skipped), %d iterations, %s, mean log-likelihood %.6g, "
             "BIC %.6g", s.numRows, s.numSkippedRows, s.numIter,
             "converged" if s.converged else "NOT converged (raise max_iter?)",
             s.logLikelihood / s.totalWeight, s.bic)

    model_path = job.out("model")
    job.describe(f"saving the model to {model_path}")
    with job.timed("save_model"):
        writer = model.write()
        if cfg.get("output.overwrite"):
            writer = writer.overwrite()
        writer.save(model_path)

    scored_source, pred_path = _write_predictions(job, model, df, desc, fmt, partition_by)

    job.describe("computing the training log-likelihood quantiles")
    with job.timed("training_scores"):
        scores = score_statistics(scored_source, ll_col)
    scores["model"] = model_path
    job.write_json(TRAINING_SCORES, scores)

    X, labels = _plot_sample(job, scored_source, model, pred_col, s.numRows,
                             params["seed"])
    report = {
        "job": "fit",
        "spark": _spark_info(job),
        "input": {"source": desc, "rows": s.numRows + s.numSkippedRows,
                  "skippedRows": s.numSkippedRows, "inputCols": input_cols,
                  "featuresCol": None if input_cols else features_col,
                  "weightCol": weight_col, "demo": demo},
        "model": model_description(model),
        "fit": dict(_summary_description(model), maxIter=params["maxIter"], tol=params["tol"],
                    seed=params["seed"], initMode=params["initMode"]),
        "trainingScores": {k: v for k, v in scores.items() if k != "model"},
        "outputs": {"folder": job.output, "model": model_path, "predictions": pred_path,
                    "trainingScores": job.out(TRAINING_SCORES),
                    "config": job.out(RESOLVED_CONFIG)},
    }
    _write_report(job, report, model, X, labels)
    job.write_resolved_config()
    if tracker is not None:
        with job.timed("mlflow"):
            tracker.log_fit(model, params, artifacts=[job.out("report"), job.out(RESOLVED_CONFIG)],
                            extra_params={"input": desc, "spark_version": job.spark.version})
    log.info("done in %.1f s: %s", time.time() - job.started, job.output)


def _write_predictions(job: Job, model, df, desc: str, fmt: str, partition_by):
    """Writes the predictions (if asked) and returns (a DataFrame with the scores for the
    statistics, the predictions path or None)."""
    cfg = job.cfg
    k = model.getK()
    prob_col = cfg["output.probability_col"]
    if not cfg.get("output.predictions"):
        return model.transform(df), None
    path = job.out("predictions")
    job.describe(f"writing the predictions ({fmt}) to {path}")
    with job.timed("predictions"):
        out = _for_format(model.transform(df), fmt, prob_col, k)
        _write_frame(job, out, path, fmt, partition_by, int(cfg.get("output.num_files") or 0))
    if fmt in ("parquet", "orc"):  # columnar: reading back the scores is cheaper than rescoring
        return job.spark.read.format(fmt).load(path), path
    return model.transform(df), path


# =========================================================================== score

SCORE_OUTPUTS = ("predictions", "summary.json", RESOLVED_CONFIG)


def _run_score(job: Job) -> None:
    from pyspark.sql import functions as F

    from spark_gmm.data import prepare, resolve_features

    cfg = job.cfg
    if not cfg.get("model.path"):
        raise JobError("no model: give --model PATH (model.path)")
    if not (cfg.get("input.path") or cfg.get("input.table")):
        raise JobError("no input: give --input PATH or --table NAME (input.path / input.table)")
    if not cfg.get("output.path"):
        raise JobError("no output folder: give --output PATH (output.path)")
    job.start_spark()
    job.prepare_output(SCORE_OUTPUTS)
    model, model_path = load_model(job, cfg["model.path"])
    d = model.numFeatures

    threshold, threshold_info = None, None
    if cfg.get("anomaly.threshold") is not None:
        threshold = float(cfg["anomaly.threshold"])
        threshold_info = {"threshold": threshold, "source": "absolute (anomaly.threshold)"}
    elif cfg.get("anomaly.threshold_quantile") is not None:
        q = float(cfg["anomaly.threshold_quantile"])
        scores_path = cfg.get("anomaly.training_scores") or job.fs.join(
            model_path.rstrip("/").rsplit("/", 1)[0] if "/" in model_path.rstrip("/") else ".",
            TRAINING_SCORES)
        scores = _read_training_scores(job, scores_path)
        threshold, interpolated = quantile_threshold(scores, q)
        threshold_info = {"threshold": threshold, "quantile": q, "trainingScores": scores_path,
                          "interpolated": interpolated,
                          "source": f"quantile {q:g} of the training log-likelihoods"}
        log.info("anomaly threshold: log-likelihood < %.6g (%s quantile of the training "
                 "scores%s)", threshold, f"{q:g}", ", interpolated" if interpolated else "")

    with job.timed("read"):
        df, desc = job.read_input()
    model_cols, model_features_col = _model_features(model)
    if cfg.get("input.input_cols") or cfg.get("input.features_col"):
        input_cols, features_col = check_features(df, desc, cfg.get("input.input_cols"),
                                                  cfg.get("input.features_col"))
    else:
        input_cols, features_col = check_features(df, desc, model_cols, model_features_col)
    if input_cols and len(input_cols) != d:
        raise JobError(f"the model expects {d} features but input_cols lists {len(input_cols)} "
                       f"({', '.join(input_cols)})")
    pred_col, prob_col, ll_col = (cfg["output.prediction_col"], cfg["output.probability_col"],
                                  cfg["output.log_likelihood_col"])
    anomaly_col = cfg["anomaly.column"] if threshold is not None else None
    _check_new_columns(df, desc, {"--prediction-col": pred_col,
                                  "--probability-col": prob_col,
                                  "--log-likelihood-col": ll_col,
                                  "--anomaly-column": anomaly_col})
    if len({pred_col, prob_col, ll_col, anomaly_col or ""}) < 4:
        raise JobError("the output column names must differ")

    model.setFeaturesCol(features_col)
    if input_cols:
        model.setInputCols(input_cols)
    else:
        model.clear(model.inputCols)
    model.setPredictionCol(pred_col).setProbabilityCol(prob_col).setLogLikelihoodCol(ll_col)
    model.setHandleInvalid(cfg["input.handle_invalid"])

    # One validation pass: clear errors for NaNs, nulls and vectors of the wrong size here,
    # instead of a failed Spark task later.
    job.describe(f"checking the features of {desc}")
    with job.timed("validate"):
        source = resolve_features(df, features_col, input_cols)
        _, report = prepare(df, source, None, cfg["input.handle_invalid"], expected_features=d)
    if report.n_skipped:
        log.warning("skipping %d of %d rows with null, NaN or infinite features",
                    report.n_skipped, report.n_input_rows)

    scored = model.transform(df)
    if anomaly_col:
        scored = scored.withColumn(anomaly_col, F.col(_q(ll_col)) < F.lit(threshold))
    fmt = cfg["output.format"]
    partition_by = cfg.get("output.partition_by") or []
    _check_partition_by(scored, partition_by)
    path = job.out("predictions")
    job.describe(f"scoring {desc} and writing the predictions ({fmt}) to {path}")
    with job.timed("predictions"):
        _write_frame(job, _for_format(scored, fmt, prob_col, model.getK()), path, fmt,
                     partition_by, int(cfg.get("output.num_files") or 0))
    source_df = job.spark.read.format(fmt).load(path) if fmt in ("parquet", "orc") else scored

    job.describe("summarising the scores")
    with job.timed("summary"):
        aggs = [F.count(F.lit(1)).alias("rows"), F.sum(F.col(_q(ll_col))).alias("ll")]
        if anomaly_col:
            aggs.append(F.sum(F.col(_q(anomaly_col)).cast("long")).alias("anomalies"))
        per_cluster = source_df.groupBy(F.col(_q(pred_col)).alias("c")).agg(*aggs).collect()
    counts = [0] * model.getK()
    anomalies = [0] * model.getK()
    total_ll = 0.0
    for row in per_cluster:
        counts[int(row["c"])] = int(row["rows"])
        total_ll += float(row["ll"] or 0.0)
        if anomaly_col:
            anomalies[int(row["c"])] = int(row["anomalies"] or 0)
    n = sum(counts)
    summary = {
        "job": "score",
        "spark": _spark_info(job),
        "model": model_path,
        "input": {"source": desc, "rows": report.n_input_rows, "skippedRows": report.n_skipped,
                  "inputCols": input_cols, "featuresCol": None if input_cols else features_col},
        "rows": n,
        "meanLogLikelihood": total_ll / n if n else None,
        "clusterSizes": counts,
        "anomaly": None if not anomaly_col else dict(
            threshold_info, column=anomaly_col, rows=sum(anomalies),
            fraction=sum(anomalies) / n if n else None, perCluster=anomalies),
        "outputs": {"predictions": path, "config": job.out(RESOLVED_CONFIG)},
        "seconds": dict(job.timings, total=time.time() - job.started),
    }
    job.write_json("summary.json", summary)
    job.write_resolved_config()
    if anomaly_col:
        log.info("scored %d rows: %d anomalies (%.2f%%) below log-likelihood %.6g", n,
                 sum(anomalies), 100.0 * sum(anomalies) / max(n, 1), threshold)
    else:
        log.info("scored %d rows, mean log-likelihood %.6g", n, total_ll / max(n, 1))
    log.info("done in %.1f s: %s", time.time() - job.started, job.output)


def _read_training_scores(job: Job, path: str) -> Dict[str, Any]:
    try:
        exists = job.fs.exists(path)
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"cannot access training scores {path}: {_spark_error_line(exc)}") \
            from None
    if not exists:
        raise JobError(
            f"no training scores at {path} (the fit job writes {TRAINING_SCORES} beside the "
            "model folder); pass --training-scores PATH, or an absolute --threshold"
        )
    try:
        data = json.loads(job.fs.read_bytes(path).decode("utf-8"))
        data["probabilities"], data["values"]  # noqa: B018 - presence check
    except Exception:  # noqa: BLE001
        raise JobError(f"training scores {path} are not a training_scores.json written by the "
                       "fit job") from None
    return data


# =========================================================================== select

SELECT_OUTPUTS = ("model", "report", "selection.csv", "selection.json", TRAINING_SCORES,
                  RESOLVED_CONFIG)


def _run_select(job: Job) -> None:
    from spark_gmm import GaussianMixture
    from spark_gmm.selection import GaussianMixtureSelector

    cfg = job.cfg
    df, desc, demo, input_cols, features_col = _start_on_input(job, SELECT_OUTPUTS)
    params: Dict[str, Any] = dict(
        kValues=list(cfg["selection.k_values"]),
        covarianceTypes=list(cfg["selection.covariance_types"]),
        criterion=cfg["selection.criterion"],
    )
    estimator = GaussianMixture(
        seed=int(cfg["selection.seed"]), maxIter=int(cfg["selection.max_iter"]),
        tol=float(cfg["selection.tol"]), regCovar=float(cfg["selection.reg_covar"]),
        handleInvalid=cfg["input.handle_invalid"],
    )
    if input_cols:
        estimator.setInputCols(input_cols)
    else:
        estimator.setFeaturesCol(features_col)
    selector = GaussianMixtureSelector(estimator=estimator, **params)
    job.describe(f"selecting among k in {params['kValues']} x {params['covarianceTypes']} "
                 f"by {params['criterion'].upper()} on {desc}")
    with job.timed("select"):
        result = selector.fit(df)
    table = result.table
    best = result.bestModel
    log.info("best: k=%d %s", best.getK(), best.getCovarianceType())

    best.setFeaturesCol(features_col)
    if input_cols:
        best.setInputCols(input_cols)
    best.setPredictionCol("prediction").setProbabilityCol("probability")
    best.setLogLikelihoodCol("logLikelihood")
    job.write_text("selection.csv", table.to_csv(index=False))
    job.write_json("selection.json", table.to_dict(orient="records"))
    model_path = job.out("model")
    job.describe(f"saving the best model to {model_path}")
    with job.timed("save_model"):
        writer = best.write()
        if cfg.get("output.overwrite"):
            writer = writer.overwrite()
        writer.save(model_path)
    job.describe("computing the training log-likelihood quantiles of the best model")
    with job.timed("training_scores"):
        scored = best.transform(df)
        scores = score_statistics(scored, "logLikelihood")
    scores["model"] = model_path
    job.write_json(TRAINING_SCORES, scores)

    X, labels = _plot_sample(job, df, best, None, scores["rows"], estimator.getSeed())
    report = {
        "job": "select",
        "spark": _spark_info(job),
        "input": {"source": desc, "rows": scores["rows"], "inputCols": input_cols,
                  "featuresCol": None if input_cols else features_col, "demo": demo},
        "criterion": params["criterion"],
        "table": table.to_dict(orient="records"),
        "best": {"k": best.getK(), "covarianceType": best.getCovarianceType()},
        "model": model_description(best),
        "fit": _summary_description(best),
        "trainingScores": {k: v for k, v in scores.items() if k != "model"},
        "outputs": {"folder": job.output, "model": model_path,
                    "table": job.out("selection.csv"), "config": job.out(RESOLVED_CONFIG)},
    }
    _write_report(job, report, best, X, labels, table=table)
    job.write_resolved_config()
    log.info("done in %.1f s: %s", time.time() - job.started, job.output)


# =========================================================================== sample

SAMPLE_OUTPUTS = ("samples", "summary.json", RESOLVED_CONFIG)


def _run_sample(job: Job) -> None:
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    cfg = job.cfg
    if not cfg.get("model.path"):
        raise JobError("no model: give --model PATH (model.path)")
    if not cfg.get("output.path"):
        raise JobError("no output folder: give --output PATH (output.path)")
    job.start_spark()
    job.prepare_output(SAMPLE_OUTPUTS)
    model, model_path = load_model(job, cfg["model.path"])
    n, seed = int(cfg["sample.n"]), int(cfg["sample.seed"])
    fmt = cfg["output.format"]
    job.describe(f"drawing {n:,} rows from the model")
    df = model.sample(n, seed)
    input_cols, _ = _model_features(model)
    if cfg.get("output.expand") and input_cols:
        arr = vector_to_array(F.col(model.getFeaturesCol()))
        df = df.select(*[arr[j].alias(c) for j, c in enumerate(input_cols)], "component")
    path = job.out("samples")
    job.describe(f"writing {n:,} sampled rows ({fmt}) to {path}")
    with job.timed("write"):
        _write_frame(job, _for_format(df, fmt, None, model.getK()), path, fmt, (),
                     int(cfg.get("output.num_files") or 0))
    back = job.spark.read.format(fmt).load(path) if fmt in ("parquet", "orc") else df
    counts_rows = back.groupBy("component").count().collect()
    counts = [0] * model.getK()
    for row in counts_rows:
        counts[int(row["component"])] = int(row["count"])
    summary = {
        "job": "sample",
        "spark": _spark_info(job),
        "model": model_path,
        "rows": sum(counts),
        "seed": seed,
        "componentCounts": counts,
        "columns": back.columns,
        "outputs": {"samples": path, "config": job.out(RESOLVED_CONFIG)},
        "seconds": dict(job.timings, total=time.time() - job.started),
    }
    job.write_json("summary.json", summary)
    job.write_resolved_config()
    log.info("done in %.1f s: %d rows in %s", time.time() - job.started, sum(counts), path)


if __name__ == "__main__":  # python -m spark_gmm.cli JOB ...
    sys.exit(main())
