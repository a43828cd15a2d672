"""The cached design-matrix path: the same matrices, names and transform state as
formulaic's, for every formula feature, without going through formulaic again."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.design import materialize
from lmmfast.errors import LmmWarning
from lmmfast.formula import parse_formula, response_code
from lmmfast.design.materialize import design_matrix
from lmmfast.design.frame import model_frame

from conftest import extra_reference, load_extra_data


def _sleep():
    return lmmfast.datasets.load("sleepstudy")


def _dotted():
    return _sleep().rename(columns={"Days": "my.x", "Subject": "my.g", "Reaction": "my.y"})


def _spaced():
    return _sleep().rename(columns={"Days": "my x", "Subject": "sujet é"})


def _cake():
    return lmmfast.datasets.load("cake")


def _ordered_cake():
    cake = _cake()
    return cake.assign(recipe=cake.recipe.astype(
        pd.CategoricalDtype(cake.recipe.cat.categories, ordered=True)))


#: formulas whose every part takes the cached path from the second build on
FAST = [
    (_sleep, "Reaction ~ Days + I(Days^2) + (Days | Subject)"),
    (_sleep, "Reaction ~ Days + I(Days^2) + (1 | Subject)"),
    (_sleep, "Reaction ~ log(Days + 1) + (Days | Subject)"),
    (_sleep, "Reaction ~ poly(Days, 2) + (1 | Subject)"),
    (_sleep, "Reaction ~ poly(Days, 3) + (Days | Subject)"),
    (_sleep, "Reaction ~ scale(Days) + (1 | Subject)"),
    (_sleep, "Reaction ~ Days + (scale(Days) | Subject)"),
    (_sleep, "Reaction ~ sqrt(Days) + (Days | Subject)"),
    (_sleep, "Reaction ~ Days + (sqrt(Days) | Subject)"),
    (_sleep, "Reaction ~ exp(Days/10) + (Days | Subject)"),
    (_sleep, "Reaction ~ abs(Days - 4) + log1p(Days) + (1 | Subject)"),
    (_sleep, "Reaction ~ as.numeric(Days) + (Days | Subject)"),
    (_sleep, "Reaction ~ factor(Days) + (1 | Subject)"),
    (_sleep, "Reaction ~ sqrt(Days) + factor(Days) + (1 | Subject)"),
    (_sleep, "Reaction ~ Days + Days:Subject + (1 | Subject)"),
    (_sleep, "Reaction ~ I(Days^2):Subject + (1 | Subject)"),
    (_sleep, "Reaction ~ scale(Days) * log(Days + 1) + (1 | Subject)"),
    (_sleep, "Reaction - 200 ~ Days + (1 | Subject)"),
    (_sleep, "log(Reaction) ~ as.numeric(Days) + (1 | Subject)"),
    (_sleep, "Reaction ~ Days + offset(Days) + offset(log(Days + 1)) + (1 | Subject)"),
    (_dotted, "my.y ~ my.x + I(my.x^2) + (my.x | my.g)"),
    (_spaced, "Reaction ~ `my x` + I(`my x`^2) + (`my x` | `sujet é`)"),
    (_cake, "angle ~ as.numeric(recipe) + (1 | replicate)"),
    (lambda: lmmfast.datasets.load("cbpp"), "incidence/size ~ period + (1 | herd)"),
]
#: formulas that may be built by formulaic each time (R's contr.poly coding)
OTHERS = [
    (_cake, "angle ~ recipe * temperature + (1 | replicate)"),
    (_ordered_cake, "angle ~ recipe * temperature + (1 | replicate)"),
    (_ordered_cake, "angle ~ recipe + (temperature | replicate)"),
]
EXTRA = [name for name, m in extra_reference()["models"].items() if m.get("data_file")]


def _parts(parsed, frame) -> list[str]:
    """Every expression a fit builds columns of: response, fixed part, offsets, terms."""
    exprs = [parsed.fixed] + [f"0 + I({e})" for e in parsed.offsets] \
        + [t.expr for t in parsed.random]
    name = parsed.response.strip("`")
    if name not in frame.columns:
        exprs.append(f"0 + I({response_code(parsed.response)})")
    return exprs


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def _states_equal(a: dict, b: dict) -> bool:
    return materialize._same_state(a, b)


def _check_paths(formula: str, data: pd.DataFrame, must_be_fast: bool) -> None:
    parsed = parse_formula(formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        for expr in _parts(parsed, model_frame(parsed, data).data):
            materialize._RECIPES.clear()
            frame = model_frame(parsed, data).data
            x0, names0, spec0 = design_matrix(expr, frame, "x", with_spec=True)
            assert "frame" in frame.__dict__            # formulaic read the pandas frame
            frame = model_frame(parsed, data).data
            x1, names1, spec1 = design_matrix(expr, frame, "x", with_spec=True)
            if must_be_fast:
                assert "frame" not in frame.__dict__, f"{expr!r} went through formulaic"
            assert names1 == names0
            assert x1.shape == x0.shape
            np.testing.assert_array_equal(_bits(x1), _bits(x0), err_msg=expr)
            if spec0 is not None and spec1 is not None:
                assert _states_equal(spec1.transform_state, spec0.transform_state)
                assert spec1.encoder_state.keys() == spec0.encoder_state.keys()


@pytest.mark.parametrize("data,formula", FAST, ids=[f for _, f in FAST])
def test_cached_path_equals_formulaic_bit_for_bit(data, formula):
    _check_paths(formula, data(), must_be_fast=True)


@pytest.mark.parametrize("data,formula", OTHERS, ids=[f for _, f in OTHERS])
def test_other_formulas_equal_formulaic(data, formula):
    _check_paths(formula, data(), must_be_fast=False)


@pytest.mark.parametrize("name", EXTRA)
def test_fixture_formulas_equal_formulaic(name):
    model = extra_reference()["models"][name]
    _check_paths(model["formula"], load_extra_data(name), must_be_fast=False)


def _fit(formula, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        return lmmfast.lmer(formula, data)


@pytest.mark.parametrize("formula", [
    "Reaction ~ scale(Days) + (1 | Subject)",
    "Reaction ~ poly(Days, 2) + (Days | Subject)",
    "Reaction ~ factor(Days) + (1 | Subject)",
    "Reaction ~ I(Days^2) + log(Days + 1) + (sqrt(Days) | Subject)",
    "Reaction ~ Days + (scale(Days) | Subject)",
])
def test_predict_after_cached_fit_equals_formulaic(formula):
    """A fit built on the cached path predicts newdata as the formulaic-built fit:
    the stateful transforms keep the fit's centre, scale, polynomial and levels."""
    data = _sleep()
    train = data[data.Days <= 6]
    new = data[(data.Days >= 2) & (data.Days <= 6)].iloc[::3]
    materialize._RECIPES.clear()
    slow = _fit(formula, train)
    fast = _fit(formula, train)
    specs = [(slow.fixed_spec, fast.fixed_spec)] + [
        (getattr(a, "spec", None), getattr(b, "spec", None)) for a, b in zip(slow.remats, fast.remats)]
    for want, got in specs:
        if got is not None:
            assert _states_equal(got.transform_state, want.transform_state)
    np.testing.assert_array_equal(fast.x, slow.x)
    for re_form in (None, "~0"):
        np.testing.assert_array_equal(_bits(fast.predict(new, re_form=re_form)),
                                      _bits(slow.predict(new, re_form=re_form)))


def test_scale_on_new_data_uses_the_fits_centre_and_sd():
    data = _sleep()
    train = data[data.Days <= 4]
    _fit("Reaction ~ scale(Days) + (1 | Subject)", data)       # the recipe is cached
    fit = _fit("Reaction ~ scale(Days) + (1 | Subject)", train)
    days = train.Days
    z = ((days - days.mean()) / days.std(ddof=1)).to_numpy()
    np.testing.assert_allclose(fit.x[:, 1], z, rtol=1e-14)
    new = data[data.Days >= 7]
    zn = ((new.Days - days.mean()) / days.std(ddof=1)).to_numpy()
    np.testing.assert_allclose(fit.predict(new, re_form="~0"),
                               np.asarray(fit.fixef)[0] + np.asarray(fit.fixef)[1] * zn, rtol=1e-12)


@pytest.mark.parametrize("formula", [
    "Reaction ~ scale(Days) + (1 | Subject)",
    "Reaction ~ poly(Days, 2) + (1 | Subject)",
    "Reaction ~ factor(Days) + (1 | Subject)",
    "Reaction ~ Days + Days:Subject + (1 | Subject)",
    "Reaction ~ I(Days^2) + (Days | Subject)",
])
def test_second_fit_on_other_data_is_built_for_that_data(formula):
    """The cache key and recipe follow the data: other values, other levels."""
    data = _sleep()
    other = data[(data.Days <= 5) & data.Subject.isin(data.Subject.cat.categories[:9])].copy()
    other["Reaction"] = other.Reaction * 1.5
    other["Days"] = other.Days * 2.0
    first = _fit(formula, data)
    second = _fit(formula, other)
    materialize._RECIPES.clear()
    want = _fit(formula, other)
    assert second.fixef_names == want.fixef_names
    np.testing.assert_array_equal(_bits(second.x), _bits(want.x))
    np.testing.assert_array_equal(second.y, want.y)
    assert second.objective == want.objective
    assert first.fixef_names != second.fixef_names or not np.array_equal(
        first.x[:len(second.x)], second.x)


def test_factor_levels_of_other_data_give_other_columns():
    data = _sleep()
    _fit("Reaction ~ factor(Days) + (1 | Subject)", data)
    fit = _fit("Reaction ~ factor(Days) + (1 | Subject)", data[data.Days <= 4])
    assert fit.fixef_names == ["(Intercept)"] + [f"factor(Days){k}" for k in range(1, 5)]


def test_transform_fit_does_not_build_a_pandas_frame():
    """The second fit of a formula with I(x^2) reads the model frame's arrays only."""
    data = _sleep()
    formula = "Reaction ~ Days + I(Days^2) + (Days | Subject)"
    parsed = parse_formula(formula)
    _fit(formula, data)
    frame = model_frame(parsed, data).data
    x, names = design_matrix(parsed.fixed, frame, "x")
    assert names == ["(Intercept)", "Days", "I(Days^2)"]
    assert "frame" not in frame.__dict__
    np.testing.assert_array_equal(x[:, 2], data.Days.to_numpy() ** 2.0)
