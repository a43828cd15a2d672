"""The Laplace approximation to the GLMM deviance (docs/theory.md, eq. 98).

At the conditional mode u~ of (theta, beta), lme4's ``glmerLaplace`` value is

    -2 log L = a(y, mu) + ||u~||^2 + log |L_Z|^2,

with a the family's ``aic`` term (-2 times the log-likelihood of the
response given u~, R's ``family$aic``), and L_Z the Cholesky factor of
Lambda^T Z^T W Z Lambda + I at the working weights of u~.
"""

from __future__ import annotations

from .pirls import Mode, Pirls

__all__ = ["laplace_deviance"]


def laplace_deviance(pirls: Pirls, mode: Mode) -> float:
    """-2 log L by the Laplace approximation at a conditional mode (eq. 98)."""
    d = pirls.design
    aic = pirls.family.aic(d.y, d.trials, mode.mu, d.prior_weights)
    return aic + mode.sqr_u + mode.ld_l2
