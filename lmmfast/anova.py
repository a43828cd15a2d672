"""Likelihood-ratio tests of nested models, as lme4's ``anova(fit_a, fit_b, ...)`` (theory.md, eq. 40).

The models are lmer fits or glmer fits (eqs. 98, 101: -2 log L as lme4).

The models are sorted by their number of parameters; each row after the
first is tested against the row above it:

    Chisq = 2 max(0, logLik_k - logLik_{k-1}),  Df = npar_k - npar_{k-1},
    Pr(>Chisq) = P(chi^2_Df > Chisq)                                    (eq. 40)

REML criteria of models with different fixed effects are not comparable, so
REML fits are first refitted by ML (lme4's "refitting model(s) with ML
(instead of REML)"), re-using their design: a copy of the model with the ML
criterion is optimised from the REML theta.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .arguments import as_flag, describe
from .errors import DataError, LmmWarning
from .profile import ml_refit

__all__ = ["anova", "RefitWarning"]

COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]


class RefitWarning(LmmWarning):
    """Models fitted by REML were refitted by ML for a likelihood-ratio test."""


def _is_glmm(fit) -> bool:
    return hasattr(fit, "family")


def _prior_weights(fit):
    """A GLMM's prior weights (a binomial's trials), part of its response; None for an LMM."""
    return fit.prior_weights if _is_glmm(fit) else None


def _check_same_kind(fits) -> None:
    """Likelihoods are comparable only between fits of one kind: all lmer or all
    glmer fits, the latter of one family and one nAGQ (lme4's log-likelihood for
    nAGQ > 1 is on another constant than the Laplace one, theory.md eq. 101)."""
    kinds = {_is_glmm(f) for f in fits}
    if len(kinds) > 1:
        raise DataError("anova() cannot compare lmer (linear) and glmer (generalized) fits: "
                        "their likelihoods are of different models of the response")
    if not kinds.pop():
        return
    families = {str(f.family) for f in fits}
    if len(families) > 1:
        raise DataError(f"anova(): the glmer fits have different families or links "
                        f"({', '.join(sorted(families))}): their likelihoods cannot be compared")
    agq = {f.n_agq for f in fits}
    if len(agq) > 1:
        raise DataError(f"anova(): the glmer fits use different nAGQ ({sorted(agq)}): their "
                        "log-likelihoods are on different scales")


def anova(*fits, names=None, refit: bool = True) -> pd.DataFrame:
    """Likelihood-ratio test table of two or more models fitted to the same data (eq. 40).

    Parameters
    ----------
    *fits : LinearMixedModel or GeneralizedLinearMixedModel
        Fitted models, usually nested, fitted to the same observations; all
        lmer or all glmer fits (one family and nAGQ).
    names : list of str, optional
        Row labels, one per model in argument order; default ``MODEL1``,
        ``MODEL2``, ... (lme4 uses the variable names).
    refit : bool
        Refit REML fits by ML first (default, as lme4; a ``RefitWarning``
        says so).  With ``refit=False`` the criteria are used as they are.

    Returns
    -------
    pandas.DataFrame
        Rows sorted by ``npar`` (stable); columns ``npar``, ``AIC``, ``BIC``,
        ``logLik``, ``deviance``, ``Chisq``, ``Df``, ``Pr(>Chisq)`` (NaN in
        the first row, and where ``Df`` is 0).  ``attrs``: ``formulas``
        (row label -> formula), ``refitted`` (labels of the refitted models).
    """
    if len(fits) == 1 and isinstance(fits[0], (list, tuple)):
        fits = tuple(fits[0])
    if len(fits) < 2:
        raise DataError("anova() compares two or more models; for the F tests of one "
                        "model's fixed effects use fit.anova()")
    for f in fits:
        if not hasattr(f, "loglik") or not hasattr(f, "df_params"):
            raise TypeError("anova() needs fitted LinearMixedModel or "
                            f"GeneralizedLinearMixedModel objects, got {type(f).__name__}")
        f._require_fit()
    _check_same_kind(fits)
    refit = as_flag(refit, "refit")
    if names is None:
        names = [f"MODEL{i + 1}" for i in range(len(fits))]
    if isinstance(names, str) or not hasattr(names, "__len__"):
        raise DataError(f"names must be a list of {len(fits)} row labels, got {describe(names)}")
    names = [str(n) for n in names]
    if len(names) != len(fits):
        raise DataError(f"names has {len(names)} label{'s' * (len(names) != 1)} for "
                        f"{len(fits)} models")
    if len(set(names)) != len(names):
        raise DataError(f"names: the model names must be distinct, got {names}")
    nobs = [f.nobs for f in fits]
    if len(set(nobs)) > 1:
        raise DataError("models were not all fitted to the same size of dataset: "
                        + ", ".join(f"{n} has {k} observations" for n, k in zip(names, nobs)))
    y0, w0 = fits[0].y, _prior_weights(fits[0])
    for name, f in zip(names[1:], fits[1:]):
        if not np.array_equal(f.y, y0) or not np.array_equal(_prior_weights(f), w0):
            raise DataError(f"models were fitted to different responses ({names[0]}: "
                            f"{fits[0].response!r}, {name}: {f.response!r}) or different "
                            "rows: their likelihoods cannot be compared")

    reml = [f.reml for f in fits]
    refitted = []
    if refit and any(reml):
        warnings.warn("refitting model(s) with ML (instead of REML)", RefitWarning, stacklevel=2)
        fits = tuple(ml_refit(f) for f in fits)
        refitted = [n for n, r in zip(names, reml) if r]
    elif not refit and any(reml) and not all(reml):
        warnings.warn("some models fit with REML = TRUE, some not", LmmWarning, stacklevel=2)

    npar = np.array([f.df_params for f in fits])
    order = np.argsort(npar, kind="stable")
    fits = [fits[i] for i in order]
    labels = [names[i] for i in order]
    npar = npar[order]
    llk = np.array([f.loglik for f in fits])
    chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, np.diff(llk))])
    df = np.concatenate([[np.nan], np.diff(npar).astype(np.float64)])
    with np.errstate(invalid="ignore"):
        pval = np.where(df == 0, np.nan, stats.chi2.sf(chisq, np.where(df > 0, df, np.nan)))
    table = pd.DataFrame({
        "npar": npar.astype(np.int64),
        "AIC": [f.aic for f in fits],
        "BIC": [f.bic for f in fits],
        "logLik": llk,
        "deviance": -2.0 * llk,
        "Chisq": chisq,
        "Df": df,
        "Pr(>Chisq)": pval,
    }, index=pd.Index(labels, name="model"))
    table.attrs.update(formulas={n: f.formula for n, f in zip(labels, fits)},
                       refitted=refitted)
    return table
