"""A fit does not depend on how its rows are partitioned or ordered: every random choice of
the initialisation is a function of row content and seed (spark_gmm.hashing), and each
partition's rows are packed in a canonical order (spark_gmm.engine.blocks.canonical).

* The same rows in 1, 3 or 7 partitions, or shuffled, give the same mixture, components in
  the same order, for every init mode and covariance type, on every engine (the partition
  sums differ only in rounding).
* The same partitions with their rows in another order give a bit-identical fit.
* The hash, the canonical order, the sample and the random responsibilities, in NumPy.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from spark_gmm import GaussianMixture, kernel
from spark_gmm.engine import blocks
from spark_gmm.engine.blocks import FEATURES, WEIGHT, canonical, pack, read_packed
from spark_gmm.engine.partitions import num_partitions
from spark_gmm.estimator import fit_settings
from spark_gmm.fitting import fit_candidates
from spark_gmm.hashing import hash_stream, hash_uniforms, row_hash
from spark_gmm.init import Candidate
from tests.datasets import blobs

INIT_MODES = ["kmeans", "k-means++", "random", "randomFromData"]
ENGINES = ["driver", "jobPerPass", "resident"]


@pytest.fixture(scope="module")
def rows():
    """Three blobs, 600 x 3, weights 0..3 (some rows of weight 0)."""
    X, _ = blobs(200, 3, k=3, separation=4.0, seed=21)
    w = np.random.default_rng(2).integers(0, 4, len(X)).astype(float)
    return X, w


@pytest.fixture(scope="module")
def layouts(spark, rows):
    """The same rows read five ways: {name: (cached DataFrame, its partition count)}."""
    X, w = rows
    data = [(i, [float(v) for v in x], float(wi)) for i, (x, wi) in enumerate(zip(X, w))]
    base = spark.createDataFrame(data, "id long, features array<double>, w double")
    frames = {
        "1 partition": base.repartition(1),
        "3 partitions": base.repartition(3, "id").sortWithinPartitions("id"),
        "7 partitions": base.repartition(7, "id").sortWithinPartitions("id"),
        "shuffled into 2": base.orderBy(F.rand(1)).repartition(2),
        "shuffled into 5": base.orderBy(F.rand(2)).repartition(5),
    }
    cached = {}
    for name, df in frames.items():
        df = df.cache()
        df.count()
        cached[name] = (df, num_partitions(df))
    yield cached
    for df, _ in cached.values():
        df.unpersist()


def _fit_every_type(df, init_mode: str, engine: str):
    """One fit of k=3 for each covariance type (candidates of one fit, as the selector runs
    them): the outcome."""
    gm = GaussianMixture(
        k=3, initMode=init_mode, weightCol="w", maxIter=3, tol=0.0, seed=5, engine=engine
    )
    candidates = [Candidate(3, t, 5) for t in kernel.COVARIANCE_TYPES]
    return fit_candidates(df, candidates, fit_settings(gm))


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(
        actual, expected, rtol=1e-8, atol=1e-8 * float(np.max(np.abs(expected))), err_msg=what
    )


# Every init mode on the driver and resident engines; on the slower job-per-pass engine (a
# Spark job per pass) the two modes whose random choices differ in kind: a sample, random
# responsibilities. The init modes run the same code on every engine; what differs is how
# the rows are packed.
@pytest.mark.parametrize(
    "init_mode, engine",
    [(mode, engine) for engine in ("driver", "resident") for mode in INIT_MODES]
    + [("kmeans", "jobPerPass"), ("random", "jobPerPass")],
)
def test_same_mixture_whatever_the_partitioning(layouts, init_mode, engine):
    assert [n for _, n in layouts.values()] == [1, 3, 7, 2, 5]
    fits = {name: _fit_every_type(df, init_mode, engine) for name, (df, _) in layouts.items()}
    reference = fits.pop("1 partition")
    assert reference.engine == engine
    for result in reference.results:  # three components, each holding a blob's share
        assert np.all(result.params.weights > 0.1), result.params.weights
    for name, outcome in fits.items():
        assert outcome.engine == engine
        for t, result, expected in zip(kernel.COVARIANCE_TYPES, outcome.results, reference.results):
            what = f"{name}, {t}"
            _assert_close(result.params.means, expected.params.means, f"means: {what}")
            _assert_close(result.params.weights, expected.params.weights, f"weights: {what}")
            _assert_close(
                result.params.covariances, expected.params.covariances, f"covariances: {what}"
            )
            _assert_close(result.history, expected.history, f"history: {what}")


def _facts(model):
    s = model.summary
    return {
        "weights": np.asarray(model.weights),
        "means": model.means,
        "covariances": model.covariances,
        "history": np.asarray(s.logLikelihoodHistory),
        "logLikelihood": s.logLikelihood,
    }


def _in_two_orders(spark, rows, partitions: int):
    """The rows in the same ``partitions`` partitions, sorted within them by id and by a
    key unrelated to it."""
    X, w = rows
    data = [(i, [float(v) for v in x], float(wi)) for i, (x, wi) in enumerate(zip(X, w))]
    base = spark.createDataFrame(data, "id long, features array<double>, w double").repartition(
        partitions, "id"
    )
    return (base.sortWithinPartitions("id"), base.sortWithinPartitions(F.xxhash64("id", F.lit(7))))


def _assert_bit_identical(a, b):
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("init_mode", ["kmeans", "random"])
def test_bit_identical_whatever_the_order_within_partitions(spark, rows, init_mode, engine):
    by_id, by_hash = _in_two_orders(spark, rows, 3)
    placed = [
        df.select(F.spark_partition_id().alias("p"), "id").collect() for df in (by_id, by_hash)
    ]
    assert placed[0] != placed[1] and sorted(placed[0]) == sorted(placed[1])
    gm = GaussianMixture(
        k=3,
        initMode=init_mode,
        weightCol="w",
        covarianceType="full",
        nInit=2,
        maxIter=6,
        tol=0.0,
        seed=8,
        engine=engine,
    )
    first, second = gm.fit(by_id), gm.fit(by_hash)
    assert first.summary.engine == second.summary.engine == engine
    _assert_bit_identical(_facts(first), _facts(second))


def test_bit_identical_whatever_the_order_with_several_blocks_per_partition(
    spark, rows, monkeypatch
):
    """Blocks of 10 rows (packed on the driver's block size, before the resident engine's
    shuffle too): the blocks of a partition, not only their sums, are the same."""
    from spark_gmm.engine import resident

    monkeypatch.setattr(resident, "PACK_VALUES", 0)
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 30)
    by_id, by_hash = _in_two_orders(spark, rows, 3)
    gm = GaussianMixture(
        k=3, initMode="random", weightCol="w", covarianceType="diag", maxIter=5, tol=0.0, seed=4
    )
    fits = [gm.copy().setEngine(engine).fit(df) for engine in ENGINES for df in (by_id, by_hash)]
    for model in fits[1:]:
        _assert_bit_identical(_facts(model), _facts(fits[0]))


# --------------------------------------------------------------------------- NumPy alone


def test_row_hash_is_a_function_of_the_row_and_the_seed():
    rng = np.random.default_rng(0)
    X, w = rng.standard_normal((1000, 4)), rng.random(1000)
    hashes = row_hash(X, w, 3)
    assert hashes.dtype == np.uint64
    np.testing.assert_array_equal(row_hash(X.copy(), w.copy(), 3), hashes)
    order = rng.permutation(1000)
    np.testing.assert_array_equal(row_hash(X[order], w[order], 3), hashes[order])
    np.testing.assert_array_equal(row_hash(np.asfortranarray(X), w, 3), hashes)
    assert len(np.unique(hashes)) == 1000
    assert np.all(row_hash(X, w, 4) != hashes)  # another seed
    assert np.all(row_hash(X, w, -3) != hashes)
    assert np.all(row_hash(X, None, 3) != hashes)  # the weight counts
    assert np.all(row_hash(X[:, ::-1], w, 3) != hashes)  # and the order of the columns
    bumped = X.copy()
    bumped[:, 2] = np.nextafter(bumped[:, 2], np.inf)  # one bit of one value
    assert np.all(row_hash(bumped, w, 3) != hashes)


def test_row_hash_takes_negative_zero_as_zero():
    X = np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, -0.0]])
    w = np.array([0.0, -0.0, 0.0])
    hashes = row_hash(X, w, 1)
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]
    negated = np.array([[-1.0 * X[0, 0], 1.0]])  # a computed -0.0
    assert np.signbit(negated[0, 0]) and row_hash(negated, w[:1], 1)[0] == hashes[0]


def test_hash_uniforms_lie_in_the_unit_interval_and_look_uniform():
    extremes = hash_uniforms(np.array([0, 2**64 - 1, 2**63], dtype=np.uint64))
    assert extremes[0] == 0.0 and extremes[1] < 1.0 and extremes[2] == 0.5
    u = hash_uniforms(row_hash(np.arange(100_000, dtype=float)[:, None], None, 9))
    assert np.all((u >= 0.0) & (u < 1.0))
    counts = np.histogram(u, bins=10, range=(0.0, 1.0))[0]
    assert np.all(np.abs(counts - 10_000) < 500), counts  # ~5 standard deviations
    draws = hash_uniforms(hash_stream(row_hash(np.arange(10_000, dtype=float)[:, None]), 4))
    assert draws.shape == (10_000, 4)
    assert np.all((draws >= 0.0) & (draws < 1.0))
    assert np.max(np.abs(np.corrcoef(np.column_stack([u[:10_000], draws]).T) - np.eye(5))) < 0.05


def _shuffled_copy(X, w, seed):
    order = np.random.default_rng(seed).permutation(len(X))
    return X[order], w[order]


def test_canonical_order_depends_only_on_which_rows_there_are():
    rng = np.random.default_rng(1)
    X = rng.integers(-1, 2, (3000, 2)).astype(float)  # many equal rows
    X[X == 0] = -0.0
    X[::3] = 0.0
    w = rng.integers(0, 3, 3000).astype(float)
    Xc, wc = canonical(X, w)
    for seed in (1, 2):
        Xo, wo = canonical(*_shuffled_copy(X, w, seed))
        assert Xo.tobytes() == Xc.tobytes() and wo.tobytes() == wc.tobytes()
    assert not np.any(np.signbit(Xc[Xc == 0]))
    assert sorted(map(tuple, np.column_stack([Xc, wc]))) == sorted(
        map(tuple, np.column_stack([X + 0.0, w]))
    )


def test_canonical_order_settles_hash_ties_between_different_rows(monkeypatch):
    """A hash of 3 values ties most rows: they are ordered by value, whatever the input."""
    real = blocks.row_hash
    monkeypatch.setattr(
        blocks, "row_hash", lambda X, w, seed: (real(X, w, seed) % np.uint64(3)) << np.uint64(62)
    )
    rng = np.random.default_rng(2)
    X, w = rng.integers(0, 5, (400, 3)).astype(float), rng.integers(0, 2, 400).astype(float)
    Xc, wc = canonical(X, w)
    for seed in (3, 4):
        Xo, wo = canonical(*_shuffled_copy(X, w, seed))
        assert Xo.tobytes() == Xc.tobytes() and wo.tobytes() == wc.tobytes()


def _packed_blocks(X, w, cuts):
    batches = [
        pa.RecordBatch.from_pydict(
            {
                FEATURES: pa.array(X[lo:hi].tolist(), pa.list_(pa.float64())),
                WEIGHT: pa.array(w[lo:hi]),
            }
        )
        for lo, hi in zip(cuts, cuts[1:])
    ]
    return [
        block for packed in pack(X.shape[1])(batches) for block in read_packed(packed, X.shape[1])
    ]


def test_pack_cuts_the_same_blocks_whatever_the_order_of_the_rows(monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 30)  # 10 rows of 3 features
    rng = np.random.default_rng(3)
    X, w = rng.standard_normal((57, 3)), rng.random(57)
    first = _packed_blocks(X, w, [0, 4, 4, 27, 30, 57])
    second = _packed_blocks(*_shuffled_copy(X, w, 5), [0, 20, 57])
    assert [len(Xb) for Xb, _ in first] == [10, 10, 10, 10, 10, 7]
    for (Xa, wa), (Xb, wb) in zip(first, second, strict=True):
        assert Xa.tobytes() == Xb.tobytes() and wa.tobytes() == wb.tobytes()


def _sample(X, w, n_blocks, fraction, seed, limit):
    kept = [
        kernel.sample_rows(Xb, wb, fraction, seed)
        for Xb, wb in zip(np.array_split(X, n_blocks), np.array_split(w, n_blocks))
    ]
    return kernel.canonical_sample(np.concatenate(kept), seed, limit)


def test_sample_is_the_same_whatever_the_blocks():
    rng = np.random.default_rng(4)
    X = np.round(rng.standard_normal((20_000, 2)), 1)  # ~1,600 distinct rows, many repeated
    w = rng.integers(0, 4, len(X)).astype(float)
    reference = _sample(X, w, 1, 0.3, 7, 400)
    assert reference.shape == (400, 3)
    assert len(np.unique(reference[:, :-1], axis=0)) == 400  # equal rows merged
    assert np.all(np.diff(reference[:, 0]) >= 0)  # sorted by features
    for n_blocks, seed in ((7, 1), (40, 2)):
        Xs, ws = _shuffled_copy(X, w, seed)
        np.testing.assert_array_equal(_sample(Xs, ws, n_blocks, 0.3, 7, 400), reference)
    assert not np.array_equal(_sample(X, w, 1, 0.3, 8, 400), reference)  # another seed


def test_sample_keeps_equal_rows_together_with_their_summed_weight():
    X = np.repeat(np.arange(50, dtype=float), 20)[:, None]  # 50 values, 20 rows each
    w = np.tile([1.0, 2.0], 500)  # each value: 10 rows of weight 1, 10 of weight 2
    kept = kernel.sample_rows(X, w, 0.5, 3)
    whole = kernel.sample_rows(X, w, 1.0, 3)
    np.testing.assert_array_equal(whole, np.column_stack([np.arange(50.0), np.full(50, 30.0)]))
    # a value's 10 rows of weight 1 (10 in all) are kept together, so are its rows of weight
    # 2 (20 in all): each kept value carries 10, 20 or 30
    assert set(kept[:, 1]) <= {10.0, 20.0, 30.0}
    assert 0 < len(kept) < 50


def test_random_responsibilities_do_not_depend_on_blocks_or_order():
    rng = np.random.default_rng(5)
    X, w = rng.standard_normal((5000, 3)), rng.integers(0, 4, 5000).astype(float)
    origin = X[0]
    reference = kernel.random_resp_stats(X, w, origin, 4, "full", 11)
    Xs, ws = _shuffled_copy(X, w, 6)
    for block_rows in (None, 77):
        other = kernel.random_resp_stats(Xs, ws, origin, 4, "full", 11, block_rows)
        np.testing.assert_allclose(other.to_vector(), reference.to_vector(), rtol=1e-10)
    resp = reference.resp / reference.resp.sum()
    assert np.all(np.abs(resp - 0.25) < 0.02)  # uniform responsibilities: about equal
    another = kernel.random_resp_stats(X, w, origin, 4, "full", 12)
    assert not np.allclose(another.to_vector(), reference.to_vector())
