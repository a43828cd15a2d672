"""The Laplace approximation to the GLMM deviance (docs/theory.md, eq. 98).

At the conditional mode u~ of (theta, beta), lme4's ``glmerLaplace`` value is

    -2 log L = a(y, mu) + ||u~||^2 + log |L_Z|^2,

with a the family's ``aic`` term (-2 times the log-likelihood of the
response given u~, R's ``family$aic``), and L_Z the Cholesky factor of
Lambda^T Z^T W Z Lambda + I at the working weights of u~.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np

from ..design.layout import BLOCK_SPARSE, block_index
from .pirls import Mode, Pirls
from .. import _pirls
from .rows import at_rows, merge_sums

__all__ = ["gradient_available", "laplace_deviance", "laplace_gradient"]


def laplace_deviance(pirls: Pirls, mode: Mode, exact: bool = False) -> float:
    """-2 log L by the Laplace approximation at a conditional mode (eq. 98).

    a(y, mu) = sum_i d_i + c with c not depending on mu (eq. 99); c is taken
    once from the family's ``aic``, unless ``exact`` (or where the successes
    are not whole numbers, which R's ``aic`` rounds).
    """
    return pirls.aic(mode, exact) + mode.sqr_u + mode.ld_l2


DENSE_Q = 3000   # largest q beyond the first term for which S's blocks are formed densely
DENSE_S12 = 10_000_000   # most entries of S's dense block between the first term and the others


class _Inverse:
    """S = (L_Z L_Z^T)^{-1} = M^{-1} where the gradient reads it (eq. 96).

    M = Lambda^T A_Z Lambda + I, A_Z = Z^T W Z the random-effects blocks of the
    u-only factor's A at the mode (``predictor.Factor``, eq. 12), written
    [[D, B], [B^T, C]] with D the first term's block-diagonal part (one k x k
    block a level), C the other terms': by the Schur complement, S_22 =
    (C - B^T D^{-1} B)^{-1}, S_12 = -D^{-1} B S_22 and the diagonal blocks of
    S_11 = D^{-1} + D^{-1} B S_22 B^T D^{-1}, the only ones of S_11 a row touches.
    """

    _NONE = np.zeros((0, 0))

    def __init__(self, factor, lams: list[np.ndarray]):
        lay = factor.layout
        a = factor.a
        T = lay.n_terms
        nl1, k1 = int(lay.nlev[0]), int(lay.k[0])
        self.q1, self.k1 = q1, k1 = nl1 * k1, k1
        l0 = lams[0]
        if k1 == 1:   # D and its inverse level by level, without einsum's set-up
            self.dinv = 1.0 / (lay.block_a(a, 0, 0) * (l0[0, 0] * l0[0, 0]) + 1.0)
        else:   # (A's block-diagonal blocks: [level, col, row])
            blocks = lay.block_a(a, 0, 0).reshape(nl1, k1, k1).transpose(0, 2, 1)
            self.dinv = np.linalg.inv(np.einsum("ia,lij,jb->lab", l0, blocks, l0) + np.eye(k1))
        self.dinv = self.dinv.reshape(nl1, k1, k1)
        if T == 1:   # one term: S = D^{-1}
            self.dinv_b = self.s12 = self._NONE.reshape(q1, 0)
            self.s22 = self._NONE
            self.s11 = self.dinv
            self.s11_flat = self.dinv.reshape(-1)
            return
        nl = [int(v) for v in lay.nlev]
        k = [int(v) for v in lay.k]

        def level_blocks(s):   # A's block-diagonal (s, s): (nl, k, k), [level, row, col]
            return lay.block_a(a, s, s).reshape(nl[s], k[s], k[s]).transpose(0, 2, 1)

        q = [n * kk for n, kk in zip(nl, k)]
        off = np.concatenate([[0], np.cumsum(q[1:])]).astype(np.intp)   # terms 1.. in C
        q2 = int(off[-1])

        def scaled(blk, s, t):   # Lambda_s^T blk Lambda_t of a dense q_s x q_t block
            m = blk.reshape(nl[s], k[s], nl[t], k[t])
            if k[s] > 1 or k[t] > 1:
                m = np.einsum("satj,jb->satb", np.einsum("ia,sitj->satj", lams[s], m), lams[t])
            else:
                m = m * (lams[s][0, 0] * lams[t][0, 0])
            return m.reshape(q[s], q[t])

        def dense(s, t):   # A's block (s, t), s > t, as a dense q_s x q_t array
            flat = lay.block_a(a, s, t)
            if lay.kind_a[block_index(s, t)] != BLOCK_SPARSE:
                return flat.reshape(q[s], q[t], order="F")
            colptr, rowidx = lay.pattern(s)
            nnz = len(rowidx)
            vals = flat[:nnz * k[s] * k[t]].reshape(nnz, k[t], k[s])   # [entry, col, row]
            out = np.zeros((nl[s], k[s], nl[t], k[t]))
            lev_t = np.repeat(np.arange(nl[t]), np.diff(colptr))
            out[rowidx, :, lev_t, :] = vals.transpose(0, 2, 1)
            return out.reshape(q[s], q[t])

        b = np.zeros((q1, q2))
        c = np.eye(q2)
        for s in range(1, T):
            rs = slice(off[s - 1], off[s])
            b[:, rs] = scaled(dense(s, 0), s, 0).T
            lb = np.einsum("ia,lij,jb->lab", lams[s], level_blocks(s), lams[s])
            first = off[s - 1] + np.arange(nl[s])[:, None, None] * k[s]
            span = np.arange(k[s])
            c[first + span[:, None], first + span[None, :]] += lb
            for t in range(1, s):
                blk = scaled(dense(s, t), s, t)
                c[rs, off[t - 1]:off[t]] = blk
                c[off[t - 1]:off[t], rs] = blk.T
        if k1 == 1:
            self.dinv_b = self.dinv.reshape(q1, 1) * b
        else:
            self.dinv_b = np.einsum("lab,lbq->laq", self.dinv,
                                    b.reshape(nl1, k1, q2)).reshape(q1, q2)
        schur = c - b.T @ self.dinv_b
        self.s22 = np.linalg.inv(schur) if q2 else np.zeros((0, 0))
        # (the product with S_22 first, by one matrix product: q1 q2^2 flops in BLAS)
        self.s12 = np.ascontiguousarray(-self.dinv_b @ self.s22)
        if k1 == 1:   # D^{-1} B S_22 B^T D^{-1}'s diagonal
            self.s11 = self.dinv - np.sum(self.s12 * self.dinv_b, axis=1).reshape(q1, 1, 1)
        else:
            dbl = self.dinv_b.reshape(nl1, k1, q2)
            self.s11 = self.dinv - np.einsum("laq,lbq->lab", self.s12.reshape(nl1, k1, q2), dbl)
        self.s11_flat = np.ascontiguousarray(self.s11).ravel()

    def solve(self, v: np.ndarray) -> np.ndarray:
        """S v."""
        q1, k1 = self.q1, self.k1
        if len(v) == q1 and k1 == 1:   # one scalar term: S = D^{-1}
            return self.dinv.ravel() * v
        v1, v2 = v[:q1], v[q1:]
        t = self.s22 @ (v2 - self.dinv_b.T @ v1)
        r1 = np.einsum("lab,lb->la", self.dinv, v1.reshape(-1, k1)).ravel() - self.dinv_b @ t
        return np.concatenate([r1, t])


def gradient_available(pirls: Pirls) -> bool:
    """Whether ``laplace_gradient`` applies: a link whose log-likelihood is concave
    in eta (every one but cauchit: the observed information's weights are then
    not negative), at most ``DENSE_Q`` random effects beyond the first term and at
    most ``DENSE_S12`` entries in S's block between the first term and the others."""
    q1, q2 = int(pirls.q_off[1]), int(pirls.q_off[-1] - pirls.q_off[1])
    return pirls.family.link.name != "cauchit" and q2 <= DENSE_Q and q1 * q2 <= DENSE_S12


def laplace_gradient(pirls: Pirls, mode: Mode) -> np.ndarray | None:
    """The gradient of the Laplace deviance (eq. 98) in (theta, beta) at a
    conditional mode, lme4's theta order then beta (eq. 98a); None where it is
    not available (``gradient_available``, or a non-canonical link whose
    observed information has a weight that is not positive at the mode, as a
    Poisson identity link's at y = 0).

    With G = Z Lambda, M = G^T W G + I = L_Z L_Z^T (eq. 96, Fisher weights),
    S = M^{-1}, S_o = (G^T W_o G + I)^{-1} (W_o the observed information's
    weights, W for a canonical link), s_i = d d_i / d eta_i, w_i' = d w_i /
    d eta_i and h_i = g_i^T S g_i:

        d/d beta    = X^T e,
        d/d theta_k = e^T Z Lambda_k u - 1/2 s^T Z Lambda_k r + 2 tr(S G^T W Z Lambda_k),

    e = s + h w' - W_o G r, r = S_o G^T (h w'), Lambda_k = d Lambda / d theta_k.
    """
    if not gradient_available(pirls):
        return None
    fam = pirls.family
    lams = pirls.lambdas(mode.theta)
    s_fisher = _Inverse(pirls.factor(False), lams)
    s_observed = s_fisher
    if fam.link.name != fam.canonical:
        observed = pirls.observed_factor(mode)
        if observed is None:
            return None
        s_observed = _Inverse(observed, lams)
    at_mode = pirls.rows_at_mode(mode)
    g = _GradientTerms(s_fisher, pirls.kern, int(pirls.q_off[-1]), lams, pirls.k,
                       pirls.q_off64, *pirls.theta_columns, mode.beta, mode.u,
                       None if at_mode else pirls.b(mode.u, mode.theta), at_mode)
    r = s_observed.solve(pirls.run_rows(gradient_first, g, merge=operator.add))
    g_theta, grad_beta = pirls.run_rows(gradient_second, g, r, merge=merge_sums)
    grad = np.empty(pirls.n_theta + len(grad_beta))
    grad[pirls.perm] = g_theta
    grad[pirls.n_theta:] = grad_beta
    return grad


@dataclass
class _GradientTerms:
    """What a partition of the rows needs for its part of the gradient."""

    S: _Inverse
    kern: object              # rows.Kernel
    q: int
    lams: list
    k: list
    q_off: np.ndarray         # int64
    ent_z: np.ndarray         # each theta entry's z column and lambda column among a
    ent_col: np.ndarray       # row's random-effects columns (``Pirls.theta_columns``)
    beta: np.ndarray
    u: np.ndarray
    b: list | None            # Lambda u per term (None: the workspace holds the mode)
    at_mode: bool = False     # the workspace holds the mode's one chunk
    kept: dict = field(default_factory=dict)   # (one chunk: its rows between the passes)

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (what sending it to a partition costs)."""
        return sum(v.nbytes for v in vars(self.S).values() if isinstance(v, np.ndarray)) \
            + self.u.nbytes + sum(v.nbytes for v in self.b or [])

    def chunk(self, c, ws, keep: bool = False):
        """A chunk's eta, mu and d mu / d eta at the mode, and its rows' columns,
        G = Z Lambda values and z (m x K, eqs. 2, 3; ``_pirls.gradient_columns``);
        ``keep``: kept for the second pass (the chunk is its partition's only one;
        the rows are copied unless the workspace is the mode's own, ``at_mode``)."""
        kept = self.kept.get(id(c))
        if kept is not None:
            return kept
        if not self.at_mode:
            at_rows(c, self.kern, self.beta, self.b, ws)
        eta, mu, *_, mu_eta = ws.take(c.size)
        K = int(sum(self.k))
        cols = np.empty((c.size, K), dtype=np.int64)
        gv, zall = np.empty((c.size, K)), np.empty((c.size, K))
        _pirls.gradient_columns(c.refs, c.z, self.lams, self.q_off, cols, gv, zall)
        if keep:
            rows = (eta, mu, mu_eta) if self.at_mode else (eta.copy(), mu.copy(), mu_eta.copy())
            self.kept[id(c)] = rows + (cols, gv, zall)
        return eta, mu, mu_eta, cols, gv, zall

    def inverse(self):
        """(q1, k1, S_11, S_12, S_22) as the compiled passes take them."""
        S = self.S
        return S.q1, S.k1, S.s11_flat, S.s12, S.s22


def gradient_first(chunks, ws, g: _GradientTerms) -> np.ndarray:
    """A partition's G^T v (the gradient's first pass over rows)."""
    gtv = np.zeros(g.q)
    for c in chunks:
        eta, mu, mu_eta, cols, gv, zall = g.chunk(c, ws, keep=len(chunks) == 1)
        _pirls.gradient_first(g.kern.link, g.kern.family, c.y, c.wt, eta, mu, mu_eta, cols, gv,
                              *g.inverse(), gtv)
    return gtv


def gradient_second(chunks, ws, g: _GradientTerms, r: np.ndarray):
    """A partition's sums of the gradient in theta (internal order) and beta, with
    e = s + v - W G r (the second pass over rows)."""
    g_theta = np.zeros(len(g.ent_z))
    grad_beta = np.zeros(chunks[0].x.shape[1])
    for c in chunks:
        eta, mu, mu_eta, cols, gv, zall = g.chunk(c, ws)
        _pirls.gradient_second(g.kern.link, g.kern.family, c.y, c.wt, eta, mu, mu_eta, c.x,
                               cols, gv, zall, *g.inverse(), r, g.u, g.ent_z, g.ent_col,
                               g_theta, grad_beta)
    return g_theta, grad_beta
