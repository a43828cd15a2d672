"""Marginal effects tables, as ggeffects' ``ggpredict`` computes them for lmer fits.

The table holds population-level predictions (random effects at zero,
``re_form="~0"``) over a grid of one term's values:

* a numeric term: "pretty" values over its range in the fit's rows (R's
  ``pretty``: steps of 1, 2 or 5 times a power of ten, about ``n`` of them),
  or the values ``at=`` gives; a factor term: its levels;
* a second term ``by``: one line per level (a factor) or, for a numeric
  variable, at its mean - sd, mean and mean + sd (as ggeffects);
* every other numeric variable of the fixed part at its mean, every other
  factor at its reference level (ggpredict's default), unless ``at=`` fixes it.

Each prediction comes from :func:`lmmfast.predict.predict` with
``se_fit=True, interval="confidence"``: standard error sqrt(x V(beta-hat) x^T)
(eq. 90) and Wald limits with the normal quantile.  ggeffects' intervals for
lmer fits come from the same x V x^T, but recent versions take a t quantile
whose df they get from the model (which df depends on the version), so
ggeffects' limits can be slightly wider when that df is small; the predictions
and standard errors are the same.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from .arguments import as_count, as_probability, describe
from .emmeans import fixed_variables
from .errors import DataError
from .formula import parse_formula

__all__ = ["marginal_effects", "pretty"]

COLUMNS = ["x", "predicted", "std.error", "conf.low", "conf.high", "group"]


def pretty(low: float, high: float, n: int = 10) -> np.ndarray:
    """About ``n`` round values covering [low, high]: steps of 1, 2, 5 or 10 times a power of ten."""
    if high <= low:
        return np.array([float(low)])
    raw = (high - low) / n
    unit = 10.0 ** math.floor(math.log10(raw))
    step = next(m * unit for m in (1, 2, 5, 10) if (high - low) / (m * unit) <= n)
    start = math.floor(low / step + 1e-10) * step
    stop = math.ceil(high / step - 1e-10) * step
    count = round((stop - start) / step) + 1
    return np.round(start + step * np.arange(count), 12)


def _column(fit, var: str, what: str) -> np.ndarray:
    """The fit's values of numeric variable ``var`` (its column of X)."""
    names = list(fit.fixef_names)
    if var in names and getattr(fit, "x", None) is not None:
        return np.asarray(fit.x[:, names.index(var)], dtype=np.float64)
    raise DataError(f"the values of the numeric variable {var!r} are not known from the model "
                    "(it enters only through a function, or the model keeps no rows): "
                    f"give {what} values with at={{{var!r}: [...]}}")


def _given(at: dict, var: str, levels: list[str] | None) -> list:
    """The values ``at=`` gives for ``var``, checked against its levels or as finite numbers."""
    given = at[var]
    given = [given] if np.ndim(given) == 0 else list(np.ravel(np.asarray(given, dtype=object)))
    if not given:
        raise DataError(f"at={{{var!r}: ...}} gives no values")
    if levels is not None:
        given = [str(g) for g in given]
        bad = [g for g in given if g not in levels]
        if bad:
            raise DataError(f"at= gives level {bad[0]!r} of factor {var!r}, which the fit "
                            f"does not have (levels: {', '.join(levels)})")
        return given
    try:
        values = [float(g) for g in given]
    except (TypeError, ValueError):
        values = [np.nan]
    if not np.isfinite(values).all():
        raise DataError(f"at= gives {describe(at[var])} for the numeric variable {var!r}: "
                        "give finite numbers")
    return values


def _term_names(term, by) -> tuple[str, str | None]:
    """The term and the optional second term from ``term`` (a name or [name, by]) and ``by``."""
    if isinstance(term, (list, tuple)):
        if not 1 <= len(term) <= 2 or (len(term) == 2 and by is not None):
            raise DataError(f"term must be a name or a list [term, by] of two names, got "
                            f"{describe(term)}" + (" together with by=" if by is not None else ""))
        term, by = (term[0], term[1]) if len(term) == 2 else (term[0], by)
    for value, what in ((term, "term"), (by, "by")):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise DataError(f"{what} must be a variable name, got {describe(value)}")
    term = term.strip().strip("`")
    by = None if by is None else by.strip().strip("`")
    if by == term:
        raise DataError(f"by names the term {term!r} itself: give a different variable")
    return term, by


def marginal_effects(fit, term, by=None, at=None, n: int = 10,
                     level: float = 0.95) -> pd.DataFrame:
    """ggeffects' ``ggpredict(fit, terms = c(term, by))`` table for a fitted model.

    Parameters
    ----------
    fit : LinearMixedModel
        A fitted model.
    term : str or list of str
        The variable on the x axis, or ``[term, by]``.
    by : str, optional
        A second variable: one line (``group``) per value.
    at : dict, optional
        ``{variable: value or values}``: the term's or by's values, or fixed
        values of other variables.
    n : int
        About how many values a numeric term takes over its range.
    level : float
        Confidence level of ``conf.low``, ``conf.high``.

    Returns
    -------
    pandas.DataFrame
        Columns ``x``, ``predicted``, ``std.error``, ``conf.low``,
        ``conf.high``, ``group`` (``"1"`` without ``by``), sorted by group
        then x; ``attrs`` records ``term``, ``by``, ``response``, ``level``.
    """
    fit._require_fit()
    term, by = _term_names(term, by)
    n = as_count(n, "n", minimum=2)
    level = as_probability(level, "level")
    if at is None:
        at = {}
    if not isinstance(at, dict):
        raise DataError(f"at must be a dict of variable -> value(s), got {describe(at)}")
    parsed = parse_formula(fit.formula)
    variables = fixed_variables(parsed.fixed)
    shown = ", ".join(map(repr, variables)) or "none"
    for name, what in [(term, "term"), (by, "by")] + [(v, "at") for v in at]:
        if name is not None and name not in variables:
            raise DataError(f"{what} names {name!r}, which is not a variable of the model's "
                            f"fixed part (variables: {shown})")
    levels = getattr(fit, "factor_levels", None) or {}
    values = {}
    for var in variables:
        lev = [str(v) for v in levels[var]] if var in levels else None
        if var in at:
            values[var] = _given(at, var, lev)
        elif lev is not None:
            values[var] = lev if var in (term, by) else lev[:1]
        elif var == term:
            col = _column(fit, var, "the term's")
            values[var] = list(pretty(float(col.min()), float(col.max()), n))
        elif var == by:
            col = _column(fit, var, "by")
            m, s = float(col.mean()), float(col.std(ddof=1)) if len(col) > 1 else 0.0
            values[var] = [m - s, m, m + s] if s > 0 else [m]
        else:
            values[var] = [float(_column(fit, var, "its").mean())]
    several = [v for v in variables if v not in (term, by) and len(values[v]) > 1]
    if several:
        raise DataError(f"at= gives several values of {several[0]!r}, which is neither the "
                        "term nor by: give one value, or name it as by")
    order = [term] + ([by] if by else []) + [v for v in variables if v not in (term, by)]
    combos = itertools.product(*(values[v] for v in reversed(order)))   # term fastest
    grid = pd.DataFrame([c[::-1] for c in combos], columns=order)
    pred = fit.predict(grid, re_form="~0", se_fit=True, interval="confidence", level=level)
    table = pd.DataFrame({
        "x": grid[term].to_numpy(),
        "predicted": pred["fit"].to_numpy(),
        "std.error": pred["se.fit"].to_numpy(),
        "conf.low": pred["lwr"].to_numpy(),
        "conf.high": pred["upr"].to_numpy(),
        "group": np.array(["1"] * len(grid) if by is None else
                          [v if isinstance(v, str) else f"{v:g}" for v in grid[by]], dtype=object),
    })
    table.attrs.update(term=term, by=by, response=parsed.response, level=level,
                       factor=term in levels)
    return table
