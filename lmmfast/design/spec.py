"""The design specification: formula, used columns, levels, term layout.

``DesignSpec`` holds what is global to a data set (the formula, the used
columns, the levels of every factor in R's order, X's columns and each
term's columns and levels, the block layout of A) and turns any piece of rows
into the model-frame rows, X, y and the random-effects terms with the
functions the in-memory fit uses for the whole frame (``frame.model_frame``,
``fixed.build_xymat``, ``terms.build_remat``), given the levels of the whole
data.  What depends on
all rows at once (``scale``, ``poly``, ``factor()`` of a numeric column, ...)
is refused with a FormulaError that points to the in-memory path.  The
``piece_*`` functions are the passes of a reduction (``design.reduce``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from formulaic.transforms import TRANSFORMS

from ..errors import DataError, FormulaError
from ..formula import R_ALIASES, ParsedFormula, parse_formula, response_code
from .fixed import XyMat, build_xymat
from .frame import (Columns, Factor, ModelFrame, as_factor, column_or_array, is_categorical,
                    model_frame, used_columns)
from .layout import SPARSE_MIN_SIZE, BlockLayout
from .materialize import R_FUNCTIONS, design_matrix
from .terms import ReMat, build_remat, checked_z, group_codes, interaction_labels

__all__ = ["PIECE_ROWS", "DesignSpec", "FactorCoding", "piece_columns", "sorted_unique"]

PIECE_ROWS = 262_144   # rows of a data frame turned into model-frame rows at once

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

    def factor(self, values) -> Factor:
        """The model frame's factor of a column's values without missing values
        (a Categorical or a numpy array): codes of the levels of the whole data."""
        if self.kind == "bool":
            codes = np.asarray(values).astype(np.int64)
        elif self.kind == "category" and isinstance(values, pd.Categorical):
            remap = self._label_index.get_indexer([str(c) for c in values.categories])
            codes = remap[np.asarray(values.codes)]
        else:
            codes = self._index.get_indexer(np.asarray(values))
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes) and codes.min() < 0:
            bad = np.asarray(values)[codes < 0][0]
            raise DataError(f"column {self.name!r} has a value ({bad!r}) that was not among "
                            "its levels when the data were first read: did the data change?")
        return Factor(codes, self.labels, self.ordered)


def _piece_levels_of(values, dtype):
    """What a piece knows about a factor column's levels (merged by ``_merge_level``),
    from its values without missing values and the column's dtype."""
    if isinstance(values, pd.Categorical):
        codes = np.asarray(values.codes)
        used = np.bincount(codes[codes >= 0], minlength=len(values.categories)) > 0
        return ("category", list(values.categories), used)
    if dtype.kind == "b":
        return ("bool", None, None)
    return ("values", pd.unique(values), None)


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
    layout: BlockLayout | None = None
    chunk_rows: int = PIECE_ROWS

    # ---------------------------------------------------------- from types
    @classmethod
    def from_meta(cls, formula: str, meta: pd.DataFrame, weights=None, offset=None,
                  chunk_rows: int = PIECE_ROWS) -> "DesignSpec":
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
    def rows(self, piece: pd.DataFrame, weights=None, offset=None,
             coded: bool = True) -> ModelFrame:
        """The model-frame rows of ``piece`` (``model_frame`` with the levels of the
        whole data); ``coded=False``: the columns as they are (``model_frame``)."""
        return model_frame(
            self.parsed, piece, (self.weights_column or weights) if self.has_weights else None,
            (self.offset_column or offset) if self.has_offset else None,
            codings=self.codings, coded=coded, piece=True)

    def xy(self, frame: Columns) -> XyMat:
        """y and X (every column: the rank check is that of all pieces) of
        model-frame rows (``build_xymat``)."""
        xy = build_xymat(self.parsed, frame, check_rank=False)
        if self.x_names is not None and xy.names != self.x_names:
            raise DataError(f"the fixed-effects columns of a piece of the data ({xy.names}) "
                            f"differ from those of the whole ({self.x_names})")
        return xy

    def remat(self, frame: Columns, i: int) -> ReMat:
        """Random term ``i`` (formula order) of model-frame rows (``build_remat``),
        with the levels of the whole data."""
        return build_remat(frame, self.parsed.random[i], self.present.get(i),
                           self.term_levels(i))

    def term_refs(self, frame: Columns, i: int) -> np.ndarray:
        """Level codes of the rows in random term ``i`` (formula order)."""
        return group_codes(frame, self.parsed.random[i], self.present.get(i))[0]

    # ------------------------------------------------------ global structure
    def set_levels(self, merged: dict) -> None:
        self.codings = {c: _coding(c, merged["levels"][c], self.dtypes[c])
                        for c in self.level_columns}

    def set_structure(self, meta: pd.DataFrame) -> None:
        """X's columns, each term's k and levels, and the term orders."""
        rows = self.rows(meta.iloc[:0], np.zeros(0), np.zeros(0))
        _, self.x_names, self.fixed_spec = design_matrix(
            self.parsed.fixed, rows.data, f"the fixed-effects part {self.parsed.fixed!r}",
            with_spec=True)
        terms = [design_matrix(t.expr, rows.data, f"random term {t.source}", with_spec=True)
                 for t in self.parsed.random]
        self.cnames = [names for _, names, _ in terms]
        self.term_specs = [spec for _, _, spec in terms]
        self.k = [checked_z(z, t).shape[1] for (z, _, _), t in zip(terms, self.parsed.random)]
        self.nlevels = [len(self.present[i]) if i in self.present
                        else len(self.codings[t.factors[0].strip("`")].labels)
                        for i, t in enumerate(self.parsed.random)]
        T = len(self.parsed.random)
        self.order = sorted(range(T), key=lambda i: -self.nlevels[i])
        q = [self.nlevels[i] * self.k[i] for i in self.order]
        self.internal = [self.order[j] for j in sorted(range(T), key=lambda j: -q[j])]
        nl = [self.nlevels[i] for i in self.internal]
        self.candidates = [s for s in range(1, T) if nl[s] * nl[0] > SPARSE_MIN_SIZE]

    def set_patterns(self, keys: dict) -> None:
        nl = [self.nlevels[i] for i in self.internal]
        for s, kk in keys.items():
            cols, rows = np.divmod(np.asarray(kk, dtype=np.int64), nl[s])   # kk sorted, distinct
            colptr = np.zeros(nl[0] + 1, dtype=np.int64)
            np.cumsum(np.bincount(cols, minlength=nl[0]), out=colptr[1:])
            self.patterns[s] = (colptr, rows)

    def build_layout(self) -> BlockLayout:
        T = len(self.internal)
        return BlockLayout.build(
            [None] * T, [self.nlevels[i] for i in self.internal],
            [self.k[i] for i in self.internal], len(self.x_names) + 1, self.patterns)

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
        """The level labels of random term ``i`` (formula order), made once."""
        cache = self.__dict__.setdefault("_term_levels", {})
        if i not in cache:
            term = self.parsed.random[i]
            names = [f.strip("`") for f in term.factors]
            cache[i] = list(self.codings[names[0]].labels) if len(names) == 1 else \
                interaction_labels(self.present[i], [self.codings[n].labels for n in names])
        return cache[i]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_term_levels", None)   # made again where needed
        return state

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
    return {"n": len(rows.data), "n_bad": rows.n_dropped, "na": list(rows.na_columns),
            "levels": {c: _piece_levels_of(rows.data[c], spec.dtypes[c])
                       for c in spec.level_columns}
            if len(rows.data) else {}}


def merge_levels(a: dict, b: dict) -> dict:
    levels = dict(a["levels"])
    for c, lv in b["levels"].items():
        levels[c] = _merge_level(levels[c], lv) if c in levels else lv
    return {"n": a["n"] + b["n"], "n_bad": a["n_bad"] + b["n_bad"],
            "na": list(dict.fromkeys(a["na"] + b["na"])), "levels": levels}


def piece_groups(spec: DesignSpec, piece: pd.DataFrame, weights=None, offset=None) -> dict:
    """Pass 2: the level combinations present in each interaction grouping."""
    rows = spec.rows(piece, weights, offset)
    return {i: group_codes(rows.data, t)[2]
            for i, t in enumerate(spec.parsed.random) if len(t.factors) > 1}


def merge_sets(a: dict, b: dict) -> dict:
    return {i: sorted_unique(np.concatenate([a[i], b[i]])) for i in a}


def piece_pattern(spec: DesignSpec, piece: pd.DataFrame, weights=None, offset=None) -> dict:
    """Pass 3: the level pairs (s, 0) present, as keys ``refs_0 * nl_s + refs_s``."""
    rows = spec.rows(piece, weights, offset)
    out = {}
    ref0 = spec.term_refs(rows.data, spec.internal[0])
    for s in spec.candidates:
        nl_s = spec.nlevels[spec.internal[s]]
        out[s] = sorted_unique(ref0 * nl_s + spec.term_refs(rows.data, spec.internal[s]))
    return out


def piece_columns(spec: DesignSpec) -> list[str]:
    extra = [c for c in (spec.weights_column, spec.offset_column) if c]
    return list(dict.fromkeys(spec.columns + extra))
