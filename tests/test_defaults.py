"""One source of truth for defaults and choices (spark_gmm/choices.py): the estimators' keyword
arguments, their Params and the batch jobs' settings and configuration files all agree with it.
No Spark session: Params and signatures only."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from spark_gmm import BayesianGaussianMixture, GaussianMixture, config
from spark_gmm.choices import (
    BAYESIAN_GAUSSIAN_MIXTURE_DEFAULTS,
    GAUSSIAN_MIXTURE_DEFAULTS,
    SELECTOR_DEFAULTS,
)
from spark_gmm.selection import GaussianMixtureSelector

REPO_ROOT = Path(__file__).resolve().parents[1]


def _keyword_defaults(function):
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


@pytest.mark.parametrize(
    "stage, defaults",
    [
        (GaussianMixture, GAUSSIAN_MIXTURE_DEFAULTS),
        (GaussianMixtureSelector, SELECTOR_DEFAULTS),
        (BayesianGaussianMixture, BAYESIAN_GAUSSIAN_MIXTURE_DEFAULTS),
    ],
    ids=["GaussianMixture", "GaussianMixtureSelector", "BayesianGaussianMixture"],
)
@pytest.mark.parametrize("method", ["__init__", "setParams"])
def test_keyword_arguments_and_params_share_the_defaults(stage, defaults, method):
    keywords = _keyword_defaults(getattr(stage, method))
    instance = stage()
    for name, value in defaults.items():
        assert name in keywords, f"{stage.__name__}.{method} has no keyword {name}"
        # None in a signature means "not set": the Param's default applies.
        assert keywords[name] in (None, value), (name, keywords[name], value)
        assert instance.getOrDefault(name) == value, name
    for name, value in keywords.items():
        if value is not None and name != "estimator":
            assert defaults.get(name) == value, f"{stage.__name__}.{method}: {name}={value!r}"


def test_a_params_default_list_is_not_shared_between_instances():
    first = GaussianMixtureSelector()
    first.getKValues().append(99)
    assert GaussianMixtureSelector().getKValues() == SELECTOR_DEFAULTS["kValues"]
    assert 99 not in SELECTOR_DEFAULTS["kValues"]


# The jobs' settings that are the estimators' parameters, by estimator Param name.
JOB_SETTINGS = {
    "fit": {
        "model.k": "k",
        "model.max_iter": "maxIter",
        "model.tol": "tol",
        "model.seed": "seed",
        "model.reg_covar": "regCovar",
        "model.covariance_type": "covarianceType",
        "model.init_mode": "initMode",
        "input.handle_invalid": "handleInvalid",
        "output.prediction_col": "predictionCol",
        "output.probability_col": "probabilityCol",
    },
    "select": {
        "selection.max_iter": "maxIter",
        "selection.tol": "tol",
        "selection.seed": "seed",
        "selection.reg_covar": "regCovar",
        "selection.k_values": "kValues",
        "selection.covariance_types": "covarianceTypes",
        "selection.criterion": "criterion",
        "input.handle_invalid": "handleInvalid",
    },
    "score": {"input.handle_invalid": "handleInvalid"},
}


@pytest.mark.parametrize("job", sorted(JOB_SETTINGS))
def test_the_jobs_defaults_are_the_estimators(job):
    spec = config.JOBS[job]
    defaults = {**GAUSSIAN_MIXTURE_DEFAULTS, **SELECTOR_DEFAULTS}
    for key, param in JOB_SETTINGS[job].items():
        assert spec.option(key).default == defaults[param], key


def test_the_jobs_choices_are_the_estimators():
    estimator = GaussianMixture()
    selector = GaussianMixtureSelector()
    for key, param, stage in [
        ("model.init_mode", "initMode", estimator),
        ("model.covariance_type", "covarianceType", estimator),
        ("input.handle_invalid", "handleInvalid", estimator),
        ("selection.criterion", "criterion", selector),
    ]:
        job = "select" if key.startswith("selection.") else "fit"
        choices = config.JOBS[job].option(key).choices
        for choice in choices:
            stage.copy()._set(**{param: choice})  # each choice is a valid value
        with pytest.raises(ValueError, match=param):
            stage.copy()._set(**{param: "not-a-choice"})


_CHOICES_COMMENT = re.compile(
    r'^(\w+)\s*=\s*"[^"]*"\s*#\s*(?:[^:]*:\s*)?([\w+-]+(?:\s*\|\s*[\w+-]+)+)'
)


@pytest.mark.parametrize("job", ["fit", "score", "select", "sample"])
def test_the_choices_a_conf_file_names_are_the_settings_choices(job):
    """A comment such as ``# full | tied | diag | spherical`` after a key in conf/<job>.toml
    lists exactly that setting's choices (the order may differ)."""
    spec = config.JOBS[job]
    table = ""
    checked = 0
    for line in (REPO_ROOT / "conf" / f"{job}.toml").read_text().splitlines():
        header = re.match(r"^\[([\w.]+)\]", line)
        if header:
            table = header.group(1)
            continue
        match = _CHOICES_COMMENT.match(line)
        if not match:
            continue
        key = f"{table}.{match.group(1)}" if table else match.group(1)
        named = {c.strip() for c in match.group(2).split("|")}
        assert set(spec.option(key).choices) == named, (job, key, named)
        checked += 1
    if job in ("fit", "select"):
        assert checked >= 1, f"conf/{job}.toml names no choices: the pattern no longer matches"
