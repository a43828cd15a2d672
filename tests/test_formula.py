"""The lme4 formula layer: splitting, expansion of || and /, and model matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.errors import FormulaError
from lmmfast.formula import parse_formula
from lmmfast.modelframe import as_factor
from lmmfast.materialize import lme4_column_name


def _terms(formula):
    return [(t.expr, t.group) for t in parse_formula(formula).random]


def test_split_response_fixed_random():
    f = parse_formula("Reaction ~ 1 + Days + (1 + Days | Subject)")
    assert (f.response, f.fixed) == ("Reaction", "1 + Days")
    assert _terms("Reaction ~ 1 + Days + (1 + Days | Subject)") == [("1 + Days", "Subject")]


@pytest.mark.parametrize("formula,terms", [
    ("y ~ x + (x || g)", [("1", "g"), ("0 + x", "g")]),
    ("y ~ x + (1 + x + z || g)", [("1", "g"), ("0 + x", "g"), ("0 + z", "g")]),
    ("y ~ x + (0 + x || g)", [("0 + x", "g")]),
    ("y ~ 1 + (1 | a/b)", [("1", "a"), ("1", "b:a")]),
    ("y ~ 1 + (1 | a/b/c)", [("1", "a"), ("1", "b:a"), ("1", "c:b:a")]),
    ("y ~ 1 + (1 | a:b)", [("1", "a:b")]),
    ("y ~ (1 | g1) + (1 | g2)", [("1", "g1"), ("1", "g2")]),
    ("y ~ x + (I(x^2) | g)", [("I(x**2)", "g")]),
])
def test_random_term_expansion(formula, terms):
    assert _terms(formula) == terms


@pytest.mark.parametrize("formula,fixed", [
    ("y ~ (1 | g)", "1"),
    ("y ~ 0 + x + (1 | g)", "0 + x"),
    ("y ~ x - 1 + (1 | g)", "x - 1"),
    ("y ~ -1 + x + (1 | g)", "1 - 1 + x"),
    ("y ~ x + I(x^2) + (1 | g)", "x + I(x**2)"),
])
def test_fixed_part(formula, fixed):
    assert parse_formula(formula).fixed == fixed


@pytest.mark.parametrize("formula,match", [
    ("y x", "exactly one '~'"),
    ("~ x + (1|g)", "no response"),
    ("y ~ ", "nothing right"),
    ("y ~ x + 1|g", "wrapped in parentheses"),
    ("y ~ x + (1|)", "no grouping factor"),
    ("y ~ x + (|g)", "nothing left"),
    ("y ~ x + ((1|g)", "unbalanced"),
    ("y ~ x", "no random-effects term"),
    ("y ~ x + (1 | a + b)", "grouping factor"),
    ("y ~ x - (1 | g)", "cannot be subtracted"),
])
def test_syntax_errors(formula, match):
    with pytest.raises(FormulaError, match=match):
        parse_formula(formula)


@pytest.mark.parametrize("name,expected", [
    ("Intercept", "(Intercept)"),
    ("recipe[T.B]", "recipeB"),
    ("recipe[T.B]:temp", "recipeB:temp"),
    ("recipe[A]", "recipeA"),
    ("I(Days ** 2)", "I(Days^2)"),
    ("C(x)[T.2]", "x2"),
])
def test_lme4_column_names(name, expected):
    assert lme4_column_name(name) == expected


def test_factor_levels_follow_r():
    assert list(as_factor(pd.Series(["b", "a", "c", "a"])).categories) == ["a", "b", "c"]
    assert list(as_factor(pd.Series([10, 9, 100])).categories) == ["9", "10", "100"]
    cat = pd.Series(pd.Categorical(["x", "z"], categories=["z", "y", "x"]))
    assert list(as_factor(cat).categories) == ["z", "x"]          # order kept, unused dropped
    assert list(as_factor(pd.Series([True, False])).categories) == ["FALSE", "TRUE"]
    assert list(as_factor(pd.Series([2.0, 1.0])).categories) == ["1", "2"]


def test_interaction_grouping_levels(sleepstudy):
    """(1 | a:b) groups by the combinations present, first factor varying slowest."""
    df = sleepstudy.assign(half=np.where(sleepstudy.Days < 5, "early", "late"))
    m = lmmfast.LinearMixedModel("Reaction ~ Days + (1 | Subject:half)", df)
    r = m.remats[0]
    assert r.group == "Subject:half" and r.nlevels == 36
    assert r.levels[:3] == ["308:early", "308:late", "309:early"]
    assert np.array_equal(r.refs[:6], [0, 0, 0, 0, 0, 1])


def test_categorical_fixed_effect_uses_category_order():
    df = lmmfast.datasets.load("cake")
    df["recipe"] = df["recipe"].cat.reorder_categories(["C", "A", "B"])
    m = lmmfast.LinearMixedModel("angle ~ recipe + temp + (1 | replicate)", df)
    assert m.fixef_names == ["(Intercept)", "recipeA", "recipeB", "temp"]


def test_terms_in_lme4_order():
    """lme4 orders terms by decreasing number of levels, ties in formula order."""
    m = lmmfast.LinearMixedModel("strength ~ 1 + (1 | batch/cask)", lmmfast.datasets.load("Pastes"))
    assert [r.group for r in m.remats] == ["cask:batch", "batch"]
    m = lmmfast.LinearMixedModel("diameter ~ (1 | sample) + (1 | plate)",
                                 lmmfast.datasets.load("Penicillin"))
    assert [r.group for r in m.remats] == ["plate", "sample"]
    assert m.theta_names == ["plate.(Intercept)", "sample.(Intercept)"]


def test_random_slope_of_factor_and_uncorrelated_factor(sleepstudy):
    df = sleepstudy.assign(phase=pd.Categorical(np.where(sleepstudy.Days < 5, "early", "late")))
    m = lmmfast.LinearMixedModel("Reaction ~ phase + (1 + phase | Subject)", df)
    assert m.remats[0].cnames == ["(Intercept)", "phaselate"]
    m = lmmfast.LinearMixedModel("Reaction ~ phase + (1 + phase || Subject)", df)
    assert [r.cnames for r in m.remats] == [["(Intercept)"], ["phaseearly", "phaselate"]]
    assert m.theta_names == ["Subject.(Intercept)", "Subject.phaseearly",
                             "Subject.phaselate.phaseearly", "Subject.phaselate"]
