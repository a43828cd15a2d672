"""The lme4 formula layer: splitting, expansion of || and /, and model matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.errors import FormulaError
from lmmfast.formula import parse_formula
from lmmfast.design.frame import as_factor
from lmmfast.design.materialize import lme4_column_name
from lmmfast.summary import lme4_formula


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


@pytest.mark.parametrize("formula,response,fixed,terms", [
    ("my.y ~ my.x + (1 | my.g)", "my.y", "`my.x`", [("1", "my.g")]),
    ("y ~ as.numeric(x) + (1 | g)", "y", "as_numeric(x)", [("1", "g")]),
    ("y ~ Q('a b') + (Q(\"a b\") | Q('g h'))", "y", "`a b`", [("`a b`", "g h")]),
    ("y ~ x + (1 | sujeté)", "y", "x", [("1", "sujeté")]),
    ("y - 200 ~ log(x^2) + C(f, contr.poly) + (1 | g)", "y - 200",
     "log(x**2) + C(f, contr.poly)", [("1", "g")]),
    ("y ~ np.log(x) + 1e-3 + (1 | g)", "y", "np.log(x) + 1e-3", [("1", "g")]),
])
def test_r_spelling_translated(formula, response, fixed, terms):
    """R's names and calls in formulaic's spelling; the response kept as written."""
    f = parse_formula(formula)
    assert (f.response, f.fixed, _terms(formula)) == (response, fixed, terms)


def test_lme4_names_of_r_functions_and_poly_contrasts():
    assert lme4_column_name("C(temperature, contr.poly)[.L]") == "temperature.L"
    assert lme4_column_name("recipe[T.B]:C(`temperature`, contr.poly)[^4]") == \
        "recipeB:temperature^4"
    assert lme4_column_name("as_numeric(Days)") == "as.numeric(Days)"
    assert lme4_column_name("I(`my.x` ** 2)") == "I(my.x^2)"
    assert lme4_column_name("factor(Days)[T.3]") == "factor(Days)3"


@pytest.mark.parametrize("formula,terms", [
    # lme4's expandDoubleVerts: one term per term label of the left-hand side
    ("y ~ (1 + a*b || g)", [("1", "g"), ("0 + a", "g"), ("0 + b", "g"), ("0 + a:b", "g")]),
    ("y ~ (0 + a*b || g)", [("0 + a", "g"), ("0 + b", "g"), ("0 + a:b", "g")]),
    ("y ~ (1 + a*b - a:b || g)", [("1", "g"), ("0 + a", "g"), ("0 + b", "g")]),
    ("y ~ (x - 1 || g)", [("0 + x", "g")]),
    ("y ~ (a + a:b + a || g)", [("1", "g"), ("0 + a", "g"), ("0 + a:b", "g")]),
    ("y ~ (I(x^2) + b:a || g)", [("1", "g"), ("0 + I(x**2)", "g"), ("0 + b:a", "g")]),
])
def test_double_bar_expands_by_term_labels(formula, terms):
    assert _terms(formula) == terms


def test_double_bar_of_interaction_fits_as_its_expansion(sleepstudy):
    """(1 + Days*phase || Subject) is four uncorrelated terms, as lme4 makes it; the
    factor phase keeps its two columns in one term, (1 + phase || g) as in lme4."""
    df = sleepstudy.assign(phase=pd.Categorical(np.where(sleepstudy.Days < 5, "early", "late")))
    m = lmmfast.LinearMixedModel("Reaction ~ Days*phase + (1 + Days*phase || Subject)", df)
    assert [r.cnames for r in m.remats] == [
        ["(Intercept)"], ["Days"], ["phaseearly", "phaselate"],
        ["Days:phaseearly", "Days:phaselate"]]   # R's model.matrix(~ 0 + Days:phase)
    assert m.theta_names[:2] == ["Subject.(Intercept)", "Subject.Days"]
    explicit = lmmfast.LinearMixedModel(
        "Reaction ~ Days*phase + (1 | Subject) + (0 + Days | Subject) + (0 + phase | Subject)"
        " + (0 + Days:phase | Subject)", df)
    theta = np.array([0.9, 0.2, 0.7, 0.1, 0.8, 0.3, 0.05, 0.4])
    assert m.criterion(theta) == explicit.criterion(theta)
    assert lme4_formula("y ~ x + (1 + a*b || g)") == \
        "y ~ x + ((1 | g) + (0 + a | g) + (0 + b | g) + (0 + a:b | g))"
    with pytest.raises(lmmfast.FormulaError, match=r"\(0 \|\| g\)"):
        parse_formula("y ~ x + (0 || g)")
