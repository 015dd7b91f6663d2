"""Generated data sets (NumPy, no downloads, no pyspark): the blobs and the 1-D mixture that
the tests, the benchmarks and the examples fit."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def blobs(
    n_per: int,
    d: int,
    k: int = 3,
    separation: float = 10.0,
    seed: int = 0,
    scale: Tuple[float, float] = (1.0, 1.0),
):
    """k spherical Gaussian blobs in d dimensions, ``n_per`` rows each, in random order:
    (X (k * n_per, d) float64, labels (k * n_per,)). The centres are drawn from
    N(0, separation^2) per coordinate; blob j's standard deviation uniformly from ``scale``
    (1 for every blob by default)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, separation, size=(k, d))
    low, high = scale
    stds = np.ones(k) if low == high == 1.0 else rng.uniform(low, high, size=k)
    X = np.vstack([rng.normal(c, s, size=(n_per, d)) for c, s in zip(centers, stds)])
    labels = np.repeat(np.arange(k), n_per)
    order = rng.permutation(len(X))
    return X[order], labels[order]


def one_d_mixture(seed: int = 0):
    """17,000 values of N(-0.5, 0.2) x 2000, N(-0.1, 0.07) x 5000, N(0.2, 0.13) x 10000 (means,
    standard deviations, rows), in random order, as a (17000, 1) array."""
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [rng.normal(-0.5, 0.2, 2000), rng.normal(-0.1, 0.07, 5000), rng.normal(0.2, 0.13, 10000)]
    )
    return rng.permutation(x)[:, None]
