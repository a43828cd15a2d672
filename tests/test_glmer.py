"""glmer against lme4: every model of tests/fixtures/glmm, fitted by lmmfast.

Two references: lme4's glmer with its defaults (``lme4_glmer_results.json``,
a copy of shared/reference/glmm) and the same models refitted by lme4 with
a converged PIRLS and a tight optimiser (``lme4_glmer_tight.json``, made by
``fixtures/make_lme4_glmer_extra.R``).  lme4's default PIRLS stops when the
penalised deviance changes by less than 1e-7 relative and takes log|L|^2
from the weights before its last step, so each Laplace deviance it
evaluates is off by up to ~1e-3 and its finite-difference Hessian by ~1%;
lmmfast evaluates the Laplace deviance at the exact conditional modes.  Its
-2 log L is therefore at or below lme4's default one, and its estimates
and standard errors agree with lme4's converged fits to 1e-4 and with
lme4's default fits only as closely as that inexactness allows
(``DEFAULT_LAPLACE_TOL``).  Quadrature deviances are insensitive to where
the modes are, and for nAGQ = 0 the estimates come from PIRLS itself, so
those fits agree with lme4's defaults to 1e-4.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmmfast.glmm import glmer

GLMM = Path(__file__).parent / "fixtures" / "glmm"


@cache
def lme4_default() -> dict:
    """lme4 1.1-31's glmer with its defaults (a copy of shared/reference/glmm)."""
    return json.loads((GLMM / "lme4_glmer_results.json").read_text())


@cache
def lme4_tight() -> dict:
    """The same models by lme4 with a converged PIRLS (make_lme4_glmer_extra.R)."""
    return json.loads((GLMM / "lme4_glmer_tight.json").read_text())["models"]


@cache
def dataset(name: str) -> pd.DataFrame:
    """A fixture dataset, its factors with the level order of the JSON."""
    info = lme4_default()["datasets"][name]
    factors = {c["name"]: c["levels"] for c in info["columns"] if c["type"] == "factor"}
    df = pd.read_csv(GLMM / Path(info["file"]).name, dtype={n: str for n in factors})
    for n, levels in factors.items():
        df[n] = pd.Categorical(df[n], categories=levels)
    return df


def spec(name: str) -> dict:
    models = lme4_default()["models"]
    return models[name] if name in models else lme4_tight()[name]


@cache
def fit(name: str):
    """lmmfast's fit of fixture model ``name``."""
    m = spec(name)
    return glmer(m["formula"], dataset(m["dataset"]), family=(m["family"], m["link"]),
                 nAGQ=m["nAGQ"], weights=m["weights"])


def values(d) -> np.ndarray:
    """A JSON scalar, list or name -> value mapping as an array."""
    if isinstance(d, dict):
        d = list(d.values())
    return np.atleast_1d(np.asarray(d, dtype=np.float64))


def max_rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


DEFAULT_MODELS = list(lme4_default()["models"])
TIGHT_MODELS = list(lme4_tight())
# Models whose lme4-default numbers come from an inexact Laplace deviance
# (nAGQ = 1): estimates within 2e-3, standard errors within 2e-2 (see above).
LAPLACE = [n for n in DEFAULT_MODELS if lme4_default()["models"][n]["nAGQ"] == 1]
DEFAULT_LAPLACE_TOL = {"fixef": 2e-3, "theta": 4e-3, "se": 2e-2}
# lme4's vcov() of a converged fit still takes central differences at a step of
# 1e-4 of a deviance whose PIRLS stops at a relative change of 1e-12: for
# VerbAgg's -2 log L of 8,000 that leaves noise of ~1e-9 in each value, ~0.1
# in the Hessian; the same differences at a step of 1e-3 (``se_fd3``, lme4's
# own deviance function) agree with lmmfast's to 1e-4 and differ from lme4's
# vcov() by 4.7e-4 (verbagg_main) and 4.0e-4 (verbagg_slope).
VCOV_STEP_NOISE = {"verbagg_main": 1e-3, "verbagg_slope": 1e-3}
# verbagg_slope: the item term's intercept-slope correlation is -0.99, so the
# slope's own entry of lambda (theta_4 = 0.058) sits on a flat ridge: a change
# of 1e-4 relative in it moves -2 log L by less than 1e-9.  lmmfast's -2 log L
# is 7.7e-8 below lme4's converged one, theta_4 within 1e-3 of it.
FLAT_THETA = {"verbagg_slope": 1e-3}


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_deviance_no_worse_than_lme4(name):
    m = lme4_default()["models"][name]
    f = fit(name)
    assert f.objective <= m["minus2loglik"] * (1 + 1e-6)
    assert f.loglik == pytest.approx(-0.5 * f.objective)
    assert f.df == m["df"] and f.nobs == m["nobs"]
    assert f.aic == pytest.approx(f.objective + 2 * m["df"], rel=1e-12)
    assert f.bic == pytest.approx(f.objective + np.log(m["nobs"]) * m["df"], rel=1e-12)


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_estimates_match_lme4_defaults(name):
    m = lme4_default()["models"][name]
    f = fit(name)
    tol = DEFAULT_LAPLACE_TOL if name in LAPLACE else {"fixef": 1e-4, "theta": 1e-4, "se": 1e-4}
    assert list(f.fixef.index) == list(m["fixef"])
    assert f.theta_names == list(np.atleast_1d(m["theta_names"]))
    assert max_rel(f.fixef.values, values(m["fixef"])) < tol["fixef"]
    assert max_rel(f.theta, values(m["theta"])) < tol["theta"]
    assert max_rel(f.stderr.values, values(m["se"])) < tol["se"]
    assert f.is_singular == m["is_singular"]
    rf = f.ranef(condvar=True)[m["ranef_first"]["term"]]
    k = rf.shape[1]
    assert list(rf.index[:5]) == m["ranef_first"]["levels"]
    modes = values(m["ranef_first"]["values"]).reshape(5, k)
    assert np.max(np.abs(rf.values[:5] - modes)) < 1e-3
    condsd = values(m["ranef_first"]["condsd"]).reshape(5, k)
    assert np.max(np.abs(rf.attrs["condsd"].values[:5] - condsd)) < 1e-3
    assert max_rel(f.fitted[:5], m["fitted_first"]) < 1e-3
    assert max_rel(f.linear_predictor[:5], m["predict_link_first"]) < 1e-3


@pytest.mark.parametrize("name", TIGHT_MODELS)
def test_estimates_match_lme4_converged(name):
    m = lme4_tight()[name]
    f = fit(name)
    assert f.objective <= m["minus2loglik"] + 1e-6 * abs(m["minus2loglik"])
    assert f.objective == pytest.approx(m["minus2loglik"], rel=1e-8)
    assert max_rel(f.fixef.values, values(m["fixef"])) < 1e-4
    assert max_rel(f.theta, values(m["theta"])) < FLAT_THETA.get(name, 1e-4)
    assert max_rel(f.stderr.values, values(m["se_fd3"])) < 1e-4
    assert max_rel(f.stderr.values, values(m["se"])) < VCOV_STEP_NOISE.get(name, 1e-4)
    rf = f.ranef(condvar=True)[f.design.remats[0].group]
    k = rf.shape[1]
    assert np.max(np.abs(rf.values[:5] - values(m["ranef_first"]["values"]).reshape(5, k))) < 1e-4
    assert np.max(np.abs(rf.attrs["condsd"].values[:5]
                         - values(m["ranef_first"]["condsd"]).reshape(5, k))) < 1e-4
    assert max_rel(f.fitted[:5], m["fitted_first"]) < 1e-4
    # lme4's deviance() of a glmer fit: the unit deviances at the modes
    assert f.conditional_deviance == pytest.approx(m["deviance"], rel=1e-5)
    assert f.deviance == f.objective


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_varcorr_matches_lme4(name):
    m = lme4_default()["models"][name]
    vc = fit(name).varcorr
    ref = m["varcorr"]
    assert list(vc["grp"]) == list(np.atleast_1d(ref["grp"]))
    tol = DEFAULT_LAPLACE_TOL["theta"] * 2 if name in LAPLACE else 2e-4
    assert max_rel(vc["vcov"], values(ref["vcov"])) < tol
    assert max_rel(vc["sdcor"], values(ref["sdcor"])) < tol


@pytest.mark.parametrize("name", ["cbpp_laplace", "verbagg_main"])
def test_fewer_evaluations_than_lme4(name):
    m = lme4_default()["models"][name]
    assert fit(name).n_evals < m["feval"]


def test_nagq_changes_only_the_constant_of_the_loglik():
    """lme4's -2 log L for nAGQ > 1 sums unit deviances; for nAGQ = 1 it uses the
    family's aic: with nAGQ = 1 both differ by aic - sum(d_i) (eq. 99)."""
    f = fit("cbpp_laplace")
    from lmmfast.glmm.quadrature import agq_deviance
    mode = f.pirls.mode(f.theta, f.beta)
    d = f.design
    mu, dev = (f.pirls.row_values(mode, what) for what in ("mu", "dev"))
    const = f.family.aic(d.y, d.trials, mu, d.prior_weights) - dev.sum()
    assert agq_deviance(f.pirls, mode, 1) + const == pytest.approx(f.objective, rel=1e-12)
    # the saturated constant of the binomial: cbpp's 56 rows of several trials
    assert const > 50
