"""R-style factors: the level codes and labels R's ``factor()`` gives a column.

A Categorical keeps its category order (unused categories dropped, an
ordered one stays ordered); any other column gets its sorted unique values
(numbers numerically, labels as strings, booleans FALSE, TRUE).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError

__all__ = ["factor_codes", "as_factor"]


def factor_codes(values: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    """Codes and labels of a non-categorical column as R's ``factor()`` makes them.

    Levels are the sorted unique values (numbers numerically, labels as
    strings, integer-valued floats without ``.0``); booleans give FALSE, TRUE.
    """
    if values.dtype.kind == "b" or (values.dtype == object and len(values)
                                    and pd.api.types.infer_dtype(values) == "boolean"):
        return values.astype(bool).astype(np.int64), ["FALSE", "TRUE"]
    codes, uniq = pd.factorize(values, sort=False)
    uniq = np.asarray(uniq)
    try:
        order = np.argsort(uniq, kind="stable")
    except TypeError:
        order = np.array(sorted(range(len(uniq)), key=lambda i: str(uniq[i])), dtype=np.intp)
    uniq = uniq[order]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[codes]
    if uniq.dtype.kind == "f" and np.all(np.mod(uniq, 1) == 0):
        labels = [str(int(u)) for u in uniq.tolist()]
    else:
        labels = [str(u) for u in uniq.tolist()]
    if len(set(labels)) != len(labels):
        raise DataError(f"column {name!r} has distinct values with the same label")
    return codes, labels


def category_codes(cat) -> tuple[np.ndarray, list[str], bool]:
    """Codes and labels of a Categorical, unused categories dropped; and whether it
    is already an R-style factor (string categories, all used, unordered)."""
    codes = np.asarray(cat.codes).astype(np.int64)
    labels, strings = _category_labels(cat)
    used = np.bincount(codes[codes >= 0], minlength=len(labels)) > 0
    if used.all():
        return codes, labels, (not cat.ordered and strings)
    remap = np.cumsum(used) - 1
    codes = np.where(codes >= 0, remap[codes], -1)
    return codes, [lab for lab, u in zip(labels, used) if u], False


_LABELS: dict = {}


def _category_labels(cat) -> tuple[list[str], bool]:
    """A Categorical's categories as strings, and whether they all are strings.

    Remembered per dtype object (its categories are fixed, and the cache holds
    it, so its id is not reused): a categorical column's labels are read out
    of pyarrow once, not at every fit of a model to the same data.
    """
    dtype = cat.dtype
    hit = _LABELS.get(id(dtype))
    if hit is not None and hit[0] is dtype:
        return list(hit[1]), hit[2]
    # pyarrow-backed string categories: straight to Python strings (pandas would
    # iterate them one by one)
    chunked = getattr(getattr(cat.categories, "array", None), "_pa_array", None)
    raw = chunked.to_pylist() if hasattr(chunked, "to_pylist") \
        else cat.categories.to_numpy(dtype=object).tolist()
    labels = [c if type(c) is str else str(c) for c in raw]
    strings = all(type(c) is str for c in raw)
    if len(_LABELS) > 256:
        _LABELS.clear()
    _LABELS[id(dtype)] = (dtype, tuple(labels), strings)
    return labels, strings


def as_factor(col: pd.Series) -> pd.Categorical:
    """A column as an R-style factor: category order kept, else sorted unique values.

    Unused categories are dropped, as ``factor()`` does; an ordered one stays
    ordered.  Integer-valued
    columns sort numerically; labels are strings.
    """
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes, labels, plain = category_codes(col.array)
        return col.array if plain else pd.Categorical.from_codes(
            codes, categories=labels, ordered=bool(col.dtype.ordered), validate=False)
    codes, labels = factor_codes(_values(col), str(col.name))
    return pd.Categorical.from_codes(codes, categories=labels, validate=False)


def _values(col) -> np.ndarray:
    """A non-categorical column's values (a Series, numpy or pandas array) as a
    numpy array (object for strings, float with NaN for nullable numbers)."""
    if isinstance(col, np.ndarray):
        return col
    dtype = col.dtype
    if pd.api.types.is_string_dtype(dtype) and dtype != object:
        return col.to_numpy(dtype=object, na_value=None)
    if dtype.kind == "b" and not isinstance(dtype, np.dtype):   # nullable boolean
        if np.asarray(pd.isna(col)).any():
            return col.to_numpy(dtype=object, na_value=None)
        return col.to_numpy(dtype=bool)
    if dtype.kind in "iufb" and not isinstance(dtype, np.dtype):
        if np.asarray(pd.isna(col)).any():
            return col.to_numpy(dtype=np.float64, na_value=np.nan)
        return col.to_numpy(dtype=dtype.numpy_dtype)
    return col.to_numpy()
