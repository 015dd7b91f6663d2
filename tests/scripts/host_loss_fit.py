"""A lost executor host mid-fit on local-cluster: the resident engine must recover, and its fit
must be bit-identical to an undisturbed one. Used by tests/test_host_loss.py.

One application (the ~30 s cluster start is paid once), with Spark's failure detection
shortened (``spark.network.timeout``, the heartbeat and its check interval):

1. an input that comes out of a shuffle (generated rows, ``repartition(4)``) is cached and
   counted, so that both executors hold part of it;
2. an undisturbed reference fit (``engine="resident"``, fixed seed, ``tol=0``);
3. for each ``--modes`` entry, the same fit with ``SPARK_GMM_FAULT_INJECTION`` set to it on
   the driver (:mod:`spark_gmm.engine.faults`): the executor of barrier task 0 is SIGSTOPped (JVM,
   pyspark daemon and workers) at its third command, as when its host vanishes. Spark declares
   it lost after the network timeout, the local-cluster Worker replaces it, the barrier stage
   runs again (re-reading the lost cached partitions, recomputed from the shuffle), and the
   driver re-runs the interrupted pass there. The stopped processes are SIGKILLed after the fit
   (and at exit), and the script waits for the cluster to have all its executors again;
4. the same for each ``--one-task-modes`` entry on the input coalesced to one partition (one
   barrier task), against a reference fit of that input ("reference:one-task").

The JSON written (``--out``) has, per fit: the parameters and log-likelihood history as
``float.hex`` strings (every bit), its wall time, the error if it failed, the stage attempts
Spark retried, and for a disturbed fit the stopped pids, the seconds from the stop to the end
of the fit, what became of the stopped processes, and a timeline from Spark's event log
(when the executor was declared lost, when its replacement came, the stage attempts).
"""

import argparse
import atexit
import glob
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback

from _session import REPO_ROOT, add_session_args, make_session

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))

from spark_gmm.engine.faults import kill_stopped, process_state, stopped_pids  # noqa: E402

MODES = ["stop-host-mid-pass", "stop-host-after-reply"]
ONE_TASK = ":one-task"  # the input coalesced to 1 partition: fits "reference:one-task" and
# "one-task:<mode>"
FIT = dict(k=3, seed=7, tol=0.0)
FAULT = "SPARK_GMM_FAULT_INJECTION"

log = logging.getLogger("host_loss_fit")


def _hex(values):
    """Nested lists of floats -> the same nesting of float.hex strings."""
    if isinstance(values, (list, tuple)):
        return [_hex(v) for v in values]
    return float(values).hex()


def _spark_conf(args, event_dir: str) -> dict:
    return {
        "spark.eventLog.enabled": "true",  # what Spark did (EventLog)
        "spark.eventLog.dir": event_dir,
        "spark.eventLog.logBlockUpdates.enabled": "true",
        "spark.eventLog.compress": "false",  # Spark 4 defaults: zstd, rolled into a folder
        "spark.eventLog.rolling.enabled": "false",
        # failure detection: an executor without heartbeats for this long is lost ...
        "spark.network.timeout": f"{args.network_timeout}s",
        "spark.executor.heartbeatInterval": f"{args.heartbeat}s",
        # ... checked this often (default 60 s, which would dominate the recovery time)
        "spark.network.timeoutInterval": f"{args.check_interval}s",
        "spark.scheduler.excludeOnFailure.enabled": "false",  # the replacement may run tasks
    }


def _submit_args(conf: dict) -> None:
    """make_session (tests/scripts/_session.py) takes no extra settings: these go to the
    driver JVM's spark-submit command line."""
    extra = " ".join(f"--conf {k}={v}" for k, v in conf.items())
    current = os.environ.get("PYSPARK_SUBMIT_ARGS", "pyspark-shell")
    os.environ["PYSPARK_SUBMIT_ARGS"] = f"{extra} {current}"


def _executor_ids(sc) -> list:
    ids = sc._jsc.sc().getExecutorIds().mkString(",")  # not statusTracker's: see EventLog
    return sorted(i for i in ids.split(",") if i)


def _wait_for_executors(sc, n: int, seconds: float) -> float:
    """Seconds until the application has ``n`` executors (raises TimeoutError)."""
    start = time.monotonic()
    while len(_executor_ids(sc)) < n:
        if time.monotonic() - start > seconds:
            raise TimeoutError(
                f"executors {_executor_ids(sc)} after {seconds:.0f} s (waited for {n})"
            )
        time.sleep(0.25)
    return time.monotonic() - start


class EventLog:
    """What Spark did, from its event log (spark.eventLog.*): executors added and removed
    (with the reason), stage attempts, failed tasks, where the cached blocks are. (Asking the
    JVM through py4j for executor infos or SparkEnv loads a class missing from the pyspark
    jars -- com.google.protobuf.MessageOrBuilder -- and kills the py4j thread.)"""

    def __init__(self, directory: str):
        self.directory = directory

    def events(self) -> list:
        out = []
        for path in glob.glob(os.path.join(self.directory, "*")):  # one application's
            with open(path) as fh:
                for line in fh:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written
        return out

    def cached_blocks(self, rdd_prefix: str = "rdd_") -> dict:
        """{block: executor} of the RDD blocks held now (the last update of each)."""
        where = {}
        for e in self.events():
            if e.get("Event") != "SparkListenerBlockUpdated":
                continue
            info = e["Block Updated Info"]
            block = info["Block ID"]
            if not block.startswith(rdd_prefix):
                continue
            level = info.get("Storage Level", {})
            held = level.get("Use Memory") or level.get("Use Disk")
            executor = info["Block Manager ID"]["Executor ID"]
            if held:
                where[block] = executor
            elif where.get(block) == executor:
                del where[block]
        return where

    def since(self, start_ms: float, origin: float) -> list:
        """A timeline of the executor, stage and task events after ``start_ms`` (ms since the
        epoch), each with its time in seconds after ``origin`` (s since the epoch)."""
        out = []
        for e in self.events():
            kind = e.get("Event")
            if kind == "SparkListenerExecutorAdded" and e["Timestamp"] >= start_ms:
                out.append((e["Timestamp"], f"executor {e['Executor ID']} added"))
            elif kind == "SparkListenerExecutorRemoved" and e["Timestamp"] >= start_ms:
                out.append(
                    (
                        e["Timestamp"],
                        f"executor {e['Executor ID']} removed: {e.get('Removed Reason', '')}",
                    )
                )
            elif kind == "SparkListenerStageSubmitted":
                info = e["Stage Info"]
                at = info.get("Submission Time")
                if at and at >= start_ms:
                    out.append(
                        (
                            at,
                            f"stage {info['Stage ID']}.{info['Stage Attempt ID']} "
                            f"submitted ({info.get('Number of Tasks')} tasks)",
                        )
                    )
            elif kind == "SparkListenerStageCompleted":
                info = e["Stage Info"]
                at = info.get("Completion Time")
                if at and at >= start_ms:
                    failed = info.get("Failure Reason")
                    out.append(
                        (
                            at,
                            f"stage {info['Stage ID']}.{info['Stage Attempt ID']} "
                            + (
                                f"failed: {failed.splitlines()[0][:200]}" if failed else "completed"
                            ),
                        )
                    )
            elif kind == "SparkListenerTaskEnd":
                reason = e.get("Task End Reason", {})
                info = e.get("Task Info", {})
                at = info.get("Finish Time", 0)
                if reason.get("Reason") != "Success" and at >= start_ms:
                    text = (
                        reason.get("Loss Reason")
                        or reason.get("Description")
                        or reason.get("Kill Reason")
                        or reason.get("Class Name")
                        or ""
                    )
                    out.append(
                        (
                            at,
                            f"task {info.get('Task ID')} of stage {e.get('Stage ID')}"
                            f".{e.get('Stage Attempt ID')} on executor "
                            f"{info.get('Executor ID')}: {reason.get('Reason')} "
                            f"{str(text).splitlines()[0][:200] if text else ''}",
                        )
                    )
        return [
            {"at": round(ms / 1000 - origin, 3), "what": what}
            for ms, what in sorted(out, key=lambda p: p[0])
        ]


class PidWatch:
    """Watches, in the background, the processes a fault stopped (the .pids files of a
    scenario folder): when each one changed state (T: stopped, Z: dead, gone: reaped)."""

    def __init__(self, folder: str, period: float = 0.25):
        self.folder = folder
        self.changes = []  # (time.time(), pid, state)
        self._last = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _run(self, period):
        while not self._stop.wait(period):
            for pids_file in glob.glob(os.path.join(self.folder, "*.pids")):
                for pid, _ in stopped_pids(pids_file):
                    state = process_state(pid)
                    if self._last.get(pid) != state:
                        self._last[pid] = state
                        self.changes.append((time.time(), pid, state))

    def close(self, origin: float) -> list:
        self._stop.set()
        self._thread.join()
        return [
            {"at": round(t - origin, 3), "pid": pid, "state": state}
            for t, pid, state in self.changes
        ]


def _data(spark, n_rows: int, n_features: int):
    """Rows of 3 separated Gaussian blobs, made deterministically, then shuffled round-robin
    into 4 partitions (their contents are deterministic, spark.sql.execution.
    sortBeforeRepartition; their row order depends on the order shuffle blocks arrive in)."""
    from pyspark.sql import functions as F

    base = spark.range(0, n_rows, 1, numPartitions=2)
    blob = (F.col("id") % 3).cast("double")
    cols = [(F.randn(seed=11 + j) + blob * (3.0 + j)).alias(f"x{j}") for j in range(n_features)]
    return base.select(*cols).repartition(4)


def _fit(spark, data, max_iter: int, init_mode: str, group: str):
    from spark_gmm import GaussianMixture

    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    start = time.time()
    try:
        model = GaussianMixture(
            inputCols=list(data.columns),
            maxIter=max_iter,
            initMode=init_mode,
            engine="resident",
            **FIT,
        ).fit(data)
        error = None
    except Exception as exc:  # recorded: the test reports it
        model, error = None, "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.error("fit %s failed: %s", group, error)
    end = time.time()
    out = {"seconds": end - start, "start": start, "end": end, "error": error}
    tracker = sc.statusTracker()
    stages = []
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info else []:
            s = tracker.getStageInfo(stage)
            if s is not None:
                stages.append(
                    {
                        "stage": stage,
                        "name": s.name,
                        "attempt": s.currentAttemptId,
                        "tasks": s.numTasks,
                        "failedTasks": s.numFailedTasks,
                    }
                )
    out["retriedStages"] = sum(1 for s in stages if s["attempt"] > 0)
    out["failedTasks"] = sum(s["failedTasks"] for s in stages)
    out["retried"] = [s for s in stages if s["attempt"] > 0 or s["failedTasks"]]
    if model is not None:
        summary = model.summary
        out.update(
            {
                "engine": summary.engine,
                "numIter": summary.numIter,
                "numDataPasses": summary.numDataPasses,
                "weights": _hex(list(model.weights)),
                "means": _hex(model.means.tolist()),
                "covariances": _hex(model.covariances.tolist()),
                "history": _hex(list(summary.logLikelihoodHistory)),
                "logLikelihood": _hex(summary.logLikelihood),
            }
        )
    return out


def main():
    parser = add_session_args(argparse.ArgumentParser())
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--fault-dir", help="where the fault markers, .pids files and the event log go"
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--one-task-modes",
        default="",
        help="modes to run again on the input coalesced to 1 partition",
    )
    parser.add_argument("--rows", type=int, default=30000)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=12)
    parser.add_argument("--init-mode", default="kmeans")
    parser.add_argument("--network-timeout", type=int, default=10)
    parser.add_argument("--heartbeat", type=int, default=1)
    parser.add_argument("--check-interval", type=int, default=1)
    parser.add_argument("--pass-timeout", type=float, default=600.0)
    parser.add_argument("--replace-timeout", type=float, default=180.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    fault_dir = os.path.abspath(args.fault_dir or tempfile.mkdtemp(prefix="host-loss-"))
    event_dir = os.path.join(fault_dir, "eventlog")
    os.makedirs(event_dir, exist_ok=True)

    def cleanup():  # never leave stopped processes behind
        for pids_file in glob.glob(os.path.join(fault_dir, "*", "*.pids")):
            kill_stopped(pids_file)

    atexit.register(cleanup)

    conf = _spark_conf(args, event_dir)
    _submit_args(conf)
    t0 = time.time()
    spark, _ = make_session(args.master, args.remote, app_name="spark-gmm-host-loss")
    spark.conf.set("spark.gmm.resident.passTimeout", str(args.pass_timeout))
    sc = spark.sparkContext
    events = EventLog(event_dir)
    n_executors = 2
    result = {
        "master": sc.master,
        "conf": {k: sc.getConf().get(k) for k in conf},
        "passTimeout": args.pass_timeout,
        "faultDir": fault_dir,
        "fits": {},
    }
    result["clusterStartSeconds"] = time.time() - t0 + _wait_for_executors(sc, n_executors, 120)

    data = _data(spark, args.rows, args.features).cache()
    result["rows"] = data.count()
    result["cachedBlocks"] = events.cached_blocks()  # {block: executor}: both hold some
    log.info("cached input: %s", result["cachedBlocks"])

    # the fit's input: 4 partitions (2 barrier tasks), or 1 (1 barrier task: the stopped
    # worker has no sibling whose connection closes when Spark ends the failed stage attempt,
    # so only the new attempt's workers can tell the driver)
    inputs = {"": data, ONE_TASK: data.coalesce(1)}
    scenarios = [("", m) for m in args.modes.split(",") if m] + [
        (ONE_TASK, m) for m in args.one_task_modes.split(",") if m
    ]
    for variant in sorted({variant for variant, _ in scenarios}):
        name = "reference" + variant
        result["fits"][name] = _fit(spark, inputs[variant], args.max_iter, args.init_mode, name)
    for variant, mode in scenarios:
        name = variant.lstrip(":") + ":" + mode if variant else mode
        scenario = os.path.join(fault_dir, name.replace(":", "-"))
        os.makedirs(scenario, exist_ok=True)
        before = _executor_ids(sc)
        os.environ[FAULT] = mode
        saved_tempdir = tempfile.tempdir
        tempfile.tempdir = scenario  # the driver names the marker file in gettempdir()
        watch = PidWatch(scenario)
        try:
            fit = _fit(spark, inputs[variant], args.max_iter, args.init_mode, name)
            fit["reference"] = "reference" + variant
        finally:
            tempfile.tempdir = saved_tempdir
            os.environ.pop(FAULT, None)
        markers = [
            m
            for m in glob.glob(os.path.join(scenario, "spark_gmm-fault-*"))
            if "." not in os.path.basename(m)
        ]
        pids_files = glob.glob(os.path.join(scenario, "*.pids"))
        stopped = [pid for f in pids_files for pid, _ in stopped_pids(f)]
        fit["markers"] = len(markers)
        fit["stoppedPids"] = stopped
        fit["stoppedStatesAtEnd"] = {str(pid): process_state(pid) for pid in stopped}
        stop_time = None
        for marker in markers:
            try:
                stop_time = float(open(marker).read().strip())
            except ValueError:
                pass
        if stop_time is not None:
            fit["stopToEndSeconds"] = fit["end"] - stop_time
            fit["stopAfterStartSeconds"] = stop_time - fit["start"]
        fit["killed"] = [pid for f in pids_files for pid in kill_stopped(f)]
        fit["stoppedStates"] = watch.close(stop_time or fit["start"])
        try:
            fit["replaceWaitSeconds"] = _wait_for_executors(sc, n_executors, args.replace_timeout)
        except TimeoutError as exc:
            fit["replaceWaitSeconds"] = None
            fit["replaceError"] = str(exc)
        fit["executorsBefore"] = before
        fit["executorsAfter"] = _executor_ids(sc)
        fit["timeline"] = events.since(fit["start"] * 1000, stop_time or fit["start"])
        result["fits"][name] = fit
        log.info(
            "%s: %s",
            name,
            json.dumps(
                {
                    k: v
                    for k, v in fit.items()
                    if k not in ("weights", "means", "covariances", "history")
                },
                indent=1,
            ),
        )
    result["cachedBlocksAtEnd"] = events.cached_blocks()
    result["totalSeconds"] = time.time() - t0
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    cleanup()
    spark.stop()


if __name__ == "__main__":
    main()
