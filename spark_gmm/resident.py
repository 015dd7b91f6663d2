"""The resident pass engine: a fit's rows read once into the Python workers of one barrier
stage, which then run every pass of the fit for the driver.

How it runs:

* The fit's prepared rows are tagged with their partition and order and shuffled to
  ``n_tasks`` barrier tasks, each task cutting each partition into the blocks the
  job-per-pass engine reads; from ``PACK_VALUES`` values on, each partition is packed into
  those blocks in its own task first (:func:`spark_gmm.blocks.pack`) and the blocks are
  shuffled instead of the rows. The tasks, never more than the cluster can run at once (a
  ``mapInArrow`` with ``barrier=True``, so classic sessions and Spark Connect share one path),
  hold the blocks. The barrier stage reads a shuffle and ends in one, so Spark retries it
  whole when a task fails, re-reading the shuffled data rather than the source.
* Each task connects to a coordinator on the driver and answers commands: pass functions and
  parameters (pickled) come down, statistics (float64 bytes) go up. The driver sums them per
  partition in partition order with :func:`spark_gmm.em.ordered_sum`, so the result is
  bit-identical to the job-per-pass engine on the same partitions.
* Connections authenticate both ways with a fresh random key per fit (the HMAC challenges of
  :mod:`multiprocessing.connection`) before anything else is read; the key travels only inside
  the task closure and is never logged or written. Every message has a size bound, and the
  driver never unpickles what a worker sends.
* Faults: a lost worker makes the driver wait for Spark's retry of the stage and run the
  interrupted pass again there; a worker that does not answer within the pass timeout, or a
  stage that cannot start within the connect timeout, cancels the job with a clear error (the
  fit then falls back to the job-per-pass engine when nothing has run yet).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge, wait
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_gmm.blocks import BLOCKS_SCHEMA, FEATURES, WEIGHT, pack
from spark_gmm.em import FAULT_INJECTION, GatherFunction, PassEngine, PassFunction, \
    _set_job_description, _tree_scale, in_order, ordered_sum
from spark_gmm.resident_worker import _HEADER, MAX_COMMAND_BYTES, MAX_HELLO_BYTES, _warm, \
    _worker

log = logging.getLogger("spark_gmm")

# Spark configuration keys (seconds): how long the barrier stage may take to start and connect
# (it includes reading and shuffling the data), and how long one pass may take.
CONNECT_TIMEOUT_CONF = "spark.gmm.resident.connectTimeout"
PASS_TIMEOUT_CONF = "spark.gmm.resident.passTimeout"
CONNECT_TIMEOUT = 300.0
PASS_TIMEOUT = 3600.0
CLOSE_SECONDS = 30.0  # the job's end after the workers stopped, at most; then it is cancelled
HANDSHAKE_SECONDS = 20.0  # an accepted connection must authenticate and say hello by then
# From this many values (rows x (features + 1)), the rows are packed into blocks before the
# shuffle to the barrier tasks, rather than shuffled row by row.
PACK_VALUES = 1 << 22

class ResidentUnavailable(RuntimeError):
    """The barrier stage could not start (or its workers could not connect): nothing has run
    on it, so the fit can use the job-per-pass engine instead."""


class ResidentFailure(RuntimeError):
    """The resident engine failed mid-fit (a hung worker, a stage Spark gave up retrying)."""


@dataclass(frozen=True)
class ResidentSettings:
    n_tasks: int
    connect_timeout: float = CONNECT_TIMEOUT
    pass_timeout: float = PASS_TIMEOUT
    bind_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    fault: Optional[Tuple[str, str]] = None  # test-only: (SPARK_GMM_FAULT_INJECTION, marker)


# --------------------------------------------------------------------------- worker side


# --------------------------------------------------------------------------- placement


def _murmur3_int(value: int, seed: int = 42) -> int:
    """Spark's Murmur3_x86_32.hashInt (what ``repartition(n, column)`` hashes an int with)."""

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF

    k1 = rotl((value & 0xFFFFFFFF) * 0xCC9E2D51 & 0xFFFFFFFF, 15) * 0x1B873593 & 0xFFFFFFFF
    h1 = (rotl(seed ^ k1, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF
    h1 ^= 4
    h1 = ((h1 ^ (h1 >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
    h1 = ((h1 ^ (h1 >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 >= 1 << 31 else h1


def task_keys(n_tasks: int) -> List[int]:
    """Keys whose hash partitioning sends key number ``t`` to shuffle partition ``t``, so that
    ``repartition(n_tasks, key)`` spreads the fit's partitions evenly over the tasks."""
    keys: Dict[int, int] = {}
    value = 0
    while len(keys) < n_tasks:
        keys.setdefault(_murmur3_int(value) % n_tasks, value)
        value += 1
    return [keys[t] for t in range(n_tasks)]


# --------------------------------------------------------------------------- driver side


class _Coordinator:
    """The driver's listening socket: accepts connections, authenticates each (both ways)
    with the fit's key, reads its hello, and queues (hello, connection)."""

    def __init__(self, bind_host: str, key: bytes):
        self.key = key
        self.server = socket.create_server((bind_host, 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.ready: "queue.Queue[Tuple[dict, Connection]]" = queue.Queue()
        self.refused = 0  # connections that failed to authenticate or say hello
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="spark_gmm-resident-accept",
                                        daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._closed.is_set():
            try:
                sock, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(sock,), daemon=True).start()

    def _handshake(self, sock: socket.socket):
        sock.setblocking(True)
        conn = Connection(os.dup(sock.fileno()))
        # a peer that stalls is cut off: shutdown wakes the blocked read
        timer = threading.Timer(HANDSHAKE_SECONDS, _shutdown, args=(sock,))
        timer.start()
        try:
            deliver_challenge(conn, self.key)  # the peer proves the key before we read more
            answer_challenge(conn, self.key)  # and we prove it to the peer
            hello = json.loads(conn.recv_bytes(MAX_HELLO_BYTES))
            if not isinstance(hello.get("partition"), int) or \
                    not isinstance(hello.get("task"), int):
                raise ValueError("malformed hello")
        except Exception:
            self.refused += 1
            conn.close()
            return
        finally:
            timer.cancel()
            sock.close()
        self.ready.put((hello, conn))

    def close(self):
        self._closed.set()
        self.server.close()
        while True:
            try:
                self.ready.get_nowait()[1].close()
            except queue.Empty:
                return


def _shutdown(sock: socket.socket):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class ResidentPasses(PassEngine):
    """Runs a fit's passes in the Python workers of one barrier stage that hold its rows.

    ``rows`` is the fit's prepared DataFrame in its ``n_partitions`` partitions (those the
    job-per-pass engine would pack). :meth:`start` launches the stage and waits for its
    workers; :meth:`close` ends it, and the workers free their blocks.
    """

    def __init__(self, rows: DataFrame, n_rows: int, n_features: int, n_partitions: int,
                 aggregation_depth: int, description: str, settings: ResidentSettings):
        self.rows = rows
        self.n_values = n_rows * (n_features + 1)
        self.n_features = n_features
        self.n_partitions = n_partitions
        self.scale = _tree_scale(n_partitions, aggregation_depth)
        self.description = description
        self.settings = settings
        self.jobs = 0  # data passes run so far
        self.rows_held = 0
        self.bytes_held = 0
        self._workers: Dict[int, Connection] = {}
        self._pids: Dict[int, List[int]] = {}  # partitions each worker holds
        self._rows: Dict[int, int] = {}  # rows each worker holds
        self._floor = -1  # Spark task ids of lost stage attempts are at most this
        self._coordinator: Optional[_Coordinator] = None
        self._job_error: Optional[BaseException] = None
        self._job_done = threading.Event()
        self._abandoned = False
        self._tag = f"spark_gmm-resident-{secrets.token_hex(8)}"

    # ------------------------------------------------------------------ life cycle

    def start(self) -> "ResidentPasses":
        s = self.settings
        key = secrets.token_bytes(32)
        self._coordinator = _Coordinator(s.bind_host, key)
        address = (s.advertise_host, self._coordinator.port)
        keys = F.array(*[F.lit(k) for k in task_keys(s.n_tasks)])
        if self.n_values >= PACK_VALUES:
            # each partition packed into the job-per-pass engine's blocks in its own task: a
            # shuffle of a few large binary rows costs far less than one of millions of rows
            # (README "Performance", 18M x 1), but on a small table the extra Python stage
            # costs more than its shuffle saves
            shuffled = self.rows.mapInArrow(pack(self.n_features), BLOCKS_SCHEMA)
            columns = ["n", "x", "w"]
        else:
            shuffled, columns = self.rows, [FEATURES, WEIGHT]
        held = (
            shuffled.select(
                F.spark_partition_id().alias("pid"),
                F.monotonically_increasing_id().alias("seq"),  # partition, then row order
                *columns)
            .withColumn("task", F.element_at(keys, F.col("pid") % s.n_tasks + 1))
            .repartition(s.n_tasks, "task")
            .mapInArrow(_worker(address, key, self.n_features, s.connect_timeout, s.fault),
                        "done int", barrier=True)
            # ending in a shuffle makes the barrier stage a shuffle-map stage: Spark retries it
            # whole when a task fails (a failed barrier result stage is not retried)
            .repartition(1)
        )
        del key
        spark = self.rows.sparkSession
        from pyspark import InheritableThread

        def run_job():
            try:
                _add_tag(spark, self._tag)
                if self._abandoned:  # start() gave up before the job was submitted
                    return
                _set_job_description(self.rows, f"{self.description}: resident fit "
                                                 f"({s.n_tasks} barrier tasks)")
                held.collect()
            except BaseException as exc:  # reported by the waiting driver
                self._job_error = exc
            finally:
                self._job_done.set()

        # the job's thread inherits the caller's job group and local properties (and, on
        # Spark Connect, its session's tags)
        try:
            thread = InheritableThread(target=run_job, name="spark_gmm-resident-job",
                                       daemon=True, session=spark)
        except TypeError:  # PySpark 3.5 takes no session
            thread = InheritableThread(target=run_job, name="spark_gmm-resident-job",
                                       daemon=True)
        thread.start()
        try:
            self._acquire(s.connect_timeout, first=True)
        except BaseException:
            self.close(cancel=True)
            raise
        log.info("resident engine: %d rows (%.1f MB) held in %d barrier tasks", self.rows_held,
                 self.bytes_held / 1e6, s.n_tasks)
        return self

    def close(self, cancel: bool = False):
        """Tells the workers to stop (they free their blocks), waits a little for the job to
        end (so that nothing of the fit outlives it), and closes the coordinator; with
        ``cancel``, cancels the job instead."""
        if cancel:
            self._abandoned = True
            self._cancel()
        for conn in self._workers.values():
            try:
                conn.send_bytes(pickle.dumps(("stop",)))
            except OSError:
                pass
        self._drop_workers()
        if not cancel and not self._job_done.wait(CLOSE_SECONDS):
            self._cancel()
        if self._coordinator is not None:
            self._coordinator.close()

    def _cancel(self):
        try:
            _cancel_tag(self.rows.sparkSession, self._tag)
        except Exception:  # the session may be stopping
            pass

    def _drop_workers(self):
        for conn in self._workers.values():
            conn.close()
        self._workers, self._pids, self._rows = {}, {}, {}

    def _acquire(self, seconds: float, first: bool):
        """Waits for a worker of every task to connect and load its blocks. Workers of a stage
        attempt that failed are refused (their Spark task ids are at most ``self._floor``);
        of two workers of one task the newer wins. Any such set is correct: every attempt
        reads the same shuffled rows."""
        deadline = time.monotonic() + seconds
        n_tasks = self.settings.n_tasks
        found: Dict[int, Tuple[int, Connection]] = {}
        while len(found) < n_tasks:
            remaining = deadline - time.monotonic()
            if self._job_done.is_set() or remaining <= 0:
                for _, conn in found.values():
                    conn.close()
                if self._job_done.is_set():
                    raise self._job_failed(first)
                self._cancel()
                what = (f"the barrier stage of {n_tasks} task(s) did not start and connect "
                        f"within {seconds:g} s ({CONNECT_TIMEOUT_CONF})")
                raise (ResidentUnavailable if first else ResidentFailure)(what)
            try:
                hello, conn = self._coordinator.ready.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            partition, task = hello["partition"], hello["task"]
            older = found.get(partition, (-1, None))
            if task <= self._floor or not 0 <= partition < n_tasks or task < older[0]:
                conn.close()  # a straggler of an attempt already given up
                continue
            if older[1] is not None:
                older[1].close()
            found[partition] = (task, conn)
        self._floor = max(task for task, _ in found.values())
        self._workers = {partition: conn for partition, (_, conn) in found.items()}
        try:
            loaded = self._receive("load the data", lambda partition: MAX_HELLO_BYTES)
        except (EOFError, OSError) as lost:  # a worker died reading: Spark retries the stage
            log.warning("resident engine: a worker was lost while reading its rows (%s); "
                        "waiting for Spark to retry the barrier stage", lost or "EOF")
            self._drop_workers()
            return self._acquire(max(deadline - time.monotonic(), 1.0), first)
        self.rows_held = self.bytes_held = 0
        for partition, text in loaded.items():
            info = json.loads(text)
            self._pids[partition] = [int(pid) for pid in info["pids"]]
            self._rows[partition] = int(info["rows"])
            self.rows_held += int(info["rows"])
            self.bytes_held += int(info["bytes"])

    def _job_failed(self, first: bool) -> RuntimeError:
        error = self._job_error
        reason = "the barrier stage ended" if error is None else \
            (str(error).strip().splitlines() or [type(error).__name__])[0][:500]
        return (ResidentUnavailable if first else ResidentFailure)(f"resident engine: {reason}")

    # ------------------------------------------------------------------ exchanges

    def _receive(self, label: str, limit_of) -> Dict[int, bytes]:
        """One message from every worker, each of at most ``limit_of(task)`` bytes, within
        the pass timeout (which cancels the job)."""
        timeout = self.settings.pass_timeout
        deadline = time.monotonic() + timeout
        pending = {conn: partition for partition, conn in self._workers.items()}
        replies: Dict[int, bytes] = {}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._cancel()
                raise ResidentFailure(
                    f"resident engine: worker(s) {sorted(pending.values())} did not answer "
                    f"'{label}' within {timeout:.0f} s ({PASS_TIMEOUT_CONF}); the fit's "
                    "Spark job was cancelled"
                )
            for conn in wait(list(pending), timeout=min(remaining, 1.0)):
                partition = pending.pop(conn)
                replies[partition] = conn.recv_bytes(limit_of(partition))
            if pending and self._job_done.is_set():
                raise EOFError("the barrier stage ended")
        return replies

    def _exchange(self, command: tuple, label: str, limit_of) -> Dict[int, bytes]:
        """Sends ``command`` to every worker and returns their replies; when a worker is lost,
        waits for Spark's retry of the stage and sends it again."""
        message = pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)
        while True:
            try:
                for conn in self._workers.values():
                    conn.send_bytes(message)
                return self._receive(label, limit_of)
            except (EOFError, OSError) as lost:
                log.warning("resident engine: a worker was lost during '%s' (%s); waiting for "
                            "Spark to retry the barrier stage", label,
                            lost or type(lost).__name__)
                self._drop_workers()
                self._acquire(self.settings.connect_timeout, first=False)

    def _reply_limit(self, partition: int, values_per_pid: int) -> int:
        n = len(self._pids[partition])
        return _HEADER.size + 12 * n + 8 * values_per_pid * n + 4096

    def _parse(self, partition: int, data: bytes, kind: bytes, width: Optional[int]):
        """[(pid, float64 values)] of a worker's reply, checked against what it holds."""
        tag, count = _HEADER.unpack_from(data)
        if tag == b"E":
            raise ResidentFailure(f"resident worker {partition} failed: "
                                  f"{data[_HEADER.size:].decode(errors='replace')}")
        malformed = ResidentFailure(f"resident worker {partition}: malformed reply")
        if tag != kind or count > len(self._pids[partition]):
            raise malformed
        pos = _HEADER.size
        pids = np.frombuffer(data, np.int32, count, pos)
        pos += 4 * count
        sizes = np.frombuffer(data, np.int64, count, pos)
        pos += 8 * count
        if set(pids.tolist()) - set(self._pids[partition]) or np.any(sizes < 0) or \
                pos + 8 * int(sizes.sum()) != len(data) or \
                (width is not None and np.any(sizes != width)):
            raise malformed
        out = []
        for pid, size in zip(pids.tolist(), sizes.tolist()):
            out.append((pid, np.frombuffer(data, np.float64, size, pos)))
            pos += 8 * size
        return out

    def run(self, passes: Sequence[PassFunction], label: str,
            size: Optional[int] = None) -> np.ndarray:
        replies = self._exchange(
            ("sum", list(passes)), label,
            lambda part: self._reply_limit(part, size) if size else MAX_COMMAND_BYTES)
        self.jobs += 1
        pairs = [pair for partition, data in sorted(replies.items())
                 for pair in self._parse(partition, data, b"S", size)]
        if len({vector.size for _, vector in pairs}) > 1:
            raise ResidentFailure("resident engine: statistics of different sizes")
        return ordered_sum(pairs, self.scale)

    def gather(self, function: GatherFunction, label: str) -> Optional[np.ndarray]:
        width = self.n_features + 1
        replies = self._exchange(
            ("gather", function), label,
            lambda part: self._reply_limit(part, self._rows[part] * width))
        self.jobs += 1
        pieces = [(pid, rows.reshape(-1, width)) for partition, data in sorted(replies.items())
                  for pid, rows in self._parse(partition, data, b"G", None)]
        return in_order(pieces)


def _add_tag(spark, tag: str):
    """Tags the jobs this thread starts: SparkContext job tags where there is a SparkContext
    (their cancellation reaches SQL jobs), session tags elsewhere (Spark Connect)."""
    try:
        spark.sparkContext.addJobTag(tag)
    except Exception:
        spark.addTag(tag)


def _cancel_tag(spark, tag: str):
    try:
        spark.sparkContext.cancelJobsWithTag(tag)
    except Exception:
        spark.interruptTag(tag)


# --------------------------------------------------------------------------- where it runs


def _slots(spark) -> Optional[int]:
    """Tasks the cluster can run at once: Spark's own count (which barrier stages check)
    where there is a SparkContext; on Spark Connect, read from a local or local-cluster
    master (None for any other: the client cannot count a cluster's free slots)."""
    try:
        jsc = spark.sparkContext._jsc.sc()
    except Exception:
        return _master_slots(spark.conf.get("spark.master", "") or "")
    return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))


def _master_slots(master: str) -> Optional[int]:
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if match:
        n = match.group(1)
        return 1 if n is None else (os.cpu_count() or 1) if n == "*" else int(n)
    match = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", master.strip())
    return int(match.group(1)) * int(match.group(2)) if match else None


def _seconds(spark, key: str, default: float) -> float:
    value = spark.conf.get(key, None)
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        raise ValueError(f"{key} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise ValueError(f"{key} must be > 0 seconds, got {value!r}")
    return seconds


def _connect_host(spark) -> Optional[str]:
    """The host of the Spark Connect server, or None on a classic session."""
    if not type(spark).__module__.startswith("pyspark.sql.connect"):
        return None
    return str(getattr(getattr(spark.client, "_builder", None), "host", "") or "unknown")


def plan(rows: DataFrame, n_partitions: int) -> Tuple[Optional[ResidentSettings], str]:
    """(settings, "") where a barrier stage can hold these rows, else (None, why not)."""
    spark = rows.sparkSession
    remote = _connect_host(spark)
    if remote is not None:
        if remote not in ("localhost", "127.0.0.1", "::1"):
            return None, (f"the Spark Connect server ({remote}) runs its tasks where they "
                          "cannot be assumed to reach this client")
        host = bind = "127.0.0.1"
    else:
        conf = spark.conf
        if (conf.get("spark.dynamicAllocation.enabled", "false") or "").strip().lower() == "true":
            return None, "dynamic allocation is enabled, and Spark runs no barrier stage under it"
        host = conf.get("spark.driver.host", None) or "127.0.0.1"
        bind = conf.get("spark.driver.bindAddress", None) or host
    slots = _slots(spark)
    if not slots:
        return None, ("this session has no SparkContext (Spark Connect, or a shared access "
                      "mode) and its master does not tell how many tasks the cluster runs at "
                      "once, which a barrier stage must know")
    return ResidentSettings(
        n_tasks=max(1, min(n_partitions or slots, slots)),
        connect_timeout=_seconds(spark, CONNECT_TIMEOUT_CONF, CONNECT_TIMEOUT),
        pass_timeout=_seconds(spark, PASS_TIMEOUT_CONF, PASS_TIMEOUT),
        bind_host=bind,
        advertise_host=host,
        fault=_fault_marker(),
    ), ""


_STARTED: set = set()  # sessions whose Python workers a fit has started


def start_python_workers(spark) -> None:
    """On the first fit of a session, starts its Python workers in the background (a job of
    one trivial task per slot that imports the kernel), so that their start-up (a new Python
    process, pyarrow, NumPy, SciPy: seconds, on the session's first Python job) overlaps the
    validation of the input, which runs in the JVM. Later fits find the workers started."""
    try:
        key = spark.sparkContext.applicationId
    except Exception:  # Spark Connect
        key = getattr(spark, "session_id", None)
    if key is None or key in _STARTED:
        return
    _STARTED.add(key)
    slots = _slots(spark)
    if not slots:
        return
    job = spark.range(0, slots, 1, numPartitions=slots).mapInArrow(_warm, "id long")

    def run():
        try:
            job.collect()
        except Exception:  # only a head start: the fit's own jobs report real failures
            pass

    # not an InheritableThread: this job is no part of the caller's job group
    threading.Thread(target=run, name="spark_gmm-start-workers", daemon=True).start()


def _fault_marker() -> Optional[Tuple[str, str]]:
    """Test-only: (mode, marker file) when SPARK_GMM_FAULT_INJECTION is set on the driver."""
    mode = os.environ.get(FAULT_INJECTION)
    if not mode:
        return None
    import tempfile

    return mode, os.path.join(tempfile.gettempdir(), f"spark_gmm-fault-{secrets.token_hex(8)}")
