"""Predictions against lme4's ``predict.merMod``.

lme4's numbers: ``extras.predict_sleep_slope_REML`` of the shared reference and
``fixtures/lme4_predict.json`` (made by ``fixtures/make_lme4_predict.R`` from
tightly converged lme4 fits).  Predictions agree to 1e-6 relative.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.errors import DataError, FormulaError
from lmmfast.predict import parse_re_form, predict
from conftest import FIXTURES, assert_rel, load_extra_data, reference, reference_fit

PRED = json.loads((FIXTURES / "lme4_predict.json").read_text())["cases"]
RTOL = 1e-6


@lru_cache(maxsize=None)
def _data(source: str) -> pd.DataFrame:
    if source.startswith("extra:"):
        return load_extra_data(source[len("extra:"):])
    return lmmfast.datasets.load(source)


@lru_cache(maxsize=None)
def _fit(source: str, formula: str, offset: str | None) -> lmmfast.LinearMixedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmmfast.errors.LmmWarning)
        return lmmfast.lmer(formula, _data(source), reml=True, offset=offset)


def _newdata(case) -> pd.DataFrame | None:
    if case["newdata"] is None:
        return None
    return pd.DataFrame({k: [np.nan if v is None else v for v in vals]
                         for k, vals in case["newdata"].items()})


# ------------------------------------------------------------ against lme4
def test_shared_reference_predictions():
    fit = reference_fit("sleep_slope", "REML")
    rows = reference()["extras"]["predict_sleep_slope_REML"]["rows"]
    conditional = pd.DataFrame({"Subject": ["308", "999"], "Days": [10, 5]})
    got = fit.predict(conditional, allow_new_levels=True)
    assert_rel(got, [rows[0]["prediction"], rows[1]["prediction"]], RTOL, "conditional")
    population = fit.predict(pd.DataFrame({"Days": [0]}), re_form="NA")
    assert_rel(population, [rows[2]["prediction"]], RTOL, "re_form = NA")


@pytest.mark.parametrize("name", list(PRED))
def test_lme4_predictions(name):
    case = PRED[name]
    fit = _fit(case["source"], case["formula"], case["offset_column"])
    nd = _newdata(case)
    got = predict(fit, newdata=nd, re_form=case["re_form"],
                  allow_new_levels=case["allow_new_levels"],
                  offset=case["offset_column"] if nd is not None else None)
    assert_rel(got, case["prediction"], RTOL, name)


def test_offset_column_of_the_fit():
    """Without offset=, the fit's offset column is used if the model records it."""
    case = PRED["sleep_offset"]
    fit = _fit(case["source"], case["formula"], "off")
    nd = _newdata(case)
    if getattr(fit, "offset_column", None) == "off":
        assert_rel(fit.predict(nd, allow_new_levels=True), case["prediction"], RTOL, "offset")
    else:
        with pytest.raises(DataError, match="offset"):
            fit.predict(nd, allow_new_levels=True)
    # offset= as values and as a scalar
    vals = nd["off"].to_numpy()
    assert_rel(predict(fit, nd, allow_new_levels=True, offset=vals), case["prediction"],
               RTOL, "offset values")
    base = predict(fit, nd, allow_new_levels=True, offset=0.0)
    assert_rel(base + vals, case["prediction"], RTOL, "offset 0")


# ------------------------------------------------------------- behaviour
def test_fit_rows_are_fitted_values():
    fit = reference_fit("sleep_slope", "REML")
    assert_rel(fit.predict(), fit.fitted, 1e-14, "fitted")
    data = lmmfast.datasets.load("sleepstudy")
    assert_rel(fit.predict(data), fit.fitted, 1e-12, "newdata = the data")
    assert_rel(fit.predict(re_form="~0"), fit.x @ fit.fixef.to_numpy(), 1e-14, "population")


@pytest.mark.parametrize("form", ["~0", "~ 0", "NA", "~NA", np.nan, pd.NA, float("nan")])
def test_na_like_re_forms(form):
    assert parse_re_form(form) == ()
    fit = reference_fit("sleep_slope", "REML")
    nd = pd.DataFrame({"Days": [0.0, 3.0], "Subject": ["308", "309"]})
    assert_rel(fit.predict(nd, re_form=form), fit.fixef.iloc[0] + fit.fixef.iloc[1] * nd.Days,
               1e-12, "population")


def test_re_form_whole_model_equals_default():
    fit = reference_fit("penicillin", "REML")
    nd = lmmfast.datasets.load("Penicillin").iloc[::7]
    assert_rel(fit.predict(nd, re_form="~(1|plate) + (1|sample)"), fit.predict(nd),
               1e-12, "all terms")
    assert_rel(fit.predict(re_form="~ (1 | sample) + (1 | plate)"), fit.fitted, 1e-12,
               "fit rows")


def test_new_level_error_names_factor_and_level():
    fit = reference_fit("sleep_slope", "REML")
    nd = pd.DataFrame({"Days": [1.0, 2.0], "Subject": ["308", "999"]})
    with pytest.raises(DataError, match=r"Subject.*'999'"):
        fit.predict(nd)
    # a population-level re_form does not look at the grouping factor
    assert np.isfinite(fit.predict(nd, re_form="NA")).all()


def test_new_level_of_fixed_factor_is_an_error():
    fit = reference_fit("cake", "REML")
    nd = pd.DataFrame({"recipe": ["B", "D"], "temp": [200.0, 200.0], "replicate": ["1", "1"]})
    with pytest.raises(DataError, match=r"recipe.*'D'"):
        fit.predict(nd, allow_new_levels=True)
    with pytest.raises(DataError, match=r"recipe.*'D'"):
        fit.predict(nd, re_form="NA")


def test_new_level_of_fixed_factor_interaction_model():
    fit = _fit("extra:cake_interaction", "angle ~ recipe * temperature + (1 | replicate)", None)
    nd = pd.DataFrame({"recipe": ["A"], "temperature": ["230"], "replicate": ["1"]})
    with pytest.raises(DataError, match=r"temperature.*'230'"):
        fit.predict(nd)


def test_missing_values_give_nan():
    """NaN in a used covariate -> NaN; NaN grouping -> NaN, or population level if allowed."""
    fit = reference_fit("sleep_slope", "REML")
    nd = pd.DataFrame({"Days": [1.0, np.nan, 3.0, 2.0],
                       "Subject": ["308", "309", None, "999"]})
    got = fit.predict(nd, allow_new_levels=True)
    # lme4: predict(fm, nd, allow.new.levels = TRUE) with the default fit
    assert np.isnan(got[1]) and np.isfinite(got[[0, 2, 3]]).all()
    pop = fit.predict(nd, re_form="NA")
    assert_rel(got[[2, 3]], pop[[2, 3]], 1e-12, "missing or new level: population")
    strict = fit.predict(nd.iloc[[0, 1, 2]])
    assert np.isnan(strict[1]) and np.isnan(strict[2]) and np.isfinite(strict[0])
    assert np.isnan(pop[1]) and np.isfinite(pop[[0, 2, 3]]).all()


def test_missing_fixed_factor_value():
    fit = reference_fit("cake", "REML")
    nd = pd.DataFrame({"recipe": ["B", None], "temp": [200.0, 200.0],
                       "replicate": ["1", "1"]})
    got = fit.predict(nd, re_form="NA")
    assert np.isfinite(got[0]) and np.isnan(got[1])


def test_newdata_not_modified_and_row_order():
    fit = reference_fit("cake", "REML")
    data = lmmfast.datasets.load("cake")
    nd = data.sample(frac=0.3, random_state=1)
    before = nd.copy(deep=True)
    got = fit.predict(nd)
    pd.testing.assert_frame_equal(nd, before)
    rev = fit.predict(nd.iloc[::-1])
    assert_rel(rev[::-1], got, 1e-13, "reversed rows")
    as_dict = fit.predict({c: nd[c].tolist() for c in ("recipe", "temp", "replicate")})
    assert_rel(as_dict, got, 1e-13, "dict newdata")


def test_plain_and_numeric_columns_for_factors():
    """Grouping labels may come as integers or strings, factors as plain strings."""
    fit = reference_fit("sleep_slope", "REML")
    as_str = pd.DataFrame({"Days": [2.0, 5.0], "Subject": ["308", "372"]})
    as_int = pd.DataFrame({"Days": [2, 5], "Subject": [308, 372]})
    as_float = pd.DataFrame({"Days": [2.0, 5.0], "Subject": [308.0, 372.0]})
    as_cat = pd.DataFrame({"Days": [2.0, 5.0],
                           "Subject": pd.Categorical(["308", "372"],
                                                     categories=["372", "308", "999"])})
    want = fit.predict(as_str)
    for nd in (as_int, as_float, as_cat):
        assert_rel(fit.predict(nd), want, 1e-13, str(nd.Subject.dtype))


def test_single_row_and_categorical_fixed_factor():
    fit = reference_fit("cake", "REML")
    data = lmmfast.datasets.load("cake")
    one = data.iloc[[200]]
    assert_rel(fit.predict(one), fit.fitted[[200]], 1e-12, "one row")
    plain = one.astype({"recipe": str, "replicate": str})
    assert_rel(fit.predict(plain), fit.fitted[[200]], 1e-12, "plain strings")


def test_re_form_errors():
    fit = reference_fit("sleep_slope", "REML")
    nd = pd.DataFrame({"Days": [1.0], "Subject": ["308"]})
    with pytest.raises(FormulaError, match="Batch"):
        fit.predict(nd, re_form="~(1|Batch)")
    with pytest.raises(FormulaError, match="re_form"):
        fit.predict(nd, re_form=3)
    fit2 = reference_fit("sleep_int", "REML")
    with pytest.raises(FormulaError, match="Days"):
        fit2.predict(nd, re_form="~(0 + Days | Subject)")


def test_missing_column_is_an_error():
    fit = reference_fit("sleep_slope", "REML")
    with pytest.raises(DataError, match="Days"):
        fit.predict(pd.DataFrame({"Subject": ["308"]}))
    with pytest.raises(DataError, match="Subject"):
        fit.predict(pd.DataFrame({"Days": [1.0]}))


def test_factor_valued_random_slope_subset():
    fit = _fit("extra:sleep_factor_slope", "Reaction ~ phase + (1 + phase | Subject)", None)
    nd = pd.DataFrame({"phase": ["early", "late"], "Subject": ["308", "308"]})
    full = fit.predict(nd)
    intercept = fit.predict(nd, re_form="~(1|Subject)")
    b = fit.ranef()["Subject"].loc["308"]
    pop = fit.predict(nd, re_form="NA")
    assert_rel(intercept - pop, [b["(Intercept)"]] * 2, 1e-10, "intercepts")
    assert_rel(full - pop, [b["(Intercept)"], b["(Intercept)"] + b["phaselate"]], 1e-10, "all")


# ------------------------------------------------- standard errors (eq. 90)
def test_se_fit_is_dense_x_vcov_xt():
    fit = reference_fit("sleep_slope", "REML")
    new = pd.DataFrame({"Days": np.arange(10.0)}, index=list("abcdefghij"))
    got = fit.predict(new, re_form="~0", se_fit=True)
    assert list(got.columns) == ["fit", "se.fit"] and list(got.index) == list("abcdefghij")
    x = np.column_stack([np.ones(10), np.arange(10.0)])
    dense = x @ fit.vcov.to_numpy() @ x.T
    np.testing.assert_allclose(got["se.fit"], np.sqrt(np.diag(dense)), rtol=1e-12)
    np.testing.assert_allclose(got["fit"], fit.predict(new, re_form="~0"), rtol=1e-12)
    # at Days = 0 the prediction is the intercept: its SE is the intercept's
    se = fit.coef_table()["Std. Error"]
    assert got["se.fit"].iloc[0] == pytest.approx(se["(Intercept)"], rel=1e-12)


def test_se_fit_on_fit_rows_and_factor_design():
    fit = _fit("cake", "angle ~ recipe * temperature + (1 | recipe:replicate)", None)
    got = fit.predict(re_form=np.nan, se_fit=True)
    dense = fit.x @ fit.vcov.to_numpy() @ fit.x.T
    np.testing.assert_allclose(got["se.fit"], np.sqrt(np.diag(dense)), rtol=1e-10)
    cells = pd.DataFrame({"recipe": ["C", "A"], "temperature": [225, 175]})
    one = fit.predict(cells, re_form="~0", se_fit=True)
    data = _data("cake")
    rows = fit.x[[np.flatnonzero((data["recipe"].astype(str) == r).to_numpy()
                                 & (data["temperature"].astype(str) == str(t)).to_numpy())[0]
                  for r, t in zip(cells["recipe"], cells["temperature"])]]
    np.testing.assert_allclose(one["se.fit"], np.sqrt(np.diag(rows @ fit.vcov.to_numpy()
                                                              @ rows.T)), rtol=1e-10)


def test_confidence_interval_is_wald_normal():
    fit = reference_fit("sleep_slope", "REML")
    new = pd.DataFrame({"Days": [0.0, 4.5, np.nan]})
    got = fit.predict(new, re_form="NA", se_fit=True, interval="confidence", level=0.9)
    assert list(got.columns) == ["fit", "se.fit", "lwr", "upr"]
    z = 1.6448536269514722
    np.testing.assert_allclose(got["upr"][:2], got["fit"][:2] + z * got["se.fit"][:2], rtol=1e-12)
    np.testing.assert_allclose(got["lwr"][:2], got["fit"][:2] - z * got["se.fit"][:2], rtol=1e-12)
    assert got.iloc[2].isna().all()                          # missing Days: NaN throughout
    only = fit.predict(new, re_form="~0", interval="confidence")
    assert list(only.columns) == ["fit", "lwr", "upr"]
    assert isinstance(fit.predict(new, re_form="~0"), np.ndarray)   # unchanged without se_fit


@pytest.mark.parametrize("kwargs,match", [
    (dict(se_fit=True), "re_form"),
    (dict(se_fit=True, re_form="~ (1 | Subject)"), "re_form"),
    (dict(re_form="~0", interval="prediction"), "interval"),
    (dict(re_form="~0", se_fit=True, level=1.5), "level"),
    (dict(re_form="~0", se_fit="yes"), "se_fit"),
])
def test_se_fit_bad_arguments(kwargs, match):
    fit = reference_fit("sleep_slope", "REML")
    with pytest.raises(DataError, match=match):
        fit.predict(pd.DataFrame({"Days": [1.0], "Subject": ["308"]}), **kwargs)
