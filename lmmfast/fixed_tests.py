"""Tests of the fixed effects: coefficient tables and type III F tests, as lmerTest prints them.

``coef_table`` gives each coefficient's t test with Satterthwaite's (eq. 31)
or Kenward-Roger's (eqs. 36, 37) denominator df, or a Wald z test.
``anova_table`` gives lmerTest's type III F test of each fixed-effects term
(eqs. 32, 37) on the hypothesis matrices of eq. (39).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from formulaic import Formula
from scipy import stats

from .errors import LmmError
from .formula import parse_formula
from .kenward_roger import kenward_roger, kr_test
from .design.materialize import lme4_column_name, split_column_name
from .satterthwaite import contrast_df, f_test, varpar_covariance

__all__ = ["InferenceError", "coef_table", "anova_table", "type3_contrasts", "normalize_ddf"]

SATTERTHWAITE = "satterthwaite"
KENWARD_ROGER = "kenward-roger"
_DDF_NAMES = {"satterthwaite": SATTERTHWAITE, "kenward-roger": KENWARD_ROGER,
              "kr": KENWARD_ROGER}
MAX_CELLS = 100_000  # level combinations of the factors that share one numeric part (eq. 39)
ANOVA_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


class InferenceError(LmmError):
    """A test of the fixed effects was asked for in a way that cannot be carried out."""


def normalize_ddf(ddf) -> str | None:
    """``None``, ``"satterthwaite"`` or ``"kenward-roger"`` from a name in any case, or "KR"."""
    if ddf is None:
        return None
    name = _DDF_NAMES.get(ddf.strip().lower()) if isinstance(ddf, str) else None
    if name is None:
        raise InferenceError(f"unknown ddf {ddf!r}: use None (Wald z tests), "
                             "'satterthwaite' or 'kenward-roger' (also 'KR')")
    return name


# --------------------------------------------------------------------------
# coefficient tables


def coef_table(fit, ddf=None) -> pd.DataFrame:
    """The fixed-effects table of lmerTest's ``summary``: one t test per coefficient.

    Columns ``Estimate``, ``Std. Error``, ``df``, ``t value``, ``Pr(>|t|)``;
    with ``ddf=None`` the Wald test with a normal reference: ``Estimate``,
    ``Std. Error``, ``z value``, ``Pr(>|z|)``.  Kenward-Roger's standard
    errors are the adjusted ones (eq. 36).
    """
    method = normalize_ddf(ddf)
    fit._require_fit()
    names = list(fit.fixef_names)
    estimate = fit.fixef.to_numpy()
    identity = np.eye(fit.p)
    if method is None:
        se = fit.stderr.to_numpy()
        z = estimate / se
        return pd.DataFrame({"Estimate": estimate, "Std. Error": se, "z value": z,
                             "Pr(>|z|)": 2.0 * stats.norm.sf(np.abs(z))}, index=names)
    if method == SATTERTHWAITE:
        cov = varpar_covariance(fit)
        se = np.sqrt(np.diag(cov.vcov_beta))
        df = np.array([contrast_df(cov, row) for row in identity])
    else:
        kr = kenward_roger(fit)
        se = np.sqrt(np.diag(kr.phi_adj))
        df = np.array([kr_test(kr, estimate, row)[3] for row in identity])
    t = estimate / se
    return pd.DataFrame({"Estimate": estimate, "Std. Error": se, "df": df, "t value": t,
                         "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t), df)}, index=names)


# --------------------------------------------------------------------------
# F tests


def anova_table(fit, ddf="satterthwaite") -> pd.DataFrame:
    """lmerTest's type III ``anova``: an F test of each fixed-effects term.

    Columns ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``, ``F value``,
    ``Pr(>F)``; ``Mean Sq`` is F sigma^2 and ``Sum Sq`` is NumDF times it.
    Terms with nothing to test (all their columns dropped for rank
    deficiency) come last, with missing values, as in lmerTest.
    With Kenward-Roger's method F is the scaled statistic (eq. 37) and the
    sums of squares use the unscaled one, as lmerTest reports them.
    """
    method = normalize_ddf(ddf)
    if method is None:
        raise InferenceError("the F tests need denominator degrees of freedom: "
                             "use ddf='satterthwaite' or ddf='kenward-roger'")
    fit._require_fit()
    beta = fit.fixef.to_numpy()
    sigma2 = fit.sigma ** 2
    rows, untestable = {}, []
    for term, L in type3_contrasts(fit).items():
        if L.shape[0] == 0:
            untestable.append(term)
            continue
        if method == SATTERTHWAITE:
            result = f_test(varpar_covariance(fit), beta, L)
            if result is None:
                untestable.append(term)
                continue
            f_value, ndf, den = result
            mean_sq = f_value * sigma2
        else:
            f_unscaled, scale, ndf, den = kr_test(kenward_roger(fit), beta, L)
            mean_sq, f_value = f_unscaled * sigma2, f_unscaled * scale
        rows[term] = [mean_sq * ndf, mean_sq, ndf, den, f_value,
                      stats.f.sf(f_value, ndf, den)]
    rows.update({term: [np.nan] * len(ANOVA_COLUMNS) for term in untestable})
    table = pd.DataFrame.from_dict(rows, orient="index", columns=ANOVA_COLUMNS)
    if table["NumDF"].notna().all():
        table["NumDF"] = table["NumDF"].astype(int)
    return table


# --------------------------------------------------------------------------
# type III hypothesis matrices (eq. 39)


class _Design:
    """The fixed-effects terms of a fit and, per column of X, its term and factor levels."""

    def __init__(self, fit):
        formula = Formula(parse_formula(fit.formula).fixed)
        self.has_intercept = any(str(t) == "1" for t in formula)
        self.terms: list[tuple[str, ...]] = []
        self.plain: list[tuple[bool, ...]] = []
        for term in formula:
            if str(term) != "1":
                self.terms.append(tuple(lme4_column_name(f.expr) for f in term.factors))
                self.plain.append(tuple(f.eval_method.value == "lookup" for f in term.factors))
        self.labels = [":".join(t) for t in self.terms]
        self.columns: list[list[int]] = [[] for _ in self.terms]
        self.keys: list[tuple] = []
        self.numeric: dict[str, bool] = {}
        self.visible: dict[str, list[str]] = {}
        current = 0
        for j, name in enumerate(fit.fixef_names):
            if name == "(Intercept)":
                self.keys.append((-1, ()))
                continue
            current, levels = self._match(split_column_name(name), current, name)
            self.columns[current].append(j)
            self.keys.append((current, levels))

    def _match(self, pieces: list[str], start: int, name: str) -> tuple[int, tuple]:
        """The term of a column (at or after ``start``) and its levels, exact names first."""
        for exact in (True, False):
            for t in range(start, len(self.terms)):
                variables = self.terms[t]
                if len(variables) != len(pieces):
                    continue
                if exact and list(variables) == pieces:
                    for v in variables:
                        self.numeric[v] = True
                    return t, ()
                if not exact and all(p.startswith(v) for p, v in zip(pieces, variables)):
                    levels = []
                    for p, v, plain in zip(pieces, variables, self.plain[t]):
                        if p == v:
                            self.numeric[v] = True
                            continue
                        if not plain:
                            raise InferenceError(
                                f"type III hypotheses: the column {name!r} of {v!r} is not a "
                                "plain factor or numeric variable")
                        self.numeric[v] = False
                        levels.append(p[len(v):])
                        if levels[-1] not in self.visible.setdefault(v, []):
                            self.visible[v].append(levels[-1])
                    return t, tuple(levels)
        raise InferenceError(f"type III hypotheses: cannot tell which term the fixed-effects "
                             f"column {name!r} belongs to")

    def factors(self, t: int) -> tuple[str, ...]:
        return tuple(v for v in self.terms[t] if not self.numeric.get(v, True))

    def numerics(self, t: int) -> tuple[str, ...]:
        return tuple(sorted(v for v in self.terms[t] if self.numeric.get(v, True)))

    def levels(self, v: str) -> list:
        """All levels of factor ``v``; ``None`` for a reference level no column shows."""
        terms = set(map(frozenset, self.terms)) | ({frozenset()} if self.has_intercept else set())
        coded_fully = contrasts = False
        for t, variables in enumerate(self.terms):
            if v in variables:
                margin = frozenset(variables) - {v}
                contrasts |= margin in terms
                coded_fully |= margin not in terms
        hidden = [None] if contrasts and not coded_fully else []
        return hidden + self.visible.get(v, [])


def _zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest entry."""
    mx = np.max(np.abs(x)) if x.size else 0.0
    if mx == 0:
        return x
    return np.round(x, max(0, digits - math.ceil(math.log10(mx))))


def _cell_vector(grid: list[tuple], variables: list[str], levels: dict) -> np.ndarray:
    """A product of level indicators over the cells of ``grid`` (1 where no level is fixed)."""
    out = np.ones(len(grid))
    for k, v in enumerate(variables):
        if v in levels:
            out *= np.array([cell[k] == levels[v] for cell in grid], dtype=np.float64)
    return out


def _redundant_coefficients(design: _Design, rd_keys: list[tuple], p: int) -> np.ndarray:
    """M with X M = the indicator-coded design (p x len(rd_keys)), one numeric part at a time.

    Columns with different numeric parts are linearly independent, so each
    numeric part is solved on the cells of the factors that appear with it.
    """
    def parts(key):
        t, levels = key
        if t < 0:
            return (), {}
        return design.numerics(t), dict(zip(design.factors(t), levels))

    x_parts = [parts(k) for k in design.keys]
    rd_parts = [parts(k) for k in rd_keys]
    m = np.zeros((p, len(rd_keys)))
    for numeric in {num for num, _ in x_parts + rd_parts}:
        xj = [j for j, (num, _) in enumerate(x_parts) if num == numeric]
        rj = [j for j, (num, _) in enumerate(rd_parts) if num == numeric]
        variables = sorted({v for j in xj for v in x_parts[j][1]}
                           | {v for j in rj for v in rd_parts[j][1]})
        sizes = [len(design.levels(v)) for v in variables]
        if math.prod(sizes) > MAX_CELLS:
            raise InferenceError(f"type III hypotheses: the factors {variables} have more than "
                                 f"{MAX_CELLS} combinations of levels")
        grid = list(itertools.product(*(design.levels(v) for v in variables)))
        xs = np.column_stack([_cell_vector(grid, variables, x_parts[j][1]) for j in xj]) \
            if xj else np.zeros((len(grid), 0))
        rds = np.column_stack([_cell_vector(grid, variables, rd_parts[j][1]) for j in rj])
        coef = np.linalg.lstsq(xs, rds, rcond=None)[0] if xj else np.zeros((0, len(rj)))
        if np.linalg.norm(xs @ coef - rds) > 1e-8 * np.linalg.norm(rds):
            raise InferenceError(
                "type III hypotheses: the indicator coding of the terms is not spanned by "
                "the model's columns (e.g. missing cells or a term without its margins)")
        m[np.ix_(xj, rj)] = coef
    return m


def _xtx_factor(fit) -> np.ndarray:
    """The lower Cholesky factor of the unweighted X'X, from the rows or, for a model
    built from A alone, from the reduction's X'X (weighted data) or from R_X at theta = 0,
    where L_XZ = 0 and so R_X R_X^T = X'WX = X'X (eq. 11)."""
    if getattr(fit, "x", None) is not None:
        return np.linalg.cholesky(fit.x.T @ fit.x)
    xtx = getattr(fit, "_xtx", None)
    if xtx is not None:
        return np.linalg.cholesky(xtx)
    theta = np.asarray(fit._theta, dtype=np.float64)
    try:
        if fit._core.update(fit._to_internal(np.zeros_like(theta))) != 0:
            raise InferenceError("the Cholesky factor of X'X failed: X is rank deficient")
        return np.array(fit._fixed_factor()[0])
    finally:
        fit._core.update(fit._to_internal(theta))


def _type1(fit, design: _Design) -> dict[str, np.ndarray]:
    """lmerTest's sequential (type I) hypotheses: rows of the unit upper factor of X'X."""
    p = fit.p
    if p == 0 or (p == 1 and design.has_intercept):
        return {label: np.zeros((0, 1)) for label in design.labels}
    chol = _xtx_factor(fit)
    upper = (chol / np.diag(chol)).T
    upper[np.abs(upper) < 1e-6] = 0.0
    return {label: upper[cols] for label, cols in zip(design.labels, design.columns)}


def type3_contrasts(fit) -> dict[str, np.ndarray]:
    """lmerTest's type III hypothesis matrix of each fixed-effects term (eq. 39).

    Each term's contrasts are those of its indicator (full dummy) coding,
    made orthogonal, in the space of the indicator-coded parameters, to the
    contrasts of every term that contains it (higher-order terms first).
    With at most one term or one column, the sequential hypotheses are used,
    as lmerTest does.  Rows that vanish are dropped.
    """
    design = _Design(fit)
    if fit.p <= 1 or len(design.terms) <= 1:
        return _type1(fit, design)
    rd_keys = [(-1, ())] if design.has_intercept else []
    for t in range(len(design.terms)):
        if not design.columns[t]:
            continue
        combos = itertools.product(*(design.levels(v) for v in design.factors(t)))
        rd_keys += [(t, tuple(c)) for c in combos]
    L = _zapsmall(_redundant_coefficients(design, rd_keys, fit.p).T)

    variables = [set(v) for v in design.terms]
    numerics = [set(design.numerics(t)) for t in range(len(design.terms))]
    for t in sorted(range(len(design.terms)), key=lambda t: -len(design.terms[t])):
        containers = [u for u in range(len(design.terms))
                      if variables[t] < variables[u] and numerics[t] == numerics[u]]
        cols = design.columns[t]
        basis = [j for u in containers for j in design.columns[u]]
        if basis and cols:
            coef = np.linalg.lstsq(L[:, basis], L[:, cols], rcond=None)[0]
            L[:, cols] = _zapsmall(L[:, cols] - L[:, basis] @ coef)

    rows = [rd_keys.index(key) for key in design.keys]
    selected = L[rows]
    out = {}
    for label, cols in zip(design.labels, design.columns):
        h = selected[:, cols].T
        out[label] = h[np.abs(h).sum(axis=1) > 1e-8]
    return out
