"""The resident engine's task side: what runs inside each barrier task, holding its share of
the rows for the whole fit and answering the driver's commands (:mod:`spark_gmm.resident`).
It imports only light modules (no pyspark.ml): a fit's first tasks start cold workers."""
from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import time
from multiprocessing.connection import Client, Connection
from typing import List, Optional, Tuple

import numpy as np

from spark_gmm.blocks import accumulate, batch_to_numpy, block_rows, gather, read_packed
from spark_gmm.tasks import task_scope

MAX_COMMAND_BYTES = 1 << 31  # driver -> worker: pickled pass functions and parameters
MAX_HELLO_BYTES = 1 << 16

_HEADER = struct.Struct("<cI")  # reply kind (b"S"um, b"G"ather, b"E"rror), number of pids


def _blocks_of(batches, n_features: int):
    """A task's shuffled rows or packed blocks -> [(pid, [(X, w) blocks])], each partition's
    blocks in order, cut as :func:`spark_gmm.em.pack_blocks` cuts them (``blocks.block_rows``
    rows), so that sums per partition equal the job-per-pass engine's bit for bit."""
    pids, seqs, Xs, ws = [], [], [], []
    packed = False
    for batch in batches:
        if batch.num_rows:
            packed = "x" in batch.schema.names
            pid = batch.column("pid").to_numpy(zero_copy_only=False)
            seq = batch.column("seq").to_numpy(zero_copy_only=False)
            pieces = read_packed(batch, n_features) if packed else \
                [batch_to_numpy(batch, n_features)]
            for X, w in pieces:  # owned copies: the Arrow batch can go
                Xs.append(np.array(X))
                ws.append(np.array(w))
            pids.append(pid)
            seqs.append(seq)
    if not Xs:
        return []
    pid, seq = np.concatenate(pids), np.concatenate(seqs)
    if packed:  # one (pid, seq) per block
        order = np.argsort(seq, kind="stable")  # seq orders blocks by partition, then block
        held: List[Tuple[int, list]] = []
        for i in order.tolist():
            if not held or held[-1][0] != int(pid[i]):
                held.append((int(pid[i]), []))
            held[-1][1].append((Xs[i], ws[i]))
        return held
    X, w = np.concatenate(Xs), np.concatenate(ws)
    del Xs, ws
    if np.any(seq[1:] < seq[:-1]):  # seq orders rows by partition, then row
        order = np.argsort(seq, kind="stable")  # a few sorted runs: timsort is near-linear
        pid, X, w = pid[order], X[order], w[order]
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    ends = np.r_[starts[1:], len(pid)]
    block = block_rows(n_features)
    return [(int(pid[a]), [(X[i:min(i + block, b)], w[i:min(i + block, b)])
                           for i in range(a, b, block)])
            for a, b in zip(starts, ends)]


def _warm(batches):
    """A mapInArrow function that only imports what a fit's tasks import (see
    :func:`spark_gmm.resident.start_python_workers`)."""
    import spark_gmm.kernel  # noqa: F401  (scipy, and the kernel every pass runs)

    with task_scope():  # and freezes the imported objects (see spark_gmm.tasks)
        pass
    for _ in batches:
        pass
    return
    yield


def _connect(address: Tuple[str, int], key: bytes, seconds: float) -> Connection:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return Client(address, family="AF_INET", authkey=key)
        except (ConnectionRefusedError, ConnectionResetError, socket.timeout) as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"spark_gmm resident worker: no coordinator at {address[0]}:{address[1]} "
                    f"within {seconds:.0f} s ({exc})"
                ) from None
            time.sleep(0.2)


def _reply(kind: bytes, pieces: List[Tuple[int, np.ndarray]]) -> bytes:
    """Header, pids (int32), value counts (int64), then the float64 values of each piece."""
    pids = np.asarray([pid for pid, _ in pieces], dtype=np.int32)
    counts = np.asarray([piece.size for _, piece in pieces], dtype=np.int64)
    return b"".join([_HEADER.pack(kind, len(pieces)), pids.tobytes(), counts.tobytes()]
                    + [np.ascontiguousarray(piece, dtype=np.float64).tobytes()
                       for _, piece in pieces])


def _inject_fault(fault: Optional[Tuple[str, str]]):
    """Test-only (SPARK_GMM_FAULT_INJECTION): the first time in a fit, crash or hang."""
    if not fault:
        return
    mode, marker = fault
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # only the first time gets past
    except FileExistsError:
        return
    if mode == "exit-first-attempt":
        os._exit(3)  # a crashing Python worker mid-fit, for the retry tests
    if mode == "hang-first-attempt":
        time.sleep(3600)  # a hung worker, for the timeout tests


def _serve(conn: Connection, held, fault: Optional[Tuple[str, str]], partition: int):
    """Answers the driver's commands until it says stop (EOFError if it goes away)."""
    commands = 0
    while True:
        command = pickle.loads(conn.recv_bytes(MAX_COMMAND_BYTES))
        if command[0] == "stop":
            return
        commands += 1
        if partition == 0 and commands == 3:
            _inject_fault(fault)
        try:
            if command[0] == "sum":
                pieces = [(pid, accumulate(blocks, command[1])) for pid, blocks in held]
                kind = b"S"
            else:  # "gather"
                pieces = [(pid, gather(blocks, command[1])) for pid, blocks in held]
                kind = b"G"
            reply = _reply(kind, [(pid, p) for pid, p in pieces if p is not None])
        except Exception as exc:  # reported to the driver, which raises it
            reply = _HEADER.pack(b"E", 0) + repr(exc).encode()[:4096]
        conn.send_bytes(reply)


def _worker(address: Tuple[str, int], key: bytes, n_features: int, connect_seconds: float,
            fault: Optional[Tuple[str, str]]):
    """The barrier task (a mapInArrow function): connect, say hello, read and hold the
    blocks, serve the driver; it yields nothing."""

    def run(batches):
        from pyspark import TaskContext

        context = TaskContext.get()
        partition = context.partitionId()
        conn = _connect(address, key, connect_seconds)
        held = None
        try:
            conn.send_bytes(json.dumps({"partition": partition,
                                        "task": context.taskAttemptId()}).encode())
            held = _blocks_of(batches, n_features)
            conn.send_bytes(json.dumps({
                "pids": [pid for pid, _ in held],
                "rows": sum(X.shape[0] for _, blocks in held for X, _ in blocks),
                "bytes": sum(X.nbytes + w.nbytes for _, blocks in held for X, w in blocks),
            }).encode())
            with task_scope():
                _serve(conn, held, fault, partition)
        except EOFError:
            raise RuntimeError("spark_gmm resident worker: the driver closed the connection "
                               "before the fit ended") from None
        finally:
            conn.close()
            held = None  # the blocks are freed with the task, not kept in the worker
        return
        yield  # a generator: mapInArrow wants an iterator of batches

    return run
