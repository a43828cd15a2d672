"""Marginal effects tables (``fit.marginal_effects``) and their plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import lmmfast
from lmmfast.effects import COLUMNS, pretty

SLEEP = "Reaction ~ Days + (Days | Subject)"
CAKE = "angle ~ recipe * temp + (1 | recipe:replicate)"


@pytest.fixture(scope="module")
def sleep_fit():
    return lmmfast.lmer(SLEEP, lmmfast.datasets.load("sleepstudy"))


@pytest.fixture(scope="module")
def cake_fit():
    return lmmfast.lmer(CAKE, lmmfast.datasets.load("cake"))


def _wald(x, beta, vcov, level=0.95):
    est = x @ beta
    se = np.sqrt(np.einsum("ij,jk,ik->i", x, vcov, x))
    z = stats.norm.ppf(0.5 + level / 2)
    return est, se, est - z * se, est + z * se


def test_sleepstudy_days_table_is_fixef_arithmetic(sleep_fit):
    table = sleep_fit.marginal_effects("Days")
    assert list(table.columns) == COLUMNS
    days = np.arange(10.0)
    np.testing.assert_array_equal(table["x"].to_numpy(float), days)   # pretty 0..9
    x = np.column_stack([np.ones(10), days])
    est, se, lo, hi = _wald(x, sleep_fit.fixef.to_numpy(), sleep_fit.vcov.to_numpy())
    np.testing.assert_allclose(table["predicted"], est, rtol=1e-12)
    np.testing.assert_allclose(table["std.error"], se, rtol=1e-10)
    np.testing.assert_allclose(table["conf.low"], lo, rtol=1e-10)
    np.testing.assert_allclose(table["conf.high"], hi, rtol=1e-10)
    assert set(table["group"]) == {"1"}
    assert table.attrs["term"] == "Days" and table.attrs["response"] == "Reaction"


def test_at_gives_the_terms_values_and_level(sleep_fit):
    table = sleep_fit.marginal_effects("Days", at={"Days": [2, 4.5]}, level=0.8)
    np.testing.assert_array_equal(table["x"].to_numpy(float), [2, 4.5])
    x = np.array([[1, 2], [1, 4.5]])
    _, _, lo, hi = _wald(x, sleep_fit.fixef.to_numpy(), sleep_fit.vcov.to_numpy(), 0.8)
    np.testing.assert_allclose(table["conf.low"], lo, rtol=1e-10)
    np.testing.assert_allclose(table["conf.high"], hi, rtol=1e-10)


def test_pretty_values():
    np.testing.assert_allclose(pretty(0, 9, 10), np.arange(10))
    np.testing.assert_allclose(pretty(175, 225, 10), np.arange(175, 226, 5))
    np.testing.assert_allclose(pretty(0.13, 0.91, 4), [0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_cake_temp_by_recipe(cake_fit):
    table = cake_fit.marginal_effects("temp", by="recipe")
    assert list(pd.unique(table["group"])) == ["A", "B", "C"]
    temps = np.arange(175.0, 226.0, 5.0)
    beta = cake_fit.fixef
    for g in ["A", "B", "C"]:
        rows = table[table["group"] == g]
        np.testing.assert_array_equal(rows["x"].to_numpy(float), temps)
        expected = beta["(Intercept)"] + beta["temp"] * temps
        if g != "A":
            expected = expected + beta[f"recipe{g}"] + beta[f"recipe{g}:temp"] * temps
        np.testing.assert_allclose(rows["predicted"], expected, rtol=1e-12)
    same = cake_fit.marginal_effects(["temp", "recipe"])
    pd.testing.assert_frame_equal(same, table)


def test_cake_other_numeric_at_mean_factor_at_reference(cake_fit):
    beta = cake_fit.fixef
    mean_temp = float(np.mean(lmmfast.datasets.load("cake")["temp"]))
    table = cake_fit.marginal_effects("recipe")
    assert list(table["x"]) == ["A", "B", "C"]
    expected = [beta["(Intercept)"] + beta["temp"] * mean_temp + (
        0 if g == "A" else beta[f"recipe{g}"] + beta[f"recipe{g}:temp"] * mean_temp)
        for g in "ABC"]
    np.testing.assert_allclose(table["predicted"], expected, rtol=1e-12)
    # the reference level of a factor that is not the term
    temp_only = cake_fit.marginal_effects("temp", at={"temp": [180, 200]})
    np.testing.assert_allclose(temp_only["predicted"],
                               beta["(Intercept)"] + beta["temp"] * np.array([180, 200]),
                               rtol=1e-12)
    fixed_c = cake_fit.marginal_effects("temp", at={"temp": 200, "recipe": "C"})
    np.testing.assert_allclose(
        fixed_c["predicted"],
        [beta["(Intercept)"] + beta["recipeC"] + (beta["temp"] + beta["recipeC:temp"]) * 200],
        rtol=1e-12)


def test_numeric_by_at_mean_and_sd(cake_fit):
    temp = lmmfast.datasets.load("cake")["temp"].to_numpy(float)
    table = cake_fit.marginal_effects("recipe", by="temp")
    m, s = temp.mean(), temp.std(ddof=1)
    assert list(pd.unique(table["group"])) == [f"{v:g}" for v in (m - s, m, m + s)]


@pytest.mark.parametrize("kwargs, words", [
    ({"term": "Dayz"}, ["term", "'Dayz'", "Days"]),
    ({"term": "Days", "by": "Subject"}, ["by", "'Subject'"]),
    ({"term": "Days", "at": {"Nights": 1}}, ["at", "'Nights'"]),
    ({"term": "Days", "at": {"Days": "many"}}, ["'Days'", "finite"]),
    ({"term": "Days", "at": {"Days": []}}, ["'Days'", "no values"]),
    ({"term": "Days", "at": [1, 2]}, ["at must be a dict"]),
    ({"term": 3}, ["term", "name"]),
    ({"term": "Days", "by": "Days"}, ["by", "'Days'"]),
    ({"term": "Days", "level": 1.5}, ["level"]),
    ({"term": "Days", "n": 1}, ["n"]),
])
def test_bad_term_or_at(sleep_fit, kwargs, words):
    with pytest.raises(lmmfast.LmmError) as err:
        sleep_fit.marginal_effects(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_bad_factor_level_in_at(cake_fit):
    with pytest.raises(lmmfast.LmmError, match="level 'D' of factor 'recipe'"):
        cake_fit.marginal_effects("temp", at={"recipe": "D"})
    with pytest.raises(lmmfast.LmmError, match="several values of 'recipe'"):
        cake_fit.marginal_effects("temp", at={"recipe": ["A", "B"]})


# ------------------------------------------------------------------- plot
def test_plot_one_line_and_band_per_group(cake_fit):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from lmmfast import plot

    table = cake_fit.marginal_effects("temp", by="recipe")
    ax = plot.marginal_effects(table)
    try:
        assert isinstance(ax, matplotlib.axes.Axes)
        assert len(ax.get_lines()) == 3
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 3
        assert ax.get_xlabel() == "temp" and ax.get_ylabel() == "angle"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B", "C"]
        np.testing.assert_allclose(ax.get_lines()[1].get_ydata(),
                                   table.loc[table["group"] == "B", "predicted"])
    finally:
        plt.close(ax.figure)
    fig, ax2 = plt.subplots()
    try:
        assert plot.marginal_effects(cake_fit, term="temp", ax=ax2) is ax2
        assert len(ax2.get_lines()) == 1
        assert len([c for c in ax2.collections if isinstance(c, PolyCollection)]) == 1
    finally:
        plt.close(fig)
    with pytest.raises(lmmfast.LmmError, match="term"):
        plot.marginal_effects(cake_fit)
    with pytest.raises(lmmfast.LmmError, match="table_or_fit"):
        plot.marginal_effects(pd.DataFrame({"a": [1]}))


def test_plot_factor_term_points_with_error_bars(cake_fit):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmmfast import plot

    table = cake_fit.marginal_effects("recipe")
    ax = plot.marginal_effects(table)
    try:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C"]
        line = ax.get_lines()[0]
        np.testing.assert_allclose(line.get_xdata(), [0, 1, 2])
        np.testing.assert_allclose(line.get_ydata(), table["predicted"])
        assert ax.get_xlabel() == "recipe"
    finally:
        plt.close(ax.figure)
