"""Confidence intervals as lme4's ``confint``: profile, Wald and parametric bootstrap (theory.md, eqs. 45-47).

* ``method="profile"`` (default): the interval ends are where the profile
  zeta trace (``lmmfast.profile``) crosses the normal quantiles
  ``z_{(1-level)/2}`` and ``z_{(1+level)/2}`` (eq. 45).  As lme4, zeta(value)
  is interpolated by a natural cubic spline through the trace and the ends
  are read off its inverse (eq. 46); an end beyond the trace is the
  parameter's bound (0 for a standard deviation, -1/1 for a correlation).
* ``method="wald"``: beta-hat_j -/+ z se_j for the fixed effects (eq. 23); NaN
  for the variance parameters, as lme4.
* ``method="bootstrap"``: percentile intervals of a parametric bootstrap
  (``lmmfast.bootstrap``), interpolated between order statistics on the
  normal scale as the boot package's ``perc`` intervals, lme4's default
  (eq. 47).

The result is a DataFrame indexed by lme4's parameter names (``.sig01``, ...,
``.sigma``, then the fixed effects) with columns ``description`` (lme4's
descriptive name, e.g. ``sd_(Intercept)|Batch``), ``lower`` and ``upper``;
``attrs["percent"]`` holds lme4's column labels (``"2.5 %"``, ``"97.5 %"``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from scipy.interpolate import CubicSpline

from .arguments import as_choice, as_probability, describe
from .errors import DataError, LmmWarning
from .profile import parameter_names, profile as _profile, resolve_parameters
from .design.rows import require_rows

__all__ = ["confint", "profile_intervals", "percentile_intervals", "invert_zeta"]


def _percent_labels(level: float) -> list[str]:
    """lme4's column labels: the tail probabilities in percent, 3 significant digits."""
    a = (1.0 - level) / 2.0
    return [f"{100 * x:.3g} %" for x in (a, 1.0 - a)]


# ------------------------------------------------------------------ splines
def _backward_spline(values: np.ndarray, zetas: np.ndarray):
    """Inverse of the natural interpolating spline zeta(value) (eq. 46).

    Returns ``(knots, coef)``, the knots in zeta (increasing) and per interval
    the coefficients (c0, c1, c2, c3) of value = c0 + c1 t + c2 t^2 + c3 t^3,
    t = zeta - knot.  Inner intervals are cubic Hermite pieces matching the
    values and the inverse slopes 1 / zeta'(value) at both ends; the two end
    intervals are quadratics through both ends with the slope of their inner
    end, made linear if they would turn back (as R's ``backSpline``).
    Raises ValueError if zeta is not strictly monotone at the knots.
    """
    if len(values) < 4:
        raise ValueError("at least 4 points are needed for a cubic spline")
    fwd = CubicSpline(values, zetas, bc_type="natural")
    slope = fwd(values, 1)
    dz = np.diff(zetas)
    if (dz > 0).all():
        zk, vk, inv = zetas, values, 1.0 / slope
    elif (dz < 0).all():
        zk, vk, inv = zetas[::-1], values[::-1], (1.0 / slope)[::-1]
        dz = np.diff(zk)
    else:
        raise ValueError("the profile is not monotone")
    if not np.isfinite(inv).all():
        raise ValueError("the profile is flat at a knot")
    m = len(zk)
    dv = np.diff(vk)
    coef = np.zeros((m - 1, 4))
    coef[:, 0] = vk[:-1]
    coef[:, 1] = inv[:-1]
    for i in range(m - 1):
        h = dz[i]
        rhs = np.array([dv[i] - h * inv[i], inv[i + 1] - inv[i]])
        mat = np.array([[h * h, h ** 3], [2 * h, 3 * h * h]])
        coef[i, 2:] = np.linalg.solve(mat, rhs)
    # end intervals: quadratics matching the slope at their inner end
    h = dz[0]
    c2 = (dv[0] - h * inv[1]) / (-h * h)            # v1 + c1 h + c2 h^2 = v2, c1 + 2 c2 h = inv[1]
    coef[0, 1:] = (inv[1] - 2 * c2 * h, c2, 0.0)
    h = dz[-1]
    coef[-1, 2:] = ((dv[-1] - h * coef[-1, 1]) / (h * h), 0.0)
    if coef[0, 2] > 0:
        coef[0, 1:] = (dv[0] / dz[0], 0.0, 0.0)
    if coef[-1, 2] < 0:
        coef[-1, 1:] = (dv[-1] / dz[-1], 0.0, 0.0)
    return zk, coef


def _eval_backward(zk: np.ndarray, coef: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The backward spline at z; NaN outside the knots (as R's ``predict`` of a polySpline)."""
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    out = np.full(z.shape, np.nan)
    inside = (z >= zk[0]) & (z <= zk[-1])
    idx = np.clip(np.searchsorted(zk, z[inside], side="left") - 1, 0, len(zk) - 2)
    t = z[inside] - zk[idx]
    c = coef[idx]
    out[inside] = c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))
    return out


def invert_zeta(values, zetas, z, non_mono_tol: float = 1e-2) -> np.ndarray:
    """The parameter values at which a zeta trace reaches ``z`` (eqs. 45-46); NaN beyond the trace.

    Falls back to linear interpolation (with a warning) when the spline
    cannot be inverted but the trace is monotone within ``non_mono_tol``.
    """
    return _invert(values, zetas, z, non_mono_tol)[0]


def _invert(values, zetas, z, non_mono_tol: float = 1e-2) -> tuple[np.ndarray, bool]:
    """:func:`invert_zeta` and whether the trace is unusable (not monotone)."""
    values = np.asarray(values, dtype=np.float64)
    zetas = np.asarray(zetas, dtype=np.float64)
    ok = np.isfinite(values) & np.isfinite(zetas)
    values, zetas = values[ok], zetas[ok]
    order = np.argsort(values, kind="stable")
    values, zetas = values[order], zetas[order]
    keep = np.concatenate([[True], np.diff(values) > 0])
    values, zetas = values[keep], zetas[keep]
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    try:
        zk, coef = _backward_spline(values, zetas)
        return _eval_backward(zk, coef, z), False
    except (ValueError, np.linalg.LinAlgError):
        pass
    if len(values) == 0:
        return np.full(z.shape, np.nan), True
    if len(values) >= 2 and np.min(np.diff(zetas)) < -non_mono_tol:
        warnings.warn("non-monotonic profile: no interval", LmmWarning, stacklevel=4)
        return np.full(z.shape, np.nan), True
    warnings.warn("the spline of the profile cannot be inverted: linear interpolation",
                  LmmWarning, stacklevel=4)
    zs = np.maximum.accumulate(zetas)
    return np.interp(z, zs, values, left=np.nan, right=np.nan), False


def profile_intervals(prof: pd.DataFrame, level: float = 0.95, parm=None) -> pd.DataFrame:
    """Profile confidence intervals from the traces of ``lmmfast.profile`` (eq. 45).

    An end that the trace does not reach is the parameter's bound from
    ``prof.attrs`` (0 or -1 below, infinity or 1 above; NaN for fixed effects
    and for traces that are not monotone, as lme4).
    """
    names = list(dict.fromkeys(prof["parameter"]))
    if parm is not None:
        names = [n for n in names if n in set([parm] if isinstance(parm, str) else parm)]
    a = (1.0 - level) / 2.0
    zq = stats.norm.ppf([a, 1.0 - a])
    lower_b = prof.attrs.get("lower", {})
    upper_b = prof.attrs.get("upper", {})
    desc = prof.attrs.get("descriptive", {})
    rows = []
    for name in names:
        sub = prof[prof["parameter"] == name]
        (lo, hi), bad = _invert(sub["value"].to_numpy(), sub["zeta"].to_numpy(), zq)
        bounded = np.isfinite(lower_b.get(name, -np.inf)) and not bad   # a variance parameter
        if not np.isfinite(lo):
            lo = lower_b[name] if bounded else np.nan
        if not np.isfinite(hi):
            hi = upper_b.get(name, np.nan) if bounded else np.nan
        rows.append((name, desc.get(name, name), lo, hi))
    return _frame(rows, level, "profile")


def _frame(rows, level, method) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["parameter", "description", "lower", "upper"]
                      ).set_index("parameter")
    df.attrs.update(level=level, method=method, percent=_percent_labels(level))
    return df


# ------------------------------------------------------------------ bootstrap
def percentile_intervals(samples, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (eq. 47), as the boot package's ``perc``.

    The ends are the (R + 1) alpha-th order statistics of the R finite
    replicates, interpolated between neighbours on the normal-quantile scale
    when (R + 1) alpha is not an integer; the extremes are used beyond them.
    """
    t = np.sort(np.asarray(samples, dtype=np.float64)[np.isfinite(samples)])
    r = len(t)
    if r == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    out = []
    for alpha in (a, 1.0 - a):
        rk = (r + 1) * alpha
        k = int(math.floor(rk))
        if k <= 0:
            out.append(t[0])
        elif k >= r:
            out.append(t[-1])
        elif k == rk:
            out.append(t[k - 1])
        else:
            z0, z1 = stats.norm.ppf(k / (r + 1)), stats.norm.ppf((k + 1) / (r + 1))
            frac = (stats.norm.ppf(alpha) - z0) / (z1 - z0)
            out.append(t[k - 1] + frac * (t[k] - t[k - 1]))
    return float(out[0]), float(out[1])


# ------------------------------------------------------------------ entry point
def confint(fit, parm=None, level: float = 0.95, method: str = "profile", *,
            n: int = 500, seed=None, n_jobs=None, boot: pd.DataFrame | None = None,
            prof: pd.DataFrame | None = None, **kwargs) -> pd.DataFrame:
    """Confidence intervals for the parameters of a fit, as lme4's ``confint`` (eqs. 45-47).

    Parameters
    ----------
    fit : LinearMixedModel
    parm : None, str, int or list
        Parameters (lme4 names ``.sig01``/``.sigma``/fixed effects,
        descriptive names, 0-based indices, ``"theta_"`` or ``"beta_"``);
        default all.
    level : float
        Confidence level.
    method : {"profile", "wald", "bootstrap"}
        ``"profile"`` inverts the profile traces (REML fits: the profile of
        the ML refit, as lme4); ``"wald"`` gives beta-hat -/+ z se for the
        fixed effects and NaN for the variance parameters; ``"bootstrap"``
        gives percentile intervals of ``n`` parametric bootstrap replicates.
    n, seed, n_jobs :
        Bootstrap replicates, seed and workers (``method="bootstrap"``).
    boot, prof : DataFrame, optional
        A result of ``lmmfast.bootstrap`` / ``lmmfast.profile`` of this fit,
        used instead of computing one.
    **kwargs
        Passed on to ``profile`` or ``bootstrap``.

    Returns
    -------
    pandas.DataFrame
        Index: lme4's parameter names; columns ``description``, ``lower``,
        ``upper``; ``attrs``: ``level``, ``method``, ``percent`` (lme4's
        column labels such as ``["2.5 %", "97.5 %"]``).
    """
    fit._require_fit()
    level = as_probability(level, "level")
    method = as_choice(method, "method", ("profile", "wald", "bootstrap"), {"boot": "bootstrap"})
    names, desc = parameter_names(fit)
    n_var = len(fit.theta_names) + 1
    idx = resolve_parameters(parm, names, desc, n_var, argument="parm")
    if method == "profile":
        if prof is None:
            # lme4 profiles to 99 % whatever the level; wider when the level asks for it
            alphamax = min(as_probability(kwargs.pop("alphamax", 0.01), "alphamax"),
                           1.0 - level)
            prof = _profile(fit, which=idx, alphamax=alphamax, **kwargs)
        elif not isinstance(prof, pd.DataFrame) or not {"parameter", "value", "zeta"} \
                <= set(prof.columns):
            raise DataError("prof must be the DataFrame returned by lmmfast.profile of this "
                            f"fit, got {describe(prof)}")
        missing = [names[i] for i in idx if names[i] not in set(prof["parameter"])]
        if missing:
            raise DataError(f"prof has no trace of {missing}: profile them too "
                            "(fit.profile(which=...)) or leave prof out")
        out = profile_intervals(prof, level, parm=[names[i] for i in idx])
        return out.loc[[names[i] for i in idx]]
    if method == "wald":
        a = (1.0 - level) / 2.0
        z = stats.norm.ppf(1.0 - a)
        beta, se = fit.fixef.to_numpy(), fit.stderr.to_numpy()
        rows = []
        for i in idx:
            if i < n_var:
                rows.append((names[i], desc[i], np.nan, np.nan))
            else:
                j = i - n_var
                rows.append((names[i], desc[i], beta[j] - z * se[j], beta[j] + z * se[j]))
        return _frame(rows, level, "wald")
    if boot is None:
        from .bootstrap import bootstrap
        require_rows(fit, "confint(method='bootstrap')",
                     "; or use confint(method='profile') or confint(method='wald'), "
                     "which need only the cross-products")
        boot = bootstrap(fit, n, seed=seed, n_jobs=n_jobs, **kwargs)
    if not isinstance(boot, pd.DataFrame) or "objective" not in boot.columns:
        raise DataError("boot must be the DataFrame returned by lmmfast.bootstrap of this "
                        f"fit, got {describe(boot)}")
    rows = []
    for i in idx:
        col = desc[i]
        if col not in boot.columns:
            raise DataError(f"boot has no column {col!r}: it is not the bootstrap of this "
                            "fit (lmmfast.bootstrap(fit, n))")
        lo, hi = percentile_intervals(boot[col].to_numpy(), level)
        rows.append((names[i], desc[i], lo, hi))
    out = _frame(rows, level, "bootstrap")
    out.attrs["n"] = int(np.isfinite(boot["objective"]).sum())
    return out
