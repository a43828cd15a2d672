"""Random-effects LRTs against lmerTest's ``ranova`` (fixtures/posthoc_results.json).

cake has one term (removed: the reduced model is a linear model, eq. 84),
sleep_slope a correlated slope (reduced to the intercept, 2 df) and
penicillin two crossed intercepts.  Every column to 1e-6 relative at this
library's own optima (the REML log-likelihood is flat at lme4's stopping
points).  The R fit of cake used treatment contrasts for temperature (the
fixture's broom.mixed terms are ``temperature185``, ...), which the REML
log-likelihood depends on through log|X^T X|.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest
from conftest import assert_rel
from scipy import stats
from conftest import posthoc

import lmmfast
from lmmfast.errors import DataError, FitError
from lmmfast.ranova import COLUMNS, lm_loglik, reduced_formulas

MODELS = ["cake", "sleep_slope", "penicillin"]


def load(model: str) -> pd.DataFrame:
    data = lmmfast.datasets.load(posthoc()["models"][model]["dataset"])
    if model == "cake":
        data["temperature"] = data["temperature"].cat.as_unordered()
    return data


@cache
def fit_of(model: str) -> lmmfast.LinearMixedModel:
    spec = posthoc()["models"][model]
    return lmmfast.lmer(spec["formula"], load(model), reml=spec["reml"])


@pytest.mark.parametrize("model", MODELS)
def test_ranova_matches_lmertest(model):
    ref = posthoc()["models"][model]["ranova"]
    data = load(model)
    before = data.copy()
    table = fit_of(model).ranova(data)
    pd.testing.assert_frame_equal(data, before)
    assert list(table.columns) == COLUMNS
    assert list(table.index) == ref["term"]
    assert table["npar"].tolist() == ref["npar"]
    assert table["npar"].dtype.kind == "i"
    for col, key in [("logLik", "logLik"), ("AIC", "AIC"), ("LRT", "LRT"), ("Df", "Df"),
                     ("Pr(>Chisq)", "p")]:
        assert np.isnan(table[col].iloc[0]) == (ref[key][0] is None)
        start = 0 if ref[key][0] is not None else 1
        assert_rel(table[col].to_numpy()[start:], ref[key][start:], 1e-6, f"{model} {col}")


def test_reduction_rules():
    assert reduced_formulas("y ~ x + (1 + x + w | g)") == {
        "x in (1 + x + w | g)": "y ~ x + (w | g)",
        "w in (1 + x + w | g)": "y ~ x + (x | g)"}
    # only the highest-order label is dropped; no intercept -> the intercept
    assert reduced_formulas("y ~ x + (1 + a*b | g)") == {
        "a:b in (1 + a * b | g)": "y ~ x + (a + b | g)"}
    assert reduced_formulas("y ~ x + (0 + x | g) + (1 | h)") == {
        "x in (0 + x | g)": "y ~ x + (1 | h) + (1 | g)",
        "(1 | h)": "y ~ x + (0 + x | g)"}
    assert reduced_formulas("y ~ x + (0 + x + w | g)")["x in (0 + x + w | g)"] \
        == "y ~ x + (w - 1 | g)"
    # nesting: findbars' order, the inner term first; the last term leaves a linear model
    assert reduced_formulas("y ~ 1 + (1 | a/b)") == {
        "(1 | b:a)": "y ~ 1 + (1 | a)", "(1 | a)": "y ~ 1 + (1 | b:a)"}
    assert reduced_formulas("y ~ x + (x | g)", reduce_terms=False) == {"(x | g)": None}


def test_remove_whole_terms():
    """reduce_terms=False removes (Days | Subject) whole: lmerTest's 3-df test
    against the REML linear model."""
    fit = fit_of("sleep_slope")
    table = fit.ranova(load("sleep_slope"), reduce_terms=False)
    assert list(table.index) == ["<none>", "(Days | Subject)"]
    assert table["npar"].tolist() == [6, 3]
    assert table["Df"].iloc[1] == 3
    lm = lm_loglik(fit.x, fit.y, None, reml=True)
    assert table["logLik"].iloc[1] == lm
    assert table["LRT"].iloc[1] == pytest.approx(2 * (fit.loglik - lm), rel=1e-14)


def test_lm_loglik_ml_is_the_normal_likelihood():
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(40), rng.normal(size=40)])
    y = x @ [1.0, 2.0] + rng.normal(size=40)
    w = rng.uniform(0.5, 2.0, size=40)
    beta = np.linalg.lstsq(x * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    resid = y - x @ beta
    s2 = np.sum(w * resid ** 2) / 40
    direct = np.sum(stats.norm.logpdf(resid, scale=np.sqrt(s2 / w)))
    assert lm_loglik(x, y, w, reml=False) == pytest.approx(direct, rel=1e-12)


def test_lm_loglik_reml_adds_the_projection_terms():
    """REML: the ML form with n - p observations, minus log|R| of X's QR (eq. 84)."""
    rng = np.random.default_rng(2)
    x = np.column_stack([np.ones(30), rng.normal(size=30), rng.normal(size=30)])
    y = x @ [1.0, 2.0, -1.0] + rng.normal(size=30)
    n, p = x.shape
    rss = np.sum((y - x @ np.linalg.lstsq(x, y, rcond=None)[0]) ** 2)
    want = (-0.5 * (n - p) * (np.log(2 * np.pi * rss / (n - p)) + 1)
            - 0.5 * np.linalg.slogdet(x.T @ x)[1])
    assert lm_loglik(x, y, None, reml=True) == pytest.approx(want, rel=1e-12)


def test_other_data_raises():
    fit = fit_of("sleep_slope")
    data = load("sleep_slope")
    with pytest.raises(DataError, match="same rows"):
        fit.ranova(data.iloc[:-10])
    shifted = data.assign(Reaction=data["Reaction"] + 1.0)
    with pytest.raises(DataError, match="same rows"):
        fit.ranova(shifted)


def test_bad_arguments_raise():
    fit = fit_of("penicillin")
    with pytest.raises(DataError, match="reduce_terms"):
        fit.ranova(load("penicillin"), reduce_terms="yes")
    spec = posthoc()["models"]["penicillin"]
    model = lmmfast.LinearMixedModel(spec["formula"], load("penicillin"))
    with pytest.raises(FitError, match="not been fitted"):
        model.ranova(load("penicillin"))


def test_weights_are_passed_to_the_reduced_models():
    data = load("sleep_slope").assign(w=lambda d: 1.0 + (d["Days"] % 3) / 2.0)
    fit = lmmfast.lmer("Reaction ~ Days + (Days | Subject)", data, weights="w")
    with pytest.raises(DataError, match="weights"):
        fit.ranova(data)
    table = fit.ranova(data, weights="w")
    reduced = lmmfast.lmer("Reaction ~ Days + (1 | Subject)", data, weights="w")
    assert table["logLik"].iloc[1] == pytest.approx(reduced.loglik, rel=1e-12)
    assert table["logLik"].iloc[1] != pytest.approx(
        lmmfast.lmer("Reaction ~ Days + (1 | Subject)", data).loglik, rel=1e-6)


def test_ml_fit_uses_ml_likelihoods():
    spec = posthoc()["models"]["cake"]
    fit = lmmfast.lmer(spec["formula"], load("cake"), reml=False)
    table = fit.ranova(load("cake"))
    assert table["logLik"].iloc[0] == fit.loglik
    assert table["logLik"].iloc[1] == lm_loglik(fit.x, fit.y, None, reml=False)


def test_repeated_term_raises():
    with pytest.raises(DataError, match="write each term once"):
        reduced_formulas("y ~ x + (1 | g) + (1 | g)")


def test_ranova_without_data_refits_to_the_models_own_data():
    """fit.ranova() reads the data the model was built from; a pickled model asks for it."""
    import pickle
    df = lmmfast.datasets.load("sleepstudy")
    fit = lmmfast.lmer("Reaction ~ Days + (Days | Subject)", df)
    pd.testing.assert_frame_equal(fit.ranova(), fit.ranova(df))
    restored = pickle.loads(pickle.dumps(fit))
    with pytest.raises(FitError, match="pass data="):
        restored.ranova()
    pd.testing.assert_frame_equal(restored.ranova(df), fit.ranova(df))
