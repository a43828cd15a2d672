"""Optimisation of the profiled criterion over theta alone (theory.md, eq. 24).

Two methods minimise the criterion, whose optimum is reported within the
lower bounds 0 on the diagonal of each lambda:

* ``quasi_newton``: a trust-region method driven by the analytic gradient of
  the criterion (eqs. 64-68), the default.  With the compiled core as the
  objective its steps are Newton steps on the average-information Hessian of
  eq. 70, and derivatives are computed only at accepted points; with a Python
  callable they are quasi-Newton steps (damped BFGS, eq. 69);
* ``bobyqa``: Powell's derivative-free quadratic-model method from NLopt (as
  lme4 and MixedModels.jl use);
* ``nelder_mead``: NLopt's derivative-free simplex method, with BOBYQA's
  bounds and tolerances (one of lme4's ``allFit`` optimisers);
* ``lbfgsb``: SciPy's limited-memory BFGS with bounds, on the analytic
  gradient.

The record of a run (start, end, evaluations, return code) is an ``OptSummary``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nlopt
import numpy as np

from ._trust_region import minimize

__all__ = ["OPTIMIZERS", "OptSummary", "bobyqa", "lbfgsb", "nelder_mead", "quasi_newton"]

OPTIMIZERS = ("quasi-newton", "bobyqa", "nelder-mead", "l-bfgs-b")
"""The names ``fit(optimizer=...)`` accepts, the default first."""

OPTIMIZER_ALIASES = {"quasi_newton": "quasi-newton",
                     "nelder_mead": "nelder-mead", "neldermead": "nelder-mead",
                     "l_bfgs_b": "l-bfgs-b", "lbfgsb": "l-bfgs-b"}

_RETURN_CODES = {
    nlopt.SUCCESS: "SUCCESS",
    nlopt.STOPVAL_REACHED: "STOPVAL_REACHED",
    nlopt.FTOL_REACHED: "FTOL_REACHED",
    nlopt.XTOL_REACHED: "XTOL_REACHED",
    nlopt.MAXEVAL_REACHED: "MAXEVAL_REACHED",
    nlopt.MAXTIME_REACHED: "MAXTIME_REACHED",
}

GRADIENT_TOL = 2e-3
"""lme4's ``check.conv.grad`` tolerance on the scaled gradient (lmmfast.convergence, eq. 86)."""


@dataclass
class OptSummary:
    """Settings and outcome of one optimisation."""

    initial: np.ndarray
    lower: np.ndarray
    ftol_rel: float = 1e-12
    ftol_abs: float = 0.0
    xtol_abs: float = 1e-10
    initial_step: float | None = 0.75
    maxeval: int = 100_000
    gtol: float = 1e-10
    optimizer: str = "quasi-newton"
    hessian: np.ndarray | None = None   # the trust-region model's B (x = theta / scale), in and out
    final: np.ndarray | None = None
    fmin: float = np.inf
    n_evals: int = 0          # evaluations of the criterion
    n_gradients: int = 0      # of its derivatives (at accepted points, and the start)
    return_code: str = ""

    @property
    def converged(self) -> bool:
        return self.return_code in ("SUCCESS", "FTOL_REACHED", "XTOL_REACHED")


def _run(objective, x0, lower, step, summary: OptSummary, count: list, best: list,
         algorithm=nlopt.LN_BOBYQA) -> str:
    """One run of an NLopt ``algorithm`` (BOBYQA by default) from x0, in
    coordinates scaled by ``best[2]`` (theta = x * scale), first step ``step``."""
    n = len(x0)

    def f(x, grad):
        count[0] += 1
        val = objective(x * best[2])
        if val < best[0]:
            best[0], best[1] = val, x * best[2]
        return val if np.isfinite(val) else 1e300

    opt = nlopt.opt(algorithm, n)
    opt.set_lower_bounds(lower)
    opt.set_min_objective(f)
    opt.set_ftol_rel(summary.ftol_rel)
    opt.set_ftol_abs(summary.ftol_abs)
    opt.set_xtol_abs(summary.xtol_abs)
    opt.set_maxeval(max(summary.maxeval - count[0], 1))
    if step is not None:
        opt.set_initial_step(np.full(n, step))
    try:
        opt.optimize(np.asarray(x0, dtype=np.float64))
        return _RETURN_CODES.get(opt.last_optimize_result(), str(opt.last_optimize_result()))
    except nlopt.RoundoffLimited:
        return "ROUNDOFF_LIMITED"


def bobyqa(objective, summary: OptSummary, max_restarts: int = 3,
           scale: np.ndarray | None = None) -> OptSummary:
    """Minimise ``objective(theta)`` from ``summary.initial`` under ``summary.lower`` (eq. 24).

    BOBYQA works on theta / ``scale`` (the natural scale of each element, so
    that the first step and the tolerances are relative to it).  The start is
    evaluated first, so the result is never worse than it.  A first run that
    stops suspiciously early (a step along a flat direction changed nothing) is
    followed by restarts from the best point in coordinates scaled by that
    point's magnitudes, until a restart no longer improves the criterion.
    Every evaluation is counted.
    """
    n = len(summary.initial)
    count = [1]
    x0 = np.asarray(summary.initial, dtype=np.float64)
    s0 = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    best = [objective(x0), x0.copy(), s0]
    code = _run(objective, x0 / s0, summary.lower / s0, summary.initial_step, summary,
                count, best)
    # restart only after a suspiciously short first run (a flat direction)
    for _ in range(max_restarts if count[0] < 5 * n + 6 else 0):
        if count[0] >= summary.maxeval:
            break
        before = best[0]
        theta = best[1].copy()
        ref = max(np.max(np.abs(theta)), 1e-8)
        scale = np.maximum(np.abs(theta), 1e-3 * ref)
        best[2] = scale
        code = _run(objective, theta / scale, summary.lower / scale, 0.2, summary, count, best)
        best[2] = np.ones(n)
        if not best[0] < before - 1e-10 * abs(before):
            break
    return _finished(summary, best, count[0], code)


def _finished(summary: OptSummary, best: list, n_evals: int, code: str) -> OptSummary:
    """``summary`` with the best point of a run (``best`` = [d, theta, ...]), its
    evaluations and return code."""
    summary.final = np.asarray(best[1], dtype=np.float64)
    summary.fmin = float(best[0])
    summary.n_evals = n_evals
    summary.return_code = code
    return summary


def quasi_newton(fg, summary: OptSummary, scale: np.ndarray | None = None) -> OptSummary:
    """Minimise ``fg(theta) -> (d, gradient)`` from ``summary.initial`` (eqs. 69, 70).

    ``fg`` is a Python callable or a ``lmmfast._trust_region.CoreObjective``.

    A trust-region method (its loop is compiled: ``_trust_region``): each step
    minimises the quadratic model g'p + p'Bp/2 within ||p|| <= radius (by B's
    eigendecomposition); the radius doubles after a good step that reached it
    and shrinks to a quarter of the step after a poor one.  For a
    ``CoreObjective`` (a model's fit, as ``_trust_region.Optimum`` runs it), B
    is the approximate Hessian of eq. 70 from the core, eigenvalues of
    magnitude below 1e-8 |d| raised to that floor, and a trial point costs the
    criterion alone: its gradient and B are computed only once it is accepted.  For a Python callable, B is updated by
    the damped BFGS formula (positive definite even where the criterion is not
    convex).

    The criterion depends on theta only through each term's lambda lambda^T,
    which does not change when a column of lambda changes sign; so it is
    minimised without bounds, and the caller flips the columns whose diagonal
    element ends negative (eq. 24's bounds only make lambda unique).  Working
    without bounds matters: for a scalar term the criterion is even in its
    theta, so theta = 0 is always a stationary point, and a projected method
    that lands there would stay there even where the minimum is inside.

    Works on x = theta / ``scale``, where the default start is x = 1, with the
    radius at 1/2 per coordinate.  With BFGS, B starts diagonal,
    B_ii = 2 |g_i| (the curvature of a quadratic whose minimum is 1/2 away
    along each coordinate), unless ``summary.hessian`` gives B.

    Stops with ``SUCCESS`` when the gradient is below ``gtol`` relative to the
    criterion, ``XTOL_REACHED`` when the step falls below ``xtol_abs``,
    ``FTOL_REACHED`` when an accepted step and the model's predicted decrease
    are both below ``ftol_rel`` relative, or the model's unconstrained minimum
    promises less than a tenth of that, and ``ROUNDOFF_LIMITED`` when the
    radius has shrunk below ``xtol_abs`` without a decrease.  Every evaluation
    is counted.
    """
    n = len(summary.initial)
    s0 = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    b = summary.hessian
    if b is not None and np.shape(b) != (n, n):
        raise ValueError(f"hessian must be {n} x {n}")
    x0 = np.asarray(summary.initial, dtype=np.float64) / s0
    theta, f, count, code, b = minimize(
        fg, x0, s0, None if b is None else np.ascontiguousarray(b, dtype=np.float64),
        summary.gtol, summary.ftol_rel, summary.xtol_abs, summary.maxeval)
    summary.final = theta
    summary.fmin = float(f)
    summary.n_evals = count
    summary.n_gradients = getattr(fg, "n_derivatives", count)
    summary.return_code = code
    summary.hessian = b
    return summary


def nelder_mead(objective, summary: OptSummary, max_restarts: int = 3,
                scale: np.ndarray | None = None) -> OptSummary:
    """Minimise ``objective(theta)`` by NLopt's Nelder-Mead simplex method (eq. 24).

    The bounds, tolerances, scaling and first step are BOBYQA's.  A simplex can
    collapse before it reaches the minimum, so each run is followed by a run
    from its best point, until one no longer improves the criterion (at most
    ``max_restarts``).  Every evaluation is counted.
    """
    n = len(summary.initial)
    count = [1]
    x0 = np.asarray(summary.initial, dtype=np.float64)
    s0 = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    best = [objective(x0), x0.copy(), s0]
    code = _run(objective, x0 / s0, summary.lower / s0, summary.initial_step, summary,
                count, best, nlopt.LN_NELDERMEAD)
    for _ in range(max_restarts):
        if count[0] >= summary.maxeval or code not in ("FTOL_REACHED", "XTOL_REACHED",
                                                        "SUCCESS"):
            break
        before = best[0]
        code = _run(objective, best[1] / s0, summary.lower / s0, 0.1, summary, count, best,
                    nlopt.LN_NELDERMEAD)
        if not best[0] < before - summary.ftol_rel * abs(before):
            break
    return _finished(summary, best, count[0], code)


def lbfgsb(fg, summary: OptSummary, scale: np.ndarray | None = None) -> OptSummary:
    """Minimise ``fg(theta) -> (d, gradient)`` by SciPy's L-BFGS-B (eq. 24, 66).

    Works on x = theta / ``scale`` within the lower bounds; stops when the
    relative decrease of a step is below ``ftol_rel`` (``FTOL_REACHED``) or the
    projected gradient below ``gtol`` relative to the criterion (``SUCCESS``).
    Every evaluation (each with its gradient) is counted.
    """
    from scipy.optimize import minimize as scipy_minimize

    n = len(summary.initial)
    s0 = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    x0 = np.asarray(summary.initial, dtype=np.float64) / s0
    count = [0]
    best = [np.inf, x0 * s0]

    def f(x):
        count[0] += 1
        val, grad = fg(x * s0)
        if not np.isfinite(val):
            return 1e300, np.zeros(n)
        if val < best[0]:
            best[0], best[1] = val, x * s0
        return val, grad * s0

    f0 = f(x0)[0]
    bounds = [(lo / s if np.isfinite(lo) else None, None) for lo, s in zip(summary.lower, s0)]
    result = scipy_minimize(f, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                            options=dict(maxfun=max(summary.maxeval - 1, 1),
                                         ftol=summary.ftol_rel,
                                         gtol=summary.gtol * max(abs(f0), 1.0)))
    message = str(result.message).upper()
    # a line search that finds no decrease within rounding error ("ABNORMAL") has
    # reached the minimum when the projected gradient passes lme4's check
    grad = np.asarray(result.jac, dtype=np.float64) / s0
    at_bound = np.isfinite(summary.lower) & (result.x * s0 <= summary.lower) & (grad > 0)
    flat = np.all(np.abs(np.where(at_bound, 0.0, grad)) <= GRADIENT_TOL)
    if count[0] >= summary.maxeval or "LIMIT" in message:
        code = "MAXEVAL_REACHED"
    elif "REDUCTION_OF_F" in message.replace(" ", "_") or ("ABNORMAL" in message and flat):
        code = "FTOL_REACHED"
    elif result.success:
        code = "SUCCESS"
    else:
        code = "ROUNDOFF_LIMITED" if "ABNORMAL" in message else "FAILURE"
    _finished(summary, best, count[0], code)
    summary.n_gradients = count[0]
    return summary
