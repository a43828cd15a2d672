"""Variance decomposition of a fit: Nakagawa's R² and the ICC (theory.md, eqs. 80-82).

As ``performance::r2_nakagawa`` and ``performance::icc`` for a linear mixed
model: the variance of the fixed-effects predictor, the mean variance of the
random effects over the rows (Johnson 2014, for random slopes) and the
residual variance sigma^2.
"""

from __future__ import annotations

import numpy as np

from .errors import FitError

__all__ = ["icc", "r2_nakagawa", "variance_components"]


def _term_covariances(fit) -> list[np.ndarray]:
    """Covariance matrix sigma^2 Lambda Lambda^T of each random-effects term, lme4 order."""
    split = np.split(fit._theta, np.cumsum([r.n_theta for r in fit.remats])[:-1])
    out = []
    for r, theta in zip(fit.remats, split):
        lam = r.lambda_(theta)
        out.append(fit.sigma ** 2 * lam @ lam.T)
    return out


def variance_components(fit) -> dict[str, float]:
    """The fixed, random and residual variances of eqs. 80-81.

    ``fixed``: sample variance (divisor n - 1) of X beta-hat.  ``random``: for
    each term, the mean over the rows of z_i Sigma z_i^T (eq. 80), where z_i
    holds the term's columns that are columns of X (an intercept always counts);
    as insight's ``get_variance``, a term's column missing from X is left out.
    ``residual``: sigma^2.
    """
    fit._require_fit()
    if fit.x is None:
        raise FitError("R² and the ICC need the model's rows (X): refit the model "
                       "in memory, LinearMixedModel(formula, data, streaming=False).fit()")
    x = fit.x
    n = fit.nobs
    eta = x @ fit.fixef.to_numpy()
    fixed = float(np.var(eta, ddof=1)) if n > 1 else 0.0
    columns = {name: x[:, j] for j, name in enumerate(fit.fixef_names)}
    columns.setdefault("(Intercept)", np.ones(n))
    random = 0.0
    for r, sigma in zip(fit.remats, _term_covariances(fit)):
        keep = [j for j, name in enumerate(r.cnames) if name in columns]
        if not keep:
            continue
        z = np.column_stack([columns[r.cnames[j]] for j in keep])
        random += float(np.trace(sigma[np.ix_(keep, keep)] @ (z.T @ z))) / n
    return {"fixed": fixed, "random": random, "residual": fit.sigma ** 2}


def r2_nakagawa(fit) -> dict[str, float]:
    """Conditional and marginal R² (eq. 81), keys as performance's ``R2_conditional``, ``R2_marginal``."""
    v = variance_components(fit)
    total = v["fixed"] + v["random"] + v["residual"]
    return {"R2_conditional": (v["fixed"] + v["random"]) / total,
            "R2_marginal": v["fixed"] / total}


def icc(fit) -> dict[str, float]:
    """Adjusted and unadjusted ICC (eq. 82), keys as performance's ``ICC_adjusted``, ``ICC_unadjusted``."""
    v = variance_components(fit)
    total = v["fixed"] + v["random"] + v["residual"]
    return {"ICC_adjusted": v["random"] / (v["random"] + v["residual"]),
            "ICC_unadjusted": v["random"] / total}
