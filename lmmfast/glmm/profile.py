"""Likelihood profiles of a GLMM's parameters, as lme4's ``profile.merMod`` for glmer
(docs/theory.md, eqs. 42, 98, 101, 103).

The parameters are lme4's: the standard deviations and correlations of the
random effects (``.sig01``, ...; no ``.sigma``) and the fixed effects.  For
each, the deviance -2 log L(theta, beta) of the fit (Laplace, eq. 98, or
quadrature, eq. 101) is minimised over all the other parameters with that
one held fixed (BOBYQA, started from the previous point of the trace), and

    zeta(value) = sign(value - estimate) sqrt(d_fixed(value) - d(estimate))   (eq. 42)

is traced outwards from the estimate in both directions until |zeta|
exceeds ``sqrt(chi2_{1 - alphamax}(number of parameters))``, with lme4's
steps (the linear model's tracing, ``lmmfast.profile``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ..arguments import as_count, as_positive, as_probability
from ..errors import DataError, FitError, LmmError
from ..profile import (INVALID_PENALTY, _minimise, _sdcor_theta, _shift, _trace_both,
                       parameter_names, resolve_parameters, theta_to_sdcor, traces_frame)

__all__ = ["profile"]


def profile(fit, which=None, *, alphamax: float = 0.01, maxpts: int = 100, delta=None,
            delta_cutoff: float = 0.125, maxmult: float = 10.0, devtol: float = 1e-6,
            ftol_abs: float = 1e-10, maxeval: int = 10_000) -> pd.DataFrame:
    """Profile zeta traces of a GLMM fit's parameters, as lme4's ``profile(fit)``.

    Parameters
    ----------
    fit : GeneralizedLinearMixedModel
        A fit with nAGQ >= 1 (its deviance is the one profiled).
    which : None, str, int or list
        lme4 names (``".sig01"``, ``"(Intercept)"``), descriptive names
        (``"sd_(Intercept)|herd"``), 0-based indices, ``"theta_"`` or
        ``"beta_"``; default all.
    alphamax, maxpts, delta, delta_cutoff, maxmult :
        lme4's settings (see ``lmmfast.profile.profile``).
    devtol : float
        A deviance below the fit's by more than this raises ``FitError``.

    Returns
    -------
    pandas.DataFrame
        As ``lmmfast.profile.profile``: ``parameter``, ``value``, ``zeta``
        and every parameter's value at each point; ``attrs``: ``descriptive``,
        ``estimates``, ``lower``, ``upper``, ``deviance``, ``cutoff``.
    """
    mode = fit._require_fit()
    if fit.n_agq == 0:
        raise DataError("profile() of a glmer fit needs nAGQ >= 1: an nAGQ = 0 fit does not "
                        "maximise the likelihood in the fixed effects")
    names, desc = parameter_names(fit, sigma=False)
    nt = fit.n_theta
    selected = resolve_parameters(which, names, desc, nt)
    alphamax = as_probability(alphamax, "alphamax")
    maxpts = as_count(maxpts, "maxpts", minimum=1)
    maxeval = as_count(maxeval, "maxeval", minimum=1)
    delta = None if delta is None else as_positive(delta, "delta")
    delta_cutoff = as_positive(delta_cutoff, "delta_cutoff")
    maxmult = as_positive(maxmult, "maxmult")
    devtol = as_positive(devtol, "devtol", allow_zero=True)
    ftol_abs = as_positive(ftol_abs, "ftol_abs")

    model = fit.copy()   # PIRLS state of its own: the fit is not touched
    base = fit.objective
    opt = np.concatenate([theta_to_sdcor(fit, mode.theta, 1.0), mode.beta])
    nptot = len(opt)
    cutoff = math.sqrt(stats.chi2.ppf(1.0 - alphamax, nptot))
    if delta is None:
        delta = cutoff * delta_cutoff
    theta_lower = fit.theta_lower
    lower = np.concatenate([np.maximum(theta_lower, -1.0), np.full(fit.beta.size, -np.inf)])
    upper = np.concatenate([np.where(theta_lower == 0, np.inf, 1.0),
                            np.full(fit.beta.size, np.inf)])
    se = fit.stderr.to_numpy()
    scale = np.concatenate([np.where(theta_lower == 0, np.maximum(0.1 * np.abs(opt[:nt]), 1e-2),
                                     0.05), 0.5 * se])

    def deviance(pars) -> float:
        theta, excess = _sdcor_theta(fit, pars[:nt], 1.0)
        try:
            d = model.deviance_at(theta, pars[nt:])
        except LmmError:
            return math.inf
        return d + INVALID_PENALTY * excess if math.isfinite(d) else math.inf

    if not abs(deviance(opt) - base) <= 1e-7 * max(1.0, abs(base)):
        raise FitError("the deviance at the estimates does not reproduce the fit's")

    def zeta_of(value, devval, estimate):
        diff = devval - base
        if not np.isfinite(diff):
            return math.nan
        if diff < -devtol:
            raise FitError(f"profiling found a deviance {-diff:.3g} below the fit's: the fit "
                           "is not at the optimum; refit with tighter tolerances")
        return math.copysign(math.sqrt(max(diff, 0.0)), value - estimate)

    traces = {}
    for w in selected:
        others = np.array([i for i in range(nptot) if i != w], dtype=np.intp)
        lo, hi = lower[others], upper[others]
        step = np.minimum(scale[others], np.maximum((hi - lo) / 4, 1e-8))

        def zeta_at(value, start_row, w=w, others=others, lo=lo, hi=hi, step=step):
            pars = np.empty(nptot)
            pars[w] = value

            def objective(x):
                pars[others] = x
                return deviance(pars)

            fval, x = _minimise(objective, start_row[1:][others], lo, hi, step, ftol_abs,
                                maxeval)
            row = np.empty(1 + nptot)
            row[1 + w] = value
            row[1 + others] = x
            row[0] = zeta_of(value, fval, opt[w])
            if w < nt and _sdcor_theta(fit, row[1:1 + nt], 1.0)[1] > 0:
                row[0] = math.nan   # no valid covariance has this value
            return row

        if w < nt:
            shift = _shift(opt[w], lower[w], upper[w])
        else:
            shift = opt[w] + delta * se[w - nt]
        traces[w] = _trace_both(opt, w, zeta_at, lower[w], upper[w], delta, cutoff, maxpts,
                                maxmult, shift=shift)

    out = traces_frame(traces, selected, names)
    out.attrs.update(descriptive=dict(zip(names, desc)), estimates=dict(zip(names, opt.tolist())),
                     lower=dict(zip(names, lower.tolist())),
                     upper=dict(zip(names, upper.tolist())), deviance=float(base),
                     cutoff=float(cutoff))
    return out
