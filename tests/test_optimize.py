"""The optimisers of eq. 24: quasi-Newton on the analytic gradient (default) and BOBYQA.

The quasi-Newton method is checked on functions with known minima, then on
every model of the reference suite against lme4: an objective no worse than
lme4's by more than 1e-6 relative, in no more evaluations than lme4 used.
"""

from __future__ import annotations

import numpy as np
import pytest

import lmmfast
from conftest import reference, reference_fit
from lmmfast.optimize import OptSummary, quasi_newton

CASES = [(m, k) for m in reference()["models"] for k in ("REML", "ML")]
IDS = [f"{m}-{k}" for m, k in CASES]


def _quadratic(c, a):
    c, a = np.asarray(c, float), np.asarray(a, float)
    return lambda x: (float(np.sum(c * (x - a) ** 2)), 2 * c * (x - a))


def test_ill_scaled_quadratic_converges_fast():
    fg = _quadratic([1e4, 1e2, 1.0], [0.3, 2.0, -0.5])
    s = quasi_newton(fg, OptSummary(np.ones(3), np.full(3, -np.inf)))
    assert s.converged, s.return_code
    np.testing.assert_allclose(s.final, [0.3, 2.0, -0.5], atol=1e-6)
    assert s.n_evals <= 15


def test_rosenbrock():
    def fg(x):
        a, b = x
        f = 100 * (b - a * a) ** 2 + (1 - a) ** 2
        return f, np.array([-400 * a * (b - a * a) - 2 * (1 - a), 200 * (b - a * a)])
    s = quasi_newton(fg, OptSummary(np.array([-1.2, 1.0]), np.full(2, -np.inf),
                                    maxeval=500))
    assert s.converged, s.return_code
    np.testing.assert_allclose(s.final, [1.0, 1.0], atol=1e-5)


def test_given_inverse_hessian_is_used():
    c = np.array([50.0, 2.0])
    fg = _quadratic(c, [1.5, -1.0])
    exact = np.diag(2 * c)
    s = quasi_newton(fg, OptSummary(np.array([1.7, -0.9]), np.full(2, -np.inf),
                                    hessian=exact))
    assert s.n_evals <= 3
    np.testing.assert_allclose(s.final, [1.5, -1.0], atol=1e-10)
    with pytest.raises(ValueError, match="hessian"):
        quasi_newton(fg, OptSummary(np.zeros(2), np.full(2, -np.inf),
                                    hessian=np.eye(3)))


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_no_more_evaluations_than_lme4(model, kind):
    fit = reference_fit(model, kind)
    ref = reference()["models"][model]["fits"][kind]
    assert fit.optsum.optimizer == "quasi-newton"
    assert fit.objective <= ref["objective"] + 1e-6 * abs(ref["objective"])
    assert fit.n_evals <= ref["feval"], (fit.n_evals, ref["feval"], fit.optimizer_message)


@pytest.mark.parametrize("model,kind", [c for c in CASES if c[0] != "insteval"],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] != "insteval"])
def test_bobyqa_and_quasi_newton_agree(model, kind):
    fit = reference_fit(model, kind)
    spec = reference()["models"][model]
    other = lmmfast.LinearMixedModel(spec["formula"], lmmfast.datasets.load(spec["dataset"]),
                                     reml=(kind == "REML")).fit(optimizer="bobyqa")
    assert other.optsum.optimizer == "bobyqa"
    assert abs(fit.objective - other.objective) <= 1e-8 * abs(other.objective)
    np.testing.assert_allclose(fit.theta, other.theta, rtol=1e-4, atol=1e-6)


def test_start_on_a_zero_column_still_finds_an_interior_optimum():
    """theta = 0 is stationary for a scalar term; a start there must not stick."""
    ref = reference()["models"]["sleep_int"]["fits"]["REML"]
    fit = lmmfast.LinearMixedModel("Reaction ~ 1 + Days + (1 | Subject)",
                                   lmmfast.datasets.load("sleepstudy")).fit(start=[0.0])
    assert fit.objective <= ref["objective"] + 1e-6 * abs(ref["objective"])
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-4)


def test_negative_diagonal_is_flipped_to_lme4s_parameterisation():
    fit = lmmfast.LinearMixedModel("Reaction ~ 1 + Days + (1 + Days | Subject)",
                                   lmmfast.datasets.load("sleepstudy"))
    theta, signs = fit._optimum().canonical(np.array([-0.9, 0.02, 0.2]))
    np.testing.assert_array_equal(theta, [0.9, -0.02, 0.2])
    np.testing.assert_array_equal(signs, [-1, -1, 1])
    assert fit.criterion(theta) == pytest.approx(fit.criterion([-0.9, 0.02, 0.2]), rel=1e-12)
    theta, _ = fit._optimum().canonical(np.array([0.9, 0.02, -0.2]))
    np.testing.assert_array_equal(theta, [0.9, 0.02, 0.2])


def test_refit_to_the_same_response_starts_at_the_optimum():
    fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)",
                       lmmfast.datasets.load("sleepstudy"))
    again = fit.copy().refit(fit.y)
    assert again.n_evals <= 3
    assert again.objective == pytest.approx(fit.objective, rel=1e-12)


def test_unknown_optimizer():
    m = lmmfast.LinearMixedModel("Yield ~ 1 + (1 | Batch)", lmmfast.datasets.load("Dyestuff"))
    with pytest.raises(ValueError, match="optimizer must be"):
        m.fit(optimizer="newton")


def test_criterion_gradient_in_lme4_order():
    """Penicillin's two terms are reordered internally; the gradient comes back in
    lme4's order and agrees with central differences of ``criterion``."""
    fit = reference_fit("penicillin", "REML")
    theta = fit.theta.to_numpy() * np.array([1.3, 0.7])
    value, grad = fit.criterion_gradient(theta)
    assert value == fit.criterion(theta)
    h = 1e-4   # the truncation error (h^2) and the rounding error (1e-13 / h) both below rtol
    fd = [(fit.criterion(theta + h * e) - fit.criterion(theta - h * e)) / (2 * h)
          for e in np.eye(2)]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
    before = fit.objective
    fit.criterion_gradient(theta)
    assert fit.fixef.iloc[0] == pytest.approx(reference_fit("penicillin", "REML").fixef.iloc[0])
    assert fit.objective == before
    with pytest.raises(ValueError, match="length"):
        fit.criterion_gradient([1.0])


def test_refits_reuse_the_objective_and_copies_get_their_own():
    """A refit in place reuses the compiled objective (and its buffers); a copy
    evaluates its own core; the B returned is not the reused buffer."""
    data = lmmfast.datasets.load("sleepstudy")
    fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)", data)
    first = fit._evaluator
    assert first.serves(fit._core, True) and not first.serves(fit._core, False)
    b_first = fit.optsum.hessian
    b_saved = b_first.copy()
    rng = np.random.default_rng(3)
    y_new = fit.y + rng.normal(0, 25, fit.nobs)
    fit.refit(y_new)
    assert fit._evaluator is first
    np.testing.assert_array_equal(b_first, b_saved)
    other = fit.copy()
    assert "_evaluator" not in other.__dict__
    other.refit(data["Reaction"].to_numpy())
    assert other._evaluator is not first and other._evaluator.serves(other._core, True)
    assert fit.objective == pytest.approx(
        lmmfast.LinearMixedModel("Reaction ~ 1 + Days + (1 + Days | Subject)",
                                 data.assign(Reaction=y_new)).fit().objective, rel=1e-10)
    assert other.objective == pytest.approx(1743.6282719599, rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 12])
def test_step_eigendecomposition(n):
    """The trust-region step's eigendecomposition (Jacobi sweeps up to order 8,
    LAPACK above) against numpy: ascending eigenvalues, orthonormal vectors that
    reproduce the matrix, also for repeated and zero eigenvalues."""
    from lmmfast._trust_region import symmetric_eigen
    rng = np.random.default_rng(n)
    g = rng.normal(size=(n, n))
    cases = [g + g.T, g @ g.T, np.eye(n) * 3.0, np.zeros((n, n))]
    if n >= 2:
        q, _ = np.linalg.qr(g)
        cases.append(q @ np.diag([1.0] * (n - 1) + [-2.0]) @ q.T)   # a repeated eigenvalue
    for a in cases:
        lam, v = symmetric_eigen(a)
        scale = max(np.abs(a).max(), 1.0)
        np.testing.assert_allclose(lam, np.linalg.eigvalsh(a), atol=1e-13 * scale)
        np.testing.assert_allclose(v.T @ v, np.eye(n), atol=1e-13)
        np.testing.assert_allclose(v @ np.diag(lam) @ v.T, a, atol=1e-13 * scale)


@pytest.mark.parametrize("model, kind", [("insteval", "REML"), ("insteval", "ML"),
                                         ("sleep_slope", "ML"), ("penicillin", "REML"),
                                         ("cake", "REML")])
def test_last_newton_step_needs_no_derivatives(model, kind):
    """Where two Newton steps show the gap left below the tolerance, the run stops
    at the accepted point without its derivatives (eq. 69, stopping): one
    evaluation of the derivatives fewer than of the criterion, and at that point
    the Newton decrease that the skipped derivatives predict is below the
    stopping threshold, so they would have stopped the run there too."""
    import math
    fit = reference_fit(model, kind)
    reml = kind == "REML"
    assert fit.optsum.return_code == "FTOL_REACHED"
    assert fit.optsum.n_gradients == fit.n_evals - 1
    n = len(fit._theta)
    core, theta = fit._core, fit._to_internal(fit._theta)
    grad, hess = np.empty(n), np.empty((n, n))
    assert core.objective(theta, reml) == pytest.approx(fit.objective, rel=1e-12)   # (BLAS threads)
    core.derivatives(reml, grad, hess)
    scale = fit._to_internal(fit._scale)
    gx, hx = grad * scale, hess * np.outer(scale, scale)
    predicted = 0.5 * gx @ np.linalg.solve(hx, gx)
    assert 0 <= predicted <= 0.1 * OptSummary.ftol_rel * fit.nobs * (1 + math.log(2 * math.pi))
