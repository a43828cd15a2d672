"""The analytic gradient of the profiled criteria, ``BlockedCholesky.gradient``.

The gradient (docs/theory.md, eqs. 64-68) is checked against central
differences of ``BlockedCholesky.objective`` (steps 1e-6 max(|theta_i|, 1)), to
1e-5 of max(|gradient|, 1), on every reference-suite model but InstEval (REML
and ML, at several theta), with prior weights and an offset, at theta with a
zero component, for a term with three random effects, and on crossed designs
whose off-diagonal blocks of L are sparse and dense, including ones with
vector-valued terms in both.  InstEval is checked once at lme4's optimum and
once away from it.  The value returned and the factor left behind are those of
``objective``.  Everything is in the internal theta order of the core.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

import lmmfast
from lmmfast.model import LinearMixedModel
from designs import CROSSED_FORMULAS, MODELS, crossed_model, dense_before_sparse_model


STEP = 1e-6
RTOL = 1e-5
SMALL = [name for name in MODELS if name != "insteval"]
FITS = [True, False]
FIT_IDS = ["REML", "ML"]


def _model(formula, data, reml, **kw) -> LinearMixedModel:
    return LinearMixedModel(formula, data, reml=reml, **kw)


@lru_cache(maxsize=None)
def _suite_model(name: str, reml: bool) -> LinearMixedModel:
    dataset, formula = MODELS[name]
    return _model(formula, lmmfast.datasets.load(dataset), reml)


def _gradient(model: LinearMixedModel, theta_int: np.ndarray) -> tuple[float, np.ndarray]:
    grad = np.full(theta_int.size, np.nan)
    value = model._core.gradient(np.ascontiguousarray(theta_int), model.reml, grad)
    return value, grad


def _central_differences(model: LinearMixedModel, theta_int: np.ndarray,
                         step: float = STEP) -> np.ndarray:
    core, reml = model._core, model.reml
    out = np.empty(theta_int.size)
    for i in range(theta_int.size):
        h = step * max(abs(theta_int[i]), 1.0)
        up, down = theta_int.copy(), theta_int.copy()
        up[i] += h
        down[i] -= h
        out[i] = (core.objective(up, reml) - core.objective(down, reml)) / (2 * h)
    return out


def _assert_matches_differences(model, theta_int, rtol=RTOL):
    value, grad = _gradient(model, theta_int)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    fd = _central_differences(model, theta_int)
    scale = max(np.max(np.abs(grad)), 1.0)
    err = np.max(np.abs(grad - fd)) / scale
    assert err <= rtol, f"gradient {grad} vs differences {fd}: relative error {err:.3g}"
    return grad


def _random_thetas(model: LinearMixedModel, n: int, seed: int) -> list[np.ndarray]:
    """Points in the feasible region, internal order (diagonal entries > 0)."""
    rng = np.random.default_rng(seed)
    diag = np.isfinite(model.lower_bounds)
    out = []
    for _ in range(n):
        theta = np.where(diag, rng.uniform(0.1, 2.0, diag.size), rng.normal(0.0, 0.5, diag.size))
        out.append(model._to_internal(theta))
    return out


# ------------------------------------------------------------ the reference suite
@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("name", SMALL)
def test_gradient_matches_differences(name, reml):
    model = _suite_model(name, reml)
    for theta in _random_thetas(model, 3, seed=11):
        _assert_matches_differences(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("name", ["sleep_slope", "penicillin", "pastes"])
def test_gradient_vanishes_at_the_optimum(name, reml):
    dataset, formula = MODELS[name]
    fit = lmmfast.lmer(formula, lmmfast.datasets.load(dataset), reml=reml)
    theta = fit._to_internal(fit.theta.to_numpy())
    value, grad = _gradient(fit, theta)
    interior = np.abs(theta) > 1e-4
    assert np.max(np.abs(grad[interior])) < 1e-3
    # the fitted results are those of the optimum still
    assert value == pytest.approx(fit.objective, rel=1e-12)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("name", SMALL)
def test_value_and_factor_are_those_of_objective(name, reml):
    model = _suite_model(name, reml)
    core = model._core
    for theta in _random_thetas(model, 2, seed=5):
        expected = core.objective(theta, reml)
        state = (core.components(), core.l_values.copy(), core.lxx())
        core.objective(theta * 1.5 + 0.1, reml)   # move away, then come back by gradient
        value, _ = _gradient(model, theta)
        assert value == expected
        assert core.components() == state[0]
        np.testing.assert_array_equal(core.l_values, state[1])
        np.testing.assert_array_equal(core.lxx(), state[2])
        assert core.criterion(reml) == expected


# ------------------------------------------------- weights, offsets, boundary
@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("kind", ["weights", "offset", "both"])
def test_weights_and_offset(kind, reml):
    data = lmmfast.datasets.load("sleepstudy")
    rng = np.random.default_rng(3)
    kw = {}
    if kind in ("weights", "both"):
        kw["weights"] = rng.uniform(0.3, 3.0, len(data))
    if kind in ("offset", "both"):
        kw["offset"] = rng.normal(0.0, 20.0, len(data))
    model = _model("Reaction ~ 1 + Days + (1 + Days | Subject)", data, reml, **kw)
    plain = _model("Reaction ~ 1 + Days + (1 + Days | Subject)", data, reml)
    for theta in _random_thetas(model, 3, seed=2):
        grad = _assert_matches_differences(model, theta)
        assert not np.allclose(grad, _gradient(plain, theta)[1], rtol=1e-6)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("name,zero", [("sleep_slope", 0), ("sleep_slope", 2),
                                       ("sleep_slope", 1), ("penicillin", 1),
                                       ("pastes", 0), ("sleep_zerocorr", 1)])
def test_zero_component(name, zero, reml):
    """A component of theta at exactly 0: a diagonal entry of lambda (the
    boundary of eq. 24), or an off-diagonal one (sleep_slope's index 1).

    The criterion is defined and smooth across 0 (the core accepts a negative
    diagonal entry), so central differences apply; the one-sided check is a
    second-order forward difference, (-3 d(0) + 4 d(h) - d(2h)) / 2h, whose
    error is O(h^2) (a first-order one with a step small enough to hide the
    curvature would see the criterion's rounding errors, about 1e-13 of it).
    For a scalar term the criterion is even in its theta, and the derivative
    is exactly 0.
    """
    model = _suite_model(name, reml)
    for theta in _random_thetas(model, 2, seed=9):
        theta[zero] = 0.0
        grad = _assert_matches_differences(model, theta)
        base = model._core.objective(theta, reml)
        h = 1e-5
        up, up2 = theta.copy(), theta.copy()
        up[zero], up2[zero] = h, 2 * h
        forward = (-3 * base + 4 * model._core.objective(up, reml)
                   - model._core.objective(up2, reml)) / (2 * h)
        assert forward == pytest.approx(grad[zero], abs=1e-4 * max(np.max(np.abs(grad)), 1.0))
        if name in ("penicillin", "pastes", "sleep_zerocorr"):   # scalar terms
            assert abs(grad[zero]) <= 1e-12 * max(np.max(np.abs(grad)), 1.0)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_all_components_zero(reml):
    model = _suite_model("penicillin", reml)
    theta = np.zeros(model._core.n_theta)
    value, grad = _gradient(model, theta)
    assert value == model._core.objective(theta, reml)
    np.testing.assert_array_equal(grad, 0.0)


# ---------------------------------------------- larger terms and crossed designs
@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_three_random_effects(reml):
    model = _model("Reaction ~ 1 + Days + (1 + Days + I(Days^2) | Subject)",
                   lmmfast.datasets.load("sleepstudy"), reml)
    assert list(model._layout.k) == [3]
    for theta in _random_thetas(model, 3, seed=4):
        _assert_matches_differences(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("formula", list(CROSSED_FORMULAS.values()),
                         ids=list(CROSSED_FORMULAS))
def test_crossed_sparse_and_dense_blocks(formula, reml):
    model = crossed_model(formula, reml, 3000, (300, 50, 8))
    for theta in _random_thetas(model, 2, seed=8):
        _assert_matches_differences(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_dense_term_before_sparse_term(reml):
    """Term 1 dense next to term 0, term 2 sparse: rows of L_.0 out of order."""
    model = dense_before_sparse_model(reml, 1500, 30)
    for theta in _random_thetas(model, 2, seed=6):
        _assert_matches_differences(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_no_fixed_effects(reml):
    model = _model("Yield ~ 0 + (1 | Batch)", lmmfast.datasets.load("Dyestuff"), reml)
    assert model.p == 0
    for theta in _random_thetas(model, 2, seed=1):
        _assert_matches_differences(model, theta)


# --------------------------------------------------------------------- InstEval
@pytest.fixture(scope="module")
def insteval():
    dataset, formula = MODELS["insteval"]
    return _model(formula, lmmfast.datasets.load(dataset), True)


def test_insteval_at_lme4_optimum(insteval):
    lme4_theta = np.array([0.276495, 0.437366, 0.070602])   # s, d, dept
    theta = insteval._to_internal(lme4_theta)
    value, grad = _gradient(insteval, theta)
    assert value == insteval._core.objective(theta, True)
    # ~0 on the scale of the criterion (lme4 stops at a relative tolerance)
    assert np.max(np.abs(grad)) < 1e-6 * abs(value)


def test_insteval_away_from_optimum(insteval):
    theta = insteval._to_internal(np.array([0.5, 0.2, 0.3]))
    grad = _assert_matches_differences(insteval, theta)
    assert np.max(np.abs(grad)) > 100.0


# ---------------------------------------------------------------- edge cases
def test_failed_factorisation_gives_inf_and_nan():
    model = _suite_model("sleep_slope", True)
    lay = model._layout
    a = model._a.copy()
    xx = lay.block_a(a, lay.n_terms, lay.n_terms).reshape(lay.p1, lay.p1, order="F")
    xx[:, :] = 0.0                                   # X^T W X = 0: R_X does not exist
    lay.block_a(a, lay.n_terms, 0).reshape(lay.p1, -1, order="F")[:-1] = 0.0
    core = model._make_core(a)
    theta = np.array([1.0, 0.0, 1.0])
    grad = np.zeros(3)
    assert core.gradient(theta, True, grad) == np.inf
    assert core.objective(theta, True) == np.inf
    assert np.isnan(grad).all()
    assert core.last_info != 0


def test_argument_lengths():
    core = _suite_model("sleep_slope", True)._core
    with pytest.raises(ValueError):
        core.gradient(np.ones(2), True, np.zeros(3))
    with pytest.raises(ValueError):
        core.gradient(np.ones(3), True, np.zeros(2))


def test_gradient_alternates_with_ml_and_reml():
    """The work arrays are shared by both criteria: alternating calls agree with fresh ones."""
    model = _suite_model("pastes", True)
    theta = _random_thetas(model, 1, seed=3)[0]
    g_reml = _gradient(model, theta)[1]
    g_ml = np.zeros_like(g_reml)
    model._core.gradient(theta, False, g_ml)
    assert np.array_equal(_gradient(model, theta)[1], g_reml)
    fresh = _suite_model("pastes", False)
    assert np.array_equal(_gradient(fresh, theta)[1], g_ml)
