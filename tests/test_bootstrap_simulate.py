"""Simulation from a fit and the parametric bootstrap.

Moments of simulated responses are checked against those implied by the fit
(eq. 1 at the estimates) within Monte Carlo error: with N simulated responses
a mean has standard error sqrt(v / N) and a variance has relative standard
error sqrt(2 / (N - 1)); each check allows 5 standard errors (per-observation
checks over 180 observations stay far from chance failures, and the seeds
are fixed).

Bootstrap percentile intervals are compared with lme4's profile intervals of
sleep_slope (ML) in units of s = (upper - lower) / 3.92, the standard error
implied by the profile interval.  With n = 400 replicates the Monte Carlo
standard error of a 2.5 % or 97.5 % quantile is about
sqrt(0.025 * 0.975 / 400) / phi(1.96) s = 0.13 s (over 21 seeds the ends
varied with standard deviations of 0.08-0.22 s).  On top of that the two
kinds of interval differ systematically where the ML estimates are biased:
by about -0.2 s for sigma, -0.6 to -0.8 s for the standard deviations of the
random effects, and +1 s at the upper end of the correlation, where the
bootstrap estimates pile up at the bound 1 (means over the 21 seeds).  So the
fixed effects and sigma must agree within 0.6 s (the bias plus ~3 Monte Carlo
SEs), the random-effect parameters within 1.25 s, and every bootstrap
interval must contain the centre of lme4's profile interval.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FIXTURES, extra_fit, reference_fit
from lmmfast.confint import percentile_intervals
from lmmfast.simulate import simulate

PROFILE_REF = json.loads((FIXTURES / "lme4_profile.json").read_text())

SLEEP_COLUMNS = ["objective", "sigma", "(Intercept)", "Days", "Subject.(Intercept)",
                 "Subject.Days.(Intercept)", "Subject.Days", "sd_(Intercept)|Subject",
                 "cor_Days.(Intercept)|Subject", "sd_Days|Subject"]


def _implied_cov(fit):
    """Marginal covariance of y at the estimates: sigma^2 (Z Lambda Lambda^T Z^T + W^{-1})."""
    n = fit.nobs
    cov = np.zeros((n, n))
    theta = fit.theta.to_numpy()
    pos = 0
    for r in fit.remats:
        lam = r.lambda_(theta[pos:pos + r.n_theta])
        pos += r.n_theta
        zl = r.z @ lam
        same = r.refs[:, None] == r.refs[None, :]
        cov += np.where(same, zl @ zl.T, 0.0)
    w = fit.weights if fit.weights is not None else np.ones(n)
    cov += np.diag(1.0 / w)
    return fit.sigma ** 2 * cov


# ------------------------------------------------------------------ simulate
def test_simulate_shape_and_seed():
    fit = reference_fit("sleep_slope", "REML")
    a = fit.simulate(3, seed=11)
    assert a.shape == (180, 3)
    assert np.array_equal(a, simulate(fit, 3, seed=11))
    assert not np.array_equal(a, fit.simulate(3, seed=12))
    # column j does not depend on how many columns are drawn
    assert np.array_equal(fit.simulate(5, seed=11)[:, :3], a)
    assert fit.simulate(seed=1).shape == (180, 1)
    assert fit.simulate(0).shape == (180, 0)


def test_simulate_moments():
    fit = reference_fit("sleep_slope", "REML")
    nsim = 2000
    ys = fit.simulate(nsim, seed=2024)
    cov = _implied_cov(fit)
    v = np.diag(cov)
    mean = fit.x @ fit.fixef.to_numpy()
    z = (ys.mean(axis=1) - mean) / np.sqrt(v / nsim)
    assert np.abs(z).max() < 5
    ratio = ys.var(axis=1, ddof=1) / v
    assert np.abs(ratio - 1).max() < 5 * np.sqrt(2 / (nsim - 1))
    # within a subject (Days 0 and 9 of subject 308) and across subjects (308 and 309)
    for i, j in [(0, 9), (0, 10)]:
        c = np.cov(ys[i], ys[j])[0, 1]
        se = np.sqrt((v[i] * v[j] + cov[i, j] ** 2) / nsim)
        assert abs(c - cov[i, j]) < 5 * se


def test_simulate_with_weights_offset_and_fitted_effects():
    fit = extra_fit("sleep_weights_offset", "REML")
    nsim = 2000
    cov = _implied_cov(fit)
    ys = fit.simulate(nsim, seed=5)
    mean = fit.x @ fit.fixef.to_numpy() + fit.offset
    assert np.abs((ys.mean(axis=1) - mean) / np.sqrt(np.diag(cov) / nsim)).max() < 5
    # use_re=False: fitted values (incl. the conditional modes) plus noise of variance sigma^2 / w
    yc = fit.simulate(nsim, seed=5, use_re=False)
    v = fit.sigma ** 2 / fit.weights
    assert np.abs((yc.mean(axis=1) - fit.fitted) / np.sqrt(v / nsim)).max() < 5
    assert np.abs(yc.var(axis=1, ddof=1) / v - 1).max() < 5 * np.sqrt(2 / (nsim - 1))


# ------------------------------------------------------------------ bootstrap
@pytest.fixture(scope="module")
def sleep_boot():
    fit = reference_fit("sleep_slope", "ML")
    return fit, fit.bootstrap(400, seed=20240601, n_jobs=1, progress=False)


def test_bootstrap_layout(sleep_boot):
    fit, boot = sleep_boot
    assert list(boot.columns) == SLEEP_COLUMNS
    assert boot.shape == (400, len(SLEEP_COLUMNS))
    assert boot.attrs["n_failed"] == 0
    est = boot.attrs["estimates"]
    assert est["objective"] == fit.objective and est["sigma"] == fit.sigma
    assert est["sd_(Intercept)|Subject"] == pytest.approx(fit.varcorr["sdcor"].iloc[0])
    # sd/cor columns are those of theta and sigma
    lam11 = boot["Subject.(Intercept)"] * boot["sigma"]
    assert np.allclose(boot["sd_(Intercept)|Subject"], lam11, rtol=1e-12)
    cor = boot["cor_Days.(Intercept)|Subject"]
    assert cor.dropna().between(-1, 1).all()
    zero_sd = (boot["sd_(Intercept)|Subject"] == 0) | (boot["sd_Days|Subject"] == 0)
    assert (cor.isna() == zero_sd).all()                  # undefined with a zero sd
    assert ((cor.abs() == 1) == (boot["Subject.Days"] == 0) & ~zero_sd).all()


def test_bootstrap_replicate_is_refit_of_simulated_response():
    fit = reference_fit("sleep_slope", "REML")
    boot = fit.bootstrap(3, seed=99, n_jobs=1)
    ys = fit.simulate(3, seed=99)
    m = fit.copy().refit(ys[:, 2], start=fit.theta.to_numpy())
    assert boot["objective"].iloc[2] == m.objective          # REML criterion for a REML fit
    assert boot["Days"].iloc[2] == m.fixef["Days"]
    assert boot["sigma"].iloc[2] == m.sigma


def test_bootstrap_reproducible_for_any_n_jobs():
    fit = reference_fit("penicillin", "REML")
    one = fit.bootstrap(40, seed=3, n_jobs=1)
    assert np.array_equal(one.to_numpy(), fit.bootstrap(40, seed=3, n_jobs=1).to_numpy())
    for backend in ("process", "thread"):
        two = fit.bootstrap(40, seed=3, n_jobs=2, backend=backend)
        assert np.array_equal(one.to_numpy(), two.to_numpy(), equal_nan=True), backend
    other = fit.bootstrap(40, seed=4, n_jobs=1)
    assert not np.array_equal(one.to_numpy(), other.to_numpy())
    assert fit.bootstrap(0, seed=1).shape == (0, one.shape[1])
    with pytest.raises(ValueError, match="backend"):
        fit.bootstrap(2, backend="gpu")


def test_bootstrap_intervals_against_lme4_profile(sleep_boot):
    fit, boot = sleep_boot
    ref = PROFILE_REF["confint"]["sleep_slope_ML"]["profile"]
    ci = fit.confint(method="bootstrap", boot=boot)
    assert list(ci.index) == ref["parm"]
    assert ci.attrs["percent"] == ["2.5 %", "97.5 %"] and ci.attrs["n"] == 400
    lo, hi = np.array(ref["lower"]), np.array(ref["upper"])
    s = (hi - lo) / 3.92
    centre = (lo + hi) / 2
    d_lo = np.abs(ci["lower"].to_numpy() - lo) / s
    d_hi = np.abs(ci["upper"].to_numpy() - hi) / s
    normal = np.array([p in (".sigma", "(Intercept)", "Days") for p in ref["parm"]])
    assert (d_lo[normal] < 0.6).all() and (d_hi[normal] < 0.6).all()
    assert (d_lo[~normal] < 1.25).all() and (d_hi[~normal] < 1.25).all()
    assert ((ci["lower"] < centre) & (centre < ci["upper"])).all()


def test_percentile_interval_matches_boot_package():
    ref = PROFILE_REF["percentile"]
    for level, ends in zip(ref["levels"], ref["ends"]):
        assert percentile_intervals(np.array(ref["samples"]), level) == pytest.approx(ends,
                                                                                     rel=1e-12)
    assert percentile_intervals(np.arange(1.0, 11.0), 0.95) == (1.0, 10.0)   # extremes
    assert percentile_intervals(np.array([np.nan, 1.0, 2.0]), 0.5)[0] == 1.0


def test_progress_bar(capsys):
    fit = reference_fit("dyestuff", "ML")
    fit.bootstrap(5, seed=1, n_jobs=1, progress=True)
    assert "5/5" in capsys.readouterr().err
    fit.bootstrap(5, seed=1, n_jobs=1, progress=False)
    assert capsys.readouterr().err == ""
