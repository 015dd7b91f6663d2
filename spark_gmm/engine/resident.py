"""The resident pass engine: a fit's rows read once into the Python workers of one barrier
stage, which then run every pass of the fit for the driver.

How it runs:

* The fit's prepared rows are tagged with their partition and shuffled to ``n_tasks`` barrier
  tasks, each task holding each of its partitions in the blocks the job-per-pass engine
  reads, in the same canonical order (:func:`spark_gmm.engine.blocks.canonical`), so the rows Spark
  delivers in another order after a recomputation give the same bits. From ``PACK_VALUES``
  values on, each partition is packed into those blocks in its own task first
  (:func:`spark_gmm.engine.blocks.pack`) and the blocks are shuffled instead of the rows. The tasks,
  never more than the cluster can run at once (nor than ``spark.gmm.resident.maxTasks``), are
  a ``mapInArrow`` with ``barrier=True``, so classic sessions and Spark Connect share one path.
  The barrier stage reads a shuffle and ends in one, so Spark retries it whole when a task
  fails, re-reading the shuffled data rather than the source.
* Each task connects to a coordinator on the driver (:mod:`spark_gmm.engine.channel`: mutually
  authenticated with a fresh key per fit, every message authenticated, encrypted where Spark
  encrypts its own traffic) and answers commands: pass functions and parameters (pickled) come
  down, statistics (float64 bytes) go up. The driver checks that the tasks hold exactly the
  validated rows and that each partition answers each pass exactly once, and sums per
  partition in partition order with :func:`spark_gmm.engine.base.ordered_sum`, so the result is
  bit-identical to the job-per-pass engine on the same partitions.
* Faults: every connection of the current stage attempt is watched during every pass. A lost
  worker (its connection closes, TCP keepalive gives up on its host, or Spark starts a newer
  attempt of the stage, whose hellos end the wait for the old one at once) makes the driver
  wait for the new attempt and run the interrupted pass again there. A worker that does not
  answer within the pass timeout, a cancelled job or an interrupt cancels the job and closes
  the coordinator. A task that cannot reach the coordinator within the connect timeout ends
  and says so: the fit falls back to the job-per-pass engine, and later fits of the session
  do so at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import secrets
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_gmm.engine.base import PassEngine, in_order, ordered_sum, tree_scale
from spark_gmm.engine.blocks import (
    BLOCKS_SCHEMA,
    FEATURES,
    WEIGHT,
    GatherFunction,
    PassFunction,
    pack,
)
from spark_gmm.engine.channel import (
    HANDSHAKE_SECONDS,
    Channel,
    ChannelError,
    accept,
    encryption_available,
)
from spark_gmm.engine.faults import FAULT_INJECTION
from spark_gmm.engine.partitions import set_job_description
from spark_gmm.engine.resident_worker import (
    MAX_COMMAND_BYTES,
    MAX_HELLO_BYTES,
    REPLY_HEADER,
    RESULT_SCHEMA,
    WorkerSettings,
    warm_up,
    worker_function,
)
from spark_gmm.engine.spark_conf import conf_seconds, conf_true, conf_value, size_bytes

log = logging.getLogger("spark_gmm")

# Spark configuration keys of the resident engine (README "How a fit runs").
CONNECT_TIMEOUT_CONF = "spark.gmm.resident.connectTimeout"  # s, a task's start to its hello
PASS_TIMEOUT_CONF = "spark.gmm.resident.passTimeout"  # s, one pass (and the load) at most
PORT_CONF = "spark.gmm.resident.port"  # the coordinator's port, or a range "lo-hi"; 0: any
MAX_TASKS_CONF = "spark.gmm.resident.maxTasks"  # barrier tasks at most; unset: every slot
CONNECT_TIMEOUT = 30.0
PASS_TIMEOUT = 3600.0
CLOSE_SECONDS = 30.0  # the job's end after the workers stopped, at most; then it is cancelled
MAX_PENDING_HANDSHAKES = 16  # connections authenticating at once; more are closed at once
LOAD_REPORT_BYTES = 1 << 20
# From this many values (rows x (features + 1)), the rows are packed into blocks before the
# shuffle to the barrier tasks, rather than shuffled row by row.
PACK_VALUES = 1 << 22
# A task's peak memory while reading its rows, in multiples of the float64 bytes it then holds
# (Arrow batches, their NumPy copies, the joined and the canonically ordered arrays).
READ_PEAK = 3.0


class ResidentUnavailable(RuntimeError):
    """The barrier stage could not start (or its workers could not connect): nothing has run
    on it, so the fit can use the job-per-pass engine instead."""


class ResidentFailure(RuntimeError):
    """The resident engine failed mid-fit (a hung worker, a stage Spark gave up retrying, a
    message that failed its authentication, held rows that differ from the input)."""


class _Lost(Exception):
    """A worker of the current stage attempt is gone: wait for Spark's next attempt."""


@dataclass(frozen=True)
class ResidentSettings:
    """How a resident fit runs (:func:`plan`): its number of barrier tasks, their timeouts,
    where the coordinator listens and what it tells the tasks to connect to, and whether the
    channel is encrypted."""

    n_tasks: int
    connect_timeout: float = CONNECT_TIMEOUT
    pass_timeout: float = PASS_TIMEOUT
    bind_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    ports: Tuple[int, int] = (0, 0)  # the coordinator binds the first free port of the range
    encrypt: bool = False
    fault: Optional[Tuple[str, str]] = None  # test-only: (SPARK_GMM_FAULT_INJECTION, marker)


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
    with the fit's key in a bounded number of handshake threads, reads its hello, and keeps
    (hello, channel) pairs for :meth:`take`."""

    def __init__(self, bind_host: str, ports: Tuple[int, int], key: bytes, encrypt: bool):
        self.key = key
        self.encrypt = encrypt
        self.server = _bind(bind_host, ports)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.refused = 0  # connections closed unauthenticated, malformed or over the bound
        self._hellos: List[Tuple[dict, Channel]] = []
        self._pending: Dict[int, socket.socket] = {}  # handshakes under way, by number
        self._accepted = 0
        self._lock = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._accept, name="spark_gmm-resident-accept", daemon=True
        )
        self._thread.start()

    def _accept(self):
        while not self._closed.is_set():
            try:
                sock, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                full = len(self._pending) >= MAX_PENDING_HANDSHAKES or self._closed.is_set()
                if full:
                    self.refused += 1
                else:
                    self._accepted += 1
                    self._pending[self._accepted] = sock
                    threading.Thread(
                        target=self._handshake,
                        args=(self._accepted, sock),
                        name="spark_gmm-resident-handshake",
                        daemon=True,
                    ).start()
            if full:
                sock.close()

    def _handshake(self, number: int, sock: socket.socket):
        try:
            channel = accept(sock, self.key, self.encrypt)
            hello = json.loads(channel.recv(MAX_HELLO_BYTES, timeout=HANDSHAKE_SECONDS))
            if (
                not isinstance(hello, dict)
                or not isinstance(hello.get("partition"), int)
                or not isinstance(hello.get("task"), int)
            ):
                raise ValueError("malformed hello")
        except Exception:  # no key, too slow, malformed: closed without a word
            with self._lock:
                self.refused += 1
                self._pending.pop(number, None)
            sock.close()
            return
        with self._lock:
            self._pending.pop(number, None)
            if self._closed.is_set():
                channel.close()
                return
            self._hellos.append((hello, channel))
            self._lock.notify_all()

    def take(self, timeout: float) -> Optional[Tuple[dict, Channel]]:
        """The oldest authenticated hello and its channel, waiting up to ``timeout``."""
        with self._lock:
            if not self._hellos:
                self._lock.wait(timeout)
            return self._hellos.pop(0) if self._hellos else None

    def newer_than(self, task: int) -> bool:
        """Whether a hello of a task attempt newer than ``task`` is waiting (a newer attempt
        of the barrier stage); older ones are closed."""
        with self._lock:
            for hello, channel in [pair for pair in self._hellos if pair[0]["task"] <= task]:
                channel.close()
                self._hellos.remove((hello, channel))
            return bool(self._hellos)

    def threads(self) -> int:
        """Threads of this coordinator alive now (accept + handshakes)."""
        with self._lock:
            return int(self._thread.is_alive()) + len(self._pending)

    def close(self):
        """Stops accepting: closes the listening socket and every connection not yet taken."""
        self._closed.set()
        self.server.close()
        with self._lock:
            for sock in self._pending.values():
                _shutdown(sock)
            for _, channel in self._hellos:
                channel.close()
            self._hellos = []
        self._thread.join(1.0)


def _bind(host: str, ports: Tuple[int, int]) -> socket.socket:
    """A listening socket on the first free port of ``ports`` (IPv4 or IPv6 by ``host``)."""
    family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    lo, hi = ports
    error: Optional[OSError] = None
    for port in range(lo, hi + 1):
        try:
            return socket.create_server((host, port), family=family)
        except OSError as exc:
            error = exc
    raise OSError(f"no free port for the coordinator on {host} in {lo}-{hi} ({PORT_CONF}): {error}")


def _shutdown(sock: socket.socket):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class ResidentEngine(PassEngine):
    """Runs a fit's passes in the Python workers of one barrier stage that hold its rows.

    ``rows`` is the fit's prepared DataFrame in its ``n_partitions`` partitions (those the
    job-per-pass engine would pack), with ``n_rows`` rows of ``total_weight`` in all (what
    validation counted: the workers must hold exactly that). :meth:`start` launches the stage
    and waits for its workers; :meth:`close` ends it, and the workers free their blocks. An
    error raised on the way reaches :meth:`start` or the fit driver, which close with
    ``failed=True``: the job is cancelled there, once.
    """

    name = "resident"

    def __init__(
        self,
        rows: DataFrame,
        n_rows: int,
        total_weight: float,
        n_features: int,
        n_partitions: int,
        aggregation_depth: int,
        description: str,
        settings: ResidentSettings,
    ):
        self.rows = rows
        self.n_rows = n_rows
        self.total_weight = total_weight
        self.n_values = n_rows * (n_features + 1)
        self.n_features = n_features
        self.n_partitions = n_partitions
        self.scale = tree_scale(n_partitions, aggregation_depth)
        self.description = description
        self.settings = settings
        self.data_passes = 0
        self.rows_held = 0
        self.bytes_held = 0
        self._workers: Dict[int, Channel] = {}
        self._pids: Dict[int, List[int]] = {}  # partitions each worker holds
        self._rows: Dict[int, int] = {}  # rows each worker holds
        self._floor = -1  # Spark task ids of lost stage attempts are at most this
        self._load_losses = 0  # workers lost while reading their rows
        self._coordinator: Optional[_Coordinator] = None
        self._job_error: Optional[BaseException] = None
        self._job_results: List[str] = []  # the barrier tasks' "error" column
        self._job_done = threading.Event()
        self._job_thread: Optional[threading.Thread] = None
        self._abandoned = False
        self._tag = f"spark_gmm-resident-{secrets.token_hex(8)}"

    # ------------------------------------------------------------------ life cycle

    def start(self) -> "ResidentEngine":
        """Starts the stage and waits until every task holds its rows. Any failure to start
        is ResidentUnavailable (nothing ran; the caller may fall back), but held rows that
        differ from the input (ResidentFailure) and interrupts."""
        try:
            self._launch()
            self._acquire(first=True)
        except (ResidentUnavailable, ResidentFailure):
            self.close(failed=True)
            raise
        except Exception as exc:  # bind errors, unresolvable hosts, a job that fails early
            self.close(failed=True)
            raise ResidentUnavailable(
                f"the resident engine could not start: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:  # KeyboardInterrupt
            self.close(failed=True)
            raise
        log.info(
            "resident engine: %d rows (%.1f MB) held in %d barrier tasks",
            self.rows_held,
            self.bytes_held / 1e6,
            self.settings.n_tasks,
        )
        return self

    def _launch(self):
        s = self.settings
        key = secrets.token_bytes(32)
        self._coordinator = _Coordinator(s.bind_host, s.ports, key, s.encrypt)
        worker = worker_function(
            WorkerSettings(
                address=(s.advertise_host, self._coordinator.port),
                key=key,
                encrypt=s.encrypt,
                n_features=self.n_features,
                connect_timeout=s.connect_timeout,
                # a worker waits for commands while the driver waits for the slowest peer
                idle_timeout=s.pass_timeout + s.connect_timeout,
                fault=s.fault,
            )
        )
        del key
        keys = F.array(*[F.lit(k) for k in task_keys(s.n_tasks)])
        if self.n_values >= PACK_VALUES:
            # each partition packed into the job-per-pass engine's blocks in its own task: a
            # shuffle of a few large binary rows costs far less than one of millions of rows
            # (README "Performance", 18M x 1), but on a small table the extra Python stage
            # costs more than its shuffle saves
            shuffled = self.rows.mapInArrow(pack(self.n_features), BLOCKS_SCHEMA).select(
                F.spark_partition_id().alias("pid"),
                F.monotonically_increasing_id().alias("seq"),  # the blocks' order
                "n",
                "x",
                "w",
            )
        else:  # each task puts each partition's rows in canonical order itself
            shuffled = self.rows.select(F.spark_partition_id().alias("pid"), FEATURES, WEIGHT)
        held = (
            shuffled.withColumn("task", F.element_at(keys, F.col("pid") % s.n_tasks + 1))
            .repartition(s.n_tasks, "task")
            .mapInArrow(worker, RESULT_SCHEMA, barrier=True)
            # ending in a shuffle makes the barrier stage a shuffle-map stage: Spark retries it
            # whole when a task fails (a failed barrier result stage is not retried)
            .repartition(1)
        )
        spark = self.rows.sparkSession
        from pyspark import InheritableThread

        def run_job():
            try:
                _add_tag(spark, self._tag)
                if self._abandoned:  # start() gave up before the job was submitted
                    return
                set_job_description(
                    self.rows, f"{self.description}: resident fit ({s.n_tasks} barrier tasks)"
                )
                self._job_results = [row[0] for row in held.collect()]
            except BaseException as exc:  # reported by the waiting driver
                self._job_error = exc
            finally:
                self._job_done.set()

        # the job's thread inherits the caller's job group and local properties (and, on
        # Spark Connect, its session's tags)
        try:
            thread = InheritableThread(
                target=run_job, name="spark_gmm-resident-job", daemon=True, session=spark
            )
        except TypeError:  # PySpark 3.5 takes no session
            thread = InheritableThread(target=run_job, name="spark_gmm-resident-job", daemon=True)
        self._job_thread = thread
        thread.start()

    def close(self, failed: bool = False):
        """Tells the workers to stop (they free their blocks), waits a little for the job to
        end (so that nothing of the fit outlives it), and closes the coordinator; when the fit
        ``failed`` (an error or an interrupt), cancels the job at once instead. The
        coordinator is closed whatever happens, a second interrupt included."""
        try:
            if failed:
                self._abandoned = True
                self._cancel()
            else:
                stop = pickle.dumps(("stop",))
                for channel in self._workers.values():
                    try:
                        channel.send(stop, timeout=5.0)
                    except OSError:
                        pass
            self._drop_workers()
            if (
                not failed
                and self._job_thread is not None
                and not self._job_done.wait(CLOSE_SECONDS)
            ):
                self._cancel()
        except BaseException:
            self._cancel()
            raise
        finally:
            self._drop_workers()
            if self._coordinator is not None:
                self._coordinator.close()

    def _cancel(self):
        try:
            _cancel_tag(self.rows.sparkSession, self._tag)
        except Exception:  # the session may be stopping
            pass

    def _drop_workers(self):
        for channel in self._workers.values():
            channel.close()
        self._workers, self._pids, self._rows = {}, {}, {}

    def _error(self, first: bool, what: str) -> RuntimeError:
        return (ResidentUnavailable if first else ResidentFailure)(f"resident engine: {what}")

    def _acquire(self, first: bool):
        """Waits for a worker of every task to connect and load its blocks. Workers of a stage
        attempt that failed are refused (their Spark task ids are at most ``self._floor``);
        of two workers of one task the newer wins. Any such set is correct: every attempt
        reads the same shuffled rows, held in canonical order. Once a task has said hello,
        the others have ``connect_timeout`` seconds to do so."""
        s = self.settings
        found: Dict[int, Tuple[int, Channel]] = {}
        first_hello = None
        try:
            while len(found) < s.n_tasks:
                if self._job_done.is_set():
                    raise self._job_failed(first)
                if (
                    first_hello is not None
                    and time.monotonic() - first_hello > s.connect_timeout + HANDSHAKE_SECONDS
                ):
                    raise self._error(
                        first,
                        (
                            f"only {len(found)} of {s.n_tasks} barrier tasks reached the "
                            f"coordinator within {s.connect_timeout:g} s of the first "
                            f"({CONNECT_TIMEOUT_CONF})"
                        ),
                    )
                item = self._coordinator.take(timeout=0.2)
                if item is None:
                    continue
                hello, channel = item
                partition, task = hello["partition"], hello["task"]
                older = found.get(partition, (-1, None))
                if task <= self._floor or not 0 <= partition < s.n_tasks or task < older[0]:
                    channel.close()  # a straggler of an attempt already given up
                    continue
                if older[1] is not None:
                    older[1].close()
                found[partition] = (task, channel)
                first_hello = first_hello or time.monotonic()
        except BaseException:
            for _, channel in found.values():
                channel.close()
            raise
        self._floor = max(task for task, _ in found.values())
        self._workers = {partition: channel for partition, (_, channel) in found.items()}
        try:
            loaded = self._receive("load the data", lambda partition: LOAD_REPORT_BYTES)
        except _Lost as lost:  # a worker died reading: Spark retries the stage
            self._drop_workers()
            self._load_losses += 1
            if self._load_losses > 1:
                raise self._error(
                    first,
                    (
                        f"workers were lost twice while reading their rows ({lost}): each of "
                        f"{s.n_tasks} tasks holds ~{self.n_values * 8 / s.n_tasks / 1e6:.0f} MB "
                        "of float64 rows in its Python worker; if they were killed for memory, "
                        "raise spark.executor.pyspark.memory (or spark.executor.memoryOverhead) "
                        f"or set {MAX_TASKS_CONF} higher / use more executors"
                    ),
                ) from None
            log.warning(
                "resident engine: a worker was lost while reading its rows (%s); "
                "waiting for Spark to retry the barrier stage",
                lost,
            )
            return self._acquire(first)
        self._check_load(loaded, first)

    def _check_load(self, loaded: Dict[int, bytes], first: bool):
        """Every partition held by one worker only, and the rows and weight of all of them
        those that validation counted; else an error naming what differs."""
        holder: Dict[int, int] = {}
        rows = weight = held_bytes = 0
        for partition, text in sorted(loaded.items()):
            info = json.loads(text)
            if "error" in info:
                raise self._error(
                    first,
                    (
                        f"worker {partition}: {info['error']}; raise spark.executor.pyspark.memory "
                        f"(or spark.executor.memoryOverhead), or set {MAX_TASKS_CONF} higher"
                    ),
                )
            pids = [int(pid) for pid in info["pids"]]
            for pid in pids:
                if pid in holder:
                    raise ResidentFailure(
                        f"resident engine: input partition {pid} is held by workers "
                        f"{holder[pid]} and {partition}"
                    )
                holder[pid] = partition
            self._pids[partition] = pids
            self._rows[partition] = int(sum(info["rows"]))
            rows += self._rows[partition]
            weight += math.fsum(info["weights"])
            held_bytes += int(info["bytes"])
        if rows != self.n_rows or not math.isclose(
            weight, self.total_weight, rel_tol=1e-9, abs_tol=1e-12
        ):
            raise ResidentFailure(
                f"resident engine: the workers hold {rows} rows of total weight {weight!r}, "
                f"but validation counted {self.n_rows} rows of total weight "
                f"{self.total_weight!r} (is the input deterministic? a source that changes "
                "between reads, or a non-deterministic expression, gives other rows)"
            )
        self.rows_held, self.bytes_held = rows, held_bytes

    def _job_failed(self, first: bool) -> RuntimeError:
        """Why the barrier job ended before the fit did: a task that could not reach the
        coordinator (remembered for the session: later fits fall back at once), or the
        job's error (a cancelled job group, a stage Spark gave up retrying)."""
        unreachable = sorted({error for error in self._job_results if error})
        if unreachable:
            reason = (
                f"the executors could not reach the coordinator on the driver: "
                f"{unreachable[0]} ({CONNECT_TIMEOUT_CONF}; open the port with "
                f"{PORT_CONF}, or set spark.driver.host to an address they reach)"
            )
            error = self._error(first, reason)
            _remember_unreachable(self.rows.sparkSession, str(error))
            return error
        error = self._job_error
        return self._error(first, "the barrier stage ended" if error is None else _describe(error))

    # ------------------------------------------------------------------ exchanges

    def _receive(self, label: str, limit_of) -> Dict[int, bytes]:
        """One message from every worker, each of at most ``limit_of(task)`` bytes, within
        the pass timeout (which cancels the job). Every connection is watched until all
        have answered: one that closes, or a newer attempt of the stage saying hello, is
        _Lost; a worker answering twice or a message failing its check is a failure."""
        timeout = self.settings.pass_timeout
        deadline = time.monotonic() + timeout
        by_fd = {channel.fileno(): partition for partition, channel in self._workers.items()}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        pending = set(self._workers)
        replies: Dict[int, bytes] = {}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResidentFailure(
                    f"resident engine: worker(s) {sorted(pending)} did not answer "
                    f"'{label}' within {timeout:.0f} s ({PASS_TIMEOUT_CONF}); the fit's "
                    "Spark job was cancelled"
                )
            if self._coordinator.newer_than(self._floor):
                raise _Lost("a newer attempt of the barrier stage started")
            if self._job_done.is_set():
                raise _Lost("the barrier stage ended")
            # messages already buffered (read along with an earlier one), then the sockets
            buffered = [p for p, channel in self._workers.items() if channel.has_message()]
            ready = set(buffered) | {
                by_fd[fd]
                for fd, _ in poller.poll(0 if buffered else int(min(remaining, 0.25) * 1000) + 1)
            }
            for partition in sorted(ready):
                channel = self._workers[partition]
                try:
                    message = channel.poll(limit_of(partition))
                except ChannelError as exc:
                    raise ResidentFailure(
                        f"resident engine: worker {partition}: {exc}; the "
                        "fit's Spark job was cancelled"
                    ) from None
                except (EOFError, OSError) as exc:
                    raise _Lost(f"worker {partition}: {exc or type(exc).__name__}") from None
                if message is None:
                    continue
                if partition not in pending:
                    raise ResidentFailure(
                        f"resident engine: worker {partition} answered '{label}' twice"
                    )
                pending.discard(partition)
                replies[partition] = message
        return replies

    def _exchange(self, command: tuple, label: str, limit_of) -> Dict[int, bytes]:
        """Sends ``command`` to every worker and returns their replies; when a worker is lost,
        waits for Spark's retry of the stage and sends it again."""
        message = pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)
        while True:
            try:
                for channel in self._workers.values():
                    try:
                        channel.send(message, timeout=self.settings.pass_timeout)
                    except OSError as exc:
                        raise _Lost(f"sending: {exc or type(exc).__name__}") from None
                return self._receive(label, limit_of)
            except _Lost as lost:
                log.warning(
                    "resident engine: a worker was lost during '%s' (%s); waiting for "
                    "Spark to retry the barrier stage",
                    label,
                    lost,
                )
                self._drop_workers()
                self._acquire(first=False)

    def _reply_limit(self, partition: int, values_per_pid: int) -> int:
        n = len(self._pids[partition])
        return REPLY_HEADER.size + 12 * n + 8 * values_per_pid * n + 4096

    def _parse(self, partition: int, data: bytes, kind: bytes, width: Optional[int]):
        """[(pid, float64 values)] of a worker's reply, checked against what it holds."""
        tag, count = REPLY_HEADER.unpack_from(data)
        if tag == b"E":
            raise ResidentFailure(
                f"resident worker {partition} failed: "
                f"{data[REPLY_HEADER.size :].decode(errors='replace')}"
            )
        malformed = ResidentFailure(f"resident worker {partition}: malformed reply")
        if tag != kind or count > len(self._pids[partition]):
            raise malformed
        pos = REPLY_HEADER.size
        pids = np.frombuffer(data, np.int32, count, pos)
        pos += 4 * count
        sizes = np.frombuffer(data, np.int64, count, pos)
        pos += 8 * count
        if (
            len(set(pids.tolist())) != count
            or set(pids.tolist()) - set(self._pids[partition])
            or np.any(sizes < 0)
            or pos + 8 * int(sizes.sum()) != len(data)
            or (width is not None and np.any(sizes != width))
        ):
            raise malformed
        out = []
        for pid, size in zip(pids.tolist(), sizes.tolist()):
            out.append((pid, np.frombuffer(data, np.float64, size, pos)))
            pos += 8 * size
        return out

    def run(
        self, passes: Sequence[PassFunction], label: str, size: Optional[int] = None
    ) -> np.ndarray:
        """The summed statistics vectors of all ``passes``, computed by the workers on the
        rows they hold and summed per partition in partition order."""
        replies = self._exchange(
            ("sum", list(passes)),
            label,
            lambda part: self._reply_limit(part, size) if size else MAX_COMMAND_BYTES,
        )
        self.data_passes += 1
        pairs = []
        for partition, data in sorted(replies.items()):
            got = self._parse(partition, data, b"S", size)
            missing = set(self._pids[partition]) - {pid for pid, _ in got}
            if missing:  # every held partition has rows, so each must answer every pass
                raise ResidentFailure(
                    f"resident engine: worker {partition} sent no "
                    f"statistics for input partition(s) {sorted(missing)}"
                )
            pairs.extend(got)
        if len({vector.size for _, vector in pairs}) > 1:
            raise ResidentFailure("resident engine: statistics of different sizes")
        return ordered_sum(pairs, self.scale)

    def gather(self, function: GatherFunction, label: str) -> Optional[np.ndarray]:
        """The rows ``function`` keeps of every block the workers hold, joined in partition
        and block order; None when none."""
        width = self.n_features + 1
        replies = self._exchange(
            ("gather", function),
            label,
            lambda part: self._reply_limit(part, self._rows[part] * width),
        )
        self.data_passes += 1
        pieces = [
            (pid, rows.reshape(-1, width))
            for partition, data in sorted(replies.items())
            for pid, rows in self._parse(partition, data, b"G", None)
        ]
        return in_order(pieces)


def _describe(error: BaseException) -> str:
    """The first line of a job's error: the JVM's message for a Py4J error (whose own first
    line only names the call), else the exception's."""
    text = None
    java = getattr(error, "java_exception", None)
    if java is not None:
        try:
            text = str(java.getMessage())
        except Exception:
            text = None
    text = text or str(error)
    return (text.strip().splitlines() or [type(error).__name__])[0][:500]


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
        return _master_slots(conf_value(spark, "spark.master") or "")
    return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))


def _master_slots(master: str) -> Optional[int]:
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if match:
        n = match.group(1)
        return 1 if n is None else (os.cpu_count() or 1) if n == "*" else int(n)
    match = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", master.strip())
    return int(match.group(1)) * int(match.group(2)) if match else None


def _ports(spark) -> Tuple[int, int]:
    """``spark.gmm.resident.port``: "0" (any free port, the default), "N" or "LO-HI"."""
    value = (conf_value(spark, PORT_CONF) or "0").strip()
    match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", value)
    lo, hi = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (-1, -1)
    if not (0 <= lo <= hi <= 65535) or (lo == 0 and hi != 0):
        raise ValueError(
            f"{PORT_CONF} must be a port (0 for any free one) or a range "
            f"LO-HI of ports from 1 to 65535, got {value!r}"
        )
    return lo, hi


def _max_tasks(spark) -> Optional[int]:
    value = conf_value(spark, MAX_TASKS_CONF)
    if value is None or not value.strip():
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{MAX_TASKS_CONF} must be a whole number >= 1, got {value!r}")
    return n


def _python_memory(spark, master: str) -> Optional[Tuple[float, str]]:
    """(bytes, where from) that one barrier task's Python worker may use, when Spark's
    settings bound it: ``spark.executor.pyspark.memory`` (per executor), else on YARN and
    Kubernetes the executor's memory overhead (which Python workers count against), else for
    a local master this machine's memory; None where nothing bounds it (standalone)."""
    cores = int(conf_value(spark, "spark.executor.cores") or 1)
    pyspark_memory = conf_value(spark, "spark.executor.pyspark.memory")
    if pyspark_memory:
        return size_bytes(pyspark_memory) / max(cores, 1), "spark.executor.pyspark.memory"
    if master.startswith(("yarn", "k8s")):
        overhead = conf_value(spark, "spark.executor.memoryOverhead")
        if overhead:
            total = size_bytes(overhead)
        else:
            executor = size_bytes(conf_value(spark, "spark.executor.memory") or "1g")
            total = max(384 << 20, int(0.1 * executor))
        return total / max(cores, 1), "spark.executor.memoryOverhead"
    if master.startswith("local") and not master.startswith("local-cluster"):
        try:
            physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
        slots = _master_slots(master) or 1
        return physical / 2 / slots, "half of this machine's memory, shared by local[N] tasks"
    return None


def _connect_host(spark) -> Optional[str]:
    """The host of the Spark Connect server, or None on a classic session."""
    if not type(spark).__module__.startswith("pyspark.sql.connect"):
        return None
    return str(getattr(getattr(spark.client, "_builder", None), "host", "") or "unknown")


def _session_key(spark) -> Optional[str]:
    try:
        return spark.sparkContext.applicationId
    except Exception:  # Spark Connect
        return getattr(spark, "session_id", None)


_UNREACHABLE: Dict[str, str] = {}  # session -> why its executors cannot reach this driver


def _remember_unreachable(spark, reason: str) -> None:
    key = _session_key(spark)
    if key is not None:
        _UNREACHABLE[key] = reason


def plan(
    rows: DataFrame, n_partitions: int, n_values: int
) -> Tuple[Optional[ResidentSettings], str]:
    """(settings, "") where a barrier stage can hold these rows (``n_values`` float64 values
    in ``n_partitions`` partitions), else (None, why not)."""
    spark = rows.sparkSession
    remembered = _UNREACHABLE.get(_session_key(spark) or "")
    if remembered:
        return None, remembered  # the same words: said once
    remote = _connect_host(spark)
    if remote is not None:
        if remote not in ("localhost", "127.0.0.1", "::1"):
            return None, (
                f"the Spark Connect server ({remote}) runs its tasks where they "
                "cannot be assumed to reach this client"
            )
        host = bind = "::1" if remote == "::1" else "127.0.0.1"
    else:
        if conf_true(spark, "spark.dynamicAllocation.enabled"):
            return None, "dynamic allocation is enabled, and Spark runs no barrier stage under it"
        host = conf_value(spark, "spark.driver.host") or "127.0.0.1"
        bind = conf_value(spark, "spark.driver.bindAddress") or host
    slots = _slots(spark)
    if not slots:
        return None, (
            "this session has no SparkContext (Spark Connect, or a shared access "
            "mode) and its master does not tell how many tasks the cluster runs at "
            "once, which a barrier stage must know"
        )
    n_tasks = max(1, min(n_partitions or slots, slots, _max_tasks(spark) or slots))
    encrypt = conf_true(spark, "spark.network.crypto.enabled") or conf_true(
        spark, "spark.ssl.enabled"
    )
    if encrypt:
        missing = encryption_available()
        if missing:
            return None, (
                "Spark encrypts its own traffic (spark.network.crypto.enabled or "
                f"spark.ssl.enabled) and the coordinator's channel cannot: {missing}"
            )
    settings = ResidentSettings(
        n_tasks=n_tasks,
        connect_timeout=conf_seconds(spark, CONNECT_TIMEOUT_CONF, CONNECT_TIMEOUT),
        pass_timeout=conf_seconds(spark, PASS_TIMEOUT_CONF, PASS_TIMEOUT),
        bind_host=bind,
        advertise_host=host,
        ports=_ports(spark),
        encrypt=encrypt,
        fault=_fault_marker(),
    )
    memory = _python_memory(spark, conf_value(spark, "spark.master") or "")
    if memory is not None:
        per_task = 8.0 * n_values * math.ceil(max(n_partitions, 1) / n_tasks) / max(n_partitions, 1)
        budget, source = memory
        if per_task * READ_PEAK > budget:
            return None, (
                f"each of {n_tasks} barrier tasks would hold ~{per_task / 1e6:.3g} MB "
                f"of rows (~{per_task * READ_PEAK / 1e6:.3g} MB at its peak while "
                f"reading) in its Python worker, beyond the {budget / 1e6:.3g} MB "
                f"per task from {source}"
            )
    return settings, ""


_STARTED: set = set()  # sessions whose Python workers a fit has started


def start_python_workers(spark) -> None:
    """On the first fit of a session, starts its Python workers in the background (a job of
    one trivial task per slot that imports the kernel), so that their start-up (a new Python
    process, pyarrow, NumPy, SciPy: seconds, on the session's first Python job) overlaps the
    validation of the input, which runs in the JVM. Later fits find the workers started."""
    key = _session_key(spark)
    if key is None or key in _STARTED:
        return
    _STARTED.add(key)
    slots = _slots(spark)
    if not slots:
        return
    job = spark.range(0, slots, 1, numPartitions=slots).mapInArrow(warm_up, "id long")

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
