"""glmer's results surface against lme4: the printed summary, residuals,
overdispersion, predictions and likelihood-ratio tests.

R's numbers: tests/fixtures/glmm/glmer_results.json, made by
tests/fixtures/make_lme4_glmer_results.R (lme4 1.1-31 with a converged PIRLS
and optimiser, so it reports the optimum of the exact Laplace or quadrature
deviance that lmmfast computes).
"""

import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast import datasets
from lmmfast.errors import DataError, FormulaError

REF = json.loads((Path(__file__).parent / "fixtures" / "glmm" / "glmer_results.json")
                 .read_text(encoding="utf-8"))
MODELS = sorted(REF["models"])


@cache
def fitted(name: str):
    m = REF["models"][name]
    return lmmfast.glmer(m["formula"], datasets.load(m["dataset"]),
                         family=(m["family"], m["link"]), nAGQ=m["nAGQ"],
                         weights=m.get("weights"), offset=m.get("offset"))


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def _last_unit(token: str) -> float:
    mantissa = token.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(token.lower().split("e")[1]) if "e" in token.lower() else 0
    return 10.0 ** (exponent - decimals)


# lme4's standard errors come from central differences at a step of 1e-4,
# whose PIRLS noise moves VerbAgg's by up to 7e-4 relative (lmmfast's match
# lme4's own deviance differenced at 1e-3: tests/test_glmer.py, se_fd3); a
# p-value moves by about |z| dz, 3e-2 relative at z = 8: VerbAgg's summary
# lines are compared with numbers to 5e-2 relative.
SUMMARY_RTOL = {"verb_main": 5e-2}


def same_but_last_digit(a: str, b: str, rtol: float = 0.0) -> bool:
    """Lines equal in layout whose numbers differ by at most one unit in their
    last printed digit (a value at the rounding boundary: the fits agree to
    1e-4 relative, not to the last bit), or by ``rtol`` relative."""
    if len(a) != len(b):
        return False
    ta, tb = a.split(), b.split()
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x == y:
            continue
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if abs(fx - fy) > max(1.000001 * _last_unit(y), rtol * abs(fy)):
            return False
    return True


@pytest.mark.parametrize("name", MODELS)
def test_fit_is_lme4s_converged_fit(name):
    m, fit = REF["models"][name], fitted(name)
    assert fit.objective <= m["minus2loglik"] * (1 + 1e-8)
    assert fit.objective == pytest.approx(m["minus2loglik"], rel=1e-8)
    np.testing.assert_allclose(fit.theta, m["theta"], rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(fit.beta, list(m["fixef"].values()), rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_summary_reads_as_lme4(name):
    """print(fit) and fit.summary() are R's print(summary(fit)), line for line."""
    fit = fitted(name)
    ours, theirs = lines(fit.summary()), lines(REF["models"][name]["summary"])
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a == b or same_but_last_digit(a, b, SUMMARY_RTOL.get(name, 0.0)), (a, b)
    assert str(fit) == fit.summary() == repr(fit)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["deviance", "pearson", "response", "working"])
def test_residuals(name, kind):
    fit = fitted(name)
    r = REF["models"][name]["residuals"][kind]
    got = fit.residuals(kind)
    assert got.shape == (len(r),)
    np.testing.assert_allclose(got, r, rtol=1e-4, atol=2e-5 * np.max(np.abs(r)))


def test_residuals_default_deviance_and_conditional_deviance():
    fit = fitted("cbpp_laplace")
    np.testing.assert_array_equal(fit.residuals(), fit.residuals("deviance"))
    assert np.sum(fit.residuals() ** 2) == pytest.approx(fit.conditional_deviance, rel=1e-12)
    with pytest.raises(DataError, match="type"):
        fit.residuals("partial")


@pytest.mark.parametrize("name", MODELS)
def test_fitted_and_overdispersion(name):
    m, fit = REF["models"][name], fitted(name)
    np.testing.assert_allclose(fit.fitted, m["fitted"], rtol=1e-4, atol=1e-7)
    od = fit.overdispersion()
    assert list(od.index) == ["chisq", "ratio", "rdf", "p"]
    assert od["rdf"] == m["overdispersion"]["rdf"]
    for key in ("chisq", "ratio"):
        assert od[key] == pytest.approx(m["overdispersion"][key], rel=1e-5)
    assert od["p"] == pytest.approx(m["overdispersion"]["p"], rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_predict_fit_rows(name):
    m, fit = REF["models"][name], fitted(name)
    np.testing.assert_allclose(fit.predict(), m["predict_link"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fit.predict(type="response", re_form="~0"),
                               m["predict_response_fixed"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fit.predict(type="response"), fit.fitted, rtol=1e-12)
    np.testing.assert_allclose(fit.predict(re_form=np.nan), fit.predict(re_form="~0"))


def _newdata(name: str) -> pd.DataFrame:
    return pd.DataFrame(REF["predict"][name]["newdata"])


@pytest.mark.parametrize("name,model", [("cbpp_laplace", "cbpp_laplace"),
                                        ("epil_slope", "epil_slope")])
def test_predict_newdata(name, model):
    ref, fit = REF["predict"][name], fitted(model)
    new = _newdata(name)
    before = new.copy()
    cases = {"link": dict(allow_new_levels=True),
             "response": dict(type="response", allow_new_levels=True),
             "link_fixed": dict(re_form="~0"),
             "response_fixed": dict(type="response", re_form=None if False else "NA")}
    for key, kwargs in cases.items():
        np.testing.assert_allclose(fit.predict(new, **kwargs), ref[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    pd.testing.assert_frame_equal(new, before)


def test_predict_newdata_some_terms():
    """re_form naming the intercepts of a (1 + V4 | subject) term uses them alone."""
    ref, fit = REF["predict"]["epil_slope"], fitted("epil_slope")
    got = fit.predict(_newdata("epil_slope"), re_form="~ (1 | subject)", allow_new_levels=True)
    np.testing.assert_allclose(got, ref["link_intercepts"], rtol=1e-4, atol=1e-6)


def test_predict_newdata_offset_column():
    """A model fitted with offset="lage" adds newdata's lage, as the LMM's predict
    does; lme4 1.1-31 leaves the offset= argument out on newdata, so its
    predictions are lmmfast's minus newdata's lage."""
    ref, fit = REF["predict"]["epil_offset"], fitted("epil_offset")
    new = _newdata("epil_offset")
    lage = new["lage"].to_numpy()
    np.testing.assert_allclose(fit.predict(new, allow_new_levels=True),
                               np.add(ref["link"], lage), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fit.predict(new, re_form="~0", type="response"),
                               np.multiply(ref["response_fixed"], np.exp(lage)), rtol=1e-4)
    np.testing.assert_allclose(fit.predict(new, re_form="~0", offset=0.0, type="response"),
                               ref["response_fixed"], rtol=1e-4)
    np.testing.assert_allclose(fit.predict(re_form="~0"),
                               fit.x @ fit.beta + datasets.load("epil")["lage"].to_numpy(),
                               rtol=1e-12)


def test_predict_new_level_needs_allow_new_levels():
    fit = fitted("cbpp_laplace")
    new = _newdata("cbpp_laplace")
    with pytest.raises(DataError, match="herd.*'99'"):
        fit.predict(new)
    with pytest.raises(DataError, match="period.*'7'"):
        fit.predict(pd.DataFrame({"period": ["7"], "herd": ["1"]}), re_form="~0")
    with pytest.raises(DataError, match="type"):
        fit.predict(type="probability")
    with pytest.raises(FormulaError):
        fit.predict(re_form="~ (1 | nosuch)")


def test_predict_offset_in_formula_on_newdata():
    """offset(...) terms of the formula are evaluated on newdata."""
    epil = datasets.load("epil")
    fit = lmmfast.glmer("y ~ lbase * trt + V4 + offset(lage) + (1 | subject)", epil,
                        family="poisson")
    np.testing.assert_allclose(fit.predict(epil.iloc[:10]), fit.predict()[:10], rtol=1e-10)
    shifted = epil.iloc[:10].assign(lage=epil["lage"].iloc[:10] + 1.0)
    np.testing.assert_allclose(fit.predict(shifted), fit.predict()[:10] + 1.0, rtol=1e-10)


@pytest.mark.parametrize("which,names", [("cbpp", ["cbpp_null", "cbpp_laplace"]),
                                         ("epil", ["epil_small", "epil_int", "epil_slope"])])
def test_anova_lrt_as_lme4(which, names):
    ref = REF["anova"][which]
    table = lmmfast.anova(*[fitted(n) for n in reversed(names)], names=list(reversed(names)))
    assert list(table.columns) == list(ref["columns"])
    assert list(table.index) == names   # sorted by npar
    for col, values in ref["columns"].items():
        exp = np.array([np.nan if v is None else v for v in values], dtype=float)
        got = table[col].to_numpy(dtype=float)
        assert np.array_equal(np.isnan(got), np.isnan(exp)), col
        ok = ~np.isnan(exp)
        np.testing.assert_allclose(got[ok], exp[ok], rtol=1e-5, atol=1e-8, err_msg=col)


def test_anova_refuses_mixed_or_different_data():
    sleep = datasets.load("sleepstudy")
    lmm = lmmfast.lmer("Reaction ~ Days + (1 | Subject)", sleep)
    with pytest.raises(DataError, match="lmer.*glmer|glmer.*lmer"):
        lmmfast.anova(lmm, fitted("cbpp_laplace"))
    with pytest.raises(DataError, match="same size|different"):
        lmmfast.anova(fitted("cbpp_laplace"), fitted("epil_int"))
    with pytest.raises(DataError, match="famil"):
        lmmfast.anova(fitted("cbpp_laplace"), fitted("cbpp_probit"))
    with pytest.raises(DataError, match="nAGQ"):
        lmmfast.anova(fitted("cbpp_null"), fitted("cbpp_agq25"))


def test_public_names():
    assert {"glmer", "GeneralizedLinearMixedModel"} <= set(lmmfast.__all__)
    assert lmmfast.glmer is lmmfast.glmm.glmer
    assert isinstance(fitted("cbpp_laplace"), lmmfast.GeneralizedLinearMixedModel)


def test_unfitted_model_prints_and_refuses_results():
    model = lmmfast.GeneralizedLinearMixedModel(REF["models"]["cbpp_laplace"]["formula"],
                                                datasets.load("cbpp"), family="binomial")
    assert "not fitted" in str(model)
    with pytest.raises(lmmfast.FitError, match="not fitted"):
        model.summary()
    with pytest.raises(lmmfast.FitError, match="not fitted"):
        model.residuals()


def test_singular_fit_warns_and_keeps_hessian_vcov():
    """A variance at 0: lme4's message as a warning, and the standard errors from
    the Hessian of the deviance as lme4 (R: 0.2325 for the intercept)."""
    m = REF["models"]["cbpp_singular"]
    with pytest.warns(lmmfast.errors.LmmWarning, match="singular"):
        fit = lmmfast.glmer(m["formula"], datasets.load("cbpp"), family="binomial")
    assert fit.is_singular and fit.theta[1] == 0.0
    assert fit.summary().endswith("boundary (singular) fit: see help('isSingular')")
    assert fit.stderr.iloc[0] == pytest.approx(0.23247, abs=5e-5)


def test_long_formula_wraps_as_r_deparse():
    from lmmfast.summary import formula_lines
    text = fitted("cbpp_singular").summary()
    assert "Formula: cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 |\n" \
           "    period)\n" in text
    assert formula_lines("y ~ x") == ["y ~ x"]
