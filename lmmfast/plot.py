"""Plots of a fitted model (matplotlib; ``pip install 'lmmfast[plot]'``).

Every function takes a fitted :class:`~lmmfast.LinearMixedModel` (and, where
it draws a single panel, an optional matplotlib ``Axes``) and returns the
matplotlib ``Figure``:

* :func:`subject_panels` -- one panel per level of a grouping factor: the
  observations, the level's fitted line (conditional on its random effects),
  its own least-squares line and the population line (lme4's classic
  sleepstudy lattice plot).
* :func:`caterpillar` -- conditional modes of the random effects with
  prediction intervals (lme4's ``dotplot(ranef(fit, condVar = TRUE))``).
* :func:`residual_plots` -- residuals against fitted values and a normal
  QQ plot of the scaled residuals.
* :func:`profile_zeta` -- the profile zeta traces of the parameters (lme4's
  ``xyplot(profile(fit))``).
* :func:`marginal_effects` -- predictions over a term's values with their
  confidence band, one line per group (ggeffects' ``plot(ggpredict(...))``);
  it returns the ``Axes``.
* :func:`save_diagnostics` -- the standard diagnostic plots of a fit written
  as PNG files (used by ``lmmfast fit --plot DIR``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .arguments import as_choice, as_count, as_flag, as_positive, as_probability, describe
from .errors import DataError
from .simulate import seed_sequence
from .design.rows import require_rows

__all__ = ["subject_panels", "caterpillar", "residual_plots", "profile_zeta",
           "marginal_effects", "save_diagnostics"]

_POINT = "#1f4e79"
_FIT = "#c0392b"
_OLS = "#7f8c8d"
_POP = "#27ae60"


def _pyplot():
    """matplotlib.pyplot, imported on first use, with an install hint if it is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("lmmfast.plot needs matplotlib, which is not installed: "
                          "pip install 'lmmfast[plot]'") from None
    return plt


def _new_axes(ax, figsize):
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def _remat(fit, group):
    """The first random-effects term of grouping factor ``group`` (default: the first term)."""
    fit._require_fit()
    remats = list(getattr(fit, "remats", []))
    if not remats:
        raise DataError("the fit has no random-effects terms")
    if group is None:
        return remats[0]
    for r in remats:
        if r.group == group:
            return r
    raise DataError(f"group: no grouping factor {group!r} in the fit; it has "
                    f"{sorted({r.group for r in remats})}")


# ------------------------------------------------------------------- panels
def _covariate(fit, remat, x, data):
    """Values (one per observation) and name of the panels' x variable."""
    if data is not None and x is not None and x in data:
        values = pd.Series(data[x]).to_numpy()
        if len(values) != fit.nobs and getattr(fit, "row_index", None) is not None:
            values = pd.Series(data[x]).loc[fit.row_index].to_numpy()
        return np.asarray(values, dtype=float), x
    candidates = [x] if x is not None else (
        [c for c in remat.cnames if c != "(Intercept)"]
        + [c for c in fit.fixef_names if c != "(Intercept)"])
    for name in candidates:
        if name in remat.cnames:
            return np.asarray(remat.z[:, remat.cnames.index(name)], dtype=float), name
        if name in fit.fixef_names:
            return np.asarray(fit.x[:, list(fit.fixef_names).index(name)], dtype=float), name
    if x is None:
        raise DataError("the fit has no covariate to put on the x axis; give x=")
    raise DataError(f"x: {x!r} is neither a column of the model matrices nor of data=")


def subject_panels(fit, group: str | None = None, x: str | None = None, *, data=None,
                   ncols: int | None = None, order: str = "slope", ols: bool = True,
                   xlabel: str | None = None, ylabel: str | None = None,
                   panel_size: tuple[float, float] = (1.9, 1.7)):
    """One panel per level of ``group``: data, the level's fit and the population line.

    Parameters
    ----------
    fit : LinearMixedModel
    group : str, optional
        Grouping factor (default: the first random-effects term's).
    x : str, optional
        Covariate on the x axis: a column of the fixed-effects or
        random-effects model matrix (default: the term's first non-intercept
        column, e.g. ``Days``), or a column of ``data``.
    data : DataFrame, optional
        The data the model was fitted to, needed only when ``x`` is not a
        column of a model matrix.
    ncols : int, optional
        Panels per row (default about the square root of the number of levels,
        at least 6 wide for up to 24 levels).
    order : {"slope", "intercept", "mean", "level"}
        Panel order: by the level's fitted slope in ``x`` (as lme4's lattice
        plot of sleepstudy), fitted intercept, mean response, or level order.
    ols : bool
        Also draw each level's own least-squares line of the response on ``x``.

    The lines are drawn through the fitted values at the observations, so for
    a model that is linear in ``x`` they are the fitted straight lines.
    """
    plt = _pyplot()
    order = as_choice(order, "order", ("slope", "intercept", "mean", "level"))
    ncols = None if ncols is None else as_count(ncols, "ncols", minimum=1)
    ols = as_flag(ols, "ols")
    remat = _remat(fit, group)
    require_rows(fit, "subject_panels()")
    xs, xname = _covariate(fit, remat, x, data)
    y = np.asarray(fit.y, dtype=float)
    cond = np.asarray(fit.fitted, dtype=float)
    pop = np.asarray(fit.predict(re_form="~0"), dtype=float)
    labels = np.asarray(remat.levels, dtype=object)[remat.refs]
    levels = [lv for lv in remat.levels if np.any(labels == lv)]

    def line(sel):
        xv = xs[sel]
        if np.ptp(xv) <= 0:
            return math.nan, float(np.mean(cond[sel]))
        slope, icpt = np.polyfit(xv, cond[sel], 1)
        return slope, icpt

    if order != "level":
        key = {}
        for lv in levels:
            sel = labels == lv
            slope, icpt = line(sel)
            key[lv] = {"slope": slope, "intercept": icpt, "mean": float(np.mean(y[sel]))}[order]
        levels = sorted(levels, key=lambda lv: (np.nan_to_num(key[lv], nan=-np.inf)))

    n = len(levels)
    if ncols is None:
        ncols = max(min(n, 6), int(math.ceil(math.sqrt(n))))
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False,
                             figsize=(panel_size[0] * ncols + 0.6, panel_size[1] * nrows + 0.9),
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        lv = levels[i]
        sel = np.flatnonzero(labels == lv)
        sel = sel[np.argsort(xs[sel], kind="stable")]
        ax.plot(xs[sel], y[sel], "o", ms=3.2, color=_POINT, alpha=0.85, zorder=3)
        ax.plot(xs[sel], pop[sel], "--", lw=1.2, color=_POP, zorder=1)
        if ols and np.ptp(xs[sel]) > 0 and len(sel) > 1:
            slope, icpt = np.polyfit(xs[sel], y[sel], 1)
            ax.plot(xs[sel], icpt + slope * xs[sel], ":", lw=1.3, color=_OLS, zorder=2)
        ax.plot(xs[sel], cond[sel], "-", lw=1.6, color=_FIT, zorder=2)
        ax.set_title(f"{remat.group} {lv}", fontsize=8.5, pad=2)
        ax.tick_params(labelsize=7.5)
        ax.grid(True, lw=0.4, alpha=0.4)
    handles = [plt.Line2D([], [], color=_POINT, marker="o", ls="", ms=4, label="observed"),
               plt.Line2D([], [], color=_FIT, lw=1.6, label=f"fit for the {remat.group}"),
               plt.Line2D([], [], color=_POP, lw=1.2, ls="--", label="population (fixed effects)")]
    if ols:
        handles.append(plt.Line2D([], [], color=_OLS, lw=1.3, ls=":",
                                  label=f"{remat.group}'s own least squares"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8.5,
               frameon=False)
    fig.supxlabel(xlabel or xname, fontsize=10)
    fig.supylabel(ylabel or fit.response, fontsize=10)
    return fig


# -------------------------------------------------------------- caterpillar
def caterpillar(fit, group: str | None = None, n: int | None = None, order: str = "value", *,
                level: float = 0.95, ax=None, label_limit: int = 60, title: str | None = None):
    """Conditional modes of a grouping factor's random effects with prediction intervals.

    Parameters
    ----------
    fit : LinearMixedModel
    group : str, optional
        Grouping factor (default: the first random-effects term's).
    n : int, optional
        Show only ``n`` levels: the ``n`` with the largest absolute mode of the
        first column (``order="value"``) or the ``n`` widest intervals
        (``order="width"``); default all levels.
    order : {"value", "width"}
        Sort the levels by their mode in the first column (the caterpillar)
        or by the width of their interval.
    level : float
        Coverage of the intervals, mode -/+ z * conditional standard deviation
        (lme4's ``condVar``).
    ax : matplotlib Axes, optional
        Draw here (only for a factor with one random effect per level).
    label_limit : int
        Level names are written on the axis when there are at most this many.

    One panel per random effect of the factor (e.g. intercept and slope),
    sharing the level order.
    """
    plt = _pyplot()
    order = as_choice(order, "order", ("value", "width"))
    n = None if n is None else as_count(n, "n", minimum=1)
    level = as_probability(level, "level")
    label_limit = as_count(label_limit, "label_limit")
    remat = _remat(fit, group)
    frames = fit.ranef(condvar=True)
    modes = frames[remat.group]
    sds = modes.attrs["condsd"].reindex(index=modes.index, columns=modes.columns)
    first = modes.columns[0]
    if order == "value":
        key = modes[first]
        if n is not None and n < len(modes):
            keep = key.abs().sort_values(ascending=False, kind="stable").index[:n]
            key = key.loc[keep]
    else:
        key = sds[first]
        if n is not None and n < len(modes):
            key = key.sort_values(ascending=False, kind="stable").iloc[:n]
    idx = key.sort_values(kind="stable").index
    modes, sds = modes.loc[idx], sds.loc[idx]
    z = stats.norm.ppf(0.5 + level / 2.0)
    k = modes.shape[1]
    m = len(idx)
    labelled = m <= label_limit
    height = max(2.6, min(0.17 * m + 1.2, 12.0)) if labelled else 4.2
    if ax is not None:
        if k != 1:
            raise DataError(f"ax: {remat.group} has {k} random effects per level; "
                            "draw them without ax= (one panel each)")
        fig, axes = ax.figure, [ax]
    else:
        fig, axes = plt.subplots(1, k, sharey=True, squeeze=False,
                                 figsize=(max(3.4 * k + (1.2 if labelled else 0.6), 5.8),
                                          height),
                                 layout="constrained")
        axes = list(axes.flat)
    pos = np.arange(m)
    many = m > 200
    for j, (col, a) in enumerate(zip(modes.columns, axes)):
        v = modes[col].to_numpy()
        h = z * sds[col].to_numpy()
        a.axvline(0.0, color="0.45", lw=0.9, zorder=1)
        a.hlines(pos, v - h, v + h, color=_POINT, lw=0.5 if many else 1.2,
                 alpha=0.45 if many else 0.9, zorder=2)
        a.plot(v, pos, "o", ms=1.2 if many else 3.8, color=_FIT, zorder=3)
        a.set_title(col, fontsize=10)
        a.grid(True, axis="x", lw=0.4, alpha=0.5)
        a.set_ylim(-0.8, m - 0.2)
        a.tick_params(labelsize=8)
        if j == 0:
            if labelled:
                a.set_yticks(pos, [str(s) for s in idx])
            else:
                a.set_yticks([])
        else:
            a.tick_params(labelleft=False)
        a.set_xlabel("conditional mode", fontsize=9)
    axes[0].set_ylabel(f"{remat.group} ({m} of {fit.ngrps.get(remat.group, m)} levels)"
                       if m < fit.ngrps.get(remat.group, m) else f"{remat.group} ({m} levels)",
                       fontsize=9)
    if title is None:
        title = (f"Random effects of {remat.group}: conditional modes "
                 f"with {level:.0%} prediction intervals")
    if title:
        fig.suptitle(title, fontsize=10.5)
    return fig


# ---------------------------------------------------------------- residuals
def _ppoints(n: int) -> np.ndarray:
    a = 3.0 / 8.0 if n <= 10 else 0.5
    return (np.arange(1, n + 1) - a) / (n + 1 - 2 * a)


def residual_plots(fit, axes=None, *, max_points: int = 20_000, seed: int = 0):
    """Residuals against fitted values, and a normal QQ plot of the scaled residuals.

    The scaled residuals are the residuals divided by sigma (times the square
    root of the prior weight, for weighted fits), as in lme4's ``summary``.
    The residual plot marks zero and a running mean of the residuals (binned
    by fitted value) to show curvature.  Fits with more than ``max_points``
    observations are drawn from a random subset of that size in the scatter
    (the QQ plot always uses all residuals, thinned along the line).
    """
    plt = _pyplot()
    fit._require_fit()
    max_points = as_count(max_points, "max_points", minimum=1)
    rng = seed_sequence(seed)
    if axes is not None and (not hasattr(axes, "__len__") or len(axes) != 2):
        raise DataError(f"axes must be two matplotlib Axes, got {describe(axes)}")
    fitted = np.asarray(fit.fitted, dtype=float)
    resid = np.asarray(fit.residuals, dtype=float)
    scaled = resid / fit.sigma
    if getattr(fit, "weights", None) is not None:
        scaled = scaled * np.sqrt(np.asarray(fit.weights, dtype=float))
    nobs = len(resid)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0), layout="constrained")
    else:
        fig = axes[0].figure
    ax_r, ax_q = axes[0], axes[1]

    shown = np.arange(nobs)
    if nobs > max_points:
        shown = np.sort(np.random.default_rng(rng).choice(nobs, max_points, replace=False))
    small = len(shown) <= 2000
    ax_r.scatter(fitted[shown], resid[shown], s=12 if small else 3, alpha=0.7 if small else 0.15,
                 color=_POINT, lw=0, rasterized=not small)
    ax_r.axhline(0.0, color="0.3", lw=0.9)
    order = np.argsort(fitted, kind="stable")
    nbins = int(min(30, max(5, nobs // 20)))
    bins = np.array_split(order, nbins)
    ax_r.plot([fitted[b].mean() for b in bins], [resid[b].mean() for b in bins], "-",
              color=_FIT, lw=1.6, label="binned mean")
    ax_r.legend(fontsize=8, frameon=False, loc="upper left")
    ax_r.set_xlabel("fitted value", fontsize=9)
    ax_r.set_ylabel("residual", fontsize=9)
    ax_r.set_title("Residuals vs fitted", fontsize=10)
    ax_r.grid(True, lw=0.4, alpha=0.4)

    srt = np.sort(scaled)
    theo = stats.norm.ppf(_ppoints(nobs))
    keep = np.arange(nobs)
    if nobs > max_points:
        keep = np.unique(np.concatenate([np.linspace(0, nobs - 1, max_points).astype(int),
                                         np.arange(min(200, nobs)),
                                         np.arange(max(0, nobs - 200), nobs)]))
    ax_q.scatter(theo[keep], srt[keep], s=12 if small else 3, alpha=0.7 if small else 0.3,
                 color=_POINT, lw=0, rasterized=not small)
    lim = [theo[0], theo[-1]]
    ax_q.plot(lim, lim, "-", color=_FIT, lw=1.2, label="y = x")
    ax_q.legend(fontsize=8, frameon=False, loc="upper left")
    ax_q.set_xlabel("standard normal quantile", fontsize=9)
    ax_q.set_ylabel("scaled residual", fontsize=9)
    ax_q.set_title("Normal QQ plot", fontsize=10)
    ax_q.grid(True, lw=0.4, alpha=0.4)
    for a in (ax_r, ax_q):
        a.tick_params(labelsize=8)
    return fig


# ------------------------------------------------------------------ profile
def profile_zeta(fit_or_profile, parameters=None, *, levels=(0.5, 0.8, 0.9, 0.95, 0.99),
                 ncols: int | None = None, absolute: bool = False):
    """Profile zeta traces, one panel per parameter (lme4's ``xyplot(profile(fit))``).

    Parameters
    ----------
    fit_or_profile : LinearMixedModel or DataFrame
        A fit (profiled here) or the result of ``fit.profile()``.
    parameters : list of str, optional
        lme4 names (``.sig01``, ``.sigma``, fixed effects) to draw; default all.
    levels : sequence of float
        Confidence levels marked by horizontal lines at -/+ z and vertical
        lines down to the interval ends.
    absolute : bool
        Plot |zeta| (lme4's ``absVal = TRUE``).

    Each panel shows zeta against the parameter's value; a straight line
    (dashed, through the estimate) is what zeta would be if the Wald
    approximation held, so curvature shows where the profile intervals differ
    from estimate -/+ z * se.
    """
    plt = _pyplot()
    levels = tuple(as_probability(lv, "levels") for lv in np.atleast_1d(levels).tolist())
    ncols = None if ncols is None else as_count(ncols, "ncols", minimum=1)
    absolute = as_flag(absolute, "absolute")
    prof = fit_or_profile
    if not isinstance(prof, pd.DataFrame):
        if not hasattr(prof, "profile"):
            raise DataError("fit_or_profile must be a fitted model or the DataFrame of its "
                            f"profile(), got {describe(prof)}")
        prof = prof.profile()
    if "parameter" not in prof.columns:
        raise DataError("fit_or_profile must be a fitted model or the DataFrame of its "
                        "profile(); this DataFrame has no 'parameter' column")
    names = list(dict.fromkeys(prof["parameter"]))
    if parameters is not None:
        wanted = [parameters] if isinstance(parameters, str) else list(parameters)
        missing = [p for p in wanted if p not in names]
        if missing:
            raise DataError(f"parameters: no profile of {missing}; profiled: {names}")
        names = wanted
    desc = prof.attrs.get("descriptive", {})
    est = prof.attrs.get("estimates", {})
    k = len(names)
    if ncols is None:
        ncols = min(k, 3)
    nrows = int(math.ceil(k / ncols))
    fig, axes = plt.subplots(nrows, ncols, sharey=True, squeeze=False,
                             figsize=(3.3 * ncols + 0.4, 2.9 * nrows + 0.4), layout="constrained")
    zq = stats.norm.ppf(0.5 + np.asarray(levels) / 2.0)
    for i, a in enumerate(axes.flat):
        if i >= k:
            a.set_visible(False)
            continue
        name = names[i]
        sub = prof[prof["parameter"] == name].sort_values("value")
        sub = sub[np.isfinite(sub["zeta"]) & np.isfinite(sub["value"])]
        v, zt = sub["value"].to_numpy(), sub["zeta"].to_numpy()
        shown = np.abs(zt) if absolute else zt
        for q, lv in zip(zq, levels):
            for s in ((1,) if absolute else (-1, 1)):
                a.axhline(s * q, color="0.8", lw=0.7, zorder=1)
            ends = _crossings(v, zt, q)
            a.plot([e for e, _ in ends], [q if absolute else sg * q for _, sg in ends], "|",
                   color="0.35", ms=7, zorder=4)
            if abs(lv - 0.95) < 1e-9 and len(ends) == 2:
                a.axvspan(ends[0][0], ends[1][0], color=_POP, alpha=0.10, lw=0, zorder=0)
        centre = est.get(name)
        if centre is not None and len(v) >= 3:
            near = np.argsort(np.abs(zt))[:3]
            lin = np.polyfit(zt[near], v[near], 1)[0] if np.ptp(zt[near]) > 0 else None
            if lin:
                zz = np.linspace(-zq.max(), zq.max(), 2)
                ww = centre + lin * zz
                a.plot(ww, np.abs(zz) if absolute else zz, "--", color=_OLS, lw=0.9, zorder=2)
        a.plot(v, shown, "-", color=_POINT, lw=1.6, zorder=3)
        inside = v[np.abs(zt) <= zq.max() * 1.12]
        if len(inside) > 1:
            pad = 0.04 * np.ptp(inside)
            a.set_xlim(max(v.min(), inside.min() - pad), min(v.max(), inside.max() + pad))
        a.set_title(desc.get(name, name), fontsize=9)
        a.tick_params(labelsize=7.5)
        if i % ncols == 0:
            a.set_ylabel("|ζ|" if absolute else "ζ", fontsize=10)
    top = zq.max() * 1.12
    axes[0, 0].set_ylim(0 if absolute else -top, top)
    fig.suptitle("Profile ζ (solid) and its Wald approximation (dashed); horizontal lines at "
                 "the " + ", ".join(f"{lv:.0%}" for lv in levels) + " levels, "
                 "shaded: 95% profile interval", fontsize=9.5)
    return fig


def _crossings(values, zetas, q):
    """(value, sign) where the trace crosses -q and +q (linear interpolation)."""
    out = []
    for sign in (-1, 1):
        target = sign * q
        d = zetas - target
        hit = np.flatnonzero(np.sign(d[:-1]) * np.sign(d[1:]) < 0)
        if len(hit):
            j = hit[0] if sign > 0 else hit[-1]
            t = d[j] / (d[j] - d[j + 1])
            out.append((values[j] + t * (values[j + 1] - values[j]), sign))
    return out


# -------------------------------------------------------------- diagnostics
# --------------------------------------------------------- marginal effects
def marginal_effects(table_or_fit, term=None, ax=None, *, by=None, at=None,
                     level: float = 0.95, alpha: float = 0.2):
    """Draw a marginal effects table: the predictions and their confidence band per group.

    Parameters
    ----------
    table_or_fit : DataFrame or LinearMixedModel
        A table from ``fit.marginal_effects(...)``, or a fit, whose table for
        ``term`` (with ``by``, ``at``, ``level``) is computed first.
    term : str or list of str, optional
        The term of a fit (required then); with a table, only the x-axis label.
    ax : matplotlib Axes, optional
        Draw here.
    alpha : float
        Opacity of the bands.

    A numeric term gives one line and one ``fill_between`` band per group; a
    factor term points with error bars, shifted a little per group.  Returns
    the ``Axes``.
    """
    if isinstance(table_or_fit, pd.DataFrame):
        table = table_or_fit
    elif hasattr(table_or_fit, "marginal_effects"):
        if term is None:
            raise DataError("term: give the variable whose marginal effects to draw, "
                            "e.g. term='Days'")
        table = table_or_fit.marginal_effects(term, by=by, at=at, level=level)
    else:
        raise DataError("table_or_fit must be a table from fit.marginal_effects() or a "
                        f"fitted model, got {describe(table_or_fit)}")
    missing = [c for c in ("x", "predicted", "conf.low", "conf.high", "group")
               if c not in table.columns]
    if missing:
        raise DataError(f"table_or_fit: the table has no column {missing[0]!r}; give a "
                        "table from fit.marginal_effects()")
    alpha = as_probability(alpha, "alpha")
    _, ax = _new_axes(ax, (5.5, 4.0))
    xname = table.attrs.get("term") or (term if isinstance(term, str) else "x")
    groups = list(pd.unique(table["group"]))
    factor = bool(table.attrs.get("factor", not pd.api.types.is_numeric_dtype(table["x"])))
    cycle = [c["color"] for c in _pyplot().rcParams["axes.prop_cycle"]]
    many = len(groups) > 1
    if factor:
        levels = list(pd.unique(table["x"]))
        width = 0.5 / max(len(groups), 1)
    for k, g in enumerate(groups):
        rows = table[table["group"] == g]
        color = cycle[k % len(cycle)] if many else _FIT
        label = str(g) if many else None
        if factor:
            pos = np.array([levels.index(v) for v in rows["x"]], dtype=float)
            pos += (k - (len(groups) - 1) / 2) * width
            y = rows["predicted"].to_numpy(float)
            err = [y - rows["conf.low"].to_numpy(float), rows["conf.high"].to_numpy(float) - y]
            ax.errorbar(pos, y, yerr=err, fmt="o", color=color, capsize=3, label=label)
        else:
            x = rows["x"].to_numpy(float)
            ax.fill_between(x, rows["conf.low"].to_numpy(float),
                            rows["conf.high"].to_numpy(float), color=color, alpha=alpha,
                            linewidth=0)
            ax.plot(x, rows["predicted"].to_numpy(float), color=color, label=label)
    if factor:
        ax.set_xticks(range(len(levels)), [str(v) for v in levels])
    ax.set_xlabel(xname)
    ax.set_ylabel(table.attrs.get("response") or "predicted")
    if many:
        ax.legend(title=table.attrs.get("by") or "group", frameon=False)
    return ax


def save_diagnostics(fit, directory, *, dpi: int = 110, max_levels: int = 60) -> list[Path]:
    """Write the standard diagnostic plots of a fit as PNG files in ``directory``.

    ``residuals.png`` (residuals vs fitted and normal QQ) and, per grouping
    factor, ``ranef_<group>.png`` (caterpillar plot of the conditional modes;
    with more than ``max_levels`` levels all are drawn unlabelled, and
    ``ranef_<group>_widest.png`` adds the ``max_levels`` widest intervals,
    labelled).  Returns the paths written.
    """
    plt = _pyplot()
    dpi = as_positive(dpi, "dpi")
    max_levels = as_count(max_levels, "max_levels", minimum=1)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = out / name
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)

    save(residual_plots(fit), "residuals.png")
    for group, nlev in fit.ngrps.items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(group))
        save(caterpillar(fit, group=group), f"ranef_{safe}.png")
        if nlev > max_levels:
            save(caterpillar(fit, group=group, n=max_levels, order="width"),
                 f"ranef_{safe}_widest.png")
    return written
