"""Tidy tables against broom.mixed's ``tidy`` and ``glance``.

``fixtures/posthoc_results.json`` (a copy of the shared folder's
``posthoc/posthoc_results.json``) holds, for three REML lme4 fits,
``tidy(fit, effects = c("fixed", "ran_pars"), conf.int = TRUE)`` with lmerTest
loaded (Satterthwaite df) and ``glance(fit)``.  The comparison is made at
lme4's optimum, theta recovered from the fixture's own SDs and correlations,
so that values agree to 1e-6 relative rather than to the optimisers' 1e-5.
p-values are compared on the log scale: lmerTest's df come from numerical
derivatives (agreeing to ~3e-7 here), which the far t tail of p = 1e-17
amplifies to 8e-6 in p.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.errors import DataError
from lmmfast.fixed_tests import InferenceError
from conftest import FIXTURES, assert_rel, lme4_theta

POSTHOC = json.loads((FIXTURES / "posthoc_results.json").read_text())["models"]
MODELS = list(POSTHOC)
RTOL = 1e-6


def _data(name: str) -> pd.DataFrame:
    df = lmmfast.datasets.load(POSTHOC[name]["dataset"])
    if name == "cake":   # R's fit used factor(temperature): unordered, treatment contrasts
        df = df.assign(temperature=df["temperature"].cat.as_unordered())
    return df


@lru_cache(maxsize=None)
def fitted(name: str) -> lmmfast.LinearMixedModel:
    return lmmfast.lmer(POSTHOC[name]["formula"], _data(name), reml=POSTHOC[name]["reml"])


@lru_cache(maxsize=None)
def at_lme4_optimum(name: str) -> lmmfast.LinearMixedModel:
    fit = fitted(name).copy()
    fit._set_theta(lme4_theta(fit, POSTHOC[name]["tidy"]))
    return fit


def _assert_frame(ours: pd.DataFrame, ref: dict, what: str) -> None:
    assert list(ours.columns) == list(ref), what
    for col, values in ref.items():
        got = ours[col].tolist()
        if any(isinstance(v, str) for v in values):
            assert [None if pd.isna(v) else v for v in got] == values, f"{what}: {col}"
        else:
            expected = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            got = np.array(got, dtype=np.float64)
            assert np.array_equal(np.isnan(got), np.isnan(expected)), f"{what}: {col} NA"
            keep = ~np.isnan(expected)
            if col == "p.value":   # on the log scale, see the module docstring
                got, expected = np.log(got), np.log(expected)
            assert_rel(got[keep], expected[keep], RTOL, f"{what}: {col}")


# ------------------------------------------------------------ against broom
@pytest.mark.parametrize("name", MODELS)
def test_tidy_against_broom_mixed(name):
    table = at_lme4_optimum(name).tidy(effects=("fixed", "ran_pars"), conf_int=True)
    _assert_frame(table, POSTHOC[name]["tidy"], f"{name} tidy")


@pytest.mark.parametrize("name", MODELS)
def test_glance_against_broom_mixed(name):
    ref = POSTHOC[name]["glance"]
    ours = at_lme4_optimum(name).glance()
    _assert_frame(ours, {k: [v] for k, v in ref.items()}, f"{name} glance")
    assert ours["nobs"].iloc[0] == ref["nobs"] and ours["df.residual"].iloc[0] == ref["df.residual"]


@pytest.mark.parametrize("name", MODELS)
def test_tidy_at_own_optimum_is_close(name):
    """At lmmfast's optimum (REML criterion no worse than lme4's) the table agrees to 1e-4."""
    ref = POSTHOC[name]["tidy"]
    ours = fitted(name).tidy(conf_int=True)
    for col in ("estimate", "std.error", "conf.low", "conf.high"):
        expected = np.array([np.nan if v is None else v for v in ref[col]], dtype=np.float64)
        keep = ~np.isnan(expected)
        assert_rel(ours[col].to_numpy()[keep], expected[keep], 1e-4, f"{name}: {col}")
    assert fitted(name).objective <= POSTHOC[name]["glance"]["REMLcrit"] + 1e-6


# ----------------------------------------------------------- other options
def test_glance_of_ml_fit_has_deviance():
    fit = lmmfast.lmer(POSTHOC["sleep_slope"]["formula"], _data("sleep_slope"), reml=False)
    ours = fit.glance()
    assert list(ours.columns) == ["nobs", "sigma", "logLik", "AIC", "BIC", "deviance",
                                  "df.residual"]
    assert ours["deviance"].iloc[0] == pytest.approx(fit.deviance)
    assert ours["deviance"].iloc[0] == pytest.approx(-2 * fit.loglik)
    assert ours["df.residual"].iloc[0] == 180 - 6


def test_ran_vals_are_conditional_modes_and_sds():
    fit = fitted("sleep_slope")
    table = fit.tidy(effects="ran_vals", conf_int=True, conf_level=0.9)
    assert list(table.columns) == ["effect", "group", "level", "term", "estimate", "std.error",
                                   "conf.low", "conf.high"]
    modes = fit.ranef(condvar=True)["Subject"]
    sd = modes.attrs["condsd"]
    # lme4's as.data.frame(ranef()) order: grouping factor, column, level
    assert table["term"].tolist() == ["(Intercept)"] * 18 + ["Days"] * 18
    assert table["level"].tolist() == [str(v) for v in modes.index] * 2
    assert set(table["effect"]) == {"ran_vals"} and set(table["group"]) == {"Subject"}
    np.testing.assert_allclose(table["estimate"], modes.to_numpy().T.ravel(), rtol=1e-12)
    np.testing.assert_allclose(table["std.error"], sd.to_numpy().T.ravel(), rtol=1e-12)
    z = 1.6448536269514722
    np.testing.assert_allclose(table["conf.high"] - table["estimate"], z * table["std.error"],
                               rtol=1e-12)


def test_ran_vals_of_crossed_factors_and_all_effects():
    fit = fitted("penicillin")
    table = fit.tidy(effects=["ran_vals", "fixed", "ran_pars"])
    assert list(table.columns) == ["effect", "group", "level", "term", "estimate", "std.error",
                                   "statistic", "df", "p.value"]
    assert table["effect"].tolist() == ["fixed"] + ["ran_pars"] * 3 + ["ran_vals"] * (24 + 6)
    vals = table[table["effect"] == "ran_vals"]
    assert vals["group"].tolist() == ["plate"] * 24 + ["sample"] * 6
    assert vals["level"].tolist()[-6:] == list("ABCDEF")
    assert table.loc[table["effect"] != "ran_vals", "level"].isna().all()


def test_fixed_only_has_no_group_column_and_wald_option():
    fit = fitted("sleep_slope")
    table = fit.tidy(effects="fixed")
    assert list(table.columns) == ["effect", "term", "estimate", "std.error", "statistic", "df",
                                   "p.value"]
    wald = fit.tidy(effects="fixed", conf_int=True, ddf=None)
    assert list(wald.columns) == ["effect", "term", "estimate", "std.error", "statistic",
                                  "conf.low", "conf.high"]
    ct = fit.coef_table()
    np.testing.assert_allclose(wald["statistic"], ct["z value"], rtol=1e-12)
    np.testing.assert_allclose(wald["conf.low"],
                               ct["Estimate"] - 1.959963984540054 * ct["Std. Error"], rtol=1e-12)


def test_kenward_roger_fixed_rows():
    fit = fitted("penicillin")
    table = fit.tidy(effects="fixed", ddf="KR")
    kr = fit.coef_table(ddf="kenward-roger")
    np.testing.assert_allclose(table["std.error"], kr["Std. Error"], rtol=1e-12)
    np.testing.assert_allclose(table["df"], kr["df"], rtol=1e-12)


@pytest.mark.parametrize("kwargs,match,error", [
    (dict(effects=("fixed", "ran_coefs")), "effects", DataError),
    (dict(effects=()), "effects", DataError),
    (dict(effects=3), "effects", DataError),
    (dict(conf_level=95), "conf_level", DataError),
    (dict(conf_int="yes"), "conf_int", DataError),
    (dict(ddf="wald"), "ddf", InferenceError),
])
def test_bad_arguments(kwargs, match, error):
    with pytest.raises(error, match=match):
        fitted("sleep_slope").tidy(**kwargs)


def test_unfitted_model():
    model = lmmfast.LinearMixedModel(POSTHOC["sleep_slope"]["formula"], _data("sleep_slope"))
    with pytest.raises(lmmfast.LmmError, match="fit"):
        model.tidy()
    with pytest.raises(lmmfast.LmmError, match="fit"):
        model.glance()
