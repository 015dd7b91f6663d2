"""A class-data-sharing (CDS) archive of the classes a Spark application loads, for the JVMs
the test-suite starts.

A new Spark JVM loads and verifies thousands of classes from the jars before it does anything:
each job, script, Connect server and cluster daemon of the suite paid that again. Java 13+
can write the classes a JVM loaded into an archive when it exits
(``-XX:ArchiveClassesAtExit``); later JVMs with the same class path map it instead
(``-XX:SharedArchiveFile``). Made once per machine (about a minute, by
``tests/scripts/class_archive_app.py``, in the background while the first tests run: JVMs
started before it is ready start without it) and kept in the temporary folder under a name
that depends on the Java runtime and the PySpark installation. A JVM whose class path differs (the
spark-submit launcher, a private SPARK_HOME, another PySpark) ignores it, silently
(``-Xlog:cds=off``). Measured on the 2-core machine (CPU-seconds busy from /proc/stat,
runs alternating without and with): ``jobs/fit.py --demo`` 21-22 s and 27-39 CPU-seconds
without, 16-18 s and 22-24 CPU-seconds with; ``pytest tests/test_jobs.py -k bad_input -n 0``
(``SPARK_GMM_TEST_CLASS_ARCHIVE=0`` / unset) 67-73 s and 77-82 CPU-seconds without, 50-55 s
and 55-58 CPU-seconds with.

Without Java 13+, or when the archive cannot be made, the suite runs without it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

TESTS_DIR = Path(__file__).resolve().parent
APP = TESTS_DIR / "scripts" / "class_archive_app.py"
MAKE_TIMEOUT = 300.0
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # a JVM that cannot use it says nothing


def _java() -> Optional[str]:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(java) if java and os.path.exists(java) else None


def _java_version(java: str) -> Optional[str]:
    try:
        proc = subprocess.run(
            [java, "-version"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "JDK_JAVA_OPTIONS": ""},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in proc.stderr.splitlines() if "version" in line]
    return lines[0] if proc.returncode == 0 and lines else None


def _feature_release(version_line: str) -> int:
    number = version_line.split('"')[1] if '"' in version_line else "0"
    first = number.split(".")[0]
    return int(first) if first.isdigit() and first != "1" else 8


@functools.lru_cache(maxsize=None)
def archive_path() -> Optional[Path]:
    """Where this Java runtime and PySpark installation's archive lives (made or not), or None
    where Java cannot write one (no java, Java < 13) or SPARK_GMM_TEST_CLASS_ARCHIVE=0."""
    import pyspark

    if os.environ.get("SPARK_GMM_TEST_CLASS_ARCHIVE", "1") == "0":
        return None
    java = _java()
    version = _java_version(java) if java else None
    if not version or _feature_release(version) < 13:
        return None
    spark_home = Path(pyspark.__file__).resolve().parent
    jars = sorted((spark_home / "jars").glob("*.jar"))
    # a dynamic archive only maps on top of the JDK's own (base) archive it was made with: a
    # JDK update or `java -Xshare:dump` rewrites that one, and the JVMs would ignore ours
    base = sorted(Path(java).resolve().parent.parent.glob("lib/server/*.jsa"))
    key = hashlib.sha256(
        "\n".join(
            [
                java,
                version,
                str(spark_home),
                pyspark.__version__,
                sys.executable,
                *[f"{j.name} {j.stat().st_size} {j.stat().st_mtime_ns}" for j in jars + base],
            ]
        ).encode()
    ).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "spark_gmm-test-cds" / f"spark-{key}.jsa"


def start_making(env: dict) -> None:
    """Starts making the archive in a process of its own, unless it exists: JVMs started before
    it is ready run without it. The maker outlives a short test run, so the next run finds it;
    a second maker started meanwhile leaves at once."""
    path = archive_path()
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env)
    env.pop("JDK_JAVA_OPTIONS", None)
    with open(path.with_suffix(".log"), "w") as log:
        subprocess.Popen(
            [sys.executable, __file__, "make"],
            env=env,
            cwd=str(TESTS_DIR.parent),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _make() -> int:
    path = archive_path()
    if path is None:
        return 0
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another maker is at work
            return 0
        if path.exists():
            return 0
        partial = path.with_suffix(f".{os.getpid()}.partial")
        try:
            proc = subprocess.run(
                [sys.executable, str(APP), str(partial)],
                timeout=MAKE_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            if proc.returncode == 0 and partial.exists() and partial.stat().st_size > 0:
                os.replace(partial, path)
                return 0
            print(f"no class archive: the application ended with exit {proc.returncode}")
            return 1
        finally:
            partial.unlink(missing_ok=True)


def jvm_options() -> str:
    """Java options that map the archive, if it is ready (else empty)."""
    path = archive_path()
    return f"-XX:SharedArchiveFile={path} {QUIET}" if path and path.exists() else ""


if __name__ == "__main__" and sys.argv[1:] == ["make"]:
    sys.exit(_make())
