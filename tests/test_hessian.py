"""The approximate Hessian of the profiled criteria, ``BlockedCholesky.derivatives``.

The Hessian of eq. 70 (the average information, a Schur complement profiling
sigma^2 out, and the exact second-order term 2 G_t of the chain rule through
Psi_t = lambda_t lambda_t^T) is checked against ``dense_ai_hessian`` of
tests/dense_reference.py, an independent dense implementation of the formula,
to 1e-7 of max|H|: on every reference-suite model but InstEval (REML and ML,
at two theta away from the optimum), with prior weights and an offset, for a
term with three random effects, for terms whose internal order differs from
lme4's, without fixed effects, and on crossed designs whose off-diagonal
blocks of L are sparse and dense.

At the fitted optimum the Hessian measured by central differences of the
analytic gradient (steps 1e-5 max(|theta_i|, 1)) is H plus the part of the
exact Hessian that the average information leaves out,
nu (2 w_m^T P0 w_n - w_m^T P w_n) / r^2 - tr(P Vdot_m P Vdot_n)
(computed densely here; zero in expectation over y, and zero at the optimum for
the balanced, unstructured models of the suite): to 1e-5 of max|H| everywhere,
and H alone to 1e-4 except for the three fits (sleep_zerocorr REML and ML,
penicillin ML) where that part is about 2e-3 of max|H| at the optimum.

The term 2 G_t (H minus the dense average-information part) is checked against
G_t from central differences of ``dense_criterion`` in the entries of Psi_t,
and for scalar terms against g_m / theta_m; it is left out for a term with a
zero on lambda's diagonal.  ``derivatives`` returns the value of ``objective``
and the gradient of ``gradient`` (bit for bit), an exactly symmetric H, leaves
the factor alone, repeats exactly, serves ML and REML from one factor, returns
+inf and NaN after a failed factorisation, and rejects wrong shapes.
Everything is compared in lme4's theta order, converted from the core's
internal order with ``model._theta_perm``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

import lmmfast
from dense_reference import (dense_ai_hessian, dense_criterion, dense_Lambda,
                             dense_Z, lower_triangular_factor, term_dimensions)
from lmmfast.model import LinearMixedModel
from designs import CROSSED_FORMULAS, MODELS, crossed_model, dense_before_sparse_model


SMALL = [name for name in MODELS if name != "insteval"]
FITS = [True, False]
FIT_IDS = ["REML", "ML"]
RTOL_DENSE = 1e-7        # core against the dense formula, relative to max|H|
RTOL_OPTIMUM = 1e-4      # H against differences of the gradient at the optimum
RTOL_EXACT = 1e-5        # H + the left-out part against differences of the gradient
STEP = 1e-5
# fits whose optimum the average information does not reproduce to RTOL_OPTIMUM
# (relative discrepancy about 2e-3): see _left_out_part
INEXACT_AT_OPTIMUM = {("sleep_zerocorr", True), ("sleep_zerocorr", False),
                      ("penicillin", False)}


def _model(formula, data, reml, **kw) -> LinearMixedModel:
    return LinearMixedModel(formula, data, reml=reml, **kw)


@lru_cache(maxsize=None)
def _suite_model(name: str, reml: bool) -> LinearMixedModel:
    dataset, formula = MODELS[name]
    return _model(formula, lmmfast.datasets.load(dataset), reml)


@lru_cache(maxsize=None)
def _suite_fit(name: str, reml: bool) -> LinearMixedModel:
    dataset, formula = MODELS[name]
    return lmmfast.lmer(formula, lmmfast.datasets.load(dataset), reml=reml)


def _terms(model: LinearMixedModel) -> list:
    """The dense reference's terms, in lme4's order (that of ``model.remats``)."""
    return [(r.refs, r.z, r.nlevels) for r in model.remats]


def _to_lme4(model: LinearMixedModel, grad: np.ndarray, hess: np.ndarray | None):
    perm = model._theta_perm
    g = np.empty_like(grad)
    g[perm] = grad
    if hess is None:
        return g, None
    h = np.empty_like(hess)
    h[np.ix_(perm, perm)] = hess
    return g, h


def _derivatives(model: LinearMixedModel, theta: np.ndarray, hess: bool = True):
    """Factorise at ``theta`` (lme4 order), then ``derivatives``: (value, g, H) in
    lme4's order.  A fitted model's factor is put back at its optimum."""
    core, n = model._core, len(theta)
    core.objective(model._to_internal(theta), model.reml)
    grad = np.full(n, np.nan)
    h = np.full((n, n), np.nan) if hess else None
    value = core.derivatives(model.reml, grad, h)
    if model._theta is not None:
        core.update(model._to_internal(model._theta))
    return (value, *_to_lme4(model, grad, h))


def _dense(model: LinearMixedModel, theta: np.ndarray, **kw) -> np.ndarray:
    return dense_ai_hessian(model.x, model.y, _terms(model), np.asarray(theta, dtype=float),
                            model.reml, model.weights, model.offset, **kw)


def _assert_matches_dense(model, theta, rtol=RTOL_DENSE):
    value, grad, hess = _derivatives(model, theta)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))
    expected = _dense(model, theta)
    scale = np.max(np.abs(expected))
    if scale == 0.0:                               # all of theta at 0
        np.testing.assert_array_equal(hess, 0.0)
        return hess
    err = np.max(np.abs(hess - expected)) / scale
    assert err <= rtol, f"H\n{hess}\nvs dense\n{expected}\nrelative error {err:.3g}"
    return hess


def _random_thetas(model: LinearMixedModel, n: int, seed: int) -> list[np.ndarray]:
    """Points in the feasible region, lme4 order (diagonal entries > 0)."""
    rng = np.random.default_rng(seed)
    diag = np.isfinite(model.lower_bounds)
    return [np.where(diag, rng.uniform(0.1, 2.0, diag.size), rng.normal(0.0, 0.5, diag.size))
            for _ in range(n)]


def _gradient_differences(model: LinearMixedModel, theta: np.ndarray,
                          step: float = STEP) -> np.ndarray:
    """Central differences of ``criterion_gradient``, column i = d grad / d theta_i."""
    n = len(theta)
    out = np.empty((n, n))
    for i in range(n):
        h = step * max(abs(theta[i]), 1.0)
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        out[:, i] = (model.criterion_gradient(up)[1] - model.criterion_gradient(down)[1]) / (2 * h)
    return out


def _left_out_part(model: LinearMixedModel, theta: np.ndarray) -> np.ndarray:
    """Exact Hessian minus eq. 70, densely, in the weighted space.

    With V0 = I + Z Lambda Lambda^T Z^T, which is linear in Psi,
    Vdot_m = Z D_m Z^T, s = V0^-1 (y - X beta_hat), Q = s^T (y - X beta_hat) = r^2,
    w_m = Vdot_m s, P0 the REML projection and P = P0 (REML) or V0^-1 (ML), the
    criterion nu log Q + log|V0| (+ log|X^T V0^-1 X|) has the second derivatives
    nu (2 w_m^T P0 w_n / Q - (s^T w_m)(s^T w_n) / Q^2) - tr(P Vdot_m P Vdot_n)
    along D_m, D_n; eq. 70 keeps nu w_m^T P w_n / Q of the first term (and the
    second-order term of Psi(theta) exactly), so this returns
    nu (2 w_m^T P0 w_n - w_m^T P w_n) / Q - tr(P Vdot_m P Vdot_n).
    """
    X, y, terms = model.x, model.y, _terms(model)
    n, p = X.shape
    weights = np.ones(n) if model.weights is None else model.weights
    offset = np.zeros(n) if model.offset is None else model.offset
    sqrt_w = np.sqrt(weights)
    Z = dense_Z(terms, n) * sqrt_w[:, None]
    Xw = X * sqrt_w[:, None]
    yw = (y - offset) * sqrt_w
    Lambda = dense_Lambda(terms, theta)
    ZL = Z @ Lambda
    V0_inv = np.linalg.inv(ZL @ ZL.T + np.eye(n))
    V0_inv_X = V0_inv @ Xw
    P0 = V0_inv - V0_inv_X @ np.linalg.solve(Xw.T @ V0_inv_X, V0_inv_X.T)
    s = P0 @ yw
    Q = s @ yw
    nu = n - p if model.reml else n
    vdots = []
    for m in range(len(theta)):
        unit = np.zeros(len(theta))
        unit[m] = 1.0
        E = dense_Lambda(terms, unit)
        vdots.append(Z @ (E @ Lambda.T + Lambda @ E.T) @ Z.T)
    W = np.column_stack([vdot @ s for vdot in vdots])
    P = P0 if model.reml else V0_inv
    PV = [P @ vdot for vdot in vdots]
    trace = np.array([[np.sum(a * b.T) for b in PV] for a in PV])
    return nu * (2.0 * W.T @ P0 @ W - W.T @ P @ W) / Q - trace


def _psi_difference_G(model: LinearMixedModel, theta: np.ndarray, term: int,
                      rel_step: float = 1e-4) -> np.ndarray:
    """G_t = d criterion / d Psi_t by central differences of ``dense_criterion``.

    Psi_t = lambda_t lambda_t^T is perturbed symmetrically (both (a, b) and
    (b, a) for an off-diagonal entry, whose derivative is then halved) and
    mapped back to theta by its Cholesky factor.
    """
    terms = _terms(model)
    start = sum(term_dimensions(t)[1] * (term_dimensions(t)[1] + 1) // 2 for t in terms[:term])
    k = term_dimensions(terms[term])[1]
    size = k * (k + 1) // 2
    lam = lower_triangular_factor(theta[start:start + size], k)
    psi = lam @ lam.T
    h = rel_step * np.max(np.abs(psi))

    def criterion(psi_new):
        chol = np.linalg.cholesky(psi_new)
        th = theta.copy()
        th[start:start + size] = [chol[i, j] for j in range(k) for i in range(j, k)]
        return dense_criterion(model.x, model.y, terms, th, model.reml,
                               model.weights, model.offset)["objective"]

    G = np.empty((k, k))
    for a in range(k):
        for b in range(a + 1):
            E = np.zeros((k, k))
            E[a, b] = E[b, a] = 1.0
            d = (criterion(psi + h * E) - criterion(psi - h * E)) / (2 * h)
            G[a, b] = G[b, a] = d if a == b else d / 2
    return G


# ------------------------------------------------------------ the reference suite
@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("name", SMALL)
def test_hessian_matches_dense_formula(name, reml):
    fit = _suite_fit(name, reml)
    model = _suite_model(name, reml)
    theta_hat = fit.theta.to_numpy()
    for theta in [theta_hat * 1.3 + 0.05] + _random_thetas(model, 1, seed=17):
        _assert_matches_dense(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("name", [n for n in SMALL if n != "dyestuff2"])
def test_hessian_at_the_optimum_matches_differences(name, reml):
    """At the optimum, central differences of the gradient are H plus the
    left-out part, and (but for INEXACT_AT_OPTIMUM) H alone."""
    fit = _suite_fit(name, reml)
    theta = fit.theta.to_numpy()
    assert np.all(np.abs(theta[np.isfinite(fit.lower_bounds)]) > 1e-3)   # interior
    value, grad, hess = _derivatives(fit, theta)
    assert value == pytest.approx(fit.objective, rel=1e-12)
    fd = _gradient_differences(fit, theta)
    scale = np.max(np.abs(hess))
    left_out = _left_out_part(fit, theta)
    err_exact = np.max(np.abs(hess + left_out - fd)) / scale
    assert err_exact <= RTOL_EXACT, f"H + left-out part vs differences: {err_exact:.3g}"
    err = np.max(np.abs(hess - fd)) / scale
    if (name, reml) in INEXACT_AT_OPTIMUM:
        assert err > RTOL_OPTIMUM, "the list INEXACT_AT_OPTIMUM is stale"
    else:
        assert err <= RTOL_OPTIMUM, f"H\n{hess}\nvs differences\n{fd}\nrelative error {err:.3g}"


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_left_out_part_away_from_the_optimum(reml):
    """Away from the optimum H is not the Hessian, and H + the left-out part is."""
    model = _suite_model("sleep_slope", reml)
    theta = np.array([0.5, -0.2, 0.4])
    _, _, hess = _derivatives(model, theta)
    fd = _gradient_differences(model, theta)
    scale = np.max(np.abs(fd))
    assert np.max(np.abs(hess - fd)) / scale > 0.1
    assert np.max(np.abs(hess + _left_out_part(model, theta) - fd)) / scale <= RTOL_EXACT


# ------------------------------------------------------------ the term 2 G_t
@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_second_order_term_is_twice_G(reml):
    """H - (dense AI part) = 2 G[a, b] for two entries of one column of lambda, else 0."""
    model = _suite_model("sleep_slope", reml)
    theta = np.array([0.5, -0.2, 0.4])          # lambda11, lambda21, lambda22
    _, _, hess = _derivatives(model, theta)
    C = hess - _dense(model, theta, curvature=False)
    G = _psi_difference_G(model, theta, 0)
    expected = np.zeros((3, 3))
    expected[:2, :2] = 2 * G                    # column 0: rows 0, 1
    expected[2, 2] = 2 * G[1, 1]                # column 1: row 1
    scale = np.max(np.abs(expected))
    assert scale > 1.0
    err = np.max(np.abs(C - expected)) / scale
    assert err <= 1e-6, f"H - AI part\n{C}\nvs 2G\n{expected}\nrelative error {err:.3g}"


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("name", ["penicillin", "pastes", "sleep_zerocorr"])
def test_second_order_term_of_scalar_terms(name, reml):
    """For a scalar term C_mm = g_m / theta_m, and C has no off-diagonal entries."""
    model = _suite_model(name, reml)
    theta = _random_thetas(model, 1, seed=23)[0]
    _, grad, hess = _derivatives(model, theta)
    C = hess - _dense(model, theta, curvature=False)
    scale = np.max(np.abs(hess))
    np.testing.assert_allclose(C, np.diag(grad / theta), rtol=0, atol=RTOL_DENSE * scale)
    assert np.max(np.abs(grad / theta)) > 1e-3 * scale


# ------------------------------------------------- weights, offsets, other designs
@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_weights_and_offset(reml):
    data = lmmfast.datasets.load("sleepstudy")
    rng = np.random.default_rng(3)
    formula = "Reaction ~ 1 + Days + (1 + Days | Subject)"
    model = _model(formula, data, reml, weights=rng.uniform(0.3, 3.0, len(data)),
                   offset=rng.normal(0.0, 20.0, len(data)))
    plain = _suite_model("sleep_slope", reml)
    for theta in _random_thetas(model, 2, seed=2):
        hess = _assert_matches_dense(model, theta)
        assert not np.allclose(hess, _derivatives(plain, theta)[2], rtol=1e-3)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_three_random_effects(reml):
    model = _model("Reaction ~ 1 + Days + (1 + Days + I(Days^2) | Subject)",
                   lmmfast.datasets.load("sleepstudy"), reml)
    assert list(model._layout.k) == [3]
    for theta in _random_thetas(model, 2, seed=4):
        _assert_matches_dense(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_internal_order_differs(reml):
    """lme4 puts the intercept term first (formula order), the core the k = 2 term."""
    model = _model("Reaction ~ 1 + Days + (1 | Subject) + (0 + Days + I(Days^2) | Subject)",
                   lmmfast.datasets.load("sleepstudy"), reml)
    assert list(model._theta_perm) == [1, 2, 3, 0]
    for theta in _random_thetas(model, 2, seed=12):
        _assert_matches_dense(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("formula", ["Yield ~ 0 + (1 | Batch)",
                                     "Reaction ~ 0 + (1 + Days | Subject)"],
                         ids=["scalar", "vector"])
def test_no_fixed_effects(formula, reml):
    name = "Dyestuff" if "Yield" in formula else "sleepstudy"
    model = _model(formula, lmmfast.datasets.load(name), reml)
    assert model.p == 0
    for theta in _random_thetas(model, 2, seed=1):
        _assert_matches_dense(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("formula", list(CROSSED_FORMULAS.values()),
                         ids=list(CROSSED_FORMULAS))
def test_crossed_sparse_and_dense_blocks(formula, reml):
    model = crossed_model(formula, reml, 600, (210, 50, 8))
    for theta in _random_thetas(model, 2, seed=8):
        _assert_matches_dense(model, theta)


@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
def test_dense_term_before_sparse_term(reml):
    """Term 1 dense next to term 0, term 2 sparse; internal order is not lme4's."""
    model = dense_before_sparse_model(reml, 600, 40)
    assert not np.array_equal(model._theta_perm, np.arange(8))
    for theta in _random_thetas(model, 2, seed=6):
        _assert_matches_dense(model, theta)


# ---------------------------------------------------------------- the call itself
@pytest.mark.parametrize("name", ["sleep_slope", "pastes", "cake"])
def test_value_gradient_and_factor(name):
    model = _suite_model(name, True)
    core, n = model._core, model._core.n_theta
    theta = model._to_internal(_random_thetas(model, 1, seed=5)[0])
    grad_ref = np.full(n, np.nan)
    value_ref = core.gradient(theta, True, grad_ref)
    core.objective(theta * 1.5 + 0.1, True)       # move away, then come back by objective
    expected = core.objective(theta, True)
    assert expected == value_ref
    state = (core.components(), core.l_values.copy(), core.lxx())
    grad, hess = np.full(n, np.nan), np.full((n, n), np.nan)
    assert core.derivatives(True, grad, hess) == expected
    np.testing.assert_array_equal(grad, grad_ref)
    np.testing.assert_array_equal(hess, hess.T)
    assert core.components() == state[0]
    np.testing.assert_array_equal(core.l_values, state[1])
    np.testing.assert_array_equal(core.lxx(), state[2])
    assert core.criterion(True) == expected
    # without hess, and again: the same numbers
    grad2 = np.full(n, np.nan)
    assert core.derivatives(True, grad2) == expected
    np.testing.assert_array_equal(grad2, grad_ref)
    grad3, hess3 = np.full(n, np.nan), np.full((n, n), np.nan)
    assert core.derivatives(True, grad3, hess3) == expected
    np.testing.assert_array_equal(grad3, grad_ref)
    np.testing.assert_array_equal(hess3, hess)


@pytest.mark.parametrize("first", FITS, ids=["REML-first", "ML-first"])
def test_ml_and_reml_from_one_factor(first):
    """One factor serves both criteria; the gradient cached for one flag is not
    reused for the other."""
    reml_model, ml_model = _suite_model("sleep_slope", True), _suite_model("sleep_slope", False)
    core, n = reml_model._core, 3
    theta = np.array([0.8, 0.3, 0.5])
    internal = reml_model._to_internal(theta)
    expected = {}
    for reml, model in [(True, reml_model), (False, ml_model)]:
        grad = np.full(n, np.nan)
        value = ml_model._core.gradient(internal, reml, grad)   # another core
        expected[reml] = (value, grad, _dense(model, theta))
    core.gradient(internal, first, np.empty(n))                # caches `first`'s gradient
    for reml in [not first, first, not first]:
        grad, hess = np.full(n, np.nan), np.full((n, n), np.nan)
        value = core.derivatives(reml, grad, hess)
        assert value == expected[reml][0]
        np.testing.assert_array_equal(grad, expected[reml][1])
        dense = expected[reml][2]
        _, hess_lme4 = _to_lme4(reml_model, grad, hess)
        assert np.max(np.abs(hess_lme4 - dense)) <= RTOL_DENSE * np.max(np.abs(dense))
    assert not np.allclose(expected[True][2], expected[False][2], rtol=1e-3)


def test_failed_factorisation_gives_inf_and_nan():
    model = _suite_model("sleep_slope", True)
    lay = model._layout
    a = model._a.copy()
    xx = lay.block_a(a, lay.n_terms, lay.n_terms).reshape(lay.p1, lay.p1, order="F")
    xx[:, :] = 0.0                                   # X^T W X = 0: R_X does not exist
    lay.block_a(a, lay.n_terms, 0).reshape(lay.p1, -1, order="F")[:-1] = 0.0
    core = model._make_core(a)
    assert core.objective(np.array([1.0, 0.0, 1.0]), True) == np.inf
    assert core.last_info != 0
    for reml in FITS:
        grad, hess = np.zeros(3), np.zeros((3, 3))
        assert core.derivatives(reml, grad, hess) == np.inf
        assert np.isnan(grad).all() and np.isnan(hess).all()


def test_nan_theta_gives_inf_and_nan():
    core = _suite_model("sleep_slope", True)._core
    assert core.objective(np.array([np.nan, 0.0, 1.0]), True) == np.inf
    assert core.last_info != 0
    grad, hess = np.zeros(3), np.zeros((3, 3))
    assert core.derivatives(True, grad, hess) == np.inf
    assert np.isnan(grad).all() and np.isnan(hess).all()
    grad = np.zeros(3)
    assert core.derivatives(False, grad) == np.inf
    assert np.isnan(grad).all()
    core.objective(np.array([1.0, 0.0, 1.0]), True)  # a valid factor again
    assert np.isfinite(core.derivatives(True, grad, hess))
    assert np.isfinite(hess).all()


@pytest.mark.parametrize("grad,hess", [
    (np.zeros(2), None),
    (np.zeros(4), np.zeros((3, 3))),
    (np.zeros(3), np.zeros((3, 4))),
    (np.zeros(3), np.zeros((2, 3))),
    (np.zeros(3), np.zeros(9)),
    (np.zeros(3), np.zeros((3, 3), order="F")),
], ids=["grad-short", "grad-long", "hess-wide", "hess-short", "hess-flat", "hess-fortran"])
def test_argument_shapes(grad, hess):
    core = _suite_model("sleep_slope", True)._core
    core.objective(np.array([1.0, 0.0, 1.0]), True)
    with pytest.raises(ValueError):
        core.derivatives(True, grad, hess)
    core.objective(np.array([np.nan, 0.0, 1.0]), True)   # also after a failed factorisation
    with pytest.raises(ValueError):
        core.derivatives(True, grad, hess)


# --------------------------------------------------- a zero on lambda's diagonal
@pytest.mark.parametrize("reml", FITS, ids=FIT_IDS)
@pytest.mark.parametrize("name,theta", [
    ("sleep_slope", [0.0, 0.1, 0.3]),
    ("sleep_slope", [0.5, 0.1, 0.0]),
    ("penicillin", [0.0, 1.2]),
    ("pastes", [1.0, 0.0]),
    ("penicillin", [0.0, 0.0]),
    ("sleep_zerocorr", [0.7, 0.0]),
])
def test_zero_on_the_diagonal(name, theta, reml):
    """C is left out for a term with a zero on lambda's diagonal (the dense
    reference does the same), kept for the other terms; H is finite."""
    model = _suite_model(name, reml)
    theta = np.array(theta)
    hess = _assert_matches_dense(model, theta)
    ai_part = _dense(model, theta, curvature=False)
    terms = _terms(model)
    scale = max(np.max(np.abs(ai_part)), 1.0)
    start = 0
    for term in terms:                             # C is 0 where lambda is singular
        k = term_dimensions(term)[1]
        idx = slice(start, start + k * (k + 1) // 2)
        if np.any(np.diag(lower_triangular_factor(theta[idx], k)) == 0):
            np.testing.assert_allclose(hess[idx, idx], ai_part[idx, idx], rtol=0,
                                       atol=RTOL_DENSE * scale)
            if k == 1:                             # a scalar term at 0: no curvature at all
                np.testing.assert_array_equal(hess[idx], 0.0)
                np.testing.assert_array_equal(hess[:, idx], 0.0)
        start = idx.stop
