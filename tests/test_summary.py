"""The lme4-style printed summary: layout, and the printed numbers against lme4's."""

from __future__ import annotations

import re
import warnings
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import lmmfast
from conftest import extra_fit, reference, reference_fit
from lmmfast.summary import (CORRELATION_MAX, SINGULAR_MESSAGE, abbreviate, format_numbers,
                             format_quantiles, format_summary, lme4_formula, scaled_residuals)

# every reference model but InstEval (73421 rows: slow, and nothing new to print)
MODELS = ["sleep_slope", "sleep_zerocorr", "sleep_int", "dyestuff", "dyestuff2",
          "penicillin", "pastes", "cake"]
CASES = [(model, kind) for model in MODELS for kind in ("REML", "ML")]


def lme4(model: str, kind: str) -> dict:
    return reference()["models"][model]["fits"][kind]


@lru_cache(maxsize=None)
def summary_of(model: str, kind: str) -> str:
    return format_summary(reference_fit(model, kind))


# --------------------------------------------------------------------------
# reading the printed text back


def section(text: str, title: str) -> list[str]:
    """The lines after the line ``title`` up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def columns(header: str, line: str) -> list[str]:
    """Cells of a left-aligned table row, cut at the header's column starts.

    The last column (``Corr`` in the random-effects table) keeps the rest of
    the line.
    """
    starts = [m.start() for m in re.finditer(r"\S+", header)] + [None]
    return [line[a:b].strip() for a, b in zip(starts[:-1], starts[1:])]


# lme4's default fits stop short of the optimum by up to ~1e-4 in theta (relative;
# its tight refits show it, and lmmfast's criterion is lower), so variances, standard
# deviations, standard errors and t values can differ from lme4's in the 4th digit.
FIT_RTOL = 2e-4


def assert_printed(text: str, expected: float, what: str, rtol: float = 1e-9) -> None:
    """``text`` is ``expected`` at the decimals ``text`` shows, to ``rtol`` of the fit."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    tolerance = 0.5 * 10.0 ** -decimals * (1 + 1e-9) + rtol * abs(expected)
    assert abs(float(text) - expected) <= tolerance, f"{what}: printed {text}, lme4 {expected!r}"


def random_effects(text: str) -> tuple[str, list[list[str]]]:
    lines = section(text, "Random effects:")
    header, rows = lines[0], lines[1:]
    assert rows[-1].startswith("Number of obs:")
    return header, [columns(header, r) for r in rows[:-1]]


# --------------------------------------------------------------------------
# layout


SLEEP_SLOPE_REML = """\
Linear mixed model fit by REML ['lmerMod']
Formula: Reaction ~ 1 + Days + (1 + Days | Subject)
   Data: sleepstudy

REML criterion at convergence: 1743.6

Scaled residuals:
    Min      1Q  Median      3Q     Max
-3.9536 -0.4634  0.0231  0.4634  5.1793

Random effects:
 Groups   Name        Variance Std.Dev. Corr
 Subject  (Intercept) 612.09   24.740
          Days         35.07    5.922   0.07
 Residual             654.94   25.592
Number of obs: 180, groups:  Subject, 18

Fixed effects:
            Estimate Std. Error t value
(Intercept)  251.405      6.825  36.838
Days          10.467      1.546   6.771

Correlation of Fixed Effects:
     (Intr)
Days -0.138"""


def test_sleep_slope_reml_reads_as_lme4():
    """lme4 1.1-31's print(summary(fit)), trailing blanks dropped.

    Except the intercept's variance: lme4's default fit stops 1.5e-9 short of the
    optimum and prints 612.10 / 24.741; at the optimum (lme4's tightly converged
    refit: variance 612.0897) it reads 612.09 / 24.740, as here.
    """
    assert summary_of("sleep_slope", "REML") == SLEEP_SLOPE_REML


def test_summary_method_and_str_use_format_summary():
    fit = lmmfast.lmer("Yield ~ 1 + (1 | Batch)", lmmfast.datasets.load("Dyestuff"))
    assert fit.summary() == format_summary(fit) == str(fit)


def test_call_labels_data_weights_offset():
    data = lmmfast.datasets.load("sleepstudy")
    data["w"] = np.linspace(0.5, 2.0, len(data))
    data["off"] = np.linspace(0.0, 1.0, len(data))
    fit = lmmfast.lmer("Reaction ~ Days + (1 | Subject)", data, weights="w", offset="off")
    head = format_summary(fit, call={"data": "sleep", "weights": "w", "offset": "off"})
    assert head.splitlines()[1:5] == ["Formula: Reaction ~ Days + (1 | Subject)",
                                      "   Data: sleep", "Weights: w", " Offset: off"]
    unnamed = format_summary(fit).splitlines()
    assert unnamed[2:5] == ["   Data: sleepstudy", "Weights: supplied", " Offset: supplied"]


# --------------------------------------------------------------------------
# the printed numbers against lme4's


@pytest.mark.parametrize("model, kind", CASES)
def test_title_and_criterion(model, kind):
    text = summary_of(model, kind)
    ref = lme4(model, kind)
    lines = text.splitlines()
    method = "REML" if kind == "REML" else "maximum likelihood"
    assert lines[0] == f"Linear mixed model fit by {method} ['lmerMod']"
    assert lines[1] == f"Formula: {lme4_formula(ref['formula'])}"
    if kind == "REML":
        (line,) = [x for x in lines if x.startswith("REML criterion at convergence:")]
        assert_printed(line.split(":")[1].strip(), ref["objective"], "REML criterion")
        assert "logLik" not in text
    else:
        i = next(i for i, x in enumerate(lines) if x.split() == ["AIC", "BIC", "logLik",
                                                                   "deviance", "df.resid"])
        values = lines[i + 1].split()
        for text_value, key in zip(values, ["AIC", "BIC", "logLik", "objective"]):
            assert_printed(text_value, ref[key], key)
        assert values[4] == str(ref["nobs"] - ref["df"])
        assert "REML criterion" not in text


@pytest.mark.parametrize("model, kind", CASES)
def test_random_effects_table(model, kind):
    text = summary_of(model, kind)
    ref = lme4(model, kind)
    header, rows = random_effects(text)
    assert header.split()[:4] == ["Groups", "Name", "Variance", "Std.Dev."]
    variance_rows = [r for r in ref["varcorr"] if r["var2"] is None]
    assert len(rows) == len(variance_rows)
    group = None
    for row, r in zip(rows, variance_rows):
        if r["grp"] != group:
            assert row[0] == r["grp"], "Groups is shown on a term's first row"
            group = r["grp"]
        else:
            assert row[0] == ""
        assert row[1] == (r["var1"] or "")
        assert_printed(row[2], r["vcov"], f"variance {r['grp']} {r['var1']}", FIT_RTOL)
        assert_printed(row[3], r["sdcor"], f"std. dev. {r['grp']} {r['var1']}", FIT_RTOL)
    names = [(r["grp"], r["var1"]) for r in variance_rows]
    for r in (r for r in ref["varcorr"] if r["var2"] is not None):
        row = rows[names.index((r["grp"], r["var2"]))]
        column = [n for g, n in names if g == r["grp"]].index(r["var1"])
        assert_printed(row[4].split()[column], r["sdcor"],
                       f"correlation {r['var1']}:{r['var2']}", FIT_RTOL)
    has_corr = any(r["var2"] is not None for r in ref["varcorr"])
    assert ("Corr" in header.split()) == has_corr


@pytest.mark.parametrize("model, kind", CASES)
def test_number_of_obs_and_groups(model, kind):
    ref = lme4(model, kind)
    groups = "; ".join(f"{g}, {n}" for g, n in ref["ngrps"].items())
    assert f"\nNumber of obs: {ref['nobs']}, groups:  {groups}\n" in summary_of(model, kind)


@pytest.mark.parametrize("model, kind", CASES)
def test_fixed_effects_table(model, kind):
    ref = lme4(model, kind)["fixef"]
    lines = section(summary_of(model, kind), "Fixed effects:")
    p = len(ref["names"])
    lines, notes = lines[:p + 1], lines[p + 1:]
    if p == 1 and lme4(model, kind)["is_singular"]:   # lme4's notes follow, no blank line
        assert notes == ["optimizer (quasi-newton) convergence code: 0 (OK)", SINGULAR_MESSAGE]
    else:
        assert notes == []
    assert lines[0].split() == ["Estimate", "Std.", "Error", "t", "value"]
    assert [line.split()[0] for line in lines[1:]] == ref["names"]
    for line, name, est, se in zip(lines[1:], ref["names"], ref["estimate"], ref["se"]):
        est_text, se_text, t_text = line.split()[1:]
        assert_printed(est_text, est, f"estimate {name}")
        assert_printed(se_text, se, f"std. error {name}", FIT_RTOL)
        assert_printed(t_text, est / se, f"t value {name}", FIT_RTOL)


@pytest.mark.parametrize("model, kind", CASES)
def test_fixed_effects_correlation(model, kind):
    ref = lme4(model, kind)
    text = summary_of(model, kind)
    names = ref["fixef"]["names"]
    if len(names) == 1:
        assert "Correlation of Fixed Effects" not in text
        return
    vcov = np.array(ref["vcov_fixef"], dtype=float)
    sd = np.sqrt(np.diag(vcov))
    corr = vcov / np.outer(sd, sd)
    lines = section(text, "Correlation of Fixed Effects:")
    assert lines[0].split() == abbreviate(names, 6)[:-1]
    assert len(lines) == len(names)
    for i, line in enumerate(lines[1:], start=1):
        label, *values = line.split()
        assert label == abbreviate(names, 11)[i]
        assert len(values) == i
        for j, value in enumerate(values):
            assert_printed(value, corr[i, j], f"correlation {names[i]}:{names[j]}", FIT_RTOL)


@pytest.mark.parametrize("model, kind", CASES)
def test_singular_fit_line(model, kind):
    text = summary_of(model, kind)
    assert ("boundary (singular) fit" in text) == lme4(model, kind)["is_singular"]


def test_dyestuff2_singular():
    """lme4 ends a singular fit's summary with its optimizer's code and its message."""
    text = summary_of("dyestuff2", "REML")
    assert lme4("dyestuff2", "REML")["convergence"]["lme4_messages"] == [SINGULAR_MESSAGE]
    assert text.splitlines()[-3:] == ["(Intercept)   5.6656     0.6784   8.352",
                                      "optimizer (quasi-newton) convergence code: 0 (OK)",
                                      SINGULAR_MESSAGE]
    _, rows = random_effects(text)
    assert rows[0][:4] == ["Batch", "(Intercept)", "0.00", "0.000"]


def test_zerocorr_has_two_subject_rows():
    _, rows = random_effects(summary_of("sleep_zerocorr", "REML"))
    assert [r[:2] for r in rows] == [["Subject", "(Intercept)"], ["Subject.1", "Days"],
                                     ["Residual", ""]]
    assert all(len(r) == 4 for r in rows), "no correlation column"


def test_ml_summary_sleep_slope():
    lines = summary_of("sleep_slope", "ML").splitlines()
    assert lines[0] == "Linear mixed model fit by maximum likelihood ['lmerMod']"
    assert lines[1:3] == ["Formula: Reaction ~ 1 + Days + (1 + Days | Subject)",
                          "   Data: sleepstudy"]
    assert lines[4:6] == ["     AIC      BIC   logLik deviance df.resid",
                          "  1763.9   1783.1   -876.0   1751.9      174"]


def test_cake_fixed_effects_labels():
    text = summary_of("cake", "ML")
    lines = section(text, "Correlation of Fixed Effects:")
    assert lines[0] == "            (Intr) recipB recipC temp   rcpB:t"
    assert [line.split()[0] for line in lines[1:]] == [
        "recipeB", "recipeC", "temp", "recipeB:tmp", "recipeC:tmp"]


# --------------------------------------------------------------------------
# features shown on a stand-in fit (attributes as LinearMixedModel's)


def varcorr_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])


def stand_in(p: int = 2, **changes) -> SimpleNamespace:
    """A fitted-model stand-in: one random intercept, ``p`` fixed effects."""
    names = ["(Intercept)"] + [f"x{i}" for i in range(1, p)]
    rng = np.random.default_rng(1)
    a = rng.normal(size=(p, p))
    vcov = a @ a.T + p * np.eye(p)
    fit = SimpleNamespace(
        formula="y ~ x + (1 | g)", reml=True, nobs=100, response="y",
        objective=200.0, loglik=-100.0, aic=210.0, bic=220.0, deviance=200.0,
        df_params=p + 2, theta=pd.Series([1.0], index=["g.(Intercept)"]),
        fixef=pd.Series(np.arange(1.0, p + 1), index=names),
        stderr=pd.Series(np.sqrt(np.diag(vcov)), index=names),
        vcov=pd.DataFrame(vcov, index=names, columns=names), sigma=2.0,
        varcorr=varcorr_frame([("g", "(Intercept)", None, 4.0, 2.0),
                               ("Residual", None, None, 4.0, 2.0)]),
        ngrps={"g": 10}, residuals=np.linspace(-4.0, 4.0, 100), fitted=np.zeros(100),
        is_singular=False, n_evals=20, converged=True, optimizer_message="FTOL_REACHED",
        n_dropped=0, dropped_columns=[], weights=None, offset=None)
    for key, value in changes.items():
        setattr(fit, key, value)
    fit.has_weights = fit.weights is not None
    fit.has_offset = fit.offset is not None
    fit.residual_quantiles = lambda: np.quantile(scaled_residuals(fit), [0, 0.25, 0.5, 0.75, 1])
    return fit


def test_scaled_residuals_use_prior_weights():
    weights = np.full(100, 4.0)
    fit = stand_in(weights=weights)
    np.testing.assert_allclose(scaled_residuals(fit), fit.residuals * 2.0 / fit.sigma)
    lines = section(format_summary(fit), "Scaled residuals:")
    assert [float(v) for v in lines[1].split()] == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_three_by_three_correlations_lower_triangle():
    rows = [("g", "a", None, 4.0, 2.0), ("g", "b", None, 1.0, 1.0), ("g", "c", None, 9.0, 3.0),
            ("g", "a", "b", 1.0, 0.5), ("g", "a", "c", -1.5, -0.25), ("g", "b", "c", 0.3, 0.1),
            ("Residual", None, None, 4.0, 2.0)]
    header, table = random_effects(format_summary(stand_in(varcorr=varcorr_frame(rows))))
    assert header.split() == ["Groups", "Name", "Variance", "Std.Dev.", "Corr"]
    assert [r[4].split() for r in table] == [[], ["0.50"], ["-0.25", "0.10"], []]
    assert [r[:2] for r in table] == [["g", "a"], ["", "b"], ["", "c"], ["Residual", ""]]


def test_missing_rows_dropped_columns_and_convergence():
    fit = stand_in(n_dropped=3, dropped_columns=["x2"], converged=False,
                   optimizer_message="MAXEVAL_REACHED", is_singular=True)
    text = format_summary(fit)
    lines = text.splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("Number of obs:"))
    assert lines[i + 1] == "  (3 observations deleted due to missingness)"
    assert "fixed-effect model matrix is rank deficient so dropping 1 column / coefficient (x2)" \
        in text
    assert "optimizer did not converge: MAXEVAL_REACHED after 20 evaluations" in text
    assert "boundary (singular) fit" in text


def test_no_correlation_block_for_one_or_many_fixed_effects():
    assert "Correlation" not in format_summary(stand_in(p=1))
    text = format_summary(stand_in(p=CORRELATION_MAX + 1))
    assert "Correlation of Fixed Effects:" not in text
    assert f"p = {CORRELATION_MAX + 1} > {CORRELATION_MAX}" in text
    assert "Correlation of Fixed Effects:" in format_summary(stand_in(p=CORRELATION_MAX))


def test_no_fixed_effects():
    empty = pd.Series([], dtype=float)
    fit = stand_in(p=1, fixef=empty, stderr=empty, vcov=pd.DataFrame())
    assert "No fixed effect coefficients" in format_summary(fit)


# --------------------------------------------------------------------------
# R's formatting rules


@pytest.mark.parametrize("values, digits, nsmall, expected", [
    ([612.1001580, 35.0717145, 654.9400083], 4, 0, ["612.10", " 35.07", "654.94"]),
    ([24.740658, 5.922138, 25.591796], 4, 0, ["24.741", " 5.922", "25.592"]),
    ([0.0, 13.80631], 4, 0, [" 0.00", "13.81"]),
    ([8.4336659, 1.6573109, 0.6779999], 4, 0, ["8.434", "1.657", "0.678"]),
    ([1e-10, 600.0], 4, 0, ["1e-10", "6e+02"]),
    ([1763.9, 1783.1, -876.0, 1751.9, 174.0], 7, 0,
     ["1763.9", "1783.1", "-876.0", "1751.9", " 174.0"]),
    ([1.0, 0.07], 7, 2, ["1.00", "0.07"]),
    ([1.0, -0.138], 7, 3, [" 1.000", "-0.138"]),
    ([9996.0], 3, 0, ["9996"]),
    ([float("nan"), 1.5], 4, 0, ["NaN", "1.5"]),
])
def test_format_numbers_as_r(values, digits, nsmall, expected):
    assert format_numbers(values, digits, nsmall) == expected


@pytest.mark.parametrize("names, minlength, expected", [
    (["(Intercept)", "Days"], 6, ["(Intr)", "Days"]),
    (["(Intercept)", "recipeB:temp"], 11, ["(Intercept)", "recipeB:tmp"]),
    (["recipeB", "recipeC:temp", "temp"], 6, ["recipB", "rcpC:t", "temp"]),
    (["abcd", "abce"], 2, ["abcd", "abce"]),
])
def test_abbreviate_as_r(names, minlength, expected):
    assert abbreviate(names, minlength) == expected


# --------------------------------------------------------------------------
# lines an lme4 user compares with R's


# print(summary(fm2), digits = 3, corr = FALSE) for fm2 <- lmer(Reaction ~ Days +
# (Days || Subject), sleepstudy), from lme4's example output (docs/reference/lmer.html
# of the lme4 repository), trailing blanks dropped; the fixture's formula has "1 + Days".
ZEROCORR_DIGITS_3 = """\
Linear mixed model fit by REML ['lmerMod']
Formula: Reaction ~ 1 + Days + ((1 | Subject) + (0 + Days | Subject))
   Data: sleepstudy

REML criterion at convergence: 1743.7

Scaled residuals:
   Min     1Q Median     3Q    Max
-3.963 -0.463  0.020  0.465  5.186

Random effects:
 Groups    Name        Variance Std.Dev.
 Subject   (Intercept) 627.6    25.05
 Subject.1 Days         35.9     5.99
 Residual              653.6    25.57
Number of obs: 180, groups:  Subject, 18

Fixed effects:
            Estimate Std. Error t value
(Intercept)   251.41       6.89   36.51
Days           10.47       1.56    6.71"""


def test_zerocorr_digits_3_reads_as_lme4():
    text = format_summary(reference_fit("sleep_zerocorr", "REML"), digits=3)
    assert text.split("\n\nCorrelation of Fixed Effects:")[0] == ZEROCORR_DIGITS_3


@pytest.mark.parametrize("formula, expected", [
    # lme4's printed formula (lmer.html above)
    ("Reaction ~ Days + (Days || Subject)",
     "Reaction ~ Days + ((1 | Subject) + (0 + Days | Subject))"),
    # expandDoubleVerts: "1" if the term has an intercept, then "0 + x" per term label,
    # inside the term's own parentheses; the grouping as written (deparsed)
    ("y ~ x + (1 + x + z || g) + (1 | h)",
     "y ~ x + ((1 | g) + (0 + x | g) + (0 + z | g)) + (1 | h)"),
    ("y ~ x + (0 + x || g)", "y ~ x + ((0 + x | g))"),
    ("y ~ x + (x || a / b)", "y ~ x + ((1 | a/b) + (0 + x | a/b))"),
    ("y ~ x + (1 + x | g)", "y ~ x + (1 + x | g)"),
])
def test_double_bar_printed_expanded(formula, expected):
    assert lme4_formula(formula) == expected


@pytest.mark.parametrize("values, digits, expected", [
    # lme4's .prt.resids(residuals(fm1), digits = 4) and (fmM, digits = 2) for the
    # sleepstudy slope model by REML and ML (docs/reference/utilities.html of lme4)
    ("sleep_slope REML", 4, ["     Min       1Q   Median       3Q      Max",
                             "-101.179  -11.859    0.592   11.859  132.547"]),
    ("sleep_slope ML", 2, ["   Min     1Q Median     3Q    Max",
                           "-100.9  -11.9    0.7   11.9  132.5"]),
    # print(summary(fm1)): lme4's documented sleepstudy output
    ("sleep_slope REML scaled", 4, ["    Min      1Q  Median      3Q     Max",
                                    "-3.9536 -0.4634  0.0231  0.4634  5.1793"]),
])
def test_residual_quantiles_as_lme4_prints_them(values, digits, expected):
    model, kind, *scaled = values.split()
    fit = reference_fit(model, kind)
    resid = scaled_residuals(fit) if scaled else fit.residuals
    assert format_quantiles(resid, digits) == expected


def test_residual_quantiles_keep_five_decimals_below_3_16():
    """R's zapsmall(q, 5) keeps round(5 - log10(max|q|)) decimals: 5 for a largest
    quantile of 2.68, so the median -0.09485 shows 4 significant digits and every
    quantile gets 5 decimals (not 4, as rounding by ceiling(log10) would give)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmmfast.errors.LmmWarning)
        fit = extra_fit("cake_nointercept", "ML")
    lines = section(format_summary(fit), "Scaled residuals:")
    assert lines[1] == "-2.45178 -0.59687 -0.09485  0.60696  2.67971"
    assert format_quantiles([-2.4517815, -0.5968, 0.0123, 0.61, 3.2])[1] == \
        "-2.4518 -0.5968  0.0123  0.6100  3.2000"


def test_zero_correlation_prints_without_sign():
    """R prints round(-1e-17, 3), a negative zero, as 0.000 (and 0.00 for a
    random-effects correlation)."""
    fit = stand_in(p=2)
    vcov = fit.vcov.copy()
    vcov.iloc[0, 1] = vcov.iloc[1, 0] = -1e-17
    rows = [("g", "a", None, 4.0, 2.0), ("g", "b", None, 1.0, 1.0),
            ("g", "a", "b", -0.002, -0.001), ("Residual", None, None, 4.0, 2.0)]
    text = format_summary(stand_in(p=2, vcov=vcov, varcorr=varcorr_frame(rows)))
    assert section(text, "Correlation of Fixed Effects:")[1].split() == ["x1", "0.000"]
    _, table = random_effects(text)
    assert table[1][4] == "0.00"
    assert format_numbers([-0.0, 1.0], 7, 3) == ["0.000", "1.000"]


def test_data_line_names_a_bundled_dataset():
    data = lmmfast.datasets.load("sleepstudy")
    fit = lmmfast.lmer("Reaction ~ Days + (1 | Subject)", data)
    assert format_summary(fit).splitlines()[2] == "   Data: sleepstudy"
    assert data.attrs == {"name": "sleepstudy"}, "the input frame is not modified"
    plain = pd.DataFrame({c: data[c] for c in data.columns})
    assert plain.attrs == {}
    lines = format_summary(lmmfast.lmer("Reaction ~ Days + (1 | Subject)", plain)).splitlines()
    assert not any(line.startswith("   Data:") for line in lines), "no name, no Data line"
    named = format_summary(fit, call={"data": "my_sleep.csv"}).splitlines()
    assert named[2] == "   Data: my_sleep.csv"


def test_singular_fit_warns_at_fit_time_as_lme4_messages():
    data = lmmfast.datasets.load("Dyestuff2")
    with pytest.warns(lmmfast.errors.LmmWarning, match=re.escape(SINGULAR_MESSAGE)):
        fit = lmmfast.lmer("Yield ~ 1 + (1 | Batch)", data)
    assert fit.is_singular
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lmmfast.lmer("Yield ~ 1 + (1 | Batch)", lmmfast.datasets.load("Dyestuff"))


@pytest.mark.parametrize("formula", ["Reaction ~ Days + (Days | Subject)",
                                     "Reaction ~ Days + (Days || Subject)"])
def test_varcorr_missing_values_are_nan(formula):
    """R's NA in var1/var2 is NaN, whether or not a term has correlations, and
    the name columns share grp's dtype."""
    vc = lmmfast.lmer(formula, lmmfast.datasets.load("sleepstudy")).varcorr
    assert vc["var1"].dtype == vc["var2"].dtype == vc["grp"].dtype
    for column in ("var1", "var2"):
        missing = [v for v in vc[column] if not isinstance(v, str)]
        assert missing and all(isinstance(v, float) and np.isnan(v) for v in missing)
    assert vc["var2"].isna().tolist() == [True, True, True] if "||" in formula else \
        vc["var2"].isna().tolist() == [True, True, False, True]


def test_docstring_examples():
    import doctest
    import lmmfast.summary
    assert doctest.testmod(lmmfast.summary).failed == 0
