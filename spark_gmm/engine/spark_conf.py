"""Spark settings as the engines read them: from the session's runtime or static
configuration, on classic sessions and Spark Connect alike."""

from __future__ import annotations

import re
from typing import Optional


def conf_value(spark, key: str) -> Optional[str]:
    """A Spark setting of the session (runtime or static), None when unset or unreadable."""
    try:
        value = spark.conf.get(key, None)
    except Exception:
        value = None
    if value is None:
        try:  # the context's own configuration (getConf() would copy all of it first)
            value = spark.sparkContext._conf.get(key, None)
        except Exception:  # Spark Connect
            value = None
    return value


def conf_true(spark, key: str) -> bool:
    """Whether a boolean Spark setting is "true"."""
    return (conf_value(spark, key) or "").strip().lower() == "true"


def conf_seconds(spark, key: str, default: float) -> float:
    """A setting in seconds (> 0), ``default`` when unset; a clear error when malformed."""
    value = conf_value(spark, key)
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        raise ValueError(f"{key} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise ValueError(f"{key} must be > 0 seconds, got {value!r}")
    return seconds


_SIZE_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size_bytes(value: str, default_unit: str = "m") -> int:
    """A Spark memory setting ("512m", "2g", "1024": MiB) in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([bkmgt])?(?:i?b)?\s*", value.lower())
    if not match:
        raise ValueError(f"not a memory size: {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2) or default_unit]
