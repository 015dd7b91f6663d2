"""Plots of a fitted mixture, for notebooks and for the jobs' reports.

matplotlib is an optional extra (``pip install 'spark-gmm[plot]'``) and is imported only when a
plot is drawn. Every ``plot_*`` function draws into ``ax`` when given (else a new figure) and
returns the Axes. Data can be a Spark DataFrame (a bounded sample is drawn on Spark and
collected: never the whole table) or NumPy arrays already on the driver.

>>> from spark_gmm import plot                                   # doctest: +SKIP
>>> plot.plot_density_1d(model, df, feature="x")                 # doctest: +SKIP
>>> plot.plot_clusters_2d(model, df, features=("x", "y"))        # doctest: +SKIP
>>> plot.plot_log_likelihood(model.summary)                      # doctest: +SKIP
>>> plot.plot_criteria(selection.table)                          # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "component_densities_1d",
    "covariance_ellipse",
    "feature_names",
    "plot_clusters_2d",
    "plot_criteria",
    "plot_density_1d",
    "plot_log_likelihood",
    "sample_features",
    "save_figure",
]

MATPLOTLIB_MISSING = "matplotlib is not installed (pip install 'spark-gmm[plot]')"

Feature = Union[int, str]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised when the extra is absent
        raise ImportError(f"spark_gmm.plot needs matplotlib: {MATPLOTLIB_MISSING}") from exc
    return plt


def _axes(ax, figsize=(6.4, 4.4)):
    if ax is not None:
        return ax
    fig, ax = _pyplot().subplots(figsize=figsize, layout="constrained")
    return ax


def _colors(k: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    return [cmap(j % cmap.N) for j in range(k)]


# --------------------------------------------------------------------------- model access


def mixture_of(model):
    """The model's parameters as kernel.MixtureParams (from its public attributes)."""
    from spark_gmm import kernel

    try:
        return kernel.MixtureParams(
            np.asarray(model.weights),
            np.asarray(model.means),
            np.asarray(model.covariances),
            model.getCovarianceType(),
        )
    except AttributeError:
        raise ValueError("expected a fitted spark_gmm GaussianMixtureModel") from None


def _mixture(model):
    """(weights (k,), means (k, d), full covariances (k, d, d)) of a fitted model."""
    params = mixture_of(model)
    return params.weights, params.means, params.full_covariances()


def feature_names(model) -> list:
    """The model's feature names: its inputCols when trained on columns, else f0, f1, ..."""
    cols = None
    if model.isDefined(model.inputCols):
        cols = model.getOrDefault(model.inputCols)
    d = _mixture(model)[1].shape[1]
    return list(cols) if cols else [f"feature {j}" for j in range(d)]


def _feature_index(model, feature: Feature) -> int:
    names = feature_names(model)
    if isinstance(feature, (int, np.integer)):
        if not 0 <= int(feature) < len(names):
            raise ValueError(f"feature index {feature} out of range for {len(names)} features")
        return int(feature)
    if feature in names:
        return names.index(feature)
    if isinstance(feature, str) and feature.isdigit():
        return _feature_index(model, int(feature))
    raise ValueError(f"unknown feature {feature!r}; the model's features are {names}")


# --------------------------------------------------------------------------- data


def sample_features(
    df,
    model,
    n: int = 5000,
    seed: int = 0,
    prediction_col: Optional[str] = None,
    total_rows: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """At most ``n`` rows of a Spark DataFrame, sampled on Spark and collected:
    (features (m, d), predicted component (m,)).

    The features are read as the model reads them (its inputCols or featuresCol). When
    ``prediction_col`` names a column of ``df`` (e.g. predictions written by the fit job) it is
    used as the cluster; otherwise the model predicts the sampled rows (on Spark).
    """
    from pyspark.sql import functions as F

    from spark_gmm.data import resolve_features, valid_rows

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    input_cols = model.getOrDefault(model.inputCols) if model.isDefined(model.inputCols) else None
    source = resolve_features(df, model.getFeaturesCol(), input_cols)
    total = df.count() if total_rows is None else int(total_rows)
    sampled = df
    if total > n:
        # A Bernoulli sample a little larger than n, then a hard cap: one pass, bounded result.
        fraction = min(1.0, 1.2 * n / total + 10.0 / total)
        sampled = df.sample(withReplacement=False, fraction=fraction, seed=seed)
    sampled = sampled.where(valid_rows(source)).limit(n)
    if prediction_col and prediction_col in df.columns:
        rows = sampled.select(source.array.alias("x"), F.col(prediction_col).alias("c"))
    else:
        scorer = model.copy()
        taken = set(df.columns)
        pred = "__gmm_plot_prediction"
        while pred in taken:
            pred += "_"
        scorer.setPredictionCol(pred).setProbabilityCol("").setLogLikelihoodCol("")
        scored = scorer.transform(sampled)
        rows = scored.select(source.array.alias("x"), F.col(pred).alias("c"))
    pdf = rows.toPandas()
    d = _mixture(model)[1].shape[1]
    if len(pdf) == 0:
        return np.empty((0, d)), np.empty((0,), dtype=int)
    X = np.stack([np.asarray(v, dtype=np.float64) for v in pdf["x"]])
    labels = pdf["c"].to_numpy().astype(int)
    return X, labels


def _as_features(model, data, n: int, seed: int, prediction_col: Optional[str]):
    """Spark DataFrame or array-like -> (X (m, d) or (m,), labels or None)."""
    if hasattr(data, "sparkSession") and hasattr(data, "schema"):
        return sample_features(data, model, n=n, seed=seed, prediction_col=prediction_col)
    X = np.asarray(data, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    return X, None


# --------------------------------------------------------------------------- 1-D


def _normal_pdf(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return np.exp(-0.5 * (x - mean) ** 2 / var) / math.sqrt(2.0 * math.pi * var)


def component_densities_1d(model, x: np.ndarray, feature: Feature = 0) -> np.ndarray:
    """w_j * N(x | mu_j, sigma_j^2) for each component j on the points ``x`` (shape (k, len(x))),
    for one feature: the marginal of a Gaussian mixture is the mixture of the marginals, so the
    rows sum to the fitted density of that feature."""
    weights, means, covs = _mixture(model)
    j = _feature_index(model, feature)
    x = np.asarray(x, dtype=np.float64)
    return np.stack([w * _normal_pdf(x, m[j], c[j, j]) for w, m, c in zip(weights, means, covs)])


def plot_density_1d(
    model,
    data,
    feature: Feature = 0,
    *,
    ax=None,
    bins: int = 60,
    n: int = 20000,
    seed: int = 0,
    title: Optional[str] = None,
):
    """Histogram of one feature (normalised to a density) with the fitted mixture density and
    EACH weighted component w_j * N(x | mu_j, sigma_j) drawn separately.

    ``data``: a Spark DataFrame (sampled on Spark, at most ``n`` rows), or the values on the
    driver (1-D array, or (m, d) array from which column ``feature`` is taken).
    """
    X, _ = _as_features(model, data, n, seed, None)
    j = _feature_index(model, feature)
    values = X[:, j] if X.shape[1] > 1 else X[:, 0]
    values = values[np.isfinite(values)]
    weights, means, covs = _mixture(model)
    ax = _axes(ax)
    name = feature_names(model)[j]
    if values.size:
        ax.hist(
            values,
            bins=bins,
            density=True,
            color="0.82",
            edgecolor="0.65",
            linewidth=0.4,
            label=f"data ({values.size:,} rows)",
        )
        lo, hi = float(values.min()), float(values.max())
    else:
        sd = np.sqrt(covs[:, j, j])
        lo, hi = float((means[:, j] - 3 * sd).min()), float((means[:, j] + 3 * sd).max())
    pad = 0.05 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad, hi + pad, 600)
    parts = component_densities_1d(model, grid, j)
    colors = _colors(len(weights))
    for c, (part, w) in enumerate(zip(parts, weights)):
        ax.fill_between(grid, part, color=colors[c], alpha=0.18, linewidth=0)
        label = f"component {c}: w={w:.2f}, μ={means[c, j]:.3g}, σ={np.sqrt(covs[c, j, j]):.3g}"
        ax.plot(grid, part, color=colors[c], linewidth=1.6, linestyle="--", label=label)
    ax.plot(grid, parts.sum(axis=0), color="black", linewidth=2.0, label="mixture density")
    ax.set_xlabel(name)
    ax.set_ylabel("density")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(bottom=0)
    ax.set_title(title or f"{name}: histogram, fitted mixture and weighted components")
    ax.legend(fontsize="x-small", loc="best", framealpha=0.85)
    return ax


# --------------------------------------------------------------------------- 2-D


def covariance_ellipse(cov2: np.ndarray, n_sigma: float = 1.0) -> Tuple[float, float, float]:
    """(width, height, angle in degrees) of the ellipse {x : x' cov2^-1 x = n_sigma^2}."""
    cov2 = np.asarray(cov2, dtype=np.float64)
    vals, vecs = np.linalg.eigh(cov2)
    vals = np.clip(vals, 0.0, None)
    order = vals.argsort()[::-1]
    vals, vecs = vals[order], vecs[:, order]
    angle = math.degrees(math.atan2(vecs[1, 0], vecs[0, 0]))
    width, height = 2.0 * n_sigma * np.sqrt(vals)
    return float(width), float(height), angle


_ELLIPSE_LINESTYLES = ["-", "--", ":", "-."]  # by position in ``sigmas``


def _feature_pair(model, features: Sequence[Feature]) -> Tuple[int, int]:
    """The indices of the two distinct features a cluster plot shows."""
    if len(features) != 2:
        raise ValueError(f"features must name two features, got {list(features)}")
    i, j = (_feature_index(model, f) for f in features)
    if i == j:
        raise ValueError("the two features must differ")
    return i, j


def _labelled_sample(
    model, data, labels: Optional[np.ndarray], n: int, seed: int, prediction_col: Optional[str]
) -> Tuple[np.ndarray, np.ndarray]:
    """(X, labels) of at most ``n`` rows of ``data``. The labels are ``labels`` when given, else
    the sample's ``prediction_col``, else predicted by the model on the driver."""
    X, sampled_labels = _as_features(model, data, n, seed, prediction_col)
    if labels is None:
        labels = sampled_labels
    if labels is None:
        from spark_gmm import kernel

        labels = kernel.predict(X, mixture_of(model))[0] if len(X) else np.empty(0, dtype=int)
    labels = np.asarray(labels, dtype=int)
    if len(X) > n:  # arrays handed in directly are capped too (plots of 10^6 points are mud)
        keep = np.random.default_rng(seed).choice(len(X), n, replace=False)
        X, labels = X[keep], labels[keep]
    return X, labels


def _draw_components(
    ax, means: np.ndarray, covs: np.ndarray, pair: Tuple[int, int], colors, sigmas
) -> None:
    """For each component, in the plane of the feature pair: one covariance ellipse per entry
    of ``sigmas`` (the first drawn thicker), then its mean as a cross."""
    from matplotlib.patches import Ellipse

    i, j = pair
    for c in range(len(means)):
        cov2 = covs[c][np.ix_([i, j], [i, j])]
        for s_idx, s in enumerate(sigmas):
            w, h, angle = covariance_ellipse(cov2, s)
            ax.add_patch(
                Ellipse(
                    (means[c, i], means[c, j]),
                    w,
                    h,
                    angle=angle,
                    fill=False,
                    edgecolor=colors[c],
                    linewidth=2.0 if s_idx == 0 else 1.4,
                    linestyle=_ELLIPSE_LINESTYLES[s_idx % len(_ELLIPSE_LINESTYLES)],
                )
            )
        ax.plot(
            means[c, i],
            means[c, j],
            marker="X",
            markersize=9,
            color=colors[c],
            markeredgecolor="black",
            markeredgewidth=0.8,
            linestyle="none",
        )


def _cluster_legend(ax, weights: np.ndarray, colors, sigmas) -> None:
    """A legend entry per cluster (with its weight), then one per ellipse line style."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="none",
            color=colors[c],
            label=f"cluster {c} (w={weights[c]:.2f})",
        )
        for c in range(len(weights))
    ]
    handles += [
        Line2D(
            [],
            [],
            color="0.3",
            linestyle=_ELLIPSE_LINESTYLES[s_idx % len(_ELLIPSE_LINESTYLES)],
            label=f"{s:g}σ ellipse",
        )
        for s_idx, s in enumerate(sigmas)
    ]
    ax.legend(handles=handles, fontsize="x-small", loc="best", framealpha=0.85)


def plot_clusters_2d(
    model,
    data,
    features: Sequence[Feature] = (0, 1),
    *,
    labels: Optional[np.ndarray] = None,
    ax=None,
    n: int = 5000,
    seed: int = 0,
    sigmas: Sequence[float] = (1.0, 2.0),
    prediction_col: Optional[str] = None,
    title: Optional[str] = None,
):
    """Scatter of a sample coloured by predicted cluster, with each component's 1- and 2-sigma
    covariance ellipses for the chosen pair of features (the marginal covariance of the pair).

    ``data``: a Spark DataFrame (at most ``n`` rows are sampled on Spark and collected; the
    clusters come from ``prediction_col`` when the DataFrame has it, else from the model), or
    an (m, d) array on the driver with ``labels`` (predicted by the model when omitted).
    """
    # Without matplotlib this fails here, before any Spark job samples the data.
    import matplotlib.lines  # noqa: F401
    import matplotlib.patches  # noqa: F401

    i, j = _feature_pair(model, features)
    X, labels = _labelled_sample(model, data, labels, n, seed, prediction_col)
    weights, means, covs = _mixture(model)
    k = len(weights)
    colors = _colors(k)
    ax = _axes(ax, figsize=(6.4, 5.2))
    names = feature_names(model)
    if len(X):
        point_colors = [colors[c % k] for c in labels]
        size = 10 if len(X) <= 2000 else 5
        ax.scatter(
            X[:, i], X[:, j], c=point_colors, s=size, alpha=0.45, linewidths=0, rasterized=True
        )
    _draw_components(ax, means, covs, (i, j), colors, sigmas)
    _cluster_legend(ax, weights, colors, sigmas)
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.autoscale_view()
    ax.set_title(title or f"{names[i]} vs {names[j]}: {len(X):,} sampled rows by cluster")
    return ax


# --------------------------------------------------------------------------- convergence, selection


def plot_log_likelihood(history, *, ax=None, title: Optional[str] = None):
    """Mean per-row log-likelihood per EM iteration (the lower bound, of a Bayesian mixture's
    summary). ``history``: a list of values, a training summary, or a model with a
    summary."""
    converged, label = None, "mean log-likelihood per row"
    if hasattr(history, "summary") and hasattr(history, "hasSummary"):
        history = history.summary
    if hasattr(history, "lowerBoundHistory"):
        converged, label = history.converged, "lower bound"
        history = history.lowerBoundHistory
    elif hasattr(history, "logLikelihoodHistory"):
        converged = history.converged
        history = history.logLikelihoodHistory
    values = np.asarray(list(history), dtype=np.float64)
    ax = _axes(ax, figsize=(6.4, 4.0))
    iterations = np.arange(1, len(values) + 1)
    ax.plot(iterations, values, marker="o", markersize=4, linewidth=1.5, color="tab:blue")
    ax.set_xlabel("EM iteration")
    ax.set_ylabel(label)
    if len(values):
        ax.set_xlim(0.5, len(values) + 0.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    state = "" if converged is None else (" (converged)" if converged else " (maxIter reached)")
    ax.set_title(title or f"log-likelihood per iteration: {len(values)} iterations{state}")
    ax.grid(alpha=0.3)
    return ax


def plot_criteria(
    table, *, criteria: Sequence[str] = ("bic", "aic"), ax=None, title: Optional[str] = None
):
    """BIC / AIC against k, one line per covariance type (BIC solid, AIC dashed), the minimum of
    each criterion starred. ``table``: a pandas DataFrame with columns k, covarianceType and
    the criteria (the model-selection table)."""
    import pandas as pd

    table = pd.DataFrame(table)
    missing = [c for c in ("k", "covarianceType", *criteria) if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; it has {list(table.columns)}")
    ax = _axes(ax, figsize=(6.4, 4.4))
    types = list(dict.fromkeys(table["covarianceType"]))
    colors = _colors(max(len(types), 1))
    styles = {"bic": "-", "aic": "--"}
    markers = {"bic": "o", "aic": "s"}
    for t_idx, t in enumerate(types):
        rows = table[table["covarianceType"] == t].sort_values("k")
        for crit in criteria:
            ax.plot(
                rows["k"],
                rows[crit],
                linestyle=styles.get(crit, "-."),
                marker=markers.get(crit, "^"),
                markersize=4,
                color=colors[t_idx],
                label=f"{crit.upper()} {t}",
            )
    for crit in criteria:
        finite = table[np.isfinite(table[crit].astype(float))]
        if len(finite):
            best = finite.loc[finite[crit].astype(float).idxmin()]
            ax.plot(
                [best["k"]],
                [best[crit]],
                marker="*",
                markersize=16,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                zorder=5,
                label=f"best {crit.upper()}: k={int(best['k'])}, {best['covarianceType']}",
            )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("k (components)")
    ax.set_ylabel(" / ".join(c.upper() for c in criteria) + " (lower is better)")
    ax.set_title(title or "model selection")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="best", framealpha=0.85)
    return ax


# --------------------------------------------------------------------------- output


def save_figure(ax_or_fig, path=None, dpi: int = 100) -> bytes:
    """PNG bytes of the figure (written to ``path`` when given); closes the figure."""
    import io

    fig = getattr(ax_or_fig, "figure", ax_or_fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _pyplot().close(fig)
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as fh:
            fh.write(data)
    return data
