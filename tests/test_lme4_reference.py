"""Every model of the reference suite, REML and ML, against lme4's own numbers.

Tolerances: the objective may not be worse than lme4's by more than 1e-6
relative; fixed effects, standard errors, sigma, theta and the variance
components agree to 1e-4 relative, except where lme4's optimum is flat (listed
in FLAT with the reason); conditional modes agree to 1e-3 relative (relative
to the largest mode of their column, since single modes can be near zero).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_rel, assert_varcorr, reference, reference_fit

CASES = [(m, k) for m in reference()["models"] for k in ("REML", "ML")]
IDS = [f"{m}-{k}" for m, k in CASES]

# lme4's default fit of InstEval by ML stops 1.3e-6 (deviance units) short of the
# optimum this library reaches; along that flat direction the variance components
# move by up to 3.5e-4 relative.
FLAT = {("insteval", "ML"): 1e-3}


def _tol(model, kind):
    return FLAT.get((model, kind), 1e-4)


def _ref(model, kind):
    return reference()["models"][model]["fits"][kind]


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_objective_no_worse_than_lme4(model, kind):
    fit, ref = reference_fit(model, kind), _ref(model, kind)
    assert fit.objective <= ref["objective"] + 1e-6 * abs(ref["objective"])
    tight = ref.get("tight_refit")
    if tight:  # and not below lme4's own tightly converged optimum by more than roundoff
        assert fit.objective >= tight["objective"] - 1e-9 * abs(tight["objective"])
    assert fit.converged


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_criterion_at_lme4_theta(model, kind):
    """At lme4's theta the compiled criterion equals lme4's objective to 1e-10."""
    fit, ref = reference_fit(model, kind), _ref(model, kind)
    val = fit.criterion(np.array(ref["theta"]))
    assert_rel(val, ref["objective"], 1e-10, "criterion at lme4's theta")


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_fixed_effects(model, kind):
    fit, ref = reference_fit(model, kind), _ref(model, kind)
    tol = _tol(model, kind)
    assert list(fit.fixef.index) == ref["fixef"]["names"]
    assert_rel(fit.fixef, ref["fixef"]["estimate"], tol, "fixef")
    assert_rel(fit.stderr, ref["fixef"]["se"], tol, "se")
    assert_rel(fit.vcov.to_numpy(), np.array(ref["vcov_fixef"]), tol, "vcov",
               floor=np.max(np.abs(ref["vcov_fixef"])))
    assert list(fit.vcov.columns) == ref["fixef"]["names"]


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_sigma_theta_likelihood(model, kind):
    fit, ref = reference_fit(model, kind), _ref(model, kind)
    tol = _tol(model, kind)
    assert_rel(fit.sigma, ref["sigma"], tol, "sigma")
    assert list(fit.theta.index) == ref["theta_names"]
    # theta elements are compared relative to the largest of their term's scale (>= 0.01)
    assert_rel(fit.theta, ref["theta"], tol, "theta", floor=1e-2)
    assert np.array_equal(fit.lower_bounds, [0.0 if v is not None else -np.inf
                                             for v in ref["theta_lower"]])
    assert fit.nobs == ref["nobs"]
    assert fit.df_params == ref["df"]
    for ours, theirs in ((fit.loglik, ref["logLik"]), (fit.aic, ref["AIC"]),
                         (fit.bic, ref["BIC"])):
        assert abs(ours - theirs) <= 1e-6 * abs(theirs) + 1e-6
    assert fit.is_singular == ref["is_singular"]
    assert fit.ngrps == ref["ngrps"]


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_varcorr(model, kind):
    fit, ref = reference_fit(model, kind), _ref(model, kind)
    tol = _tol(model, kind)
    assert_varcorr(fit.varcorr, ref["varcorr"], tol)


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_conditional_modes_fitted_residuals(model, kind):
    fit, ref = reference_fit(model, kind), _ref(model, kind)
    assert_rel(fit.fitted[:10], ref["fitted_head"], 1e-4, "fitted")
    assert_rel(fit.residuals[:10], ref["residuals_head"], 1e-3, "residuals",
               floor=1e-3 * np.max(np.abs(ref["residuals_head"])))
    assert_rel(fit.fitted + fit.residuals, fit.y, 1e-12, "fitted + residuals")
    if not ref["ranef"]:
        return
    ranef = fit.ranef()
    assert set(ranef) == set(ref["ranef"])
    for group, spec in ref["ranef"].items():
        ours = ranef[group]
        assert list(ours.columns) == spec["columns"]
        assert list(ours.index) == spec["levels"]
        theirs = np.array([spec["values"][lev] for lev in spec["levels"]])
        scale = np.max(np.abs(theirs), axis=0)
        for j in range(theirs.shape[1]):
            assert_rel(ours.to_numpy()[:, j], theirs[:, j], 1e-3, f"ranef {group}",
                       floor=max(scale[j], 1e-12 * fit.sigma))


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_devcomp_components(model, kind):
    """log|L|^2, log|R_X|^2 and the penalised RSS at lme4's theta, as lme4 reports them."""
    fit, ref = reference_fit(model, kind), _ref(model, kind)
    fit._core.update(fit._to_internal(np.array(ref["theta"])))
    ld_l2, ld_rx2, pwrss = fit._core.components()
    fit._core.update(fit._to_internal(fit.theta.to_numpy()))
    dc = ref["devcomp"]
    assert_rel(ld_l2, dc["ldL2"], 1e-9, "ldL2", floor=1.0)
    assert_rel(ld_rx2, dc["ldRX2"], 1e-9, "ldRX2", floor=1.0)
    assert_rel(pwrss, dc["pwrss"], 1e-9, "pwrss")


def test_reference_copy_matches_shared():
    """The committed copy of the reference equals shared/reference (when present)."""
    from conftest import shared_reference
    import json
    path = shared_reference("lme4_results.json")
    assert json.loads(path.read_text())["models"] == reference()["models"]
