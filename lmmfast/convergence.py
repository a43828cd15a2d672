"""Convergence checks of a fit (lme4's ``checkConv``) and refits with every optimiser (``allFit``).

At the fitted theta the check takes the analytic gradient g of the criterion
(eq. 66) and its average-information Hessian H (eq. 70) in theta, and applies
lme4's tests (theory.md, eqs. 85-88): a singular fit gets lme4's singular-fit
message and no other check; otherwise the scaled gradient
max_i min(|(R^{-1} g)_i|, |g_i|), H = R^T R (R upper), must be at most 2e-3, and H must
have no negative, zero, very large or very spread eigenvalues.  As lme4, the
derivative checks run only for fits with fewer than 10,000 observations and
fewer than 10 theta elements; ``checked`` says whether they ran.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .arguments import as_choice, describe
from .errors import ConvergenceWarning, DataError, FitError, LmmWarning
from .errors import SINGULAR_MESSAGE
from .optimize import GRADIENT_TOL, OPTIMIZER_ALIASES, OPTIMIZERS

__all__ = ["Convergence", "check_convergence", "checks_apply", "convergence_of",
           "passes", "within_check_limits", "warn_convergence",
           "derivative_messages", "allfit", "GRADIENT_TOL", "HESSIAN_TOL"]

HESSIAN_TOL = 1e-6
"""lme4's ``check.conv.hess`` tolerance on the Hessian's eigenvalues."""

NOBS_MAX = 10_000
"""lme4's ``check.conv.nobsmax``: no derivative checks from this many observations."""

NPAR_MAX = 10
"""lme4's ``check.conv.nparmax``: no derivative checks from this many theta elements."""


@dataclass(frozen=True)
class Convergence:
    """lme4's convergence checks at a fitted theta (eqs. 85-88).

    ``max_grad``: max |g|; ``scaled_grad``: lme4's max_i min(|(R^{-1} g)_i|,
    |g_i|) (NaN where H is not positive definite); ``hessian_min_eigen``,
    ``hessian_max_eigen``: the extreme eigenvalues of H; ``hessian_pd``: H has
    a Cholesky factor; ``singular``: lme4's singular fit; ``checked``: the
    derivative checks ran (lme4's size limits); ``messages``: lme4's messages,
    the singular-fit one first; ``gradient``: g in lme4's theta order.
    """

    max_grad: float
    scaled_grad: float
    hessian_min_eigen: float
    hessian_max_eigen: float
    hessian_pd: bool
    singular: bool
    checked: bool
    messages: tuple[str, ...]
    gradient: tuple[float, ...]

    @property
    def ok(self) -> bool:
        """True when no check but the singular-fit one gave a message."""
        return not derivative_messages_of(self)


def derivative_messages_of(conv: Convergence) -> list[str]:
    """The messages of ``conv`` from the gradient and Hessian checks."""
    return [m for m in conv.messages if m != SINGULAR_MESSAGE]


def checks_apply(fit) -> bool:
    """Whether lme4 runs its derivative checks on ``fit``: fewer than ``NOBS_MAX``
    observations and ``NPAR_MAX`` theta elements, and not a singular fit."""
    return within_check_limits(fit) and not fit.is_singular


def within_check_limits(fit) -> bool:
    """Fewer than ``NOBS_MAX`` observations and ``NPAR_MAX`` theta elements."""
    return fit.nobs < NOBS_MAX and len(fit.theta_names) < NPAR_MAX


def _derivatives(fit, factored: bool) -> tuple[list[float], list[list[float]]]:
    """g and H of eqs. 66 and 70 at the fitted theta, in lme4's theta order
    (lists: they are small); the factor is updated there first unless
    ``factored`` (it already is)."""
    n = len(fit.theta_names)
    core = fit._core
    if not factored:
        core.update(fit._to_internal(fit._theta))
    g_in, h_in = np.empty(n), np.empty((n, n))
    core.derivatives(fit.reml, g_in, h_in)
    perm = fit._theta_perm.tolist()
    g_in, h_in = g_in.tolist(), h_in.tolist()
    if perm == sorted(perm):   # the core's order is lme4's (H is symmetric: eq. 70)
        return g_in, h_in
    g, h = [0.0] * n, [[0.0] * n for _ in range(n)]
    for i, a in enumerate(perm):
        g[a] = g_in[i]
        for j, b in enumerate(perm):
            h[a][b] = (h_in[i][j] + h_in[j][i]) / 2.0
    return g, h


def passes(g: list[float], h: list[list[float]]) -> bool:
    """A sufficient condition for passing every check (eqs. 86-88) without the
    eigenvalues: H = L L^T exists, max |g| <= GRADIENT_TOL (which bounds the
    scaled gradient), and the bounds lambda_max <= tr H and
    lambda_min >= det H / (tr H)^(n-1) keep the eigenvalues inside the limits
    (also those of any principal block of H, which lie between H's)."""
    lower = _cholesky(h)
    if lower is None or not max(map(abs, g)) <= GRADIENT_TOL:
        return False
    n = len(g)
    trace = sum(h[i][i] for i in range(n))
    det = math.prod(lower[i][i] ** 2 for i in range(n))
    return (trace * HESSIAN_TOL <= 1 and det >= HESSIAN_TOL * trace ** (n - 1)
            and det >= HESSIAN_TOL * trace ** n)


def _cholesky(h: list[list[float]]) -> list[list[float]] | None:
    """The lower Cholesky factor of a small symmetric matrix (lists), None where it
    is not positive definite."""
    n = len(h)
    lower = [[0.0] * n for _ in range(n)]
    for j in range(n):
        d = h[j][j] - sum(v * v for v in lower[j][:j])
        if not d > 0 or not math.isfinite(d):
            return None
        lower[j][j] = root = math.sqrt(d)
        for i in range(j + 1, n):
            lower[i][j] = (h[i][j] - sum(a * b for a, b in zip(lower[i][:j], lower[j][:j]))) / root
    return lower


def _scaled_gradient(g: list[float], h: list[list[float]]) -> tuple[bool, float, int]:
    """Whether H is positive definite, lme4's scaled gradient (eq. 86) and its
    component (1-based): max_i min(|x_i|, |g_i|) with R x = g, R = L^T, H = L L^T."""
    lower = _cholesky(h)
    if lower is None:
        return False, math.nan, 0
    n = len(g)
    x = [0.0] * n
    for i in range(n - 1, -1, -1):
        x[i] = (g[i] - sum(lower[k][i] * x[k] for k in range(i + 1, n))) / lower[i][i]
    mingrad = [min(abs(a), abs(b)) for a, b in zip(x, g)]
    if not all(math.isfinite(v) for v in mingrad):
        return False, math.nan, 0
    i = max(range(n), key=mingrad.__getitem__)
    return True, mingrad[i], i + 1


def _gradient_message(scaled: float, component: int) -> str:
    """lme4's message for a scaled gradient above ``GRADIENT_TOL`` (eq. 86)."""
    return (f"Model failed to converge with max|grad| = {scaled:g} "
            f"(tol = {GRADIENT_TOL:g}, component {component})")


def _hessian_messages(eigen: list[float], pd_: bool, kind: str = "") -> list[str]:
    """lme4's ``checkHess`` messages for H with eigenvalues ``eigen`` (eqs. 87, 88);
    ``kind`` "fixed-effect" for a GLMM's beta block."""
    if not all(math.isfinite(v) for v in eigen):
        return ["Problem with Hessian check (infinite or missing values?)"]
    hessian = f"{kind} Hessian" if kind else "Hessian"
    negative = sum(v < -HESSIAN_TOL for v in eigen)
    if negative:
        return [f"Model failed to converge: degenerate {hessian} with {negative} "
                "negative eigenvalues"]
    if any(abs(v) < HESSIAN_TOL for v in eigen) or not pd_:
        return [f"{hessian} is numerically singular: parameters are not uniquely determined"]
    out = []
    low, high = min(eigen), max(eigen)
    if high * HESSIAN_TOL > 1:
        out.append("Model is nearly unidentifiable: very large eigenvalue\n - Rescale variables?")
    if low / high < HESSIAN_TOL:
        out.append("Model is nearly unidentifiable: large eigenvalue ratio\n - Rescale variables?")
    return out


def check_convergence(fit, factored: bool = False) -> Convergence:
    """lme4's convergence checks of ``fit`` at its theta (eqs. 85-88)."""
    if fit.__dict__.get("_core") is None:
        raise FitError("this model carries no cross-products A to differentiate the "
                       "criterion: check the convergence of the model it was fitted as")
    g, h = _derivatives(fit, factored)
    return _convergence(fit, g, h)


def _convergence(fit, g: list[float], h: list[list[float]]) -> Convergence:
    """The ``Convergence`` of ``fit`` from g and H at its theta."""
    return convergence_of(g, h, fit.is_singular, checks_apply(fit))


def convergence_of(g: list[float], h: list[list[float]], singular: bool,
                   checked: bool, n_theta: int | None = None,
                   free: list[bool] | None = None) -> Convergence:
    """lme4's checks (eqs. 85-88) of the gradient g and Hessian H of a criterion
    at a fit's parameters (theta for an LMM, (theta, beta) for a GLMM, whose
    first ``n_theta`` are theta: then H's beta block is checked first, as
    lme4's "fixed-effect" Hessian), which is ``singular``; the derivative
    checks only where ``checked``.  At a singular fit lme4 checks nothing
    more; given ``free`` (the parameters not on a bound), the scaled gradient
    of those is checked there too, since it vanishes at any optimum."""
    if singular and checked and free is not None and any(free) and g:
        keep = [i for i, f in enumerate(free) if f]
        sub_g = [g[i] for i in keep]
        pd_, scaled, component = _scaled_gradient(sub_g, [[h[i][j] for j in keep]
                                                          for i in keep])
        messages = [SINGULAR_MESSAGE]
        if all(math.isfinite(v) for v in sub_g) and pd_ and scaled > GRADIENT_TOL:
            messages.append(_gradient_message(scaled, keep[component - 1] + 1))
        return Convergence(
            max_grad=max(map(abs, sub_g), default=0.0), scaled_grad=scaled,
            hessian_min_eigen=math.nan, hessian_max_eigen=math.nan, hessian_pd=pd_,
            singular=True, checked=True, messages=tuple(messages), gradient=tuple(g))
    pd_, scaled, component = _scaled_gradient(g, h) if g else (True, 0.0, 0)
    if not g:
        eigen = [math.nan]
    elif all(math.isfinite(v) for row in h for v in row):
        eigen = np.linalg.eigvalsh(np.array(h)).tolist()
    else:
        eigen = [math.nan] * len(g)
    messages = [SINGULAR_MESSAGE] if singular else []
    if checked and g and not singular:   # (lme4 returns after the singular fit's message)
        if not all(math.isfinite(v) for v in g):
            messages.append("Gradient contains NAs")
        else:
            if not pd_:
                messages.append("unable to evaluate scaled gradient")
            elif scaled > GRADIENT_TOL:
                messages.append(_gradient_message(scaled, component))
            if n_theta is not None and len(g) > n_theta:
                hb = np.array(h)[n_theta:, n_theta:]
                eigen_b = np.linalg.eigvalsh(hb).tolist() if np.isfinite(hb).all() \
                    else [math.nan]
                messages += _hessian_messages(eigen_b, _cholesky(hb.tolist()) is not None,
                                              "fixed-effect")
            messages += _hessian_messages(eigen, pd_)
    return Convergence(
        max_grad=max(map(abs, g), default=0.0), scaled_grad=scaled,
        hessian_min_eigen=min(eigen), hessian_max_eigen=max(eigen),
        hessian_pd=pd_, singular=singular, checked=checked, messages=tuple(messages),
        gradient=tuple(g))


def warn_convergence(fit) -> None:
    """At the end of a fit: where lme4 checks (``checks_apply``), check g and H on
    the factor at the fitted theta and, unless they pass at a glance
    (``passes``), keep the checks as ``fit.convergence`` and issue a
    ``ConvergenceWarning`` for each message."""
    if not checks_apply(fit):
        return
    g, h = _derivatives(fit, factored=True)
    if g and passes(g, h):
        return
    conv = fit.__dict__["convergence"] = _convergence(fit, g, h)
    for message in derivative_messages_of(conv):
        warnings.warn(message, ConvergenceWarning, stacklevel=5)   # the caller of fit


def derivative_messages(fit) -> list[str]:
    """The gradient and Hessian messages a summary of ``fit`` prints: none where
    lme4 does not check (so a summary never computes derivatives of a large fit)."""
    if not hasattr(type(fit), "convergence") or fit.__dict__.get("_core") is None \
            or not checks_apply(fit):
        return []
    return derivative_messages_of(fit.convergence)


def allfit(fit, optimizers=None) -> pd.DataFrame:
    """Refit ``fit`` with each optimiser (default: all of ``OPTIMIZERS``),
    each on a copy from its default start, as lme4's ``allFit``.

    One row per optimiser: ``optimizer``, ``objective``, ``time`` (seconds),
    ``n_evals``, ``converged`` (the optimiser stopped by a convergence test and
    lme4's checks gave no gradient or Hessian message), ``messages`` (the
    warnings of the refit, joined by "; "), then theta (``fit.theta_names``,
    prefixed "theta." where one is also a fixed effect's name) and the fixed
    effects (``fit.fixef_names``).  ``fit`` is left untouched.
    """
    fit._require_fit()
    if optimizers is None:
        names = list(OPTIMIZERS)
    else:
        if isinstance(optimizers, str) or not hasattr(optimizers, "__iter__"):
            raise DataError(f"optimizers must be a list of optimizer names (some of "
                            f"{', '.join(map(repr, OPTIMIZERS))}), got {describe(optimizers)}")
        names = [as_choice(o, "optimizers", OPTIMIZERS, OPTIMIZER_ALIASES) for o in optimizers]
        if not names:
            raise DataError("optimizers must name at least one optimizer")
    theta_columns = list(fit.theta_names)
    if set(theta_columns) & set(fit.fixef_names):   # keep the columns apart
        theta_columns = [f"theta.{c}" for c in theta_columns]
    rows = []
    for name in names:
        model = fit.copy()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LmmWarning)
            start = time.perf_counter()
            model.fit(optimizer=name)
            elapsed = time.perf_counter() - start
            conv = model.convergence
        texts = [str(w.message) for w in caught if issubclass(w.category, LmmWarning)]
        for w in caught:   # others' warnings pass through
            if not issubclass(w.category, LmmWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        row = dict(optimizer=name, objective=model.objective, time=elapsed,
                   n_evals=model.n_evals,
                   converged=bool(model.converged and conv.ok),
                   messages="; ".join(dict.fromkeys(texts)))
        row.update(zip(theta_columns, model._theta.tolist()))
        row.update(zip(fit.fixef_names, model.fixef.tolist()))
        rows.append(row)
    return pd.DataFrame(rows)
