"""The covariance of beta-hat from the Hessian of the deviance (docs/theory.md, eq. 104).

lme4's glmer default: H, the Hessian of -2 log L in (theta, beta) at the
optimum by central finite differences (step 1e-4, as ``deriv12``), and
Var(beta-hat) = the beta block of 2 H^{-1}.  Where the deviance's analytic
gradient is available (``laplace.laplace_gradient``, ``quadrature.agq_gradient``), H is
formed from forward differences of gradients at step ``GRADIENT_DELTA`` instead
(n runs beyond the gradient at the optimum).  At a boundary optimum (a
diagonal theta within 1e-4 of 0) lme4 does not form H; then Var(beta-hat) =
(R_X R_X^T)^{-1} from the PIRLS factor at the mode, as for nAGQ = 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fd_hessian", "gradient_hessian", "vcov_from_hessian"]

DELTA = 1e-4   # lme4's deriv12 step
# forward differences of the analytic gradient: O(h) errors, 2e-6 of H's largest entry
# on the fixture models (the gradient at a PIRLS mode is exact to ~1e-12)
GRADIENT_DELTA = 1e-6


def fd_hessian(fun, x: np.ndarray, fx: float, delta: float = DELTA) -> tuple[np.ndarray, int]:
    """Central-difference Hessian of ``fun`` at ``x`` (O(delta^2) errors).

    Diagonal: (f(x+h) - 2 f(x) + f(x-h)) / h^2.  Off-diagonal from the
    points x +- h e_i +- h e_j of both signs along the same diagonal:
    (f(++) + f(--) - f(+i) - f(-i) - f(+j) - f(-j) + 2 f) / (2 h^2), which
    takes n(n-1) evaluations instead of deriv12's 2n(n-1).
    Returns (H, evaluations, g), g the central-difference gradient (deriv12's).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    fp = np.empty(n)
    fm = np.empty(n)
    h = np.zeros((n, n))
    evals = 0
    for i in range(n):
        e = np.zeros(n)
        e[i] = delta
        fp[i] = fun(x + e)
        fm[i] = fun(x - e)
        evals += 2
        h[i, i] = (fp[i] - 2.0 * fx + fm[i]) / delta ** 2
    for i in range(n):
        for j in range(i):
            e = np.zeros(n)
            e[i] = e[j] = delta
            fpp = fun(x + e)
            fmm = fun(x - e)
            evals += 2
            h[i, j] = h[j, i] = (fpp + fmm - fp[i] - fm[i] - fp[j] - fm[j] + 2.0 * fx) \
                / (2.0 * delta ** 2)
    return h, evals, (fp - fm) / (2.0 * delta)


def gradient_hessian(value_gradient, x: np.ndarray, delta: float = DELTA,
                     g0: np.ndarray | None = None,
                     columns: int | None = None) -> tuple[np.ndarray, int]:
    """The Hessian by central differences of the analytic gradient
    (``value_gradient(x)`` returns (f, g), ``laplace.laplace_gradient``):
    column i = (g(x + h e_i) - g(x - h e_i)) / 2h, symmetrised; 2n
    evaluations instead of ``fd_hessian``'s n(n + 1), with O(h^2) errors
    of the same order.  Given g0 = g(x), forward differences (g(x + h e_i)
    - g0) / h instead: n evaluations, O(h) errors (the covariance's H at
    ``GRADIENT_DELTA``; stage 2's first quasi-Newton matrix at ``DELTA``,
    which BFGS then corrects).  With ``columns`` m, only
    the first m columns (theta's) and their transposes are formed, the rest
    left 0.  Returns (H, evaluations)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    m = n if columns is None else columns
    h = np.zeros((n, n))
    for i in range(m):
        e = np.zeros(n)
        e[i] = delta
        if g0 is None:
            h[:, i] = (value_gradient(x + e)[1] - value_gradient(x - e)[1]) / (2.0 * delta)
        else:
            h[:, i] = (value_gradient(x + e)[1] - g0) / delta
    h[:m, m:] = h[m:, :m].T
    h[:m, :m] = 0.5 * (h[:m, :m] + h[:m, :m].T)
    return h, (2 if g0 is None else 1) * m


def vcov_from_hessian(h: np.ndarray, n_theta: int) -> np.ndarray | None:
    """The beta block of 2 H^{-1} (lme4's ``calc.vcov.hess``), None where H is
    singular or the block is not positive definite."""
    try:
        inv = np.linalg.inv(h)
    except np.linalg.LinAlgError:
        return None
    v = inv[n_theta:, n_theta:]
    v = v + v.T
    if not np.isfinite(v).all() or np.linalg.eigvalsh(v).min() <= 0:
        return None
    return v
