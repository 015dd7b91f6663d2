"""Smoke runs of the hand-run benchmarks in jobs/benchmarks/ on tiny data: they still run
against the current code and report every figure they document. Timings are never asserted."""

import json
import math

import pytest

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "jobs" / "benchmarks"
pytestmark = pytest.mark.slow


def test_bench_gmm_reports_every_implementation(run_script, tmp_path):
    out = tmp_path / "out"
    run_script(
        BENCHMARKS / "bench_gmm.py",
        "--rows",
        5000,
        "--max-iter",
        2,
        "--no-warmup",
        "--workdir",
        tmp_path / "data",
        "--output",
        out,
    )
    result = json.loads((out / "results.json").read_text())
    (run,) = result["runs"]
    assert run["rows"] == 5000 and run["kernel"]["ceiling_seconds_per_iteration"] > 0
    for name in ("builtin", "spark_gmm", "spark_gmm_jobPerPass", "sklearn"):
        figures = run["implementations"][name]
        assert figures["num_iter"] == 2, name
        assert math.isfinite(figures["log_likelihood_evaluated"]), name
    ours = run["implementations"]["spark_gmm"]
    per_pass = run["implementations"]["spark_gmm_jobPerPass"]
    # 5,000 x 10 rows are within the driver engine's default limit
    assert (ours["engine"], per_pass["engine"]) == ("driver", "jobPerPass")
    assert ours["log_likelihood_reported"] == per_pass["log_likelihood_reported"]
    assert ours["memory"]["python_worker_peak_mb"] > 0
    assert (out / "results.csv").read_text().count("\n") >= 4  # header + one row each


def test_bench_pass_read_times_every_form(run_script):
    """Every read form reads every row and every EM pass sums the same statistics: the
    timings compare the forms doing the same work."""
    proc = run_script(BENCHMARKS / "bench_pass_read.py", "--rows", 20000, "--repeats", 1)
    result = json.loads(proc.stdout)
    for key in (
        "empty_job_seconds",
        "read_array_rows_seconds",
        "read_packed_blocks_arrow_seconds",
        "read_packed_blocks_rdd_seconds",
        "em_pass_seconds_arrow_blocks",
        "em_pass_seconds_rdd_blocks",
        "em_pass_seconds_rdd_coalesced",
    ):
        assert key in result, key
    assert result["rows_read"] == {
        "array_rows": 20000,
        "packed_blocks_arrow": 20000,
        "packed_blocks_rdd": 20000,
    }
    passes = result["em_pass"]
    assert {p["weight_sum"] for p in passes.values()} == {20000.0}
    # the same blocks in two containers: bit-identical; coalesced partitions: the same sum
    # in another order
    arrow, rdd = passes["arrow_blocks"], passes["rdd_blocks"]
    assert arrow["log_likelihood"] == rdd["log_likelihood"]
    assert passes["rdd_coalesced"]["log_likelihood"] == pytest.approx(
        rdd["log_likelihood"], rel=1e-12
    )
    by_block = result["accumulate_stats_log_likelihood_by_block"]
    assert len(by_block) >= 4
    first = next(iter(by_block.values()))
    assert all(v == pytest.approx(first, rel=1e-12) for v in by_block.values())


def test_bench_missing_reports_both_fractions(run_script, tmp_path):
    """One JSON line per fraction of missing cells, counting the rows and patterns it made,
    and the package it measured."""
    proc = run_script(
        BENCHMARKS / "bench_missing.py",
        "--rows",
        3000,
        "--features",
        4,
        "--k",
        3,
        "--iters",
        2,
        "--repeats",
        1,
        "--data",
        tmp_path / "data",
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    complete, missing, package = lines
    assert complete["missing_cells"] == 0.0 and complete["rows_with_missing"] == 0
    assert complete["missing_patterns"] == 0 and complete["s_per_iter"] > 0
    # each of 4 cells missing with probability 0.2: 1 - 0.8**4 = 59 % of the rows
    assert 0.5 < missing["rows_with_missing"] / 3000 < 0.68
    assert 10 <= missing["missing_patterns"] <= 14  # 2**4 - 2 possible
    assert package["spark_gmm"].endswith("spark_gmm")


def test_bench_connect_fits_alike_on_both_sessions(run_script, tmp_path, connect_url):
    """The same fit on a classic session and through the session's Connect server (both on the
    resident engine) ends at the same log-likelihood."""
    proc = run_script(
        BENCHMARKS / "bench_connect.py",
        "--rows",
        5000,
        "--max-iter",
        2,
        "--repeats",
        1,
        "--workdir",
        tmp_path,
        "--remote",
        connect_url,
    )
    result = json.loads(proc.stdout)
    classic, connect = result["classic"]["spark_gmm"], result["connect"]["spark_gmm"]
    assert classic["num_iter"] == connect["num_iter"] == 2
    assert connect["log_likelihood_reported"] == pytest.approx(
        classic["log_likelihood_reported"], rel=1e-12
    )
    assert result["connect"]["builtin"]["num_iter"] == 2
