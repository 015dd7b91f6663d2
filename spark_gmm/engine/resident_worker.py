"""The resident engine's task side: what runs inside each barrier task, holding its share of
the rows for the whole fit and answering the driver's commands (:mod:`spark_gmm.engine.resident`).
It imports only light modules (no pyspark.ml): a fit's first tasks start cold workers."""

from __future__ import annotations

import json
import pickle
import socket
import struct
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa

from spark_gmm.engine.blocks import (
    accumulate,
    batch_to_numpy,
    gather,
    partition_blocks,
    read_packed,
)
from spark_gmm.engine.channel import Channel, ChannelError, connect
from spark_gmm.engine.faults import inject
from spark_gmm.engine.tasks import task_scope

MAX_COMMAND_BYTES = 1 << 31  # driver -> worker: pickled pass functions and parameters
MAX_HELLO_BYTES = 1 << 16
# The barrier job's rows: one per task, the empty string when it served the fit, else why the
# task could not (e.g. no coordinator reachable), which the driver reports.
RESULT_SCHEMA = "error string"

REPLY_HEADER = struct.Struct("<cI")  # reply kind (b"S"um, b"G"ather, b"E"rror), number of pids


@dataclass(frozen=True)
class WorkerSettings:
    """What a barrier task needs to find and serve the coordinator (the key travels only in
    the task closure)."""

    address: Tuple[str, int]
    key: bytes
    encrypt: bool
    n_features: int
    connect_timeout: float  # from the task's start to its hello
    idle_timeout: float  # without a command, the worker ends its task
    fault: Optional[Tuple[str, str]] = None  # test-only (spark_gmm.engine.faults)

    def __repr__(self):  # never print the key
        return f"WorkerSettings(address={self.address}, encrypt={self.encrypt})"


def _blocks_of(batches, n_features: int):
    """A task's shuffled rows or packed blocks -> [(pid, [(X, w) blocks])], each partition's
    blocks in order, as :func:`spark_gmm.engine.blocks.pack` makes them: the partition's rows in
    :func:`spark_gmm.engine.blocks.canonical` order cut into ``blocks.block_rows`` rows (packed
    blocks arrive so, ordered by ``seq``), so that sums per partition equal the job-per-pass
    engine's bit for bit whatever order the rows arrive in."""
    pids, seqs, Xs, ws = [], [], [], []
    packed = False
    for batch in batches:
        if batch.num_rows:
            packed = "x" in batch.schema.names
            pids.append(batch.column("pid").to_numpy(zero_copy_only=False))
            if packed:
                seqs.append(batch.column("seq").to_numpy(zero_copy_only=False))
            pieces = (
                read_packed(batch, n_features) if packed else [batch_to_numpy(batch, n_features)]
            )
            for X, w in pieces:  # owned copies: the Arrow batch can go
                Xs.append(np.array(X))
                ws.append(np.array(w))
    if not Xs:
        return []
    pid = np.concatenate(pids)
    if packed:  # one (pid, seq) per block
        order = np.argsort(
            np.concatenate(seqs), kind="stable"
        )  # seq orders blocks by partition, then block
        held: List[Tuple[int, list]] = []
        for i in order.tolist():
            if not held or held[-1][0] != int(pid[i]):
                held.append((int(pid[i]), []))
            held[-1][1].append((Xs[i], ws[i]))
        return held
    X, w = np.concatenate(Xs), np.concatenate(ws)
    del Xs, ws
    return partition_blocks(pid, X, w, n_features)


def warm_up(batches):
    """A mapInArrow function that only imports what a fit's tasks import (see
    :func:`spark_gmm.engine.resident.start_python_workers`)."""
    import spark_gmm.kernel  # noqa: F401  (scipy, and the kernel every pass runs)

    with task_scope():  # and freezes the imported objects (see spark_gmm.engine.tasks)
        pass
    for _ in batches:
        pass
    return
    yield


def _connect(settings: WorkerSettings, started: float) -> Channel:
    """The authenticated channel to the coordinator, retried until ``connect_timeout``
    seconds after the task started; ConnectionError past it."""
    deadline = started + settings.connect_timeout
    host, port = settings.address
    while True:
        remaining = deadline - time.monotonic()
        try:
            return connect(
                settings.address, settings.key, settings.encrypt, max(min(remaining, 10.0), 0.5)
            )
        except (OSError, EOFError) as exc:  # refused, unreachable, cut off, a failed handshake
            if time.monotonic() + 0.2 > deadline:
                why = exc or type(exc).__name__
                raise ConnectionError(
                    f"no coordinator reachable at {host}:{port} within "
                    f"{settings.connect_timeout:g} s of the task's start ({why})"
                ) from None
            time.sleep(0.2)


def encode_reply(kind: bytes, pieces: List[Tuple[int, np.ndarray]]) -> bytes:
    """Header, pids (int32), value counts (int64), then the float64 values of each piece."""
    pids = np.asarray([pid for pid, _ in pieces], dtype=np.int32)
    counts = np.asarray([piece.size for _, piece in pieces], dtype=np.int64)
    return b"".join(
        [REPLY_HEADER.pack(kind, len(pieces)), pids.tobytes(), counts.tobytes()]
        + [np.ascontiguousarray(piece, dtype=np.float64).tobytes() for _, piece in pieces]
    )


def _serve(channel: Channel, held, settings: WorkerSettings, partition: int):
    """Answers the driver's commands until it says stop or sends nothing for
    ``idle_timeout`` seconds; EOFError when it closes the connection."""
    commands = 0
    while True:
        try:
            message = channel.recv(MAX_COMMAND_BYTES, timeout=settings.idle_timeout)
        except socket.timeout:
            return  # the driver is hung or gone without closing: the task ends, the blocks go
        command = pickle.loads(message)  # authenticated: only the driver holds the key
        if command[0] == "stop":
            return
        commands += 1
        injecting = settings.fault is not None and partition == 0 and commands == 3
        if injecting:
            inject(settings.fault, "command")
        try:
            if command[0] == "sum":
                pieces = [(pid, accumulate(blocks, command[1])) for pid, blocks in held]
                kind = b"S"
            else:  # "gather"
                pieces = [(pid, gather(blocks, command[1])) for pid, blocks in held]
                kind = b"G"
            reply = encode_reply(kind, [(pid, p) for pid, p in pieces if p is not None])
        except Exception as exc:  # reported to the driver, which raises it
            reply = REPLY_HEADER.pack(b"E", 0) + repr(exc).encode()[:4096]
        channel.send(reply)
        if injecting:
            inject(settings.fault, "replied")


def _load_report(held) -> bytes:
    """What the task holds, per partition: the driver checks it against the validated input."""
    return json.dumps(
        {
            "pids": [pid for pid, _ in held],
            "rows": [sum(X.shape[0] for X, _ in blocks) for _, blocks in held],
            "weights": [float(sum(float(w.sum()) for _, w in blocks)) for _, blocks in held],
            "bytes": sum(X.nbytes + w.nbytes for _, blocks in held for X, w in blocks),
        }
    ).encode()


def _result(error: str):
    return pa.RecordBatch.from_pydict({"error": pa.array([error], pa.string())})


def worker_function(settings: WorkerSettings):
    """The barrier task (a mapInArrow function): connect, say hello, read and hold the
    blocks, serve the driver. It yields one row: "" when it served the fit until told to
    stop (or until idle), else why it could not (no coordinator reachable), so that the driver
    learns it when the job ends rather than after Spark's retries of a failing stage. A
    worker the driver drops fails its task (see below)."""

    def run(batches):
        from pyspark import TaskContext

        started = time.monotonic()
        context = TaskContext.get()
        partition = context.partitionId()
        try:
            channel = _connect(settings, started)
        except ConnectionError as exc:
            yield _result(str(exc))
            return
        held = None
        try:
            channel.send(
                json.dumps({"partition": partition, "task": context.taskAttemptId()}).encode()
            )
            try:
                if settings.fault is not None and partition == 0:
                    inject(settings.fault, "load")
                held = _blocks_of(batches, settings.n_features)
                report = _load_report(held)
            except MemoryError:
                report = json.dumps({"error": "MemoryError while holding its rows"}).encode()
                held = None
            channel.send(report)
            if held is None:  # the driver ends the fit; a closed connection would look lost
                channel.recv(MAX_COMMAND_BYTES, timeout=settings.idle_timeout)
            else:
                with task_scope():
                    _serve(channel, held, settings, partition)
        except (EOFError, ChannelError, OSError) as exc:
            # the driver dropped this worker (another task of this stage attempt was lost, or
            # the fit was cancelled): the task fails, so that Spark runs the whole stage again
            # rather than only the tasks that failed
            raise RuntimeError(
                "spark_gmm resident worker: the driver closed the connection "
                f"before the fit ended ({exc or type(exc).__name__})"
            ) from None
        finally:
            channel.close()
            held = None  # the blocks are freed with the task, not kept in the worker
        yield _result("")

    return run
