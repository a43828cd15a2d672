"""Estimated marginal means and their contrasts, as R's emmeans computes them.

The reference grid holds every level of each factor of the fixed part and
each numeric variable at its mean (or at the values ``at=`` gives).  A
marginal mean is the equal-weight average of the grid's predictions over
the variables not in ``specs`` (eq. 76); its standard error comes from
l V l^T and its df from Satterthwaite (eq. 31) or Kenward-Roger (eq. 37)
for the single contrast l (eq. 77).  Contrasts of the means are C L beta
(eq. 78), with the multiplicity adjustments of eq. (79).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
from scipy import stats

from .arguments import as_choice, as_probability, describe
from .errors import DataError, FitError
from .formula import parse_formula
from .kenward_roger import kenward_roger, kr_test
from .design.materialize import R_FUNCTIONS, TRANSFORMS, identifiers, required_variables
from .predict import coded_frame, _columns, _select
from .satterthwaite import contrast_df, varpar_covariance

__all__ = ["EMMeans", "contrast_coefficients", "emmeans"]

TUKEY_DF_INFINITE = 25_000   # R's ptukey treats larger df as infinite

DDF_METHODS = ("kenward-roger", "satterthwaite", "asymptotic")
CONTRAST_METHODS = ("pairwise", "revpairwise", "trt.vs.ctrl", "consec", "poly")
ADJUSTMENTS = ("tukey", "holm", "bonferroni", "sidak", "none")
POLY_NAMES = ["linear", "quadratic", "cubic", "quartic"]
MAX_GRID = 100_000   # rows of the reference grid
# emmeans' default adjustment per method; those it adjusts by the multivariate t
# ("mvt", "dunnettx") need an explicit adjust= here
_DEFAULT_ADJUST = {"pairwise": "tukey", "revpairwise": "tukey", "poly": "none"}


# --------------------------------------------------------------- arguments
def _names(value, what: str) -> list[str]:
    """Variable names from a string (``"a"``, ``"a + b"``, ``"a * b"``) or a list of strings."""
    if isinstance(value, str):
        parts = [p.strip().strip("`") for p in re.split(r"[+*:]", value)]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = [v.strip().strip("`") for v in value]
    else:
        raise DataError(f"{what} must be a variable name, a formula such as '~ a | b' or a "
                        f"list of names, got {describe(value)}")
    if not parts or any(not p for p in parts):
        raise DataError(f"{what} {value!r} names no variable: give e.g. '~ recipe'")
    return parts


def _parse_specs(specs, by) -> tuple[list[str], list[str]]:
    """The spec variables and the ``by`` variables of ``specs="~ a | b"`` or ``by=``."""
    if isinstance(specs, str):
        text = specs.strip()
        text = text.removeprefix("~")
        if "|" in text:
            if by is not None:
                raise DataError(f"specs {specs!r} has a '|' and by= is given as well: "
                                "name the conditioning variables in one of them")
            text, by = text.split("|", 1)
        specs = text
    names = _names(specs, "specs")
    if names == ["1"]:          # the overall mean
        names = []
    by_names = [] if by is None else _names(by, "by")
    both = set(names) & set(by_names)
    if both:
        raise DataError(f"variable {min(both)!r} is both in specs and in by")
    return names, by_names


def fixed_variables(fixed: str) -> list[str]:
    """The data variables the fixed part reads (arguments of transforms included)."""
    calls = set(R_FUNCTIONS) | set(TRANSFORMS)
    found = set(required_variables(fixed))
    found |= {v for v in identifiers(fixed) if v not in calls}
    return sorted(found)


# ----------------------------------------------------------- reference grid
def _numeric_mean(fit, var: str) -> float:
    """The mean of numeric variable ``var`` over the fit's rows (its column of X)."""
    names = list(fit.fixef_names)
    if var in names and getattr(fit, "x", None) is not None:
        return float(np.mean(fit.x[:, names.index(var)]))
    raise DataError(f"the mean of the numeric variable {var!r} is not known from the model "
                    "(it enters only through a function, or the model keeps no rows): "
                    f"give its value(s) with at={{{var!r}: ...}}")


def _grid_values(fit, variables: list[str], at: dict) -> tuple[dict, dict]:
    """Per fixed-part variable: its grid values, and whether it is a factor."""
    levels = getattr(fit, "factor_levels", None) or {}
    values, is_factor = {}, {}
    for var in variables:
        is_factor[var] = var in levels
        if var in at:
            given = at[var]
            given = [given] if np.ndim(given) == 0 else list(np.ravel(given))
            if not given:
                raise DataError(f"at={{{var!r}: ...}} gives no values")
            if is_factor[var]:
                given = [str(g) for g in given]
                bad = [g for g in given if g not in levels[var]]
                if bad:
                    raise DataError(f"at= gives level {bad[0]!r} of factor {var!r}, which the "
                                    f"fit does not have (levels: {', '.join(levels[var])})")
            else:
                try:
                    given = [float(g) for g in given]
                except (TypeError, ValueError):
                    given = [np.nan]
                if not np.isfinite(given).all():
                    raise DataError(f"at= gives {describe(at[var])} for the numeric variable "
                                    f"{var!r}: give finite numbers")
            values[var] = given
        elif is_factor[var]:
            values[var] = list(levels[var])
        else:
            values[var] = [_numeric_mean(fit, var)]
    return values, is_factor


def _grid_matrix(fit, fixed: str, variables: list[str], values: dict,
                 is_factor: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """The reference grid (first variable varying fastest) and its rows of X."""
    size = int(np.prod([len(values[v]) for v in variables])) if variables else 1
    if size > MAX_GRID:
        raise DataError(f"the reference grid has {size} rows, more than {MAX_GRID}: "
                        "restrict factors or covariates with at=")
    combos = list(itertools.product(*(values[v] for v in reversed(variables))))
    grid = pd.DataFrame([c[::-1] for c in combos], columns=variables) if variables \
        else pd.DataFrame(index=pd.RangeIndex(1))
    frame = grid.copy()
    for v in variables:
        if is_factor[v]:
            frame[v] = pd.Categorical(grid[v], categories=fit.factor_levels[v])
    names = list(fit.fixef_names) + list(fit.dropped_columns)
    coded, _ = coded_frame(fit, frame, set(variables), names, "the reference grid")
    x, xnames = _columns(fixed, coded, "the fixed-effects part on the reference grid",
                         getattr(fit, "fixed_spec", None))
    return grid, _select(x, xnames, list(fit.fixef_names), "reference grid")


# ---------------------------------------------------------------- inference
class _Inference:
    """beta-hat, its covariance and the df of a contrast under one ddf method."""

    def __init__(self, fit, ddf: str):
        self.method = ddf
        self.beta = fit.fixef.to_numpy()
        if ddf == "kenward-roger":
            self._kr = kenward_roger(fit)
            self.vcov = self._kr.phi_adj
        elif ddf == "satterthwaite":
            self._cov = varpar_covariance(fit)
            self.vcov = self._cov.vcov_beta
        else:
            self.vcov = fit.vcov.to_numpy()

    def df(self, rows: np.ndarray) -> np.ndarray:
        """The df of each row's contrast l beta (eq. 77)."""
        if self.method == "asymptotic":
            return np.full(len(rows), np.inf)
        if self.method == "satterthwaite":
            return np.array([contrast_df(self._cov, l) for l in rows])
        return np.array([kr_test(self._kr, self.beta, l)[3] for l in rows])

    def table(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Estimate, standard error and df of each row's l beta (eq. 77)."""
        estimate = rows @ self.beta
        se = np.sqrt(np.einsum("ij,jk,ik->i", rows, self.vcov, rows))
        with np.errstate(divide="ignore", invalid="ignore"):   # a zero contrast: NaN df
            return estimate, se, self.df(rows)


def _statistics(estimate, se, df, level: float, adjust: str = "none",
                family: int = 1, means: int = 2) -> dict:
    """CI, t (or z) and p of each row under the multiplicity adjustment (eq. 79)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = estimate / se
    raw = 2.0 * stats.t.sf(np.abs(t), df)
    alpha = 1.0 - level
    if adjust == "tukey":   # df above 25,000 as infinite, as R's ptukey (its dlarg)
        q_df = np.where(np.asarray(df, dtype=float) > TUKEY_DF_INFINITE, np.inf, df)
        p = stats.studentized_range.sf(np.abs(t) * np.sqrt(2.0), means, q_df)
        crit = stats.studentized_range.ppf(level, means, q_df) / np.sqrt(2.0)
    else:
        if adjust in ("holm", "bonferroni"):
            crit = stats.t.ppf(1.0 - alpha / (2.0 * family), df)
        elif adjust == "sidak":
            crit = stats.t.ppf(1.0 - (1.0 - level ** (1.0 / family)) / 2.0, df)
        else:
            crit = stats.t.ppf(1.0 - alpha / 2.0, df)
        p = _adjust_p(raw, adjust, family)
    return {"lower": estimate - crit * se, "upper": estimate + crit * se, "t": t, "p": p}


def _adjust_p(p: np.ndarray, adjust: str, family: int) -> np.ndarray:
    """R's ``p.adjust`` (holm, bonferroni) and the Sidak correction over ``family`` tests."""
    p = np.asarray(p, dtype=np.float64)
    if adjust == "bonferroni":
        return np.minimum(1.0, p * family)
    if adjust == "sidak":
        return 1.0 - (1.0 - p) ** family
    if adjust == "holm":
        order = np.argsort(p, kind="stable")
        steps = np.maximum.accumulate(p[order] * (family - np.arange(len(p))))
        out = np.empty_like(p)
        out[order] = np.minimum(1.0, steps)
        return out
    return p


def _table(columns: dict, estimate_name: str, estimate, se, df, stat: dict) -> pd.DataFrame:
    """emmeans' columns: t tests and CL, or z tests and asymp.CL for infinite df."""
    asymptotic = np.all(np.isinf(df))
    out = dict(columns)
    out.update({estimate_name: estimate, "SE": se, "df": df})
    lo, hi, ratio = ("asymp.LCL", "asymp.UCL", "z.ratio") if asymptotic \
        else ("lower.CL", "upper.CL", "t.ratio")
    out.update({lo: stat["lower"], hi: stat["upper"], ratio: stat["t"], "p.value": stat["p"]})
    return pd.DataFrame(out)


# ---------------------------------------------------------------- contrasts
def _poly_coefficients(k: int) -> np.ndarray:
    """emmeans' ``poly.emmc``: orthogonal polynomials of degree 1..min(6, k-1) as integers.

    Each is R's ``poly`` column (positive at the last level), divided by its
    smallest entry above 0.01 and then by its largest distance from an
    integer until that is at most 0.05, and rounded.
    """
    degree = min(6, k - 1)
    x = np.arange(1, k + 1, dtype=np.float64)
    q, _ = np.linalg.qr(np.vander(x - x.mean(), degree + 1, increasing=True))
    out = []
    for j in range(1, degree + 1):
        con = q[:, j] * np.sign(q[-1, j])
        con = con / np.min(con[con > 0.01])
        z = np.max(np.abs(con - np.round(con)))
        while z > 0.05:
            con = con / z
            z = np.max(np.abs(con - np.round(con)))
        out.append(np.round(con))
    return np.array(out)


def contrast_coefficients(method: str, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """The coefficient matrix (contrasts x means) and labels of emmeans' contrast ``method``."""
    k = len(labels)
    rows, names = [], []

    def diff(i, j):
        row = np.zeros(k)
        row[i], row[j] = 1.0, -1.0
        rows.append(row)
        names.append(f"{labels[i]} - {labels[j]}")

    if method == "pairwise":
        for i, j in itertools.combinations(range(k), 2):
            diff(i, j)
    elif method == "revpairwise":
        for i in range(1, k):
            for j in range(i):
                diff(i, j)
    elif method == "trt.vs.ctrl":
        for i in range(1, k):
            diff(i, 0)
    elif method == "consec":
        for i in range(1, k):
            diff(i, i - 1)
    else:
        coef = _poly_coefficients(k)
        rows = list(coef)
        names = (POLY_NAMES + [f"degree {d}" for d in range(5, 21)])[:len(coef)]
    return np.array(rows).reshape(len(rows), k), names


# ------------------------------------------------------------------ results
class EMMeans:
    """Estimated marginal means of a fit: ``table`` is emmeans' summary as a DataFrame."""

    def __init__(self, fit, spec: list[str], by: list[str], grid: pd.DataFrame,
                 rows: np.ndarray, inference: _Inference, is_factor: dict, level: float):
        self.fit = fit
        self.specs, self.by = spec, by
        self.grid, self.linfct = grid, rows
        self.ddf = inference.method
        self.level = level
        self._inference = inference
        self._is_factor = is_factor
        estimate, se, df = inference.table(rows)
        stat = _statistics(estimate, se, df, level)
        columns = {} if spec else {"1": ["overall"] * len(grid)}
        columns.update({v: grid[v].to_numpy() for v in spec + by})
        self.table = _table(columns, "emmean", estimate, se, df, stat)

    def _label(self, i: int) -> str:
        """emmeans' label of a mean in a contrast: levels joined by spaces, numbers prefixed."""
        parts = []
        for v in self.specs:
            value = self.grid[v].iloc[i]
            if self._is_factor[v]:
                parts.append(str(value))
            else:
                parts.append(f"{v}{value:g}")
        return " ".join(parts)

    def contrast(self, method: str = "pairwise", adjust: str | None = None,
                 level: float | None = None) -> pd.DataFrame:
        """Contrasts of the means within each ``by`` group (emmeans' ``contrast``, eqs. 78-79).

        ``method``: ``"pairwise"``, ``"revpairwise"``, ``"trt.vs.ctrl"`` (each level
        minus the first), ``"consec"`` or ``"poly"``; ``adjust``: ``"tukey"``,
        ``"holm"``, ``"bonferroni"``, ``"sidak"`` or ``"none"`` (default: emmeans'
        ``"tukey"`` for pairwise methods, ``"none"`` for ``"poly"``).  Holm's and
        Bonferroni's intervals are Bonferroni intervals, as in emmeans.
        """
        method = as_choice(method, "method", CONTRAST_METHODS)
        if adjust is None:
            if method not in _DEFAULT_ADJUST:
                raise DataError(f"emmeans adjusts method={method!r} by the multivariate t "
                                "distribution, which is not available: give adjust= one of "
                                + ", ".join(repr(a) for a in ADJUSTMENTS))
            adjust = _DEFAULT_ADJUST[method]
        adjust = as_choice(adjust, "adjust", ADJUSTMENTS)
        if adjust == "tukey" and method not in ("pairwise", "revpairwise"):
            raise DataError(f"adjust='tukey' applies to pairwise comparisons, not to "
                            f"method={method!r}: use 'holm', 'bonferroni', 'sidak' or 'none'")
        level = self.level if level is None else as_probability(level, "level")
        groups = self.grid.groupby(self.by, sort=False).indices if self.by \
            else {(): np.arange(len(self.grid))}
        parts = []
        for key, idx in groups.items():
            idx = np.sort(idx)
            if len(idx) < 2:
                raise DataError(f"contrasts need at least two means per group; "
                                f"specs {self.specs} give {len(idx)}")
            coef, names = contrast_coefficients(method, [self._label(i) for i in idx])
            rows = coef @ self.linfct[idx]
            estimate, se, df = self._inference.table(rows)
            stat = _statistics(estimate, se, df, level, adjust, len(rows), len(idx))
            columns = {"contrast": names}
            key = key if isinstance(key, tuple) else (key,)
            columns.update({v: [k] * len(rows) for v, k in zip(self.by, key)})
            parts.append(_table(columns, "estimate", estimate, se, df, stat))
        return pd.concat(parts, ignore_index=True)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key):
        return self.table[key]

    def __repr__(self) -> str:
        return self.table.to_string(index=False)

    def _repr_html_(self) -> str:
        return self.table.to_html(index=False)


def emmeans(fit, specs, by=None, at=None, ddf: str = "kenward-roger",
            level: float = 0.95) -> EMMeans:
    """Estimated marginal means of ``specs`` (emmeans' ``emmeans``; eqs. 76-77).

    ``specs``: a name, ``"~ a"``, ``"~ a * b"``, ``"~ a | b"``, ``"~ 1"`` (the
    overall mean) or a list of names; ``by``: the conditioning variables (or ``|`` in ``specs``);
    ``at``: grid values, ``{variable: value or values}``, needed for a
    numeric variable in ``specs`` or ``by``; ``ddf``: ``"kenward-roger"``,
    ``"satterthwaite"`` or ``"asymptotic"`` (z tests).
    """
    fit._require_fit()
    ddf = as_choice(ddf, "ddf", DDF_METHODS, {"kr": "kenward-roger"})
    level = as_probability(level, "level")
    spec, by_names = _parse_specs(specs, by)
    if at is None:
        at = {}
    if not isinstance(at, dict):
        raise DataError(f"at must be a dict of variable -> value(s), got {describe(at)}")
    dropped = list(getattr(fit, "dropped_columns", None) or [])
    if dropped:
        raise FitError("marginal means of a rank-deficient fit (dropped columns "
                       f"{', '.join(map(repr, dropped))}) are not available: "
                       "refit without the aliased terms")
    fixed = parse_formula(fit.formula).fixed
    variables = fixed_variables(fixed)
    for name, what in [(v, "specs") for v in spec] + [(v, "by") for v in by_names] \
            + [(v, "at") for v in at]:
        if name not in variables:
            shown = ", ".join(map(repr, variables)) or "none"
            raise DataError(f"{what} names {name!r}, which is not a variable of the model's "
                            f"fixed part (variables: {shown})")
    values, is_factor = _grid_values(fit, variables, at)
    for v in spec + by_names:
        if not is_factor[v] and v not in at:
            raise DataError(f"{v!r} is a numeric variable: give the values of its means "
                            f"with at={{{v!r}: [...]}}, or use a factor")
    grid, x = _grid_matrix(fit, fixed, variables, values, is_factor)
    keys = spec + by_names
    cells = pd.DataFrame([c[::-1] for c in itertools.product(*(values[v] for v in keys[::-1]))],
                         columns=keys)
    if keys:
        groups = grid.groupby(keys, sort=False).indices
        index = list(cells.itertuples(index=False, name=None)) if len(keys) > 1 \
            else list(cells[keys[0]])
        rows = np.array([x[groups[k]].mean(axis=0) for k in index])
    else:
        rows = x.mean(axis=0, keepdims=True)
    return EMMeans(fit, spec, by_names, cells, rows, _Inference(fit, ddf), is_factor, level)
