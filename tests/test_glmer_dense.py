"""glmer's deviance against a dense brute-force evaluation (tests/dense_glmm.py).

At the returned parameters, the fitted -2 log L must equal the dense Laplace
(or quadrature) deviance to 1e-8, on the fixture models and on random small
designs; and a dense optimiser started there must not lower it by more than
1e-6.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
from dense_glmm import DenseGLMM
from test_glmer import fit

from lmmfast.errors import LmmError
from lmmfast.glmm import glmer

SMALL = ["cbpp_laplace", "cbpp_agq25", "cbpp_prop_weights", "cbpp_probit", "cbpp_nagq0",
         "cbpp_cloglog", "epil_int", "epil_agq9", "epil_slope", "epil_offset"]


@pytest.mark.parametrize("name", SMALL)
def test_fixture_deviance_equals_dense(name):
    f = fit(name)
    dense = DenseGLMM(f.design, f.family)
    assert f.objective == pytest.approx(dense.deviance(f.theta, f.beta, f.n_agq), rel=1e-8)


def test_verbagg_deviance_equals_dense():
    """Crossed terms (id x item): the dense Z is 7584 x 340."""
    f = fit("verbagg_main")
    dense = DenseGLMM(f.design, f.family)
    assert f.objective == pytest.approx(dense.deviance(f.theta, f.beta), rel=1e-8)


def test_deviance_off_the_optimum_equals_dense():
    """Any (theta, beta), not only the optimum: the criterion itself is the dense one."""
    f = fit("epil_slope")
    dense = DenseGLMM(f.design, f.family)
    rng = np.random.default_rng(3)
    for _ in range(3):
        theta = f.theta + rng.normal(scale=0.1, size=f.n_theta)
        theta[[0, 2]] = np.abs(theta[[0, 2]])
        beta = f.beta + rng.normal(scale=0.05, size=len(f.beta))
        assert f.deviance_at(theta, beta) == pytest.approx(dense.laplace(theta, beta), rel=1e-9)


def _random_design(seed: int):
    """A small random GLMM: family, formula, data."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 120))
    g1 = rng.integers(0, int(rng.integers(3, 9)), n)
    g2 = rng.integers(0, int(rng.integers(2, 6)), n)
    x = rng.normal(size=n)
    fam = ["binomial", "poisson", ("binomial", "probit"), ("poisson", "sqrt")][seed % 4]
    formulas = ["y ~ x + (1 | g1)", "y ~ x + (1 | g1) + (1 | g2)", "y ~ x + (1 + x | g1)",
                "y ~ 1 + (1 | g1) + (0 + x | g2)"]
    formula = formulas[(seed // 4) % 4]
    b1 = rng.normal(scale=0.7, size=10)[g1]
    b2 = rng.normal(scale=0.5, size=10)[g2]
    eta = 0.3 + 0.5 * x + b1 + b2 * (x if "0 + x" in formula or "1 + x" in formula else 1)
    name = fam if isinstance(fam, str) else fam[0]
    if name == "binomial":
        m = rng.integers(1, 6, n)
        y = rng.binomial(m, 1 / (1 + np.exp(-eta)))
        df = pd.DataFrame({"s": y, "f": m - y, "x": x, "g1": g1.astype(str), "g2": g2.astype(str)})
        formula = "cbind(s, f)" + formula[1:]
    else:
        lam = np.exp(eta) if fam == "poisson" else (1.5 + 0.3 * eta).clip(0.2) ** 2
        df = pd.DataFrame({"y": rng.poisson(lam), "x": x, "g1": g1.astype(str),
                           "g2": g2.astype(str)})
    return fam, formula, df


@pytest.mark.parametrize("seed", range(16))
def test_random_designs_against_dense(seed):
    fam, formula, df = _random_design(seed)
    try:
        f = glmer(formula, df, family=fam)
    except LmmError:
        return
    assert_dense_optimum(f)


def assert_dense_optimum(f, optimal: bool = True, rel: float = 1e-8) -> None:
    """The fit's -2 log L equals the dense Laplace (or quadrature) deviance at the
    returned parameters to ``rel``, and (``optimal``) a dense optimiser started
    there does not lower it by more than 1e-6 relative."""
    dense = DenseGLMM(f.design, f.family)
    n_agq = max(f.n_agq, 1)
    assert np.isfinite(f.objective)
    assert f.objective == pytest.approx(dense.deviance(f.theta, f.beta, n_agq), rel=rel)
    if not optimal:
        return
    # a dense optimiser from the returned parameters does not find a lower deviance
    nt = f.n_theta
    lower = f.theta_lower

    def obj(x):
        th = x[:nt]
        if (th < lower).any():
            return np.inf
        try:
            return dense.deviance(th, x[nt:], n_agq)
        except (np.linalg.LinAlgError, FloatingPointError):
            return np.inf

    x0 = np.concatenate([f.theta, f.beta])
    res = scipy.optimize.minimize(obj, x0, method="Nelder-Mead",
                                  options={"xatol": 1e-7, "fatol": 1e-9, "maxfev": 400,
                                           "initial_simplex": x0 + np.vstack(
                                               [np.zeros(len(x0)), 0.01 * np.eye(len(x0))])})
    assert res.fun >= f.objective - 1e-6 * abs(f.objective)


@pytest.mark.parametrize("name", ["epil_slope", "cbpp_probit"])
def test_pirls_mode_does_not_depend_on_the_start(name):
    """From u = 0, from far away (step-halving) and from a predicted start: one mode,
    the dense one."""
    f = fit(name)
    pirls = f.pirls
    q = len(pirls.last_u)
    modes = [pirls.mode(f.theta, f.beta, u0) for u0 in
             (np.zeros(q), np.full(q, 4.0), np.linspace(-3, 3, q))]
    pirls.anchor(modes[0])
    modes.append(pirls.mode(f.theta, f.beta + 1e-3))
    pirls.anchor(None)
    modes.append(pirls.mode(f.theta, f.beta + 1e-3, np.zeros(q)))
    for m in modes[1:3]:
        assert np.max(np.abs(m.u - modes[0].u)) < 1e-9
        assert f._deviance(m) == pytest.approx(f._deviance(modes[0]), rel=1e-12)
    assert np.max(np.abs(modes[3].u - modes[4].u)) < 1e-9
    dense = DenseGLMM(f.design, f.family)
    assert f._deviance(modes[3]) == pytest.approx(dense.laplace(f.theta, f.beta + 1e-3), rel=1e-10)
