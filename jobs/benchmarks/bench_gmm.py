"""Seconds per EM iteration: spark_gmm against Spark's built-in GaussianMixture, scikit-learn
and the NumPy kernel alone. A hand-run benchmark, never a test.

    .venv/bin/python jobs/benchmarks/bench_gmm.py [--config NAME] [--rows N --features D --k K
        --covariance-type TYPE] [--max-iter M] [--rows-curve N1,N2,...] [--output DIR]
        [--workdir DIR] [--skip-builtin] [--skip-sklearn]

    # the issue's first configuration, results and plot in /tmp/bench_out:
    .venv/bin/python jobs/benchmarks/bench_gmm.py --config 1m-10d-k8-full --output /tmp/bench_out

One SparkSession (local[2] unless --master) and, for each row count, one Parquet file of
seeded Gaussian blobs (``spark_gmm.datasets.blobs``: centres N(0, 10^2), per-blob standard
deviations in [0.5, 2]) written under --workdir, read back, assembled into a "features" vector
column, repartitioned, cached and counted before any timing. On that cached DataFrame, with
tol=0 and the same maxIter for all:

* spark_gmm (``from spark_gmm import GaussianMixture``) on the engine its defaults choose (the
  driver engine up to 12 MiB of rows, else the resident engine: the whole fit in one barrier
  stage), and as ``spark_gmm_jobPerPass`` with ``engine="jobPerPass"``
  (one Spark job per pass; ``--skip-job-per-pass`` leaves it out);
* Spark's built-in ``pyspark.ml.clustering.GaussianMixture`` (full covariance only: it
  supports nothing else, so other types skip it);
* scikit-learn's GaussianMixture on the data collected to the driver (skipped when the
  estimated working memory exceeds half of MemAvailable);
* the ceiling: ``kernel.accumulate_stats`` + ``kernel.m_step`` on the same collected data in
  this process with BLAS limited to one thread (seconds per iteration per core), divided by
  the cores of --master, so that Spark's overhead shows as a ratio.

Seconds per iteration exclude start-up (validation, initialisation, the final pass) by
differencing: (fastest fit at maxIter=M - fastest fit at maxIter=--short-iter) / (the
iterations those two fits ran: M - short-iter, unless an implementation stopped early, as
the built-in does when its components collapse), after one untimed warm-up fit per
implementation, short and long fits
interleaved over --repeats rounds. For spark_gmm the mean of the per-iteration seconds it logs
(logger "spark_gmm", data pass only) is reported as well. At tiny sizes timing noise can
exceed the iterations' cost: the figure is then None with a warning.

Memory: peak resident set (VmHWM, reset through /proc/PID/clear_refs before each
implementation and sampled every 0.2 s) of the driver's Python process, the JVM and each
PySpark Python worker; plus the workers' own getrusage() ru_maxrss read by a small mapInArrow
probe after the spark_gmm fits (workers are reused between jobs). Per size the built-in runs
first (it starts no Python workers), then spark_gmm, then scikit-learn (driver only).

Final log-likelihood: what each implementation reports (spark_gmm: at the returned
parameters; built-in and scikit-learn: at the parameters of the last E-step, i.e. before the
last M-step) and, when the data fits in the driver, the total log-likelihood of every
returned model evaluated by the same kernel code on the collected data.

Writes results.json, results.csv and seconds_per_iteration.png (when matplotlib imports) to
--output, and prints the JSON. Linux only for the memory figures (/proc).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import common  # before spark_gmm: this checkout's package when it is not installed
import numpy as np

from spark_gmm import GaussianMixture, kernel

# name: (rows, features, k, covariance type); the last four are the configurations.
CONFIGS = {
    "small": (100_000, 10, 8, "full"),
    "1m-10d-k8-full": (1_000_000, 10, 8, "full"),
    "200k-50d-k16-full": (200_000, 50, 16, "full"),
    "100k-20d-k256-full": (100_000, 20, 256, "full"),
    "1m-39d-k1024-diag": (1_000_000, 39, 1024, "diag"),
    "18m-1d-k3-full": (18_000_000, 1, 3, "full"),
}
MB = 1024.0 * 1024.0
IMPLEMENTATIONS = ("spark_gmm", "spark_gmm_jobPerPass", "builtin", "sklearn")


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries the JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def make_blobs(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """n rows of ``spark_gmm.datasets.blobs``: k Gaussian blobs in d dimensions (centres
    ~ N(0, 10^2), per-blob standard deviations uniform in [0.5, 2], ceil(n / k) rows each cut
    to n), float64, in random order."""
    return common.blob_rows(n, d, k, 10.0, seed, scale=(0.5, 2.0))


def write_parquet(workdir: Path, n: int, d: int, k: int, seed: int) -> Dict:
    """Writes the blobs to workdir as one Parquet file of columns f0..f{d-1}, unless a file
    of the same (n, d, k, seed) is already there. Returns its path and whether it was reused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"datasets_blobs_n{n}_d{d}_k{k}_seed{seed}.parquet"
    if path.exists():
        return {"path": str(path), "reused": True}
    started = time.perf_counter()
    X = make_blobs(n, d, k, seed)
    table = pa.table({f"f{j}": X[:, j] for j in range(d)})
    del X
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=100_000)
    tmp.rename(path)
    return {
        "path": str(path),
        "reused": False,
        "write_seconds": round(time.perf_counter() - started, 2),
    }


def load_cached(spark, path: str, d: int, partitions: int):
    """The Parquet file as a cached DataFrame with one vector column "features", spread over
    ``partitions`` partitions and counted (so the cache is filled before any timing)."""
    from pyspark.ml.feature import VectorAssembler

    raw = spark.read.parquet(path)
    assembled = VectorAssembler(inputCols=[f"f{j}" for j in range(d)], outputCol="features")
    df = assembled.transform(raw).select("features").repartition(partitions).cache()
    n = df.count()
    return df, n


def collect_features(df, d: int) -> np.ndarray:
    """The cached "features" column collected to the driver as an (n, d) float64 array."""
    from pyspark.ml.functions import vector_to_array

    from spark_gmm.engine.blocks import list_array_to_numpy

    table = df.select(vector_to_array("features").alias("x")).toArrow()
    return np.ascontiguousarray(list_array_to_numpy(table.column("x"), d))


# --------------------------------------------------------------------------- memory


def _read_status_kb(pid: int, field: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children_map() -> Dict[int, List[int]]:
    """parent pid -> child pids, from /proc/*/stat."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(root: int) -> Dict[int, int]:
    """pid -> parent pid of every descendant of ``root``."""
    children = _children_map()
    out, stack = {}, [root]
    while stack:
        parent = stack.pop()
        for child in children.get(parent, []):
            out[child] = parent
            stack.append(child)
    return out


class MemoryMonitor:
    """Peak resident memory (VmHWM) of the driver, the JVM and the Python workers over a
    phase. ``start()`` resets the peaks of every process it can (clear_refs 5) and samples
    VmHWM every ``interval`` seconds, so workers that start or exit during the phase count
    too; ``stop()`` returns the peaks in MB."""

    def __init__(self, jvm_pid: Optional[int], interval: float = 0.2):
        self.jvm_pid = jvm_pid
        self.interval = interval
        self.available = os.path.exists("/proc/self/status")
        self._peaks: Dict[int, int] = {}
        self._roles: Dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.reset_ok = True

    def _processes(self) -> Dict[int, str]:
        """pid -> role ("driver", "jvm", "python daemon", "python worker")."""
        procs = {os.getpid(): "driver"}
        if self.jvm_pid:
            procs[self.jvm_pid] = "jvm"
            for pid, parent in _descendants(self.jvm_pid).items():
                # The PySpark daemon is the JVM's child; the workers are forked from it.
                procs[pid] = "python daemon" if parent == self.jvm_pid else "python worker"
        return procs

    def _sample(self) -> None:
        for pid, role in self._processes().items():
            kb = _read_status_kb(pid, "VmHWM")
            if kb is not None:
                self._peaks[pid] = max(self._peaks.get(pid, 0), kb)
                self._roles[pid] = role

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        if not self.available:
            return
        self._peaks, self._roles = {}, {}
        for pid in self._processes():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.reset_ok = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> Dict:
        if not self.available:
            return {"error": "no /proc: memory not measured"}
        self._stop.set()
        self._thread.join()
        self._sample()

        def peak(role):
            values = [kb for pid, kb in self._peaks.items() if self._roles[pid] == role]
            return round(max(values) / 1024.0, 1) if values else None

        workers = [kb for pid, kb in self._peaks.items() if self._roles[pid] == "python worker"]
        return {
            "driver_peak_mb": peak("driver"),
            "jvm_peak_mb": peak("jvm"),
            "python_worker_peak_mb": peak("python worker"),
            "python_workers_seen": len(workers),
            "python_workers_sum_of_peaks_mb": round(sum(workers) / 1024.0, 1) if workers else None,
            "python_daemon_peak_mb": peak("python daemon"),
            "peaks_reset_at_start": self.reset_ok,
        }


def probe_worker_rusage(spark, tasks: int) -> Dict:
    """ru_maxrss (getrusage RUSAGE_SELF) of the Python workers that run a tiny mapInArrow job
    of ``tasks`` partitions: the peak over each worker's life since its last peak reset."""

    def report(batches):
        import os as _os
        import resource as _resource

        import pyarrow as _pa

        for _ in batches:
            pass
        rss_kb = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
        yield _pa.RecordBatch.from_pydict({"pid": [_os.getpid()], "maxrss_kb": [rss_kb]})

    rows = (
        spark.range(0, tasks, numPartitions=tasks)
        .mapInArrow(report, "pid long, maxrss_kb long")
        .collect()
    )
    per_pid = {}
    for r in rows:
        per_pid[r["pid"]] = max(per_pid.get(r["pid"], 0), r["maxrss_kb"])
    return {
        "workers": len(per_pid),
        "max_mb": round(max(per_pid.values()) / 1024.0, 1),
        "per_worker_mb": sorted(round(v / 1024.0, 1) for v in per_pid.values()),
    }


# --------------------------------------------------------------------------- fits


class IterationLog(logging.Handler):
    """Collects the seconds of spark_gmm's "EM iteration ..." INFO lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seconds: List[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if (
            record.levelno == logging.INFO
            and str(record.msg).startswith("EM iteration")
            and record.args
        ):
            self.seconds.append(float(record.args[-1]))


def timed_fits(
    fit,
    short_iter: int,
    max_iter: int,
    warmup: bool,
    repeats: int,
    iterations: Callable[[object], int],
) -> Dict:
    """Runs ``fit(max_iter) -> model`` once untimed (warm-up), then ``repeats`` rounds of the
    short and the long fit, interleaved; seconds per iteration by differencing the fastest
    short and the fastest long fit, divided by the difference of the iterations they ran
    (``iterations(model)``: an implementation that stops early, e.g. the built-in when its
    components collapse, ran fewer than maxIter). A difference <= 0 (noise larger than the
    iterations' cost, or no extra iteration) is reported as None with a warning."""
    if warmup:
        fit(short_iter)
    timings: Dict[int, List[float]] = {short_iter: [], max_iter: []}
    fastest: Dict[int, object] = {}
    for _ in range(repeats):
        for m in (short_iter, max_iter):
            started = time.perf_counter()
            out = fit(m)
            timings[m].append(time.perf_counter() - started)
            if timings[m][-1] == min(timings[m]):
                fastest[m] = out
    difference = min(timings[max_iter]) - min(timings[short_iter])
    ran = {m: int(iterations(model)) for m, model in fastest.items()}
    extra = ran[max_iter] - ran[short_iter]
    result = {
        "seconds_per_iteration": difference / extra if difference > 0 and extra > 0 else None,
        "fit_seconds": {str(m): [round(t, 3) for t in ts] for m, ts in timings.items()},
        "iterations_of_timed_fits": {str(m): n for m, n in ran.items()},
        "model": fastest[max_iter],
    }
    if extra <= 0:
        result["warning"] = (
            f"the maxIter={max_iter} fit ran no more iterations than the "
            f"maxIter={short_iter} one ({ran[max_iter]})"
        )
    elif difference <= 0:
        result["warning"] = (
            "the long fit was not slower than the short one: timing noise "
            "exceeds the iterations' cost; use more rows or --repeats"
        )
    return result


def run_spark_gmm(df, args, k: int, covariance_type: str, engine: str = "auto") -> Dict:
    """spark_gmm: timings, per-iteration log seconds of the long fit, reported log-likelihood."""
    logger = logging.getLogger("spark_gmm")
    handler = IterationLog()
    logs: Dict[int, List[List[float]]] = {}

    def fit(m):
        handler.seconds = []
        model = GaussianMixture(
            k=k,
            covarianceType=covariance_type,
            maxIter=m,
            tol=0.0,
            seed=args.seed,
            initMode=args.init_mode,
            engine=engine,
        ).fit(df)
        logs.setdefault(m, []).append(list(handler.seconds))
        return model

    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        out = timed_fits(
            fit,
            args.short_iter,
            args.max_iter,
            not args.no_warmup,
            args.repeats,
            lambda model: model.summary.numIter,
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    model = out.pop("model")
    long_fits = logs.get(args.max_iter, [])  # the timed long fits (the warm-up is short)
    log_seconds = [s for fit_seconds in long_fits for s in fit_seconds]
    summary = model.summary
    out.update(
        {
            "seconds_per_iteration_log": float(np.mean(log_seconds)) if log_seconds else None,
            "iteration_seconds_log": [[round(s, 3) for s in f] for f in long_fits],
            "num_iter": summary.numIter,
            "num_data_passes": summary.numDataPasses,
            "engine": summary.engine,
            "num_recovered_components": summary.numRecoveredComponents,
            "log_likelihood_reported": summary.logLikelihood,
            "log_likelihood_reported_at": "returned parameters",
            "mean_log_likelihood_history": list(summary.logLikelihoodHistory),
            "params": kernel.MixtureParams(
                np.asarray(model.weights),
                np.asarray(model.means),
                np.asarray(model.covariances),
                covariance_type,
            ),
        }
    )
    return out


def run_builtin(df, args, k: int) -> Dict:
    """Spark's built-in GaussianMixture (full covariance): timings, reported log-likelihood."""
    from pyspark.ml.clustering import GaussianMixture as BuiltinGMM

    def fit(m):
        return BuiltinGMM(k=k, maxIter=m, tol=0.0, seed=args.seed).fit(df)

    out = timed_fits(
        fit,
        args.short_iter,
        args.max_iter,
        not args.no_warmup,
        args.repeats,
        lambda model: model.summary.numIter,
    )
    model = out.pop("model")
    gaussians = model.gaussians
    out.update(
        {
            "num_iter": model.summary.numIter,
            "log_likelihood_reported": model.summary.logLikelihood,
            "log_likelihood_reported_at": "parameters of the last E-step (before the last M-step)",
            "params": kernel.MixtureParams(
                np.asarray(model.weights),
                np.asarray([g.mean.toArray() for g in gaussians]),
                np.asarray([g.cov.toArray() for g in gaussians]),
                "full",
            ),
        }
    )
    return out


def sklearn_fits_in_memory(n: int, d: int, k: int) -> Optional[str]:
    """None if scikit-learn's working set (X, about four (n, k) arrays and an (n, d)
    temporary) fits in half of MemAvailable, else the reason to skip it."""
    need = 8.0 * (2 * n * d + 4 * n * k)
    available = _read_meminfo_kb("MemAvailable")
    if available is None:
        return None
    if need > 0.5 * available * 1024:
        return (
            f"needs about {need / MB:.0f} MB, more than half of MemAvailable "
            f"({available / 1024:.0f} MB)"
        )
    return None


def _read_meminfo_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_sklearn(X: np.ndarray, args, k: int, covariance_type: str) -> Dict:
    """scikit-learn's GaussianMixture on the collected data (BLAS threads as the process has
    them): timings, reported log-likelihood."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGMM
    from threadpoolctl import threadpool_info

    init = "k-means++" if args.init_mode == "k-means++" else "kmeans"

    def fit(m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return SkGMM(
                n_components=k,
                covariance_type=covariance_type,
                max_iter=m,
                tol=0.0,
                reg_covar=1e-6,
                init_params=init,
                random_state=args.seed,
            ).fit(X)

    out = timed_fits(
        fit,
        args.short_iter,
        args.max_iter,
        not args.no_warmup,
        args.repeats,
        lambda model: model.n_iter_,
    )
    model = out.pop("model")
    out.update(
        {
            "num_iter": int(model.n_iter_),
            "init_params": init,
            "blas_threads": sorted(
                {i.get("num_threads") for i in threadpool_info() if i.get("user_api") == "blas"}
            ),
            "log_likelihood_reported": float(model.lower_bound_) * X.shape[0],
            "log_likelihood_reported_at": "parameters of the last E-step (lower_bound_ * rows)",
            "mean_log_likelihood_history": [float(v) for v in getattr(model, "lower_bounds_", [])],
            "params": kernel.MixtureParams(
                model.weights_, model.means_, model.covariances_, covariance_type
            ),
        }
    )
    return out


def kernel_ceiling(X: np.ndarray, params: "kernel.MixtureParams", repeats: int, cores: int) -> Dict:
    """One EM iteration (accumulate_stats + m_step) of the NumPy kernel over all of X in this
    process with BLAS at one thread: the best of ``repeats`` = seconds per iteration per core."""
    from threadpoolctl import threadpool_limits

    times = []
    with threadpool_limits(limits=1):
        for _ in range(repeats):
            started = time.perf_counter()
            kernel.m_step(kernel.accumulate_stats(X, None, params), 1e-6)
            times.append(time.perf_counter() - started)
    one_core = min(times)
    return {
        "seconds_per_iteration_one_core": one_core,
        "all_timings": [round(t, 3) for t in times],
        "cores": cores,
        "ceiling_seconds_per_iteration": one_core / cores,
    }


def total_log_likelihood(X: np.ndarray, params: "kernel.MixtureParams") -> float:
    """Sum of log p(x_i) under ``params``, by the kernel's E-step in row blocks."""
    block = kernel.default_block_rows(params.k, params.d, params.covariance_type)
    total = 0.0
    for start in range(0, X.shape[0], block):
        log_prob_norm, _ = kernel.e_step(X[start : start + block], params)
        total += float(log_prob_norm.sum())
    return total


def describe_params(params: "kernel.MixtureParams") -> Dict:
    """Signs of a collapsed fit: the smallest weight, near-empty components, distinct means,
    the smallest covariance eigenvalue."""
    covs = params.full_covariances()
    return {
        "min_weight": float(params.weights.min()),
        "components_below_1e-6_weight": int((params.weights < 1e-6).sum()),
        "distinct_means": int(len(np.unique(params.means.round(6), axis=0))),
        "min_covariance_eigenvalue": float(min(np.linalg.eigvalsh(c).min() for c in covs)),
    }


# --------------------------------------------------------------------------- one size


def bench_size(
    spark, monitor: MemoryMonitor, args, n: int, d: int, k: int, covariance_type: str, cores: int
) -> Dict:
    """Every implementation at one row count: returns the record for results.json."""
    record = {
        "rows": n,
        "features": d,
        "k": k,
        "covariance_type": covariance_type,
        "max_iter": args.max_iter,
        "short_iter": args.short_iter,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    record["data"] = write_parquet(Path(args.workdir), n, d, k, args.seed)
    progress(f"rows={n} d={d} k={k} {covariance_type}: parquet {record['data']}")
    started = time.perf_counter()
    df, counted = load_cached(spark, record["data"]["path"], d, args.partitions)
    record["data"].update(
        {
            "cached_rows": counted,
            "partitions": df.rdd.getNumPartitions(),
            "cache_seconds": round(time.perf_counter() - started, 2),
        }
    )
    results: Dict[str, Dict] = {}
    params: Dict[str, "kernel.MixtureParams"] = {}

    if args.skip_builtin:
        results["builtin"] = {"skipped": "--skip-builtin"}
    elif covariance_type != "full":
        results["builtin"] = {
            "skipped": f"the built-in supports full covariance only, not {covariance_type}"
        }
    else:
        progress("built-in fits")
        monitor.start()
        out = run_builtin(df, args, k)
        out["memory"] = monitor.stop()
        params["builtin"] = out.pop("params")
        results["builtin"] = out

    progress("spark_gmm fits")
    monitor.start()
    out = run_spark_gmm(df, args, k, covariance_type)
    probe = probe_worker_rusage(spark, 2 * cores)
    out["memory"] = monitor.stop()
    out["memory"]["python_worker_ru_maxrss_probe"] = probe
    params["spark_gmm"] = out.pop("params")
    results["spark_gmm"] = out

    if args.skip_job_per_pass:
        results["spark_gmm_jobPerPass"] = {"skipped": "--skip-job-per-pass"}
    else:
        progress("spark_gmm fits, engine=jobPerPass")
        monitor.start()
        out = run_spark_gmm(df, args, k, covariance_type, engine="jobPerPass")
        out["memory"] = monitor.stop()
        params["spark_gmm_jobPerPass"] = out.pop("params")
        results["spark_gmm_jobPerPass"] = out

    progress("collecting the data to the driver")
    started = time.perf_counter()
    X = collect_features(df, d)
    record["data"]["collect_seconds"] = round(time.perf_counter() - started, 2)
    df.unpersist()

    too_big = sklearn_fits_in_memory(n, d, k)
    if args.skip_sklearn:
        results["sklearn"] = {"skipped": "--skip-sklearn"}
    elif too_big:
        results["sklearn"] = {"skipped": too_big}
    else:
        progress("scikit-learn fits")
        monitor.start()
        out = run_sklearn(X, args, k, covariance_type)
        # Only the driver works here: the JVM and the idle workers keep what they held.
        out["memory"] = {
            key: value
            for key, value in monitor.stop().items()
            if key.startswith("driver") or key == "peaks_reset_at_start"
        }
        params["sklearn"] = out.pop("params")
        results["sklearn"] = out

    progress("NumPy kernel ceiling")
    ceiling = kernel_ceiling(X, params["spark_gmm"], args.kernel_repeats, cores)
    record["kernel"] = ceiling

    progress("evaluating every model's log-likelihood on the collected data")
    builtin_spi = results["builtin"].get("seconds_per_iteration")
    for name, res in results.items():
        if name not in params:
            continue
        try:
            res["log_likelihood_evaluated"] = total_log_likelihood(X, params[name])
        except Exception as exc:  # e.g. a singular covariance from a collapsed fit
            res["log_likelihood_evaluated"] = None
            res["evaluation_error"] = f"{type(exc).__name__}: {exc}"
        res["components"] = describe_params(params[name])
        spi = res["seconds_per_iteration"]
        res["ratio_to_builtin"] = spi / builtin_spi if spi and builtin_spi else None
        res["ratio_to_kernel_ceiling"] = (
            spi / ceiling["ceiling_seconds_per_iteration"] if spi else None
        )
    ours = results["spark_gmm"]
    log_spi = ours.get("seconds_per_iteration_log")
    if log_spi:
        ours["ratio_to_builtin_log"] = log_spi / builtin_spi if builtin_spi else None
        ours["ratio_to_kernel_ceiling_log"] = log_spi / ceiling["ceiling_seconds_per_iteration"]
    del X
    record["implementations"] = results
    record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return record


# --------------------------------------------------------------------------- output


CSV_FIELDS = [
    "rows",
    "features",
    "k",
    "covariance_type",
    "max_iter",
    "implementation",
    "seconds_per_iteration",
    "seconds_per_iteration_log",
    "ratio_to_builtin",
    "ratio_to_kernel_ceiling",
    "log_likelihood_reported",
    "log_likelihood_evaluated",
    "driver_peak_mb",
    "jvm_peak_mb",
    "python_worker_peak_mb",
    "skipped",
]


def csv_rows(records: List[Dict]) -> List[Dict]:
    """One row per (size, implementation), the kernel and its ceiling included."""
    rows = []
    for rec in records:
        base = {key: rec[key] for key in ("rows", "features", "k", "covariance_type", "max_iter")}
        for name in IMPLEMENTATIONS:
            res = rec["implementations"].get(name, {})
            mem = res.get("memory", {})
            rows.append(
                {
                    **base,
                    "implementation": name,
                    **{f: res.get(f) for f in CSV_FIELDS if f in res},
                    **{
                        f: mem.get(f)
                        for f in ("driver_peak_mb", "jvm_peak_mb", "python_worker_peak_mb")
                    },
                }
            )
        kern = rec["kernel"]
        rows.append(
            {
                **base,
                "implementation": "numpy_kernel_one_core",
                "seconds_per_iteration": kern["seconds_per_iteration_one_core"],
            }
        )
        rows.append(
            {
                **base,
                "implementation": f"numpy_kernel_ceiling_{kern['cores']}_cores",
                "seconds_per_iteration": kern["ceiling_seconds_per_iteration"],
            }
        )
    return rows


def plot(records: List[Dict], path: Path) -> Optional[str]:
    """Seconds per iteration against rows, one line per implementation; returns a message
    instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    rows = [r["rows"] for r in records]
    series = {
        name: [r["implementations"][name].get("seconds_per_iteration") for r in records]
        for name in IMPLEMENTATIONS
    }
    series["NumPy kernel, 1 core"] = [
        r["kernel"]["seconds_per_iteration_one_core"] for r in records
    ]
    series[f"ceiling ({records[0]['kernel']['cores']} cores)"] = [
        r["kernel"]["ceiling_seconds_per_iteration"] for r in records
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in series.items():
        points = [(x, y) for x, y in zip(rows, values) if y is not None]
        if points:
            style = "--" if "kernel" in name or "ceiling" in name else "-"
            ax.plot(*zip(*points), style, marker="o", label=name)
    first = records[0]
    ax.set_xlabel("rows")
    ax.set_ylabel("seconds per EM iteration")
    ax.set_title(
        f"d={first['features']}, k={first['k']}, {first['covariance_type']}, "
        f"maxIter={first['max_iter']}, tol=0"
    )
    if len(records) > 1:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_outputs(result: Dict, output: Path) -> None:
    """results.json, results.csv and seconds_per_iteration.png in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "results.json", "w") as f:
        json.dump(result, f, indent=2)
    with open(output / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in csv_rows(result["runs"]):
            writer.writerow({key: row.get(key) for key in CSV_FIELDS})
    message = plot(result["runs"], output / "seconds_per_iteration.png")
    if message:
        progress(message)


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configurations: "
        + "; ".join(f"{name} = {n} x {d}, k={k}, {t}" for name, (n, d, k, t) in CONFIGS.items()),
    )
    parser.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        default="small",
        help="preset size (default small); --rows etc. override its values",
    )
    parser.add_argument("--rows", type=int)
    parser.add_argument("--features", type=int)
    parser.add_argument("--k", type=int)
    parser.add_argument("--covariance-type", choices=["full", "diag", "tied", "spherical"])
    parser.add_argument(
        "--rows-curve",
        help="comma-separated row counts to run in turn "
        "(replaces --rows), e.g. 100000,200000,400000",
    )
    parser.add_argument("--max-iter", type=int, default=5, help="EM iterations (default 5)")
    parser.add_argument(
        "--short-iter",
        type=int,
        default=1,
        help="maxIter of the short fit subtracted out (default 1)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed fits per maxIter; the fastest counts (default 1)",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed warm-up fit of each implementation",
    )
    parser.add_argument("--kernel-repeats", type=int, default=3)
    parser.add_argument(
        "--init-mode",
        default="k-means++",
        help="spark_gmm initMode (default k-means++; scikit-learn uses "
        "k-means++ then, else kmeans)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument(
        "--partitions",
        type=int,
        help="partitions of the cached data (default 2 x the master's cores)",
    )
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument(
        "--workdir",
        default="/tmp/spark_gmm_bench",
        help="where the Parquet data is written (and reused)",
    )
    parser.add_argument(
        "--output", help="directory for results.json, results.csv and seconds_per_iteration.png"
    )
    parser.add_argument("--skip-builtin", action="store_true")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument(
        "--skip-job-per-pass",
        action="store_true",
        help="leave out spark_gmm with engine='jobPerPass'",
    )
    args = parser.parse_args(argv)
    if args.max_iter <= args.short_iter or args.short_iter < 1:
        parser.error("need 1 <= --short-iter < --max-iter")
    return args


def master_cores(master: str) -> int:
    """Cores of a local[N] / local[*] master (os.cpu_count() otherwise)."""
    if master.startswith("local[") and master.endswith("]"):
        inner = master[6:-1].split(",")[0]
        return (os.cpu_count() or 1) if inner == "*" else int(inner)
    return 1 if master == "local" else (os.cpu_count() or 1)


def source_state() -> Dict:
    """The commit of the checkout this script belongs to and the spark_gmm files that differ
    from it (the benchmark measures the working tree as it is)."""
    import subprocess

    def git(*cmd):
        try:
            return subprocess.run(
                ["git", *cmd], cwd=common.REPO, capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None

    changed = git("status", "--porcelain", "--", "spark_gmm")
    return {
        "commit": git("rev-parse", "HEAD"),
        "spark_gmm_uncommitted": changed.splitlines() if changed else [],
    }


def jvm_pid(spark) -> Optional[int]:
    try:
        return int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    except Exception:
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    n, d, k, covariance_type = CONFIGS[args.config]
    n = args.rows or n
    d = args.features or d
    k = args.k or k
    covariance_type = args.covariance_type or covariance_type
    sizes = [int(s) for s in args.rows_curve.split(",")] if args.rows_curve else [n]
    cores = master_cores(args.master)
    args.partitions = args.partitions or 2 * cores

    import pyspark
    import sklearn

    started = time.perf_counter()
    spark = common.session(
        args.master,
        conf={
            "spark.app.name": "bench_gmm",
            "spark.driver.memory": args.driver_memory,
            "spark.sql.shuffle.partitions": str(args.partitions),
        },
    )
    monitor = MemoryMonitor(jvm_pid(spark))
    result = {
        "settings": {
            "config": args.config,
            "rows": sizes,
            "features": d,
            "k": k,
            "covariance_type": covariance_type,
            "max_iter": args.max_iter,
            "tol": 0.0,
            "short_iter": args.short_iter,
            "repeats": args.repeats,
            "warmup": not args.no_warmup,
            "init_mode": args.init_mode,
            "seed": args.seed,
            "master": args.master,
            "cores": cores,
            "partitions": args.partitions,
            "driver_memory": args.driver_memory,
            "python_worker_reuse": spark.sparkContext.getConf().get(
                "spark.python.worker.reuse", "true (default)"
            ),
        },
        "environment": {
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "pyspark": pyspark.__version__,
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
            "source": source_state(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
        },
        "definitions": {
            "seconds_per_iteration": "(fit seconds at max_iter - at short_iter) / (iterations "
            "the two fits ran: max_iter - short_iter unless an "
            "implementation stopped early), after a warm-up fit",
            "seconds_per_iteration_log": "spark_gmm only: mean of its logged per-iteration "
            "seconds over the timed long fits (the data pass of "
            "each EM iteration)",
            "ratio_to_builtin": "seconds_per_iteration / the built-in's (below 1 = faster)",
            "ratio_to_kernel_ceiling": "seconds_per_iteration / (NumPy kernel seconds per "
            "iteration on one core / cores)",
            "log_likelihood_evaluated": "total log-likelihood of the returned model on the "
            "collected data, by the same kernel code for all",
            "memory": "peak RSS (VmHWM) in MB during that implementation's fits, reset at "
            "its start; a process idle in the phase shows what it still holds. "
            "Order per size: built-in, spark_gmm, scikit-learn (driver only)",
        },
        "runs": [],
    }
    try:
        for rows in sizes:
            result["runs"].append(
                bench_size(spark, monitor, args, rows, d, k, covariance_type, cores)
            )
    finally:
        spark.stop()
    result["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    # clear_refs resets this peak too: it covers the driver since the last phase started.
    result["environment"]["driver_ru_maxrss_mb_last_phase"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1
    )
    result["environment"]["total_seconds"] = round(time.perf_counter() - started, 1)
    if args.output:
        write_outputs(result, Path(args.output))
        progress(f"wrote {args.output}/results.json, results.csv, seconds_per_iteration.png")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
