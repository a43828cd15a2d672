"""lme4's two optimisation stages of a GLMM fit (docs/theory.md, eqs. 102-103).

Stage 1 (nAGQ = 0) minimises the Laplace deviance over theta alone, with
beta found by PIRLS together with u (eq. 102).  Stage 2 starts there and
minimises the Laplace (or quadrature) deviance over (theta, beta) together,
u alone by PIRLS (eq. 103).  Both use Powell's bound-constrained BOBYQA
(NLopt); each evaluation's PIRLS starts at the previous mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nlopt
import numpy as np

__all__ = ["StageResult", "minimize_bobyqa", "BOUNDARY_TOL"]

BOUNDARY_TOL = 1e-5   # lme4's glmerControl boundary.tol


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
            if val <= fval:
                x, fval = trial, val
    return x, fval, evals
