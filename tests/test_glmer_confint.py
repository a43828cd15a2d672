"""glmer's confint() (Wald, profile, bootstrap) and profile() against lme4's.

Reference: ``fixtures/glmm/glmer_confint.json`` (``make_lme4_glmer_confint.R``),
lme4's ``confint(fit, method = "Wald")`` and ``confint(profile(fit))`` of two
fits of each model: with lme4's defaults and with a converged PIRLS and a
tight optimiser.  lme4's default glmer stops PIRLS at a relative change of
1e-7, so each Laplace deviance it evaluates (and its optimum and Hessian) is
off by up to ~1e-3: its default Wald intervals differ from the converged
ones by up to 1.6 % (the standard errors of its finite-difference Hessian,
see test_glmer.py), its profile intervals by up to 1.2e-3 of their width.
lmmfast evaluates the exact Laplace deviance, so it is compared with the
converged fits tightly and with the defaults as closely as they allow.
Profile intervals are read off splines through each trace's points; lme4
and lmmfast place the points slightly differently, which moves the
interpolated ends by up to 1.1e-3 of the interval's width (epil_int,
trtprogabide at 80 %).  lmmfast's ends are the more exact: minimising the
deviance over the other parameters with one held at an end (an independent
optimiser, ``test_profile_end_is_where_the_deviance_rises_by_z2``) gives
zeta = z_{level} to 2e-7 at lmmfast's ends and to only 3e-3 at lme4's (both
fits).  Relative differences are checked for ends not near zero (|end| >
width / 4; an end near zero makes them meaningless: lage's lower 80 % end is
0.03).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from test_glmer import fit

from lmmfast.confint import percentile_intervals
from lmmfast.errors import DataError, LmmError

FIXTURE = Path(__file__).parent / "fixtures" / "glmm" / "glmer_confint.json"
MODELS = ["cbpp_laplace", "epil_int"]
# (lme4 fit, table) -> largest difference allowed, in units of the interval's width
WIDTH_TOL = {("tight", "wald"): 1e-4, ("default", "wald"): 2e-2,
             ("tight", "profile95"): 1.5e-3, ("tight", "profile80"): 1.5e-3,
             ("default", "profile95"): 1.5e-3, ("default", "profile80"): 1.5e-3}
# relative differences allowed
REL_TOL = {("tight", "wald"): 1e-4, ("default", "wald"): 2e-2,
           ("tight", "profile95"): 5e-3, ("tight", "profile80"): 5e-3,
           ("default", "profile95"): 5e-3, ("default", "profile80"): 5e-3}


@cache
def lme4_confint() -> dict:
    return json.loads(FIXTURE.read_text())["models"]


@cache
def prof(name: str) -> pd.DataFrame:
    return fit(name).profile()


def _table(rows) -> pd.DataFrame:
    return pd.DataFrame([(r["parameter"], np.nan if r["lower"] is None else r["lower"],
                          np.nan if r["upper"] is None else r["upper"]) for r in rows],
                        columns=["parameter", "lower", "upper"]).set_index("parameter")


def _compare(ours: pd.DataFrame, ref: pd.DataFrame, width_tol: float, rel_tol: float):
    assert list(ours.index) == list(ref.index)
    finite = ref["lower"].notna()
    assert ours.loc[~finite, ["lower", "upper"]].isna().all().all()
    width = (ref["upper"] - ref["lower"])[finite]
    for end in ("lower", "upper"):
        diff = (ours[end] - ref[end])[finite].abs()
        assert (diff / width).max() < width_tol, (end, (diff / width).max())
        away = ref[end][finite].abs() > width / 4
        rel = (diff / ref[end][finite].abs())[away]
        assert rel.max() < rel_tol, (end, rel.max())


@pytest.mark.parametrize("fitted", ["tight", "default"])
@pytest.mark.parametrize("name", MODELS)
def test_wald_intervals_match_lme4(name, fitted):
    ours = fit(name).confint(method="wald")
    _compare(ours, _table(lme4_confint()[name][fitted]["wald"]),
             WIDTH_TOL[fitted, "wald"], REL_TOL[fitted, "wald"])
    assert ours.loc[".sig01", "description"].startswith("sd_(Intercept)|")
    assert ours.attrs["percent"] == ["2.5 %", "97.5 %"] and ours.attrs["method"] == "wald"
    f = fit(name)
    z = stats.norm.ppf(0.9)
    w80 = f.confint(method="Wald", level=0.8, parm="beta_")
    assert np.allclose(w80["upper"], f.beta + z * f.stderr.to_numpy(), rtol=1e-14)
    assert w80.attrs["percent"] == ["10 %", "90 %"]


@pytest.mark.parametrize("level", ["profile95", "profile80"])
@pytest.mark.parametrize("fitted", ["tight", "default"])
@pytest.mark.parametrize("name", MODELS)
def test_profile_intervals_match_lme4(name, fitted, level):
    ours = fit(name).confint(level=0.95 if level == "profile95" else 0.8, prof=prof(name))
    _compare(ours, _table(lme4_confint()[name][fitted][level]),
             WIDTH_TOL[fitted, level], REL_TOL[fitted, level])


@pytest.mark.parametrize("name", MODELS)
def test_profile_traces_follow_lme4s(name):
    """lme4's (converged) zeta traces against lmmfast's, each interpolated at the other's points."""
    p = prof(name)
    for tr in lme4_confint()[name]["tight"]["traces"]:
        sub = p[p["parameter"] == tr["parameter"]].sort_values("value")
        v, z = np.asarray(tr["value"]), np.asarray(tr["zeta"])
        inside = (v > sub["value"].min()) & (v < sub["value"].max())
        ours = np.interp(v[inside], sub["value"], sub["zeta"])
        assert np.max(np.abs(ours - z[inside])) < 0.02 * max(1.0, np.max(np.abs(z)))
        assert sub["zeta"].is_monotonic_increasing
    assert set(p["parameter"]) == {tr["parameter"] for tr in lme4_confint()[name]["tight"]["traces"]}
    est = p[p["zeta"] == 0.0]
    assert len(est) == p["parameter"].nunique()
    assert p.attrs["deviance"] == fit(name).objective
    assert p.attrs["descriptive"][".sig01"].startswith("sd_(Intercept)|")


def _profiled_zeta(f, w: int, value: float) -> float:
    """zeta at ``value`` of parameter ``w`` (theta first, then beta): the deviance
    minimised over the others by Nelder-Mead (independent of lmmfast's profile)."""
    g = f.copy()
    x_hat = np.r_[f.theta, f.beta]
    others = [i for i in range(len(x_hat)) if i != w]

    def dev(x):
        full = np.empty(len(x_hat))
        full[w] = value
        full[others] = x
        return g.deviance_at(full[:f.n_theta], full[f.n_theta:])
    opts = {"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000, "adaptive": True}
    res = optimize.minimize(dev, x_hat[others], method="Nelder-Mead", options=opts)
    res = optimize.minimize(dev, res.x, method="Nelder-Mead", options=opts)
    return float(np.sqrt(res.fun - f.objective))


@pytest.mark.parametrize("name, parm, level", [("cbpp_laplace", ".sig01", 0.95),
                                               ("cbpp_laplace", "period2", 0.95),
                                               ("epil_int", "trtprogabide", 0.8)])
def test_profile_end_is_where_the_deviance_rises_by_z2(name, parm, level):
    """At the profile ends, the deviance minimised over the other parameters is
    the fit's plus z^2 (eq. 42): zeta = z to 1e-5 relative (lme4's ends: 3e-3)."""
    f = fit(name)
    ci = f.confint(level=level, prof=prof(name))
    names = [".sig01"] + list(f.fixef_names)
    for end in ("lower", "upper"):
        z = _profiled_zeta(f, names.index(parm), ci.loc[parm, end])
        assert z == pytest.approx(stats.norm.ppf(0.5 + level / 2), rel=1e-5)


def test_bootstrap_intervals_are_percentiles_of_the_bootstrap():
    f = fit("cbpp_laplace")
    boot = f.bootstrap(40, seed=3, n_jobs=1, progress=False)
    ci = f.confint(method="bootstrap", boot=boot, level=0.9)
    for name, col in [(".sig01", "sd_(Intercept)|herd"), ("period3", "period3")]:
        assert tuple(ci.loc[name, ["lower", "upper"]]) == percentile_intervals(boot[col], 0.9)
    assert ci.attrs["n"] == 40 and ci.attrs["percent"] == ["5 %", "95 %"]
    again = f.confint(method="boot", n=40, seed=3, n_jobs=2, progress=False, level=0.9)
    pd.testing.assert_frame_equal(ci, again)
    assert (ci["lower"] < f.confint(method="wald", level=0.9)["upper"].fillna(np.inf)).all()


def test_confint_parm_selection():
    f = fit("cbpp_laplace")
    w = f.confint(parm=["period2", ".sig01"], method="wald")
    assert list(w.index) == [".sig01", "period2"]
    assert list(f.confint(parm="theta_", method="wald").index) == [".sig01"]
    assert list(f.confint(parm="sd_(Intercept)|herd", prof=prof("cbpp_laplace")).index) == [".sig01"]
    only = f.confint(parm="period4")   # profiles that parameter alone
    assert list(only.index) == ["period4"]
    full = f.confint(prof=prof("cbpp_laplace")).loc[["period4"]]
    assert np.allclose(only[["lower", "upper"]], full[["lower", "upper"]], rtol=1e-6)


def test_confint_and_profile_bad_input():
    f = fit("cbpp_laplace")
    with pytest.raises(LmmError, match="method"):
        f.confint(method="exact")
    with pytest.raises(LmmError, match="level"):
        f.confint(level=1.5, method="wald")
    with pytest.raises(LmmError, match="nope"):
        f.confint(parm="nope", method="wald")
    with pytest.raises(DataError, match="no trace"):
        f.confint(prof=prof("cbpp_laplace")[lambda d: d.parameter == "period2"])
    with pytest.raises(DataError, match="boot"):
        f.confint(method="bootstrap", boot=pd.DataFrame({"a": [1.0]}))
    with pytest.raises(DataError, match="nAGQ"):
        fit("cbpp_nagq0").profile()
