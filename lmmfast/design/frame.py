"""The model frame: the columns a formula uses, validated, with missing rows dropped.

As R's ``model.frame`` does for lme4: every variable the formula, the
weights and the offset refer to is looked up, rows with a missing value in
any of them are dropped (``na.omit``) and counted, and every categorical
column becomes a factor with R's level order (the category order of a
Categorical; sorted unique values otherwise; unused levels dropped).  The
caller's DataFrame is never modified.  Besides a pandas DataFrame, the data
may be a dict of equal-length columns, a polars DataFrame or a pyarrow Table:
only the columns the model uses are converted to pandas.  An ordered
Categorical stays an ordered factor (coded by R's ``contr.poly``).  The
``offset(expr)`` terms of the formula are evaluated on the kept rows and
added to the ``offset`` argument, as lme4 does.

The frame is held as numpy arrays (``Columns``): each column is read out of
the caller's DataFrame once, and a pandas DataFrame is made from the arrays
only when formulaic has to interpret an expression.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from ..errors import DataError, FormulaError, MissingValuesWarning
from .factors import category_codes, _values, as_factor, factor_codes
from ..formula import ParsedFormula, response_code
from .materialize import design_matrix, identifiers, required_variables

__all__ = ["Columns", "Factor", "ModelFrame", "check_weights", "model_frame", "as_factor", "factor_codes",
           "formula_offset", "total_offset", "used_frame", "is_table", "as_pandas"]


@dataclass
class Factor:
    """A factor column: integer codes (0-based) and level labels in R's order."""

    codes: np.ndarray     # int64, one per row
    levels: list[str]
    ordered: bool = False  # an ordered factor (R's contr.poly contrasts)

    def categorical(self) -> pd.Categorical:
        return pd.Categorical.from_codes(self.codes, categories=self.levels,
                                         ordered=self.ordered, validate=False)


class Columns:
    """The model frame's columns as numpy arrays: numeric arrays and ``Factor`` s.

    Supports ``name in cols``, ``cols[name]``, ``len(cols)`` (rows) and
    ``cols.columns``; ``factor(name)`` codes any column as a factor (numeric
    grouping columns included); ``frame()`` is the pandas DataFrame of the
    same columns (factors as Categoricals) for formulaic.
    """

    def __init__(self, columns: dict, nrows: int):
        self._cols = columns
        self._factors: dict[str, Factor] = {}
        self.nrows = nrows

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def __contains__(self, name) -> bool:
        return name in self._cols

    def __getitem__(self, name):
        return self._cols[name]

    def __len__(self) -> int:
        return self.nrows

    def factor(self, name: str) -> Factor:
        """Column ``name`` as a factor (as R's ``factor()``: sorted unique values)."""
        col = self._cols[name]
        if isinstance(col, Factor):
            return col
        if name not in self._factors:
            codes, levels = factor_codes(col, name)
            self._factors[name] = Factor(codes, levels)
        return self._factors[name]

    def slice(self, start: int, stop: int) -> Columns:
        """Rows ``start:stop`` of the columns (views), factors coded as here."""
        def part(col):
            return Factor(col.codes[start:stop], col.levels, col.ordered) \
                if isinstance(col, Factor) else col[start:stop]
        out = Columns({name: part(col) for name, col in self._cols.items()},
                      len(range(start, min(stop, self.nrows))))
        out._factors = {name: part(fac) for name, fac in self._factors.items()}
        return out

    @cached_property
    def ones(self) -> np.ndarray:
        """A read-only column of ones (n x 1), shared by every intercept-only matrix
        (X, and z of ``(1 | g)`` terms) instead of one copy each."""
        ones = np.ones((self.nrows, 1))
        ones.flags.writeable = False
        return ones

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The columns as a pandas DataFrame (factors as Categoricals)."""
        return pd.DataFrame({name: (col.categorical() if isinstance(col, Factor) else col)
                             for name, col in self._cols.items()})


@dataclass
class ModelFrame:
    """The rows and columns a model uses, after missing values are dropped."""

    data: Columns               # only the used columns, complete rows, factors coded
    weights: np.ndarray | None  # prior weights of the kept rows
    offset: np.ndarray | None   # offset of the kept rows
    n_dropped: int              # rows dropped for missing values
    row_index: pd.Index         # the kept rows' labels in the caller's frame
    na_columns: tuple[str, ...]  # columns in which missing values were found
    keep: np.ndarray | None = None   # the complete rows (None: all rows)


def _variables(expr: str, what: str) -> frozenset[str]:
    try:
        return required_variables(expr)
    except FormulaError as exc:
        raise FormulaError(f"cannot parse {what}: {exc}") from None


def _column_array(data: pd.DataFrame, name: str):
    """Column ``name``'s values (numpy array, read-only, or a pandas array) without
    building a Series, which costs pandas ~10 us a column."""
    try:
        values = data._mgr.iget_values(data.columns.get_loc(name))
    except Exception:   # another pandas: the public way
        return data[name].array
    if isinstance(values, np.ndarray):
        values = values.view()
        values.flags.writeable = False
    return values


def is_categorical(col: pd.Series) -> bool:
    return (isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object
            or pd.api.types.is_string_dtype(col.dtype) or col.dtype.kind == "b")


def _missing(values) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
        return np.zeros(len(values), dtype=bool)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return np.isnan(values)
    return np.asarray(pd.isna(values), dtype=bool)


def check_weights(w: np.ndarray) -> None:
    """A DataError unless every prior weight (of the complete rows) is positive."""
    if len(w) and (w <= 0).any():
        if (w < 0).any():
            i = int(np.flatnonzero(w < 0)[0])
            raise DataError(f"weights must be positive; row {i} has weight {w[i]}")
        raise DataError(
            f"weights must be positive; {int((w == 0).sum())} rows have weight 0 "
            "(lme4's criterion is infinite for them): drop those rows instead")


def column_or_array(value, data: pd.DataFrame, what: str) -> np.ndarray | None:
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


_USED: dict = {}


def used_columns(parsed: ParsedFormula, columns: pd.Index) -> dict[str, str]:
    """The columns a formula reads, each with the formula part that reads it.

    Raises for duplicated column names and for a column the formula names
    that ``columns`` lacks.  Remembered per formula and columns object (an
    Index is immutable, and the cache holds it, so its id is not reused):
    reading the names of an Arrow-backed Index costs more than a small fit.
    """
    key = (parsed, id(columns))
    hit = _USED.get(key)
    if hit is not None and hit[0] is columns:
        return hit[1]
    if columns.duplicated().any():
        dup = columns[columns.duplicated()][0]
        raise DataError(f"column {dup!r} appears more than once in the data")
    needed: dict[str, str] = {}
    for v in _variables(f"I({response_code(parsed.response)})", "the response"):
        needed.setdefault(v, "the response")
    for v in _variables(parsed.fixed, "the fixed-effects part"):
        needed.setdefault(v, f"the fixed-effects term {parsed.fixed!r}")
    for expr in parsed.offsets:
        for v in _variables(f"I({expr})", f"offset({expr})"):
            needed.setdefault(v, f"the term offset({expr})")
    exprs = ([parsed.response, parsed.fixed] + list(parsed.offsets)
             + [t.expr for t in parsed.random])
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
    if len(_USED) > 256:
        _USED.clear()
    _USED[key] = (columns, needed)
    return needed


def _table_columns(data) -> list | None:
    """Column names of a polars DataFrame or a pyarrow Table; None for anything else.

    Recognised by module name and methods, so that neither library is imported.
    """
    module = type(data).__module__.split(".", 1)[0]
    if module == "polars" and hasattr(data, "to_pandas") and hasattr(data, "select"):
        return list(data.columns)
    if module == "pyarrow" and hasattr(data, "column_names") and hasattr(data, "to_pandas"):
        return list(data.column_names)
    return None


def is_table(data) -> bool:
    """Whether ``data`` is in-memory tabular data ``model_frame`` reads: a pandas or
    polars DataFrame, a pyarrow Table or a dict of columns."""
    return isinstance(data, (pd.DataFrame, dict)) or _table_columns(data) is not None


def _dict_frame(data: dict, names) -> pd.DataFrame:
    """The columns ``names`` of a dict of columns as a DataFrame; unequal lengths are
    an error naming them."""
    lengths = {k: len(v) for k, v in data.items() if np.ndim(v) > 0 and hasattr(v, "__len__")}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k!r}: {n}" for k, n in list(lengths.items())[:10])
        raise DataError(f"the data dict's columns have different lengths ({shown}); "
                        "every column needs one value per row")
    try:
        return pd.DataFrame({k: data[k] for k in names if k in data})
    except (ValueError, TypeError) as exc:
        raise DataError(f"cannot make a data frame of the data dict: {exc}") from None


def as_pandas(data, names=None) -> pd.DataFrame:
    """``data`` (pandas, dict, polars, pyarrow) as a pandas DataFrame; of a dict,
    polars DataFrame or pyarrow Table only the columns ``names`` (all if None)."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, dict):
        return _dict_frame(data, list(data) if names is None else names)
    table = _table_columns(data)
    if table is None:
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__} (a dict "
                        "of columns, a polars DataFrame or a pyarrow Table also do)")
    names = table if names is None else [n for n in names if n in set(table)]
    return data.select(names).to_pandas()


def _argument_columns(*args) -> list[str]:
    return [a for a in args if isinstance(a, str)]


def _check_not_time(name: str, col, part: str) -> None:
    """Dates, times and time differences are not numbers a formula can use: an error
    saying how to convert the column."""
    kind = getattr(col.dtype, "kind", None)
    if kind not in ("M", "m"):
        return
    if kind == "M":
        how = (f"e.g. to days since the first date: (data[{name!r}] - data[{name!r}].min()) "
               "/ pd.Timedelta(days=1)")
        what = "dates/times"
    else:
        how = f"e.g. to days: data[{name!r}] / pd.Timedelta(days=1)"
        what = "time differences"
    raise DataError(f"column {name!r} used in {part} holds {what} (dtype {col.dtype}); "
                    f"the model needs numbers: convert it, {how}")


def formula_offset(parsed: ParsedFormula, frame) -> np.ndarray | None:
    """The sum of the formula's ``offset(expr)`` terms on ``frame`` (None if none)."""
    total = None
    for expr in parsed.offsets:
        values, _ = design_matrix(f"0 + I({expr})", frame, f"the term offset({expr})")
        if values.shape[1] != 1:
            raise DataError(f"offset({expr}) must be one numeric column, it gives "
                            f"{values.shape[1]}")
        total = values[:, 0] if total is None else total + values[:, 0]
    return total


def total_offset(parsed: ParsedFormula, frame, offset: np.ndarray | None) -> np.ndarray | None:
    """The ``offset`` argument's values plus the formula's ``offset(expr)`` terms on
    the model-frame rows ``frame``, as lme4 sums them; a non-finite term is an error."""
    if not parsed.offsets:
        return offset
    terms = formula_offset(parsed, frame)
    if not np.isfinite(terms).all():
        i = int(np.flatnonzero(~np.isfinite(terms))[0])
        raise DataError(f"the offset terms {', '.join(f'offset({e})' for e in parsed.offsets)}"
                        f" give a non-finite value ({terms[i]}) at row {i}")
    return terms if offset is None else offset + terms


def used_frame(parsed: ParsedFormula, data, weights=None, offset=None) -> pd.DataFrame:
    """``data`` as a pandas DataFrame: a pandas frame itself; of a dict, polars
    DataFrame or pyarrow Table the columns the model uses (and the weights and
    offset columns named)."""
    if isinstance(data, pd.DataFrame):
        return data
    names = data.keys() if isinstance(data, dict) else _table_columns(data)
    if names is None:
        as_pandas(data)   # the error naming the type
    needed = used_columns(parsed, pd.Index(list(names)))
    return as_pandas(data, list(needed) + _argument_columns(weights, offset))


def model_frame(parsed: ParsedFormula, data, weights=None, offset=None, *,
                codings: dict | None = None, coded: bool = True,
                piece: bool = False) -> ModelFrame:
    """Validate and subset ``data`` for ``parsed``; drop rows with missing values.

    The factors get the levels of ``data``'s own rows, or with ``codings``
    (column -> ``spec.FactorCoding``, a ``DesignSpec``'s) those of the whole
    data of which ``data`` is a piece.  ``coded=False``: the columns as they
    are (no factor coding, no ``offset(expr)`` terms).  ``piece``: ``data`` is
    one piece of the data: no rows, or none complete, is no error and the rows
    dropped are counted, not warned about (the reduction warns once).
    """
    data = used_frame(parsed, data, weights, offset)
    if len(data) == 0 and not piece:
        raise DataError("the data frame has no rows")
    needed = used_columns(parsed, data.columns)
    columns = {name: _column_array(data, name) for name in needed}
    for name, col in columns.items():
        if not needed[name].startswith("the grouping"):
            _check_not_time(name, col, needed[name])
    resp = columns.get(parsed.response)
    if resp is not None and (not pd.api.types.is_numeric_dtype(resp.dtype)
                             or resp.dtype.kind in "bc"):
        raise DataError(f"response {parsed.response!r} must be numeric, got dtype {resp.dtype}")
    w = column_or_array(weights, data, "weights")
    off = column_or_array(offset, data, "offset")

    raw: dict = {}
    rows_bad = None
    na_cols = []
    for name, col in columns.items():
        if isinstance(col.dtype, pd.CategoricalDtype):
            values = col
            bad = np.asarray(values.codes) < 0
        else:
            values = _values(col)
            bad = _missing(values)
        raw[name] = values
        if bad.any():
            na_cols.append(name)
            rows_bad = bad if rows_bad is None else rows_bad | bad
    for arr, name in ((w, "weights"), (off, "offset")):
        if arr is not None and np.isnan(arr).any():
            rows_bad = np.isnan(arr) if rows_bad is None else rows_bad | np.isnan(arr)
            na_cols.append(name)
    n_dropped = 0 if rows_bad is None else int(rows_bad.sum())
    row_index = data.index
    keep = None
    if n_dropped:
        keep = ~rows_bad
        if not piece and not keep.any():
            raise DataError(
                f"every row has a missing value (in {', '.join(map(repr, na_cols))})")
        raw = {name: values[keep] for name, values in raw.items()}
        w = None if w is None else w[keep]
        off = None if off is None else off[keep]
        row_index = row_index[keep]
        if not piece:
            warnings.warn(
                f"{n_dropped} row{'s' if n_dropped > 1 else ''} with missing values "
                f"dropped (in {', '.join(map(repr, na_cols))}); {int(keep.sum())} rows remain",
                MissingValuesWarning, stacklevel=3)
    if w is not None:
        check_weights(w)
    if not coded:
        return ModelFrame(Columns(raw, len(row_index)), w, off, n_dropped, row_index,
                          tuple(na_cols), keep)

    cols: dict = {}
    factors: dict = {}
    for name, values in raw.items():
        coding = None if codings is None else codings.get(name)
        if coding is not None:   # the levels of the whole data
            fac = coding.factor(values)
            if isinstance(values, pd.Categorical) or values.dtype == object \
                    or values.dtype.kind == "b":
                cols[name] = fac
            else:                # a numeric grouping column stays numeric
                cols[name] = values
                factors[name] = fac
        elif isinstance(values, pd.Categorical):
            codes, labels, _ = category_codes(values)
            cols[name] = Factor(codes, labels, bool(values.ordered))
        elif values.dtype == object or values.dtype.kind == "b":
            cols[name] = Factor(*factor_codes(values, name))
        else:
            cols[name] = values
    frame = Columns(cols, len(row_index))
    frame._factors.update(factors)
    return ModelFrame(frame, w, total_offset(parsed, frame, off), n_dropped, row_index,
                      tuple(na_cols), keep)
