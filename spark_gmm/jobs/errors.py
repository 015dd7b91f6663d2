"""How a job fails: :class:`JobError`, the exit codes, and the one-line message of any exception."""

from __future__ import annotations

import re
from typing import Tuple

from spark_gmm.config import ConfigError

EXIT_CONFIG = 2
EXIT_FAILED = 1


class JobError(Exception):
    """A problem the user can fix (input, output, model path); the message is the one line."""


def one_line(text: str, limit: int = 600) -> str:
    """The first non-blank line of ``text``, stripped and cut to ``limit`` characters (with
    "..." when cut); "unknown error" when there is none."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a problem the user can fix (bad config, input, output or model),
    reported by its message alone rather than as a Spark or Python error."""
    from spark_gmm import CovarianceError, InvalidInputError, ModelFileError

    return isinstance(
        exc,
        (
            JobError,
            ConfigError,
            InvalidInputError,
            ModelFileError,
            CovarianceError,
            FileExistsError,
        ),
    )


def describe_error(exc: BaseException) -> Tuple[str, int]:
    """(one-line message, exit code) for any exception a job can raise."""
    if isinstance(exc, ConfigError):
        return one_line(str(exc)), EXIT_CONFIG
    if is_expected(exc):
        return one_line(str(exc)), EXIT_FAILED
    return spark_error_line(exc), EXIT_FAILED


def spark_error_line(exc: BaseException) -> str:
    """The informative line of a Py4J / PySpark / Python exception."""
    text = str(exc)
    name = type(exc).__name__
    if name == "Py4JJavaError" or "\n\tat " in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # the Java exception line ("org.apache.spark.SparkException: ...") says what went wrong
        for line in lines:
            m = re.match(r"^(?::\s*)?(?:Caused by: )?([\w.$]+(?:Exception|Error)): (.*)$", line)
            if m and "py4j" not in m.group(1).lower():
                return f"{m.group(1).rsplit('.', 1)[-1]}: {one_line(m.group(2))}"
        return one_line(lines[1] if len(lines) > 1 else text)
    first = one_line(text) if text.strip() else ""
    if isinstance(exc, (ValueError, TypeError)) and first:
        return first
    if hasattr(exc, "getErrorClass") or type(exc).__module__.startswith("pyspark"):
        return first or name
    return f"{name}: {first}" if first else name


def columns_text(df) -> str:
    """``df``'s column names, comma-separated, for error messages: the first 25 and the
    count when there are more."""
    names = df.columns
    shown = ", ".join(names[:25])
    return shown + (f", ... ({len(names)} columns)" if len(names) > 25 else "")
