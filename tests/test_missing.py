"""handleInvalid='keep': rows with null or NaN features kept, their missing features
marginalised (exact EM for values missing at random).

The kernel is checked against a single-process reference written from the equations, row by
row (the marginal density of the observed features in the E-step; the conditional expectation
and covariance of the missing ones in the M-step); the Spark layer against the kernel, on every
engine, and against the complete-data fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.dataset as ds
import pytest
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql.types import StructField, StructType
from scipy.stats import multivariate_normal

from spark_gmm import GaussianMixture, kernel
from spark_gmm.data import InvalidInputError
from spark_gmm.engine import ENGINES
from spark_gmm.engine.blocks import canonical
from spark_gmm.init import Candidate
from spark_gmm.selection import GaussianMixtureSelector
from tests.datasets import blobs, vector_df
from tests.test_init import initial_params

FEATURES_ONLY = StructType([StructField("features", VectorUDT())])

# --------------------------------------------------------------------------- the reference


def reference_em_step(X, w, params, reg_covar):
    """One EM iteration from the equations, one row and one component at a time:
    (new parameters, total weighted log-likelihood at ``params``)."""
    k, d = params.k, params.d
    cov = params.full_covariances()
    resp_sum, first, second, total = np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d)), 0.0
    for x, wi in zip(X, w):
        o = ~np.isnan(x)
        m = ~o
        log_p = np.array(
            [
                math.log(params.weights[j])
                + multivariate_normal(params.means[j][o], cov[j][np.ix_(o, o)]).logpdf(x[o])
                for j in range(k)
            ]
        )
        norm = np.logaddexp.reduce(log_p)
        r = np.exp(log_p - norm)
        total += wi * norm
        for j in range(k):
            filled, conditional = x.copy(), np.zeros((d, d))
            if m.any():
                s_oo, s_mo = cov[j][np.ix_(o, o)], cov[j][np.ix_(m, o)]
                filled[m] = params.means[j][m] + s_mo @ np.linalg.solve(
                    s_oo, x[o] - params.means[j][o]
                )
                conditional[np.ix_(m, m)] = cov[j][np.ix_(m, m)] - s_mo @ np.linalg.solve(
                    s_oo, s_mo.T
                )
            resp_sum[j] += wi * r[j]
            first[j] += wi * r[j] * filled
            second[j] += wi * r[j] * (np.outer(filled, filled) + conditional)
    means = first / resp_sum[:, None]
    covs = second / resp_sum[:, None, None] - np.einsum("ki,kj->kij", means, means)
    t = params.covariance_type
    if t == "full":
        new = covs + reg_covar * np.eye(d)
    elif t == "tied":
        new = (covs * resp_sum[:, None, None]).sum(0) / resp_sum.sum() + reg_covar * np.eye(d)
    elif t == "diag":
        new = np.diagonal(covs, axis1=1, axis2=2) + reg_covar
    else:
        new = np.diagonal(covs, axis1=1, axis2=2).mean(axis=1) + reg_covar
    return kernel.MixtureParams(resp_sum / resp_sum.sum(), means, new, t), total


def _with_missing(X, fraction, seed):
    """X with each cell NaN with probability ``fraction`` (never a whole row)."""
    rng = np.random.default_rng(seed)
    out = np.array(X, dtype=np.float64)
    out[rng.random(out.shape) < fraction] = np.nan
    empty = np.isnan(out).all(axis=1)
    out[empty, 0] = np.asarray(X)[empty, 0]
    return out


def _start(X, k, covariance_type, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    means = np.nanmean(X, axis=0) + rng.normal(size=(k, d))
    means[-1, 0] += offset
    covariances = {
        "full": np.repeat(np.eye(d)[None] * 2.0, k, 0),
        "tied": np.eye(d) * 2.0,
        "diag": np.full((k, d), 2.0),
        "spherical": np.linspace(1.5, 2.5, k),
    }[covariance_type]
    return kernel.MixtureParams(np.linspace(1, 2, k), means, covariances, covariance_type)


@pytest.fixture(scope="module")
def incomplete_rows():
    """350 rows of 4 correlated features, 20% of cells missing, integer weights."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (200, 4)), rng.normal(3, 1.5, (150, 4))])
    X = _with_missing(X @ rng.normal(size=(4, 4)), 0.2, seed=2)
    return X, rng.integers(1, 3, len(X)).astype(np.float64)


# --------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("covariance_type", kernel.COVARIANCE_TYPES)
@pytest.mark.parametrize("far", [False, True], ids=["near", "far"])
@pytest.mark.parametrize("group_rows", [1, 10**9], ids=["per-pattern", "gathered"])
def test_em_with_missing_features_equals_the_equations(
    incomplete_rows, covariance_type, far, group_rows, monkeypatch
):
    """Three EM iterations, in blocks of 37 rows, against the row-by-row reference. 'far':
    a component 2,000 standard deviations away takes the kernel's per-component paths;
    full/tied rows marginalised pattern by pattern, or all gathered per row."""
    monkeypatch.setattr(kernel, "GROUP_ROWS", group_rows)
    X, w = incomplete_rows
    params = _start(X, 2, covariance_type, offset=2000.0 if far else 0.0)
    for _ in range(3):
        stats = kernel.accumulate_stats(X, w, params, block_rows=37)
        expected, log_likelihood = reference_em_step(X, w, params, 1e-6)
        params = kernel.m_step(stats, 1e-6)
        assert stats.log_likelihood == pytest.approx(log_likelihood, rel=1e-10)
        assert stats.n_rows == len(X) and stats.weight_sum == w.sum()
        np.testing.assert_allclose(params.weights, expected.weights, rtol=1e-10)
        # far: the reference's outer products of rows 2,000 away lose ~1e-9 (the kernel's are
        # taken around each mean there)
        atol = 1e-7 if far else 1e-9
        np.testing.assert_allclose(params.means, expected.means, rtol=1e-9, atol=atol)
        np.testing.assert_allclose(params.covariances, expected.covariances, rtol=1e-9, atol=atol)


@pytest.mark.parametrize("covariance_type", kernel.COVARIANCE_TYPES)
@pytest.mark.parametrize("group_rows", [1, 10**9], ids=["per-pattern", "gathered"])
def test_predict_gives_the_marginal_density_of_the_observed_features(
    incomplete_rows, covariance_type, group_rows, monkeypatch
):
    monkeypatch.setattr(kernel, "GROUP_ROWS", group_rows)
    X, _ = incomplete_rows
    params = _start(X, 3, covariance_type)
    labels, proba, log_p = kernel.predict(X, params, block_rows=50)
    cov = params.full_covariances()
    for i in range(0, len(X), 7):
        o = ~np.isnan(X[i])
        joint = [
            math.log(params.weights[j])
            + multivariate_normal(params.means[j][o], cov[j][np.ix_(o, o)]).logpdf(X[i][o])
            for j in range(3)
        ]
        norm = np.logaddexp.reduce(joint)
        assert log_p[i] == pytest.approx(norm, rel=1e-12)
        np.testing.assert_allclose(proba[i], np.exp(np.array(joint) - norm), rtol=1e-10)
        assert labels[i] == int(np.argmax(joint))


def test_statistics_add_up_over_complete_and_incomplete_rows(incomplete_rows):
    """A block's statistics are those of its complete rows plus those of its incomplete ones
    (whichever order the rows come in: grouped by pattern or not)."""
    X, w = incomplete_rows
    params = _start(X, 2, "full")
    incomplete = np.isnan(X).any(axis=1)
    parts = [
        kernel.accumulate_stats(X[rows], w[rows], params, moved=False)
        for rows in (~incomplete, incomplete)
    ]
    total = parts[0] + parts[1]
    order = np.argsort(kernel.missing_pattern_keys(np.isnan(X)), kind="stable")
    for rows in (np.arange(len(X)), order):  # patterns scattered; grouped in runs
        stats = kernel.accumulate_stats(X[rows], w[rows], params, moved=False)
        np.testing.assert_allclose(stats.to_vector(), total.to_vector(), rtol=1e-12)


def test_more_than_64_features_group_by_their_packed_pattern():
    rng = np.random.default_rng(3)
    X = _with_missing(rng.normal(size=(60, 70)), 0.05, seed=4)
    params = kernel.MixtureParams([1.0], np.nanmean(X, axis=0)[None], np.ones((1, 70)), "diag")
    full = kernel.MixtureParams([1.0], params.means, np.eye(70)[None], "full")
    keys = kernel.missing_pattern_keys(np.isnan(X))
    assert keys.dtype.kind == "V" and len(np.unique(keys)) > 10
    # identity covariances: full and diag marginalise alike
    a, b = kernel.accumulate_stats(X, None, full), kernel.accumulate_stats(X, None, params)
    assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-12)
    np.testing.assert_allclose(np.diagonal(a.second[0]), b.second[0], rtol=1e-10)


def test_canonical_order_with_missing_features():
    """Complete rows first, then one run per pattern; the same blocks whatever the order of
    the rows and whatever the bits of their NaNs."""
    rng = np.random.default_rng(5)
    X = _with_missing(rng.normal(size=(500, 3)), 0.3, seed=6)
    w = np.ones(len(X))
    other_nan = X.copy()
    other_nan[np.isnan(other_nan)] = -np.float64("nan")  # NaN with the sign bit set
    a, _ = canonical(X, w)
    b, _ = canonical(other_nan[::-1].copy(), w)
    assert a.tobytes() == b.tobytes()
    keys = kernel.missing_pattern_keys(np.isnan(a))
    assert np.all(keys[1:] >= keys[:-1]) and keys[0] == 0
    assert (~np.isnan(a).any(axis=1)).sum() == np.count_nonzero(keys == 0)


def test_initialisation_uses_the_complete_rows(incomplete_rows):
    """Every init mode gives the parameters it gives on the complete rows alone."""
    from spark_gmm.engine.blocks import partition_blocks
    from spark_gmm.engine.driver import DriverEngine

    X, w = incomplete_rows
    complete = ~np.isnan(X).any(axis=1)

    def engine(rows):
        held = partition_blocks(np.zeros(rows.sum(), np.int64), X[rows], w[rows], 4)
        return DriverEngine(held, 4, 1, 2)

    candidates = [Candidate(2, "full", 3)]
    for mode in ("kmeans", "k-means++", "random", "randomFromData"):
        kept = initial_params(
            engine(np.ones(len(X), bool)),
            len(X),
            4,
            candidates,
            mode,
            1e-6,
            True,
            n_incomplete=int((~complete).sum()),
        )[0]
        alone = initial_params(
            engine(complete), int(complete.sum()), 4, candidates, mode, 1e-6, True
        )[0]
        for name in ("weights", "means", "covariances"):
            np.testing.assert_array_equal(getattr(kept, name), getattr(alone, name), err_msg=mode)
    with pytest.raises(
        InvalidInputError,
        match=r"only 1 row\(s\) without missing features; the initialisation "
        r"\(initMode='kmeans'\) uses those and needs 2",
    ):
        initial_params(
            engine(np.ones(len(X), bool)), 2, 4, candidates, "kmeans", 1e-6, True, n_incomplete=1
        )


# --------------------------------------------------------------------------- Spark


@pytest.fixture(scope="module")
def mcar(spark):
    """Three blobs of 2,000 rows in 5 dimensions, the same with 20% of cells missing at
    random, as DataFrames (2 partitions)."""
    X, labels = blobs(2000, 5, k=3, separation=6.0, seed=11)
    Xm = _with_missing(X, 0.2, seed=12)
    return X, Xm, labels, vector_df(spark, X), vector_df(spark, Xm)


def _facts(model):
    return [model.weights, model.means, model.covariances, model.summary.logLikelihoodHistory]


@pytest.mark.compat
def test_keep_is_bit_identical_on_every_engine(spark, mcar):
    *_, data = mcar
    weighted = data.withColumn("w", (data["id"] % 3 + 1).cast("double"))
    gm = GaussianMixture(
        k=3, handleInvalid="keep", weightCol="w", nInit=2, maxIter=5, tol=0.0, seed=2
    )
    fits = {engine: gm.copy().setEngine(engine).fit(weighted) for engine in ENGINES[1:]}
    assert {e: m.summary.engine for e, m in fits.items()} == {e: e for e in ENGINES[1:]}
    reference = _facts(fits["driver"])
    for engine, model in fits.items():
        for a, b in zip(_facts(model), reference):
            np.testing.assert_array_equal(a, b, err_msg=engine)


def test_keep_recovers_the_complete_data_fit_while_skip_keeps_a_third(spark, mcar):
    """With 20% of cells missing completely at random, the estimates differ from the
    complete-data fit's by the information the missing cells held. Per coordinate of a mean,
    the complete-data standard error is sigma / sqrt(n_j) = 1 / sqrt(2000) = 0.022; the
    fraction of missing information is at most the fraction missing (0.2: less, since the
    observed features of a row tell its component), so the difference of the two estimates
    has a standard error of at most sqrt(0.2 / 0.8) * 0.022 = 0.011 for a mean and
    sqrt(0.25) * sqrt(2 / 2000) = 0.016 for a variance (0.011 for a covariance). Tolerance:
    5 of those standard errors, 0.06 for means and 0.08 for covariances."""
    X, Xm, labels, complete, incomplete = mcar
    gm = GaussianMixture(k=3, seed=1, tol=1e-6)
    full = gm.fit(complete)
    kept = gm.copy().setHandleInvalid("keep").fit(incomplete)
    skipped = gm.copy().setHandleInvalid("skip").fit(incomplete)
    n_incomplete = int(np.isnan(Xm).any(axis=1).sum())
    assert kept.summary.numIncompleteRows == n_incomplete and kept.summary.numRows == 6000
    assert kept.summary.numSkippedRows == 0 and full.summary.numIncompleteRows == 0
    assert skipped.summary.numRows == 6000 - n_incomplete
    assert 0.29 < skipped.summary.numRows / 6000 < 0.37  # 0.8 ** 5 = 0.33 expected
    order_full, order_kept = np.argsort(full.means[:, 0]), np.argsort(kept.means[:, 0])
    mean_error = np.abs(full.means[order_full] - kept.means[order_kept]).max()
    cov_error = np.abs(full.covariances[order_full] - kept.covariances[order_kept]).max()
    assert mean_error < 0.06 and cov_error < 0.08, (mean_error, cov_error)
    np.testing.assert_allclose(kept.weights, 1 / 3, atol=0.02)


@pytest.mark.parametrize("covariance_type", kernel.COVARIANCE_TYPES)
def test_keep_with_every_init_mode(spark, mcar, covariance_type):
    """Every init mode starts from the complete rows (test_initialisation_uses_the_complete_rows)
    and EM then uses them all. The k-means modes find the blobs; the random modes are as weak
    as on complete data (scikit-learn's 'random' starts every mean near the data mean), so of
    them the fit is asked to use every row."""
    from tests.datasets import adjusted_rand_index

    X, Xm, labels, _, incomplete = mcar
    n_incomplete = int(np.isnan(Xm).any(axis=1).sum())
    for mode in ("kmeans", "k-means++", "random", "randomFromData"):
        model = GaussianMixture(
            k=3,
            covarianceType=covariance_type,
            initMode=mode,
            handleInvalid="keep",
            seed=3,
            engine="driver",
        ).fit(incomplete)
        assert model.summary.numIncompleteRows == n_incomplete and model.summary.numRows == 6000
        assert sum(model.summary.clusterSizes) == 6000
        if mode.startswith("k"):
            predicted = model.transform(incomplete).orderBy("id").toPandas()["prediction"]
            assert adjusted_rand_index(predicted, labels) > 0.95, (mode, covariance_type)


def test_transform_marginalises_null_and_nan_features(spark, mcar):
    X, Xm, *_ = mcar
    model = GaussianMixture(k=3, seed=1, handleInvalid="keep", logLikelihoodCol="ll").fit(mcar[4])
    rows = Xm[:40]
    # nulls as elements of an array column, NaN in a vector column, nulls in inputCols
    arrays = spark.createDataFrame(
        [(i, [None if np.isnan(v) else float(v) for v in x]) for i, x in enumerate(rows)],
        "id long, features array<double>",
    )
    columns = spark.createDataFrame(
        [(i, *[None if np.isnan(v) else float(v) for v in x]) for i, x in enumerate(rows)],
        "id long, a double, b double, c double, d double, e double",
    )
    labels, proba, log_p = kernel.predict(rows, model._mixture)
    for df, cols in ((vector_df(spark, rows), None), (arrays, None), (columns, list("abcde"))):
        scorer = model.copy()
        if cols:
            scorer.setInputCols(cols)
        out = scorer.transform(df).orderBy("id").toPandas()
        np.testing.assert_array_equal(out["prediction"], labels)
        np.testing.assert_allclose(
            np.stack(out["probability"].map(lambda v: v.toArray())), proba, rtol=1e-12
        )
        np.testing.assert_allclose(out["ll"], log_p, rtol=1e-12)
    row = int(np.flatnonzero(np.isnan(rows).any(axis=1))[0])
    assert model.predict(Vectors.dense(rows[row])) == labels[row]
    assert model.logLikelihood(Vectors.dense(rows[row])) == pytest.approx(log_p[row], rel=1e-12)
    assert model.summary.numIncompleteRows == int(np.isnan(Xm).any(axis=1).sum())


def test_keep_errors_name_the_column_and_the_problem(spark, mcar):
    X = mcar[1][:50]
    gm = GaussianMixture(k=2, handleInvalid="keep")
    everything_missing = [Vectors.dense(x) for x in X] + [Vectors.dense([np.nan] * 5)]
    infinite = [Vectors.dense(x) for x in X] + [Vectors.dense([np.inf, 0, 0, 0, 0])]
    cases = [
        (everything_missing, "1 with every feature null or NaN"),
        (infinite, "1 with infinite values"),
        ([Vectors.dense(x) for x in X] + [None], "1 null (every feature missing)"),
    ]
    for rows, problem in cases:
        df = spark.createDataFrame([(v,) for v in rows], FEATURES_ONLY)
        with pytest.raises(InvalidInputError) as e:
            gm.fit(df)
        message = str(e.value)
        assert message.startswith(
            "features column 'features' has 1 row(s) of 51 that handleInvalid='keep' cannot keep"
        ), message
        assert problem in message and "handleInvalid='skip'" in message
        # skip drops them; the driver engine validates as Spark does
        for engine in ("driver", "jobPerPass"):
            model = gm.copy().setHandleInvalid("skip").setEngine(engine).fit(df)
            assert model.summary.numSkippedRows == 1 + int(np.isnan(X).any(axis=1).sum())
    fitted = gm.fit(spark.createDataFrame([(Vectors.dense(x),) for x in X], FEATURES_ONLY))
    empty_row = spark.createDataFrame([(Vectors.dense([np.nan] * 5),)], FEATURES_ONLY)
    with pytest.raises(Exception, match="every feature null or NaN"):
        fitted.transform(empty_row).collect()
    with pytest.raises(Exception, match="or 'keep' to marginalise"):
        fitted.copy().setHandleInvalid("error").transform(
            spark.createDataFrame([(Vectors.dense([np.nan, 0, 0, 0, 0]),)], FEATURES_ONLY)
        ).collect()


def test_selector_keeps_incomplete_rows(spark, mcar):
    selector = GaussianMixtureSelector(
        estimator=GaussianMixture(handleInvalid="keep", seed=2),
        kValues=[1, 2, 3, 4],
        covarianceTypes=["full", "diag"],
    )
    model = selector.fit(mcar[4])
    assert (model.bestModel.getK(), model.bestModel.getCovarianceType()) in {
        (3, "diag"),
        (3, "full"),
    }


def test_fit_job_keeps_incomplete_rows(spark, mcar, tmp_path):
    """handle_invalid = "keep" in a fit job's TOML: the report counts the rows with missing
    features; the score job marginalises them too."""
    from spark_gmm import cli

    X, Xm, *_ = mcar
    data = tmp_path / "in"
    spark.createDataFrame(
        [tuple(None if np.isnan(v) else float(v) for v in x) for x in Xm[:3000]],
        "a double, b double, c double, d double, e double",
    ).write.parquet(str(data))
    config = tmp_path / "fit.toml"
    config.write_text(
        f'[input]\npath = "{data}"\ninput_cols = ["a", "b", "c", "d", "e"]\n'
        'handle_invalid = "keep"\n[model]\nk = 3\n'
        f'[output]\npath = "{tmp_path / "out"}"\n[report]\nmax_histograms = 0\n'
    )
    assert cli.main_fit(["--config", str(config)]) == 0
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    n_incomplete = int(np.isnan(Xm[:3000]).any(axis=1).sum())
    assert report["input"]["incompleteRows"] == n_incomplete and report["input"]["skippedRows"] == 0
    assert report["fit"]["numIncompleteRows"] == n_incomplete
    predictions = ds.dataset(str(tmp_path / "out" / "predictions"), format="parquet").to_table()
    assert predictions.num_rows == 3000
    code = cli.main_score(
        [
            "--model",
            str(tmp_path / "out"),
            "--input",
            str(data),
            "--handle-invalid",
            "keep",
            "--output",
            str(tmp_path / "scored"),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "scored" / "summary.json").read_text())
    assert summary["input"]["incompleteRows"] == n_incomplete and summary["rows"] == 3000


@pytest.mark.parametrize("mode", ["error", "skip", pytest.param("keep", marks=pytest.mark.compat)])
def test_spark_and_driver_validation_agree(spark, mode, monkeypatch):
    """The two validations (Spark's aggregation for the Spark engines, NumPy on the collected
    rows for the driver engine) count and refuse alike: missing, infinite, null and empty
    rows, null elements among them."""
    from spark_gmm.data import prepare, resolve_features
    from spark_gmm.engine import driver
    from spark_gmm.engine.driver import collect_small

    monkeypatch.setattr(driver, "estimated_bytes", lambda df: 1)  # small: collected

    nan, inf = float("nan"), float("inf")
    good = [(i, [float(i % 7), float(i % 5)]) for i in range(30)]
    missing = [(30, [None, 1.0]), (31, [nan, 2.0]), (32, [3.0, None])]
    unkeepable = [(33, [inf, 1.0]), (34, None), (35, [None, nan]), (36, [-inf, None])]
    for rows in (good + missing, good + missing + unkeepable):
        df = spark.createDataFrame(rows, "id long, features array<double>")
        source = resolve_features(df, "features", None)
        outcomes = []
        for validate in (
            lambda: prepare(df, source, None, mode)[1],
            lambda: collect_small(df, source, None, mode, 2, "test")[1],
        ):
            try:
                outcomes.append(validate())
            except InvalidInputError as e:
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1]
        if mode == "keep" and len(rows) == 33:
            assert outcomes[0].n_incomplete == 3 and outcomes[0].n_skipped == 0
        if mode == "keep" and len(rows) == 37:
            assert "4 row(s) of 37" in outcomes[0] and "1 null" in outcomes[0]
            assert "1 with every feature null or NaN, 2 with infinite values" in outcomes[0]
        if mode == "skip":
            assert outcomes[0].n_skipped == len(rows) - 30


def test_fixed_and_explicit_starts_need_no_complete_rows(incomplete_rows):
    """Every row missing a feature: an initialModel or explicit means and covariances start
    the fit (they read no rows); explicit means alone take the data covariance of the
    complete rows, and say so when there are none."""
    from spark_gmm.engine.blocks import partition_blocks
    from spark_gmm.engine.driver import DriverEngine
    from spark_gmm.init import ExplicitInit

    X, w = incomplete_rows
    rows = np.isnan(X).any(axis=1)
    engine = DriverEngine(
        partition_blocks(np.zeros(rows.sum(), np.int64), X[rows], w[rows], 4), 4, 1, 2
    )
    n = int(rows.sum())
    candidates = [Candidate(2, "full", 3)]
    fixed = _start(X, 2, "full")
    args = (engine, n, 4, candidates, "kmeans", 1e-6, True)
    started = initial_params(*args, fixed=fixed, n_incomplete=n)[0]
    np.testing.assert_array_equal(started.means, fixed.means)
    explicit = ExplicitInit(fixed.means, fixed.weights, fixed.covariances)
    started = initial_params(*args, explicit=explicit, n_incomplete=n)[0]
    np.testing.assert_array_equal(started.covariances, fixed.covariances)
    with pytest.raises(
        InvalidInputError,
        match=r"only 0 row\(s\) without missing features.*"
        r"initialMeans without initialCovariances.*needs 1",
    ):
        initial_params(*args, explicit=ExplicitInit(fixed.means), n_incomplete=n)


def test_checkpoints_of_complete_inputs_keep_their_names():
    """A fit of complete rows finds the checkpoint an earlier version wrote: its fingerprint
    (the file name) is the one 3bedf65 computed for these settings and rows; rows with
    missing features make another."""
    from spark_gmm.checkpoint import Checkpoint
    from spark_gmm.data import InputReport
    from spark_gmm.fitting import FitSettings

    settings = FitSettings(
        "features", None, None, "error", 2, "kmeans", 1e-6, 100, 1e-3, True, checkpoint_dir="/ck"
    )
    candidates = [Candidate(3, "full", 7)]
    complete = Checkpoint.for_fit(settings, candidates, InputReport(100, 2, 4, 98.0))
    assert complete.path.endswith("spark_gmm-fd6e53558abf11843d0a28d5.json")
    incomplete = Checkpoint.for_fit(settings, candidates, InputReport(100, 2, 4, 98.0, 5))
    assert incomplete.path != complete.path
