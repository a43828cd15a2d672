"""Predictions from a fitted model, as lme4's ``predict.merMod``.

For row i of the data to predict (theory.md, eq. 63)

    yhat_i = x_i beta + sum over the selected terms t of z_{t,i} b_{t, c_t(i)} + o_i,

with beta-hat (eq. 21), the conditional modes b (eq. 22), x_i and z_{t,i} the
rows of X and of the term's small matrix (eq. 2) evaluated on the new data
with the fit's codings, and o_i the offset.

* ``newdata=None``: the rows of the fit (rows dropped for missing values are
  not included), so with ``re_form=None`` these are the fitted values.
* ``re_form``: ``None`` uses every random-effects term; ``"~0"``, ``"NA"``,
  ``NaN`` or ``pd.NA`` none (the population level); a formula such as
  ``"~ (1 | plate)"`` or ``"~ (1 | Subject)"`` the listed terms.  As in lme4,
  a term of ``re_form`` is matched to the model by its grouping factor and
  column names: ``(1 | Subject)`` in a model with ``(1 + Days | Subject)``
  uses the intercepts only.
* A level of a grouping factor that the fit has not seen is an error naming
  the factor and the level unless ``allow_new_levels=True``; then that term
  contributes 0 for the row (its population-level value, as lme4).
* A level of a factor in the fixed part (or among a random term's columns)
  that the fit has not seen is always an error.
* Missing values: rows of ``newdata`` with a missing value in a column the
  prediction uses get NaN (lme4's ``na.action = na.pass`` default).  A missing
  grouping value gives NaN as well, or, with ``allow_new_levels=True``, is a
  new level (contribution 0) as in lme4; lme4 without ``allow.new.levels``
  stops with an error instead.
* Offset: with ``newdata``, the ``offset`` argument (a column name of
  ``newdata``, one value per row, or a scalar); without it, the fit's offset
  column when the model records its name (``fit.offset_column``).  A model
  fitted with an offset given as values needs ``offset=``.  The formula's
  ``offset(expr)`` terms are evaluated on ``newdata`` and added.  (lme4 1.1-31
  re-evaluates offsets written as ``offset(x)`` in the formula on the new
  data, and drops the ``offset=`` argument of ``lmer``; the rule here is the
  former.)

* Standard errors: with ``se_fit=True`` or ``interval="confidence"`` a
  population-level prediction (``re_form="~0"``) comes with
  sqrt(x_i V(beta-hat) x_i^T) (eq. 90) and normal Wald limits, in a DataFrame
  with columns ``fit``, ``se.fit``, ``lwr``, ``upr``.

``newdata`` is never modified.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from formulaic import Formula
from scipy import stats

from .arguments import as_choice, as_flag, as_probability
from .errors import DataError, FormulaError, plain_message
from .formula import RandomTerm, parse_formula
from .design.materialize import (R_FUNCTIONS, design_matrix, expression_columns, lme4_column_name,
                          required_variables)
from .design.frame import as_pandas, formula_offset, is_table

__all__ = ["predict", "parse_re_form"]

_NA_FORMS = {"NA", "~NA", "~0", "0", "~-1", "~0+0", "NaN", "~NaN"}
_PLACEHOLDER = "\x00reference"


# ----------------------------------------------------------------- re_form
def _is_na_like(value) -> bool:
    if value is None or isinstance(value, str):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def parse_re_form(re_form) -> tuple[RandomTerm, ...] | None:
    """The random terms of ``re_form``: ``None`` for all of the model's, ``()`` for none."""
    if re_form is None:
        return None
    if _is_na_like(re_form):
        return ()
    if not isinstance(re_form, str):
        raise FormulaError(f"re_form must be None, NA or a formula string such as "
                           f"'~ (1 | g)', got {type(re_form).__name__}")
    text = re_form.strip()
    if "".join(text.split()) in _NA_FORMS:
        return ()
    if not text.startswith("~"):
        text = "~ " + text
    try:
        parsed = parse_formula("re_form_response__ " + text)
    except FormulaError as exc:
        raise FormulaError(f"cannot use re_form {re_form!r}: {exc}") from None
    return parsed.random


def _model_terms(fit) -> list[RandomTerm]:
    """The parsed random terms of the model's formula, aligned with ``fit.remats``."""
    parsed = parse_formula(fit.formula)
    nl = {r.group: r.nlevels for r in fit.remats}
    order = sorted(range(len(parsed.random)), key=lambda i: -nl[parsed.random[i].group])
    terms = [parsed.random[i] for i in order]
    if [t.group for t in terms] != [r.group for r in fit.remats]:
        raise RuntimeError("the model's random terms do not match its formula")
    return terms


def _term_signature(expr: str) -> frozenset:
    try:
        return frozenset(str(t) for t in Formula(expr))
    except Exception:
        return frozenset({"".join(expr.split())})


# ------------------------------------------------------------ factor labels
def _value_labels(col: pd.Series, known: set[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """R-style level labels of a column (as the model frame writes them) and its missing mask."""
    miss = col.isna().to_numpy()
    labels = np.full(len(col), None, dtype=object)
    if miss.all():
        return labels, miss
    values = col.to_numpy(dtype=object) if not isinstance(col.dtype, pd.CategoricalDtype) \
        else np.asarray(col.astype(object))
    codes, uniq = pd.factorize(pd.Series(values[~miss], dtype=object), sort=False)
    names = []
    for u in uniq:
        if isinstance(u, (bool, np.bool_)):
            cands = ["TRUE" if u else "FALSE"]
        elif isinstance(u, numbers.Real) and not isinstance(u, numbers.Integral) \
                and np.isfinite(u) and float(u).is_integer():
            cands = [str(int(u)), str(u)]
        else:
            cands = [str(u)]
        name = cands[0]
        if known is not None:
            for c in cands:
                if c in known:
                    name = c
                    break
        names.append(name)
    labels[~miss] = np.asarray(names, dtype=object)[codes]
    return labels, miss


def _name_parts(names: list[str]) -> list[str]:
    return [p for n in names for p in n.split(":")]


def _factor_levels(fit, var: str, names: list[str], col: pd.Series,
                   variables: set[str]) -> list[str] | None:
    """The fit's levels of ``var`` if it is a factor there, else None.

    Taken from ``fit.factor_levels`` or the categorical encoder state of
    ``fit.fixed_spec`` when the model records them; otherwise the non-reference
    levels are read off the fit's column names (``recipeB`` -> ``B``) and the
    reference level, which the names do not show, is the level of ``col`` not
    among them that sorts before them; any other level of ``col`` is then not
    a level of the fit.
    """
    known = getattr(fit, "factor_levels", None)
    if known is not None:
        lev = known.get(var)
        return None if lev is None else [str(x) for x in lev]
    spec = getattr(fit, "fixed_spec", None)
    if spec is not None:
        state = getattr(spec, "encoder_state", {}).get(var)
        if state is not None:
            if str(getattr(state[0], "value", state[0])) == "categorical":
                return [str(x) for x in state[1]["categories"]]
            return None
    parts = _name_parts(names)
    if var in parts:
        return None
    longer = [v for v in variables if v != var and v.startswith(var)]
    named: list[str] = []
    for p in parts:
        if p.startswith(var) and len(p) > len(var) \
                and not any(p.startswith(v) for v in longer):
            lev = p[len(var):]
            if lev not in named:
                named.append(lev)
    if not named:
        return None
    labels, miss = _value_labels(col, set(named))
    others = [x for x in pd.unique(labels[~miss]) if x not in named]
    refs = [x for x in others if _may_precede(x, named[0], col)]
    if len(refs) > 1:
        raise DataError(
            f"column {var!r} has levels {', '.join(map(repr, refs))} that are not levels "
            f"of the fit's columns ({', '.join(map(repr, named))}); at most one of them can "
            "be the reference level, which this model does not record")
    return [refs[0] if refs else _PLACEHOLDER] + named


def _may_precede(label: str, first_named: str, col: pd.Series) -> bool:
    """Whether ``label`` can be the reference level: R's first level comes before the others.

    The model frame orders levels by a Categorical's categories, else by sorted
    values (numerically for numeric columns).
    """
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in col.cat.categories]
        if first_named in cats and label in cats:
            return cats.index(label) < cats.index(first_named)
        return False
    if pd.api.types.is_numeric_dtype(col.dtype) and col.dtype.kind != "b":
        try:
            return float(label) < float(first_named)
        except ValueError:
            return False
    return label < first_named


def coded_frame(fit, newdata: pd.DataFrame, variables: set[str], names: list[str],
                 what: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The columns ``variables`` of ``newdata`` coded as in the fit, and the rows with a missing value."""
    n = len(newdata)
    frame = pd.DataFrame(index=pd.RangeIndex(n))
    miss = np.zeros(n, dtype=bool)
    for var in sorted(variables):
        if var not in newdata.columns:
            raise DataError(f"column {var!r} used in {what} is not in newdata")
        col = newdata[var].reset_index(drop=True)
        levels = _factor_levels(fit, var, names, col, variables)
        if levels is None:
            if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object \
                    or pd.api.types.is_string_dtype(col.dtype):
                try:
                    col = pd.to_numeric(col.astype(object))
                except (ValueError, TypeError):
                    raise DataError(f"column {var!r} used in {what} is numeric in the fit, "
                                    f"newdata has dtype {col.dtype}") from None
            m = col.isna().to_numpy()
            frame[var] = col.astype(np.float64) if col.dtype.kind in "biu" else col
        else:
            labels, m = _value_labels(col, set(levels))
            bad = pd.unique(np.asarray([x for x in labels[~m] if x not in set(levels)],
                                       dtype=object))
            if len(bad):
                shown = [lv for lv in levels if lv != _PLACEHOLDER]
                raise DataError(
                    f"column {var!r} ({what}) has level{'s' if len(bad) > 1 else ''} "
                    f"{', '.join(map(repr, bad[:10]))} not present in the fit "
                    f"(levels: {', '.join(map(repr, shown[:20]))})")
            labels[m] = levels[0]
            frame[var] = pd.Categorical(labels, categories=levels)
        miss |= m
    return frame, miss


def _columns(expr: str, frame: pd.DataFrame, what: str, spec=None) -> tuple[np.ndarray, list[str]]:
    """Model matrix of ``expr`` (or of a stored formulaic ModelSpec) with lme4's column names."""
    if spec is None:
        return design_matrix(expr, frame, what)
    try:
        mm = spec.get_model_matrix(frame, na_action="ignore", context=R_FUNCTIONS)
    except Exception as exc:
        raise FormulaError(f"cannot evaluate {what} on newdata: {plain_message(exc)}") from None
    x = np.asarray(mm, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] != len(frame):
        x = np.broadcast_to(x[:1], (len(frame), x.shape[1])).copy()
    return x, [lme4_column_name(c) for c in mm.columns]


def _select(x: np.ndarray, names: list[str], wanted: list[str], what: str) -> np.ndarray:
    pos = {nm: j for j, nm in enumerate(names)}
    missing = [w for w in wanted if w not in pos]
    if missing:
        raise DataError(f"{what}: newdata gives no column {', '.join(map(repr, missing))} "
                        f"(it gives {', '.join(map(repr, names))})")
    return x[:, [pos[w] for w in wanted]]


# ----------------------------------------------------------------- offsets
def _offset_values(fit, newdata: pd.DataFrame, offset) -> np.ndarray | float:
    n = len(newdata)
    if offset is None:
        name = getattr(fit, "offset_column", None)
        if isinstance(name, str):
            offset = name
        elif getattr(fit, "offset_given", True) and fit.offset is not None:
            raise DataError("the model was fitted with an offset whose column it does not "
                            "record: give the offset for newdata with offset= (a column "
                            "name of newdata or one value per row)")
        else:
            return 0.0
    if isinstance(offset, str):
        if offset not in newdata.columns:
            raise DataError(f"offset column {offset!r} is not in newdata")
        vals = newdata[offset]
    elif np.ndim(offset) == 0:
        return float(offset)
    else:
        vals = offset
    arr = np.asarray(pd.Series(np.asarray(vals).ravel()) if not isinstance(vals, pd.Series)
                     else vals, dtype=np.float64).ravel()
    if arr.shape != (n,):
        raise DataError(f"offset has {arr.size} values, newdata has {n} rows")
    return arr


def _formula_offset(parsed, newdata: pd.DataFrame) -> np.ndarray | float:
    """The formula's ``offset(expr)`` terms evaluated on ``newdata`` (0 if none)."""
    if not parsed.offsets:
        return 0.0
    names = set().union(*(required_variables(f"I({e})") for e in parsed.offsets))
    missing = sorted(names - set(newdata.columns))
    if missing:
        raise DataError(f"column {missing[0]!r} used in the formula's offset term is not "
                        "in newdata")
    return formula_offset(parsed, newdata[sorted(names)].reset_index(drop=True))


# ---------------------------------------------------------- random effects
def _group_ranef(fit) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Conditional modes per grouping factor: (levels x columns) and the column names."""
    return {g: (df.to_numpy(), list(df.columns)) for g, df in fit.ranef().items()}


def _group_codes(fit, term: RandomTerm, newdata: pd.DataFrame) -> np.ndarray:
    """Level index of each row in the fit's levels; -1 for a new level, -2 for a missing value."""
    remat = next(r for r in fit.remats if r.group == term.group)
    index = {lev: j for j, lev in enumerate(remat.levels)}
    nf = len(term.factors)
    comps: list[set[str]] = [set() for _ in range(nf)]
    for lev in remat.levels:
        parts = lev.split(":")
        if len(parts) == nf:
            for c, p in zip(comps, parts):
                c.add(p)
    n = len(newdata)
    miss = np.zeros(n, dtype=bool)
    labels = None
    for f, known in zip(term.factors, comps):
        name = f.strip("`")
        if name not in newdata.columns:
            raise DataError(f"grouping factor {name!r} of random term {term.source} "
                            "is not in newdata")
        lab, m = _value_labels(newdata[name].reset_index(drop=True), known or None)
        miss |= m
        lab = np.where(m, "", lab).astype(object)
        labels = lab if labels is None else np.asarray(
            [a + ":" + b for a, b in zip(labels, lab)], dtype=object)
    codes = np.array(pd.Series(labels, dtype=object).map(index).fillna(-1), dtype=np.int64)
    codes[miss] = -2
    return codes


def _new_level_check(fit, term: RandomTerm, newdata, codes: np.ndarray,
                     allow_new_levels: bool) -> None:
    if allow_new_levels or not (codes == -1).any():
        return
    rows = np.flatnonzero(codes == -1)
    vals = []
    for i in rows:
        parts = [str(newdata[f.strip("`")].iloc[i]) for f in term.factors]
        v = ":".join(parts)
        if v not in vals:
            vals.append(v)
            if len(vals) > 10:
                break
    shown = ", ".join(map(repr, vals[:10])) + (", ..." if len(vals) > 10 else "")
    raise DataError(f"new level{'s' if len(vals) > 1 else ''} of grouping factor "
                    f"{term.group!r} in newdata: {shown} (use allow_new_levels=True for "
                    "population-level predictions of that term)")


def _selected_terms(fit, re_form) -> list[tuple[RandomTerm, list[str] | None, int | None]]:
    """(term, column names or None if to be found from data, model remat index or None)."""
    wanted = parse_re_form(re_form)
    model_terms = _model_terms(fit)
    if wanted is None:
        return [(t, list(r.cnames), i) for i, (t, r) in enumerate(zip(model_terms, fit.remats))]
    groups = {r.group for r in fit.remats}
    out = []
    for t in wanted:
        if t.group not in groups:
            raise FormulaError(f"grouping factor {t.group!r} of re_form term {t.source} is not "
                               f"a grouping factor of the model ({', '.join(sorted(groups))})")
        match = None
        for i, (mt, r) in enumerate(zip(model_terms, fit.remats)):
            if mt.factors == t.factors and _term_signature(mt.expr) == _term_signature(t.expr):
                match = i
                break
        if match is not None:
            out.append((t, list(fit.remats[match].cnames), match))
        else:
            out.append((t, None, None))
    return out


def _check_columns(group: str, cnames: list[str], have: list[str], source: str) -> None:
    missing = [c for c in cnames if c not in have]
    if missing:
        raise FormulaError(f"re_form term {source} has column{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(map(repr, missing))} that the model's random effects "
                           f"for {group!r} do not have ({', '.join(map(repr, have))})")


def _ranef_on_fit_rows(fit, terms, ranef) -> np.ndarray:
    """sum of z_{t,i} b_{t,c_t(i)} over the selected terms, on the fit's own rows."""
    total = np.zeros(fit.nobs)
    for term, cnames, idx in terms:
        group_remats = [r for r in fit.remats if r.group == term.group]
        b, have = ranef[term.group]
        z_all = np.hstack([r.z for r in group_remats])
        names_all = [c for r in group_remats for c in r.cnames]
        if cnames is None:
            variables = set(required_variables(term.expr))
            surrogate = pd.DataFrame({v: np.ones(2) for v in variables}, index=pd.RangeIndex(2))
            _, cnames = _columns(term.expr, surrogate, f"the random term {term.source}")
            if any(c not in names_all for c in cnames):
                raise FormulaError(
                    f"cannot tell the columns of re_form term {term.source} without data: "
                    "give newdata (or use the model's own terms)")
        _check_columns(term.group, cnames, have, term.source)
        pos = [names_all.index(c) for c in cnames]
        cols = [have.index(c) for c in cnames]
        refs = group_remats[0].refs
        total += np.einsum("ij,ij->i", z_all[:, pos], b[refs][:, cols])
    return total


# ------------------------------------------------------------------ predict
def predict(fit, newdata=None, re_form=None, allow_new_levels: bool = False,
            offset=None, se_fit: bool = False, interval=None, level: float = 0.95):
    """Predictions as lme4's ``predict(fit, newdata, re.form, allow.new.levels)`` (eq. 63).

    Parameters
    ----------
    fit : LinearMixedModel or GeneralizedLinearMixedModel
        A fitted model (for a GLMM, predictions on the link scale).
    newdata : pandas.DataFrame or dict, optional
        Rows to predict; ``None`` for the rows of the fit.  Never modified.
    re_form : None, NA-like or str
        Random terms to include: all (``None``), none (``"~0"``, ``"NA"``,
        ``NaN``, ``pd.NA``), or a formula listing some, e.g. ``"~ (1 | g)"``.
    allow_new_levels : bool
        Predict rows whose grouping level the fit has not seen (and rows with
        a missing grouping value) at the population level of that term.
    offset : str, array-like or float, optional
        Offset for ``newdata`` (a column name, one value per row or a scalar).
    se_fit : bool
        Also return the standard error of each population-level prediction,
        sqrt(x_i V(beta-hat) x_i^T) (eq. 90); needs ``re_form="~0"`` (or NA).
    interval : None or "confidence"
        Add Wald limits ``lwr``, ``upr``: prediction -/+ z_{(1+level)/2} se.fit.
    level : float
        Confidence level of ``interval``.

    Returns
    -------
    numpy.ndarray or pandas.DataFrame
        One prediction per row (NaN where a value the prediction needs is
        missing); with ``se_fit`` or ``interval``, a DataFrame with columns
        ``fit``, ``se.fit`` (if ``se_fit``), ``lwr``, ``upr`` (if ``interval``)
        and the rows of ``newdata`` (or of the fit) as index.
    """
    fit._require_fit()
    if se_fit or interval is not None:
        return _with_uncertainty(fit, newdata, re_form, offset, se_fit, interval, level)
    beta = fit.fixef.to_numpy(dtype=np.float64)
    terms = _selected_terms(fit, re_form)

    if newdata is None:
        if fit.x is None:
            raise DataError("this model was built from cross-products and has no rows of "
                            "its own: give newdata")
        if offset is not None:
            raise DataError("offset= applies to newdata; the fit's rows use the fit's offset")
        if re_form is None:
            return np.array(fit.fitted, dtype=np.float64)
        pred = fit.x @ beta
        if fit.offset is not None:
            pred = pred + fit.offset
        if terms:
            pred = pred + _ranef_on_fit_rows(fit, terms, _group_ranef(fit))
        return pred

    newdata = _as_frame(newdata)
    n = len(newdata)
    parsed = parse_formula(fit.formula)
    x, miss = _fixed_rows(fit, newdata, parsed)
    pred = x @ beta + _offset_values(fit, newdata, offset) + _formula_offset(parsed, newdata)

    # random part
    ranef = _group_ranef(fit) if terms else {}
    for term, cnames, idx in terms:
        b, have = ranef[term.group]
        group_names = [c for r in fit.remats if r.group == term.group for c in r.cnames]
        re_vars = expression_columns(term.expr, newdata.columns)
        zframe, zmiss = coded_frame(fit, newdata, re_vars, group_names,
                                     f"the random term {term.source}")
        z, znames = _columns(term.expr, zframe, f"the random term {term.source}",
                             None if idx is None else getattr(fit.remats[idx], "spec", None))
        if cnames is None:
            cnames = znames
        _check_columns(term.group, cnames, have, term.source)
        z = _select(z, znames, cnames, f"random term {term.source}")
        codes = _group_codes(fit, term, newdata)
        _new_level_check(fit, term, newdata, codes, allow_new_levels)
        cols = [have.index(c) for c in cnames]
        known = codes >= 0
        contrib = np.zeros(n)
        contrib[known] = np.einsum("ij,ij->i", z[known], b[codes[known]][:, cols])
        if not allow_new_levels:
            contrib[codes == -2] = np.nan
        contrib[zmiss] = np.nan
        pred = pred + contrib
    pred = np.asarray(pred, dtype=np.float64)
    pred[miss] = np.nan
    return pred


def _as_frame(newdata) -> pd.DataFrame:
    """``newdata`` as a pandas DataFrame (dicts, polars and Arrow tables converted)."""
    if is_table(newdata) and not isinstance(newdata, pd.DataFrame):   # dict, polars, pyarrow
        newdata = as_pandas(newdata)
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, got {type(newdata).__name__}")
    return newdata


def _fixed_rows(fit, newdata: pd.DataFrame, parsed) -> tuple[np.ndarray, np.ndarray]:
    """X of ``newdata`` with the fit's codings, columns in fixef order, and its rows with a missing value."""
    names_x = list(fit.fixef_names) + list(fit.dropped_columns)
    fixed_vars = expression_columns(parsed.fixed, newdata.columns)
    frame, miss = coded_frame(fit, newdata, fixed_vars, names_x, "the fixed-effects part")
    x, xnames = _columns(parsed.fixed, frame, f"the fixed-effects part {parsed.fixed!r}",
                         getattr(fit, "fixed_spec", None))
    return _select(x, xnames, list(fit.fixef_names), "fixed-effects columns"), miss


# ----------------------------------------------------- standard errors
def _with_uncertainty(fit, newdata, re_form, offset, se_fit, interval, level) -> pd.DataFrame:
    """Population-level predictions with sqrt(x_i V x_i^T) (eq. 90) and Wald limits."""
    se_fit = as_flag(se_fit, "se_fit")
    if interval is not None:
        interval = as_choice(interval, "interval", ("confidence",))
    level = as_probability(level, "level")
    if parse_re_form(re_form) != ():
        raise DataError("se_fit and interval are available for population-level predictions "
                        "only: give re_form='~0' (or NA); the uncertainty of the conditional "
                        f"modes is not included (got re_form={re_form!r})")
    if newdata is None:
        pred = predict(fit, None, re_form=re_form, offset=offset)
        x, index = fit.x, pd.RangeIndex(fit.nobs)
    else:
        newdata = _as_frame(newdata)
        pred = predict(fit, newdata, re_form=re_form, offset=offset)
        x, miss = _fixed_rows(fit, newdata, parse_formula(fit.formula))
        x = np.array(x, dtype=np.float64)
        x[miss] = np.nan
        index = newdata.index.copy()
    se = np.sqrt(np.einsum("ij,jk,ik->i", x, fit.vcov.to_numpy(), x))
    se[np.isnan(pred)] = np.nan
    out = {"fit": pred}
    if se_fit:
        out["se.fit"] = se
    if interval is not None:
        z = stats.norm.ppf(0.5 + level / 2.0)
        out["lwr"] = pred - z * se
        out["upr"] = pred + z * se
    return pd.DataFrame(out, index=index)
