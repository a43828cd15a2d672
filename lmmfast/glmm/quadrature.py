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

from ..errors import FitError
from .pirls import Mode, Pirls
from .rows import at_rows

__all__ = ["agq_deviance", "check_agq", "gh_rule"]


@functools.cache
def gh_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the n-point Gauss-Hermite rule for N(0, 1) (weights sum to 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


def check_agq(pirls: Pirls, n_agq: int) -> None:
    """nAGQ > 1 needs exactly one random-effects term with one effect per level (as lme4)."""
    remats = pirls.design.remats
    if n_agq > 1 and (len(remats) != 1 or remats[0].k != 1):
        terms = ", ".join(r.source for r in remats)
        raise FitError(f"nAGQ = {n_agq} needs a single scalar random-effects term; "
                       f"the model has {terms}: use nAGQ = 1 (Laplace) or 0")


def agq_deviance(pirls: Pirls, mode: Mode, n_agq: int) -> float:
    """-2 log L by adaptive Gauss-Hermite quadrature with ``n_agq`` nodes (eq. 101)."""
    nl = pirls.nl[0]
    sd = 1.0 / pirls.factor(False).l_diag_first()
    u = mode.u
    nodes, weights = gh_rule(n_agq)
    off = nodes != 0.0
    zk = nodes[off]
    shift = zk[:, None] * sd[None, :]
    lams = pirls.lambdas(mode.theta)
    c0, ck = pirls.run_rows(agq_partition, pirls.kern, pirls.family, mode.beta,
                            pirls.b(u, lams), float(mode.theta[0]), shift, nl,
                            pirls.rows_at_mode(mode), merge=_add_pair)
    c0 += u * u
    uk = u[None, :] + shift
    ck += uk * uk
    mult = np.sum(weights[off][:, None] * np.exp(0.5 * zk[:, None] ** 2 - 0.5 * (ck - c0[None, :])),
                  axis=0)
    mult += weights[~off].sum()
    if not (np.isfinite(mult).all() and (mult > 0).all()):
        raise FitError(f"adaptive quadrature failed (non-finite level integrals) at "
                       f"theta = {mode.theta.tolist()}")
    return float(c0.sum() + mode.ld_l2 - 2.0 * np.log(mult).sum())


def agq_partition(chunks, ws, kern, family, beta, b, lam: float, shift: np.ndarray, nl: int,
                  at_mode: bool = False):
    """A partition's level sums of the unit deviances at the mode (c0) and at every
    node's shifted linear predictor (K x nl, eq. 101), all nodes at once
    (``at_mode``: the workspace holds the mode's one chunk)."""
    c0 = np.zeros(nl)
    ck = np.zeros((len(shift), nl))
    keys_off = nl * np.arange(len(shift))[:, None]
    for c in chunks:
        if not at_mode:
            at_rows(c, kern, beta, b, ws)
        eta, _, dev = ws.take(c.size)[:3]
        refs, z = c.refs[0], c.z[0][:, 0]
        c0 += np.bincount(refs, weights=dev, minlength=nl)
        eta_k = eta[None, :] + (z * lam)[None, :] * shift[:, refs]
        dev_k = family.dev_resids(c.y[None, :], family.linkinv(eta_k), c.wt[None, :])
        ck += np.bincount((refs[None, :] + keys_off).ravel(), weights=dev_k.ravel(),
                          minlength=len(shift) * nl).reshape(-1, nl)
    return c0, ck


def _add_pair(a, b):
    return a[0] + b[0], a[1] + b[1]
