"""Kenward-Roger's adjusted covariance of the fixed effects and denominator df (pbkrtest's method).

The marginal covariance is written linearly in the variance components,
``Sigma = sum_i gamma_i G_i`` (eq. 34): one gamma per entry of the lower
triangle of each term's covariance matrix (eq. 8) and the residual variance.
The expected REML information in gamma gives W (eq. 35), the adjusted
covariance Phi_A (eq. 36) and, for a contrast matrix L, the scaled F
statistic and its denominator df (eq. 37).

pbkrtest forms the n x n matrices Sigma^{-1} G_i.  Here every product is
reduced to q x q and p x p matrices by the Woodbury identity (eq. 38), so
the cost does not grow with n beyond forming Z'WZ, but dense q x q matrices
limit the model size (``MAX_RANDOM_EFFECTS``).  The residual's G is the
inverse prior-weight matrix W^{-1} (pbkrtest, which ignores prior weights,
uses the identity: the two agree for unweighted fits).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import LmmError
from .design.rows import require_rows

__all__ = ["KenwardRogerError", "KenwardRoger", "kenward_roger", "kr_test",
           "MAX_RANDOM_EFFECTS"]

MAX_RANDOM_EFFECTS = 3000
"""Largest number of random effects q for which Kenward-Roger is computed (dense q x q)."""


class KenwardRogerError(LmmError):
    """Kenward-Roger's method does not apply to this fit (an ML fit, or too large)."""


@dataclass(frozen=True)
class KenwardRoger:
    """Kenward-Roger's ingredients at a REML fit.

    ``phi`` is the unadjusted covariance of beta-hat (eq. 23), ``phi_adj`` the
    adjusted Phi_A (eq. 36), ``p_mats`` the matrices P_i = X' dSigma^{-1}/dgamma_i X
    (eq. 35) and ``w`` the asymptotic covariance of gamma-hat, twice the
    inverse expected information.
    """

    phi: np.ndarray
    phi_adj: np.ndarray
    p_mats: np.ndarray
    w: np.ndarray


# --------------------------------------------------------------------------
# the model's matrices


def _z_matrix(fit) -> sp.csc_matrix:
    """Z (eq. 2) as a sparse n x q matrix, terms in lme4's order."""
    blocks = []
    rows = np.arange(fit.nobs)
    for r in fit.remats:
        cols = r.refs[:, None] * r.k + np.arange(r.k)
        blocks.append(sp.csc_matrix((r.z.ravel(), (np.repeat(rows, r.k), cols.ravel())),
                                    shape=(fit.nobs, r.q)))
    return sp.hstack(blocks, format="csc")


def _lambda_matrix(fit) -> sp.csc_matrix:
    """Lambda_theta (eq. 7) as a sparse q x q matrix."""
    thetas = np.split(fit._theta, np.cumsum([r.n_theta for r in fit.remats])[:-1])
    return sp.block_diag([sp.kron(sp.identity(r.nlevels), r.lambda_(t))
                          for r, t in zip(fit.remats, thetas)], format="csc")


def _parameters(fit) -> list[tuple[slice, sp.csr_matrix]]:
    """Per variance component of a term: its columns of Z and I_g (x) E_ab (eq. 34).

    E_ab is symmetric with ones at (a, b) and (b, a); the components follow
    each term's lower triangle column by column, as theta does (eq. 7).
    """
    out = []
    start = 0
    for r in fit.remats:
        for b in range(r.k):
            for a in range(b, r.k):
                e = np.zeros((r.k, r.k))
                e[a, b] = e[b, a] = 1.0
                out.append((slice(start, start + r.q),
                            sp.kron(sp.identity(r.nlevels), e, format="csr")))
        start += r.q
    return out


# --------------------------------------------------------------------------
# eqs. (34)-(38)


def _compute(fit) -> KenwardRoger:
    n, p = fit.nobs, fit.p
    sigma2 = fit.sigma ** 2
    z = _z_matrix(fit)
    lam = _lambda_matrix(fit)
    q = z.shape[1]
    w = sp.diags(fit.weights if fit.weights is not None else np.ones(n))
    wz = (w @ z).tocsc()
    c_zz = (z.T @ wz).toarray()
    c_zx = wz.T @ fit.x
    c_xx = fit.x.T @ (w @ fit.x)

    # eq. (38): Z'WZ Lambda, Lambda' Z'WX and M = Lambda' Z'WZ Lambda + I
    h = (lam.T @ c_zz.T).T
    g = lam.T @ c_zx
    m_inv = np.linalg.inv(lam.T @ h + np.eye(q))
    m_inv = (m_inv + m_inv.T) / 2.0
    m_inv2 = m_inv @ m_inv
    n_k = [m_inv, m_inv + m_inv2, m_inv + m_inv2 + m_inv2 @ m_inv]

    def s_zz(k):
        return (c_zz - h @ n_k[k - 1] @ h.T) / sigma2 ** k

    def s_zx(k):
        return (c_zx - h @ (n_k[k - 1] @ g)) / sigma2 ** k

    def s_xx(k):
        return (c_xx - g.T @ n_k[k - 1] @ g) / sigma2 ** k

    s1_zz, s1_zx, s2_zx = s_zz(1), s_zx(1), s_zx(2)
    s2_zz = s_zz(2)
    params = _parameters(fit)
    npar = len(params) + 1

    # P_i = -X' Sigma^-1 G_i Sigma^-1 X, and E_i Z_i' Sigma^-1 X for the Q_ij
    ez = [e @ s1_zx[cols] for cols, e in params]
    p_mats = np.empty((npar, p, p))
    for i, (cols, _) in enumerate(params):
        p_mats[i] = -s1_zx[cols].T @ ez[i]
    p_mats[-1] = -s_xx(2)
    p_mats = (p_mats + p_mats.transpose(0, 2, 1)) / 2.0

    # Q_ij = X' Sigma^-1 G_i Sigma^-1 G_j Sigma^-1 X and K_ij = tr(Sigma^-1 G_i Sigma^-1 G_j)
    q_mats = np.empty((npar, npar, p, p))
    k_tr = np.empty((npar, npar))
    for i, (ci, ei) in enumerate(params):
        for j, (cj, ej) in enumerate(params):
            q_mats[i, j] = ez[i].T @ s1_zz[ci, cj] @ ez[j]
            if j <= i:
                k_tr[i, j] = k_tr[j, i] = np.sum((ei @ s1_zz[ci, cj]) * (ej @ s1_zz[cj, ci]).T)
        q_mats[i, -1] = ez[i].T @ s2_zx[ci]
        q_mats[-1, i] = q_mats[i, -1].T
        k_tr[i, -1] = k_tr[-1, i] = (ei @ s2_zz[ci, ci]).trace()
    q_mats[-1, -1] = s_xx(3)
    k_tr[-1, -1] = (n - q + np.sum(m_inv * m_inv)) / sigma2 ** 2

    phi = fit.vcov.to_numpy()
    phi_p = np.einsum("ab,ibc->iac", phi, p_mats)
    info = (k_tr - 2.0 * np.einsum("ab,ijba->ij", phi, q_mats)
            + np.einsum("iab,jba->ij", phi_p, phi_p))
    eigen = np.linalg.eigvalsh(info)
    w_mat = 2.0 * (np.linalg.inv(info) if np.min(np.abs(eigen)) > 1e-10
                   else np.linalg.pinv(info))
    w_mat = (w_mat + w_mat.T) / 2.0
    u = np.einsum("ij,ijab->ab", w_mat, q_mats) \
        - np.einsum("ij,iab,bc,jcd->ad", w_mat, p_mats, phi, p_mats)
    phi_adj = phi + 2.0 * phi @ u @ phi
    return KenwardRoger(phi, (phi_adj + phi_adj.T) / 2.0, p_mats, w_mat)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def kenward_roger(fit) -> KenwardRoger:
    """The :class:`KenwardRoger` ingredients of a REML fit (cached while the fit is unchanged).

    Raises :class:`KenwardRogerError` for ML fits and for models with more
    than ``MAX_RANDOM_EFFECTS`` random effects, and a ``DataError`` for a model
    that keeps no rows (streamed or Dask data).
    """
    fit._require_fit()
    if not fit.reml:
        raise KenwardRogerError(
            "Kenward-Roger's method needs a REML fit (as pbkrtest and lmerTest require): "
            "refit with reml=True, or use ddf='satterthwaite'")
    q = sum(r.q for r in fit.remats)
    if q > MAX_RANDOM_EFFECTS:
        raise KenwardRogerError(
            f"Kenward-Roger's method uses dense q x q matrices; this model has q = {q} "
            f"random effects, more than the limit of {MAX_RANDOM_EFFECTS} "
            f"(lmmfast.kenward_roger.MAX_RANDOM_EFFECTS): use ddf='satterthwaite'")
    require_rows(fit, "Kenward-Roger's method (ddf='kenward-roger')",
                 "; or use ddf='satterthwaite', which needs only the cross-products")
    key = (fit._theta.tobytes(), float(fit._solution["pwrss"]))
    hit = _CACHE.get(fit)
    if hit is None or hit[0] != key:
        hit = (key, _compute(fit))
        _CACHE[fit] = hit
    return hit[1]


def kr_test(kr: KenwardRoger, beta, L) -> tuple[float, float, int, float]:
    """Kenward-Roger's test of H0: L beta = 0 (eq. 37; pbkrtest's ``KRmodcomp``).

    Returns ``(f_unscaled, scale, ndf, ddf)``: the Wald statistic with Phi_A
    divided by the rank of L, the scale factor lambda of the F statistic,
    and the numerator and denominator df.  The test statistic is
    ``scale * f_unscaled`` on (ndf, ddf) degrees of freedom.
    """
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    beta = np.asarray(beta, dtype=np.float64)
    q = int(np.linalg.matrix_rank(L))
    phi = kr.phi
    theta = L.T @ np.linalg.solve(L @ phi @ L.T, L)
    u = np.einsum("ab,bc,icd,de->iae", theta, phi, kr.p_mats, phi)
    traces = np.einsum("iaa->i", u)
    a1 = traces @ kr.w @ traces
    a2 = np.einsum("ij,iab,jba->", kr.w, u, u)
    b = (a1 + 6.0 * a2) / (2.0 * q)
    g = ((q + 1) * a1 - (q + 4) * a2) / ((q + 2) * a2)
    denom = 3.0 * q + 2.0 * (1.0 - g)
    c1, c2, c3 = g / denom, (q - g) / denom, (q + 2 - g) / denom
    v0 = 1.0 + c1 * b
    v0 = 0.0 if abs(v0) < 1e-10 else v0
    v1, v2 = 1.0 - c2 * b, 1.0 - c3 * b
    ratio = 1.0 if abs(1.0 - a2 / q) < 1e-14 and abs(v1) < 1e-14 else (1.0 - a2 / q) / v1
    rho = ratio ** 2 * v0 / v2 / q
    ddf = 4.0 + (q + 2) / (q * rho - 1.0)
    scale = 1.0 if abs(ddf - 2.0) < 0.01 else ddf * (1.0 - a2 / q) / (ddf - 2.0)
    lb = L @ beta
    wald = lb @ np.linalg.solve(L @ kr.phi_adj @ L.T, lb)
    return float(wald / q), float(scale), q, float(ddf)
