"""The fit of a model over theta (theory.md, eq. 24), as one sequence of steps,
and the optimisers it can use.

``fit_theta`` runs the sequence (theory.md, "The fit, step by step"):

1. start: lambda = I on the natural scale of each covariate (``default_start``),
   with each random intercept at its method-of-moments estimate (eq. 71,
   ``moment_start``) for the default optimiser, or a start the caller gives;
2. Newton steps: the trust-region loop on the analytic gradient and the
   average-information Hessian (eqs. 66, 69, 70), compiled
   (``_trust_region.Optimum.run``), the default ``"quasi-newton"``; or one of
   the optimisers written here: ``bobyqa`` (NLopt's, as lme4), ``nelder_mead``,
   ``lbfgsb`` (SciPy's, on the analytic gradient);
3. BOBYQA fallback: where the Newton steps stop without converging, BOBYQA
   goes on from where they ended;
4. boundary step: a diagonal element of lambda that ends in (0, ``BOUNDARY_TOL``)
   is tried at exactly 0 (compiled, ``Optimum.boundary_step``);
5. exact-fit check: a fit whose criterion is not finite, whose theta ran away
   (``Optimum.suspect``) or that did not converge is checked for a response
   that X and Z fit exactly (``exact_fit``), a ``FitError``;
6. a ``ConvergenceWarning`` where the optimiser did not converge.

Steps 2, 4 and the test of step 5's symptoms are one compiled call in the
default fit.  lme4's convergence checks at the optimum follow in the model
(``lmmfast.convergence``).  The record of a run (start, end, evaluations,
return code) is an ``OptSummary``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import nlopt
import numpy as np

from ._trust_region import RUN_STATUS, Optimum
from .arguments import as_choice
from .errors import ConvergenceWarning, FitError

__all__ = ["OPTIMIZERS", "OPTIMIZER_ALIASES", "OptSummary", "fit_theta", "start_theta",
           "default_start", "moment_start", "intercept_terms", "newton_plan", "lambda_columns",
           "newton_steps", "take_run", "bobyqa_fallback", "other_optimizer", "boundary_step",
           "check_exact_fit", "exact_fit", "bobyqa", "nelder_mead", "lbfgsb", "as_vector",
           "GRADIENT_TOL", "BOUNDARY_TOL", "RUNAWAY"]

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

BOUNDARY_TOL = 1e-5
"""A diagonal element of lambda below this is also tried at exactly 0 (step 4)."""

RUNAWAY = 1e3
"""The largest theta / scale of a fit that is not suspect of an exact fit (step 5)."""


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
    hessian: np.ndarray | None = None   # the Newton steps' last B (x = theta / scale)
    final: np.ndarray | None = None
    fmin: float = np.inf
    n_evals: int = 0          # evaluations of the criterion
    n_gradients: int = 0      # of its derivatives (at accepted points, and the start)
    return_code: str = ""

    @property
    def converged(self) -> bool:
        return self.return_code in ("SUCCESS", "FTOL_REACHED", "XTOL_REACHED")


# ------------------------------------------------------------------ the sequence
def fit_theta(model, start=None, options: dict | None = None) -> OptSummary:
    """Minimise ``model``'s profiled criterion over theta (eq. 24) by the steps
    of this module's sequence; returns the ``OptSummary``, the core's factor
    left at ``final``.

    ``start``: theta (lme4 order; default: step 1's); ``options``: fields of
    ``OptSummary``, ``optimizer`` one of ``OPTIMIZERS`` (a DataError for any
    other name).  Raises a ``FitError`` for an exact fit or a criterion that is
    not finite at the end.  ``model`` gives its compiled plan (``_optimum()``),
    theta's scale, bounds and starts (``_scale``, ``lower_bounds``,
    ``_default_start``, ``_intercept_terms``), its terms and, for the exact-fit
    check, its rows (``x``, ``remats``, ``weights``, ``_y_eff``).
    """
    options = dict(options or {})
    if "optimizer" in options:
        options["optimizer"] = as_choice(options["optimizer"], "optimizer", OPTIMIZERS,
                                         OPTIMIZER_ALIASES)
    summary = OptSummary(start_theta(model, start, options.get("optimizer", OPTIMIZERS[0])),
                         model.lower_bounds, **options)                          # 1. start
    plan = model._optimum()
    if summary.optimizer == "quasi-newton":
        status = newton_steps(plan, summary, tolerances=(                         # 2. Newton steps
            (summary.gtol, summary.ftol_rel, summary.xtol_abs, summary.maxeval)
            if options else None))
        if status == "done":   # converged; steps 4 and 5 passed in the same call
            return summary
        if status == "finish":
            bobyqa_fallback(plan, summary, model._scale)                          # 3. fallback
    else:
        other_optimizer(plan, summary, model._scale)                              # 2. by another
        status = "finish"
    if status == "finish":
        boundary_step(plan, summary)                                              # 4. boundary
    check_exact_fit(model, plan, summary, suspect=status == "suspect")            # 5. exact fit
    if not summary.converged:                                                     # 6. warning
        warnings.warn(f"the optimiser stopped with {summary.return_code} after "
                      f"{summary.n_evals} evaluations", ConvergenceWarning, stacklevel=4)
    return summary


def start_theta(model, start, optimizer: str) -> np.ndarray:
    """Step 1: ``start`` checked against the lower bounds, or by default
    ``moment_start`` for the Newton steps and ``default_start`` otherwise."""
    if start is None:
        return moment_start(model) if optimizer == "quasi-newton" else model._default_start
    init = np.asarray(start, dtype=np.float64)
    lower = model.lower_bounds
    if init is not model._theta and (init.shape != lower.shape or (init < lower).any()):
        raise ValueError(f"start must have {len(lower)} values within the lower bounds")
    return init


def default_start(model) -> np.ndarray:
    """lambda = I on the natural scale of each covariate (``model._scale``): lme4's
    lambda = I for intercepts and covariates of unit root mean square."""
    return np.concatenate([r.theta_init() for r in model.remats]) * model._scale


def intercept_terms(model) -> list[tuple[int, int]]:
    """(internal index, position in theta) of each term that is a random
    intercept alone: one random effect per level, its column ones."""
    starts = np.cumsum([0] + [r.n_theta for r in model.remats]).tolist()
    return [(j, starts[i]) for j, i in enumerate(model._internal)
            if model.remats[i].cnames == ["(Intercept)"]]


def moment_start(model) -> np.ndarray:
    """``default_start``, with each random intercept's theta at its
    method-of-moments estimate from A (eq. 71): sqrt(sigma_t^2 / sigma^2), or
    0.1 where sigma_t^2 <= 0 (from the model's kept ``_default_start`` and
    ``_intercept_terms``)."""
    terms = model._intercept_terms
    moments = model._core.moment_variances([j for j, _ in terms]) if terms else None
    if moments is None:
        return model._default_start
    rss, variances = moments
    sigma2 = max(rss / model.nobs - sum(v for v in variances if v > 0),
                 0.05 * rss / model.nobs)
    start = model._default_start.copy()
    for (_, pos), v in zip(terms, variances):
        start[pos] = math.sqrt(v / sigma2) if v > 0 else 0.1
    return start


def newton_plan(model, objective) -> Optimum:
    """The compiled default fit of ``model`` on its ``CoreObjective``, with
    ``OptSummary``'s default tolerances: steps 2, 4 and 5's symptoms in one call.
    With as many fixed and random effects as rows, every fit is suspect."""
    diag, column = lambda_columns(model.remats)
    n_effects = model.p + sum(r.q for r in model.remats)
    runaway = -np.inf if n_effects >= model.nobs else RUNAWAY
    return Optimum(objective, model._scale, diag, column, OptSummary.gtol, OptSummary.ftol_rel,
                   OptSummary.xtol_abs, OptSummary.maxeval, BOUNDARY_TOL, runaway)


def lambda_columns(remats) -> tuple[np.ndarray, np.ndarray]:
    """For each column of each lambda: the position of its diagonal entry in
    theta, and the column (in the same order) of every entry of theta."""
    diag, column = [], []
    pos = 0
    for r in remats:
        for j in range(r.k):
            diag.append(pos)
            column.extend([len(diag) - 1] * (r.k - j))
            pos += r.k - j
    return np.array(diag, dtype=np.intp), np.array(column, dtype=np.intp)


def newton_steps(plan: Optimum, summary: OptSummary, tolerances=None) -> str:
    """Step 2 (and, where it converges, steps 4 and 5's symptoms) as one compiled
    call from ``summary.initial``; ``summary`` takes its outcome.  Returns the
    run's ``RUN_STATUS``: "done", "finish" (not converged) or "suspect"."""
    result = plan.run(as_vector(summary.initial), tolerances)
    take_run(summary, result)
    return RUN_STATUS[result[0]]


def take_run(summary: OptSummary, result: tuple) -> OptSummary:
    """``summary`` with the outcome of a compiled run (``Optimum.run``, ``Refit.run``)."""
    (_, summary.final, summary.fmin, summary.n_evals, summary.n_gradients,
     summary.return_code, summary.hessian, summary.initial) = result
    return summary


def other_optimizer(plan: Optimum, summary: OptSummary, scale: np.ndarray) -> None:
    """Step 2 by ``summary.optimizer`` other than the Newton steps, on the model's
    ``CoreObjective`` (``plan.objective``): BOBYQA, Nelder-Mead or L-BFGS-B."""
    objective = plan.objective
    if summary.optimizer == "l-bfgs-b":
        lbfgsb(objective.criterion_gradient, summary, scale=scale)
    elif summary.optimizer == "nelder-mead":
        nelder_mead(objective.criterion, summary, scale=scale)
    else:
        bobyqa(objective.criterion, summary, scale=scale)


def bobyqa_fallback(plan: Optimum, summary: OptSummary, scale: np.ndarray) -> None:
    """Step 3: BOBYQA from where the Newton steps stopped; the evaluations of both
    are counted."""
    evals = summary.n_evals
    summary.initial = summary.final
    bobyqa(plan.objective.criterion, summary, scale=scale)
    summary.n_evals += evals


def boundary_step(plan: Optimum, summary: OptSummary) -> None:
    """Step 4 on an optimiser's result (the compiled step, ``Optimum.boundary_step``)."""
    summary.final, summary.fmin, trials = plan.boundary_step(summary.final, summary.fmin)
    summary.n_evals += trials


def check_exact_fit(model, plan: Optimum, summary: OptSummary, suspect: bool = False) -> None:
    """Step 5: a ``FitError`` where a fit with the symptoms of an exact fit
    (``suspect``, not converged, or ``Optimum.suspect``) is one (``exact_fit``),
    or where the criterion is not finite at the end."""
    theta, fmin = summary.final, summary.fmin
    if (suspect or not summary.converged or plan.suspect(theta, fmin)) and exact_fit(model):
        raise FitError(
            f"the residual variance is estimated as zero: the response "
            f"{model.response!r} is fitted exactly by the fixed and random effects "
            "(e.g. it is constant within groups)")
    if not np.isfinite(fmin):
        raise FitError(f"the criterion is not finite at the optimum (theta = {theta})")


def exact_fit(model) -> bool:
    """Whether W^(1/2)(y - offset) lies in the span of W^(1/2)[X Z] (sigma-hat -> 0),
    by LSQR on the rows; models without rows (reduced elsewhere) answer False."""
    if model.x is None:
        return False
    from scipy.sparse import csr_matrix, hstack
    from scipy.sparse.linalg import lsqr
    n = model.nobs
    sw = np.sqrt(model.weights) if model.weights is not None else np.ones(n)
    parts = [csr_matrix(model.x * sw[:, None])]
    for r in model.remats:
        cols = (r.refs[:, None] * r.k + np.arange(r.k)).ravel()
        rows = np.repeat(np.arange(n), r.k)
        parts.append(csr_matrix(((r.z * sw[:, None]).ravel(), (rows, cols)),
                                shape=(n, r.q)))
    yw = model._y_eff * sw
    scale = np.max(np.abs(yw))
    if scale == 0:
        return True
    sol = lsqr(hstack(parts).tocsr(), yw / scale, atol=1e-14, btol=1e-14,
               iter_lim=10 * (n + 10))
    return sol[3] <= 1e-8 * np.linalg.norm(yw / scale)


def as_vector(values) -> np.ndarray:
    """``values`` as a C-contiguous float64 vector (itself if it is one already)."""
    if type(values) is np.ndarray and values.dtype == np.float64 and values.ndim == 1 \
            and values.flags.c_contiguous:
        return values
    return np.ascontiguousarray(np.asarray(values, dtype=np.float64).ravel())


# ------------------------------------------------------ optimisers in Python
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
