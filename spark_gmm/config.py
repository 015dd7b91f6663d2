"""The jobs' settings: every option of fit, score, select and sample, and how the defaults, the
``--config`` file and the flags combine into one resolved configuration.

Every job declares its settings once, as a list of :class:`Option` s (the general TOML/flag
layer is :mod:`spark_gmm.toml_flags`). From that one list come

* the TOML file format (``conf/<job>.toml``): each option lives at a dotted key, e.g.
  ``model.k`` is ``k`` in the ``[model]`` table;
* the command-line flags (``--k``), which override the file, which overrides the defaults;
* the resolved configuration written beside the job's outputs (a TOML file that the job
  accepts again with ``--config``);
* the configuration reference in the README (:func:`reference_markdown`).

No pyspark import here: resolving a configuration (``--print-config``) starts nothing.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from spark_gmm.choices import (
    CRITERIA,
    GAUSSIAN_MIXTURE_DEFAULTS,
    HANDLE_INVALID,
    INIT_MODES,
    SELECTOR_DEFAULTS,
)
from spark_gmm.kernel import COVARIANCE_TYPES
from spark_gmm.toml_flags import (
    ConfigError,
    JobSpec,
    Option,
    ResolvedConfig,
    build_parser,
    coerce,
    flatten,
    load_toml,
    parse_cli_value,
    toml_value,
    tomllib,  # noqa: F401 - callers read TOML through config
)

INPUT_FORMATS = ("parquet", "csv", "json", "orc")
OUTPUT_FORMATS = ("parquet", "csv", "json", "orc")
# The estimators' defaults, which the jobs' model and selection settings share.
_ESTIMATOR = GAUSSIAN_MIXTURE_DEFAULTS


# --------------------------------------------------------------------------- options


def _input_options(features_help: str, cols_help: str) -> List[Option]:
    return [
        Option(
            "input.path",
            "str",
            None,
            "Input files or folder: a local path, hdfs://, s3a://, abfss://... Globs work.",
            flag="--input",
            metavar="PATH",
        ),
        Option(
            "input.table",
            "str",
            None,
            "A catalog table to read instead of a path (e.g. lake.sensor_readings).",
            metavar="NAME",
        ),
        Option(
            "input.format",
            "str",
            None,
            "Format of input.path: parquet, csv, json or orc. Default: from the file "
            "extension, else parquet.",
            choices=INPUT_FORMATS,
        ),
        Option(
            "input.options",
            "str_map",
            {},
            'Reader options, e.g. { header = "true", sep = ";" } (CSV is read with '
            "header=true and inferSchema=true unless set here).",
            flag="--read-option",
            metavar="KEY=VALUE",
        ),
        Option("input.input_cols", "str_list", None, cols_help, metavar="COL,COL,..."),
        Option("input.features_col", "str", None, features_help, metavar="COL"),
        Option(
            "input.handle_invalid",
            "str",
            _ESTIMATOR["handleInvalid"],
            "Rows with null, NaN or infinite features: 'error' stops the job naming the "
            "column, 'skip' drops them (the report counts them), 'keep' keeps rows with null "
            "or NaN features and marginalises those features (the report counts them; "
            "infinite values and rows with every feature missing stay an error).",
            choices=HANDLE_INVALID,
        ),
    ]


_FEATURES_HELP_FIT = (
    "A vector or array<double> column holding the features (when "
    "input_cols is not given; default 'features')."
)
_COLS_HELP_FIT = 'Numeric columns to cluster, e.g. ["x", "y", "z"] (or --input-cols x,y,z).'
_FEATURES_HELP_MODEL = (
    "A vector or array<double> column holding the features. Default: the "
    "column(s) the model was trained on."
)
_COLS_HELP_MODEL = (
    "Numeric columns holding the features, in training order. Default: the "
    "column(s) the model was trained on."
)


def _output_options(what: str, predictions: bool) -> List[Option]:
    opts = [
        Option(
            "output.path",
            "str",
            None,
            f"Output folder ({what}); the job refuses to write into an existing, non-empty "
            "folder unless output.overwrite.",
            flag="--output",
            metavar="PATH",
        ),
        Option(
            "output.overwrite",
            "bool",
            False,
            "Replace the job's outputs in an existing output folder (only the entries the "
            "job writes are replaced).",
        ),
    ]
    if predictions:
        opts += [
            Option(
                "output.format",
                "str",
                "parquet",
                "Format of the predictions: parquet, orc, json or csv (csv writes the "
                "probabilities as columns <probability_col>_0.._k-1 and vector inputs as "
                "text).",
                flag="--output-format",
                choices=OUTPUT_FORMATS,
            ),
            Option(
                "output.partition_by",
                "str_list",
                [],
                "Columns to partition the predictions by (folders col=value), e.g. "
                '["prediction"] or a date column of the input.',
                metavar="COL,COL,...",
            ),
            Option(
                "output.num_files",
                "int",
                0,
                "Repartition the predictions to this many write tasks (with partition_by: "
                "by those columns, so each folder gets few files); 0 keeps Spark's "
                "partitioning.",
                minimum=0,
            ),
            Option(
                "output.prediction_col",
                "str",
                _ESTIMATOR["predictionCol"],
                "Name of the cluster column.",
            ),
            Option(
                "output.probability_col",
                "str",
                _ESTIMATOR["probabilityCol"],
                "Name of the component-probabilities column (array<double>).",
            ),
            Option(
                "output.log_likelihood_col",
                "str",
                "logLikelihood",
                "Name of the per-row log density column, log p(x).",
            ),
        ]
    return opts


def _model_options(prefix: str = "model") -> List[Option]:
    return [
        Option(
            f"{prefix}.max_iter",
            "int",
            _ESTIMATOR["maxIter"],
            "Maximum number of EM iterations.",
            minimum=0,
        ),
        Option(
            f"{prefix}.tol",
            "float",
            _ESTIMATOR["tol"],
            "Convergence tolerance on the change of the mean per-row log-likelihood.",
            minimum=0.0,
        ),
        Option(f"{prefix}.seed", "int", _ESTIMATOR["seed"], "Random seed (initialisation)."),
        Option(
            f"{prefix}.reg_covar",
            "float",
            _ESTIMATOR["regCovar"],
            "Added to every covariance diagonal so components stay positive definite.",
            minimum=0.0,
        ),
    ]


def _report_options() -> List[Option]:
    return [
        Option(
            "report.plots",
            "bool",
            True,
            "Draw PNG plots (needs matplotlib: pip install 'spark-gmm[plot]'; without it "
            "the report says the plots were skipped).",
        ),
        Option(
            "report.plot_features",
            "str_list",
            [],
            "The pair of features for the scatter plot (column names, or 0-based indices "
            "for a vector column). Default: the first two.",
            metavar="F1,F2",
        ),
        Option(
            "report.sample_size",
            "int",
            5000,
            "Rows sampled (on Spark, then collected) for the scatter plot and histograms.",
            minimum=10,
            maximum=1_000_000,
        ),
        Option(
            "report.max_histograms",
            "int",
            4,
            "Histograms drawn: one per feature (marginal density and components) for the "
            "first N features.",
            minimum=0,
        ),
    ]


def _demo_options(default_rows: int) -> List[Option]:
    return [
        Option(
            "demo.enabled",
            "bool",
            False,
            "Generate a demo data set (Gaussian blobs in 3-D, columns x, y, z) as Parquet "
            "under <output>/data and use it as the input.",
            flag="--demo",
        ),
        Option(
            "demo.rows",
            "int",
            default_rows,
            "Rows of the demo data set.",
            minimum=100,
            flag="--demo-rows",
        ),
    ]


def _spark_options(job: str) -> List[Option]:
    return [
        Option(
            "spark.master",
            "str",
            None,
            "Master when the job starts Spark itself (python jobs/...): default local[*]. "
            "Ignored under spark-submit, whose --master wins.",
            metavar="URL",
        ),
        Option("spark.app_name", "str", f"spark-gmm-{job}", "Spark application name."),
        Option(
            "spark.properties_file",
            "str",
            None,
            "A Spark properties file (key value per line, as spark-submit "
            "--properties-file reads) applied when the job starts Spark itself, e.g. "
            "conf/spark-local.properties.",
            flag="--spark-properties",
            metavar="FILE",
        ),
        Option(
            "spark.conf",
            "str_map",
            {},
            'Spark settings, e.g. { "spark.sql.shuffle.partitions" = "64" }; they win '
            "over the properties file.",
            flag="--conf",
            metavar="KEY=VALUE",
        ),
        Option(
            "spark.log_level",
            "str",
            "WARN",
            "Spark's own log level on the console.",
            flag="--spark-log-level",
            choices=("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"),
        ),
    ]


def _mlflow_options() -> List[Option]:
    """The fit job's MLflow run (spark_gmm.tracking; needs the 'spark-gmm[mlflow]' extra)."""
    return [
        Option(
            "mlflow.enabled",
            "bool",
            False,
            "Record the fit as an MLflow run: model (mlflow.spark), params, metrics, report "
            "(needs pip install 'spark-gmm[mlflow]').",
            flag="--mlflow",
        ),
        Option(
            "mlflow.tracking_uri",
            "str",
            None,
            "MLflow tracking URI, e.g. sqlite:///mlflow.db or http://host:5000. Default: "
            "MLFLOW_TRACKING_URI, else MLflow's default.",
            flag="--mlflow-tracking-uri",
            metavar="URI",
        ),
        Option(
            "mlflow.experiment",
            "str",
            None,
            "MLflow experiment name (created if missing). Default: MLflow's default.",
            flag="--mlflow-experiment",
            metavar="NAME",
        ),
        Option(
            "mlflow.run_name",
            "str",
            None,
            "MLflow run name. Default: MLflow's.",
            flag="--mlflow-run-name",
            metavar="NAME",
        ),
    ]


_LOG_LEVEL = Option(
    "log_level",
    "str",
    "INFO",
    "Level of the job's own log (INFO shows one line per EM iteration).",
    choices=("DEBUG", "INFO", "WARNING", "ERROR"),
)


FIT = JobSpec(
    "fit",
    "Fit a Gaussian mixture to a table and write the model, the predictions and a report.",
    tuple(
        [_LOG_LEVEL]
        + _input_options(_FEATURES_HELP_FIT, _COLS_HELP_FIT)
        + [
            Option(
                "input.weight_col",
                "str",
                None,
                "Optional numeric column of row weights.",
                metavar="COL",
            )
        ]
        + [
            Option("model.k", "int", _ESTIMATOR["k"], "Number of components.", minimum=1),
            Option(
                "model.covariance_type",
                "str",
                _ESTIMATOR["covarianceType"],
                "full, tied, diag or spherical.",
                choices=COVARIANCE_TYPES,
            ),
        ]
        + _model_options()
        + [
            Option(
                "model.init_mode",
                "str",
                _ESTIMATOR["initMode"],
                f"Initialisation: {', '.join(INIT_MODES)} (the estimator's initMode).",
                choices=INIT_MODES,
            ),
            Option(
                "model.initial_model",
                "str",
                None,
                "A saved model to start EM from (warm start).",
                metavar="PATH",
            ),
        ]
        + _output_options(
            "model/, predictions/, report/, training_scores.json, resolved-config.toml",
            predictions=True,
        )
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
        + [
            Option(
                "model.path",
                "str",
                None,
                "The saved model (the model/ folder of a fit or select output, or that "
                "output folder itself).",
                flag="--model",
                metavar="PATH",
            )
        ]
        + _input_options(_FEATURES_HELP_MODEL, _COLS_HELP_MODEL)
        + [
            Option(
                "anomaly.threshold",
                "float",
                None,
                "Flag rows whose log-likelihood is below this value.",
                metavar="LOGP",
            ),
            Option(
                "anomaly.threshold_quantile",
                "float",
                None,
                "Flag rows below this quantile of the TRAINING log-likelihoods (e.g. 0.01), "
                "read from the training_scores.json the fit job saved.",
                minimum=0.0,
                maximum=1.0,
                metavar="Q",
            ),
            Option(
                "anomaly.training_scores",
                "str",
                None,
                "The training_scores.json to take the quantile from. Default: beside the "
                "model folder.",
                metavar="PATH",
            ),
            Option(
                "anomaly.column",
                "str",
                "anomaly",
                "Name of the boolean anomaly column.",
                flag="--anomaly-column",
            ),
        ]
        + _output_options("predictions/, summary.json, resolved-config.toml", predictions=True)
        + _spark_options("score")
    ),
    exclusive=(
        ("input.path", "input.table"),
        ("input.input_cols", "input.features_col"),
        ("anomaly.threshold", "anomaly.threshold_quantile"),
    ),
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
            Option(
                "selection.k_values",
                "int_list",
                list(SELECTOR_DEFAULTS["kValues"]),
                "Numbers of components to try (--k-values 1-6 or 2,4,8).",
                metavar="K,K|A-B",
            ),
            Option(
                "selection.covariance_types",
                "str_list",
                list(SELECTOR_DEFAULTS["covarianceTypes"]),
                "Covariance types to try.",
                metavar="TYPE,TYPE",
            ),
            Option(
                "selection.criterion",
                "str",
                SELECTOR_DEFAULTS["criterion"],
                "What picks the best model.",
                choices=CRITERIA,
            ),
        ]
        + _model_options("selection")
        + _output_options(
            "selection.csv, selection.json, model/, report/, "
            "training_scores.json, resolved-config.toml",
            predictions=False,
        )
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
            Option(
                "model.path",
                "str",
                None,
                "The saved model (as for score).",
                flag="--model",
                metavar="PATH",
            ),
            Option("sample.n", "int", 1000, "Number of rows to draw.", flag="--n", minimum=1),
            Option("sample.seed", "int", 42, "Random seed."),
            Option(
                "output.path",
                "str",
                None,
                "Output folder (samples/, summary.json, resolved-config.toml).",
                flag="--output",
                metavar="PATH",
            ),
            Option(
                "output.overwrite",
                "bool",
                False,
                "Replace the job's outputs in an existing output folder.",
            ),
            Option(
                "output.format",
                "str",
                "parquet",
                "parquet, orc, json or csv.",
                flag="--output-format",
                choices=OUTPUT_FORMATS,
            ),
            Option(
                "output.num_files",
                "int",
                0,
                "Repartition to this many files before writing (0 keeps Spark's partitioning).",
                minimum=0,
            ),
            Option(
                "output.expand",
                "bool",
                True,
                "When the model was trained on numeric columns, write the features as those "
                "columns (so the rows look like the training table); else one vector "
                "column 'features'.",
            ),
        ]
        + _spark_options("sample")
    ),
    epilog="example: python jobs/sample.py --model out/demo/model --n 10000 --output out/sample",
)

JOBS: Dict[str, JobSpec] = {spec.name: spec for spec in (FIT, SCORE, SELECT, SAMPLE)}


# --------------------------------------------------------------------------- resolving


def _check_list_choices(
    spec: JobSpec, key: str, value: List[str], where: str, allowed: Sequence[str]
) -> None:
    for v in value:
        if v not in allowed:
            raise ConfigError(f"{where}: {key} must hold values of {', '.join(allowed)}, got {v!r}")


def resolve(
    spec: JobSpec, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None
) -> ResolvedConfig:
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
    return ResolvedConfig(spec, values, sources, args.config, args.print_config, args.traceback)


def _check_lists(spec: JobSpec, values: Dict[str, Any]) -> None:
    if "selection.covariance_types" in values:
        _check_list_choices(
            spec,
            "selection.covariance_types",
            values["selection.covariance_types"] or [],
            "configuration",
            COVARIANCE_TYPES,
        )
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


# --------------------------------------------------------------------------- reference


def reference_markdown(spec: JobSpec) -> str:
    """The job's settings as a Markdown table (the README's configuration reference)."""
    rows = ["| key | flag | default | meaning |", "|---|---|---|---|"]
    for opt in spec.options:
        default = "—" if opt.default in (None, [], {}) else f"`{toml_value(opt.default)}`"
        flag = opt.cli_flag + ("" if opt.type != "bool" else f" / --no-{opt.cli_flag[2:]}")
        if opt.key == "demo.enabled":
            flag = "--demo"
        text = opt.help.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{opt.key}` | `{flag}` | {default} | {text} |")
    return "\n".join(rows)


# The script and example configuration of each job (docs/jobs.md).
_JOB_FILES = {
    "fit": ("fit.py", "fit.toml"),
    "score": ("score.py", "score.toml"),
    "select": ("select_model.py", "select.toml"),
    "sample": ("sample.py", "sample.toml"),
}


def reference_section() -> str:
    """Every job's settings, one table each: the configuration reference of docs/jobs.md."""
    parts = []
    for name, spec in JOBS.items():
        script, toml = _JOB_FILES[name]
        parts.append(f"**{name}** (`jobs/{script}`, `conf/{toml}`)\n\n{reference_markdown(spec)}")
    return "\n\n".join(parts)
