"""The fit over theta (eq. 24) and its optimisers: the default Newton steps
("quasi-newton") and BOBYQA, Nelder-Mead and L-BFGS-B, with the steps of the
sequence (``lmmfast.optimize.fit_theta``) that follow them.

The Newton steps are checked on every model of the reference suite against
lme4: an objective no worse than lme4's by more than 1e-6 relative, in no
more evaluations than lme4 used.  The boundary step and the exact-fit check
are checked after every optimiser.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from conftest import reference, reference_fit
from lmmfast.errors import ConvergenceWarning, FitError, LmmWarning
from lmmfast.optimize import OPTIMIZERS, OptSummary


CASES = [(m, k) for m in reference()["models"] for k in ("REML", "ML")]
IDS = [f"{m}-{k}" for m, k in CASES]


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


def test_boundary_step_takes_a_diagonal_element_to_zero_where_no_worse():
    """Step 4 (compiled, ``Optimum.boundary_step``): a diagonal element of lambda
    in (0, 1e-5) is tried at 0 and kept there where the criterion is no worse;
    an off-diagonal element or a larger one is left alone; the factor is left
    at the result."""
    fit = lmmfast.LinearMixedModel("Yield ~ 1 + (1 | Batch)", lmmfast.datasets.load("Dyestuff2"))
    plan = fit._optimum()
    f = fit.criterion([3e-6])
    theta, d, trials = plan.boundary_step(np.array([3e-6]), f)
    assert theta.tolist() == [0.0] and trials == 1
    assert d == fit.criterion([0.0]) and d <= f
    assert fit._core.objective(np.zeros(1), True) == d
    theta, d, trials = plan.boundary_step(np.array([2e-5]), fit.criterion([2e-5]))
    assert theta.tolist() == [2e-5] and trials == 0
    slope = lmmfast.LinearMixedModel("Reaction ~ Days + (Days | Subject)",
                                     lmmfast.datasets.load("sleepstudy"))
    start = np.array([0.9, 3e-6, 0.2])   # the off-diagonal element is not bounded
    theta, d, trials = slope._optimum().boundary_step(start, slope.criterion(start))
    assert theta.tolist() == start.tolist() and trials == 0
    # a diagonal element where 0 is worse stays
    good = reference_fit("dyestuff", "REML")
    theta0 = good.theta.to_numpy()
    theta, d, trials = good.copy()._optimum().boundary_step(theta0 * 0 + 5e-6, 1.0)
    assert theta.tolist() == [5e-6] and trials == 1 and d == 1.0


@pytest.mark.parametrize("optimizer", ["quasi-newton", "bobyqa", "nelder-mead"])
def test_every_optimizer_ends_with_the_boundary_step(optimizer):
    """An optimiser stopped at theta = 3e-6 (one evaluation; for the Newton steps
    the BOBYQA fallback too): the boundary step takes theta to exactly 0, where
    Dyestuff2's criterion is lower, and counts its evaluation."""
    m = lmmfast.LinearMixedModel("Yield ~ 1 + (1 | Batch)", lmmfast.datasets.load("Dyestuff2"))
    with pytest.warns(ConvergenceWarning, match="MAXEVAL_REACHED"):
        m.fit(optimizer=optimizer, start=[3e-6], maxeval=1)
    assert m.theta.tolist() == [0.0]
    assert m.objective == m.criterion([0.0]) < m.criterion([3e-6])
    assert m.optsum.fmin == m.objective


EXACT = pd.DataFrame({"y": [1.0, 1, 1, 2, 2, 2, 4, 4, 4, 3, 3, 3], "g": list("aaabbbcccddd")})


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_exact_fit_is_a_fit_error_after_every_optimizer(optimizer, reml):
    """Step 5: y constant within the groups of g is fitted exactly by X and Z;
    whichever optimiser ran, the fit raises a FitError saying so."""
    m = lmmfast.LinearMixedModel("y ~ 1 + (1 | g)", EXACT, reml=reml)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        with pytest.raises(FitError, match="residual variance is estimated as zero: the "
                                           "response 'y' is fitted exactly"):
            m.fit(optimizer=optimizer)


def test_no_exact_fit_check_without_symptoms(monkeypatch):
    """The rows are checked for an exact fit (LSQR) only where the fit shows its
    symptoms: never for a fit that converged inside."""
    import lmmfast.optimize as optimize

    def fail(model):
        raise AssertionError("exact_fit called")
    monkeypatch.setattr(optimize, "exact_fit", fail)
    for optimizer in OPTIMIZERS:
        lmmfast.LinearMixedModel("Yield ~ 1 + (1 | Batch)",
                                 lmmfast.datasets.load("Dyestuff")).fit(optimizer=optimizer)


def test_runaway_theta_is_suspect():
    """``Optimum.suspect``: a criterion that is not finite, or theta / scale above
    1e3, are the symptoms that step 5 checks."""
    fit = reference_fit("dyestuff", "REML")
    plan = fit.copy()._optimum()
    scale = fit._scale[0]
    assert not plan.suspect(np.array([999.0 * scale]), 1.0)
    assert plan.suspect(np.array([1001.0 * scale]), 1.0)
    assert plan.suspect(np.array([1.0]), np.inf)
    assert plan.suspect(np.array([1.0]), np.nan)
