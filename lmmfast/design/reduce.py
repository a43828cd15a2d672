"""Reduction of data in pieces to the cross-products A (theory.md, eq. 12).

A model needs only A, the number of rows, the factor levels and a few sums;
the rows can be visited one piece at a time.  A reducer visits the pieces of
its data (``ChunkReducer``: row chunks of a pandas frame; ``design.dask.DaskReducer``:
the partitions of a Dask frame) and merges what each piece gives:

1. levels: the levels of every factor among the complete rows, and the rows
   with missing values (``spec.piece_levels``);
2. groups (only for interaction groupings ``a:b``): the combinations present;
3. pattern (only when a block next to the first term may be sparse): the
   level pairs present, which fix the sparse layout;
4. cross-products: each piece's partial A in double-double (``crossprod.add_rows``),
   R of its X for the rank check (``fixed.r_factor``), the sums of squares of
   each column of z and sum(log w); merged and rounded once.

Every split of the rows gives the same A to the last bit, so a fit from
chunks or partitions equals the in-memory fit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial, reduce

import numpy as np
import pandas as pd

from .. import _crossprod
from ..errors import DataError, FormulaError, MissingValuesWarning
from .crossprod import add_rows
from .fixed import independent_columns, r_factor, warn_dropped
from .frame import column_or_array
from .layout import BlockLayout
from .spec import (PIECE_ROWS, DesignSpec, merge_levels, merge_sets, piece_columns,
                   piece_groups, piece_levels, piece_pattern)
from .terms import ReMat

__all__ = ["ChunkReducer", "Reduced", "check_rank", "reduce_design", "reduce_structure",
           "reweighted", "streamable"]


# --------------------------------------------------------- partial sums
def new_partial(spec: DesignSpec) -> dict:
    p = len(spec.x_names)
    return {"acc": np.zeros((max(spec.layout.n_a, 1), 2)), "rank": np.zeros((0, p)),
            "zz": np.zeros((sum(spec.k), 2)), "logw": np.zeros((1, 2)), "n": 0}


def piece_crossproducts(spec: DesignSpec, piece: pd.DataFrame, weights=None, offset=None,
                        out: dict | None = None, working: tuple | None = None) -> dict:
    """Pass 4: the piece's contribution to A (all X columns) in double-double.

    Also R of the piece's (unweighted) X for the rank check, the sum of squares
    of each column of each term's z (formula order, for the optimiser's scale of
    theta) and sum(log w).  ``out`` is a partial to add to (default: a new one).
    ``working``: the working weights and working response (each None or one
    value per model row of all pieces; ``out`` counts the rows before this
    piece) in place of the prior weights and y - offset.
    """
    out = new_partial(spec) if out is None else out
    rows = spec.rows(piece, weights, offset)
    n = len(rows.data)
    first = out["n"]
    out["n"] += n
    if n == 0:
        return out
    w_all, y_all = working or (None, None)
    w = rows.weights if w_all is None else w_all[first:first + n]
    if w is not None:
        logw = np.zeros(2)
        _crossprod.add_sum_dd(np.log(w), logw)
        _crossprod.dd_merge(out["logw"], logw.reshape(1, 2))
    layout = spec.layout
    starts = np.cumsum([0] + spec.k)
    for start in range(0, n, spec.chunk_rows):
        stop = min(n, start + spec.chunk_rows)
        frame = rows.data.slice(start, stop) if n > spec.chunk_rows else rows.data
        xy = spec.xy(frame)
        if y_all is not None:
            y = y_all[first + start:first + stop]
        else:
            y = xy.y
            if rows.offset is not None:
                y = y - rows.offset[start:stop]
        x = xy.x
        terms = [spec.remat(frame, i) for i in spec.internal]
        refs = [r.refs for r in terms]
        z = [r.z for r in terms]
        for i, zi in zip(spec.internal, z):
            for a in range(zi.shape[1]):
                _crossprod.add_sum_dd(np.ascontiguousarray(zi[:, a] ** 2),
                                      out["zz"][starts[i] + a])
        out["rank"] = r_factor(iter([out["rank"], x]), x.shape[1])
        add_rows(layout, out["acc"], refs, z, x, y,
                 None if w is None else np.sqrt(w[start:stop]))
    return out


def check_rank(layout: BlockLayout, acc: np.ndarray, r: np.ndarray, names: list[str],
               stacklevel: int) -> tuple:
    """X's rank check (``fixed.independent_columns``) on X's rows or, for data in
    pieces, R of their QR decomposition (``r``): the columns kept, the names of
    those dropped (with lme4's warning), and A's layout and accumulator (formed
    with every column of X) without them."""
    keep = independent_columns(r)
    kept = set(keep.tolist())
    dropped = [names[j] for j in range(len(names)) if j not in kept]
    if dropped:
        warn_dropped(dropped, stacklevel + 1)
        layout, acc = _drop_columns(layout, acc, keep)
    return keep, dropped, layout, acc


def merge_partials(a: dict, b: dict) -> dict:
    """The sum of two partials (a new one; neither input is changed)."""
    out = {"acc": a["acc"].copy(), "logw": a["logw"].copy(), "n": a["n"] + b["n"],
           "rank": r_factor(iter([a["rank"], b["rank"]]), a["rank"].shape[1]),
           "zz": a["zz"].copy()}
    _crossprod.dd_merge(out["acc"], b["acc"])
    _crossprod.dd_merge(out["logw"], b["logw"])
    _crossprod.dd_merge(out["zz"], b["zz"])
    return out


def finish_partial(layout: BlockLayout, part: dict) -> dict:
    """A partial finished: A rounded to doubles but for its last block row
    (Z^T W [X y] and [X y]^T W [X y], from ``tail`` on), kept in double-double
    for the working basis (``conditioning``); R of X, the sums of squares of z,
    sum(log w), n."""
    tail = int(layout.off_a[layout.n_terms * (layout.n_terms + 1) // 2])
    return {"a": _crossprod.dd_round(part["acc"][:tail]), "acc_xy": part["acc"][tail:],
            "zz": _crossprod.dd_round(part["zz"]), "rank": part["rank"],
            "logw": float(_crossprod.dd_round(part["logw"])[0]), "n": int(part["n"])}


def _drop_columns(full: BlockLayout, a: np.ndarray, keep: np.ndarray) -> tuple:
    """A (or its double-double accumulator, ``n_a x 2``) and its layout without
    the X columns not in ``keep``."""
    p1 = full.p1
    sel = np.append(keep, p1 - 1)
    layout = full.with_p1(len(sel))
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
                 chunk_rows: int = PIECE_ROWS):
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
            yield (self.data.iloc[:0, pos], self.weights, self.offset)
        for start in range(0, n, self.chunk_rows):
            stop = min(n, start + self.chunk_rows)
            yield (self.data.iloc[start:stop, pos],
                   None if self.weights is None else self.weights[start:stop],
                   None if self.offset is None else self.offset[start:stop])

    def run(self, spec: DesignSpec, fn, merge, finish=None, **options):
        """``fn`` over the pieces, merged by ``merge``, finished by ``finish``;
        ``options`` go to ``piece_crossproducts``."""
        cols = piece_columns(spec)
        if fn is piece_crossproducts:   # one accumulator for all chunks
            out = new_partial(spec)
            for piece, w, off in self.pieces(cols):
                fn(spec, piece, w, off, out=out, **options)
        else:
            out = reduce(merge, (fn(spec, piece, w, off) for piece, w, off in self.pieces(cols)))
        return out if finish is None else finish(out)


@dataclass
class Reduced:
    """What a reduction gives a model: A and its layout, the terms, the counts."""

    spec: DesignSpec
    remats: list[ReMat]        # lme4's order, without rows
    fixef_names: list[str]
    dropped_columns: list[str]
    keep: np.ndarray           # X's columns kept by the rank check
    layout: BlockLayout
    acc: np.ndarray            # A's accumulator (n_a x 2; exact in the y and X rows)
    nobs: int
    n_dropped: int
    log_det_w: float
    z_sumsq: list[np.ndarray]   # per term (lme4's order): sum of squares of each column of z
    x_r: np.ndarray            # R of (unweighted) X's QR decomposition, every column


def reduce_design(spec: DesignSpec, reducer, stacklevel: int = 3) -> Reduced:
    """Run the passes of ``reducer`` over the data; completes ``spec``."""
    levels = reduce_structure(spec, reducer, stacklevel + 1)
    sums = reducer.run(spec, piece_crossproducts, merge_partials,
                       partial(finish_partial, spec.layout))
    names = list(spec.x_names)
    keep, dropped, layout, acc = check_rank(spec.layout, _accumulator(spec.layout, sums),
                                            sums["rank"], names, stacklevel)
    starts = np.cumsum([0] + spec.k)
    return Reduced(spec, spec.remats(), [names[j] for j in keep], dropped, keep, layout, acc,
                   sums["n"], levels["n_bad"], sums["logw"],
                   [sums["zz"][starts[i]:starts[i + 1]] for i in spec.order], sums["rank"])


def reduce_structure(spec: DesignSpec, reducer, stacklevel: int = 3) -> dict:
    """Passes 1-3: the levels (a warning for rows with missing values), the
    combinations of interaction groupings, X's columns, the terms and the sparse
    patterns; completes ``spec`` up to its layout.  Returns pass 1's result."""
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
    return levels


def _accumulator(layout: BlockLayout, sums: dict) -> np.ndarray:
    """A's accumulator (``n_a x 2``) from a finished partial: its head rounded, its
    last block row exact."""
    acc = np.zeros((max(layout.n_a, 1), 2))
    acc[:len(sums["a"]), 0] = sums["a"]
    acc[len(sums["a"]):] = sums["acc_xy"]
    return acc


def reweighted(spec: DesignSpec, reducer: ChunkReducer, keep: np.ndarray, weights=None,
               response=None) -> tuple[BlockLayout, np.ndarray, float]:
    """The layout of A, A's accumulator and sum(log w) for the working ``weights``
    and working ``response`` (one value per model row, each None for the prior
    weights, y - offset) over the pieces of ``reducer``: pass 4 alone."""
    sums = reducer.run(spec, piece_crossproducts, merge_partials,
                       partial(finish_partial, spec.layout), working=(weights, response))
    acc = _accumulator(spec.layout, sums)
    layout = spec.layout
    if len(keep) < len(spec.x_names):
        layout, acc = _drop_columns(layout, acc, keep)
    return layout, acc, sums["logw"]


def streamable(formula: str, meta: pd.DataFrame) -> bool:
    """Whether ``formula`` can be evaluated on ``meta``'s columns piece by piece."""
    try:
        DesignSpec.from_meta(formula, meta)
    except (FormulaError, DataError):
        return False
    return True
