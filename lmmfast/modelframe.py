"""The model frame: the columns a formula uses, validated, with missing rows dropped.

As R's ``model.frame`` does for lme4: every variable the formula, the
weights and the offset refer to is looked up, rows with a missing value in
any of them are dropped (``na.omit``) and counted, and every categorical
column becomes a pandas Categorical with R's level order (the category
order of a Categorical; sorted unique values otherwise; unused levels
dropped).  The caller's DataFrame is never modified.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import DataError, FormulaError, MissingValuesWarning
from .formula import ParsedFormula
from .materialize import identifiers, required_variables

__all__ = ["ModelFrame", "model_frame", "as_factor"]


@dataclass
class ModelFrame:
    """The rows and columns a model uses, after missing values are dropped."""

    data: pd.DataFrame          # only the used columns, complete rows, factors coded
    weights: np.ndarray | None  # prior weights of the kept rows
    offset: np.ndarray | None   # offset of the kept rows
    n_dropped: int              # rows dropped for missing values
    row_index: pd.Index         # the kept rows' labels in the caller's frame
    na_columns: tuple[str, ...]  # columns in which missing values were found


def _variables(expr: str, what: str) -> frozenset[str]:
    try:
        return required_variables(expr)
    except FormulaError as exc:
        raise FormulaError(f"cannot parse {what}: {exc}") from None


def as_factor(col: pd.Series) -> pd.Categorical:
    """A column as an R-style factor: category order kept, else sorted unique values.

    Unused categories are dropped, as ``factor()`` does.  Integer-valued
    columns sort numerically; labels are strings.
    """
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        cats = col.cat.categories
        used = np.bincount(codes[codes >= 0], minlength=len(cats)) > 0
        labels = [str(c) for c in cats]
        if used.all():
            if not col.cat.ordered and list(cats) == labels:   # already an R-style factor
                return col.array
            return pd.Categorical.from_codes(codes, categories=labels, validate=False)
        remap = np.cumsum(used) - 1
        new_codes = np.where(codes >= 0, remap[codes], -1)
        return pd.Categorical.from_codes(new_codes, validate=False,
                                         categories=[lab for lab, u in zip(labels, used) if u])
    values = col.to_numpy()
    if col.dtype.kind == "b":
        return pd.Categorical.from_codes(values.astype(np.int8), categories=["FALSE", "TRUE"])
    uniq = pd.unique(values)
    try:
        uniq = np.sort(uniq)
    except TypeError:
        uniq = np.array(sorted(uniq, key=str), dtype=object)
    if col.dtype.kind == "f" and np.all(np.mod(uniq, 1) == 0):
        labels = [str(int(u)) for u in uniq]
        mapping = dict(zip(uniq.tolist(), labels))
        return pd.Categorical([mapping[v] for v in values.tolist()], categories=labels)
    labels = [str(u) for u in uniq]
    if len(set(labels)) != len(labels):
        raise DataError(f"column {col.name!r} has distinct values with the same label")
    if col.dtype.kind in "biu" or col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
        codes = pd.Index(uniq).get_indexer(values)
        return pd.Categorical.from_codes(codes, categories=labels)
    return pd.Categorical([str(v) for v in values.tolist()], categories=labels)


def _is_categorical(col: pd.Series) -> bool:
    return (isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object
            or pd.api.types.is_string_dtype(col.dtype) or col.dtype.kind == "b")


def _column_or_array(value, data: pd.DataFrame, what: str) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in data.columns:
            raise DataError(f"{what} column {value!r} is not in the data")
        col = data[value]
    elif isinstance(value, pd.Series):
        if not value.index.equals(data.index):
            if len(value) != len(data) or not value.index.sort_values().equals(
                    data.index.sort_values()):
                raise DataError(f"{what} is a Series whose index does not match the "
                                "data's rows")
            value = value.reindex(data.index)   # matched by label, as pandas aligns
        col = value
    else:
        arr = np.asarray(value)
        if arr.ndim != 1:
            raise DataError(f"{what} must be one-dimensional, got shape {arr.shape}")
        if len(arr) != len(data):
            raise DataError(f"{what} has length {len(arr)}, the data has {len(data)} rows")
        col = pd.Series(arr)
    if not pd.api.types.is_numeric_dtype(col.dtype) or col.dtype.kind in "bc":
        raise DataError(f"{what} must be numeric, got dtype {col.dtype}")
    arr = np.asarray(col, dtype=np.float64)
    if np.isinf(arr).any():
        raise DataError(f"{what} has infinite values (first at row {int(np.flatnonzero(np.isinf(arr))[0])})")
    return arr


def used_columns(parsed: ParsedFormula, columns: pd.Index) -> dict[str, str]:
    """The columns a formula reads, each with the formula part that reads it.

    Raises for duplicated column names and for a column the formula names
    that ``columns`` lacks.
    """
    if columns.duplicated().any():
        dup = columns[columns.duplicated()][0]
        raise DataError(f"column {dup!r} appears more than once in the data")
    needed: dict[str, str] = {}
    for v in _variables(parsed.response, "the response"):
        needed.setdefault(v, "the response")
    for v in _variables(parsed.fixed, "the fixed-effects part"):
        needed.setdefault(v, f"the fixed-effects term {parsed.fixed!r}")
    exprs = [parsed.response, parsed.fixed] + [t.expr for t in parsed.random]
    for v in sorted(set().union(*(identifiers(e) for e in exprs)) & set(columns)):
        needed.setdefault(v, "a transform")   # arguments of stateful transforms
    for term in parsed.random:
        for v in _variables(term.expr, f"the random term {term.source}"):
            needed.setdefault(v, f"the random term {term.source}")
        for f in term.factors:
            needed.setdefault(f.strip("`"), f"the grouping of random term {term.source}")
    missing = [v for v in needed if v not in columns]
    if missing:
        v = missing[0]
        raise FormulaError(f"column {v!r} used in {needed[v]} is not in the data "
                           f"(columns: {', '.join(map(str, columns[:20]))})")
    return needed


def model_frame(parsed: ParsedFormula, data, weights=None, offset=None) -> ModelFrame:
    """Validate and subset ``data`` for ``parsed``; drop rows with missing values."""
    if not isinstance(data, pd.DataFrame):
        if isinstance(data, dict):
            data = pd.DataFrame(data)
        else:
            raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError("the data frame has no rows")
    needed = used_columns(parsed, data.columns)

    resp = data.get(parsed.response) if parsed.response in data.columns else None
    if resp is not None and (not pd.api.types.is_numeric_dtype(resp.dtype)
                             or resp.dtype.kind in "bc"):
        raise DataError(f"response {parsed.response!r} must be numeric, got dtype {resp.dtype}")
    w = _column_or_array(weights, data, "weights")
    off = _column_or_array(offset, data, "offset")
    frame = data[list(needed)].copy()

    bad = frame.isna().to_numpy()
    rows_bad = bad.any(axis=1)
    na_cols = [c for c, b in zip(frame.columns, bad.any(axis=0)) if b]
    for arr, name in ((w, "weights"), (off, "offset")):
        if arr is not None and np.isnan(arr).any():
            rows_bad |= np.isnan(arr)
            na_cols.append(name)
    n_dropped = int(rows_bad.sum())
    if n_dropped:
        keep = ~rows_bad
        if not keep.any():
            raise DataError(
                f"every row has a missing value (in {', '.join(map(repr, na_cols))})")
        frame = frame.loc[keep]
        w = None if w is None else w[keep]
        off = None if off is None else off[keep]
        warnings.warn(
            f"{n_dropped} row{'s' if n_dropped > 1 else ''} with missing values "
            f"dropped (in {', '.join(map(repr, na_cols))}); {len(frame)} rows remain",
            MissingValuesWarning, stacklevel=3)
    if w is not None:
        if (w < 0).any():
            i = int(np.flatnonzero(w < 0)[0])
            raise DataError(f"weights must be positive; row {i} has weight {w[i]}")
        if (w == 0).any():
            raise DataError(
                f"weights must be positive; {int((w == 0).sum())} rows have weight 0 "
                "(lme4's criterion is infinite for them): drop those rows instead")

    row_index = frame.index
    frame = frame.reset_index(drop=True)
    for name in frame.columns:
        if _is_categorical(frame[name]):
            frame[name] = as_factor(frame[name])
    return ModelFrame(frame, w, off, n_dropped, row_index, tuple(na_cols))
