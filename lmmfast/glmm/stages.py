"""lme4's two optimisation stages of a GLMM fit (docs/theory.md, eqs. 102-103).

Stage 1 (nAGQ = 0) minimises the Laplace deviance over theta alone, with
beta found by PIRLS together with u (eq. 102), by Powell's bound-constrained
BOBYQA (NLopt).  Stage 2 starts there and minimises the Laplace (or
quadrature) deviance over (theta, beta) together, u alone by PIRLS (eq. 103):
by quasi-Newton steps on the analytic gradient (``laplace.laplace_gradient``,
``quadrature.agq_gradient``)
where it is available, else on central differences, whose last Hessian is the one the
covariance of beta-hat needs (eq. 104), and by BOBYQA where Newton stops
short (a bound, an indefinite Hessian).  Each evaluation's PIRLS starts at
the previous mode.  A singular fit that ends at a saddle (eq. 104's Hessian
with a negative eigenvalue) runs stage 2 again from below it
(``escape_saddle``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import nlopt
import numpy as np

__all__ = [
    "BOUNDARY_TOL",
    "NewtonResult",
    "Stage1",
    "StageResult",
    "check_boundary",
    "escape_saddle",
    "fd_gradient",
    "minimize_bobyqa",
    "minimize_newton",
    "off_bounds",
    "stage1_tolerances",
]

BOUNDARY_TOL = 1e-5   # lme4's glmerControl boundary.tol


class Stage1(NamedTuple):
    """How closely stage 1 searches (``stage1_tolerances``)."""

    ftol: float        # BOBYQA's stopping change in the deviance
    search_tol: float  # PIRLS's step bound for u there (``Pirls.mode_joint``)
    settle: bool       # PIRLS stops before its last step, without a pass at its end


STAGE1 = {"nAGQ=0": Stage1(1e-8, 1e-5, False), "newton": Stage1(1.0, 1e-3, True),
          "differences": Stage1(1e-6, 1e-5, False)}
OFF_BOUND = 0.01       # stage 2's start of a diagonal theta that stage 1 left at 0
# a Newton decrement below this part of |deviance| is within the deviance's rounding
# (10 ulps): the line search cannot see the step's decrease, and stage 2 stops
ROUNDING_DECREMENT = 10 * np.finfo(np.float64).eps


def stage1_tolerances(n_agq: int, gradient: bool) -> Stage1:
    """Stage 1's tolerances: tight where it is the fit (nAGQ = 0) or where stage
    2's steps cost 2n evaluations each (central differences), loose where stage 2
    takes Newton steps on the analytic gradient (eq. 103), which finish the
    search in a few evaluations; there PIRLS's deviance is that of the point
    before its last step (within ``search_tol`` of the mode: log|L|^2 off by
    about as much, far below ``ftol``)."""
    if n_agq == 0:
        return STAGE1["nAGQ=0"]
    return STAGE1["newton" if gradient else "differences"]


def off_bounds(theta: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """theta with each diagonal entry at its bound 0 moved to ``OFF_BOUND``: the
    deviance is even in it there, so its derivative is 0 and Newton steps could
    not leave it (stage 2 returns to 0 where that is the optimum)."""
    return np.where((lower == 0) & (theta <= 0), OFF_BOUND, theta)


@dataclass
class StageResult:
    """Outcome of one stage."""

    x: np.ndarray
    fval: float
    n_evals: int
    return_code: str
    history: list = field(default_factory=list)


_CODES = {nlopt.SUCCESS: "SUCCESS", nlopt.STOPVAL_REACHED: "STOPVAL_REACHED",
          nlopt.FTOL_REACHED: "FTOL_REACHED", nlopt.XTOL_REACHED: "XTOL_REACHED",
          nlopt.MAXEVAL_REACHED: "MAXEVAL_REACHED", nlopt.MAXTIME_REACHED: "MAXTIME_REACHED"}


def minimize_bobyqa(fun, x0: np.ndarray, lower: np.ndarray, step: np.ndarray,
                    ftol_abs: float = 1e-10, xtol_abs: float = 1e-9,
                    maxeval: int = 100_000) -> StageResult:
    """Minimise ``fun`` from ``x0`` within ``lower`` by BOBYQA, first steps ``step``.

    The best point seen is returned (BOBYQA's last point may not be the best).
    A failure of ``fun`` (an LmmError) counts as +inf, as lme4's optimisers
    see a failed PIRLS.
    """
    from ..errors import LmmError
    x0 = np.asarray(x0, dtype=np.float64)
    n = len(x0)
    best = [np.inf, x0.copy()]
    count = [0]

    def f(x, grad):
        count[0] += 1
        try:
            val = float(fun(x))
        except LmmError:
            val = np.inf
        if val < best[0]:
            best[0], best[1] = val, x.copy()
        return val if np.isfinite(val) else 1e300

    opt = nlopt.opt(nlopt.LN_BOBYQA, n)
    lo = np.asarray(lower, dtype=np.float64)
    opt.set_lower_bounds(np.where(np.isfinite(lo), lo, -1e300))
    opt.set_min_objective(f)
    opt.set_ftol_abs(ftol_abs)
    opt.set_xtol_abs(xtol_abs)
    opt.set_maxeval(maxeval)
    opt.set_initial_step(np.asarray(step, dtype=np.float64))
    x_start = np.maximum(x0, lo)
    try:
        opt.optimize(x_start)
        code = _CODES.get(opt.last_optimize_result(), str(opt.last_optimize_result()))
    except nlopt.RoundoffLimited:
        code = "ROUNDOFF_LIMITED"
    return StageResult(best[1], best[0], count[0], code)


def check_boundary(fun, x: np.ndarray, fval: float, lower: np.ndarray,
                   n_theta: int) -> tuple[np.ndarray, float, int]:
    """lme4's ``check.boundary``: a theta within BOUNDARY_TOL of its bound is set
    to the bound where that does not increase the deviance.  Returns (x, f, evaluations)."""
    x = x.copy()
    evals = 0
    for i in range(n_theta):
        d = x[i] - lower[i]
        if 0 < d < BOUNDARY_TOL:
            trial = x.copy()
            trial[i] = lower[i]
            val = float(fun(trial))
            evals += 1
            if val <= fval + 1e-12 * abs(fval):   # (not higher beyond rounding)
                x, fval = trial, min(val, fval)
    return x, fval, evals


@dataclass
class NewtonResult:
    """Outcome of ``minimize_newton``."""

    x: np.ndarray
    fval: float
    n_evals: int
    converged: bool


def fd_gradient(fun, x: np.ndarray, delta: float) -> tuple[np.ndarray, int]:
    """Central-difference gradient of ``fun`` (2n evaluations)."""
    n = len(x)
    g = np.empty(n)
    for i in range(n):
        e = np.zeros(n)
        e[i] = delta
        g[i] = (fun(x + e) - fun(x - e)) / (2.0 * delta)
    return g, 2 * n


def _positive_definite(h: np.ndarray) -> np.ndarray:
    """``h`` with its eigenvalues made positive: |lambda|, at least 1e-8 of the largest."""
    vals, vecs = np.linalg.eigh(0.5 * (h + h.T))
    vals = np.maximum(np.abs(vals), 1e-8 * max(np.abs(vals).max(), 1e-300))
    return (vecs * vals) @ vecs.T


def _bounded_step(b: np.ndarray, g: np.ndarray, x: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The Newton step -B^{-1} g, with the bounded coordinates at 0 that it would
    take below 0 held there (the step solved in the others)."""
    p = -np.linalg.solve(b, g)
    held = ~free & (x <= 0) & (p < 0)
    while held.any():
        move = ~held
        p = np.zeros_like(g)
        p[move] = -np.linalg.solve(b[np.ix_(move, move)], g[move])
        more = held | (~free & (x <= 0) & (p < 0))
        if (more == held).all():
            break
        held = more
    return p


def _step_to_bound(x: np.ndarray, p: np.ndarray, free: np.ndarray) -> float:
    """The longest step length in (0, 1] along p that keeps the bounded coordinates >= 0."""
    down = ~free & (p < 0)
    if not down.any():
        return 1.0
    return float(min(1.0, np.min(x[down] / -p[down])))


def minimize_newton(fun, x0: np.ndarray, free: np.ndarray, delta: float, hessian_fn,
                    tol: float = 1e-12, maxit: int = 30, at_point=None,
                    value_gradient=None, beta_block=None) -> NewtonResult:
    """Quasi-Newton steps on central differences, for stage 2 (eq. 103).

    A first Hessian (``hessian_fn(x, f(x))`` returns it with the gradient and
    its number of evaluations) has its eigenvalues made positive and is then
    updated by BFGS from the central-difference gradients (2n evaluations a
    step).  With ``value_gradient`` (x -> (f, g), the analytic gradient of
    ``laplace.laplace_gradient`` or ``quadrature.agq_gradient``), the first Hessian is the central
    differences of gradients (``vcov.gradient_hessian``; with ``beta_block``,
    those in theta alone, n_theta runs, the beta block given: 2 R_X R_X^T, the
    penalised deviance's curvature in beta) and each point costs one
    evaluation.  ``free`` marks the coordinates with no bound; the
    others (diagonal thetas) stay at or above 0: one at 0 that the step would
    take below stays there (the step is taken in the others, ``_bounded_step``),
    and a step that would take one below 0 is shortened to reach it.  Stops
    when the Newton decrement g^T H^{-1} g of that step is below ``tol``; a
    line search that fails, or no convergence, returns ``converged=False``
    with the best point, for BOBYQA to finish (on a deviance so large that
    ``tol`` is below its rounding, the stop is at ``ROUNDING_DECREMENT |f|``).
    ``at_point(x)``, if given, is called at each point before differences in
    beta are taken.
    """
    from ..errors import LmmError
    from .vcov import gradient_hessian
    x = np.asarray(x0, dtype=np.float64).copy()
    evals = 0
    fx = np.inf
    try:
        if value_gradient is not None:
            fx, g = value_gradient(x)
            evals += 1
            if beta_block is None:
                if at_point is not None:
                    at_point(x)
                h0, k = gradient_hessian(value_gradient, x, delta, g0=g)
            else:   # (differences in theta alone: no modes at other betas to predict)
                nt = len(x) - len(beta_block)
                h0, k = gradient_hessian(value_gradient, x, delta, g0=g, columns=nt)
                h0[nt:, nt:] = beta_block
        else:
            fx = float(fun(x))
            evals += 1
            if at_point is not None:
                at_point(x)
            h0, g, k = hessian_fn(x, fx)
        evals += k
        b = _positive_definite(h0)
        for _ in range(maxit):
            p = _bounded_step(b, g, x, free)
            decrement = float(-g @ p)
            if decrement < max(tol, ROUNDING_DECREMENT * abs(fx)):
                return NewtonResult(x, fx, evals, True)
            if decrement < 0:
                break
            t = t0 = _step_to_bound(x, p, free)
            while True:
                xn = x + t * p
                xn[~free] = np.maximum(xn[~free], 0.0)
                if value_gradient is not None:
                    fn, gn = value_gradient(xn)
                else:
                    fn = float(fun(xn))
                evals += 1
                if fn <= fx - 1e-4 * t * decrement:
                    break
                t *= 0.5
                if t < 1e-3 * t0:
                    return NewtonResult(x, fx, evals, False)
            if value_gradient is None:
                if at_point is not None:
                    at_point(xn)
                gn, k = fd_gradient(fun, xn, delta)
                evals += k
            s_, y_ = xn - x, gn - g
            sy = float(s_ @ y_)
            if sy > 1e-12 * float(np.linalg.norm(s_) * np.linalg.norm(y_)):   # BFGS
                bs = b @ s_
                b = b - np.outer(bs, bs) / float(s_ @ bs) + np.outer(y_, y_) / sy
            x, fx, g = xn, fn, gn
    except (LmmError, np.linalg.LinAlgError):
        pass
    return NewtonResult(x, fx, evals, False)


SADDLE_TOL = 1e-3          # an eigenvalue below -SADDLE_TOL * max |eigenvalue| is negative
SADDLE_STEPS = (0.05, 0.1, 0.2, 0.4)


def escape_saddle(fun, x: np.ndarray, fval: float, h: np.ndarray,
                  lower: np.ndarray) -> tuple[np.ndarray, float, int] | None:
    """Where the Hessian ``h`` at ``x`` has a clearly negative eigenvalue, the
    best point along either sign of its eigenvector (steps ``SADDLE_STEPS``,
    clipped to ``lower``) that lowers ``fun`` below ``fval``: (x, f, evaluations);
    None where H has none or no step lowers ``fun``."""
    from ..errors import LmmError
    vals, vecs = np.linalg.eigh(0.5 * (h + h.T))
    if not (np.isfinite(vals).all() and vals[0] < -SADDLE_TOL * np.abs(vals).max()):
        return None
    v = vecs[:, 0]
    best_x, best_f, evals = None, fval, 0
    for t in SADDLE_STEPS:
        for sign in (1.0, -1.0):
            trial = np.maximum(x + sign * t * v, lower)
            try:
                f = float(fun(trial))
            except LmmError:
                f = np.inf
            evals += 1
            if f < best_f:
                best_x, best_f = trial, f
    return None if best_x is None else (best_x, best_f, evals)
