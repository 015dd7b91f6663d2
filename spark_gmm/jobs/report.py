"""The fit and select jobs' report: the sample of rows for the plots, the plots, report.json and the
one-page HTML."""

from __future__ import annotations

import base64
import html
import logging
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from spark_gmm.jobs.job import Job
from spark_gmm.jobs.training_scores import quantile_threshold

log = logging.getLogger("spark_gmm")


def model_description(model) -> Dict[str, Any]:
    """The model for the report: k, covariance type, feature count and names, parameter count,
    and each component's weight, mean and full covariance."""
    from spark_gmm.plot import feature_names, mixture_of

    mixture = mixture_of(model)
    full = mixture.full_covariances()
    return {
        "k": model.getK(),
        "covarianceType": model.getCovarianceType(),
        "numFeatures": model.numFeatures,
        "numParameters": model.numParameters,
        "features": feature_names(model),
        "components": [
            {
                "index": j,
                "weight": float(mixture.weights[j]),
                "mean": mixture.means[j],
                "covariance": full[j],
            }
            for j in range(mixture.k)
        ],
    }


def summary_description(model) -> Dict[str, Any]:
    """The fit's summary for the report (iterations, convergence, log-likelihood, BIC, AIC,
    row counts, cluster sizes, engine); empty when the model has no summary."""
    if not model.hasSummary:
        return {}
    s = model.summary
    return {
        "numIter": s.numIter,
        "converged": s.converged,
        "logLikelihood": s.logLikelihood,
        "meanLogLikelihood": s.logLikelihood / s.totalWeight if s.totalWeight else None,
        "bic": s.bic,
        "aic": s.aic,
        "numRows": s.numRows,
        "numSkippedRows": s.numSkippedRows,
        "numIncompleteRows": s.numIncompleteRows,
        "clusterSizes": s.clusterSizes,
        "logLikelihoodHistory": s.logLikelihoodHistory,
        "engine": s.engine,
        "numDataPasses": s.numDataPasses,
    }


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "feature"


def make_plots(
    model,
    X: Optional[np.ndarray],
    labels: Optional[np.ndarray],
    *,
    plot_features: Sequence[str] = (),
    max_histograms: int = 4,
    table=None,
    with_history: bool = True,
) -> Tuple[List[Tuple[str, str, bytes]], str]:
    """([(file name, caption, PNG bytes)], status) for a report; never raises for a missing
    matplotlib (the status says the plots were skipped)."""
    try:
        import matplotlib

        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
    except ImportError:
        from spark_gmm.plot import MATPLOTLIB_MISSING

        return [], f"skipped: {MATPLOTLIB_MISSING}"
    from spark_gmm import plot

    out: List[Tuple[str, str, bytes]] = []
    names = plot.feature_names(model)
    if table is not None and len(table):
        ax = plot.plot_criteria(table)
        out.append(("criteria.png", "BIC and AIC by k and covariance type", plot.save_figure(ax)))
    if with_history and model.hasSummary and model.summary.logLikelihoodHistory:
        ax = plot.plot_log_likelihood(model.summary)
        out.append(
            ("log_likelihood.png", "mean log-likelihood per EM iteration", plot.save_figure(ax))
        )
    if X is not None and len(X):
        d = X.shape[1]
        if d >= 2:
            pair = list(plot_features) if plot_features else [0, 1]
            ax = plot.plot_clusters_2d(model, X, features=pair, labels=labels)
            i, j = (plot._feature_index(model, f) for f in pair)
            out.append(
                (
                    f"clusters_{_safe_name(names[i])}_{_safe_name(names[j])}.png",
                    f"{names[i]} vs {names[j]}: sampled rows by cluster, 1σ and 2σ ellipses",
                    plot.save_figure(ax),
                )
            )
        for j in range(min(d, max_histograms)):
            ax = plot.plot_density_1d(model, X, feature=j)
            out.append(
                (
                    f"density_{_safe_name(names[j])}.png",
                    f"{names[j]}: histogram, mixture density and each weighted component",
                    plot.save_figure(ax),
                )
            )
    return out, f"{len(out)} plot(s) written" if out else "no plots (no data sampled)"


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
figcaption {{ font-size: 0.85em; color: #555; max-width: 640px; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
code {{ background: #f5f5f5; padding: 0 0.2em; }}
</style></head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def _html_table(rows: Sequence[Sequence[Any]], header: Optional[Sequence[str]] = None) -> str:
    parts = ["<table>"]
    if header:
        parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "" if value is None else str(value)


def html_report(
    title: str,
    summary_rows: Sequence[Tuple[str, Any]],
    model_info: Dict[str, Any],
    plots: Sequence[Tuple[str, str, bytes]],
    plot_status: str,
    table=None,
) -> str:
    """The one-page HTML report: the summary rows, the model selection ``table`` when given,
    the components, and the plots embedded as PNG data (else ``plot_status``)."""
    body = ["<h2>Summary</h2>", _html_table(summary_rows)]
    if table is not None and len(table):
        body += [
            "<h2>Model selection</h2>",
            _html_table(table.values.tolist(), list(table.columns)),
        ]
    comps = model_info.get("components", [])
    if comps:
        sizes = model_info.get("clusterSizes") or [None] * len(comps)
        body += [
            "<h2>Components</h2>",
            _html_table(
                [
                    (
                        c["index"],
                        c["weight"],
                        size,
                        np.asarray(c["mean"]).tolist(),
                        np.sqrt(np.diag(np.asarray(c["covariance"]))).tolist(),
                    )
                    for c, size in zip(comps, sizes)
                ],
                [
                    "component",
                    "weight",
                    "rows (most probable)",
                    "mean (" + ", ".join(map(str, model_info.get("features", []))) + ")",
                    "standard deviations",
                ],
            ),
        ]
    body.append("<h2>Plots</h2>")
    if plots:
        for name, caption, png in plots:
            data = base64.b64encode(png).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
                f'{data}"><figcaption>{html.escape(caption)} '
                f"(<code>{html.escape(name)}</code>)</figcaption></figure>"
            )
    else:
        body.append(f"<p>Plots {html.escape(plot_status, quote=False)}.</p>")
    return _HTML.format(title=html.escape(title), body="\n".join(body))


def write_report(
    job: Job, report: Dict[str, Any], model, X, labels, *, table=None, with_history=True
) -> None:
    """report/report.json, report/*.png, report/report.html."""
    cfg = job.cfg
    plots: List[Tuple[str, str, bytes]] = []
    if cfg.get("report.plots"):
        job.describe("drawing the report's plots")
        with job.timed("plots"):
            plots, status = make_plots(
                model,
                X,
                labels,
                plot_features=cfg.get("report.plot_features") or (),
                max_histograms=int(cfg.get("report.max_histograms", 4)),
                table=table,
                with_history=with_history,
            )
    else:
        status = "disabled (report.plots = false)"
    if status.startswith("skipped"):
        log.warning("plots %s", status)
    for name, _, png in plots:
        job.fs.write_bytes(job.out("report", name), png)
    report["plots"] = {"status": status, "files": [f"report/{name}" for name, _, _ in plots]}
    report["seconds"] = dict(job.timings, total=time.time() - job.started)
    job.write_json("report/report.json", report)
    info = dict(report.get("model", {}))
    info["clusterSizes"] = report.get("fit", {}).get("clusterSizes")
    fit = report.get("fit", {})
    rows = [
        ("input", report.get("input", {}).get("source")),
        ("rows", report.get("input", {}).get("rows")),
        ("skipped rows", report.get("input", {}).get("skippedRows")),
        ("rows with missing features", report.get("input", {}).get("incompleteRows")),
        ("features", info.get("features")),
        ("k", info.get("k")),
        ("covariance type", info.get("covarianceType")),
        ("EM iterations", fit.get("numIter")),
        ("converged", fit.get("converged")),
        ("mean log-likelihood", fit.get("meanLogLikelihood")),
        ("BIC", fit.get("bic")),
        ("AIC", fit.get("aic")),
        ("1% quantile of log p(x)", _quantile(report.get("trainingScores"), 0.01)),
        ("model", report.get("outputs", {}).get("model")),
        ("predictions", report.get("outputs", {}).get("predictions")),
        (
            "Spark",
            f"{report.get('spark', {}).get('version')} ({report.get('spark', {}).get('master')})",
        ),
        ("seconds", f"{report['seconds']['total']:.1f}"),
    ]
    rows = [r for r in rows if r[1] is not None]
    title = f"spark_gmm {job.spec.name} report"
    job.write_text("report/report.html", html_report(title, rows, info, plots, status, table=table))
    log.info("report: %s (%s)", job.out("report", "report.html"), status)


def _quantile(scores: Optional[Dict[str, Any]], q: float) -> Optional[float]:
    if not scores:
        return None
    return quantile_threshold(scores, q)[0]


def plot_sample(
    job: Job, df, model, prediction_col: Optional[str], total_rows: Optional[int], seed: int
):
    """A bounded sample of (features, cluster) for the plots, drawn on Spark."""
    if not job.cfg.get("report.plots"):
        return None, None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None, None  # the report says the plots were skipped
    from spark_gmm import plot

    job.describe(f"sampling up to {job.cfg['report.sample_size']:,} rows for the plots")
    with job.timed("plot_sample"):
        return plot.sample_features(
            df,
            model,
            n=int(job.cfg["report.sample_size"]),
            seed=seed,
            prediction_col=prediction_col,
            total_rows=total_rows,
        )
