"""Tests of the fixed effects against lmerTest and pbkrtest.

Satterthwaite's t tests against lmerTest for every fit of the reference suite
(REML and ML, InstEval included); Kenward-Roger's against pbkrtest for the REML
fits that have them; type III F tests, their hypothesis matrices and the t
tests of further models against ``fixtures/lmertest_extra.json`` (made by
``fixtures/make_lmertest_extra.R``).  Tolerance 1e-3 relative throughout.

lme4's default fits stop short of the optimum by up to ~1e-4 in theta, and a
p-value of 1e-18 moves by 1e-3 relative when t moves by 2e-6 relative.  So
the reference-suite tables are compared twice: evaluated at lme4's theta
(every column, the p-values included, to 1e-3), and at this library's own
optimum (estimates, standard errors, df and t to 1e-3; p-values to 1e-3
relative on their logarithm).
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import lmmfast
from conftest import FIXTURES, assert_rel, extra_reference, reference, reference_fit
from lmmfast.errors import LmmError
from lmmfast.fixed_tests import (InferenceError, anova_table, coef_table, normalize_ddf,
                                 type3_contrasts)
from lmmfast.kenward_roger import KenwardRogerError, kenward_roger, kr_test
from lmmfast.satterthwaite import combine_df, contrast_df, richardson, varpar_covariance
from lmmfast.summary import format_pvalues

RTOL = 1e-3

SUITE = [(m, k) for m in reference()["models"] for k in ("REML", "ML")]
SUITE_IDS = [f"{m}-{k}" for m, k in SUITE]
KR_SUITE = [m for m in reference()["models"]
            if reference()["models"][m]["fits"]["REML"].get("kenward_roger")]
T_COLUMNS = ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]


@lru_cache(maxsize=None)
def lmertest() -> dict:
    """lmerTest's and pbkrtest's tables of the models of make_lmertest_extra.R."""
    return json.loads((FIXTURES / "lmertest_extra.json").read_text())


EXTRA = [(m, k) for m in lmertest()["models"] for k in ("REML", "ML")]
EXTRA_KR = [m for m, spec in lmertest()["models"].items()
            if "coef_kenward_roger" in spec["fits"]["REML"]]
EXTRA_IDS = [f"{m}-{k}" for m, k in EXTRA]


def _extra_data(data_file: str) -> pd.DataFrame:
    spec = next(m for m in extra_reference()["models"].values() if m["data_file"] == data_file)
    factors = {c["name"]: c["levels"] for c in spec["columns"] if c["type"] == "factor"}
    df = pd.read_csv(FIXTURES / "extra_data" / data_file, dtype={n: str for n in factors})
    for name, levels in factors.items():
        df[name] = pd.Categorical(df[name], categories=levels)
    return df


@lru_cache(maxsize=None)
def extra_fit(model: str, kind: str) -> lmmfast.LinearMixedModel:
    spec = lmertest()["models"][model]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmmfast.errors.LmmWarning)
        return lmmfast.lmer(spec["formula"], _extra_data(spec["data_file"]),
                            reml=(kind == "REML"), weights=spec["weights_column"])


@lru_cache(maxsize=None)
def extra_at_theta(model: str, kind: str) -> lmmfast.LinearMixedModel:
    fit = extra_fit(model, kind).copy()
    fit._set_theta(np.array(lmertest()["models"][model]["fits"][kind]["theta"]))
    return fit


def assert_t_table(table: pd.DataFrame, ref: dict, what: str, log_p: bool = False) -> None:
    """A coefficient table against lmerTest's: names, estimates, se, df, t and p."""
    assert list(table.columns) == T_COLUMNS
    assert list(table.index) == ref["names"]
    for column, key in zip(T_COLUMNS[:4], ("estimate", "se", "df", "t")):
        assert_rel(table[column], ref[key], RTOL, f"{what}: {column}")
    p = table["Pr(>|t|)"].to_numpy()
    if log_p:
        assert_rel(np.log(p), np.log(ref["p"]), RTOL, f"{what}: log Pr(>|t|)")
    else:
        assert_rel(p, ref["p"], RTOL, f"{what}: Pr(>|t|)")


@lru_cache(maxsize=None)
def at_lme4_theta(model: str, kind: str) -> lmmfast.LinearMixedModel:
    """A copy of the reference fit moved to lme4's theta (beta and sigma follow from it)."""
    fit = reference_fit(model, kind).copy()
    fit._set_theta(np.array(reference()["models"][model]["fits"][kind]["theta"]))
    return fit


# --------------------------------------------------------------------------
# Satterthwaite


@pytest.mark.parametrize("model,kind", SUITE, ids=SUITE_IDS)
def test_satterthwaite_against_lmertest(model, kind):
    ref = reference()["models"][model]["fits"][kind]["satterthwaite"]
    assert_t_table(at_lme4_theta(model, kind).coef_table(ddf="satterthwaite"), ref,
                   f"{model} {kind} at lme4's theta")


@pytest.mark.parametrize("model,kind", SUITE, ids=SUITE_IDS)
def test_satterthwaite_at_own_optimum(model, kind):
    ref = reference()["models"][model]["fits"][kind]["satterthwaite"]
    assert_t_table(reference_fit(model, kind).coef_table(ddf="satterthwaite"), ref,
                   f"{model} {kind}", log_p=True)


@pytest.mark.parametrize("model,kind", EXTRA, ids=EXTRA_IDS)
def test_satterthwaite_more_models(model, kind):
    """Weights, factors, interactions, no intercept, I() terms, a dropped column."""
    ref = lmertest()["models"][model]["fits"][kind]["coef_satterthwaite"]
    assert_t_table(coef_table(extra_at_theta(model, kind), "satterthwaite"), ref,
                   f"{model} {kind} at lme4's theta")
    assert_t_table(coef_table(extra_fit(model, kind), "satterthwaite"), ref, f"{model} {kind}",
                   log_p=True)


def test_boundary_fit_uses_the_residual_df():
    """Dyestuff2's theta is 0: its direction adds nothing and df = n - p (REML) or n (ML)."""
    for kind, df in (("REML", 29), ("ML", 30)):
        fit = reference_fit("dyestuff2", kind)
        assert fit.theta.iloc[0] == 0
        assert abs(fit.coef_table("satterthwaite")["df"].iloc[0] - df) < 1e-6


def test_differentiation_leaves_the_fit_unchanged():
    fit = reference_fit("sleep_slope", "REML").copy()
    before = (fit._core.lxx(), fit._core.components(), fit.fixef.copy(), fit.vcov.copy())
    cov = varpar_covariance(fit)
    assert np.array_equal(fit._core.lxx(), before[0])
    assert fit._core.components() == before[1]
    pd.testing.assert_series_equal(fit.fixef, before[2])
    np.testing.assert_allclose(cov.vcov_beta, before[3].to_numpy(), rtol=1e-12)
    assert cov.varpar[-1] == fit.sigma and np.array_equal(cov.varpar[:-1], fit._theta)


def test_varpar_covariance_is_recomputed_after_a_refit():
    fit = reference_fit("sleep_int", "REML").copy()
    first = fit.coef_table("satterthwaite")
    assert varpar_covariance(fit) is varpar_covariance(fit)
    rng = np.random.default_rng(1)
    fit.refit(fit.y + rng.normal(scale=20.0, size=fit.nobs))
    second = fit.coef_table("satterthwaite")
    assert abs(second["df"].iloc[0] - first["df"].iloc[0]) > 1e-3


def test_hessian_of_sigma_and_jacobian_in_closed_form():
    """At the optimum H_sigma,sigma = 4 d / sigma^2 and dV/dsigma = 2 V / sigma (eqs. 28, 30)."""
    for kind, dof in (("REML", 178), ("ML", 180)):
        fit = reference_fit("sleep_slope", kind)
        cov = varpar_covariance(fit)
        assert_rel(cov.hessian[-1, -1], 4 * dof / fit.sigma ** 2, 1e-10, "H_sigma,sigma")
        assert_rel(cov.jacobian[-1], 2 * fit.vcov.to_numpy() / fit.sigma, 1e-10, "dV/dsigma")
        # the gradient of the deviance in theta vanishes at the optimum, so H is positive definite
        assert np.all(np.linalg.eigvalsh(cov.hessian) > 0)
        np.testing.assert_allclose(cov.vcov_varpar, 2 * np.linalg.inv(cov.hessian), rtol=1e-8)


def test_richardson_extrapolation():
    """Central differences of exp at 1 with steps 0.1 / 2^k, extrapolated, to 1e-12."""
    steps = [0.1 / 2 ** k for k in range(4)]
    first = [(np.exp(1 + h) - np.exp(1 - h)) / (2 * h) for h in steps]
    second = [(np.exp(1 + h) - 2 * np.e + np.exp(1 - h)) / h ** 2 for h in steps]
    assert abs(first[0] - np.e) > 1e-3
    assert abs(richardson(first) - np.e) < 1e-12
    assert abs(richardson(second) - np.e) < 1e-10


def test_combine_df_rules():
    assert combine_df([7.5]) == 7.5
    assert combine_df([10.0, 10.0 + 1e-9]) == pytest.approx(10.0)
    assert combine_df([10.0, 1.5]) == 2.0
    nu = np.array([10.0, 20.0])
    e = np.sum(nu / (nu - 2))
    assert combine_df(nu) == pytest.approx(2 * e / (e - 2))


def test_contrast_df_is_scale_invariant():
    fit = reference_fit("cake", "REML")
    cov = varpar_covariance(fit)
    l = np.array([0.0, 1.0, -1.0, 0.0, 0.5, 0.0])
    assert contrast_df(cov, 3.0 * l) == pytest.approx(contrast_df(cov, l), rel=1e-12)


# --------------------------------------------------------------------------
# Kenward-Roger


@pytest.mark.parametrize("model", KR_SUITE)
def test_kenward_roger_against_pbkrtest(model):
    ref = reference()["models"][model]["fits"]["REML"]["kenward_roger"]
    assert_t_table(at_lme4_theta(model, "REML").coef_table(ddf="kenward-roger"), ref,
                   f"{model} KR at lme4's theta")
    assert_t_table(reference_fit(model, "REML").coef_table(ddf="kenward-roger"), ref,
                   f"{model} KR", log_p=True)


@pytest.mark.parametrize("model", EXTRA_KR)
def test_kenward_roger_more_models(model):
    ref = lmertest()["models"][model]["fits"]["REML"]["coef_kenward_roger"]
    assert_t_table(coef_table(extra_at_theta(model, "REML"), "KR"), ref,
                   f"{model} KR at lme4's theta")
    assert_t_table(coef_table(extra_fit(model, "REML"), "KR"), ref, f"{model} KR", log_p=True)


def _dense_kenward_roger(fit) -> tuple[np.ndarray, float]:
    """Phi_A and the df of the last coefficient from n x n matrices, as pbkrtest computes them
    (eqs. 34-37), with the inverse prior weights as the residual's G."""
    n, p = fit.nobs, fit.p
    gs, start = [], 0
    z = np.zeros((n, sum(r.q for r in fit.remats)))
    for r in fit.remats:
        for a in range(r.k):
            z[np.arange(n), start + r.refs * r.k + a] = r.z[:, a]
        for b in range(r.k):
            for a in range(b, r.k):
                e = np.zeros((r.k, r.k))
                e[a, b] = e[b, a] = 1.0
                zt = z[:, start:start + r.q]
                gs.append(zt @ np.kron(np.eye(r.nlevels), e) @ zt.T)
        start += r.q
    w = fit.weights if fit.weights is not None else np.ones(n)
    gs.append(np.diag(1.0 / w))
    thetas = np.split(fit._theta, np.cumsum([r.n_theta for r in fit.remats])[:-1])
    gamma = []
    for r, t in zip(fit.remats, thetas):
        cov = fit.sigma ** 2 * r.lambda_(t) @ r.lambda_(t).T
        gamma += [cov[a, b] for b in range(r.k) for a in range(b, r.k)]
    gamma.append(fit.sigma ** 2)
    sigma = sum(g * m for g, m in zip(gamma, gs))
    si = np.linalg.inv(sigma)
    x = fit.x
    phi = np.linalg.inv(x.T @ si @ x)
    pm = [-x.T @ si @ g @ si @ x for g in gs]
    qm = [[x.T @ si @ gi @ si @ gj @ si @ x for gj in gs] for gi in gs]
    k = len(gs)
    info = np.array([[np.trace(si @ gs[i] @ si @ gs[j]) - 2 * np.trace(phi @ qm[i][j])
                      + np.trace(phi @ pm[i] @ phi @ pm[j]) for j in range(k)] for i in range(k)])
    wm = 2 * np.linalg.inv(info)
    u = sum(wm[i, j] * (qm[i][j] - pm[i] @ phi @ pm[j]) for i in range(k) for j in range(k))
    phi_a = phi + 2 * phi @ u @ phi
    l = np.zeros(p)
    l[-1] = 1.0
    theta = np.outer(l, l) / (l @ phi @ l)
    us = [theta @ phi @ m @ phi for m in pm]
    a1 = sum(wm[i, j] * np.trace(us[i]) * np.trace(us[j]) for i in range(k) for j in range(k))
    a2 = sum(wm[i, j] * np.trace(us[i] @ us[j]) for i in range(k) for j in range(k))
    b = (a1 + 6 * a2) / 2
    g = (2 * a1 - 5 * a2) / (3 * a2)
    c1, c2, c3 = g / (3 + 2 * (1 - g)), (1 - g) / (3 + 2 * (1 - g)), (3 - g) / (3 + 2 * (1 - g))
    rho = ((1 - a2) / (1 - c2 * b)) ** 2 * (1 + c1 * b) / (1 - c3 * b)
    return phi_a, 4 + 3 / (rho - 1)


@pytest.mark.parametrize("model", ["sleep_weights", "sleep_factor_slope", "penicillin_weights"])
def test_kenward_roger_reduction_against_dense_matrices(model):
    """The q x q reductions (eq. 38) give pbkrtest's n x n numbers, prior weights included."""
    fit = extra_fit(model, "REML")
    phi_a, df = _dense_kenward_roger(fit)
    kr = kenward_roger(fit)
    np.testing.assert_allclose(kr.phi_adj, phi_a, rtol=1e-8, atol=1e-12 * np.abs(phi_a).max())
    assert kr_test(kr, fit.fixef.to_numpy(), np.eye(fit.p)[-1])[3] == pytest.approx(df, rel=1e-8)


def test_kenward_roger_needs_reml():
    with pytest.raises(KenwardRogerError, match="REML"):
        coef_table(reference_fit("sleep_slope", "ML"), ddf="kenward-roger")
    assert issubclass(KenwardRogerError, LmmError)


def test_kenward_roger_refuses_large_models():
    with pytest.raises(KenwardRogerError, match=r"q = 4114 random effects.*3000"):
        reference_fit("insteval", "REML").coef_table(ddf="KR")


# --------------------------------------------------------------------------
# Wald tables


@pytest.mark.parametrize("model,kind", [c for c in SUITE if c[0] != "insteval"],
                         ids=[i for i in SUITE_IDS if not i.startswith("insteval")])
def test_wald_table(model, kind):
    fit = reference_fit(model, kind)
    ref = reference()["models"][model]["fits"][kind]["fixef"]
    table = fit.coef_table()
    assert list(table.columns) == ["Estimate", "Std. Error", "z value", "Pr(>|z|)"]
    assert list(table.index) == ref["names"]
    assert_rel(table["Estimate"], ref["estimate"], RTOL, "estimate")
    assert_rel(table["Std. Error"], ref["se"], RTOL, "se")
    z = table["Estimate"] / table["Std. Error"]
    assert_rel(table["z value"], z, 1e-14, "z")
    assert_rel(table["Pr(>|z|)"], 2 * stats.norm.sf(np.abs(z)), 1e-12, "p")
    assert_rel(table["z value"], np.array(ref["estimate"]) / np.array(ref["se"]), RTOL, "z")


# --------------------------------------------------------------------------
# F tests and type III hypotheses


def _anova_ref(model, kind, key):
    return lmertest()["models"][model]["fits"][kind].get(key)


ANOVA_COLUMNS = [("Sum Sq", "sum_sq"), ("Mean Sq", "mean_sq"), ("NumDF", "num_df"),
                 ("DenDF", "den_df"), ("F value", "f_value"), ("Pr(>F)", "p_value")]


def assert_anova(table: pd.DataFrame, ref: dict, what: str, log_p: bool = False) -> None:
    assert list(table.columns) == [c for c, _ in ANOVA_COLUMNS]
    assert list(table.index) == ref["terms"]
    for column, key in ANOVA_COLUMNS:
        expected = np.array([np.nan if v is None else v for v in ref[key]], dtype=float)
        ours = table[column].to_numpy(dtype=float)
        assert np.array_equal(np.isnan(ours), np.isnan(expected)), f"{what}: {column} missing"
        ok = ~np.isnan(expected)
        if log_p and column == "Pr(>F)":
            ours, expected = np.log(ours), np.log(expected)
        assert_rel(ours[ok], expected[ok], RTOL, f"{what}: {column}")


@pytest.mark.parametrize("model,kind", EXTRA, ids=EXTRA_IDS)
def test_type3_hypotheses(model, kind):
    fit = extra_fit(model, kind)
    ours = type3_contrasts(fit)
    ref = _anova_ref(model, kind, "anova_satterthwaite")["hypotheses"]
    ref = ref if isinstance(ref, dict) else {}
    assert list(ours) == list(ref)
    for term, h in ref.items():
        assert h["columns"] in ([], fit.fixef_names)
        expected = np.array(h["rows"], dtype=float).reshape(-1, fit.p)
        np.testing.assert_allclose(ours[term], expected, atol=1e-6, err_msg=term)


@pytest.mark.parametrize("model,kind", EXTRA, ids=EXTRA_IDS)
def test_anova_satterthwaite(model, kind):
    ref = _anova_ref(model, kind, "anova_satterthwaite")
    assert_anova(extra_at_theta(model, kind).anova(), ref, f"{model} {kind} at lme4's theta")
    assert_anova(extra_fit(model, kind).anova(), ref, f"{model} {kind}", log_p=True)


@pytest.mark.parametrize("model", EXTRA_KR)
def test_anova_kenward_roger(model):
    ref = _anova_ref(model, "REML", "anova_kenward_roger")
    assert_anova(anova_table(extra_at_theta(model, "REML"), ddf="Kenward-Roger"), ref,
                 f"{model} KR at lme4's theta")
    assert_anova(anova_table(extra_fit(model, "REML"), ddf="KR"), ref, f"{model} KR",
                 log_p=True)


def test_anova_of_the_reference_cake_fit():
    """The lme4 reference fit of cake gives lmerTest's table (same model, same data)."""
    assert_anova(reference_fit("cake", "REML").anova(),
                 _anova_ref("cake", "REML", "anova_satterthwaite"), "cake", log_p=True)


def test_one_row_f_test_is_the_squared_t_test():
    fit = extra_fit("sleep_days_phase", "REML")
    table = fit.anova()
    coefs = fit.coef_table("satterthwaite")
    assert table.loc["Days:phase", "NumDF"] == 1
    assert table.loc["Days:phase", "F value"] == pytest.approx(
        coefs.loc["Days:phaselate", "t value"] ** 2, rel=1e-10)
    assert table.loc["Days:phase", "DenDF"] == pytest.approx(
        coefs.loc["Days:phaselate", "df"], rel=1e-10)


def test_anova_needs_a_ddf_method():
    with pytest.raises(InferenceError, match="satterthwaite"):
        anova_table(reference_fit("cake", "REML"), ddf=None)


# --------------------------------------------------------------------------
# ddf names, summary


def test_ddf_names():
    fit = reference_fit("sleep_int", "REML")
    for name in ("satterthwaite", "Satterthwaite", " SATTERTHWAITE"):
        assert normalize_ddf(name) == "satterthwaite"
    for name in ("kenward-roger", "Kenward-Roger", "KR", "kr"):
        assert normalize_ddf(name) == "kenward-roger"
    pd.testing.assert_frame_equal(fit.coef_table("KR"), fit.coef_table("Kenward-Roger"))
    pd.testing.assert_frame_equal(fit.coef_table("Satterthwaite"),
                                  coef_table(fit, ddf="satterthwaite"))


@pytest.mark.parametrize("bad", ["satterthwait", "lme4", "", 3])
def test_unknown_ddf_is_an_error_naming_it(bad):
    fit = reference_fit("sleep_int", "REML")
    for call in (lambda: fit.coef_table(ddf=bad), lambda: fit.anova(ddf=bad),
                 lambda: fit.summary(ddf=bad)):
        with pytest.raises(InferenceError, match=repr(bad).replace("(", r"\(")) as info:
            call()
        assert isinstance(info.value, LmmError)


# lmerTest 3.1-3's printed tables (summary(fit) and summary(fit, ddf = "Kenward-Roger"))
SLEEP_SATTERTHWAITE = """\
Fixed effects:
            Estimate Std. Error      df t value Pr(>|t|)
(Intercept)  251.405      6.825  17.000  36.838  < 2e-16 ***
Days          10.467      1.546  17.000   6.771 3.26e-06 ***
---
Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1"""

DYESTUFF_SATTERTHWAITE = """\
Fixed effects:
            Estimate Std. Error      df t value Pr(>|t|)
(Intercept)  1527.50      19.38    5.00    78.8 6.23e-09 ***"""


def _block(text: str, title: str) -> str:
    return text.split(title, 1)[1].split("\n\n", 1)[0].join([title, ""])


def test_summary_with_satterthwaite_columns():
    fit = reference_fit("sleep_slope", "REML")
    text = fit.summary(ddf="satterthwaite")
    assert text.splitlines()[:2] == [
        "Linear mixed model fit by REML. t-tests use Satterthwaite's method [",
        "lmerModLmerTest]"]
    assert _block(text, "Fixed effects:") == SLEEP_SATTERTHWAITE
    assert _block(fit.summary(ddf="KR"), "Fixed effects:") == SLEEP_SATTERTHWAITE
    assert "Kenward-Roger's method" in fit.summary(ddf="KR").splitlines()[0]
    # Dyestuff's t value, 78.8045, sits on a rounding boundary of the printed
    # digits: lmerTest's 78.8 comes from lme4's theta, 3e-7 (relative) from the
    # optimum; so its row is compared by value at the printed precision
    dyes = _block(reference_fit("dyestuff", "REML").summary(ddf="satterthwaite"),
                  "Fixed effects:").splitlines()
    expected = DYESTUFF_SATTERTHWAITE.splitlines()
    assert dyes[:2] == expected[:2]
    got, want = dyes[2].split(), expected[2].split()
    assert got[0] == want[0] and got[-1] == want[-1] == "***"
    np.testing.assert_allclose([float(v) for v in got[1:-1]],
                               [float(v) for v in want[1:-1]], rtol=2e-3)
    assert fit.summary() == lmmfast.summary.format_summary(fit)
    assert "df" not in _block(fit.summary(), "Fixed effects:").splitlines()[1].split()


def test_summary_df_and_p_values_match_the_table():
    fit = reference_fit("cake", "REML")
    text = fit.summary(ddf="satterthwaite")
    lines = _block(text, "Fixed effects:").splitlines()
    assert lines[1].split() == ["Estimate", "Std.", "Error", "df", "t", "value", "Pr(>|t|)"]
    table = fit.coef_table("satterthwaite")
    for line, (name, row) in zip(lines[2:], table.iterrows()):
        cells = line.split()
        assert cells[0] == name
        assert abs(float(cells[3]) - row["df"]) <= 5e-7 * 1.01
        assert float(cells[5]) == pytest.approx(row["Pr(>|t|)"], rel=5e-3)
    assert lines[-1].startswith("Signif. codes:")
    assert "lmerModLmerTest" in fit.summary(ddf="satterthwaite").splitlines()[1]
    ml = reference_fit("sleep_slope", "ML").summary(ddf="satterthwaite")
    assert ml.splitlines()[:2] == [
        "Linear mixed model fit by maximum likelihood. t-tests use Satterthwaite's",
        "  method [lmerModLmerTest]"]


def test_format_pvalues_as_r():
    """R's format.pval(x, digits = 3) for these vectors."""
    cases = [([0.687, 1.339e-07, 1e-20], ["0.687", "1.34e-07", "< 2e-16"]),
             ([0.9088, 0.9592, 1e-20], ["0.909", "0.959", "<2e-16"]),
             ([0.00040268, 0.05, 3.2e-9], ["0.000403", "0.050000", "3.2e-09"]),
             ([1e-20], ["<2e-16"]),
             ([0.01234, np.nan, 0.000012], ["0.0123", "NA", "1.2e-05"])]
    for values, expected in cases:
        assert format_pvalues(values, 3) == expected
