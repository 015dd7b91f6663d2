"""spark_gmm.plot: the numbers behind the pictures (component curves, ellipses, samples)."""

import math
import re
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

from spark_gmm import GaussianMixtureModel, plot  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _model_1d():
    return GaussianMixtureModel.fromArrays(
        [0.2, 0.3, 0.5], [[-0.5], [-0.1], [0.2]], [0.04, 0.0049, 0.0169], "spherical"
    )


def _model_3d():
    cov0 = np.array([[2.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 0.5]])
    cov1 = np.array([[0.5, -0.3, 0.0], [-0.3, 1.5, 0.4], [0.0, 0.4, 1.0]])
    model = GaussianMixtureModel.fromArrays(
        [0.6, 0.4], [[0.0, 0.0, 0.0], [5.0, -3.0, 2.0]], np.stack([cov0, cov1]), "full"
    )
    return model.setInputCols(["a", "b", "c"])


def _draw(model, n, seed=0):
    rng = np.random.default_rng(seed)
    full = plot._mixture(model)[2]
    comp = rng.choice(len(model.weights), size=n, p=np.asarray(model.weights))
    X = np.stack([rng.multivariate_normal(model.means[c], full[c]) for c in comp])
    return X, comp


def _normal(x, m, v):
    return np.exp(-0.5 * (x - m) ** 2 / v) / math.sqrt(2 * math.pi * v)


def test_each_component_is_weighted_and_normalised_individually():
    model = _model_1d()
    x = np.linspace(-2.0, 2.0, 20001)
    parts = plot.component_densities_1d(model, x)
    assert parts.shape == (3, x.size)
    for j, w in enumerate(model.weights):
        # each curve is w_j * N(x | mu_j, sigma_j): its area is its weight, not 1 and not the sum
        assert np.trapezoid(parts[j], x) == pytest.approx(w, rel=1e-6)
        np.testing.assert_allclose(
            parts[j], w * _normal(x, model.means[j, 0], model.covariances[j]), rtol=1e-12
        )
    assert np.trapezoid(parts.sum(axis=0), x) == pytest.approx(1.0, rel=1e-6)


def test_marginal_components_of_a_multivariate_model():
    model = _model_3d()
    x = np.linspace(-10, 10, 5)
    parts = plot.component_densities_1d(model, x, feature="b")
    full = plot._mixture(model)[2]
    for j in range(2):
        np.testing.assert_allclose(
            parts[j], model.weights[j] * _normal(x, model.means[j, 1], full[j, 1, 1])
        )


def test_density_plot_draws_the_sum_and_every_component():
    model = _model_1d()
    X = np.concatenate(
        [
            np.random.default_rng(0).normal(m, math.sqrt(v), int(5000 * w))
            for w, m, v in zip(model.weights, model.means[:, 0], model.covariances)
        ]
    )
    ax = plot.plot_density_1d(model, X, bins=40)
    labels = [line.get_label() for line in ax.lines]
    assert sum(label.startswith("component ") for label in labels) == 3
    assert "mixture density" in labels
    comps = [line for line in ax.lines if line.get_label().startswith("component ")]
    total = next(line for line in ax.lines if line.get_label() == "mixture density")
    grid = total.get_xdata()
    np.testing.assert_allclose(sum(c.get_ydata() for c in comps), total.get_ydata())
    np.testing.assert_allclose(comps[2].get_ydata(), 0.5 * _normal(grid, 0.2, 0.0169), rtol=1e-10)
    # the histogram is a density: bar areas sum to 1
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert sum(b.get_height() * b.get_width() for b in bars) == pytest.approx(1.0, rel=1e-6)
    assert ax.get_xlabel() == "feature 0" and ax.get_ylabel() == "density"


@pytest.mark.parametrize("n_sigma", [1.0, 2.0])
def test_covariance_ellipse_points_are_at_the_mahalanobis_radius(n_sigma):
    cov = np.array([[3.0, 1.2], [1.2, 1.0]])
    width, height, angle = plot.covariance_ellipse(cov, n_sigma)
    t = np.linspace(0, 2 * np.pi, 50)
    a, b, r = width / 2, height / 2, math.radians(angle)
    pts = np.stack([a * np.cos(t), b * np.sin(t)], axis=1) @ np.array(
        [[math.cos(r), math.sin(r)], [-math.sin(r), math.cos(r)]]
    )
    d2 = np.einsum("ni,ij,nj->n", pts, np.linalg.inv(cov), pts)
    np.testing.assert_allclose(d2, n_sigma**2, rtol=1e-10)
    assert plot.covariance_ellipse(np.diag([4.0, 1.0]), 1.0) == pytest.approx((4.0, 2.0, 0.0))


def test_cluster_plot_uses_the_marginal_covariance_of_the_chosen_pair():
    model = _model_3d()
    X, comp = _draw(model, 800)
    ax = plot.plot_clusters_2d(model, X, features=("a", "c"))
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2 * 2  # 1 and 2 sigma per component
    full = plot._mixture(model)[2]
    for j in range(2):
        sub = full[j][np.ix_([0, 2], [0, 2])]
        w1, h1, _ = plot.covariance_ellipse(sub, 1.0)
        one, two = ellipses[2 * j], ellipses[2 * j + 1]
        assert one.center == pytest.approx((model.means[j, 0], model.means[j, 2]))
        assert (one.width, one.height) == pytest.approx((w1, h1))
        assert (two.width, two.height) == pytest.approx((2 * w1, 2 * h1))
    scatter = ax.collections[0]
    assert scatter.get_offsets().shape == (800, 2)
    assert ax.get_xlabel() == "a" and ax.get_ylabel() == "c"
    # the labels were predicted by the model: the two far-apart blobs are recovered
    colors = scatter.get_facecolors()
    assert len({tuple(c) for c in colors}) == 2


def test_cluster_plot_caps_arrays_and_checks_features():
    model = _model_3d()
    X, comp = _draw(model, 3000)
    ax = plot.plot_clusters_2d(model, X, labels=comp, n=500)
    assert ax.collections[0].get_offsets().shape == (500, 2)
    with pytest.raises(ValueError, match="unknown feature 'zz'"):
        plot.plot_clusters_2d(model, X, features=("a", "zz"))
    with pytest.raises(ValueError, match="must differ"):
        plot.plot_clusters_2d(model, X, features=(1, "b"))


def test_spark_dataframe_is_sampled_on_spark_with_a_bound(spark):
    model = _model_3d()
    X, comp = _draw(model, 2000, seed=3)
    df = spark.createDataFrame([tuple(map(float, x)) for x in X], ["a", "b", "c"]).repartition(3)
    Xs, labels = plot.sample_features(df, model, n=300, seed=1)
    assert 0 < len(Xs) <= 300 and Xs.shape[1] == 3 and labels.shape == (len(Xs),)
    assert set(labels) <= {0, 1}
    # rows come from the DataFrame (no made-up points) and the model predicted their clusters
    rows = {tuple(np.round(x, 9)) for x in X}
    assert all(tuple(np.round(x, 9)) in rows for x in Xs)
    from spark_gmm import kernel

    np.testing.assert_array_equal(labels, kernel.predict(Xs, plot.mixture_of(model))[0])
    # an existing prediction column is used as it is
    from pyspark.sql import functions as F

    Xp, lp = plot.sample_features(
        df.withColumn("cluster", F.lit(7)), model, n=50, prediction_col="cluster"
    )
    assert len(Xp) <= 50 and set(lp) == {7}
    ax = plot.plot_clusters_2d(model, df, n=200)
    assert 0 < len(ax.collections[0].get_offsets()) <= 200
    ax = plot.plot_density_1d(model, df, feature="c", n=400)
    # the histogram is of column c, of at most 400 rows sampled on Spark, drawn as a density
    data_label = next(x for x in ax.get_legend_handles_labels()[1] if x.startswith("data ("))
    rows = int(re.fullmatch(r"data \(([\d,]+) rows\)", data_label).group(1).replace(",", ""))
    assert 0 < rows <= 400 and ax.get_xlabel() == "c"
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert sum(b.get_height() * b.get_width() for b in bars) == pytest.approx(1.0, rel=1e-6)
    left, right = min(b.get_x() for b in bars), max(b.get_x() + b.get_width() for b in bars)
    assert X[:, 2].min() - 1e-9 <= left and right <= X[:, 2].max() + 1e-9


def test_log_likelihood_and_criteria_plots():
    ax = plot.plot_log_likelihood([-3.0, -2.5, -2.4, -2.39])
    line = ax.lines[0]
    assert list(line.get_xdata()) == [1, 2, 3, 4] and line.get_ydata()[-1] == -2.39

    import pandas as pd

    table = pd.DataFrame(
        {
            "k": [1, 2, 3, 1, 2, 3],
            "covarianceType": ["full"] * 3 + ["diag"] * 3,
            "bic": [100.0, 80.0, 90.0, 120.0, 95.0, 85.0],
            "aic": [95.0, 70.0, 75.0, 110.0, 85.0, 72.0],
        }
    )
    ax = plot.plot_criteria(table)
    labels = [line.get_label() for line in ax.lines]
    assert {"BIC full", "AIC full", "BIC diag", "AIC diag"} <= set(labels)
    assert "best BIC: k=2, full" in labels and "best AIC: k=2, full" in labels
    with pytest.raises(ValueError, match="lacks column"):
        plot.plot_criteria(table.drop(columns=["aic"]))


def test_save_figure_returns_png(tmp_path):
    ax = plot.plot_log_likelihood([-1.0, -0.5])
    data = plot.save_figure(ax, tmp_path / "ll.png")
    assert data.startswith(b"\x89PNG") and (tmp_path / "ll.png").read_bytes() == data


def test_plot_functions_say_how_to_get_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'spark-gmm\[plot\]'"):
        plot.plot_log_likelihood([-1.0])
