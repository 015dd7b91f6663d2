"""Starting Spark for a job (or joining spark-submit's or a notebook's session), with the
environment and logging a local-mode run needs."""

from __future__ import annotations

import logging
import os
import re
import site
import sys
import tempfile
from typing import Dict, List

from spark_gmm.config import ConfigError, ResolvedConfig
from spark_gmm.jobs.errors import JobError, spark_error_line

log = logging.getLogger("spark_gmm")


BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


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
JOB_SQL_CONF = {"spark.sql.execution.arrow.pythonUDF.columnarInput.enabled": "false"}


def start_session(cfg: ResolvedConfig, temp_files: List[str]):
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
        present = _attach_to_spark_submit(cfg)
        mode = "spark-submit"
    else:
        present = None
        mode = _local_settings(cfg, conf)
    conf.update({k: v for k, v in (cfg.get("spark.conf") or {}).items() if k != "spark.master"})
    _one_blas_thread_per_task(conf, present)
    if not submitted:
        _log_config_file(cfg, conf, temp_files)
    spark = _create_session(cfg, conf)
    spark.sparkContext.setLogLevel(cfg["spark.log_level"])
    if submitted and cfg["spark.log_level"] in ("WARN", "ERROR", "FATAL", "OFF"):
        _quiet_loggers(spark)
    return spark, True, mode


def _attach_to_spark_submit(cfg: ResolvedConfig):
    """The SparkConf spark-submit prepared (read from its JVM, which this attaches to); warns
    about the job's settings that spark-submit's own options override."""
    if cfg.get("spark.master"):
        log.warning("spark.master is ignored under spark-submit (its --master wins)")
    if cfg.get("spark.properties_file"):
        log.warning(
            "spark.properties_file is ignored under spark-submit: pass "
            "--properties-file to spark-submit"
        )
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # attach to spark-submit's JVM to read its conf
    return SparkConf()


def _local_settings(cfg: ResolvedConfig, conf: Dict[str, str]) -> str:
    """Adds to ``conf`` the settings of a session this process starts (the properties file's,
    the master, the Python of the workers), prepares the environment for it, and returns the
    mode: "local", or "client" for a cluster master."""
    conf["spark.ui.showConsoleProgress"] = "false"
    props = (
        read_properties(cfg["spark.properties_file"]) if cfg.get("spark.properties_file") else {}
    )
    # the master: --master / spark.master, else the properties file's, else local[*]
    master = (
        cfg.get("spark.master")
        or (cfg.get("spark.conf") or {}).get("spark.master")
        or props.get("spark.master")
        or "local[*]"
    )
    _local_environment(master)
    if master.startswith("local"):
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    conf.update(props)
    conf["spark.master"] = master
    conf["spark.pyspark.python"] = sys.executable
    conf["spark.pyspark.driver.python"] = sys.executable
    return "local" if master.startswith("local") else "client"


def _one_blas_thread_per_task(conf: Dict[str, str], present) -> None:
    """Sets the executors' BLAS thread variables to 1 unless ``conf`` or the SparkConf already
    ``present`` sets them: tasks already fill the cores."""
    for var in BLAS_THREAD_VARS:
        key = f"spark.executorEnv.{var}"
        if key not in conf and not (present is not None and present.contains(key)):
            conf[key] = "1"


def _log_config_file(cfg: ResolvedConfig, conf: Dict[str, str], temp_files: List[str]) -> None:
    """Writes the log4j2 configuration of the driver to a temporary file (appended to
    ``temp_files``) and points the driver's Java options at it, unless they name one already."""
    level = cfg["spark.log_level"]
    fd, log4j = tempfile.mkstemp(prefix="spark-gmm-log4j2-", suffix=".properties")
    with os.fdopen(fd, "w") as fh:
        quiet = _LOG4J2_QUIET if level in ("WARN", "ERROR", "FATAL", "OFF") else ""
        fh.write(_LOG4J2.format(level=level.lower(), quiet=quiet))
    temp_files.append(log4j)
    java_opts = conf.get("spark.driver.extraJavaOptions", "")
    if "log4j2.configurationFile" not in java_opts:
        conf["spark.driver.extraJavaOptions"] = (
            f"{java_opts} -Dlog4j2.configurationFile=file:{log4j}".strip()
        )


def _create_session(cfg: ResolvedConfig, conf: Dict[str, str]):
    """The session of the job's app name with ``conf`` (a JobError when Spark does not start)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(cfg["spark.app_name"])
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        return builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"Spark did not start: {spark_error_line(exc)}") from None


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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
        raise ConfigError(
            f"Spark properties file {path} cannot be read: {exc.strerror or exc}"
        ) from None
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
