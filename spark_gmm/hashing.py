"""Seeded hashes of rows by their content, in NumPy alone (the packing tasks and the kernel
import it): every random choice of the initialisation, and the canonical order of a
partition's rows, are functions of the rows' values and a seed, never of where a row sits,
so a fit does not depend on how its input is partitioned or ordered.

The hash mixes the 64-bit patterns of a row's columns one after the other with splitmix64's
finaliser (a bijection of uint64 with full avalanche): rows equal in every column hash
equally, and -0.0 hashes as 0.0.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SHIFT_1, _SHIFT_2, _SHIFT_3 = np.uint64(30), np.uint64(27), np.uint64(31)
_UNIFORM_SHIFT = np.uint64(11)  # the top 53 bits make a double in [0, 1)
_UNIFORM_SCALE = 2.0**-53


def _mix(z: np.ndarray, scratch: Optional[np.ndarray] = None) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (which it returns); ``scratch``, a
    uint64 array of z's shape, saves allocating the shifted copies."""
    if scratch is None:
        scratch = np.empty_like(z)
    for shift, multiplier in ((_SHIFT_1, _MIX_1), (_SHIFT_2, _MIX_2), (_SHIFT_3, None)):
        np.right_shift(z, shift, out=scratch)
        z ^= scratch
        if multiplier is not None:
            z *= multiplier
    return z


def _seed_state(seed: int) -> np.uint64:
    """A seed (any Python int, negative ones too) as a mixed uint64 state."""
    state = np.array([seed % (1 << 64)], dtype=np.uint64)
    state += _GOLDEN
    return _mix(state)[0]


def row_hash(X: np.ndarray, w: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
    """A uint64 hash of each row of X (n, d), and of its weight when ``w`` (n,) is given,
    seeded by ``seed``: a function of the row's values alone."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    hashes = np.full(n, _seed_state(seed), dtype=np.uint64)
    columns = [X[:, j] for j in range(X.shape[1])]
    if w is not None:
        columns.append(np.asarray(w, dtype=np.float64))
    values, scratch = np.empty(n), np.empty(n, dtype=np.uint64)
    for column in columns:
        np.add(column, 0.0, out=values)  # -0.0 + 0.0 is 0.0
        hashes ^= values.view(np.uint64)
        _mix(hashes, scratch)
    return hashes


def hash_uniforms(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> float64 uniforms in [0, 1) (their top 53 bits)."""
    return (hashes >> _UNIFORM_SHIFT).astype(np.float64) * _UNIFORM_SCALE


def hash_stream(hashes: np.ndarray, count: int) -> np.ndarray:
    """``count`` further uint64 values from each hash, (n, count): the splitmix64 sequence
    started at the hash, so draw j of a row depends on its hash and j alone."""
    steps = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
    return _mix(np.asarray(hashes, dtype=np.uint64)[:, None] + steps[None, :])
