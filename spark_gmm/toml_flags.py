"""Options declared once, read from TOML files and command-line flags and written back as TOML:
the general layer under :mod:`spark_gmm.config`, which declares the jobs' settings with it.

An :class:`Option` has a dotted key (``model.k`` is ``k`` in the ``[model]`` table of the file),
a type, a default, a help text and bounds; :class:`JobSpec` groups a job's options. From them
come the TOML reader (unknown keys and wrong types are errors naming the file and key), the
argparse flags, and :class:`ResolvedConfig` with its TOML writer. Nothing here knows a setting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


TYPES = ("str", "int", "float", "bool", "str_list", "int_list", "str_map")


class ConfigError(ValueError):
    """A configuration file or flag that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Option:
    """One setting: its dotted key in the TOML file, its flag, type, default and meaning."""

    key: str
    type: str
    default: Any = None
    help: str = ""
    flag: Optional[str] = None  # derived from the last part of the key when None
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    metavar: Optional[str] = None

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"unknown option type {self.type!r}")

    @property
    def cli_flag(self) -> str:
        """The command-line flag: ``flag`` when given, else ``--`` and the key's last part with
        dashes for underscores."""
        return self.flag or "--" + self.key.split(".")[-1].replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute name argparse stores the flag's value under."""
        return "opt_" + self.key.replace(".", "__")


@dataclass(frozen=True)
class JobSpec:
    """A job's options, the groups of options that exclude each other, and its usage text."""

    name: str
    description: str
    options: Tuple[Option, ...]
    exclusive: Tuple[Tuple[str, ...], ...] = ()
    epilog: str = ""

    def option(self, key: str) -> Option:
        """The option of dotted key ``key`` (a KeyError when the job has none)."""
        for opt in self.options:
            if opt.key == key:
                return opt
        raise KeyError(key)

    @property
    def keys(self) -> List[str]:
        """The dotted keys of the job's options, in declaration order."""
        return [o.key for o in self.options]


# --------------------------------------------------------------------------- values


def _type_name(t: str) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str_list": "a list of strings",
        "int_list": "a list of integers",
        "str_map": "a table of string values",
    }[t]


def coerce(opt: Option, value: Any, where: str) -> Any:
    """A TOML or parsed CLI value checked against the option; ConfigError naming ``where``."""

    def bad(detail: str = ""):
        shown = json.dumps(value) if not isinstance(value, float) else repr(value)
        return ConfigError(
            f"{where}: {opt.key} must be {_type_name(opt.type)}{detail}, got {shown}"
        )

    t = opt.type
    if value is None:
        return None
    if t == "str":
        if not isinstance(value, str):
            raise bad()
        if value == "" and opt.default is None:
            return None  # "" unsets an optional string
        out = value
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        out = value
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        out = float(value)
        if math.isnan(out):
            raise bad()
    elif t == "bool":
        if not isinstance(value, bool):
            raise bad()
        out = value
    elif t == "str_list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise bad()
        out = list(value)
    elif t == "int_list":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise bad(" (at least one)")
        out = list(value)
    else:  # str_map
        if not isinstance(value, dict):
            raise bad()
        out = {}
        for k, v in value.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, (int, float)):
                v = str(v)
            if not isinstance(v, str):
                raise bad()
            out[str(k)] = v
    _check_range(opt, out, where)
    return out


def _check_range(opt: Option, value: Any, where: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if opt.choices and isinstance(v, str) and v not in opt.choices:
            raise ConfigError(
                f"{where}: {opt.key} must be one of {', '.join(opt.choices)}, got {v!r}"
            )
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if opt.minimum is not None and v < opt.minimum:
                raise ConfigError(f"{where}: {opt.key} must be >= {opt.minimum:g}, got {v:g}")
            if opt.maximum is not None and v > opt.maximum:
                raise ConfigError(f"{where}: {opt.key} must be <= {opt.maximum:g}, got {v:g}")


def parse_cli_value(opt: Option, text: str) -> Any:
    """A flag's text -> a value of the option's type (lists are comma-separated)."""
    where = f"{opt.cli_flag}"
    t = opt.type
    try:
        if t == "str":
            return text
        if t == "int":
            return int(text)
        if t == "float":
            return float(text)
        if t == "str_list":
            return [p.strip() for p in text.split(",") if p.strip()]
        if t == "int_list":
            out: List[int] = []
            for part in text.split(","):
                part = part.strip()
                if not part:
                    continue
                if "-" in part[1:]:
                    lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                    lo_i, hi_i = int(lo), int(hi)
                    if hi_i < lo_i:
                        raise ValueError
                    out.extend(range(lo_i, hi_i + 1))
                else:
                    out.append(int(part))
            return out
    except ValueError:
        raise ConfigError(f"{where}: expected {_type_name(t)}, got {text!r}") from None
    raise AssertionError(t)  # bool and str_map flags are parsed by argparse actions


# --------------------------------------------------------------------------- files


def load_toml(path: str) -> Dict[str, Any]:
    """A TOML file as a dict; ConfigError with the file name and the parser's position."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None


def flatten(spec: JobSpec, data: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Nested TOML tables -> {dotted key: value}; unknown keys are errors (typos must not pass
    silently)."""
    known = {o.key: o for o in spec.options}
    out: Dict[str, Any] = {}

    def walk(node: Dict[str, Any], prefix: str) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if key in known:
                out[key] = coerce(known[key], value, where)
            elif isinstance(value, dict) and any(k.startswith(key + ".") for k in known):
                walk(value, key + ".")
            else:
                hint = _close_keys(key, known)
                raise ConfigError(
                    f"{where}: unknown setting '{key}' for the {spec.name} job"
                    + (f" (did you mean {hint}?)" if hint else "")
                )

    walk(data, "")
    return out


def _close_keys(key: str, known: Iterable[str]) -> str:
    import difflib

    matches = difflib.get_close_matches(key, list(known), n=2, cutoff=0.6)
    if not matches:
        last = key.split(".")[-1]
        matches = [k for k in known if k.split(".")[-1] == last][:2]
    return " or ".join(f"'{m}'" for m in matches)


# --------------------------------------------------------------------------- command line


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit code 2), like the jobs' errors."""

    def error(self, message: str):  # noqa: D401 - argparse API
        """Exits with status 2 and the one line ``<prog>: error: <message> (see --help)``."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _KeyValue(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if "=" not in values:
            parser.error(f"{option_string} expects KEY=VALUE, got {values!r}")
        k, v = values.split("=", 1)
        current = dict(getattr(namespace, self.dest) or {})
        current[k.strip()] = v
        setattr(namespace, self.dest, current)


def build_parser(spec: JobSpec, prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The job's argument parser: ``--config``, ``--print-config``, ``--traceback`` and one
    flag per option (each defaulting to None, so that unset flags can be told apart)."""
    parser = _OneLineParser(
        prog=prog or f"spark-gmm {spec.name}",
        description=spec.description
        + " Settings come from the built-in defaults, then --config FILE, then the flags.",
        epilog=spec.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="A TOML file of settings (conf/*.toml).")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="Print the resolved configuration as TOML and exit.",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="On error, print the Python traceback too."
    )
    for opt in spec.options:
        kwargs: Dict[str, Any] = {"dest": opt.dest, "default": None}
        help_text = opt.help.replace("%", "%%") + f" [{opt.key}]"
        if opt.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif opt.type == "str_map":
            kwargs["action"] = _KeyValue
            kwargs["metavar"] = opt.metavar or "KEY=VALUE"
            help_text += " (repeatable)"
        else:
            kwargs["metavar"] = opt.metavar or opt.key.split(".")[-1].upper()
            if opt.choices and opt.type == "str":
                kwargs["metavar"] = "{" + ",".join(opt.choices) + "}"
        parser.add_argument(opt.cli_flag, help=help_text, **kwargs)
    return parser


@dataclass
class ResolvedConfig:
    """The settings of one run: ``values`` by dotted key, and where each came from."""

    spec: JobSpec
    values: Dict[str, Any]
    sources: Dict[str, str] = field(default_factory=dict)
    config_file: Optional[str] = None
    print_config: bool = False
    traceback: bool = False

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is unset (None)."""
        value = self.values.get(key)
        return default if value is None else value

    def nested(self) -> Dict[str, Any]:
        """The set values as nested tables by the parts of their dotted keys (unset ones
        left out)."""
        out: Dict[str, Any] = {}
        for key, value in self.values.items():
            if value is None:
                continue
            node = out
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        return out

    def to_toml(self, header: Sequence[str] = ()) -> str:
        """The set values as TOML text, after the ``header`` lines as comments."""
        lines = [f"# {h}" if h else "#" for h in header]
        if lines:
            lines.append("")
        return "\n".join(lines) + dump_toml(self.nested(), maps=_map_keys(self.spec))


def _map_keys(spec: JobSpec) -> set:
    return {o.key for o in spec.options if o.type == "str_map"}


# --------------------------------------------------------------------------- TOML writing


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "_-" for c in key):
        return key
    return json.dumps(key)


def toml_value(value: Any) -> str:
    """``value`` (a bool, number, string, list or dict) written as a TOML value; a TypeError
    for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".eEn") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(data: Dict[str, Any], maps: Iterable[str] = ()) -> str:
    """A nested dict -> TOML text: top-level keys first, then one [table] per section;
    dotted keys named in ``maps`` are written as inline tables."""
    maps = set(maps)
    lines: List[str] = []

    def is_table(key: str, value: Any) -> bool:
        return isinstance(value, dict) and key not in maps

    def emit(node: Dict[str, Any], prefix: str) -> None:
        scalars = [(k, v) for k, v in node.items() if not is_table(prefix + k, v)]
        tables = [(k, v) for k, v in node.items() if is_table(prefix + k, v)]
        if prefix and scalars:
            lines.append(f"[{'.'.join(_toml_key(p) for p in prefix[:-1].split('.'))}]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {toml_value(v)}")
        if scalars:
            lines.append("")
        for k, v in tables:
            emit(v, prefix + k + ".")

    emit(data, "")
    return "\n".join(lines).rstrip() + "\n"
