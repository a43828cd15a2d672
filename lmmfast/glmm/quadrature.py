"""Adaptive Gauss-Hermite quadrature of the GLMM deviance (docs/theory.md, eqs. 100-101).

For one scalar random-effects term the integral over u factors into one
integral per level j.  Centred at the mode u~_j and scaled by its
conditional standard deviation s_j = 1 / (L_Z)_jj, lme4's ``glmerAGQ``
computes

    -2 log L = sum_j c_j(u~_j) + log |L_Z|^2 - 2 sum_j log sum_k w_k exp(z_k^2 / 2 - (c_j(u~_j + z_k s_j) - c_j(u~_j)) / 2),

with c_j(u) = u^2 + sum_{i in j} d_i the level's penalised deviance and
(z_k, w_k) the Gauss-Hermite rule for the standard normal density.
"""

from __future__ import annotations

import functools

import numpy as np

from .. import _pirls
from ..errors import FitError
from .pirls import Mode, Pirls
from .rows import at_rows, merge_sums

__all__ = ["agq_deviance", "agq_gradient", "check_agq", "gh_rule"]


@functools.cache
def gh_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the n-point Gauss-Hermite rule for N(0, 1) (weights sum to 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


@functools.cache
def _nodes_off_zero(n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The n-point rule's nodes off 0 with their weights, and the weight at 0 (0 for
    an even n)."""
    z, w = gh_rule(n)
    off = z != 0.0
    return z[off], w[off], float(w[~off].sum())


def check_agq(pirls: Pirls, n_agq: int) -> None:
    """nAGQ > 1 needs exactly one random-effects term with one effect per level (as lme4)."""
    remats = pirls.design.remats
    if n_agq > 1 and (len(remats) != 1 or remats[0].k != 1):
        terms = ", ".join(r.source for r in remats)
        raise FitError(f"nAGQ = {n_agq} needs a single scalar random-effects term; "
                       f"the model has {terms}: use nAGQ = 1 (Laplace) or 0")


def agq_deviance(pirls: Pirls, mode: Mode, n_agq: int) -> float:
    """-2 log L by adaptive Gauss-Hermite quadrature with ``n_agq`` nodes (eq. 101)."""
    rule = _Rule(pirls, mode, n_agq)
    return rule.combine(pirls.run_rows(agq_partition, *rule.args(pirls, mode), merge=merge_sums),
                        mode)


class _Rule:
    """The nodes of eq. 101 at a mode: each level's scale s_j = 1 / (L_Z)_jj and the
    shifts z_k s_j of the nodes off 0."""

    def __init__(self, pirls: Pirls, mode: Mode, n_agq: int):
        l_diag = pirls.factor(False).l_diag_first()
        self.l2 = l_diag * l_diag
        self.sd = 1.0 / l_diag
        self.zk, self.wk, self.w0 = _nodes_off_zero(n_agq)
        self.shift = np.multiply.outer(self.zk, self.sd)

    def args(self, pirls: Pirls, mode: Mode) -> tuple:
        """A partition function's arguments after the rows (``agq_partition``; no b
        where the workspace holds the mode's rows)."""
        at_mode = pirls.rows_at_mode(mode)
        return (pirls.kern, mode.beta, None if at_mode else pirls.b(mode.u, mode.theta),
                float(mode.theta[0]), self.shift, pirls.nl[0], at_mode)

    def combine(self, sums: tuple, mode: Mode, grad: np.ndarray | None = None) -> float:
        """-2 log L from the level sums of the unit deviances at the mode and at the
        nodes (``agq_partition``'s first two); with ``grad``, its gradient into it
        from the rest (eq. 101a; compiled, ``_pirls.agq_combine``)."""
        gradient = grad is not None
        value = _pirls.agq_combine(
            sums[0], sums[1], mode.u, self.shift, self.zk, self.wk, self.w0, mode.ld_l2,
            gradient, float(mode.theta[0]), self.l2, self.sd, *sums[2:], grad=grad)
        if value is None:
            raise FitError(f"adaptive quadrature failed (non-finite level integrals) at "
                           f"theta = {mode.theta.tolist()}")
        return value


def agq_partition(chunks, ws, kern, beta, b, lam: float, shift: np.ndarray, nl: int,
                  at_mode: bool = False, gradient: bool = False):
    """A partition's level sums of the unit deviances at the mode (c0) and at every
    node's shifted linear predictor (K x nl, eq. 101), all nodes in one compiled
    pass (``_pirls.agq_sums``; ``at_mode``: the workspace holds the mode's one
    chunk); with ``gradient`` also those ``agq_gradient`` takes (eq. 101a): of
    s z, s x, w z^2, w z x, w' z^2 x, w' z^3 at the mode and s x, s z at each node."""
    nk, p = len(shift), chunks[0].x.shape[1]
    out = (np.zeros(nl), np.zeros((nk, nl)))
    if gradient:
        out += (np.zeros((nl, p)), np.zeros(nl), np.zeros(nl), np.zeros((nl, p)),
                np.zeros((nl, p)), np.zeros(nl), np.zeros((nk, nl, p)), np.zeros((nk, nl)))
    for c in chunks:
        if not at_mode:
            at_rows(c, kern, beta, b, ws)
        eta, mu, dev, *_, mu_eta = ws.take(c.size)
        _pirls.agq_sums(kern.link, kern.family, c.refs[0], c.z[0][:, 0], c.x, c.y, c.wt,
                        eta, mu, mu_eta, dev, lam, shift, *out[:2], gradient, *out[2:])
    return out


def agq_gradient(pirls: Pirls, mode: Mode, n_agq: int) -> tuple[float, np.ndarray]:
    """-2 log L of eq. 101 at a conditional mode and its gradient in (theta, beta),
    for a canonical link (eq. 101a).

    Per level j, with c_j' and c_j'' the derivatives of c_j in u, s_i = d d_i / d eta,
    w_i the working weights and w_i' = d w_i / d eta: the mode moves by
    u~' = -(d c_j' / d phi) / c_j''(u~), c_j'' = 2 L_jj^2 (Newton = Fisher), and the
    scale by s_j' = -s_j^3 (L_jj^2)' / 2; the level's term differentiates to
    dc_j(u~) + (L_jj^2)' / L_jj^2 + sum_k w_k E_jk G_jk / M_j, E_jk its quadrature
    summands, M_j their sum, G_jk = dc_j(u_jk) - dc_j(u~), u_jk = u~_j + z_k s_j
    (d: partial in phi at fixed u, plus c_j'(u_jk) (u~' + z_k s_j')).
    """
    rule = _Rule(pirls, mode, n_agq)
    sums = pirls.run_rows(agq_partition, *rule.args(pirls, mode), True, merge=merge_sums)
    grad = np.empty(1 + len(mode.beta))
    return rule.combine(sums, mode, grad), grad
