"""R's formula habits: arithmetic responses, R functions, R names, ordered factors,
and the data frames users have (dict, polars, pyarrow)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.errors import DataError, FormulaError, LmmWarning
from lmmfast.formula import parse_formula

from conftest import assert_rel, extra_reference, load_extra_data, reference

SLEEP_INT = "Reaction ~ Days + (1 | Subject)"


def _fit(formula, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        return lmmfast.lmer(formula, data, **kw)


def _same_fit(a, b, rtol=1e-10):
    assert_rel(a.objective, b.objective, rtol, "objective")
    assert_rel(a.fixef, b.fixef, 1e-7, "fixef", floor=1e-8)
    assert_rel(a.theta, b.theta, 1e-6, "theta", floor=1e-6)


def _lme4_sleep_int():
    return reference()["models"]["sleep_int"]["fits"]["REML"]


# ------------------------------------------------------------- the response
def test_response_arithmetic_is_evaluated(sleepstudy):
    """lme4: Reaction - 200 ~ Days + (1 | Subject) has intercept 51.405 (251.405 - 200)."""
    ref = _lme4_sleep_int()
    fit = _fit("Reaction - 200 ~ Days + (1 | Subject)", sleepstudy)
    want = np.array(ref["fixef"]["estimate"]) - [200.0, 0.0]
    assert_rel(fit.fixef, want, 1e-6, "fixef")
    assert_rel(fit.objective, ref["objective"], 1e-9, "objective")
    assert fit.response == "Reaction - 200"
    assert "Reaction - 200" in fit.summary()
    plus = _fit("Reaction + 1 ~ Days + (1 | Subject)", sleepstudy)
    assert_rel(plus.fixef, np.array(ref["fixef"]["estimate"]) + [1.0, 0.0], 1e-6, "+ 1")


@pytest.mark.parametrize("lhs,values", [
    ("log(Reaction)", lambda d: np.log(d.Reaction)),
    ("Reaction^2/1000", lambda d: d.Reaction ** 2 / 1000),
    ("sqrt(Reaction) * 2", lambda d: np.sqrt(d.Reaction) * 2),
    ("(Reaction - 250) / 10", lambda d: (d.Reaction - 250) / 10),
])
def test_response_expression_equals_precomputed_column(sleepstudy, lhs, values):
    fit = _fit(f"{lhs} ~ Days + (1 | Subject)", sleepstudy)
    plain = _fit("y ~ Days + (1 | Subject)", sleepstudy.assign(y=values(sleepstudy)))
    _same_fit(fit, plain)
    assert fit.response == lhs


def test_response_ratio_of_two_columns():
    """cbpp's incidence/size (a proportion), as R evaluates it."""
    cbpp = lmmfast.datasets.load("cbpp")
    fit = _fit("incidence/size ~ period + (1 | herd)", cbpp)
    plain = _fit("p ~ period + (1 | herd)", cbpp.assign(p=cbpp["incidence"] / cbpp["size"]))
    _same_fit(fit, plain)


def test_response_of_factor_is_an_error(sleepstudy):
    with pytest.raises(DataError, match="Subject"):
        _fit("Subject ~ Days + (1 | Days)", sleepstudy)


# ---------------------------------------------------------- R's functions
@pytest.mark.parametrize("term,name,values", [
    ("sqrt(Days)", "sqrt(Days)", np.sqrt),
    ("abs(Days - 4)", "abs(Days - 4)", lambda x: np.abs(x - 4)),
    ("log1p(Days)", "log1p(Days)", np.log1p),
    ("exp(Days/10)", "exp(Days/10)", lambda x: np.exp(x / 10)),
    ("log(Days + 1)", "log(Days + 1)", lambda x: np.log(x + 1)),
    ("as.numeric(Days)", "as.numeric(Days)", lambda x: x),
    ("I(Days^2)", "I(Days^2)", lambda x: x ** 2),
])
def test_r_functions_in_fixed_part(sleepstudy, term, name, values):
    fit = _fit(f"Reaction ~ {term} + (1 | Subject)", sleepstudy)
    assert fit.fixef_names == ["(Intercept)", name]
    plain = _fit("Reaction ~ v + (1 | Subject)", sleepstudy.assign(v=values(sleepstudy.Days)))
    _same_fit(fit, plain)


def test_r_functions_in_random_term(sleepstudy):
    fit = _fit("Reaction ~ Days + (sqrt(Days) | Subject)", sleepstudy)
    assert fit.remats[0].cnames == ["(Intercept)", "sqrt(Days)"]
    plain = _fit("Reaction ~ Days + (v | Subject)", sleepstudy.assign(v=np.sqrt(sleepstudy.Days)))
    _same_fit(fit, plain, rtol=1e-8)


def test_factor_of_numeric_column(sleepstudy):
    """factor(Days): R's levels 0..9, columns factor(Days)1 ... factor(Days)9."""
    fit = _fit("Reaction ~ factor(Days) + (1 | Subject)", sleepstudy)
    assert fit.fixef_names == ["(Intercept)"] + [f"factor(Days){k}" for k in range(1, 10)]
    plain = _fit("Reaction ~ d + (1 | Subject)",
                 sleepstudy.assign(d=pd.Categorical(sleepstudy.Days.astype(int))))
    _same_fit(fit, plain)


def test_as_numeric_of_factor_gives_level_numbers():
    """R's as.numeric(f) is the level number 1..k."""
    cake = lmmfast.datasets.load("cake")
    fit = _fit("angle ~ as.numeric(recipe) + (1 | replicate)", cake)
    plain = _fit("angle ~ r + (1 | replicate)",
                 cake.assign(r=cake.recipe.cat.codes.astype(float) + 1))
    _same_fit(fit, plain)


def test_scale_uses_sample_sd(sleepstudy):
    """scale(x): centred, divided by R's sd (n - 1)."""
    fit = _fit("Reaction ~ scale(Days) + (1 | Subject)", sleepstudy)
    assert fit.fixef_names == ["(Intercept)", "scale(Days)"]
    days = sleepstudy.Days
    plain = _fit("Reaction ~ z + (1 | Subject)",
                 sleepstudy.assign(z=(days - days.mean()) / days.std(ddof=1)))
    _same_fit(fit, plain)
    assert_rel(fit.x[:, 1], ((days - days.mean()) / days.std(ddof=1)).to_numpy(), 1e-12, "x")


def _r_poly(x, degree):
    """R's poly(x, degree): the powers of x - mean(x) orthogonalised in order (QR),
    each column with a positive leading coefficient and unit length."""
    v = np.vander(x - x.mean(), degree + 1, increasing=True)
    q, r = np.linalg.qr(v)
    return (q * np.sign(np.diag(r)))[:, 1:]


def test_poly_is_r_orthogonal_polynomial(sleepstudy):
    fit = _fit("Reaction ~ poly(Days, 2) + (1 | Subject)", sleepstudy)
    assert fit.fixef_names == ["(Intercept)", "poly(Days, 2)1", "poly(Days, 2)2"]
    np.testing.assert_allclose(fit.x[:, 1:], _r_poly(sleepstudy.Days.to_numpy(), 2),
                               rtol=0, atol=1e-13)
    # the same column space as Days + Days^2: the same fit
    raw = _fit("Reaction ~ Days + I(Days^2) + (1 | Subject)", sleepstudy)
    assert_rel(fit.objective - 2 * np.linalg.slogdet(
        np.linalg.lstsq(raw.x, fit.x, rcond=None)[0])[1], raw.objective, 1e-10, "REML")
    assert_rel(fit.fitted, raw.fitted, 1e-9, "fitted")


def test_offset_terms_in_formula(sleepstudy):
    """offset(expr) terms are summed with offset=, as lme4; no column in X."""
    fit = _fit("Reaction ~ Days + offset(Days) + (1 | Subject)", sleepstudy)
    assert fit.fixef_names == ["(Intercept)", "Days"]
    _same_fit(fit, _fit(SLEEP_INT, sleepstudy, offset="Days"))
    extra = np.linspace(-1, 1, len(sleepstudy))
    two = _fit("Reaction ~ Days + offset(Days) + offset(log(Days + 1)) + (1 | Subject)",
               sleepstudy, offset=extra)
    _same_fit(two, _fit(SLEEP_INT, sleepstudy,
                        offset=sleepstudy.Days + np.log(sleepstudy.Days + 1) + extra))
    parsed = parse_formula("y ~ x + offset(log(n)) + (1 | g)")
    assert parsed.fixed == "x" and parsed.offsets == ("log(n)",)
    with pytest.raises(FormulaError, match="offset"):
        parse_formula("y ~ x - offset(n) + (1 | g)")


def test_offset_term_with_missing_value_drops_row(sleepstudy):
    data = sleepstudy.assign(o=sleepstudy.Days.astype(float))
    data.loc[5, "o"] = np.nan
    fit = _fit("Reaction ~ Days + offset(o) + (1 | Subject)", data)
    assert fit.nobs == 179


# ------------------------------------------------------- predict, transforms
@pytest.mark.parametrize("formula", [
    "Reaction ~ scale(Days) + (1 | Subject)",
    "Reaction ~ poly(Days, 2) + (1 | Subject)",
    "Reaction ~ sqrt(Days) + factor(Days) + (1 | Subject)",
    "Reaction ~ Days + (scale(Days) | Subject)",
    "Reaction ~ Days + offset(Days) + (1 | Subject)",
    "log(Reaction) ~ as.numeric(Days) + (1 | Subject)",
])
def test_predict_reuses_the_fits_transforms(sleepstudy, formula):
    """One row of newdata is predicted with the fit's centre, scale and polynomial
    coefficients (recomputed on one row they would be NaN or different)."""
    fit = _fit(formula, sleepstudy)
    for rows in ([7], [3, 100, 179], list(range(0, 180, 11))):
        got = fit.predict(sleepstudy.iloc[rows])
        assert_rel(got, fit.fitted[rows], 1e-11, formula)


def test_predict_with_offset_term_on_new_values(sleepstudy):
    fit = _fit("Reaction ~ Days + offset(Days) + (1 | Subject)", sleepstudy)
    nd = sleepstudy.iloc[[0, 15]].assign(Days=[20.0, 30.0])
    beta = fit.fixef.to_numpy()
    want = beta[0] + beta[1] * nd.Days + nd.Days + fit.ranef()["Subject"].loc[
        nd.Subject.astype(str), "(Intercept)"].to_numpy()
    assert_rel(fit.predict(nd), want.to_numpy(), 1e-12, "offset on newdata")


def test_predict_factor_of_unseen_value_is_an_error(sleepstudy):
    fit = _fit("Reaction ~ factor(Days) + (1 | Subject)", sleepstudy)
    nd = pd.DataFrame({"Days": [3, 12], "Subject": ["308", "308"]})
    with pytest.raises(lmmfast.LmmError, match=r"factor\(\).*'12' not among the fit's levels"):
        fit.predict(nd)
    assert_rel(fit.predict(nd.iloc[:1]), fit.fitted[[3]], 1e-12, "seen level")


def test_predict_on_polars_and_dict_newdata(sleepstudy):
    pl = pytest.importorskip("polars")
    fit = _fit(SLEEP_INT, sleepstudy)
    assert_rel(fit.predict(pl.from_pandas(sleepstudy.iloc[:5])), fit.fitted[:5], 1e-12, "polars")
    with pytest.raises(DataError, match="different lengths"):
        fit.predict({"Days": [1.0, 2.0], "Subject": ["308"]})


# ------------------------------------------------------------------- names
def test_dotted_names_unquoted(sleepstudy):
    dotted = sleepstudy.rename(columns={"Days": "my.x", "Subject": "my.g", "Reaction": "my.y"})
    fit = _fit("my.y ~ my.x + I(my.x^2) + (my.x | my.g)", dotted)
    assert fit.fixef_names == ["(Intercept)", "my.x", "I(my.x^2)"]
    assert fit.remats[0].group == "my.g"
    _same_fit(fit, _fit("Reaction ~ Days + I(Days^2) + (Days | Subject)", sleepstudy))
    assert_rel(fit.predict(dotted.iloc[:4]), fit.fitted[:4], 1e-11, "predict")


@pytest.mark.parametrize("formula", [
    "Reaction ~ `my x` + (`my x` | `sujet é`)",
    "Reaction ~ Q('my x') + (Q('my x') | Q('sujet é'))",
    'Reaction ~ Q("my x") + (1 + Q("my x") | `sujet é`)',
])
def test_quoted_names_everywhere(sleepstudy, formula):
    data = sleepstudy.rename(columns={"Days": "my x", "Subject": "sujet é"})
    fit = _fit(formula, data)
    assert fit.fixef_names == ["(Intercept)", "my x"]
    assert fit.remats[0].group == "sujet é"
    _same_fit(fit, _fit("Reaction ~ Days + (Days | Subject)", sleepstudy))


def test_non_ascii_names_in_random_terms(sleepstudy):
    data = sleepstudy.rename(columns={"Days": "jóur", "Subject": "sujeté"})
    fit = _fit("Reaction ~ jóur + (jóur | sujeté)", data)
    assert fit.remats[0].group == "sujeté" and fit.remats[0].cnames == ["(Intercept)", "jóur"]
    _same_fit(fit, _fit("Reaction ~ Days + (Days | Subject)", sleepstudy))


def test_formula_errors_have_no_colour_codes(sleepstudy):
    for formula in ("Reaction ~ Days * + (1 | Subject)", "Reaction ~ Days + {Days + (1 | Subject)"):
        with pytest.raises(FormulaError) as info:
            _fit(formula, sleepstudy)
        assert "\x1b" not in str(info.value)


# ----------------------------------------------------------- ordered factors
def _contr_poly(k):
    """R's contr.poly(k): orthonormal polynomials of 1..k (QR of the Vandermonde matrix)."""
    return _r_poly(np.arange(1.0, k + 1), k - 1)


def test_contr_poly_reference_values():
    """R: contr.poly(4) is (-3,-1,1,3)/sqrt(20), (1,-1,-1,1)/2, (-1,3,-3,1)/sqrt(20)."""
    want = np.column_stack([np.array([-3, -1, 1, 3]) / np.sqrt(20), [0.5, -0.5, -0.5, 0.5],
                            np.array([-1, 3, -3, 1]) / np.sqrt(20)])
    np.testing.assert_allclose(_contr_poly(4), want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("k", [3, 4, 6])
def test_ordered_factor_gets_polynomial_contrasts(k):
    rng = np.random.default_rng(k)
    levels = [f"L{i}" for i in range(k)]
    g = np.repeat(np.arange(8), 3 * k)
    f = np.tile(np.arange(k), 24)
    data = pd.DataFrame({"y": rng.normal(size=len(g)) + f, "g": g,
                         "f": pd.Categorical.from_codes(f, levels, ordered=True)})
    fit = _fit("y ~ f + (1 | g)", data)
    suffix = [".L", ".Q", ".C"] + [f"^{d}" for d in range(4, k)]
    assert fit.fixef_names == ["(Intercept)"] + ["f" + s for s in suffix[:k - 1]]
    np.testing.assert_allclose(fit.x[:k, 1:], _contr_poly(k), rtol=0, atol=1e-13)
    # no intercept: one indicator column per level, as R
    full = _fit("y ~ 0 + f + (1 | g)", data)
    assert full.fixef_names == [f"f{lv}" for lv in levels]


def test_bundled_cake_temperature_is_ordered():
    cake = lmmfast.datasets.load("cake")
    assert cake.temperature.cat.ordered
    fit = _fit("angle ~ recipe * temperature + (1 | recipe:replicate)", cake)
    assert fit.fixef_names[3:8] == ["temperature.L", "temperature.Q", "temperature.C",
                                    "temperature^4", "temperature^5"]
    assert "recipeB:temperature.L" in fit.fixef_names


@pytest.mark.parametrize("kind", ["REML", "ML"])
def test_ordered_cake_matches_lme4(kind):
    """lme4's cake_interaction fit (temperature unordered, treatment contrasts) and
    the same model with temperature ordered: the same theta, fitted values and ML
    criterion; the REML criterion moves by log det(T)^2, and beta = T^-1 beta_lme4,
    for X_poly = X_treatment T."""
    ref = extra_reference()["models"]["cake_interaction"]["fits"][kind]
    data = load_extra_data("cake_interaction")
    data["temperature"] = data["temperature"].cat.as_ordered()
    fit = _fit("angle ~ recipe * temperature + (1 | replicate)", data, reml=(kind == "REML"))
    assert "temperature.L" in fit.fixef_names and "recipeC:temperature^5" in fit.fixef_names
    treat = _fit("angle ~ recipe * temperature + (1 | replicate)",
                 data.assign(temperature=data.temperature.cat.as_unordered()),
                 reml=(kind == "REML"))
    assert treat.fixef_names == ref["fixef"]["names"]
    t = np.linalg.lstsq(treat.x, fit.x, rcond=None)[0]
    np.testing.assert_allclose(treat.x @ t, fit.x, rtol=0, atol=1e-12)   # X_poly = X_treatment T
    shift = 2 * np.linalg.slogdet(t)[1] if kind == "REML" else 0.0
    assert_rel(fit.objective, ref["objective"] + shift, 1e-10, "objective")
    assert_rel(fit.theta, ref["theta"], 1e-5, "theta")
    assert_rel(fit.fixef, np.linalg.solve(t, ref["fixef"]["estimate"]), 1e-7, "fixef",
               floor=1e-6)
    assert_rel(fit.fitted[:10], ref["fitted_head"], 1e-8, "fitted")
    nd = data.iloc[[0, 100, 269]]
    assert_rel(fit.predict(nd), fit.fitted[[0, 100, 269]], 1e-11, "predict")


def test_ordered_factor_in_random_term_predicts():
    cake = lmmfast.datasets.load("cake")
    fit = _fit("angle ~ recipe + (temperature | replicate)", cake)
    assert fit.remats[0].cnames[1:3] == ["temperature.L", "temperature.Q"]
    assert_rel(fit.predict(cake.iloc[::9]), fit.fitted[::9], 1e-11, "predict")


def test_nullable_boolean_named_as_numpy_bool(sleepstudy):
    flag = np.where(sleepstudy.Days > 4, True, False)
    numpy_bool = _fit("Reaction ~ b + (1 | Subject)", sleepstudy.assign(b=flag))
    nullable = sleepstudy.assign(b=pd.array(flag, dtype="boolean"))
    nullable.loc[3, "b"] = pd.NA
    fit = _fit("Reaction ~ b + (1 | Subject)", nullable)
    assert fit.fixef_names == numpy_bool.fixef_names == ["(Intercept)", "bTRUE"]
    assert fit.nobs == 179


# ------------------------------------------------------------- data frames
def test_polars_frame_converts_only_used_columns(sleepstudy, monkeypatch):
    pl = pytest.importorskip("polars")
    data = sleepstudy.assign(w=np.linspace(0.5, 2, 180), junk=np.arange(180))
    ref = _fit("Reaction ~ Days + (Days | Subject)", data, weights="w")
    frame = pl.from_pandas(data)
    converted = []
    original = pl.DataFrame.to_pandas

    def spy(self, *args, **kw):
        converted.append(list(self.columns))
        return original(self, *args, **kw)

    monkeypatch.setattr(pl.DataFrame, "to_pandas", spy)
    fit = _fit("Reaction ~ Days + (Days | Subject)", frame, weights="w")
    _same_fit(fit, ref)
    assert converted and all(set(c) <= {"Reaction", "Days", "Subject", "w"} for c in converted)
    strings = frame.with_columns(pl.col("Subject").cast(pl.Utf8))
    _same_fit(_fit("Reaction ~ Days + (Days | Subject)", strings, weights="w"), ref)


def test_pyarrow_table(sleepstudy):
    pa = pytest.importorskip("pyarrow")
    ref = _fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    _same_fit(_fit("Reaction ~ Days + (Days | Subject)", pa.Table.from_pandas(sleepstudy)), ref)


def test_dict_of_columns(sleepstudy):
    ref = _fit(SLEEP_INT, sleepstudy)
    data = {c: sleepstudy[c].to_numpy() for c in sleepstudy}
    _same_fit(_fit(SLEEP_INT, data), ref)


def test_ragged_dict_is_an_error_naming_columns(sleepstudy):
    data = {"Reaction": sleepstudy.Reaction.to_numpy(), "Days": sleepstudy.Days.to_numpy()[:100],
            "Subject": sleepstudy.Subject.to_numpy()}
    with pytest.raises(DataError, match=r"different lengths.*'Days': 100"):
        _fit(SLEEP_INT, data)


@pytest.mark.parametrize("column,match", [
    ("when", r"'when'.*dates/times.*convert it.*days"),
    ("dur", r"'dur'.*time differences.*convert it.*Timedelta"),
])
def test_datetime_and_timedelta_predictors(sleepstudy, column, match):
    data = sleepstudy.assign(when=pd.Timestamp("2020-01-01") + pd.to_timedelta(sleepstudy.Days, "D"),
                             dur=pd.to_timedelta(sleepstudy.Days, "D"))
    before = data.copy()
    with pytest.raises(DataError, match=match):
        _fit(f"Reaction ~ {column} + (1 | Subject)", data)
    pd.testing.assert_frame_equal(data, before)
