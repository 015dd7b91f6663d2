"""The batch jobs (jobs/*.py, spark_gmm.cli, spark_gmm.jobs) end to end.

One subprocess run (``python jobs/fit.py ...``: the job starts Spark in local mode itself): a
job failing inside Spark as a user sees it on stderr (one line, no stack trace). Everything
else runs in this process with the session's ``spark`` fixture (the jobs join an active
session, which costs no JVM start): the quickstart's fit, then score and sample from it,
select, the many variants of settings, bad input and outputs. The quickstart's command itself,
as a script in a fresh copy: tests/test_artifact.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from spark_gmm import cli
from spark_gmm.config import JOBS, ConfigError, resolve, tomllib  # tomli on Python 3.10
from spark_gmm.jobs.errors import JobError, describe_error, one_line
from spark_gmm.jobs.session import read_properties
from spark_gmm.jobs.training_scores import quantile_threshold

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_SCRIPTS = {
    "fit": "fit.py",
    "score": "score.py",
    "select": "select_model.py",
    "sample": "sample.py",
}
NO_UI = ("--conf", "spark.ui.enabled=false")


def _job(run_script, name, *args, cwd):
    return run_script(
        REPO_ROOT / "jobs" / JOB_SCRIPTS[name], *args, check=False, cwd=cwd, timeout=300
    )


def _one_error_line(proc, job="fit", code=1) -> str:
    """The run failed with ``code``, without a Python or Java traceback, and printed exactly
    one error line; returns it."""
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "\tat " not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"spark-gmm {job}: error: "), errors
    return errors[0]


def _rows(path) -> int:
    return ds.dataset(str(path), format="parquet", partitioning="hive").count_rows()


# =========================================================================== the quickstart's fit


@pytest.fixture(scope="module")
def demo_fit(spark, tmp_path_factory):
    """The README quickstart's fit (``jobs/fit.py --demo --output out/demo``) in this process,
    into a fresh folder: what the score, sample and bad-input tests start from. (The command
    itself, as a script in a fresh copy of the repository, with its progress lines and its
    local-mode workers: tests/test_artifact.py.)"""
    out = tmp_path_factory.mktemp("quickstart") / "out" / "demo"
    assert cli.main_fit(["--demo", "--output", str(out)]) == 0
    return out


@pytest.mark.compat
def test_quickstart_demo_fit(demo_fit):
    out = demo_fit
    report = json.loads((out / "report" / "report.json").read_text())
    # model, predictions, training scores
    assert report["model"]["k"] == 4 and report["model"]["features"] == ["x", "y", "z"]
    assert report["fit"]["numRows"] == 20000 and report["fit"]["converged"]
    assert (out / "model" / "metadata").is_dir()
    table = ds.dataset(str(out / "predictions"), format="parquet").to_table()
    assert table.num_rows == 20000
    assert table.column_names == ["id", "x", "y", "z", "probability", "prediction", "logLikelihood"]
    proba = np.array(table.column("probability").to_pylist())
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(np.isfinite(table.column("logLikelihood").to_numpy()))
    scores = json.loads((out / "training_scores.json").read_text())
    assert scores["rows"] == 20000 and scores["column"] == "logLikelihood"
    assert scores["values"] == sorted(scores["values"])
    assert scores["min"] == pytest.approx(scores["values"][0])
    # report: PNGs, HTML embedding them, resolved configuration
    pngs = sorted(p.name for p in (out / "report").glob("*.png"))
    assert pngs == [
        "clusters_x_y.png",
        "density_x.png",
        "density_y.png",
        "density_z.png",
        "log_likelihood.png",
    ]
    for png in pngs:
        assert (out / "report" / png).read_bytes().startswith(b"\x89PNG")
    html = (out / "report" / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 5
    assert report["plots"]["files"] == [
        f"report/{p}"
        for p in [
            "log_likelihood.png",
            "clusters_x_y.png",
            "density_x.png",
            "density_y.png",
            "density_z.png",
        ]
    ]
    resolved = tomllib.loads((out / "resolved-config.toml").read_text())
    assert resolved["demo"]["enabled"] is True and resolved["output"]["path"] == str(out)
    assert resolved["model"]["k"] == 4 and resolved["input"]["input_cols"] == ["x", "y", "z"]
    # Hadoop's .crc checksum files only beside data Spark wrote (not in report/)
    assert all(
        p.relative_to(out).parts[0] in ("data", "predictions", "model") for p in out.rglob("*.crc")
    )


def test_score_with_a_training_quantile(demo_fit, spark, tmp_path, capsys):
    """The quickstart's fit output scored as the README's next step does (in this process)."""
    out = demo_fit
    # --model may name the fit's output folder; training_scores.json is found beside model/
    code, _, err = _run(
        cli.main_score,
        "--model",
        out,
        "--input",
        out / "data",
        "--threshold-quantile",
        "0.02",
        "--output",
        tmp_path / "s",
        "--num-files",
        "1",
        capsys=capsys,
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    anomaly = summary["anomaly"]
    training = json.loads((out / "training_scores.json").read_text())
    assert anomaly["threshold"] == pytest.approx(
        training["values"][training["probabilities"].index(0.02)]
    )
    # the training data scored against its own 2% quantile: about 2% flagged
    assert summary["rows"] == 20000 and abs(anomaly["fraction"] - 0.02) < 0.003
    # the training rows scored by the model they fitted: the fit's own cluster sizes
    fitted = json.loads((out / "report" / "report.json").read_text())["fit"]["clusterSizes"]
    assert summary["clusterSizes"] == fitted and sum(fitted) == 20000
    table = ds.dataset(str(tmp_path / "s" / "predictions"), format="parquet").to_table()
    flags = table.column("anomaly").to_numpy(zero_copy_only=False)
    ll = table.column("logLikelihood").to_numpy()
    assert flags.sum() == anomaly["rows"]
    np.testing.assert_array_equal(flags, ll < anomaly["threshold"])
    assert "anomalies" in err
    assert (
        tomllib.loads((tmp_path / "s" / "resolved-config.toml").read_text())["anomaly"][
            "threshold_quantile"
        ]
        == 0.02
    )


def test_sample_from_the_fitted_model(demo_fit, spark, tmp_path, capsys):
    out = demo_fit
    code, _, err = _run(
        cli.main_sample,
        "--model",
        out / "model",
        "--n",
        "5000",
        "--seed",
        "3",
        "--output",
        tmp_path / "smp",
        capsys=capsys,
    )
    assert code == 0, err
    table = ds.dataset(str(tmp_path / "smp" / "samples"), format="parquet").to_table()
    assert table.num_rows == 5000
    assert table.column_names == ["x", "y", "z", "component"]  # the model's training columns
    summary = json.loads((tmp_path / "smp" / "summary.json").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    weights = [c["weight"] for c in report["model"]["components"]]
    counts = np.bincount(table.column("component").to_numpy(), minlength=4)
    assert summary["componentCounts"] == counts.tolist()
    np.testing.assert_allclose(counts / 5000, weights, atol=0.03)


def test_select_job(spark, tmp_path, capsys):
    out = tmp_path / "sel"
    code, _, err = _run(
        cli.main_select,
        "--demo",
        "--demo-rows",
        "3000",
        "--k-values",
        "1-5",
        "--covariance-types",
        "full,diag",
        "--output",
        out,
        "--max-histograms",
        "1",
        capsys=capsys,
    )
    assert code == 0, err
    import pandas as pd

    table = pd.read_csv(out / "selection.csv")
    assert list(table.columns)[:2] == ["k", "covarianceType"]
    assert {"bic", "aic", "logLikelihood", "nParameters", "numIter", "converged"} <= set(table)
    assert len(table) == 10
    report = json.loads((out / "report" / "report.json").read_text())
    best = table.loc[table["bic"].idxmin()]
    assert (report["best"]["k"], report["best"]["covarianceType"]) == (
        best["k"],
        best["covarianceType"],
    )
    assert report["best"]["k"] == 4  # the demo data has 4 blobs
    assert (out / "report" / "criteria.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "model" / "metadata").is_dir() and (out / "training_scores.json").exists()


@pytest.fixture(scope="module")
def bad_csv(tmp_path_factory):
    d = tmp_path_factory.mktemp("badcsv")
    rows = ["a,b,name"] + [f"{i % 7}.5,{i % 3}.25,n{i}" for i in range(30)]
    (d / "t.csv").write_text("\n".join(rows) + "\n")
    return d / "t.csv"


@pytest.mark.slow
def test_an_unreadable_input_is_one_error_line_on_stderr(run_script, tmp_path):
    """A job started as the user starts it, failing inside Spark (the input path does not
    exist): one error line on stderr, no Python or Java stack trace, no output folder."""
    out = tmp_path / "o"
    proc = _job(
        run_script,
        "fit",
        "--input",
        tmp_path / "nope" / "*.parquet",
        "--output",
        out,
        *NO_UI,
        cwd=tmp_path,
    )
    assert "does not exist" in _one_error_line(proc)
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing column", "wrong type", "existing output"])
def test_bad_input_is_one_error_line(case, bad_csv, demo_fit, spark, tmp_path, capsys):
    out = tmp_path / "o"
    args = {
        "missing column": ["--input", bad_csv, "--input-cols", "a,q", "--output", out],
        "wrong type": ["--input", bad_csv, "--input-cols", "a,name", "--output", out],
        "existing output": ["--input", bad_csv, "--input-cols", "a,b", "--output", demo_fit],
    }[case]
    before = (
        {p: p.stat().st_mtime_ns for p in demo_fit.rglob("*")}
        if case == "existing output"
        else None
    )
    line = _error(cli.main_fit, *args, capsys=capsys)
    expected = {
        "missing column": f"column 'q' not found in csv input {bad_csv}; its columns are: "
        "a, b, name",
        "wrong type": "column 'name' of csv input",
        "existing output": "already exists and is not empty; pass --overwrite",
    }[case]
    assert expected in line
    if case == "wrong type":
        assert "is string, not numeric" in line
    if before is not None:  # nothing of the earlier run was touched
        assert {p: p.stat().st_mtime_ns for p in demo_fit.rglob("*")} == before
    else:
        assert not out.exists()


# =========================================================================== in this process


def _run(main, *args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error(main, *args, capsys, code=1, job="fit") -> str:
    got, _, err = _run(main, *args, capsys=capsys)
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith(f"spark-gmm {job}: error: "), err
    assert "Traceback" not in err and "\tat " not in err
    return lines[0]


@pytest.fixture(scope="module")
def table_dir(spark, tmp_path_factory):
    """Parquet and CSV copies of 3 blobs in 2-D, with a weight, a label and a vector column."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    rng = np.random.default_rng(11)
    centers = np.array([[0.0, 0.0], [6.0, 1.0], [2.0, 7.0]])
    X = np.vstack([rng.normal(c, 0.7, size=(150, 2)) for c in centers])
    d = tmp_path_factory.mktemp("tables")
    rows = [(i, float(x), float(y), 1.0 + (i % 3), f"r{i % 5}") for i, (x, y) in enumerate(X)]
    df = spark.createDataFrame(rows, "id long, x double, y double, w double, region string")
    df = df.withColumn("vec", array_to_vector(F.array("x", "y")))
    df.repartition(2).write.parquet(str(d / "points"))
    df.drop("vec").coalesce(1).write.option("header", "true").csv(str(d / "points_csv"))
    return d


@pytest.fixture(scope="module")
def fitted(table_dir, tmp_path_factory):
    """One fit in this process; later tests score against it."""
    out = tmp_path_factory.mktemp("fitted") / "out"
    code = cli.main_fit(
        [
            "--input",
            str(table_dir / "points"),
            "--input-cols",
            "x,y",
            "--k",
            "3",
            "--output",
            str(out),
            "--no-plots",
            "--log-level",
            "ERROR",
        ]
    )
    assert code == 0
    return out


def test_print_config_precedence(tmp_path, capsys):
    conf = tmp_path / "job.toml"
    conf.write_text(
        'log_level = "WARNING"\n'
        '[input]\npath = "from-file"\ninput_cols = ["a", "b"]\n'
        '[input.options]\nsep = ";"\nheader = "false"\n'
        '[model]\nk = 5\ntol = 1e-4\ncovariance_type = "diag"\n'
        '[output]\npath = "out/file"\npartition_by = ["prediction"]\n'
    )
    code, out, _ = _run(
        cli.main_fit,
        "--config",
        conf,
        "--k",
        "7",
        "--table",
        "lake.t",
        "--read-option",
        "header=true",
        "--features-col",
        "vec",
        "--print-config",
        capsys=capsys,
    )
    assert code == 0
    got = tomllib.loads(out)
    assert got["model"]["k"] == 7  # flag beats file
    assert got["model"]["tol"] == 1e-4 and got["model"]["covariance_type"] == "diag"  # file
    assert got["model"]["max_iter"] == 100  # default
    assert got["log_level"] == "WARNING"
    # a flag of an exclusive pair replaces the file's other member
    assert got["input"]["table"] == "lake.t" and "path" not in got["input"]
    assert got["input"]["features_col"] == "vec" and "input_cols" not in got["input"]
    # reader options merge, the flag winning per key
    assert got["input"]["options"] == {"sep": ";", "header": "true"}
    assert got["output"]["partition_by"] == ["prediction"]
    assert f"from {conf}: " in out and "from command line: " in out
    # the printed configuration is itself a valid config file that resolves to the same values
    again = tmp_path / "again.toml"
    again.write_text(out)
    assert (
        resolve(JOBS["fit"], ["--config", str(again)]).values
        == resolve(
            JOBS["fit"],
            [
                "--config",
                str(conf),
                "--k",
                "7",
                "--table",
                "lake.t",
                "--read-option",
                "header=true",
                "--features-col",
                "vec",
            ],
        ).values
    )


def test_cli_lists_and_ranges():
    cfg = resolve(JOBS["select"], ["--k-values", "1-3,6", "--covariance-types", "full, tied"])
    assert cfg["selection.k_values"] == [1, 2, 3, 6]
    assert cfg["selection.covariance_types"] == ["full", "tied"]
    cfg = resolve(JOBS["fit"], ["--input-cols", "x,y", "--no-plots", "--overwrite"])
    assert cfg["input.input_cols"] == ["x", "y"] and cfg["report.plots"] is False
    assert cfg["output.overwrite"] is True
    with pytest.raises(ConfigError, match="covariance_types must hold values of"):
        resolve(JOBS["select"], ["--covariance-types", "full,round"])


@pytest.mark.parametrize(
    "content,flags,message",
    [
        (
            "[model]\nkk = 3\n",
            [],
            "unknown setting 'model.kk' for the fit job (did you mean 'model.k'",
        ),
        ('[model]\nk = "three"\n', [], 'model.k must be an integer, got "three"'),
        ("[model]\nk = 3\n[model\n", [], "is not valid TOML"),
        ('[input]\npath = "a"\ntable = "b"\n', [], "input.path and input.table exclude each other"),
        ("", ["--input", "a", "--table", "b"], "--input and --table exclude each other"),
        ("", ["--covariance-type", "round"], "model.covariance_type must be one of full, tied"),
        ("", ["--tol", "-1"], "model.tol must be >= 0"),
        ("", ["--k", "x"], "--k: expected an integer, got 'x'"),
        ("", ["--plot-features", "x"], "plot_features must name two features"),
        (None, [], "config file"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path, capsys, content, flags, message):
    conf = tmp_path / "c.toml"
    if content is not None:
        conf.write_text(content)
    line = _error(cli.main_fit, "--config", conf, *flags, "--print-config", capsys=capsys, code=2)
    assert message in line
    if content is None:
        assert "does not exist" in line


def test_argparse_errors_are_one_line_too(capsys):
    code, _, err = _run(cli.main_fit, "--no-such-flag", capsys=capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "spark-gmm fit: error: unrecognized arguments: --no-such-flag (see --help)"
    ]


def test_flags_are_unique_and_documented():
    for spec in JOBS.values():
        flags = [o.cli_flag for o in spec.options]
        assert len(flags) == len(set(flags)), spec.name
        assert all(o.help for o in spec.options)
    # docs/jobs.md's reference is generated from these declarations (docs/generate.py)
    sys.path.insert(0, str(REPO_ROOT / "docs"))
    import generate

    jobs_doc = (REPO_ROOT / "docs" / "jobs.md").read_text()
    assert generate.with_reference(jobs_doc) == jobs_doc, (
        "docs/jobs.md's configuration reference is stale: run .venv/bin/python docs/generate.py"
    )
    for spec in JOBS.values():
        for opt in spec.options:
            assert f"| `{opt.key}` |" in jobs_doc, f"{spec.name}: {opt.key} missing"


@pytest.mark.parametrize(
    "job,conf",
    [
        ("fit", "fit.toml"),
        ("score", "score.toml"),
        ("select", "select.toml"),
        ("sample", "sample.toml"),
    ],
)
def test_example_configs_resolve(job, conf, capsys):
    code, out, _ = _run(
        cli._MAINS[job], "--config", REPO_ROOT / "conf" / conf, "--print-config", capsys=capsys
    )
    assert code == 0
    assert tomllib.loads(out)  # and the resolved form is valid TOML


def test_spark_properties_files():
    local = read_properties(str(REPO_ROOT / "conf" / "spark-local.properties"))
    assert local["spark.master"] == "local[*]"
    assert local["spark.executorEnv.OMP_NUM_THREADS"] == "1"
    assert local["spark.executorEnv.OPENBLAS_NUM_THREADS"] == "1"
    cluster = read_properties(str(REPO_ROOT / "conf" / "spark-cluster.properties"))
    for key in (
        "spark.executor.memory",
        "spark.executor.cores",
        "spark.executor.memoryOverhead",
        "spark.sql.files.maxPartitionBytes",
        "spark.executorEnv.OMP_NUM_THREADS",
    ):
        assert key in cluster
    assert "spark.master" not in cluster  # spark-submit --master decides


def test_dispatch_and_help(capsys):
    assert cli.main(["--help"]) == 0
    assert "fit" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2
    assert "unknown job 'nope'" in capsys.readouterr().err
    assert cli.main(["score", "--help"]) == 0
    assert "--threshold-quantile" in capsys.readouterr().out


@pytest.mark.compat
def test_fit_in_process_outputs(fitted, capsys):
    out = fitted
    assert (out / "model" / "metadata").is_dir()
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["spark"]["mode"] == "existing session"
    assert report["plots"]["status"].startswith("disabled")
    assert "Plots disabled" in (out / "report" / "report.html").read_text()
    assert _rows(out / "predictions") == 450


def test_overwrite_replaces_only_the_jobs_outputs(fitted, table_dir, tmp_path, capsys):
    out = tmp_path / "o"
    args = [
        "--input",
        table_dir / "points",
        "--input-cols",
        "x,y",
        "--k",
        "3",
        "--no-plots",
        "--output",
        out,
    ]
    assert _run(cli.main_fit, *args, capsys=capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    model_files = {p: p.stat().st_mtime_ns for p in (out / "model").rglob("*")}
    line = _error(cli.main_fit, *args, capsys=capsys)
    assert f"output folder {out} already exists and is not empty; pass --overwrite" in line
    assert {p: p.stat().st_mtime_ns for p in (out / "model").rglob("*")} == model_files
    # the resolved configuration of the first run, run again with --overwrite
    code, _, err = _run(
        cli.main_fit, "--config", out / "resolved-config.toml", "--overwrite", capsys=capsys
    )
    assert code == 0, err
    assert "--overwrite: removing" in err
    assert (out / "notes.txt").read_text() == "mine"  # not an output of the job: kept
    assert _rows(out / "predictions") == 450
    # an output path that is a file is refused
    (tmp_path / "file").write_text("x")
    assert "exists and is a file" in _error(
        cli.main_fit, *args[:-1], tmp_path / "file", "--overwrite", capsys=capsys
    )


@pytest.mark.compat
def test_conf_fit_toml_with_csv_in_and_out(table_dir, tmp_path, capsys):
    """conf/fit.toml as shipped (partitioned predictions, plot pair), on CSV, writing CSV."""
    out = tmp_path / "o"
    code, _, err = _run(
        cli.main_fit,
        "--config",
        REPO_ROOT / "conf" / "fit.toml",
        "--input",
        table_dir / "points_csv",
        "--format",
        "csv",
        "--input-cols",
        "x,y",
        "--k",
        "3",
        "--plot-features",
        "y,x",
        "--max-histograms",
        "1",
        "--output-format",
        "csv",
        "--output",
        out,
        capsys=capsys,
    )
    assert code == 0, err
    parts = sorted(p.name for p in (out / "predictions").glob("prediction=*"))
    assert parts == ["prediction=0", "prediction=1", "prediction=2"]
    import pandas as pd

    frames = [pd.read_csv(f) for f in (out / "predictions").rglob("*.csv")]
    pred = pd.concat(frames)
    assert len(pred) == 450
    assert {"probability_0", "probability_1", "probability_2", "logLikelihood"} <= set(pred)
    np.testing.assert_allclose(
        pred[["probability_0", "probability_1", "probability_2"]].sum(axis=1), 1.0, atol=1e-9
    )
    assert len(list((out / "predictions").rglob("*.csv"))) <= 3 * 4  # num_files = 4
    assert (out / "report" / "clusters_y_x.png").exists()
    assert (out / "report" / "density_x.png").exists()
    assert not (out / "report" / "density_y.png").exists()


def test_fit_vector_column_with_weights(table_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = _run(
        cli.main_fit,
        "--input",
        table_dir / "points",
        "--features-col",
        "vec",
        "--weight-col",
        "w",
        "--k",
        "3",
        "--covariance-type",
        "diag",
        "--no-predictions",
        "--plot-features",
        "1,0",
        "--max-histograms",
        "0",
        "--output",
        out,
        capsys=capsys,
    )
    assert code == 0, err
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["input"]["featuresCol"] == "vec" and report["input"]["weightCol"] == "w"
    assert report["model"]["covarianceType"] == "diag"
    assert report["model"]["features"] == ["feature 0", "feature 1"]
    assert not (out / "predictions").exists() and report["outputs"]["predictions"] is None
    assert json.loads((out / "training_scores.json").read_text())["rows"] == 450
    assert (out / "report" / "clusters_feature_1_feature_0.png").exists()


def test_fit_without_matplotlib_still_works(table_dir, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "o"
    code, _, err = _run(
        cli.main_fit,
        "--input",
        table_dir / "points",
        "--input-cols",
        "x,y",
        "--k",
        "3",
        "--output",
        out,
        capsys=capsys,
    )
    assert code == 0, err
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["plots"]["status"].startswith("skipped: matplotlib is not installed")
    assert report["plots"]["files"] == [] and not list((out / "report").glob("*.png"))
    assert "pip install 'spark-gmm[plot]'" in (out / "report" / "report.html").read_text()
    assert "plots skipped" in err


@pytest.mark.compat
def test_fit_input_errors(table_dir, fitted, tmp_path, capsys, spark):
    points, csv = table_dir / "points", table_dir / "points_csv"
    o = tmp_path / "o"
    cases = [
        (["--table", "no_such_table"], "table no_such_table not found in the Spark catalog"),
        (["--input", points, "--features-col", "x"], "features column 'x' of parquet input"),
        (["--input", points], "features column 'features' not found in parquet input"),
        (
            ["--input", points, "--input-cols", "x,y", "--weight-col", "region"],
            "weight column 'region' of parquet input",
        ),
        (["--input", points, "--input-cols", "x,x"], "input_cols lists x more than once"),
        (
            ["--input", points, "--input-cols", "x,y", "--partition-by", "nope"],
            "partition_by column 'nope' is not in the output",
        ),
        (
            ["--input", points, "--input-cols", "x,y", "--partition-by", "probability"],
            "cannot partition the output by 'probability'",
        ),
        (
            ["--input", points, "--input-cols", "x,y", "--log-likelihood-col", "region"],
            "already has column(s) region (--log-likelihood-col)",
        ),
        (
            ["--input", points, "--input-cols", "x,y", "--probability-col", "prediction"],
            "the output column names must differ: --prediction-col prediction, "
            "--probability-col prediction, --log-likelihood-col logLikelihood",
        ),
        (
            ["--input", csv, "--format", "csv", "--input-cols", "x,region"],
            "one non-numeric value makes the whole column a string",
        ),
        (
            ["--input", points, "--input-cols", "x,y", "--initial-model", tmp_path / "none"],
            "does not exist",
        ),
        (
            [
                "--input",
                points,
                "--input-cols",
                "x,y",
                "--k",
                "4",
                "--initial-model",
                fitted / "model",
            ],
            "initialModel",
        ),
        (["--input", points, "--input-cols", "x,y"], "no output folder: give --output"),
        (["--input-cols", "x,y", "--output", o], "no input: give --input PATH or --table"),
        (["--demo", "--input", points, "--output", o], "--demo generates its own input"),
    ]
    for args, message in cases:
        if "--output" not in args and "no output folder" not in message:
            args = [*args, "--output", o]
        line = _error(cli.main_fit, *args, "--no-plots", capsys=capsys)
        assert message in line, (args, line)
    # a catalog table works
    spark.read.parquet(str(points)).createOrReplaceTempView("lake_points")
    code, _, err = _run(
        cli.main_fit,
        "--table",
        "lake_points",
        "--input-cols",
        "x,y",
        "--k",
        "3",
        "--no-plots",
        "--output",
        tmp_path / "t",
        capsys=capsys,
    )
    assert code == 0, err
    assert (
        json.loads((tmp_path / "t" / "report" / "report.json").read_text())["input"]["source"]
        == "table lake_points"
    )


@pytest.mark.compat
def test_score_in_process(fitted, table_dir, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = _run(
        cli.main_score,
        "--model",
        fitted / "model",
        "--input",
        table_dir / "points",
        "--threshold",
        "-4.5",
        "--anomaly-column",
        "odd",
        "--partition-by",
        "region",
        "--output",
        out,
        capsys=capsys,
    )
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["anomaly"]["threshold"] == -4.5 and summary["anomaly"]["column"] == "odd"
    table = ds.dataset(str(out / "predictions"), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 450 and "odd" in table.column_names
    assert table.column("odd").to_numpy(zero_copy_only=False).sum() == summary["anomaly"]["rows"]
    assert sorted(p.name for p in (out / "predictions").iterdir() if p.is_dir()) == [
        f"region=r{i}" for i in range(5)
    ]
    # an interpolated quantile, and the training scores named explicitly
    code, _, err = _run(
        cli.main_score,
        "--model",
        fitted / "model",
        "--input",
        table_dir / "points",
        "--threshold-quantile",
        "0.03",
        "--training-scores",
        fitted / "training_scores.json",
        "--output",
        tmp_path / "s2",
        capsys=capsys,
    )
    assert code == 0, err
    anomaly = json.loads((tmp_path / "s2" / "summary.json").read_text())["anomaly"]
    scores = json.loads((fitted / "training_scores.json").read_text())
    assert anomaly["interpolated"] is True
    assert anomaly["threshold"] == pytest.approx(
        np.interp(0.03, scores["probabilities"], scores["values"])
    )


@pytest.mark.compat
def test_score_errors(fitted, table_dir, tmp_path, capsys, spark):
    points = table_dir / "points"
    predictions = fitted / "predictions"
    nan_rows = tmp_path / "nan"
    spark.createDataFrame([(1.0, 2.0), (float("nan"), 1.0)], "x double, y double").write.parquet(
        str(nan_rows)
    )
    bare_model = tmp_path / "bare" / "model"
    bare_model.parent.mkdir()
    import shutil

    shutil.copytree(fitted / "model", bare_model)
    cases = [
        (["--model", tmp_path / "missing", "--input", points], "model path"),
        (["--model", table_dir, "--input", points], "no saved GaussianMixtureModel"),
        (
            ["--model", fitted / "model", "--input", points, "--input-cols", "x"],
            "the model expects 2 features but input_cols lists 1",
        ),
        (
            ["--model", fitted / "model", "--input", predictions],
            "already has column(s) prediction (--prediction-col)",
        ),
        (
            [
                "--model",
                fitted / "model",
                "--input",
                points,
                "--threshold",
                "-4",
                "--anomaly-column",
                "logLikelihood",
            ],
            "the output column names must differ: --prediction-col prediction, --probability-col "
            "probability, --log-likelihood-col logLikelihood, --anomaly-column logLikelihood",
        ),
        (["--model", fitted / "model", "--input", nan_rows], "1 with NaN, infinite or null"),
        (
            ["--model", bare_model, "--input", points, "--threshold-quantile", "0.01"],
            "no training scores at",
        ),
        (
            [
                "--model",
                fitted / "model",
                "--input",
                points,
                "--threshold",
                "1",
                "--threshold-quantile",
                "0.1",
            ],
            "exclude each other",
        ),
    ]
    for args, message in cases:
        code = 2 if "exclude" in message else 1
        line = _error(
            cli.main_score, *args, "--output", tmp_path / "o", capsys=capsys, code=code, job="score"
        )
        assert message in line, (args, line)
    # renaming the outputs lets predictions be scored again; NaN rows can be skipped
    code, _, err = _run(
        cli.main_score,
        "--model",
        fitted / "model",
        "--input",
        predictions,
        "--prediction-col",
        "p2",
        "--probability-col",
        "pr2",
        "--log-likelihood-col",
        "ll2",
        "--output",
        tmp_path / "again",
        capsys=capsys,
    )
    assert code == 0, err
    code, _, err = _run(
        cli.main_score,
        "--model",
        fitted / "model",
        "--input",
        nan_rows,
        "--handle-invalid",
        "skip",
        "--output",
        tmp_path / "skip",
        capsys=capsys,
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["rows"] == 1 and summary["input"]["skippedRows"] == 1


def test_quantile_threshold_rules():
    scores = {"probabilities": [0.0, 0.01, 0.5, 1.0], "values": [-20.0, -10.0, -5.0, -1.0]}
    assert quantile_threshold(scores, 0.01) == (-10.0, False)
    value, interpolated = quantile_threshold(scores, 0.255)
    assert interpolated and value == pytest.approx(-7.5)


def test_error_lines_of_spark_exceptions():
    class Py4JJavaError(Exception):
        pass

    exc = Py4JJavaError(
        "An error occurred while calling o38.parquet.\n: org.apache.spark.SparkException: "
        "[FAILED_READ_FILE] Could not read footer.\nmore\n\tat org.apache.Foo(Foo.scala:1)\n"
    )
    assert describe_error(exc) == ("SparkException: [FAILED_READ_FILE] Could not read footer.", 1)
    assert describe_error(JobError("bad\nthing")) == ("bad", 1)
    assert describe_error(ConfigError("x")) == ("x", 2)
    assert describe_error(KeyError("k")) == ("KeyError: 'k'", 1)
    assert one_line("a" * 5000) == "a" * 597 + "..."  # cut to 600 characters, said so
    assert one_line("a" * 600) == "a" * 600
    assert one_line("\n  \n  first  \nsecond") == "first"
    assert one_line(" \n ") == "unknown error"
