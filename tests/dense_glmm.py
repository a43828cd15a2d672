"""Dense brute-force GLMM deviances: the Laplace approximation and adaptive quadrature.

The executable statement of what ``lmmfast.glmm`` computes, with explicit
matrices and textbook formulas, for tests on small data.  Z (n x q) is
formed, Lambda (q x q) too, the conditional mode is found by Fisher scoring
on the penalised deviance with dense solves, and the determinant comes from
a dense Cholesky factor.

For theta, beta (docs/theory.md, eqs. 91-101):

* eta(u) = o + X beta + Z Lambda u, mu = g^{-1}(eta);
* the penalised deviance pdev(u) = sum_i d_i(y_i, mu_i) + ||u||^2 is
  minimised at the conditional mode u~;
* W = diag(w_i), w_i = a_i (dmu/deta)^2 / V(mu_i) at u~ (a_i prior weights);
* Laplace: -2 log L = aic(y, mu) + ||u~||^2 + log det(Lambda^T Z^T W Z Lambda + I);
* quadrature (one scalar term): per level j, with s_j = 1/sqrt(M_jj),
  M = Lambda^T Z^T W Z Lambda + I (diagonal), and c_j(u) = u^2 + sum_{i in j} d_i,
  -2 log L = sum_j [c_j(u~_j) - 2 log(s_j sum_k w_k exp(z_k^2/2 - (c_j(u~_j + s_j z_k) - c_j(u~_j))/2))].
"""

from __future__ import annotations

import numpy as np


def dense_z(remats) -> np.ndarray:
    """Z = [Z_1 ... Z_T] for terms (each with ``refs``, ``z``, ``nlevels``), level-major."""
    blocks = []
    for r in remats:
        n, k = r.z.shape
        zt = np.zeros((n, r.nlevels * k))
        for a in range(k):
            zt[np.arange(n), r.refs * k + a] = r.z[:, a]
        blocks.append(zt)
    return np.hstack(blocks)


def dense_lambda(remats, theta) -> np.ndarray:
    """Block-diagonal Lambda, each term's lambda (filled column by column) repeated per level."""
    mats, pos = [], 0
    for r in remats:
        k = r.z.shape[1]
        lam = np.zeros((k, k))
        for j in range(k):
            for i in range(j, k):
                lam[i, j] = theta[pos]
                pos += 1
        mats.append(np.kron(np.eye(r.nlevels), lam))
    q = sum(m.shape[0] for m in mats)
    out = np.zeros((q, q))
    o = 0
    for m in mats:
        out[o:o + m.shape[0], o:o + m.shape[0]] = m
        o += m.shape[0]
    return out


class DenseGLMM:
    """A GLMM with dense Z, for brute-force deviances."""

    def __init__(self, design, family):
        self.d = design
        self.fam = family
        self.Z = dense_z(design.remats)   # lme4 term order

    def mode(self, theta, beta, tol=1e-13, maxit=200):
        """u~ by Fisher scoring with step-halving, dense solves; returns (u, eta, M)."""
        d, fam = self.d, self.fam
        zl = self.Z @ dense_lambda(self.d.remats, theta)
        fixed = d.offset + d.x @ beta
        q = zl.shape[1]
        u = np.zeros(q)

        def pdev(u):
            mu = fam.linkinv(fixed + zl @ u)
            return fam.dev_resids(d.y, mu, d.prior_weights).sum() + u @ u

        cur = pdev(u)
        for _ in range(maxit):
            eta = fixed + zl @ u
            mu = fam.linkinv(eta)
            me = fam.mu_eta(eta)
            w = d.prior_weights * me ** 2 / fam.variance(mu)
            m = zl.T @ (w[:, None] * zl) + np.eye(q)
            # the score of pdev / -2: Lambda^T Z^T (a (y - mu) mu_eta / V) - u
            score = zl.T @ (d.prior_weights * (d.y - mu) * me / fam.variance(mu)) - u
            step = np.linalg.solve(m, score)
            t = 1.0
            while True:
                new = pdev(u + t * step)
                if new <= cur or t < 1e-10:
                    break
                t /= 2
            u = u + t * step
            cur = new
            if np.max(np.abs(t * step)) < tol:
                break
        eta = fixed + zl @ u
        mu = fam.linkinv(eta)
        me = fam.mu_eta(eta)
        w = d.prior_weights * me ** 2 / fam.variance(mu)
        m = zl.T @ (w[:, None] * zl) + np.eye(q)
        return u, eta, m

    def laplace(self, theta, beta) -> float:
        d, fam = self.d, self.fam
        u, eta, m = self.mode(theta, beta)
        mu = fam.linkinv(eta)
        c = np.linalg.cholesky(m)
        return fam.aic(d.y, d.trials, mu, d.prior_weights) + u @ u \
            + 2.0 * np.log(np.diag(c)).sum()

    def agq(self, theta, beta, n_agq: int) -> float:
        d, fam = self.d, self.fam
        (r,) = d.remats
        u, eta, m = self.mode(theta, beta)
        s = 1.0 / np.sqrt(np.diag(m))
        nodes, weights = np.polynomial.hermite_e.hermegauss(n_agq)
        weights = weights / weights.sum()
        total = 0.0
        for j in range(r.nlevels):
            rows = r.refs == j
            zj = r.z[rows, 0] * theta[0]

            def c(uj, rows=rows, zj=zj, j=j):
                mu = fam.linkinv(eta[rows] + zj * (uj - u[j]))
                return uj * uj + fam.dev_resids(d.y[rows], mu, d.prior_weights[rows]).sum()

            c0 = c(u[j])
            acc = sum(wk * np.exp(zk * zk / 2 - (c(u[j] + s[j] * zk) - c0) / 2)
                      for zk, wk in zip(nodes, weights))
            total += c0 - 2.0 * np.log(s[j] * acc)
        return total

    def deviance(self, theta, beta, n_agq: int = 1) -> float:
        if n_agq > 1:
            return self.agq(theta, beta, n_agq)
        return self.laplace(theta, beta)
