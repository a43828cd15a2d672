"""Optimisation of the profiled criterion over theta alone (theory.md, eq. 24).

BOBYQA (Powell's bound-constrained quadratic-model method, from NLopt, as
lme4 and MixedModels.jl use) minimises the objective under the lower bounds
0 on the diagonal of each lambda.  The record of the run (start, end,
evaluations, NLopt's return code) is kept as an ``OptSummary``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nlopt
import numpy as np

__all__ = ["OptSummary", "bobyqa"]

_RETURN_CODES = {
    nlopt.SUCCESS: "SUCCESS",
    nlopt.STOPVAL_REACHED: "STOPVAL_REACHED",
    nlopt.FTOL_REACHED: "FTOL_REACHED",
    nlopt.XTOL_REACHED: "XTOL_REACHED",
    nlopt.MAXEVAL_REACHED: "MAXEVAL_REACHED",
    nlopt.MAXTIME_REACHED: "MAXTIME_REACHED",
}


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
    final: np.ndarray | None = None
    fmin: float = np.inf
    n_evals: int = 0
    return_code: str = ""
    trace: list = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.return_code in ("SUCCESS", "FTOL_REACHED", "XTOL_REACHED")


def bobyqa(objective, summary: OptSummary) -> OptSummary:
    """Minimise ``objective(theta)`` from ``summary.initial`` under ``summary.lower``.

    Every evaluation is counted; the best point seen is kept (NLopt returns it).
    """
    n = len(summary.initial)
    count = [0]
    best = [np.inf, np.asarray(summary.initial, dtype=np.float64)]

    def f(x, grad):
        count[0] += 1
        val = objective(x)
        if val < best[0]:
            best[0], best[1] = val, x.copy()
        return val if np.isfinite(val) else 1e300

    opt = nlopt.opt(nlopt.LN_BOBYQA, n)
    opt.set_lower_bounds(summary.lower)
    opt.set_min_objective(f)
    opt.set_ftol_rel(summary.ftol_rel)
    opt.set_ftol_abs(summary.ftol_abs)
    opt.set_xtol_abs(summary.xtol_abs)
    opt.set_maxeval(summary.maxeval)
    if summary.initial_step is not None:
        opt.set_initial_step(np.full(n, summary.initial_step))
    try:
        opt.optimize(np.asarray(summary.initial, dtype=np.float64))
        code = _RETURN_CODES.get(opt.last_optimize_result(), str(opt.last_optimize_result()))
    except nlopt.RoundoffLimited:
        code = "ROUNDOFF_LIMITED"
    summary.final = np.asarray(best[1], dtype=np.float64)
    summary.fmin = float(best[0])
    summary.n_evals = count[0]
    summary.return_code = code
    return summary
