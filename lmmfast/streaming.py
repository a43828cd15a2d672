"""Reduction of data in pieces to the cross-products A (theory.md, eq. 12).

A model needs only A, the number of rows, the factor levels and a few sums;
the rows themselves can be visited one piece at a time.  ``DesignSpec`` holds
what is global to a data set (the formula, the used columns and the levels of
every factor) and turns any piece of rows into the model-frame rows, X, y and
the random-effects terms exactly as the in-memory path does for the whole
frame (ordered factors by ``contr.poly``, the formula's ``offset(expr)`` terms
added to the offset).  What depends on all rows at once (``scale``, ``poly``,
``factor()`` of a numeric column, ...) is refused with a FormulaError that
points to the in-memory path.  A reduction visits the pieces a few times:

1. levels: the levels of every factor (grouping factors and factors of the
   fixed part) among the complete rows, and the rows with missing values;
2. groups (only for interaction groupings ``a:b``): the combinations present;
3. pattern (only when a block next to the first term may be sparse): the
   level pairs present, which fix the sparse layout;
4. cross-products: each piece's contribution to A in double-double
   (``_crossprod``), merged and rounded once.

Pieces are row chunks of a pandas frame (``ChunkReducer``, here) or the
partitions of a Dask frame (``lmmfast.distributed``); both give A to the last
bit, so a fit from either equals the in-memory fit.  The rank check of X
works from the Gram matrix (``independent_columns_gram``).

``StreamedLinearMixedModel`` is the model of a pandas frame reduced in row
chunks (used automatically above ``STREAM_MIN_ROWS`` rows): X, Z and y are
never held for all rows.  Every parameter-level result is as in memory;
``fitted``, ``residuals`` and ``predict()`` are recomputed chunk by chunk from
the caller's frame (which must not change in between); ``x``, ``y`` and the
terms' ``refs``/``z`` are not kept, so ``refit``, ``simulate``,
``bootstrap`` and Kenward-Roger's df (which need them) raise a DataError
saying what to do instead (``require_rows``).  Satterthwaite's t and F tests,
Wald and profile intervals need only A.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property, partial, reduce

import numpy as np
import pandas as pd
from formulaic.transforms import TRANSFORMS

from . import _crossprod, blocks
from .arguments import as_flag
from .errors import DataError, FormulaError, MissingValuesWarning, RankDeficiencyWarning
from .formula import R_ALIASES, ParsedFormula, parse_formula, response_code
from .materialize import design_matrix
from .model import STREAM_MIN_ROWS, LinearMixedModel
from .materialize import R_FUNCTIONS
from .modelframe import (column_or_array, is_categorical, as_factor, is_table, total_offset,
                         used_columns, used_frame)
from .remat import ReMat
from .summary import data_name
from .xymat import RANK_TOL, response_vector

__all__ = ["STREAM_MIN_ROWS", "CHUNK_ROWS", "DesignSpec", "ChunkReducer",
           "StreamedLinearMixedModel", "independent_columns_gram", "reduce_design",
           "require_rows"]

CHUNK_ROWS = 262_144          # rows per chunk (and per sub-chunk of a partition)

#: transforms whose values depend on all rows (centre, scale, knots; lag shifts rows)
_STATEFUL = sorted({name for name, fn in TRANSFORMS.items()
                    if getattr(fn, "__is_stateful_transform__", False)} | {"lag"})
#: R's factor() and as.factor(): their levels are those of the rows at hand
_FACTOR_CALLS = sorted(name for name, fn in R_FUNCTIONS.items()
                       if getattr(fn, "__is_stateful_transform__", False))
_R_NAME = {alias: name for name, alias in R_ALIASES.items()}
IN_MEMORY = ("fit the data in memory instead (LinearMixedModel(..., streaming=False); "
             "a Dask frame: lmmfast.lmer(formula, ddf.compute()))")
_CALL = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*)\s*\(")


# ------------------------------------------------------------------ levels
@dataclass
class FactorCoding:
    """The levels of one factor column and the coding of its values.

    ``kind`` is ``"category"`` (a Categorical whose categories keep their
    order, unused ones dropped), ``"bool"`` (FALSE, TRUE) or ``"values"``
    (sorted unique values, ``values`` in level order), as ``as_factor``.
    ``ordered``: an ordered Categorical, coded by R's ``contr.poly`` as in memory.
    """

    name: str
    kind: str
    labels: list[str]
    values: np.ndarray | None = None
    ordered: bool = False

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_index", None)
        state.pop("_label_index", None)
        return state

    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.values)

    @cached_property
    def _label_index(self) -> pd.Index:
        return pd.Index(self.labels)

    def codes(self, col: pd.Series) -> np.ndarray:
        """Level codes (int64) of a column without missing values."""
        if self.kind == "bool":
            codes = col.to_numpy().astype(np.int64)
        elif self.kind == "category" and isinstance(col.dtype, pd.CategoricalDtype):
            cats = col.cat.categories
            remap = self._label_index.get_indexer([str(c) for c in cats])
            codes = remap[col.cat.codes.to_numpy()]
        else:
            codes = self._index.get_indexer(col.to_numpy())
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes) and codes.min() < 0:
            bad = col.to_numpy()[codes < 0][0]
            raise DataError(f"column {self.name!r} has a value ({bad!r}) that was not among "
                            "its levels when the data were first read: did the data change?")
        return codes

    def categorical(self, col: pd.Series) -> pd.Categorical:
        """The column as the model frame's factor (R's levels of the whole data)."""
        return pd.Categorical.from_codes(self.codes(col), categories=self.labels,
                                         ordered=self.ordered, validate=False)


def _piece_levels_of(col: pd.Series):
    """What a piece knows about a factor column's levels (merged by ``_merge_level``)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        used = np.bincount(codes[codes >= 0], minlength=len(col.cat.categories)) > 0
        return ("category", list(col.cat.categories), used)
    if col.dtype.kind == "b":
        return ("bool", None, None)
    return ("values", pd.unique(col.to_numpy()), None)


def _as_values(level):
    kind, cats, used = level
    if kind == "category":
        return ("values", np.asarray([c for c, u in zip(cats, used) if u], dtype=object), None)
    return level


def _merge_level(a, b):
    if a[0] == "category" and b[0] == "category" and a[1] == b[1]:
        return ("category", a[1], a[2] | b[2])
    if a[0] == "bool" and b[0] == "bool":
        return a
    a, b = _as_values(a), _as_values(b)
    return ("values", pd.unique(np.concatenate([np.asarray(a[1]), np.asarray(b[1])])), None)


def _coding(name: str, level, dtype) -> FactorCoding:
    kind, payload, used = level
    ordered = isinstance(dtype, pd.CategoricalDtype) and bool(dtype.ordered)
    if kind == "bool":
        return FactorCoding(name, "bool", ["FALSE", "TRUE"])
    if kind == "category":
        return FactorCoding(name, "category",
                            [str(c) for c, u in zip(payload, used) if u], ordered=ordered)
    if ordered:
        raise DataError(f"the ordered factor column {name!r} has different categories in "
                        "different pieces of the data, so its level order is not known: give "
                        "every piece the same categories (e.g. astype with one CategoricalDtype)")
    uniq = np.asarray(payload)
    try:
        series = pd.Series(uniq, dtype=dtype, name=name)
    except (TypeError, ValueError):
        series = pd.Series(uniq, name=name)
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    cat = as_factor(series)
    ordered = np.empty(len(cat.categories), dtype=uniq.dtype)
    ordered[np.asarray(cat.codes)] = uniq
    return FactorCoding(name, "values", [str(c) for c in cat.categories], ordered)


# --------------------------------------------------------------- the design
@dataclass
class Rows:
    """The model-frame rows of one piece: complete rows, factors coded."""

    frame: pd.DataFrame
    weights: np.ndarray | None
    offset: np.ndarray | None    # the offset; coded rows: plus the formula's offset terms
    index: pd.Index              # the rows' labels in the piece
    keep: np.ndarray | None      # the piece's complete rows (None: all of them)
    n_bad: int                   # rows dropped for missing values
    na_columns: list[str]


@dataclass
class DesignSpec:
    """Everything global about a model's data: formula, columns, levels, layout.

    Built on the client from the column types alone (``from_meta``), then
    completed by the passes of a reduction; it is small (levels and the sparse
    pattern) and is sent to wherever the pieces are.
    """

    formula: str
    parsed: ParsedFormula
    columns: list[str]                    # the columns the model uses (sorted)
    frame_factors: list[str]              # columns the model frame codes as factors
    level_columns: list[str]              # columns whose levels are needed
    dtypes: dict                          # dtype of each used column
    weights_column: str | None = None
    offset_column: str | None = None
    has_weights: bool = False
    has_offset: bool = False
    codings: dict = field(default_factory=dict)   # column -> FactorCoding
    present: dict = field(default_factory=dict)   # term -> sorted combination codes
    x_names: list[str] | None = None
    cnames: list[list[str]] | None = None   # each term's column names
    fixed_spec: object = None             # formulaic's ModelSpecs of X and of each term's z
    term_specs: list | None = None        # (None where the columns were built without one)
    k: list[int] | None = None
    nlevels: list[int] | None = None
    order: list[int] | None = None        # lme4's term order (indices into parsed.random)
    internal: list[int] | None = None     # internal order (indices into parsed.random)
    candidates: list[int] = field(default_factory=list)   # internal s of possibly sparse (s, 0)
    patterns: dict = field(default_factory=dict)
    layout: blocks.BlockLayout | None = None
    chunk_rows: int = CHUNK_ROWS

    # ---------------------------------------------------------- from types
    @classmethod
    def from_meta(cls, formula: str, meta: pd.DataFrame, weights=None, offset=None,
                  chunk_rows: int = CHUNK_ROWS) -> "DesignSpec":
        """The spec of ``formula`` for data with the columns and dtypes of ``meta``.

        ``weights``/``offset``: a column name, or anything else non-None for
        values supplied piece by piece.
        """
        parsed = parse_formula(formula)
        needed = used_columns(parsed, meta.columns)
        groups = [f.strip("`") for term in parsed.random for f in term.factors]
        columns = sorted(needed)
        frame_factors = [c for c in columns if is_categorical(meta[c])]
        level_columns = frame_factors + [g for g in dict.fromkeys(groups)
                                         if g not in frame_factors]
        _check_stateless(parsed, frame_factors)
        spec = cls(formula, parsed, columns, frame_factors, level_columns,
                   {c: meta[c].dtype for c in columns}, chunk_rows=chunk_rows)
        for value, what in ((weights, "weights"), (offset, "offset")):
            if value is None:
                continue
            if isinstance(value, str):
                column_or_array(value, meta, what)   # exists and is numeric
                setattr(spec, f"{what}_column", value)
            setattr(spec, f"has_{what}", True)
        return spec

    # ------------------------------------------------------------ one piece
    def rows(self, piece: pd.DataFrame, weights=None, offset=None, coded: bool = True) -> Rows:
        """The model-frame rows of ``piece`` (as ``model_frame`` on the whole data).

        ``coded``: factors coded with the levels of the whole data, and the
        formula's ``offset(expr)`` terms added to the offset; else the factor
        columns as they are and the offset argument alone.
        """
        w = column_or_array(self.weights_column or weights, piece, "weights") \
            if self.has_weights else None
        off = column_or_array(self.offset_column or offset, piece, "offset") \
            if self.has_offset else None
        sub = piece[self.columns]
        isna = sub.isna().to_numpy()
        bad = isna.any(axis=1)
        na_cols = [c for c, b in zip(self.columns, isna.any(axis=0)) if b]
        for arr, name in ((w, "weights"), (off, "offset")):
            if arr is not None and np.isnan(arr).any():
                bad |= np.isnan(arr)
                na_cols.append(name)
        n_bad = int(bad.sum())
        keep = None
        if n_bad:
            keep = ~bad
            sub = sub[keep]
            w = None if w is None else w[keep]
            off = None if off is None else off[keep]
        if w is not None and len(w) and (w <= 0).any():
            if (w < 0).any():
                i = int(np.flatnonzero(w < 0)[0])
                raise DataError(f"weights must be positive; row {i} has weight {w[i]}")
            raise DataError(
                f"weights must be positive; {int((w == 0).sum())} rows have weight 0 "
                "(lme4's criterion is infinite for them): drop those rows instead")
        index = sub.index
        frame = sub.reset_index(drop=True)
        if coded:
            for name in self.frame_factors:
                frame[name] = self.codings[name].categorical(frame[name])
            off = total_offset(self.parsed, frame, off)
        return Rows(frame, w, off, index, keep, n_bad, na_cols)

    def term_refs(self, frame: pd.DataFrame, i: int) -> np.ndarray:
        """Level codes of the rows in random term ``i`` (formula order)."""
        term = self.parsed.random[i]
        names = [f.strip("`") for f in term.factors]
        codes = [frame[n].cat.codes.to_numpy().astype(np.int64) if n in self.frame_factors
                 else self.codings[n].codes(frame[n]) for n in names]
        if len(codes) == 1:
            return np.ascontiguousarray(codes[0])
        combo = np.zeros(len(frame), dtype=np.int64)
        for n, c in zip(names, codes):
            combo = combo * len(self.codings[n].labels) + c
        present = self.present.get(i)
        if present is None:
            return combo
        refs = np.searchsorted(present, combo)
        if len(refs) and (refs.max() >= len(present) or (present[refs] != combo).any()):
            raise DataError(f"random term {term.source} has a combination of levels that "
                            "was not present when the data were first read: did the data change?")
        return refs.astype(np.int64)

    def response(self, frame: pd.DataFrame) -> np.ndarray:
        """y of the rows (as ``build_xymat``)."""
        return response_vector(self.parsed.response, frame)

    def fixed(self, frame: pd.DataFrame) -> np.ndarray:
        """X of the rows, every column (before the rank check)."""
        x, names = design_matrix(self.parsed.fixed, frame,
                                 f"the fixed-effects part {self.parsed.fixed!r}")
        if self.x_names is not None and names != self.x_names:
            raise DataError(f"the fixed-effects columns of a piece of the data ({names}) "
                            f"differ from those of the whole ({self.x_names})")
        if not np.isfinite(x).all():
            j = int(np.flatnonzero(~np.isfinite(x).all(axis=0))[0])
            raise DataError(f"fixed-effects column {names[j]!r} has non-finite values")
        return x

    def term_z(self, frame: pd.DataFrame, i: int) -> np.ndarray:
        term = self.parsed.random[i]
        z, _ = design_matrix(term.expr, frame, f"random term {term.source}")
        z = np.ascontiguousarray(z)
        if z.shape[1] == 0:
            raise FormulaError(f"random term {term.source} has no columns")
        if not np.isfinite(z).all():
            raise DataError(f"random term {term.source} has non-finite values in its columns")
        return z

    # ------------------------------------------------------ global structure
    def set_levels(self, merged: dict) -> None:
        self.codings = {c: _coding(c, merged["levels"][c], self.dtypes[c])
                        for c in self.level_columns}

    def set_structure(self, meta: pd.DataFrame) -> None:
        """X's columns, each term's k and levels, and the term orders."""
        rows = self.rows(meta.iloc[:0], np.zeros(0), np.zeros(0))
        _, self.x_names, self.fixed_spec = design_matrix(
            self.parsed.fixed, rows.frame, f"the fixed-effects part {self.parsed.fixed!r}",
            with_spec=True)
        terms = [design_matrix(t.expr, rows.frame, f"random term {t.source}", with_spec=True)
                 for t in self.parsed.random]
        self.cnames = [names for _, names, _ in terms]
        self.term_specs = [spec for _, _, spec in terms]
        self.k = [self.term_z(rows.frame, i).shape[1] for i in range(len(self.parsed.random))]
        self.nlevels = [len(self.present[i]) if i in self.present
                        else len(self.codings[t.factors[0].strip("`")].labels)
                        for i, t in enumerate(self.parsed.random)]
        T = len(self.parsed.random)
        self.order = sorted(range(T), key=lambda i: -self.nlevels[i])
        q = [self.nlevels[i] * self.k[i] for i in self.order]
        self.internal = [self.order[j] for j in sorted(range(T), key=lambda j: -q[j])]
        nl = [self.nlevels[i] for i in self.internal]
        self.candidates = [s for s in range(1, T) if nl[s] * nl[0] > blocks.SPARSE_MIN_SIZE]

    def set_patterns(self, keys: dict) -> None:
        nl = [self.nlevels[i] for i in self.internal]
        for s, kk in keys.items():
            cols, rows = np.divmod(np.asarray(kk, dtype=np.int64), nl[s])   # kk sorted, distinct
            colptr = np.zeros(nl[0] + 1, dtype=np.int64)
            np.cumsum(np.bincount(cols, minlength=nl[0]), out=colptr[1:])
            self.patterns[s] = (colptr, rows)

    def build_layout(self, p1: int | None = None) -> blocks.BlockLayout:
        T = len(self.internal)
        return blocks.BlockLayout.build(
            [None] * T, [self.nlevels[i] for i in self.internal],
            [self.k[i] for i in self.internal],
            len(self.x_names) + 1 if p1 is None else p1, self.patterns)

    def remats(self) -> list[ReMat]:
        """The terms in lme4's order, with their levels (no rows)."""
        out = []
        empty = np.zeros(0, dtype=np.int64)
        for i in self.order:
            term = self.parsed.random[i]
            out.append(ReMat(term.group, list(self.cnames[i]), empty, self.term_levels(i),
                             np.zeros((0, self.k[i])), term.source, self.term_specs[i]))
        return out

    def term_levels(self, i: int) -> list[str]:
        term = self.parsed.random[i]
        names = [f.strip("`") for f in term.factors]
        if len(names) == 1:
            return list(self.codings[names[0]].labels)
        cats = [self.codings[n].labels for n in names]
        labels = []
        for c in self.present[i].tolist():
            parts = []
            for lab in reversed(cats):
                c, r = divmod(c, len(lab))
                parts.append(lab[r])
            labels.append(":".join(reversed(parts)))
        return labels

    @property
    def factor_levels(self) -> dict[str, list[str]]:
        """The levels of the factor columns and of the grouping columns."""
        return {c: list(self.codings[c].labels) for c in self.level_columns}


def _check_stateless(parsed: ParsedFormula, factors: list[str]) -> None:
    """Transforms whose result depends on all rows (center, scale, poly, lag, ...),
    ``factor()``/``as.factor()`` and ``C()`` of a numeric column cannot be
    evaluated piece by piece: a FormulaError saying what to do instead."""
    parts = [(f"I({response_code(parsed.response)})", f"the response {parsed.response!r}"),
             (parsed.fixed, "the fixed-effects part")] + \
        [(f"I({e})", f"the term offset({e})") for e in parsed.offsets] + \
        [(t.expr, f"the random term {t.source}") for t in parsed.random]
    for expr, what in parts:
        for name in _CALL.findall(expr):
            if name in _STATEFUL:
                raise FormulaError(
                    f"{what} uses {name}(), whose value depends on all rows: it cannot be "
                    "evaluated on data in pieces (partitioned or streamed); add the "
                    f"transformed column to the data, or {IN_MEMORY}")
            if name in _FACTOR_CALLS:
                shown = _R_NAME.get(name, name)
                raise FormulaError(
                    f"{what} uses {shown}(), whose levels are those of the rows it sees: it "
                    "cannot be evaluated on data in pieces (partitioned or streamed); make the "
                    "column a pandas Categorical (its levels are then read from all rows), "
                    f"or {IN_MEMORY}")
        for arg in re.findall(r"(?<![\w.])C\(\s*([^,)]+)", expr):
            var = arg.strip().strip("`")
            if var not in factors:
                raise FormulaError(
                    f"{what} uses C({var}) of a numeric column: its levels would depend on "
                    "the piece of the data; make the column a categorical, or "
                    f"{IN_MEMORY}")


# ---------------------------------------------------------------- passes
def sorted_unique(values: np.ndarray, counts: np.ndarray | None = None):
    """The sorted distinct values (with their summed ``counts`` if given), by sorting.

    Sorting is much faster than ``numpy.unique``'s hash table for the int64
    keys here, and merging two sorted runs (``kind="stable"``) is linear.
    """
    order = None
    if counts is None:
        s = np.sort(values, kind="stable")
    else:
        order = np.argsort(values, kind="stable")
        s = values[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    if counts is None:
        return s[first]
    starts = np.flatnonzero(first)
    return s[starts], np.add.reduceat(counts[order], starts) if len(s) else counts[:0]


def piece_levels(spec: DesignSpec, piece: pd.DataFrame, weights=None, offset=None) -> dict:
    """Pass 1: rows, missing values and the levels of the factor columns."""
    rows = spec.rows(piece, weights, offset, coded=False)
    return {"n": len(rows.frame), "n_bad": rows.n_bad, "na": rows.na_columns,
            "levels": {c: _piece_levels_of(rows.frame[c]) for c in spec.level_columns}
            if len(rows.frame) else {}}


def merge_levels(a: dict, b: dict) -> dict:
    levels = dict(a["levels"])
    for c, lv in b["levels"].items():
        levels[c] = _merge_level(levels[c], lv) if c in levels else lv
    return {"n": a["n"] + b["n"], "n_bad": a["n_bad"] + b["n_bad"],
            "na": list(dict.fromkeys(a["na"] + b["na"])), "levels": levels}


def piece_groups(spec: DesignSpec, piece: pd.DataFrame, weights=None, offset=None) -> dict:
    """Pass 2: the level combinations present in each interaction grouping."""
    rows = spec.rows(piece, weights, offset)
    return {i: sorted_unique(spec.term_refs(rows.frame, i))
            for i, t in enumerate(spec.parsed.random) if len(t.factors) > 1}


def merge_sets(a: dict, b: dict) -> dict:
    return {i: sorted_unique(np.concatenate([a[i], b[i]])) for i in a}


def piece_pattern(spec: DesignSpec, piece: pd.DataFrame, weights=None, offset=None) -> dict:
    """Pass 3: the level pairs (s, 0) present, as keys ``refs_0 * nl_s + refs_s``."""
    rows = spec.rows(piece, weights, offset)
    out = {}
    ref0 = spec.term_refs(rows.frame, spec.internal[0])
    for s in spec.candidates:
        nl_s = spec.nlevels[spec.internal[s]]
        out[s] = sorted_unique(ref0 * nl_s + spec.term_refs(rows.frame, spec.internal[s]))
    return out


def new_partial(spec: DesignSpec) -> dict:
    p = len(spec.x_names)
    return {"acc": np.zeros((max(spec.layout.n_a, 1), 2)),
            "xtx": np.zeros((p * p, 2)) if spec.has_weights else None,
            "zz": np.zeros((sum(spec.k), 2)), "logw": np.zeros((1, 2)), "n": 0}


def piece_crossproducts(spec: DesignSpec, piece: pd.DataFrame, weights=None, offset=None,
                        out: dict | None = None) -> dict:
    """Pass 4: the piece's contribution to A (all X columns) in double-double.

    Also the unweighted X^T X when there are prior weights (for the rank check),
    the sum of squares of each column of each term's z (formula order, for the
    optimiser's scale of theta) and sum(log w).  ``out`` is a partial to add to
    (default: a new one).
    """
    out = new_partial(spec) if out is None else out
    rows = spec.rows(piece, weights, offset)
    n = len(rows.frame)
    out["n"] += n
    if n == 0:
        return out
    if rows.weights is not None:
        logw = np.zeros(2)
        _crossprod.add_sum_dd(np.log(rows.weights), logw)
        _crossprod.dd_merge(out["logw"], logw.reshape(1, 2))
    layout = spec.layout
    for start in range(0, n, spec.chunk_rows):
        stop = min(n, start + spec.chunk_rows)
        frame = rows.frame.iloc[start:stop] if n > spec.chunk_rows else rows.frame
        y = spec.response(frame)
        if rows.offset is not None:
            y = y - rows.offset[start:stop]
        x = spec.fixed(frame)
        xy = np.empty((stop - start, layout.p1))
        xy[:, :-1] = x
        xy[:, -1] = y
        refs = [spec.term_refs(frame, i) for i in spec.internal]
        z = [spec.term_z(frame, i) for i in spec.internal]
        for i, zi in zip(spec.internal, z):
            first = sum(spec.k[:i])
            for a in range(zi.shape[1]):
                _crossprod.add_sum_dd(np.ascontiguousarray(zi[:, a] ** 2), out["zz"][first + a])
        if rows.weights is not None:
            _crossprod.add_xy_xy_dd(np.ascontiguousarray(x), out["xtx"])
            sw = np.sqrt(rows.weights[start:stop])[:, None]
            xy *= sw
            z = [np.ascontiguousarray(zz * sw) for zz in z]
        blocks.accumulate(layout, out["acc"], refs, z, xy)
    return out


def merge_partials(a: dict, b: dict) -> dict:
    """The sum of two partials (a new one; neither input is changed)."""
    out = {"acc": a["acc"].copy(), "logw": a["logw"].copy(), "n": a["n"] + b["n"],
           "xtx": None if a["xtx"] is None else a["xtx"].copy(), "zz": a["zz"].copy()}
    _crossprod.dd_merge(out["acc"], b["acc"])
    _crossprod.dd_merge(out["logw"], b["logw"])
    _crossprod.dd_merge(out["zz"], b["zz"])
    if out["xtx"] is not None:
        _crossprod.dd_merge(out["xtx"], b["xtx"])
    return out


def finish_partial(layout, part: dict) -> dict:
    """A partial finished: A rounded to doubles but for its last block row
    (Z^T W [X y] and [X y]^T W [X y], from ``tail`` on), kept in double-double
    for the working basis (``conditioning``); rounded, the unweighted X^T X (or
    None), the sums of squares of z, sum(log w), n."""
    tail = int(layout.off_a[layout.n_terms * (layout.n_terms + 1) // 2])
    return {"a": _crossprod.dd_round(part["acc"][:tail]), "acc_xy": part["acc"][tail:],
            "zz": _crossprod.dd_round(part["zz"]),
            "xtx": None if part["xtx"] is None else _crossprod.dd_round(part["xtx"]),
            "logw": float(_crossprod.dd_round(part["logw"])[0]), "n": int(part["n"])}


# ------------------------------------------------------------ rank of X
def independent_columns_gram(g: np.ndarray, tol: float = RANK_TOL) -> np.ndarray:
    """The columns ``xymat.independent_columns`` keeps, from X^T X alone.

    A Cholesky factorisation of the Gram matrix (scaled to unit diagonal)
    column by column, left to right, that skips a column when its norm after
    projection on the kept columns, ``sqrt(1 - |l|^2)``, is at most ``tol``
    (relative to its own norm): the earlier of two collinear columns is kept,
    as with R's limited pivoting.
    """
    g = np.asarray(g, dtype=np.float64)
    p = g.shape[0]
    d = np.sqrt(np.clip(np.diag(g), 0.0, None))
    keep: list[int] = []
    lk = np.zeros((p, p))
    for j in range(p):
        if d[j] == 0.0:
            continue
        m = len(keep)
        gj = g[j, keep] / (d[j] * d[keep]) if m else np.zeros(0)
        lj = np.zeros(m)
        for i in range(m):
            lj[i] = (gj[i] - lk[i, :i] @ lj[:i]) / lk[i, i]
        r2 = 1.0 - lj @ lj
        if r2 > tol * tol:
            lk[m, :m] = lj
            lk[m, m] = np.sqrt(r2)
            keep.append(j)
    return np.array(keep, dtype=np.intp)


def _gram(block: np.ndarray, p1: int) -> np.ndarray:
    """The symmetric p1 x p1 matrix of a lower triangle stored column-major."""
    low = np.tril(block.reshape(p1, p1).T)
    return low + np.tril(low, -1).T


def _drop_columns(spec: DesignSpec, a: np.ndarray, keep: np.ndarray) -> tuple:
    """A (or its double-double accumulator, ``n_a x 2``) and its layout without
    the X columns not in ``keep``."""
    full = spec.layout
    p1 = full.p1
    sel = np.append(keep, p1 - 1)
    layout = spec.build_layout(len(sel))
    tail = a.shape[1:]
    out = np.zeros((max(layout.n_a, 1),) + tail)
    T = full.n_terms
    for s in range(T + 1):
        for t in range(s + 1):
            src = full.block_a(a, s, t)
            if s == T and t == T:
                new = src.reshape((p1, p1) + tail)[np.ix_(sel, sel)].reshape((-1,) + tail)
            elif s == T:
                new = src.reshape((-1, p1) + tail)[:, sel].reshape((-1,) + tail)
            else:
                new = src
            layout.block_a(out, s, t)[:] = new
    return layout, out


# ------------------------------------------------------------ reductions
class ChunkReducer:
    """Passes over a pandas frame in row chunks of bounded size."""

    def __init__(self, data: pd.DataFrame, weights=None, offset=None,
                 chunk_rows: int = CHUNK_ROWS):
        self.data = data
        self.weights = None if weights is None or isinstance(weights, str) else \
            column_or_array(weights, data, "weights")
        self.offset = None if offset is None or isinstance(offset, str) else \
            column_or_array(offset, data, "offset")
        self.chunk_rows = chunk_rows

    @property
    def meta(self) -> pd.DataFrame:
        return self.data.iloc[:0]

    def pieces(self, columns: list[str]):
        """(chunk, weights, offset) over the rows; the chunk has ``columns`` only."""
        pos = [self.data.columns.get_loc(c) for c in columns]
        n = len(self.data)
        if n == 0:
            yield (self.data.iloc[:0, pos], None if self.weights is None else self.weights,
                   None if self.offset is None else self.offset)
        for start in range(0, n, self.chunk_rows):
            stop = min(n, start + self.chunk_rows)
            yield (self.data.iloc[start:stop, pos],
                   None if self.weights is None else self.weights[start:stop],
                   None if self.offset is None else self.offset[start:stop])

    def run(self, spec: DesignSpec, fn, merge, finish=None):
        cols = piece_columns(spec)
        if fn is piece_crossproducts:
            out = new_partial(spec)
            for piece, w, off in self.pieces(cols):
                fn(spec, piece, w, off, out=out)
        else:
            out = reduce(merge, (fn(spec, piece, w, off) for piece, w, off in self.pieces(cols)))
        return out if finish is None else finish(out)


def piece_columns(spec: DesignSpec) -> list[str]:
    extra = [c for c in (spec.weights_column, spec.offset_column) if c]
    return list(dict.fromkeys(spec.columns + extra))


def reduce_design(spec: DesignSpec, reducer, stacklevel: int = 3) -> dict:
    """Run the passes of ``reducer`` over the data; the arguments of
    ``LinearMixedModel.from_crossproducts`` (and the spec, completed)."""
    levels = reducer.run(spec, piece_levels, merge_levels)
    n_total = levels["n"] + levels["n_bad"]
    if n_total == 0:
        raise DataError("the data frame has no rows")
    if levels["n"] == 0:
        raise DataError(
            f"every row has a missing value (in {', '.join(map(repr, levels['na']))})")
    if levels["n_bad"]:
        nb = levels["n_bad"]
        warnings.warn(
            f"{nb} row{'s' if nb > 1 else ''} with missing values "
            f"dropped (in {', '.join(map(repr, levels['na']))}); {levels['n']} rows remain",
            MissingValuesWarning, stacklevel=stacklevel)
    spec.set_levels(levels)
    if any(len(t.factors) > 1 for t in spec.parsed.random):
        spec.present = reducer.run(spec, piece_groups, merge_sets)
    spec.set_structure(reducer.meta)
    if spec.candidates:
        spec.set_patterns(reducer.run(spec, piece_pattern, merge_sets))
    spec.layout = spec.build_layout()
    sums = reducer.run(spec, piece_crossproducts, merge_partials,
                       partial(finish_partial, spec.layout))
    acc = np.zeros((max(spec.layout.n_a, 1), 2))   # A's accumulator again, exact in its tail
    acc[:len(sums["a"]), 0] = sums["a"]
    acc[len(sums["a"]):] = sums["acc_xy"]
    p1 = spec.layout.p1
    xx = spec.layout.block_a(_crossprod.dd_round(acc), spec.layout.n_terms,
                             spec.layout.n_terms)
    gram = _gram(sums["xtx"], p1 - 1) if sums["xtx"] is not None \
        else _gram(xx, p1)[:p1 - 1, :p1 - 1]
    keep = independent_columns_gram(gram)
    names = list(spec.x_names)
    dropped = [names[j] for j in range(len(names)) if j not in set(keep.tolist())]
    layout, a = spec.layout, acc
    if dropped:
        warnings.warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
            f"column{'s' if len(dropped) > 1 else ''}: {', '.join(dropped)}",
            RankDeficiencyWarning, stacklevel=stacklevel)
        layout, a = _drop_columns(spec, a, keep)
    return dict(remats=spec.remats(), fixef_names=[names[j] for j in keep], layout=layout,
                a=a, nobs=sums["n"], log_det_w=sums["logw"], response=spec.parsed.response,
                n_dropped=levels["n_bad"], dropped_columns=dropped, keep=keep,
                z_sumsq=sums["zz"],
                xtx=None if sums["xtx"] is None else gram[np.ix_(keep, keep)])


def install(model: LinearMixedModel, cls: type, formula: str, reml: bool, spec: DesignSpec,
            reduced: dict) -> None:
    """Make ``model`` (being initialised) the model of the reduced data, of class ``cls``."""
    keep = reduced.pop("keep")
    z_sumsq = reduced.pop("z_sumsq")
    xtx = reduced.pop("xtx")
    built = LinearMixedModel.from_crossproducts(formula, reml=reml, **reduced)
    model.__dict__.update(built.__dict__)
    if type(model) is LinearMixedModel:
        model.__class__ = cls
    model._spec = spec
    model._keep = keep
    model._xtx = xtx   # the unweighted X'X of weighted data (else None: X'X is in A)
    starts = np.cumsum([0] + spec.k)
    model._z_sumsq = [z_sumsq[starts[i]:starts[i + 1]] for i in spec.order]
    model.factor_levels = spec.factor_levels
    model.fixed_spec = spec.fixed_spec   # the codings predict() uses for newdata
    model.weights_column = spec.weights_column
    model.offset_column = spec.offset_column
    model.offset_given = spec.has_offset   # (offset(...) terms are re-evaluated)


# ----------------------------------------------------------- row results
def row_values(spec: DesignSpec, keep: np.ndarray, beta: np.ndarray, b_terms: dict,
               rows: Rows, what: str) -> np.ndarray:
    """Fitted values (X beta + Z b + offset) or residuals of model-frame rows."""
    n = len(rows.frame)
    out = np.empty(n)
    for start in range(0, n, spec.chunk_rows):
        stop = min(n, start + spec.chunk_rows)
        frame = rows.frame.iloc[start:stop] if n > spec.chunk_rows else rows.frame
        mu = spec.fixed(frame)[:, keep] @ beta
        for i in spec.order:
            z = spec.term_z(frame, i)
            mu += np.einsum("ij,ij->i", z, b_terms[i][spec.term_refs(frame, i)])
        if rows.offset is not None:
            mu += rows.offset[start:stop]
        out[start:stop] = spec.response(frame) - mu if what == "residuals" else mu
    return out


def reduced_theta_scale(model: LinearMixedModel) -> np.ndarray:
    """``LinearMixedModel._theta_scale`` (1 / root mean square of each column of z,
    per element of theta) from the sums of squares found in the reduction."""
    out = []
    for r, ss in zip(model.remats, model._z_sumsq):
        rms = np.sqrt(ss / model.nobs)
        rms = np.where(rms > 0, rms, 1.0)
        out.append(np.array([1.0 / rms[i] for j in range(r.k) for i in range(j, r.k)]))
    return np.concatenate(out)


def row_parameters(model: LinearMixedModel) -> tuple[np.ndarray, dict]:
    """beta and the conditional modes b per term (formula order), for ``row_values``."""
    model._require_fit()
    sol = model._solution
    spec = model._spec
    return sol["beta"], {i: b for i, b in zip(spec.order, sol["b"])}


def require_rows(fit, what: str, instead: str = "") -> None:
    """Raise a DataError when ``fit`` holds no rows (X, Z, y) and ``what`` needs them.

    A model reduced to A (streamed or Dask data) keeps only A; the message says
    how to get a model with rows, and ``instead`` what else would do.
    """
    if getattr(fit, "x", None) is not None:
        return
    held = getattr(fit, "ROWS_HELD_BY", "a model built from its cross-products")
    advice = getattr(fit, "ROWS_ADVICE", "fit the data in memory with lmmfast.lmer")
    raise DataError(f"{what} needs the model's rows (X, Z and y), which {held} does not keep: "
                    f"{advice}{instead}")


class StreamedLinearMixedModel(LinearMixedModel):
    """A model of a pandas frame reduced in row chunks (see the module docstring)."""

    ROWS_HELD_BY = "a model reduced in row chunks (streaming=True)"
    ROWS_ADVICE = "fit the data in memory, LinearMixedModel(formula, data, streaming=False).fit()"

    @classmethod
    def from_frame(cls, formula: str, data, reml: bool = True, weights=None, offset=None,
                   *, chunk_rows: int = CHUNK_ROWS) -> "StreamedLinearMixedModel":
        """The (unfitted) model of the pandas frame ``data``, in chunks of ``chunk_rows`` rows."""
        self = cls.__new__(cls)
        self.data_name = data_name(data)
        build_streamed(self, formula, data, reml, weights, offset, chunk_rows, stacklevel=3)
        return self

    def _theta_scale(self) -> np.ndarray:
        return reduced_theta_scale(self)

    def _row_pieces(self):
        reducer = self._source
        spec = self._spec
        for piece, w, off in reducer.pieces(piece_columns(spec)):
            yield spec.rows(piece, w, off)

    def _rows(self, what: str) -> np.ndarray:
        beta, b = row_parameters(self)
        parts = [row_values(self._spec, self._keep, beta, b, rows, what)
                 for rows in self._row_pieces()]
        return np.concatenate(parts) if parts else np.zeros(0)

    @cached_property
    def fitted(self) -> np.ndarray:
        """Conditional fitted values X beta + Z b (+ offset), recomputed chunk by chunk."""
        return self._rows("fitted")

    @cached_property
    def residuals(self) -> np.ndarray:
        """Response residuals y - fitted, recomputed chunk by chunk."""
        return self._rows("residuals")

    def refit(self, y, *, start=None, **options):
        raise DataError("a model reduced in chunks keeps no rows of its own: refit needs X "
                        "and Z; fit LinearMixedModel(..., streaming=False) for refits")

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False,
                offset=None):
        """As ``LinearMixedModel.predict``; without ``newdata``, the fit's rows chunk by chunk."""
        if newdata is not None:
            return super().predict(newdata, re_form=re_form, allow_new_levels=allow_new_levels,
                                   offset=offset)
        if offset is not None:
            raise DataError("offset= applies to newdata; the fit's rows use the fit's offset")
        if re_form is None:
            return np.array(self.fitted, dtype=np.float64)
        from .predict import predict
        parts = []
        for piece, w, off in self._source.pieces(list(self._source.data.columns)):
            rows = self._spec.rows(piece, w, off, coded=False)
            kept = piece if rows.keep is None else piece[rows.keep]
            parts.append(predict(self, kept, re_form=re_form, allow_new_levels=allow_new_levels,
                                 offset=rows.offset))
        return np.concatenate(parts) if parts else np.zeros(0)


def build_streamed(model: LinearMixedModel, formula: str, data, reml: bool,
                   weights, offset, chunk_rows: int = CHUNK_ROWS, stacklevel: int = 5) -> None:
    """Initialise ``model`` from ``data`` reduced in row chunks: a pandas frame, or
    the used columns of a dict, polars DataFrame or pyarrow Table."""
    reml = as_flag(reml, "reml")
    data = used_frame(parse_formula(formula), data, weights, offset)
    reducer = ChunkReducer(data, weights, offset, chunk_rows)
    spec = DesignSpec.from_meta(formula, data.iloc[:0], weights, offset, chunk_rows)
    reduced = reduce_design(spec, reducer, stacklevel=stacklevel)
    install(model, StreamedLinearMixedModel, formula, reml, spec, reduced)
    model._source = reducer
    model.weights = model.offset = None
    if spec.has_weights or spec.has_offset or spec.parsed.offsets:
        kept = [spec.rows(piece, w, off)
                for piece, w, off in reducer.pieces(piece_columns(spec))]
        if spec.has_weights:
            model.weights = np.concatenate([r.weights for r in kept])
        if spec.has_offset or spec.parsed.offsets:
            model.offset = np.concatenate([r.offset for r in kept])
    model.row_index = data.index if not model.n_dropped else None


def streamable(formula: str, meta: pd.DataFrame) -> bool:
    """Whether ``formula`` can be evaluated on ``meta``'s columns piece by piece."""
    try:
        DesignSpec.from_meta(formula, meta)
    except FormulaError:
        return False
    except DataError:
        return False
    return True


def build_elsewhere(model: LinearMixedModel, formula: str, data, reml: bool, weights,
                    offset, streaming: bool | None) -> bool:
    """Initialise ``model`` when its data is partitioned or is to be streamed.

    Dask DataFrames and Parquet paths go to ``lmmfast.distributed``; pandas
    frames are reduced in chunks when ``streaming`` is true, or when it is None
    (the caller found more than ``STREAM_MIN_ROWS`` rows) and the formula can
    be evaluated in pieces.  Returns False when the in-memory path is to build
    the model.
    """
    from . import distributed
    if distributed.is_partitioned(data):
        distributed.build_dask(model, formula, data, reml, weights, offset)
        return True
    if streaming is False or not is_table(data):
        return False
    if streaming is None and not (isinstance(data, pd.DataFrame)
                                  and streamable(formula, data.iloc[:0])):
        return False
    build_streamed(model, formula, data, reml, weights, offset)
    return True
