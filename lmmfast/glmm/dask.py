"""A GLMM of a Dask DataFrame: its rows held by the cluster, one pass per PIRLS step.

The levels, the terms and the sparse patterns come from the linear model's
passes (``design.reduce.reduce_structure``), X's rank from R of its QR over
the partitions.  Each partition's model rows then become chunks
(``rows.RowChunk``: X, the response on the family's scale, prior weights,
trials, offset, level codes and z), built once on a worker and kept in its
memory.  Every pass over the rows (a PIRLS iteration, the family's aic, the
gradient's two passes, the quadrature's sums) runs the in-memory fit's own
partition function on each partition (``rows``), and a tree reduction on the
cluster merges the results: only beta, Lambda u and the model-sized results
travel (``DaskRows``).  Row-level results are Dask Series.
"""

from __future__ import annotations

import dataclasses
import warnings
from functools import reduce

import numpy as np
import pandas as pd

from .. import _crossprod
from ..design.dask import SPLIT_EVERY, DaskReducer, as_dask_frame, distributed_client, shared
from ..design.fixed import independent_columns, r_factor, reduced_rows, warn_dropped
from ..design.reduce import reduce_structure
from ..design.spec import DesignSpec, piece_columns
from ..errors import DataError
from .predictor import Design, glm_response, model_offset, response_form
from .rows import Workspace, merge_pass, split_rows, whole_counts

__all__ = ["DaskRows", "dask_design"]


@dataclasses.dataclass
class Partition:
    """One partition's model rows, in chunks, kept by a worker."""

    chunks: list
    row_index: pd.Index
    nobs: int
    any_trials: bool          # some trials > 1
    whole_trials: bool        # m y whole with m the trials
    whole_weights: bool       # m y whole with m the prior weights
    notes: list[str]          # R's warnings for the response


def _frame_rows(spec: DesignSpec, piece: pd.DataFrame):
    rows = spec.rows(piece)
    return rows, spec.xy(rows.data)


def _x_rows(spec: DesignSpec, piece: pd.DataFrame) -> np.ndarray:
    """Rows with the R of the partition's X (the rank check)."""
    _, xy = _frame_rows(spec, piece)
    return reduced_rows([xy.x], len(spec.x_names))


def _merge_x_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return reduced_rows([a, b], a.shape[1])


def _build_partition(spec: DesignSpec, form, family_name: str, keep: np.ndarray,
                     chunk_rows: int | None, piece: pd.DataFrame) -> Partition:
    rows, xy = _frame_rows(spec, piece)
    x = np.ascontiguousarray(xy.x[:, keep])
    user_w = None if rows.weights is None else np.asarray(rows.weights, dtype=np.float64)
    y, prior, trials, notes = glm_response(form, rows.data, xy.y, user_w, family_name)
    n = len(y)
    remats = [spec.remat(rows.data, i) for i in spec.order]
    internal = [spec.order.index(i) for i in spec.internal]
    design = Design(spec.formula, form.lhs, x, [], remats, internal, y, prior, trials,
                    model_offset(rows.offset, n), rows.row_index, 0, [])
    chunks = split_rows(design, chunk_rows) if n else []
    return Partition(chunks, rows.row_index, n, bool((trials > 1).any()),
                     whole_counts(trials, y), whole_counts(prior, y), notes)


def _partition_stats(part: Partition) -> dict:
    return {"nobs": part.nobs, "any_trials": part.any_trials,
            "whole_trials": part.whole_trials, "whole_weights": part.whole_weights,
            "notes": part.notes}


def _run(fn, part: Partition, args):
    """``fn`` on a partition's chunks with a workspace of its own."""
    if not part.chunks:
        return None
    ws = Workspace(max(c.size for c in part.chunks))
    return fn(part.chunks, ws, *args)


def _run_group(fn, merge, args, *parts: Partition):
    """``fn`` on the partitions one worker holds, merged there."""
    return _merge_some(merge, *(_run(fn, p, args) for p in parts))


def _run_into_group(fn, shape, args, *parts: Partition):
    """``fn`` on the partitions one worker holds, all adding to one accumulator of
    their own (``rows.pass_partition``)."""
    chunks = [c for p in parts for c in p.chunks]
    if not chunks:
        return None
    acc = np.zeros(shape)
    ws = Workspace(max(c.size for c in chunks))
    out = None
    for p in parts:
        if p.chunks:
            res = fn(p.chunks, ws, acc, *args)
            out = res if out is None else merge_pass(out, res)
    return out + (acc,)


def _merge_some(merge, *results):
    results = [r for r in results if r is not None]
    return reduce(merge, results) if results else None


def _merge_into(merge):
    def both(a, b):
        acc = a[-1].copy()
        if acc.shape[1] == 2:
            _crossprod.dd_merge(acc, b[-1])
        else:
            acc += b[-1]
        return merge(a[:-1], b[:-1]) + (acc,)
    return both


def _values(part: Partition, fn, args, name: str) -> pd.Series:
    values = _run(fn, part, args)
    return pd.Series(np.zeros(0) if values is None else values, index=part.row_index,
                     name=name)


class DaskRows:
    """The rows of a model held by a Dask cluster's workers, in partitions.

    With a ``distributed.Client`` the partitions are built on the workers and
    kept there; without one they are built in this process.  ``run`` is
    ``rows.LocalRows.run`` over every partition, the results merged by a tree
    reduction; ``passes`` and ``bytes_to_client`` count the passes and the
    bytes of their results.
    """

    single = False

    def __init__(self, ddf, spec: DesignSpec, form, family_name: str, keep: np.ndarray,
                 split_every: int = SPLIT_EVERY, chunk_rows: int | None = None):
        import dask
        self.client = distributed_client()
        self.split_every = max(2, int(split_every))
        self.passes = 0
        self.bytes_to_client = 0
        self._held: dict = {}
        parts = ddf[piece_columns(spec)].to_delayed()
        spec_d = shared(spec, "lmmfast-spec")
        built = [dask.delayed(_build_partition, pure=True)(spec_d, form, family_name, keep,
                                                           chunk_rows, p) for p in parts]
        if self.client is not None:
            self.parts = self.client.compute(built)
            stats = self.client.gather(self.client.map(_partition_stats, self.parts))
            # the partitions each worker holds: one task per worker and pass
            holders = self.client.who_has(self.parts)
            groups: dict = {}
            for part in self.parts:
                groups.setdefault(tuple(holders.get(part.key, ()))[:1], []).append(part)
            self.groups = list(groups.items())
        else:
            self.parts = list(dask.compute(*built))
            stats = [_partition_stats(p) for p in self.parts]
            self.groups = [((), self.parts)]
        self.nobs = sum(s["nobs"] for s in stats)
        self.trials_given = any(s["any_trials"] for s in stats)
        key = "whole_trials" if self.trials_given else "whole_weights"
        self.whole = all(s[key] for s in stats if s["nobs"])
        self.notes = list(dict.fromkeys(n for s in stats for n in s["notes"]))
        self.partitions = len(self.parts)

    # ------------------------------------------------------------ passes
    def _reduce(self, results: list, merge):
        from dask.sizeof import sizeof
        if self.client is None:
            out = _merge_some(merge, *results)
        else:
            level = results
            while len(level) > 1:
                level = [self.client.submit(_merge_some, merge, *level[i:i + self.split_every],
                                            pure=False)
                         for i in range(0, len(level), self.split_every)]
            out = level[0].result()
        self.passes += 1
        self.bytes_to_client += int(sizeof(out))
        return out

    def held(self, obj):
        """``obj`` sent to every worker once, for every pass that uses it (the layout of
        A, with its sparse patterns, is the size of the model)."""
        kept = self._held.get(id(obj))
        if kept is None or kept[0] is not obj:
            [fut] = self.client.scatter([obj], broadcast=True, hash=False)
            kept = self._held[id(obj)] = (obj, fut)
        return kept[1]

    def _args(self, args: tuple) -> tuple:
        """The task's arguments, the last (the pass's own, a tuple) scattered once to
        every worker where it is large."""
        from dask.sizeof import sizeof
        last = args[-1]
        if sum(getattr(a, "nbytes", 0) or sizeof(a) for a in last) > 1 << 20:
            [fut] = self.client.scatter([last], broadcast=True, hash=False)
            return args[:-1] + (fut,)
        return args

    def _submit(self, task, *args):
        """One task per worker, on the partitions it holds (here without a client)."""
        if self.client is None:
            return [task(*args, *parts) for _, parts in self.groups]
        a = self._args(args)
        return [self.client.submit(task, *a, *parts, workers=list(where) or None,
                                   allow_other_workers=True, pure=False)
                for where, parts in self.groups]

    def run(self, fn, *args, merge):
        """``fn(chunks, workspace, *args)`` on every partition, merged by ``merge``
        (first on each worker, then by a tree reduction)."""
        return self._reduce(self._submit(_run_group, fn, merge, args), merge)

    def run_into(self, acc: np.ndarray, work: dict, fn, *args):
        """``fn(chunks, workspace, acc, *args)`` on every partition, each worker's
        partitions adding to an accumulator of their own; the merged accumulator
        is written to ``acc``."""
        if self.client is not None:   # (the layout of A, args[0], is the same every pass)
            args = (self.held(args[0]),) + args[1:]
        out = self._reduce(self._submit(_run_into_group, fn, acc.shape, args),
                           _merge_into(merge_pass))
        acc[:] = out[-1]
        return out[:-1]

    def series(self, fn, *args, name: str):
        """``fn(chunks, workspace, *args)`` (one value per row) as a Dask Series."""
        import dask.dataframe as dd
        meta = pd.Series([], dtype="float64", name=name)
        if self.client is None:
            parts = [_values(p, fn, args, name) for p in self.parts]
            return dd.from_pandas(pd.concat(parts), npartitions=max(1, len(parts)))
        futures = [self.client.submit(_values, p, fn, args, name, pure=False)
                   for p in self.parts]
        return dd.from_delayed(futures, meta=meta, verify_meta=False)


def _binary_response(ddf, name: str, family_name: str):
    """A bool or categorical response column as 0/1 (first level = failure, as R),
    partition by partition, with the levels of the column's dtype."""
    if name not in ddf.columns:
        return ddf, None
    dtype = ddf._meta[name].dtype
    if isinstance(dtype, pd.CategoricalDtype) or dtype.kind == "b" or str(dtype) == "boolean":
        if family_name != "binomial":
            raise DataError(f"response {name!r} is a factor: the {family_name} family "
                            "needs counts")
        if isinstance(dtype, pd.CategoricalDtype):
            levels = list(dtype.categories)
            if len(levels) > 2:
                raise DataError(f"response {name!r} has {len(levels)} levels: a binomial "
                                "response needs two (the first is failure)")
        else:
            levels = [False, True]

        def coded(col):
            codes = col.cat.codes.to_numpy() if isinstance(col.dtype, pd.CategoricalDtype) \
                else np.where(col.isna(), -1, col.fillna(False).astype(bool).astype(np.int64))
            return pd.Series(np.where(codes < 0, np.nan, (codes >= 1).astype(np.float64)),
                             index=col.index, name=col.name)
        ddf = ddf.assign(**{name: ddf[name].map_partitions(
            coded, meta=pd.Series([], dtype="float64", name=name))})
        return ddf, (None if levels == [False, True] else levels)
    if dtype == object or pd.api.types.is_string_dtype(dtype):
        raise DataError(f"response {name!r} is a column of strings: on a Dask DataFrame a "
                        "factor response must be categorical (known categories) or bool")
    return ddf, None


def dask_design(formula: str, data, family_name: str, weights=None, offset=None,
                split_every: int = SPLIT_EVERY, chunk_rows: int | None = None,
                stacklevel: int = 4):
    """The design of a GLMM of a Dask DataFrame or Parquet data (no rows: they stay on
    the cluster) and its ``DaskRows``; the passes' counts in ``dask_stats``."""
    ddf = as_dask_frame(data)
    for value, what in ((weights, "weights"), (offset, "offset")):
        if value is not None and not isinstance(value, str):
            raise DataError(f"for Dask data, {what} must be the name of a column "
                            f"(got {type(value).__name__})")
    parsed, form = response_form(formula, family_name)
    levels = None
    if form.pieces is None:
        ddf, levels = _binary_response(ddf, form.name, family_name)
    lhs_formula = f"{form.parsed.response} ~ {formula.split('~', 1)[1]}"
    spec = DesignSpec.from_meta(lhs_formula, ddf._meta, weights, offset)
    reducer = DaskReducer(ddf, split_every)
    n_dropped = reduce_structure(spec, reducer, stacklevel + 1)["n_bad"]
    names = list(spec.x_names)
    r = r_factor([reducer.run(spec, _x_rows, _merge_x_rows)], len(names))
    keep = independent_columns(r)
    dropped = [names[j] for j in range(len(names)) if j not in set(keep.tolist())]
    if dropped:
        warn_dropped(dropped, stacklevel)
    rows = DaskRows(ddf, spec, form, family_name, keep, split_every, chunk_rows)
    for note in rows.notes:
        warnings.warn(note, UserWarning, stacklevel=stacklevel)
    remats = spec.remats()
    internal = [spec.order.index(i) for i in spec.internal]
    p = len(keep)
    empty = np.zeros(0)
    design = Design(formula, form.lhs, np.zeros((0, p)), [names[j] for j in keep], remats,
                    internal, empty, empty, empty, empty, pd.RangeIndex(0), n_dropped, dropped,
                    spec.fixed_spec, levels, n_rows=rows.nobs, patterns=dict(spec.patterns))
    stats = {"partitions": rows.partitions, "passes": reducer.passes + 1,
             "bytes_to_client": reducer.bytes_to_client}
    return design, rows, stats, ddf

