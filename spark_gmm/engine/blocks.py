"""A fit's rows as dense float64 blocks, without Spark: Arrow batches of prepared rows ->
NumPy, and pass functions run over a partition's blocks. This is what every task of either
pass engine imports, so it stays light (NumPy and pyarrow, no pyspark)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from spark_gmm.engine.tasks import task_scope
from spark_gmm.hashing import row_hash
from spark_gmm.kernel import has_missing, missing_pattern_keys

if TYPE_CHECKING:
    from spark_gmm.kernel import SufficientStats

FEATURES = "__gmm_x"  # internal column names in prepared data
WEIGHT = "__gmm_w"
# Rows x features doubles per block: at most 2**20 (8 MiB per value).
BLOCK_ELEMENTS = 1 << 20
# Packed blocks: one row per block of a partition's prepared rows (block_rows rows, the last
# shorter), float64 row-major bytes of X and of the weights.
BLOCKS_SCHEMA = "n int, x binary, w binary"
# Seed of the hash that orders each partition's rows (any fixed value; :func:`canonical`).
CANONICAL_SEED = 0x5EED_0F_0DE5

# A pass computes one statistics vector from (X, w): kernel functions bound with partial.
PassFunction = Callable[[np.ndarray, np.ndarray], "SufficientStats"]
# A gather keeps some rows of each (X, w) block: (m, features + 1) arrays, weight last.
GatherFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


def block_rows(n_features: int) -> int:
    """Rows per block: ``BLOCK_ELEMENTS // n_features`` (at least 1)."""
    return max(1, BLOCK_ELEMENTS // n_features)


def list_array_to_numpy(column: pa.Array, n_features: int) -> np.ndarray:
    """An Arrow list<double> array with no nulls (n rows) -> (n, n_features) float64."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten()  # honours the array's offset and slicing
    out = values.to_numpy(zero_copy_only=False)
    if out.dtype != np.float64:
        out = out.astype(np.float64)
    return out.reshape(len(column), n_features)


def batch_to_numpy(batch: pa.RecordBatch, n_features: int):
    """A prepared Arrow batch -> (X (n, d) float64, weights (n,) float64)."""
    X = list_array_to_numpy(batch.column(FEATURES), n_features)
    w = batch.column(WEIGHT).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return X, w


def canonical(X: np.ndarray, w: np.ndarray):
    """A partition's rows X (n, d) and weights w (n,) in canonical order (new arrays, -0.0
    written as 0.0): sorted by the high bits of :func:`spark_gmm.hashing.row_hash` (of
    features and weight, seed ``CANONICAL_SEED``), rows whose high bits tie by their values.
    The order depends only on which rows there are, so a partition read in another order
    (Spark recomputing a shuffled input) makes the same blocks and the same sums bit for bit.

    One ``np.sort`` of uint64 keys does it, each the hash's high ``64 - bits`` bits with the
    row's index in the low ``bits`` (18M keys: 1.7 s on the 2-core machine, an argsort of
    the hashes 3.2 s). Rows whose high bits tie are then in input order; the runs of them
    holding different rows (about n**2 / 2**(65 - bits) pairs: none expected at 1M rows,
    ~300 at 18M) are sorted by value. Equal rows need no order among themselves.

    Rows with missing features (NaN, every NaN written as the same NaN first) then follow the
    complete ones, grouped by their pattern of missing features in the order of
    :func:`spark_gmm.kernel.missing_pattern_keys` (hash order within a pattern): the kernel
    marginalises one pattern at a time, and a block then holds each pattern in one run.

    The partition is held whole meanwhile: its rows twice (input and output) and 16 bytes a
    row of keys and indices."""
    n = X.shape[0]
    missing = has_missing(X)
    if missing:
        X = np.where(np.isnan(X), np.nan, X)
    if n < 2:
        return X + 0.0, w + 0.0
    bits = (n - 1).bit_length()
    index_mask = np.uint64((1 << bits) - 1)
    keys = row_hash(X, w, CANONICAL_SEED)
    keys &= ~index_mask
    keys |= np.arange(n, dtype=np.uint64)
    keys.sort()
    order = np.bitwise_and(keys, index_mask).view(np.int64)  # indices < 2**63: exact
    keys &= ~index_mask  # the hashes' high bits, in canonical order
    X, w = np.take(X, order, axis=0), np.take(w, order)
    X += 0.0
    w += 0.0
    tied = np.flatnonzero(keys[1:] == keys[:-1])  # row i ties with row i + 1
    if tied.size:
        differs = np.any(X[tied] != X[tied + 1], axis=1) | (w[tied] != w[tied + 1])
        if differs.any():  # hash ties between different rows: their runs ordered by value
            new_run = np.r_[True, tied[1:] != tied[:-1] + 1]  # runs of consecutive ties
            run_of_tie = np.cumsum(new_run) - 1
            first_tie = np.flatnonzero(new_run)
            last_tie = np.r_[first_tie[1:], tied.size] - 1
            for run in np.unique(run_of_tie[differs]):
                rows = slice(tied[first_tie[run]], tied[last_tie[run]] + 2)
                by_value = np.lexsort((w[rows], *X[rows].T[::-1]))
                X[rows], w[rows] = X[rows][by_value], w[rows][by_value]
    if missing:
        by_pattern = np.argsort(missing_pattern_keys(np.isnan(X)), kind="stable")
        X, w = X[by_pattern], w[by_pattern]
    return X, w


def pack(n_features: int):
    """The mapInArrow function: Arrow batches of prepared rows -> rows of packed blocks of
    ``block_rows(n_features)`` rows (the last of a partition shorter). The partition's rows
    are held and put in :func:`canonical` order first, so its blocks depend only on which
    rows it has; and a block holds more than a batch's ``maxRecordsPerBatch`` rows, since every
    block costs the kernel its per-call set-up again on every pass."""
    block = block_rows(n_features)

    def record(X, w):
        return pa.RecordBatch.from_pydict(
            {
                "n": pa.array([X.shape[0]], pa.int32()),
                "x": pa.array([np.ascontiguousarray(X).tobytes()], pa.binary()),
                "w": pa.array([w.tobytes()], pa.binary()),
            }
        )

    def run(batches):
        with task_scope():
            Xs, ws = [], []
            for batch in batches:
                X, w = batch_to_numpy(batch, n_features)
                Xs.append(X)
                ws.append(w)
            if not Xs:
                return
            X, w = np.concatenate(Xs), np.concatenate(ws)
            del Xs, ws
            if not X.shape[0]:
                return
            X, w = canonical(X, w)
            for start in range(0, X.shape[0], block):
                yield record(X[start : start + block], w[start : start + block])

    return run


def partition_blocks(
    pid: np.ndarray, X: np.ndarray, w: np.ndarray, n_features: int
) -> List[Tuple[int, List[Tuple[np.ndarray, np.ndarray]]]]:
    """Rows tagged with their partition (``pid``, any order) -> [(pid, [(X, w) blocks])] in
    pid order: each partition's rows in :func:`canonical` order, cut into
    :func:`block_rows` rows, the blocks :func:`pack` makes of that partition. What the
    resident workers and the driver engine hold, so that sums per partition equal the
    job-per-pass engine's bit for bit whatever order the rows arrive in."""
    if np.any(pid[1:] < pid[:-1]):
        by_pid = np.argsort(pid, kind="stable")
        pid, X, w = pid[by_pid], X[by_pid], w[by_pid]
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    ends = np.r_[starts[1:], len(pid)]
    block = block_rows(n_features)
    held = []
    for a, b in zip(starts, ends):
        Xp, wp = canonical(X[a:b], w[a:b])
        held.append(
            (int(pid[a]), [(Xp[i : i + block], wp[i : i + block]) for i in range(0, b - a, block)])
        )
    return held


def read_packed(batch: pa.RecordBatch, n_features: int):
    """(X, w) of each packed row of a batch, viewing the Arrow buffers without copies."""
    ns = batch.column("n").to_numpy(zero_copy_only=False)
    xs, ws = batch.column("x"), batch.column("w")
    for i, n in enumerate(ns):
        X = np.frombuffer(xs[i].as_buffer(), dtype=np.float64).reshape(int(n), n_features)
        yield X, np.frombuffer(ws[i].as_buffer(), dtype=np.float64)


def accumulate(
    blocks: Iterable[Tuple[np.ndarray, np.ndarray]], passes: Sequence[PassFunction]
) -> Optional[np.ndarray]:
    """The statistics vectors of all ``passes`` over the (X, w) blocks of one partition,
    concatenated and summed in block order (None for a partition without rows). Callers
    limit BLAS to one thread: two tasks already share two cores."""
    total = None
    for X, w in blocks:
        if X.shape[0]:
            vector = np.concatenate([p(X, w).to_vector() for p in passes])
            total = vector if total is None else total + vector
    return total


def gather(
    blocks: Iterable[Tuple[np.ndarray, np.ndarray]], function: GatherFunction
) -> Optional[np.ndarray]:
    """The rows ``function`` keeps of each (X, w) block of one partition, in block order
    (None when it keeps none)."""
    kept = [function(X, w) for X, w in blocks if X.shape[0]]
    kept = [rows for rows in kept if rows.shape[0]]
    return np.concatenate(kept) if kept else None
