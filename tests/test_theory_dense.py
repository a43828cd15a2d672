"""The derivation, executed: the compiled core against the slow, obvious computation.

``dense_reference.dense_criterion`` evaluates the ML deviance and the REML
criterion from the marginal normal distribution with dense Z and
V = sigma^2 (Z Lambda Lambda^T Z^T + W^-1) (docs/theory.md, eqs. 9-11, 18, 20).
Here, on small models, the core's criterion is checked against it at many
theta, the core's optimum against a gradient-free minimisation of the dense
criterion, and the closed forms for beta-hat and sigma-hat (eqs. 19, 21)
against generalised least squares at the same theta — all to 1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

import lmmfast
from dense_reference import dense_criterion

MODELS = [
    ("Dyestuff", "Yield ~ 1 + (1 | Batch)", {}),
    ("sleepstudy", "Reaction ~ 1 + Days + (1 | Subject)", {}),
    ("sleepstudy", "Reaction ~ 1 + Days + (1 + Days | Subject)", {}),
    ("sleepstudy", "Reaction ~ 1 + Days + (1 + Days || Subject)", {}),
    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", {}),
    ("Pastes", "strength ~ 1 + (1 | batch/cask)", {}),
    ("cake", "angle ~ recipe * temp + (1 | recipe:replicate)", {}),
    ("sleepstudy", "Reaction ~ 1 + Days + (1 + Days | Subject)",
     {"weights": np.linspace(0.5, 2.0, 180), "offset": np.linspace(-3.0, 3.0, 180)}),
]
IDS = ["dyestuff", "sleep_int", "sleep_slope", "sleep_zerocorr", "penicillin", "pastes",
       "cake", "sleep_slope_weighted_offset"]


def _dense(fit, theta):
    terms = [(r.refs, r.z, r.nlevels) for r in fit.remats]
    return dense_criterion(fit.x, fit.y, terms, np.asarray(theta), fit.reml,
                           fit.weights, fit.offset)


def _fit(dataset, formula, kw, reml):
    return lmmfast.lmer(formula, lmmfast.datasets.load(dataset), reml=reml, **kw)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("dataset,formula,kw", MODELS, ids=IDS)
def test_core_criterion_equals_dense(dataset, formula, kw, reml):
    fit = _fit(dataset, formula, kw, reml)
    rng = np.random.default_rng(7)
    theta_hat = fit.theta.to_numpy()
    for _ in range(5):
        theta = theta_hat * rng.uniform(0.3, 2.0, theta_hat.size) + rng.normal(0, 0.05, theta_hat.size)
        theta = np.maximum(theta, np.where(np.isfinite(fit.lower_bounds), 0.0, -np.inf))
        assert fit.criterion(theta) == pytest.approx(_dense(fit, theta)["objective"], rel=1e-8)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("dataset,formula,kw", MODELS, ids=IDS)
def test_optimum_equals_dense_gradient_free_optimum(dataset, formula, kw, reml):
    """Nelder-Mead on the dense criterion (from theta = 1) finds nothing better."""
    fit = _fit(dataset, formula, kw, reml)
    lower = np.where(np.isfinite(fit.lower_bounds), 0.0, -np.inf)

    def dense_obj(t):   # the bounds as a reflection: |theta| on the diagonal
        return _dense(fit, np.where(lower == 0.0, np.abs(t), t))["objective"]

    start = np.where(lower == 0.0, 1.0, 0.0)
    res = minimize(dense_obj, start, method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 20000})
    assert fit.objective <= res.fun + 1e-8 * abs(res.fun)
    assert fit.objective == pytest.approx(res.fun, rel=1e-8)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("dataset,formula,kw", MODELS, ids=IDS)
def test_closed_forms_equal_gls(dataset, formula, kw, reml):
    """beta-hat, sigma-hat, vcov and b at the optimum: GLS and the conditional mean."""
    fit = _fit(dataset, formula, kw, reml)
    dense = _dense(fit, fit.theta.to_numpy())
    np.testing.assert_allclose(fit.fixef.to_numpy(), dense["beta"], rtol=1e-8,
                               atol=1e-8 * np.abs(dense["beta"]).max())
    assert fit.sigma == pytest.approx(dense["sigma"], rel=1e-8)
    np.testing.assert_allclose(fit.vcov.to_numpy(), dense["vcov_beta"], rtol=1e-8,
                               atol=1e-10 * np.abs(dense["vcov_beta"]).max())
    b = np.concatenate([fit._solution["b"][i].ravel() for i in range(len(fit.remats))])
    np.testing.assert_allclose(b, dense["b"], rtol=1e-7, atol=1e-8 * max(np.abs(dense["b"]).max(), 1))


@pytest.mark.parametrize("p", [1, 3, 16, 17, 50])
def test_beta_by_back_substitution(p):
    """eq. 21's R_X^T beta = l_yX from the core's factor (``solve_beta``: plain loops
    for a few columns, BLAS beyond), against a general solve."""
    import pandas as pd
    from lmmfast.model import LinearMixedModel
    rng = np.random.default_rng(p)
    n = 400
    frame = pd.DataFrame({f"x{j}": rng.normal(size=n) for j in range(1, p)})
    frame["g"] = rng.integers(0, 20, n).astype(str)
    frame["y"] = rng.normal(size=n) + frame.get("x1", 0.0)
    rhs_terms = " + ".join(["1"] + [f"x{j}" for j in range(1, p)])
    m = LinearMixedModel(f"y ~ {rhs_terms} + (1 | g)", frame)
    m.criterion(np.array([0.7]))
    lxx = m._core.lxx()
    got = m._core.solve_beta()
    assert got.shape == (p,)
    np.testing.assert_allclose(got, np.linalg.solve(lxx[:p, :p].T, lxx[p, :p]), rtol=1e-10)
