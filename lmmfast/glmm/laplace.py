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


def laplace_deviance(pirls: Pirls, mode: Mode, exact: bool = False) -> float:
    """-2 log L by the Laplace approximation at a conditional mode (eq. 98).

    a(y, mu) = sum_i d_i + c with c not depending on mu (eq. 99); c is taken
    once from the family's ``aic``, unless ``exact`` (or where the successes
    are not whole numbers, which R's ``aic`` rounds).
    """
    return pirls.aic(mode, exact) + mode.sqr_u + mode.ld_l2
