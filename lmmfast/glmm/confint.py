"""Confidence intervals of a GLMM fit, as lme4's ``confint.merMod`` for glmer
(docs/theory.md, eqs. 45-47, 104).

* ``method="profile"`` (lme4's default): the ends are where the profile zeta
  traces (``lmmfast.glmm.profile``) cross the normal quantiles, read off the
  inverse of their interpolating splines (eqs. 45-46; the linear model's
  ``lmmfast.confint.profile_intervals``).
* ``method="wald"``: beta-hat -/+ z se from ``vcov`` (the Hessian of the
  deviance, eq. 104, lme4's default); the standard deviations and
  correlations get NaN, as lme4's NA.
* ``method="bootstrap"``: percentile intervals of ``n`` parametric bootstrap
  replicates (``lmmfast.glmm.bootstrap``, eq. 47).

The result has lme4's rows (``.sig01``, ..., then the fixed effects; no
``.sigma``) and the linear model's columns: ``description`` (e.g.
``sd_(Intercept)|herd``), ``lower``, ``upper``; ``attrs["percent"]`` holds
lme4's column labels (``"2.5 %"``, ``"97.5 %"``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..arguments import as_choice, as_probability, describe
from ..confint import _frame, percentile_intervals, profile_intervals
from ..errors import DataError
from ..profile import parameter_names, resolve_parameters

__all__ = ["confint"]


def confint(fit, parm=None, level: float = 0.95, method: str = "profile", *,
            n: int = 500, seed=None, n_jobs=None, boot: pd.DataFrame | None = None,
            prof: pd.DataFrame | None = None, **kwargs) -> pd.DataFrame:
    """Confidence intervals for a GLMM fit's parameters, as lme4's ``confint``.

    Parameters
    ----------
    fit : GeneralizedLinearMixedModel
    parm : None, str, int or list
        lme4 names (``.sig01``, fixed effects), descriptive names, 0-based
        indices, ``"theta_"`` or ``"beta_"``; default all.
    level : float
        Confidence level.
    method : {"profile", "wald", "bootstrap"}
    n, seed, n_jobs :
        Bootstrap replicates, seed and workers (``method="bootstrap"``).
    boot, prof : DataFrame, optional
        A result of ``fit.bootstrap`` / ``fit.profile``, used instead of
        computing one.
    **kwargs
        Passed on to ``profile`` or ``bootstrap``.
    """
    fit._require_fit()
    level = as_probability(level, "level")
    method = as_choice(method, "method", ("profile", "wald", "bootstrap"), {"boot": "bootstrap"})
    names, desc = parameter_names(fit, sigma=False)
    nt = fit.n_theta
    idx = resolve_parameters(parm, names, desc, nt, argument="parm")
    chosen = [names[i] for i in idx]
    if method == "wald":
        z = stats.norm.ppf(0.5 + level / 2.0)
        beta, se = fit.beta, fit.stderr.to_numpy()
        rows = [(names[i], desc[i], np.nan, np.nan) if i < nt else
                (names[i], desc[i], beta[i - nt] - z * se[i - nt], beta[i - nt] + z * se[i - nt])
                for i in idx]
        return _frame(rows, level, "wald")
    if method == "profile":
        if prof is None:
            from .profile import profile
            # lme4 profiles to 99 % whatever the level; wider when the level asks for it
            alphamax = min(as_probability(kwargs.pop("alphamax", 0.01), "alphamax"),
                           1.0 - level)
            prof = profile(fit, which=idx, alphamax=alphamax, **kwargs)
        elif not isinstance(prof, pd.DataFrame) or not {"parameter", "value", "zeta"} \
                <= set(prof.columns):
            raise DataError("prof must be the DataFrame returned by fit.profile(), got "
                            f"{describe(prof)}")
        missing = [c for c in chosen if c not in set(prof["parameter"])]
        if missing:
            raise DataError(f"prof has no trace of {missing}: profile them too "
                            "(fit.profile(which=...)) or leave prof out")
        return profile_intervals(prof, level, parm=chosen).loc[chosen]
    if boot is None:
        boot = fit.bootstrap(n, seed=seed, n_jobs=n_jobs, **kwargs)
    if not isinstance(boot, pd.DataFrame) or "objective" not in boot.columns:
        raise DataError(f"boot must be the DataFrame returned by fit.bootstrap(), got "
                        f"{describe(boot)}")
    rows = []
    for i in idx:
        if desc[i] not in boot.columns:
            raise DataError(f"boot has no column {desc[i]!r}: it is not the bootstrap of this "
                            "fit (fit.bootstrap(n))")
        lo, hi = percentile_intervals(boot[desc[i]].to_numpy(), level)
        rows.append((names[i], desc[i], lo, hi))
    out = _frame(rows, level, "bootstrap")
    out.attrs["n"] = int(np.isfinite(boot["objective"]).sum())
    return out
