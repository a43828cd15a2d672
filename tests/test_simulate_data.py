"""lmmfast.datasets.simulate: reproducibility, shapes and levels, parameter recovery.

Recovery is checked on 20,000 rows against tolerances from the sampling
error, at 4 standard errors (the data are seeded, so each check is
deterministic; 4 SE is where a correct estimator would fail with
probability < 1e-4 per parameter):

* fixed effects: 4 x the fit's own standard errors;
* sigma: SE ~ sigma / sqrt(2 (n - p - q));
* a random-effect standard deviation s over m levels, whose per-level
  estimates carry sampling variance tau^2 (sigma^2 / obs per level for an
  intercept, sigma^2 / S_tt for a slope over the level's times):
  SE(s-hat) ~ (s^2 + tau^2) / (s sqrt(2 m)) (delta method on the variance
  of m independent per-level estimates);
* the intercept-slope correlation: SE ~ (1 - rho^2) / sqrt(m), inflated by
  the same ratio (s^2 + tau^2) / s^2 of the noisier of the two.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.datasets.simulate import simulate
from lmmfast.errors import DataError

K = 4.0  # standard errors


def _sd_se(s: float, tau2: float, m: int) -> float:
    return (s * s + tau2) / (s * np.sqrt(2.0 * m))


# --------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("groups", [50, (40, 30)])
def test_same_seed_same_frame(groups):
    a = simulate(3_000, groups=groups, covariates=2, factor_levels=3, seed=123)
    b = simulate(3_000, groups=groups, covariates=2, factor_levels=3, seed=123)
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs["truth"] == b.attrs["truth"]
    c = simulate(3_000, groups=groups, covariates=2, factor_levels=3, seed=124)
    assert not np.array_equal(a["y"].to_numpy(), c["y"].to_numpy())


def test_seed_none_is_recorded():
    a = simulate(500, groups=25)
    seed = a.attrs["truth"]["seed"]
    assert isinstance(seed, int)
    pd.testing.assert_frame_equal(a, simulate(500, groups=25, seed=seed))


# -------------------------------------------------------------- shapes and levels


def test_longitudinal_layout():
    df = simulate(1_003, groups=100, covariates=2, factor_levels=4, seed=1)
    truth = df.attrs["truth"]
    assert list(df.columns) == ["y", "time", "x1", "x2", "f", "subject"]
    assert df.shape == (1_003, 6)
    assert truth["design"] == "longitudinal"
    assert truth["formula"] == "y ~ 1 + time + x1 + x2 + f + (1 + time | subject)"
    for col in ("y", "time", "x1", "x2"):
        assert df[col].dtype == np.float64
    subj = df["subject"]
    assert isinstance(subj.dtype, pd.CategoricalDtype) and not subj.cat.ordered
    assert subj.cat.codes.dtype.itemsize <= 4
    assert len(subj.cat.categories) == 100 and subj.cat.categories[0] == "S001"
    counts = subj.value_counts(sort=False).to_numpy()
    assert counts.min() == 10 and counts.max() == 11 and (counts == 11).sum() == 3
    # evenly spaced times from 0 within each subject, at most 1
    first = df.groupby("subject", observed=True)["time"].agg(["min", "max", "size"])
    assert (first["min"] == 0).all() and first["max"].max() == 1.0
    assert list(df["f"].cat.categories) == ["L1", "L2", "L3", "L4"]
    assert set(truth["beta"]) == {"(Intercept)", "time", "x1", "x2", "fL2", "fL3", "fL4"}
    assert list(truth["theta"]) == ["subject.(Intercept)", "subject.time.(Intercept)",
                                    "subject.time"]


def test_crossed_layout():
    df = simulate(10_000, groups=(1_000, 100), covariates=1, seed=2)
    truth = df.attrs["truth"]
    assert list(df.columns) == ["y", "x1", "g1", "g2"]
    assert truth["design"] == "crossed"
    assert truth["formula"] == "y ~ 1 + x1 + (1 | g1) + (1 | g2)"
    assert truth["groups"] == {"g1": 1_000, "g2": 100}
    for col, n in (("g1", 1_000), ("g2", 100)):
        counts = df[col].value_counts().to_numpy()
        assert len(df[col].cat.categories) == n
        assert counts.min() == counts.max() == 10_000 // n  # balanced margins
    # the factors are crossed at random, not nested
    assert df.groupby("g2", observed=True)["g1"].nunique().min() > 50


def test_named_groups_and_parameters():
    df = simulate(2_000, groups={"patient": 200}, beta={"time": -1.0}, sd=(2.0, 0.0),
                  corr=0.0, sigma=0.5, seed=3)
    truth = df.attrs["truth"]
    assert "patient" in df.columns and truth["formula"].endswith("(1 + time | patient)")
    assert truth["beta"] == {"(Intercept)": 10.0, "time": -1.0}
    assert truth["theta"] == pytest.approx({"patient.(Intercept)": 4.0,
                                            "patient.time.(Intercept)": 0.0,
                                            "patient.time": 0.0})
    df = simulate(2_000, groups={"a": 20, "b": 200}, sd=[0.3, 0.6], seed=3)
    # lme4's term order: more levels first
    assert list(df.attrs["truth"]["theta"]) == ["b.(Intercept)", "a.(Intercept)"]


@pytest.mark.parametrize("kwargs", [
    dict(groups=1), dict(groups=600), dict(groups=(10, 600)), dict(groups="x"),
    dict(groups=10, corr=1.0), dict(groups=(10, 20), corr=0.1), dict(groups=10, sd=(1,)),
    dict(groups=10, beta={"z": 1.0}), dict(groups=10, beta=[1.0]), dict(groups=10, sigma=0),
    dict(groups=10, factor_levels=1),
])
def test_bad_arguments(kwargs):
    with pytest.raises(DataError):
        simulate(500, seed=0, **kwargs)


def test_million_rows_lean():
    """A million rows in compact columns (its speed is measured in benchmarks/)."""
    for groups in (10_000, (10_000, 1_000)):
        df = simulate(1_000_000, groups=groups, seed=0)
        assert len(df) == 1_000_000
        assert df.memory_usage(deep=True).sum() < 40e6


# ------------------------------------------------------------------------ recovery


def _check_fixef(fit, truth):
    beta = pd.Series(truth["beta"])[fit.fixef.index]
    z = (fit.fixef - beta).abs() / fit.stderr
    assert (z < K).all(), f"fixed effects off by {z.round(2).to_dict()} standard errors"


def _check_sigma(fit, truth):
    q = sum(r.q for r in fit.remats)
    se = truth["sigma"] / np.sqrt(2.0 * (fit.nobs - fit.p - q))
    assert abs(fit.sigma - truth["sigma"]) < K * se


def _sdcor(fit, grp, var1, var2=None) -> float:
    vc = fit.varcorr
    rows = vc[(vc["grp"] == grp) & (vc["var1"] == var1)]
    rows = rows[rows["var2"].isna()] if var2 is None else rows[rows["var2"] == var2]
    assert len(rows) == 1
    return float(rows["sdcor"].iloc[0])


def test_recovers_longitudinal():
    n_subj, n_obs = 500, 20_000
    df = simulate(n_obs, groups=n_subj, covariates=2, factor_levels=3, seed=11)
    truth = df.attrs["truth"]
    fit = lmmfast.lmer(truth["formula"], df)
    assert fit.converged
    _check_fixef(fit, truth)
    _check_sigma(fit, truth)
    m = n_obs // n_subj
    t = np.linspace(0.0, 1.0, m)
    sigma2 = truth["sigma"] ** 2
    tau2_int = sigma2 * 4.0 / m             # intercept of a per-subject line: ~ 4 sigma^2 / m
    tau2_slope = sigma2 / ((t - t.mean()) ** 2).sum()
    sd = truth["sd"]["subject"]
    s0, s1, rho = sd["(Intercept)"], sd["time"], truth["corr"]["subject"]
    assert abs(_sdcor(fit, "subject", "(Intercept)") - s0) < K * _sd_se(s0, tau2_int, n_subj)
    assert abs(_sdcor(fit, "subject", "time") - s1) < K * _sd_se(s1, tau2_slope, n_subj)
    inflate = max((s0**2 + tau2_int) / s0**2, (s1**2 + tau2_slope) / s1**2)
    se_rho = (1 - rho**2) / np.sqrt(n_subj) * inflate
    assert abs(_sdcor(fit, "subject", "(Intercept)", "time") - rho) < K * se_rho


def test_recovers_crossed():
    levels = {"g1": 400, "g2": 200}
    n_obs = 20_000
    df = simulate(n_obs, groups=levels, covariates=1, factor_levels=3, seed=12)
    truth = df.attrs["truth"]
    fit = lmmfast.lmer(truth["formula"], df)
    assert fit.converged
    _check_fixef(fit, truth)
    _check_sigma(fit, truth)
    sigma2 = truth["sigma"] ** 2
    for g, m in levels.items():
        s = truth["sd"][g]["(Intercept)"]
        tau2 = sigma2 / (n_obs / m)
        assert abs(_sdcor(fit, g, "(Intercept)") - s) < K * _sd_se(s, tau2, m), g
