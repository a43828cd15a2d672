"""Estimated marginal means and contrasts against R's emmeans (fixtures/posthoc_results.json).

The fixture holds ``emmeans(fit, specs, lmer.df = ..., at = ...)`` summaries
with confidence limits and tests, and ``contrast(em, method, adjust)`` for
REML lme4 fits.  Every column is compared at lme4's theta (recovered from
broom.mixed's variance parameters in the fixture): estimates, SEs and
confidence limits to 1e-6 relative, df and p-values (Tukey's from SciPy's
studentized range included) to 1e-4 relative.  At this library's own
optimum (a lower criterion than lme4's, up to ~1e-5 apart in the SEs) the
same columns agree to 1e-4, the p-values to 1e-3 relative on their
logarithm (as in test_fixed_tests.py).  The penicillin model has
no factor in its fixed part: its overall mean (``~ 1``) is lmerTest's test of
the intercept, which broom.mixed's ``tidy`` holds.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from conftest import assert_rel, posthoc, posthoc_fit, posthoc_fit_at_lme4
from scipy import stats

import lmmfast
from lmmfast.emmeans import EMMeans, contrast_coefficients
from lmmfast.errors import DataError, FitError, LmmError
from lmmfast.kenward_roger import kenward_roger, kr_test


CASES = [(m, i) for m, spec in posthoc()["models"].items() for i in range(len(spec["emmeans"]))]
CASE_IDS = [f"{m}-{posthoc()['models'][m]['emmeans'][i]['spec']['specs']}" for m, i in CASES]


own_fit, lme4_fit = posthoc_fit, posthoc_fit_at_lme4


def run(fit, spec: dict) -> tuple[EMMeans, pd.DataFrame]:
    em = fit.emmeans(spec["specs"], at=spec.get("at"), ddf=spec["df"])
    return em, em.contrast(method=spec["contrast"], adjust=spec["adjust"])


def assert_p(got, want, rtol: float, log: bool, what: str) -> None:
    """p-values to ``rtol`` relative, or on their logarithm with ``log``."""
    if log:
        assert_rel(np.log(np.asarray(got, dtype=np.float64)), np.log(want), rtol, what)
    else:
        assert_rel(got, want, rtol, what, floor=1e-12)


def compare(ours: pd.DataFrame, ref: dict, rtol: float, p_rtol: float, what: str,
            log_p: bool = False, df_rtol: float = 1e-4) -> None:
    assert list(ours.columns) == list(ref), f"{what}: columns {list(ours.columns)}"
    for col, want in ref.items():
        got = ours[col].to_numpy()
        if isinstance(want[0], str):
            assert [str(g) for g in got] == want, f"{what} {col}"
            continue
        if col == "p.value":
            assert_p(got, want, p_rtol, log_p, f"{what} {col}")
        else:
            tol = max(rtol, df_rtol) if col == "df" else rtol
            assert_rel(got, want, tol, f"{what} {col}", floor=1e-12)


@pytest.mark.parametrize("model, i", CASES, ids=CASE_IDS)
def test_emmeans_at_lme4_theta(model, i):
    entry = posthoc()["models"][model]["emmeans"][i]
    em, con = run(lme4_fit(model), entry["spec"])
    # df to 1e-6 here: Kenward-Roger's 17 and Satterthwaite's 16.99973 must differ
    compare(em.table, entry["emmeans"], 1e-6, 1e-4, f"{model} emmeans", df_rtol=1e-6)
    compare(con, entry["contrasts"], 1e-6, 1e-4, f"{model} contrasts", df_rtol=1e-6)


@pytest.mark.parametrize("model, i", CASES, ids=CASE_IDS)
def test_emmeans_at_own_optimum(model, i):
    entry = posthoc()["models"][model]["emmeans"][i]
    em, con = run(own_fit(model), entry["spec"])
    compare(em.table, entry["emmeans"], 1e-4, 1e-3, f"{model} emmeans", log_p=True)
    compare(con, entry["contrasts"], 1e-4, 1e-3, f"{model} contrasts", log_p=True)


def test_fixture_covers_the_three_models():
    assert set(posthoc()["models"]) == {"cake", "sleep_slope", "penicillin"}
    assert len(CASES) >= 3


@pytest.mark.parametrize("make", [lme4_fit, own_fit], ids=["lme4-theta", "own-optimum"])
def test_overall_mean_is_lmertest_intercept_test(make):
    tidy = posthoc()["models"]["penicillin"]["tidy"]
    table = make("penicillin").emmeans("~ 1", ddf="satterthwaite").table
    assert list(table.columns) == ["1", "emmean", "SE", "df", "lower.CL", "upper.CL",
                                   "t.ratio", "p.value"]
    assert table["1"].tolist() == ["overall"]
    rtol = 1e-6 if make is lme4_fit else 1e-4
    for ours, theirs in [("emmean", "estimate"), ("SE", "std.error"), ("t.ratio", "statistic"),
                         ("lower.CL", "conf.low"), ("upper.CL", "conf.high")]:
        assert_rel(table[ours], tidy[theirs][:1], rtol, ours)
    assert_rel(table["df"], tidy["df"][:1], 1e-4, "df")
    own = make is own_fit
    assert_p(table["p.value"], tidy["p.value"][:1], 1e-3 if own else 1e-4, own, "p")


# ------------------------------------------------------- behaviour beyond the fixture
@pytest.fixture(scope="module")
def cake():
    return own_fit("cake")


def test_by_argument_equals_bar_spec(cake):
    a = cake.emmeans("~ temperature | recipe", ddf="asymptotic").table
    b = cake.emmeans("temperature", by="recipe", ddf="asymptotic").table
    pd.testing.assert_frame_equal(a, b)


def test_asymptotic_uses_z_columns_and_normal_reference(cake):
    em = cake.emmeans("~ recipe", ddf="asymptotic")
    t = em.table
    assert list(t.columns) == ["recipe", "emmean", "SE", "df", "asymp.LCL", "asymp.UCL",
                               "z.ratio", "p.value"]
    assert np.isinf(t["df"]).all()
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(t["asymp.LCL"], t["emmean"] - z * t["SE"], rtol=1e-12)
    # the asymptotic SE of a mean is sqrt(l V l') with lme4's vcov
    l = em.linfct[0]
    assert t["SE"].iloc[0] == pytest.approx(np.sqrt(l @ cake.vcov.to_numpy() @ l), rel=1e-12)


def test_kenward_roger_uses_adjusted_covariance_and_df():
    data = lmmfast.datasets.load("cake").iloc[7:].reset_index(drop=True)   # unbalanced
    fit = lmmfast.lmer("angle ~ recipe + temp + (1 | replicate)", data)
    kr = kenward_roger(fit)
    assert np.abs(kr.phi_adj - kr.phi).max() > 1e-6 * np.abs(kr.phi).max()
    em = fit.emmeans("~ recipe")
    beta = fit.fixef.to_numpy()
    for l, se, df in zip(em.linfct, em.table["SE"], em.table["df"]):
        assert se == pytest.approx(np.sqrt(l @ kr.phi_adj @ l), rel=1e-12)
        assert df == pytest.approx(kr_test(kr, beta, l)[3], rel=1e-12)
    plain = fit.emmeans("~ recipe", ddf="asymptotic").table["SE"]
    assert np.abs(em.table["SE"] - plain).max() > 1e-6 * plain.max()


def test_means_average_cells_with_equal_weights(cake):
    cells = cake.emmeans("~ recipe * temperature", ddf="asymptotic").table
    assert list(cells.columns[:2]) == ["recipe", "temperature"]
    means = cake.emmeans("recipe", ddf="asymptotic").table
    np.testing.assert_allclose(means["emmean"],
                               cells.groupby("recipe", sort=False)["emmean"].mean(), rtol=1e-12)


def test_covariate_held_at_its_mean():
    fit = own_fit("sleep_slope")
    base = fit.emmeans("~ Days", at={"Days": [4.5]}, ddf="asymptotic").table
    data = lmmfast.datasets.load("sleepstudy")
    mean = fit.fixef["(Intercept)"] + fit.fixef["Days"] * data["Days"].mean()
    assert base["emmean"].iloc[0] == pytest.approx(mean, rel=1e-12)


def test_contrast_methods_and_labels():
    labels = ["A", "B", "C", "D"]
    c, names = contrast_coefficients("revpairwise", labels)
    assert names == ["B - A", "C - A", "C - B", "D - A", "D - B", "D - C"]
    c, names = contrast_coefficients("trt.vs.ctrl", labels)
    assert names == ["B - A", "C - A", "D - A"]
    c, names = contrast_coefficients("consec", labels)
    assert names == ["B - A", "C - B", "D - C"]
    c, names = contrast_coefficients("poly", labels)
    assert names == ["linear", "quadratic", "cubic"]
    np.testing.assert_array_equal(c, [[-3, -1, 1, 3], [1, -1, -1, 1], [-1, 3, -3, 1]])
    c, _ = contrast_coefficients("poly", list("abcdef"))
    np.testing.assert_array_equal(c[1], [5, -1, -4, -4, -1, 5])
    np.testing.assert_array_equal(c[4], [-1, 5, -10, 10, -5, 1])


def test_adjustments(cake):
    em = cake.emmeans("~ temperature", ddf="satterthwaite")
    none = em.contrast("pairwise", adjust="none")
    m = len(none)
    bonf = em.contrast("pairwise", adjust="bonferroni")
    np.testing.assert_allclose(bonf["p.value"], np.minimum(1, m * none["p.value"]), rtol=1e-12)
    sidak = em.contrast("pairwise", adjust="sidak")
    np.testing.assert_allclose(sidak["p.value"], 1 - (1 - none["p.value"]) ** m, rtol=1e-12)
    holm = em.contrast("pairwise", adjust="holm")
    p = np.sort(none["p.value"].to_numpy())
    expected = np.minimum(1, np.maximum.accumulate(p * (m - np.arange(m))))
    np.testing.assert_allclose(np.sort(holm["p.value"]), expected, rtol=1e-12)
    np.testing.assert_allclose(holm["lower.CL"], bonf["lower.CL"], rtol=1e-12)
    tukey = em.contrast("pairwise")
    assert (tukey["p.value"] >= none["p.value"]).all()
    rev = em.contrast("revpairwise", adjust="none")
    assert rev["contrast"].iloc[0] == "185 - 175"
    assert rev["estimate"].iloc[0] == pytest.approx(-none["estimate"].iloc[0], rel=1e-12)


def test_repr_prints_the_table(cake):
    em = cake.emmeans("~ recipe")
    text = repr(em)
    assert "emmean" in text and "lower.CL" in text and "A" in text
    assert len(em) == 3 and list(em["recipe"]) == ["A", "B", "C"]


@pytest.mark.parametrize("kwargs, error, words", [
    ({"specs": "~ flavour"}, DataError, ["'flavour'", "not a variable"]),
    ({"specs": "~ recipe", "by": "oven"}, DataError, ["'oven'"]),
    ({"specs": "~ recipe", "ddf": "exact"}, DataError, ["ddf", "'exact'"]),
    ({"specs": 3}, DataError, ["specs"]),
    ({"specs": "~ recipe | temperature", "by": "temperature"}, DataError, ["by="]),
    ({"specs": "~ recipe", "at": {"temperature": ["999"]}}, DataError, ["'999'", "temperature"]),
    ({"specs": "~ recipe", "at": [1]}, DataError, ["at must be"]),
    ({"specs": "~ recipe", "at": {"oven": 1}}, DataError, ["at names 'oven'"]),
    ({"specs": "~ recipe", "level": 1.5}, DataError, ["level"]),
])
def test_bad_emmeans_input(cake, kwargs, error, words):
    with pytest.raises(error) as info:
        cake.emmeans(**kwargs)
    assert isinstance(info.value, LmmError)
    for w in words:
        assert w in str(info.value)


def test_numeric_spec_needs_at():
    with pytest.raises(DataError, match=r"'Days' is a numeric variable.*at="):
        own_fit("sleep_slope").emmeans("~ Days")


@pytest.mark.parametrize("value", ["hot", [1.0, np.nan], np.inf])
def test_numeric_at_values_must_be_finite(value):
    with pytest.raises(DataError, match=r"numeric variable 'Days': give finite numbers"):
        own_fit("sleep_slope").emmeans("~ Days", at={"Days": value})


@pytest.mark.parametrize("method, adjust, words", [
    ("pairwise", "scheffe", ["adjust", "'scheffe'"]),
    ("helmert", "none", ["method", "'helmert'"]),
    ("consec", None, ["adjust="]),
    ("poly", "tukey", ["tukey", "'poly'"]),
])
def test_bad_contrast_input(cake, method, adjust, words):
    em = cake.emmeans("~ recipe", ddf="asymptotic")
    with pytest.raises(DataError) as info:
        em.contrast(method=method, adjust=adjust)
    for w in words:
        assert w in str(info.value)


def test_rank_deficient_fit_is_refused():
    data = lmmfast.datasets.load("cake").copy()
    data["recipe2"] = data["recipe"]
    with pytest.warns(lmmfast.errors.RankDeficiencyWarning):
        fit = lmmfast.lmer("angle ~ recipe + recipe2 + (1 | replicate)", data)
    with pytest.raises(FitError, match="rank-deficient"):
        fit.emmeans("~ recipe")


def test_input_data_unchanged(cake):
    before = lmmfast.datasets.load("cake")
    cake.emmeans("~ recipe", at={"temperature": ["175", "185"]}, ddf="asymptotic")
    pd.testing.assert_frame_equal(before, lmmfast.datasets.load("cake"))


def test_tukey_with_very_large_df_is_not_zero():
    """scipy's studentized range underflows to 0 in the far tail at df ~ 4e4; above
    25,000 df it is taken as infinite, as R's ptukey does: two means, so Tukey's p
    equals the two-sided normal p."""
    rng = np.random.default_rng(2)
    n = 40_000
    g = rng.integers(0, 50, n)
    f = rng.integers(0, 2, n)
    y = 0.07 * f + rng.normal(size=50)[g] + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "f": pd.Categorical(f), "g": pd.Categorical(g)})
    fit = lmmfast.lmer("y ~ f + (1 | g)", df)
    con = fit.emmeans("~ f", ddf="satterthwaite").contrast("pairwise", adjust="tukey")
    t = float(con["t.ratio"].iloc[0])
    assert float(con["df"].iloc[0]) > 25_000
    assert con["p.value"].iloc[0] > 0
    assert con["p.value"].iloc[0] == pytest.approx(2 * stats.norm.sf(abs(t)), rel=1e-6)
