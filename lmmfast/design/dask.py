"""Data on a Dask cluster: reduction of its partitions, and row results computed there.

A Dask DataFrame (or Parquet files read with ``dask.dataframe.read_parquet``)
is reduced to A partition by partition (``DaskReducer``: the passes of
``design.reduce``, each partition's partial sums merged by a tree reduction
on the cluster and rounded to A once; only A, the levels and a few counts
travel to the client).  A is the same to the last bit as the in-memory
path's, so the fit is the same.  Row-level results stay on the cluster
(``DaskRows``): fitted values, residuals and predictions are Dask Series
computed partition by partition.  Dask is an optional dependency:
``pip install 'lmmfast[dask]'``.
"""

from __future__ import annotations

import copy
import os
import uuid
from functools import reduce

import numpy as np
import pandas as pd

from ..errors import DataError
from .rows import row_parameters, row_values
from .spec import DesignSpec, piece_columns, sorted_unique

__all__ = ["DaskReducer", "DaskRows", "INSTALL_HINT", "as_dask_frame", "distributed_client",
           "exact_quantiles", "is_partitioned", "predict", "shared"]

INSTALL_HINT = "pip install 'lmmfast[dask]'   (installs dask[dataframe], distributed and pyarrow)"
SPLIT_EVERY = 8   # partials merged per task of the tree reduction


def _import_dask():
    try:
        import dask
        import dask.dataframe as dd
    except ImportError as exc:
        raise ImportError(
            "fitting a Dask DataFrame or Parquet files needs the optional dependency "
            f"Dask, which is not installed: {INSTALL_HINT}") from exc
    return dask, dd


PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def is_partitioned(data) -> bool:
    """Whether ``data`` is a Dask DataFrame or Parquet data: a file ending in
    .parquet/.parq/.pq, a glob, a directory or a URL such as ``s3://bucket/dir``."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        return isinstance(path, str) and (
            path.lower().endswith(PARQUET_SUFFIXES) or any(c in path for c in "*?[")
            or "://" in path or os.path.isdir(path))
    return type(data).__module__.split(".")[0] in ("dask", "dask_expr") \
        and hasattr(data, "to_delayed") and hasattr(data, "columns")


def as_dask_frame(data):
    """A Dask DataFrame: ``data`` itself, or the Parquet files at a path or glob."""
    _, dd = _import_dask()
    if not isinstance(data, (str, os.PathLike)):
        return data
    try:
        return dd.read_parquet(os.fspath(data))
    except ImportError as exc:
        raise ImportError(f"reading Parquet files needs pyarrow: {INSTALL_HINT}") from exc
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"cannot read Parquet data at {os.fspath(data)!r}: {exc}") from None


def _identity(obj):
    return obj


def distributed_client():
    """The ``distributed.Client`` Dask is computing with, if any."""
    from dask.base import get_scheduler
    client = getattr(get_scheduler(), "__self__", None)
    return client if type(client).__module__.startswith("distributed") else None


def shared(obj, prefix: str = "lmmfast"):
    """``obj`` as one Delayed that every task can use: scattered to the cluster once
    when a ``distributed.Client`` is computing, else a single graph key."""
    dask, _ = _import_dask()
    client = distributed_client()
    if client is not None:
        return dask.delayed(_identity, pure=True)(client.scatter(obj, hash=False))
    return dask.delayed(obj, name=f"{prefix}-{uuid.uuid4().hex}", traverse=False)


def _merge_all(merge, *parts):
    return reduce(merge, parts)


def _call(fn, spec, piece):
    return fn(spec, piece)


def tree_reduce(parts: list, merge, split_every: int = SPLIT_EVERY):
    """One Delayed: the Delayed ``parts`` merged ``split_every`` at a time, as a tree."""
    dask, _ = _import_dask()
    level = list(parts)
    while len(level) > 1:
        level = [dask.delayed(_merge_all, pure=True)(merge, *level[i:i + split_every])
                 for i in range(0, len(level), split_every)]
    return level[0]


class DaskReducer:
    """Passes over the partitions of a Dask DataFrame, summed by a tree reduction.

    Each pass sends the spec to the cluster once and brings back only the
    reduced result; ``bytes_to_client`` adds up the sizes of those results.
    """

    def __init__(self, ddf, split_every: int = SPLIT_EVERY):
        self.ddf = ddf
        self.split_every = max(2, int(split_every))
        self.bytes_to_client = 0
        self.passes = 0

    @property
    def meta(self) -> pd.DataFrame:
        return self.ddf._meta

    def run(self, spec: DesignSpec, fn, merge, finish=None):
        dask, _ = _import_dask()
        from dask.sizeof import sizeof
        parts = self.ddf[piece_columns(spec)].to_delayed()
        spec_d = shared(spec, "lmmfast-spec")
        level = [dask.delayed(_call, pure=True)(fn, spec_d, p) for p in parts]
        final = tree_reduce(level, merge, self.split_every)
        final = final if finish is None else dask.delayed(finish, pure=True)(final)
        (result,) = dask.compute(final)
        self.passes += 1
        self.bytes_to_client += int(sizeof(result))
        return result


# ------------------------------------------------------------ row results
def _partition_rows(part: pd.DataFrame, params, what: str) -> pd.Series:
    spec, keep, beta, b = params
    rows = spec.rows(part)
    kind = "residuals" if what == "pearson" else what
    values = row_values(spec, keep, beta, b, rows, kind)
    if what == "pearson" and rows.weights is not None:
        values = values * np.sqrt(rows.weights)
    return pd.Series(values, index=rows.row_index, name=what)


# ------------------------------------------------------- exact quantiles
def _bin_keys(values: np.ndarray) -> np.ndarray:
    """An order-preserving 24-bit key of each double (sign, exponent, 12 mantissa bits)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)   # -0.0 as +0.0
    neg = (bits >> np.uint64(63)).astype(bool)
    key = np.where(neg, ~bits, bits | np.uint64(1 << 63))
    return (key >> np.uint64(40)).astype(np.int64)


def _histogram(part: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    keys = _bin_keys(part.to_numpy())
    return sorted_unique(keys, np.ones(len(keys), dtype=np.int64))


def _merge_histograms(a, b):
    return sorted_unique(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))


def _values_in(part: pd.Series, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = part.to_numpy(dtype=np.float64)
    v = v[np.isin(_bin_keys(v), keys)]
    return sorted_unique(v, np.ones(len(v), dtype=np.int64))


def _merge_values(a, b):
    return _merge_histograms(a, b)


def exact_quantiles(series, probs, split_every: int = SPLIT_EVERY) -> np.ndarray:
    """Quantiles of a Dask Series, exactly as ``numpy.quantile`` (linear), in two passes.

    The first pass counts the values in fine bins (24 leading bits of each
    double), the second brings back only the values in the bins that hold the
    order statistics needed.
    """
    dask, _ = _import_dask()
    parts = series.to_delayed()
    keys, counts = dask.compute(tree_reduce(
        [dask.delayed(_histogram, pure=True)(p) for p in parts], _merge_histograms,
        split_every))[0]
    n = int(counts.sum())
    if n == 0:
        return np.full(len(probs), np.nan)
    h = (n - 1) * np.asarray(probs, dtype=np.float64)
    lo = np.floor(h).astype(np.int64)
    ranks = np.unique(np.concatenate([lo, np.minimum(lo + 1, n - 1)]))
    cum = np.cumsum(counts)
    bins = np.searchsorted(cum, ranks, side="right")
    wanted = np.unique(keys[bins])
    values, vcounts = dask.compute(tree_reduce(
        [dask.delayed(_values_in, pure=True)(p, wanted) for p in parts], _merge_values,
        split_every))[0]
    start = dict(zip(keys.tolist(), (cum - counts).tolist()))
    vkeys = _bin_keys(values)
    order_stat = {}
    for r, b in zip(ranks.tolist(), bins.tolist()):
        sel = vkeys == keys[b]
        within = np.cumsum(vcounts[sel])
        order_stat[r] = values[sel][np.searchsorted(within, r - start[int(keys[b])], side="right")]
    a = np.array([order_stat[r] for r in lo.tolist()])
    b = np.array([order_stat[min(r + 1, n - 1)] for r in lo.tolist()])
    t = h - lo
    diff = b - a
    out = a + diff * t
    upper = t >= 0.5
    out[upper] = (b - diff * (1 - t))[upper]
    return out


def _complete_rows(part: pd.DataFrame, spec: DesignSpec) -> pd.DataFrame:
    rows = spec.rows(part, coded=False)
    return part if rows.keep is None else part[rows.keep]


def _predict_partition(part: pd.DataFrame, fit, re_form, allow_new_levels, offset,
                       spec=None) -> pd.Series:
    from ..predict import predict as predict_rows
    if spec is not None:
        part = _complete_rows(part, spec)
    kwargs = {} if offset is None else {"offset": offset}
    values = predict_rows(fit, part, re_form=re_form, allow_new_levels=allow_new_levels,
                          **kwargs)
    return pd.Series(np.asarray(values, dtype=np.float64), index=part.index, name="predict")


def _lean(fit):
    """A copy of a fitted model with only its parameter-level state (no rows, no factor)."""
    fit._solution   # computed while the factor is at hand
    lean = copy.copy(fit)
    for name in ("fitted", "residuals", "_resid_quantiles", "_evaluator", "_optimum_plan",
                 "_refit_plan", "_inner_columns", "_rows"):
        lean.__dict__.pop(name, None)
    lean.remats = [copy.copy(r) for r in fit.remats]
    for r in lean.remats:
        r.refs = np.zeros(0, dtype=np.int64)
        r.z = np.zeros((0, r.k))
    for name in ("_core", "_a", "_layout", "_ddf", "_spec", "x", "row_index"):
        if name in lean.__dict__:
            setattr(lean, name, None)
    held = {name: None if getattr(fit, name) is None else np.zeros(0)
            for name in ("weights", "offset")}   # (whether the fit has them)
    lean.resp = fit.resp.replace(y=None, working_y=None, working_weights=None, **held)
    return lean


def predict(fit, newdata, re_form=None, allow_new_levels: bool = False,
            offset=None):
    """Predictions of any fitted model for a Dask DataFrame, partition by partition.

    As ``LinearMixedModel.predict`` (lmmfast.predict) on each partition; returns
    a Dask Series with the partitions' index.  ``offset`` is a column name of
    ``newdata`` (or a scalar).
    """
    fit._require_fit()
    if offset is not None and not isinstance(offset, (str, int, float)):
        raise DataError("for a Dask newdata the offset must be a column name or a scalar")
    lean = shared(_lean(fit), "lmmfast-fit")
    meta = pd.Series([], dtype="float64", name="predict")
    return newdata.map_partitions(_predict_partition, lean, re_form, allow_new_levels,
                                  offset, meta=meta)


class DaskRows:
    """The rows of a Dask frame: row results are Dask Series computed on the cluster."""

    HELD_BY = "a model of a Dask DataFrame"
    ADVICE = ("compute the Dask DataFrame to pandas and fit that in memory, "
              "lmmfast.lmer(formula, ddf.compute())")

    def __init__(self, ddf, spec: DesignSpec, keep: np.ndarray):
        self.ddf = ddf
        self.spec = spec
        self.keep = keep

    def series(self, model, what: str):
        """``what`` ("fitted", "residuals" or "pearson") of every row, as a Dask Series."""
        beta, b = row_parameters(model)
        params = shared((self.spec, self.keep, beta, b), "lmmfast-rows")
        meta = pd.Series([], dtype="float64", name=what)
        return self.ddf.map_partitions(_partition_rows, params, what, meta=meta)

    def fitted(self, model):
        return self.series(model, "fitted")

    def residuals(self, model):
        return self.series(model, "residuals")

    def predict(self, model, re_form, allow_new_levels: bool):
        """Predictions for the fit's rows with ``re_form``: a Dask Series."""
        lean = shared(_lean(model), "lmmfast-fit")
        meta = pd.Series([], dtype="float64", name="predict")
        return self.ddf.map_partitions(_predict_partition, lean, re_form, allow_new_levels,
                                       None, self.spec, meta=meta)
