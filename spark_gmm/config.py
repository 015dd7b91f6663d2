"""Job configuration: TOML files, command-line flags, and the resolved result.

Every job (fit, score, select, sample) declares its settings once, as a list of
:class:`Option` s. From that one list come

* the TOML file format (``conf/<job>.toml``): each option lives at a dotted key, e.g.
  ``model.k`` is ``k`` in the ``[model]`` table;
* the command-line flags (``--k``), which override the file, which overrides the defaults;
* the resolved configuration written beside the job's outputs (a TOML file that the job
  accepts again with ``--config``);
* the configuration reference in the README (:func:`reference_markdown`).

No pyspark import here: resolving a configuration (``--print-config``) starts nothing.
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

from spark_gmm.kernel import COVARIANCE_TYPES

TYPES = ("str", "int", "float", "bool", "str_list", "int_list", "str_map")
INPUT_FORMATS = ("parquet", "csv", "json", "orc")
OUTPUT_FORMATS = ("parquet", "csv", "json", "orc")


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
        return self.flag or "--" + self.key.split(".")[-1].replace("_", "-")

    @property
    def dest(self) -> str:
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
        for opt in self.options:
            if opt.key == key:
                return opt
        raise KeyError(key)

    @property
    def keys(self) -> List[str]:
        return [o.key for o in self.options]


# --------------------------------------------------------------------------- options

def _input_options(features_help: str, cols_help: str) -> List[Option]:
    return [
        Option("input.path", "str", None,
               "Input files or folder: a local path, hdfs://, s3a://, abfss://... Globs work.",
               flag="--input", metavar="PATH"),
        Option("input.table", "str", None,
               "A catalog table to read instead of a path (e.g. lake.sensor_readings).",
               metavar="NAME"),
        Option("input.format", "str", None,
               "Format of input.path: parquet, csv, json or orc. Default: from the file "
               "extension, else parquet.", choices=INPUT_FORMATS),
        Option("input.options", "str_map", {},
               "Reader options, e.g. { header = \"true\", sep = \";\" } (CSV is read with "
               "header=true and inferSchema=true unless set here).",
               flag="--read-option", metavar="KEY=VALUE"),
        Option("input.input_cols", "str_list", None, cols_help, metavar="COL,COL,..."),
        Option("input.features_col", "str", None, features_help, metavar="COL"),
        Option("input.handle_invalid", "str", "error",
               "Rows with null, NaN or infinite features: 'error' stops the job naming the "
               "column, 'skip' drops them (the report counts them).", choices=("error", "skip")),
    ]


_FEATURES_HELP_FIT = ("A vector or array<double> column holding the features (when "
                      "input_cols is not given; default 'features').")
_COLS_HELP_FIT = "Numeric columns to cluster, e.g. [\"x\", \"y\", \"z\"] (or --input-cols x,y,z)."
_FEATURES_HELP_MODEL = ("A vector or array<double> column holding the features. Default: the "
                        "column(s) the model was trained on.")
_COLS_HELP_MODEL = ("Numeric columns holding the features, in training order. Default: the "
                    "column(s) the model was trained on.")


def _output_options(what: str, predictions: bool) -> List[Option]:
    opts = [
        Option("output.path", "str", None,
               f"Output folder ({what}); the job refuses to write into an existing, non-empty "
               "folder unless output.overwrite.", flag="--output", metavar="PATH"),
        Option("output.overwrite", "bool", False,
               "Replace the job's outputs in an existing output folder (only the entries the "
               "job writes are replaced)."),
    ]
    if predictions:
        opts += [
            Option("output.format", "str", "parquet",
                   "Format of the predictions: parquet, orc, json or csv (csv writes the "
                   "probabilities as columns <probability_col>_0.._k-1 and vector inputs as "
                   "text).", flag="--output-format", choices=OUTPUT_FORMATS),
            Option("output.partition_by", "str_list", [],
                   "Columns to partition the predictions by (folders col=value), e.g. "
                   "[\"prediction\"] or a date column of the input.", metavar="COL,COL,..."),
            Option("output.num_files", "int", 0,
                   "Repartition the predictions to this many write tasks (with partition_by: "
                   "by those columns, so each folder gets few files); 0 keeps Spark's "
                   "partitioning.", minimum=0),
            Option("output.prediction_col", "str", "prediction", "Name of the cluster column."),
            Option("output.probability_col", "str", "probability",
                   "Name of the component-probabilities column (array<double>)."),
            Option("output.log_likelihood_col", "str", "logLikelihood",
                   "Name of the per-row log density column, log p(x)."),
        ]
    return opts


def _model_options(prefix: str = "model") -> List[Option]:
    return [
        Option(f"{prefix}.max_iter", "int", 100, "Maximum number of EM iterations.", minimum=0),
        Option(f"{prefix}.tol", "float", 1e-3,
               "Convergence tolerance on the change of the mean per-row log-likelihood.",
               minimum=0.0),
        Option(f"{prefix}.seed", "int", 42, "Random seed (initialisation)."),
        Option(f"{prefix}.reg_covar", "float", 1e-6,
               "Added to every covariance diagonal so components stay positive definite.",
               minimum=0.0),
    ]


def _report_options() -> List[Option]:
    return [
        Option("report.plots", "bool", True,
               "Draw PNG plots (needs matplotlib: pip install 'spark-gmm[plot]'; without it "
               "the report says the plots were skipped)."),
        Option("report.plot_features", "str_list", [],
               "The pair of features for the scatter plot (column names, or 0-based indices "
               "for a vector column). Default: the first two.", metavar="F1,F2"),
        Option("report.sample_size", "int", 5000,
               "Rows sampled (on Spark, then collected) for the scatter plot and histograms.",
               minimum=10, maximum=1_000_000),
        Option("report.max_histograms", "int", 4,
               "Histograms drawn: one per feature (marginal density and components) for the "
               "first N features.", minimum=0),
    ]


def _demo_options(default_rows: int) -> List[Option]:
    return [
        Option("demo.enabled", "bool", False,
               "Generate a demo data set (Gaussian blobs in 3-D, columns x, y, z) as Parquet "
               "under <output>/data and use it as the input.", flag="--demo"),
        Option("demo.rows", "int", default_rows, "Rows of the demo data set.", minimum=100,
               flag="--demo-rows"),
    ]


def _spark_options(job: str) -> List[Option]:
    return [
        Option("spark.master", "str", None,
               "Master when the job starts Spark itself (python jobs/...): default local[*]. "
               "Ignored under spark-submit, whose --master wins.", metavar="URL"),
        Option("spark.app_name", "str", f"spark-gmm-{job}", "Spark application name."),
        Option("spark.properties_file", "str", None,
               "A Spark properties file (key value per line, as spark-submit "
               "--properties-file reads) applied when the job starts Spark itself, e.g. "
               "conf/spark-local.properties.", flag="--spark-properties", metavar="FILE"),
        Option("spark.conf", "str_map", {},
               "Spark settings, e.g. { \"spark.sql.shuffle.partitions\" = \"64\" }; they win "
               "over the properties file.", flag="--conf", metavar="KEY=VALUE"),
        Option("spark.log_level", "str", "WARN",
               "Spark's own log level on the console.", flag="--spark-log-level",
               choices=("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")),
    ]


def _mlflow_options() -> List[Option]:
    """The fit job's MLflow run (spark_gmm.tracking; needs the 'spark-gmm[mlflow]' extra)."""
    return [
        Option("mlflow.enabled", "bool", False,
               "Record the fit as an MLflow run: model (mlflow.spark), params, metrics, report "
               "(needs pip install 'spark-gmm[mlflow]').", flag="--mlflow"),
        Option("mlflow.tracking_uri", "str", None,
               "MLflow tracking URI, e.g. sqlite:///mlflow.db or http://host:5000. Default: "
               "MLFLOW_TRACKING_URI, else MLflow's default.", flag="--mlflow-tracking-uri",
               metavar="URI"),
        Option("mlflow.experiment", "str", None,
               "MLflow experiment name (created if missing). Default: MLflow's default.",
               flag="--mlflow-experiment", metavar="NAME"),
        Option("mlflow.run_name", "str", None, "MLflow run name. Default: MLflow's.",
               flag="--mlflow-run-name", metavar="NAME"),
    ]


_LOG_LEVEL = Option("log_level", "str", "INFO",
                    "Level of the job's own log (INFO shows one line per EM iteration).",
                    choices=("DEBUG", "INFO", "WARNING", "ERROR"))


FIT = JobSpec(
    "fit",
    "Fit a Gaussian mixture to a table and write the model, the predictions and a report.",
    tuple(
        [_LOG_LEVEL]
        + _input_options(_FEATURES_HELP_FIT, _COLS_HELP_FIT)
        + [Option("input.weight_col", "str", None, "Optional numeric column of row weights.",
                  metavar="COL")]
        + [
            Option("model.k", "int", 3, "Number of components.", minimum=1),
            Option("model.covariance_type", "str", "full",
                   "full, tied, diag or spherical.", choices=COVARIANCE_TYPES),
        ]
        + _model_options()
        + [
            Option("model.init_mode", "str", "kmeans", "Initialisation: kmeans or random.",
                   choices=("kmeans", "random")),
            Option("model.initial_model", "str", None,
                   "A saved model to start EM from (warm start).", metavar="PATH"),
        ]
        + _output_options("model/, predictions/, report/, training_scores.json, "
                          "resolved-config.toml", predictions=True)
        + [Option("output.predictions", "bool", True, "Write the predictions of the input.")]
        + _report_options()
        + _demo_options(20000)
        + _mlflow_options()
        + _spark_options("fit")
    ),
    exclusive=(("input.path", "input.table"), ("input.input_cols", "input.features_col")),
    epilog="example: python jobs/fit.py --demo --output out/demo",
)

SCORE = JobSpec(
    "score",
    "Apply a saved model to new data: predictions, log-likelihood, optional anomaly flag.",
    tuple(
        [_LOG_LEVEL]
        + [Option("model.path", "str", None,
                  "The saved model (the model/ folder of a fit or select output, or that "
                  "output folder itself).", flag="--model", metavar="PATH")]
        + _input_options(_FEATURES_HELP_MODEL, _COLS_HELP_MODEL)
        + [
            Option("anomaly.threshold", "float", None,
                   "Flag rows whose log-likelihood is below this value.", metavar="LOGP"),
            Option("anomaly.threshold_quantile", "float", None,
                   "Flag rows below this quantile of the TRAINING log-likelihoods (e.g. 0.01), "
                   "read from the training_scores.json the fit job saved.",
                   minimum=0.0, maximum=1.0, metavar="Q"),
            Option("anomaly.training_scores", "str", None,
                   "The training_scores.json to take the quantile from. Default: beside the "
                   "model folder.", metavar="PATH"),
            Option("anomaly.column", "str", "anomaly", "Name of the boolean anomaly column.",
                   flag="--anomaly-column"),
        ]
        + _output_options("predictions/, summary.json, resolved-config.toml", predictions=True)
        + _spark_options("score")
    ),
    exclusive=(("input.path", "input.table"), ("input.input_cols", "input.features_col"),
               ("anomaly.threshold", "anomaly.threshold_quantile")),
    epilog="example: python jobs/score.py --model out/demo/model --input new.parquet "
           "--threshold-quantile 0.01 --output out/scored",
)

SELECT = JobSpec(
    "select",
    "Choose k and the covariance type by BIC/AIC over a grid; write the table and best model.",
    tuple(
        [_LOG_LEVEL]
        + _input_options(_FEATURES_HELP_FIT, _COLS_HELP_FIT)
        + [
            Option("selection.k_values", "int_list", [1, 2, 3, 4, 5, 6],
                   "Numbers of components to try (--k-values 1-6 or 2,4,8).", metavar="K,K|A-B"),
            Option("selection.covariance_types", "str_list", ["full", "diag"],
                   "Covariance types to try.", metavar="TYPE,TYPE"),
            Option("selection.criterion", "str", "bic", "What picks the best model.",
                   choices=("bic", "aic")),
        ]
        + _model_options("selection")
        + _output_options("selection.csv, selection.json, model/, report/, "
                          "training_scores.json, resolved-config.toml", predictions=False)
        + _report_options()
        + _demo_options(20000)
        + _spark_options("select")
    ),
    exclusive=(("input.path", "input.table"), ("input.input_cols", "input.features_col")),
    epilog="example: python jobs/select_model.py --demo --k-values 1-6 --output out/select",
)

SAMPLE = JobSpec(
    "sample",
    "Write n synthetic rows drawn from a saved model.",
    tuple(
        [_LOG_LEVEL]
        + [
            Option("model.path", "str", None, "The saved model (as for score).",
                   flag="--model", metavar="PATH"),
            Option("sample.n", "int", 1000, "Number of rows to draw.", flag="--n", minimum=1),
            Option("sample.seed", "int", 42, "Random seed."),
            Option("output.path", "str", None,
                   "Output folder (samples/, summary.json, resolved-config.toml).",
                   flag="--output", metavar="PATH"),
            Option("output.overwrite", "bool", False,
                   "Replace the job's outputs in an existing output folder."),
            Option("output.format", "str", "parquet", "parquet, orc, json or csv.",
                   flag="--output-format", choices=OUTPUT_FORMATS),
            Option("output.num_files", "int", 0,
                   "Repartition to this many files before writing (0 keeps Spark's "
                   "partitioning).", minimum=0),
            Option("output.expand", "bool", True,
                   "When the model was trained on numeric columns, write the features as those "
                   "columns (so the rows look like the training table); else one vector "
                   "column 'features'."),
        ]
        + _spark_options("sample")
    ),
    epilog="example: python jobs/sample.py --model out/demo/model --n 10000 --output out/sample",
)

JOBS: Dict[str, JobSpec] = {spec.name: spec for spec in (FIT, SCORE, SELECT, SAMPLE)}


# --------------------------------------------------------------------------- values

def _type_name(t: str) -> str:
    return {
        "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
        "str_list": "a list of strings", "int_list": "a list of integers",
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
        if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
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


def _check_list_choices(spec: JobSpec, key: str, value: List[str], where: str,
                        allowed: Sequence[str]) -> None:
    for v in value:
        if v not in allowed:
            raise ConfigError(f"{where}: {key} must hold values of {', '.join(allowed)}, "
                              f"got {v!r}")


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
    parser = _OneLineParser(
        prog=prog or f"spark-gmm {spec.name}",
        description=spec.description
        + " Settings come from the built-in defaults, then --config FILE, then the flags.",
        epilog=spec.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="A TOML file of settings (conf/*.toml).")
    parser.add_argument("--print-config", action="store_true",
                        help="Print the resolved configuration as TOML and exit.")
    parser.add_argument("--traceback", action="store_true",
                        help="On error, print the Python traceback too.")
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
        value = self.values.get(key)
        return default if value is None else value

    def nested(self) -> Dict[str, Any]:
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
        lines = [f"# {h}" if h else "#" for h in header]
        if lines:
            lines.append("")
        return "\n".join(lines) + dump_toml(self.nested(), maps=_map_keys(self.spec))


def _map_keys(spec: JobSpec) -> set:
    return {o.key for o in spec.options if o.type == "str_map"}


def resolve(spec: JobSpec, argv: Optional[Sequence[str]] = None,
            prog: Optional[str] = None) -> ResolvedConfig:
    """defaults < --config file < flags, with exclusive options (path vs table, columns vs
    vector column, threshold vs quantile) taken from the highest layer that sets one."""
    parser = build_parser(spec, prog)
    args = parser.parse_args(argv)
    layers: List[Tuple[str, Dict[str, Any]]] = [
        ("default", {o.key: o.default for o in spec.options})
    ]
    if args.config:
        data = load_toml(args.config)
        layers.append((args.config, flatten(spec, data, args.config)))
    cli: Dict[str, Any] = {}
    for opt in spec.options:
        raw = getattr(args, opt.dest)
        if raw is None:
            continue
        if opt.type in ("bool", "str_map"):
            value = raw
        else:
            value = parse_cli_value(opt, raw)
        cli[opt.key] = coerce(opt, value, opt.cli_flag)
    layers.append(("command line", cli))

    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for source, layer in layers:
        for group in spec.exclusive:
            given = [k for k in group if layer.get(k) is not None]
            if len(given) > 1:
                names = " and ".join(
                    spec.option(k).cli_flag if source == "command line" else k for k in given
                )
                raise ConfigError(f"{source}: {names} exclude each other; give only one")
            if given:  # this layer decides the group: drop what lower layers set
                for k in group:
                    if k not in given:
                        values[k] = None
                        sources.pop(k, None)
        for key, value in layer.items():
            if value is None and source != "default":
                continue
            opt = spec.option(key)
            if opt.type == "str_map" and source != "default":
                merged = dict(values.get(key) or {})
                merged.update(value)
                value = merged
            values[key] = value
            sources[key] = source
    _check_lists(spec, values)
    return ResolvedConfig(
        spec, values, sources, args.config, args.print_config, args.traceback
    )


def _check_lists(spec: JobSpec, values: Dict[str, Any]) -> None:
    if "selection.covariance_types" in values:
        _check_list_choices(spec, "selection.covariance_types",
                            values["selection.covariance_types"] or [], "configuration",
                            COVARIANCE_TYPES)
        if not values["selection.covariance_types"]:
            raise ConfigError("configuration: selection.covariance_types is empty")
    if "selection.k_values" in values:
        bad = [k for k in values["selection.k_values"] if k < 1]
        if bad:
            raise ConfigError(f"configuration: selection.k_values must be >= 1, got {bad}")
    plot_features = values.get("report.plot_features")
    if plot_features and len(plot_features) != 2:
        raise ConfigError(
            f"configuration: report.plot_features must name two features, got {plot_features}"
        )


# --------------------------------------------------------------------------- TOML writing

def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "_-" for c in key):
        return key
    return json.dumps(key)


def _toml_value(value: Any) -> str:
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
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
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
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if scalars:
            lines.append("")
        for k, v in tables:
            emit(v, prefix + k + ".")

    emit(data, "")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- reference

def reference_markdown(spec: JobSpec) -> str:
    """The job's settings as a Markdown table (the README's configuration reference)."""
    rows = ["| key | flag | default | meaning |", "|---|---|---|---|"]
    for opt in spec.options:
        default = "—" if opt.default in (None, [], {}) else f"`{_toml_value(opt.default)}`"
        flag = opt.cli_flag + ("" if opt.type != "bool" else f" / --no-{opt.cli_flag[2:]}")
        if opt.key == "demo.enabled":
            flag = "--demo"
        text = opt.help.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{opt.key}` | `{flag}` | {default} | {text} |")
    return "\n".join(rows)
