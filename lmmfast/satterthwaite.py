"""Satterthwaite's denominator degrees of freedom for fixed-effect contrasts (lmerTest's method).

The variance parameters are ``varpar = (theta, sigma)``.  Their asymptotic
covariance is twice the inverse Hessian of the (RE)ML deviance in varpar
(eqs. 28, 29), and the covariance of the fixed effects depends on them through
``V = sigma^2 (R_X R_X^T)^{-1}`` (eq. 23), whose Jacobian enters the
Satterthwaite approximation (eqs. 30, 31); the F test of several contrasts
splits them into independent ones (eq. 32).

sigma enters both the deviance and V in closed form; the derivatives in theta
are central differences, refined by Richardson extrapolation, of the factor's
components evaluated at nearby theta (eq. 33).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import numpy as np

from .errors import ConvergenceWarning, FitError

__all__ = ["VarparCovariance", "varpar_covariance", "contrast_df", "f_test", "combine_df",
           "richardson"]

EIGEN_TOL = 1e-8        # eigenvalues of the Hessian at or below this are dropped (lmerTest)
RELATIVE_STEP = 0.1     # first step: this fraction of |theta_i| ...
STEP_FLOOR = 0.01       # ... with |theta_i| taken as at least this
RICHARDSON_LEVELS = 4   # steps h, h/2, h/4, h/8


@dataclass(frozen=True)
class VarparCovariance:
    """What Satterthwaite's method needs at a fit.

    ``vcov_beta`` is V (eq. 23), ``hessian`` the Hessian H of the deviance in
    varpar (eq. 28), ``vcov_varpar`` A = 2 H^+ (eq. 29) and ``jacobian`` the
    array of dV / d varpar_i (eq. 30), one p x p slice per entry of
    ``varpar = (theta, sigma)``.
    """

    varpar: np.ndarray
    vcov_beta: np.ndarray
    hessian: np.ndarray
    vcov_varpar: np.ndarray
    jacobian: np.ndarray


def richardson(estimates) -> np.ndarray:
    """Richardson extrapolation of estimates at steps h, h/2, h/4, ... (eq. 33).

    The estimates' errors must be even powers of the step, as those of
    central differences are: each round cancels the lowest remaining power.
    """
    table = [np.asarray(e, dtype=np.float64) for e in estimates]
    m = 1
    while len(table) > 1:
        factor = 4.0 ** m
        table = [(factor * fine - coarse) / (factor - 1.0)
                 for coarse, fine in zip(table[:-1], table[1:])]
        m += 1
    return table[0]


def _evaluator(fit):
    """Psi(theta) = [ldL2 (+ ldRX2 for REML), pwrss, vec((R_X R_X^T)^{-1})] from the factor."""
    core = fit._core

    def evaluate(theta: np.ndarray) -> np.ndarray:
        info = core.update(fit._to_internal(theta))
        if info != 0:
            raise FitError(f"the Cholesky factor failed at theta = {theta} (info {info}) "
                           "while differentiating for Satterthwaite's method")
        ld_l2, ld_rx2, pwrss = core.components()
        rx_inv = np.linalg.inv(fit._fixed_factor()[0])
        logdets = ld_l2 + (ld_rx2 if fit.reml else 0.0)
        return np.concatenate([[logdets, pwrss], (rx_inv.T @ rx_inv).ravel()])

    return evaluate


def _theta_derivatives(fit):
    """First and second derivatives of Psi(theta) (see ``_evaluator``) at the fitted theta.

    Returns ``(grad, hess)`` with ``grad[i]`` = dF/dtheta_i and
    ``hess[i, j]`` = d2F/dtheta_i dtheta_j, by central differences with
    Richardson extrapolation (eq. 33).  The factor is restored afterwards.
    """
    theta = np.asarray(fit._theta, dtype=np.float64)
    m = theta.size
    evaluate = _evaluator(fit)
    steps = RELATIVE_STEP * np.maximum(np.abs(theta), STEP_FLOOR)
    try:
        f0 = evaluate(theta)
        grad = np.empty((m, f0.size))
        hess = np.empty((m, m, f0.size))
        for i in range(m):
            first, second = [], []
            for level in range(RICHARDSON_LEVELS):
                d = _step(steps, level, i)
                plus, minus = evaluate(theta + d), evaluate(theta - d)
                first.append((plus - minus) / (2 * d[i]))
                second.append((plus - 2 * f0 + minus) / d[i] ** 2)
            grad[i] = richardson(first)
            hess[i, i] = richardson(second)
        for i in range(m):
            for j in range(i):
                mixed = []
                for level in range(RICHARDSON_LEVELS):
                    d = _step(steps, level, i, j)
                    both = evaluate(theta + d) - 2 * f0 + evaluate(theta - d)
                    mixed.append((both - hess[i, i] * d[i] ** 2 - hess[j, j] * d[j] ** 2)
                                 / (2 * d[i] * d[j]))
                hess[i, j] = hess[j, i] = richardson(mixed)
    finally:
        fit._core.update(fit._to_internal(theta))
    return grad, hess


def _step(steps: np.ndarray, level: int, *which: int) -> np.ndarray:
    """The step vector of Richardson level ``level`` along the coordinates ``which``."""
    d = np.zeros_like(steps)
    for i in which:
        d[i] = steps[i] / 2 ** level
    return d


def _compute(fit) -> VarparCovariance:
    p = fit.p
    m = len(fit.theta_names)
    sigma = fit.sigma
    pwrss = float(fit._solution["pwrss"])
    dof = fit.nobs - (p if fit.reml else 0)
    rx_inv = np.linalg.inv(fit._solution["rx"])
    c = rx_inv.T @ rx_inv
    grad, hess = _theta_derivatives(fit)

    # eq. (28): D = a(theta) + b(theta) / sigma^2 + dof log(2 pi sigma^2)
    h = np.empty((m + 1, m + 1))
    h[:m, :m] = hess[:, :, 0] + hess[:, :, 1] / sigma ** 2
    h[:m, m] = h[m, :m] = -2.0 * grad[:, 1] / sigma ** 3
    h[m, m] = 6.0 * pwrss / sigma ** 4 - 2.0 * dof / sigma ** 2

    # eq. (30): dV/dtheta_i = sigma^2 dC/dtheta_i, dV/dsigma = 2 sigma C
    jac = np.empty((m + 1, p, p))
    jac[:m] = sigma ** 2 * grad[:, 2:].reshape(m, p, p)
    jac[m] = 2.0 * sigma * c
    jac = (jac + jac.transpose(0, 2, 1)) / 2.0

    return VarparCovariance(np.append(fit._theta, sigma), sigma ** 2 * c, h,
                            2.0 * _positive_pinv(h), jac)


def _positive_pinv(h: np.ndarray) -> np.ndarray:
    """H^+ over the eigenvalues above EIGEN_TOL, warning as lmerTest does (eq. 29)."""
    values, vectors = np.linalg.eigh((h + h.T) / 2.0)
    negative = values < -EIGEN_TOL
    zero = np.abs(values) <= EIGEN_TOL
    if negative.any():
        warnings.warn(f"the Hessian of the deviance in (theta, sigma) has {negative.sum()} "
                      f"negative eigenvalue(s) {values[negative]}: the model may not have "
                      "converged; those directions are left out of the variance-parameter "
                      "covariance", ConvergenceWarning, stacklevel=4)
    if zero.any():
        warnings.warn(f"the Hessian of the deviance in (theta, sigma) has {zero.sum()} "
                      f"eigenvalue(s) close to zero {values[zero]}: the model may not have "
                      "converged", ConvergenceWarning, stacklevel=4)
    keep = values > EIGEN_TOL
    return (vectors[:, keep] / values[keep]) @ vectors[:, keep].T


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def varpar_covariance(fit) -> VarparCovariance:
    """The :class:`VarparCovariance` of a fitted model (cached while the fit is unchanged)."""
    fit._require_fit()
    key = (fit._theta.tobytes(), float(fit._solution["pwrss"]), fit.reml)
    hit = _CACHE.get(fit)
    if hit is None or hit[0] != key:
        hit = (key, _compute(fit))
        _CACHE[fit] = hit
    return hit[1]


def contrast_df(cov: VarparCovariance, l) -> float:
    """Satterthwaite's df of the contrast l^T beta (eq. 31): 2 (l V l^T)^2 / (g A g^T)."""
    l = np.asarray(l, dtype=np.float64)
    var = l @ cov.vcov_beta @ l
    g = np.einsum("i,kij,j->k", l, cov.jacobian, l)
    return float(2.0 * var ** 2 / (g @ cov.vcov_varpar @ g))


def combine_df(nu) -> float:
    """Denominator df of an F test from the df of its independent contrasts (eq. 32)."""
    nu = np.asarray(nu, dtype=np.float64)
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < 1e-8):
        return float(nu.mean())
    if np.any(nu <= 2):
        return 2.0
    e = np.sum(nu / (nu - 2.0))
    return float(2.0 * e / (e - nu.size))


def f_test(cov: VarparCovariance, beta, L) -> tuple[float, int, float] | None:
    """F statistic, numerator and denominator df of H0: L beta = 0 (eq. 32).

    lmerTest's ``contestMD``.
    ``L`` may be rank deficient: it is replaced by the eigenvectors of
    L V L^T with eigenvalues above sqrt(machine eps) times the largest.
    Returns None when no contrast is left.
    """
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    beta = np.asarray(beta, dtype=np.float64)
    values, vectors = np.linalg.eigh(L @ cov.vcov_beta @ L.T)
    values, vectors = values[::-1], vectors[:, ::-1]
    keep = values > max(np.sqrt(np.finfo(float).eps) * values[0], 0.0)
    q = int(keep.sum())
    if q == 0:
        return None
    rows = vectors[:, keep].T @ L
    d = values[keep]
    f_value = float(np.sum((rows @ beta) ** 2 / d) / q)
    nu = [contrast_df(cov, row) for row in rows]
    return f_value, q, combine_df(nu)
