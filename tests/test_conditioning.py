"""A fit is invariant to shifting and scaling y and the numeric columns of X:
the working basis of A (theory.md, eqs. 72-75; lmmfast/conditioning.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmmfast
from lmmfast import conditioning
from lmmfast.errors import ConditioningWarning, RankDeficiencyWarning
from lmmfast.model import LinearMixedModel
from lmmfast.streaming import StreamedLinearMixedModel

from conftest import reference

TOL = 1e-8

# (dataset, formula, response, a numeric fixed-effect column or None, weights column)
DESIGNS = [
    ("sleepstudy", "Reaction ~ Days + (1 | Subject)", "Reaction", "Days", None),
    ("sleepstudy", "Reaction ~ Days + (0 + Days | Subject)", "Reaction", "Days", None),
    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "diameter", None, None),
    ("cake", "angle ~ recipe * temp + (1 | recipe:replicate)", "angle", "temp", None),
    ("Pastes", "strength ~ 1 + (1 | batch/cask)", "strength", None, None),
]


def _weighted(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(w=1.0 + (np.arange(len(df)) % 3))


def _fit(formula, df, weights=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConditioningWarning)
        return lmmfast.lmer(formula, df, weights=weights)


def _assert_invariant(shifted, plain, y_shift=0.0, y_scale=1.0, x_log_det=0.0):
    """theta unchanged; sigma, the criterion, fitted values and beta as the change
    of variables says (y scaled by c: 2 (n - p) log c or 2 n log c; REML's
    log|X'V^-1 X| moves by ``x_log_det`` when X's columns are scaled)."""
    np.testing.assert_allclose(shifted.theta, plain.theta, rtol=TOL, atol=TOL)
    assert shifted.sigma == pytest.approx(plain.sigma * y_scale, rel=TOL)
    n_reml = shifted.nobs - (shifted.p if shifted.reml else 0)
    assert shifted.objective == pytest.approx(
        plain.objective + 2 * n_reml * np.log(y_scale) + x_log_det, rel=TOL)
    np.testing.assert_allclose(shifted.fitted - y_shift, plain.fitted * y_scale, rtol=TOL,
                               atol=TOL * (abs(y_shift) + np.abs(plain.fitted * y_scale).max()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(design=st.sampled_from(DESIGNS), weighted=st.booleans(),
       shift=st.floats(0, 9), scale=st.integers(-20, 20), sign=st.sampled_from([-1.0, 1.0]))
def test_shifting_and_scaling_y(design, weighted, shift, scale, sign):
    """y -> c (y + s) for |s| up to 1e9 sd(y) (1e7 with prior weights) and c = 2^k
    from 1e-6 to 1e6.  The
    unshifted fit is of (y + s) - s, exactly the shifted values less s (and c,
    a power of two, scales them exactly: what is compared is the fit, not the
    rounding of the data)."""
    name, formula, y, _, _ = design
    df = lmmfast.datasets.load(name)
    if weighted:   # sqrt(w) (y + s) is rounded as it enters A: 1e-16 s of noise
        df = _weighted(df)
        shift = min(shift, 7.0)
    s = sign * 10.0 ** shift * df[y].std()
    c = 2.0 ** scale
    moved = df[y] + s
    weights = "w" if weighted else None
    shifted = _fit(formula, df.assign(**{y: c * moved}), weights)
    plain = _fit(formula, df.assign(**{y: moved - s}), weights)
    _assert_invariant(shifted, plain, y_shift=c * s, y_scale=c)
    slopes = [j for j, n in enumerate(plain.fixef.index) if n != "(Intercept)"]
    np.testing.assert_allclose(shifted.fixef.iloc[slopes], c * plain.fixef.iloc[slopes],
                               rtol=TOL, atol=TOL * c * np.abs(plain.fixef).max())
    np.testing.assert_allclose(shifted.stderr, c * plain.stderr, rtol=1e-7)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(design=st.sampled_from([d for d in DESIGNS if d[3]]), weighted=st.booleans(),
       shift=st.floats(0, 6), scale=st.integers(-20, 20))
def test_shifting_and_scaling_a_covariate(design, weighted, shift, scale):
    """x -> c (x + s) for s up to 1e6 sd(x) and c = 2^k from 1e-6 to 1e6 (further, X's rank check drops the
    column as lme4's does), in main effects and interactions: theta, sigma,
    the criterion and the fitted values do not change, nor x's own slope (/ c)
    where x is in no interaction."""
    name, formula, y, x, _ = design
    df = lmmfast.datasets.load(name)
    if weighted:
        df = _weighted(df)
    slope = "(0 + " in formula   # a random slope in x: not invariant to shifts of x
    s = 0.0 if slope else 10.0 ** shift * df[x].std()
    c = 2.0 ** scale
    moved = df[x] + s
    weights = "w" if weighted else None
    shifted = _fit(formula, df.assign(**{x: c * moved}), weights)
    plain = _fit(formula, df.assign(**{x: moved - s}), weights)
    if slope:   # its theta scales with 1 / c
        np.testing.assert_allclose(shifted.theta * c, plain.theta, rtol=TOL)
        assert shifted.objective == pytest.approx(plain.objective + 2 * np.log(c), rel=TOL)
        return
    scaled_columns = sum(x in name.split(":") for name in plain.fixef.index)
    _assert_invariant(shifted, plain, x_log_det=2 * np.log(c) * scaled_columns)
    if ":" not in formula and "*" not in formula:
        assert shifted.fixef[x] * c == pytest.approx(plain.fixef[x], rel=TOL)
        assert shifted.stderr[x] * c == pytest.approx(plain.stderr[x], rel=1e-7)


def test_large_mean_response_of_the_report():
    """The example that gave a criterion below the true minimum (shift 1e7) and a
    zero residual variance (shift 1e8)."""
    rng = np.random.default_rng(0)
    g = rng.integers(0, 20, 200)
    x = rng.normal(size=200)
    y = 1 + 2 * x + rng.normal(size=20)[g] + rng.normal(size=200)
    fits = {shift: _fit("y ~ x + (1 | g)", pd.DataFrame({"y": y + shift, "x": x,
                                                         "g": pd.Categorical(g)}))
            for shift in (0.0, 1e7, 1e8)}
    assert fits[0.0].theta.iloc[0] == pytest.approx(1.158552, abs=1e-6)
    assert fits[0.0].sigma == pytest.approx(1.002063, abs=1e-6)
    for shift in (1e7, 1e8):
        np.testing.assert_allclose(fits[shift].theta, fits[0.0].theta, rtol=1e-7)
        assert fits[shift].sigma == pytest.approx(fits[0.0].sigma, rel=1e-7)
        assert fits[shift].objective == pytest.approx(fits[0.0].objective, rel=1e-9)
        assert fits[shift].fixef["x"] == pytest.approx(fits[0.0].fixef["x"], rel=1e-7)


@pytest.mark.parametrize("shift", [1e4, 1e8])
def test_sleepstudy_shifted_matches_lme4(shift):
    """Reaction + 1e8 fits lme4's sleepstudy estimates (lme4's own fit of the
    unshifted data; the shift only moves the intercept)."""
    ref = reference()["models"]["sleep_slope"]["fits"]["REML"]
    df = lmmfast.datasets.load("sleepstudy")
    fit = _fit(ref["formula"], df.assign(Reaction=df.Reaction + shift))
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-4)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-5)
    assert fit.objective <= ref["objective"] * (1 + 1e-6)
    assert fit.fixef["Days"] == pytest.approx(ref["fixef"]["estimate"][1], rel=1e-5)
    assert fit.fixef["(Intercept)"] - shift == pytest.approx(ref["fixef"]["estimate"][0],
                                                             rel=1e-5)


FORCED_MODELS = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", {}),
    ("cake", "angle ~ recipe * temp + (1 | recipe:replicate)", {}),
    ("sleepstudy", "Reaction ~ Days + (1 | Subject)", {"weights": "w", "offset": "o"}),
]


@pytest.mark.parametrize("name, formula, extra", FORCED_MODELS)
def test_working_basis_maps_back_exactly(monkeypatch, name, formula, extra):
    """Every step of the basis forced on (CENTRE_RATIO = 0): the same estimates,
    covariances, denominator df, refits and predictions as without it."""
    df = lmmfast.datasets.load(name)
    df = df.assign(w=1.0 + (np.arange(len(df)) % 3), o=0.1 * np.arange(len(df)) % 5)
    plain = lmmfast.lmer(formula, df, **extra)
    assert plain._basis.identity
    monkeypatch.setattr(conditioning, "CENTRE_RATIO", 0.0)
    forced = lmmfast.lmer(formula, df, **extra)
    assert not forced._basis.identity
    assert forced.objective == pytest.approx(plain.objective, rel=1e-12)
    np.testing.assert_allclose(forced.theta, plain.theta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(forced.fixef, plain.fixef, rtol=1e-9)
    np.testing.assert_allclose(forced.vcov, plain.vcov, rtol=1e-7, atol=1e-12)
    for ddf in ("satterthwaite", "kenward-roger"):   # (p-values to 1e-17 in the last column)
        ours = forced.coef_table(ddf=ddf).to_numpy(dtype=float)
        theirs = plain.coef_table(ddf=ddf).to_numpy(dtype=float)
        np.testing.assert_allclose(ours[:, :-1], theirs[:, :-1], rtol=1e-6)
        np.testing.assert_allclose(ours[:, -1], theirs[:, -1], rtol=1e-4)
    np.testing.assert_allclose(forced.predict(df.iloc[:7]), plain.predict(df.iloc[:7]),
                               rtol=1e-10)
    y2 = plain.simulate(1, seed=3).ravel()
    np.testing.assert_allclose(forced.copy().refit(y2).theta, plain.copy().refit(y2).theta,
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(forced.copy().refit(y2, optimizer="bobyqa").fixef,
                               plain.copy().refit(y2, optimizer="bobyqa").fixef, rtol=1e-5)


def test_streamed_fit_with_a_large_mean_equals_in_memory():
    df = lmmfast.datasets.load("sleepstudy")
    df = df.assign(Reaction=df.Reaction + 1e8, Days=df.Days + 1e4)
    formula = "Reaction ~ Days + (Days | Subject)"
    streamed = StreamedLinearMixedModel.from_frame(formula, df, chunk_rows=17).fit()
    in_memory = LinearMixedModel(formula, df).fit()
    assert not in_memory._basis.identity
    np.testing.assert_allclose(streamed._a, in_memory._a, rtol=1e-12, atol=1e-12)
    assert streamed.objective == pytest.approx(in_memory.objective, rel=1e-12)
    np.testing.assert_allclose(streamed.fixef, in_memory.fixef, rtol=1e-12)


def test_warns_when_digits_are_lost():
    """A fixed effect nearly confounded with a random intercept whose variance is
    1e12 times the residual's: the factor cancels more digits than 1e-8 allows."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(30), 5)
    first = (g == 0).astype(float)
    y = 1e6 * rng.normal(size=30)[g] + rng.normal(size=150)
    df = pd.DataFrame({"y": y, "first": first, "g": pd.Categorical(g)})
    with pytest.warns(ConditioningWarning, match="accurate only to about"):
        lmmfast.lmer("y ~ first + (1 | g)", df)


@pytest.mark.parametrize("model", list(reference()["models"]))
def test_reference_models_need_no_basis_and_do_not_warn(model):
    spec = reference()["models"][model]
    df = lmmfast.datasets.load(spec["dataset"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConditioningWarning)
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        fit = lmmfast.lmer(spec["formula"], df)
    assert fit._basis.identity
