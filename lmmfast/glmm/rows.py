"""The rows of a GLMM in chunks, and what a pass of PIRLS computes on one chunk.

A pass at (beta, b = Lambda u) forms each row's linear predictor, mean and
unit deviance (docs/theory.md, eqs. 91, 92) and, where a factor is to be
re-formed, the working weights and response (eq. 93) whose cross-products it
adds to the factor's accumulator (eq. 12).  It goes one chunk of rows at a
time, so a fit holds no per-row array beyond the design and one chunk's
workspace, however many rows there are.  The functions ``*_partition`` are
what a pass computes on one partition of the rows (a list of chunks): in this
process (``LocalRows``, one partition) or on a Dask cluster (``glmm.dask``).  A chunk's arrays are views of the
design's where these are contiguous; a constant column (unit prior weights,
a zero offset) is one shared chunk of its value.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import _crossprod, _pirls
from ..design.fixed import reduced_rows

__all__ = ["Kernel", "LocalRows", "PASS_ROWS", "RowChunk", "Workspace", "aic_partition",
           "at_rows", "extreme_partition", "merge_pass", "merge_start", "merge_sums",
           "pass_partition", "split_rows", "start_partition", "values_partition",
           "whole_counts"]

PASS_ROWS = 16384   # rows per chunk of a pass (its workspace stays in cache)


@dataclass
class RowChunk:
    """Rows ``start:stop`` of the design (C-contiguous arrays)."""

    start: int
    stop: int
    x: np.ndarray              # m x p
    y: np.ndarray
    wt: np.ndarray             # prior weights
    trials: np.ndarray         # R's n (trials of cbind, else 1)
    offset: np.ndarray
    refs: list[np.ndarray]     # per term (internal order), int64 level codes
    z: list[np.ndarray]        # per term, m x k

    def __post_init__(self):
        self.size = self.stop - self.start   # (read at every pass: an attribute)

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


def _constant(a: np.ndarray) -> bool:
    """Whether ``a`` is a broadcast constant (stride 0)."""
    return a.ndim == 1 and len(a) > 1 and a.strides[0] == 0


def _chunk_of(a: np.ndarray, start: int, stop: int, shared: dict, dtype=np.float64):
    if _constant(a):
        key = (float(a[0]), stop - start)
        if key not in shared:
            col = np.full(stop - start, float(a[0]))
            col.flags.writeable = False
            shared[key] = col
        return shared[key]
    return np.ascontiguousarray(a[start:stop], dtype=dtype)


@dataclass
class Kernel:
    """What a pass over rows needs of the model: the compiled link and family codes
    and which columns of each term's z are all 1 (small; sent to every partition)."""

    link: int
    family: int
    unit: list[list[bool]]


def split_rows(design, chunk_rows: int | None = None) -> list[RowChunk]:
    """The design's rows in chunks of at most ``chunk_rows`` (default ``PASS_ROWS``;
    views where contiguous)."""
    chunk_rows = chunk_rows or PASS_ROWS
    n = design.nobs
    inner = design.inner
    shared: dict = {}
    out = []
    for start in range(0, max(n, 1), chunk_rows):
        stop = min(start + chunk_rows, n)
        out.append(RowChunk(
            start, stop, np.ascontiguousarray(design.x[start:stop], dtype=np.float64),
            _chunk_of(design.y, start, stop, shared),
            _chunk_of(design.prior_weights, start, stop, shared),
            _chunk_of(design.trials, start, stop, shared),
            _chunk_of(design.offset, start, stop, shared),
            [np.ascontiguousarray(r.refs[start:stop], dtype=np.int64) for r in inner],
            [np.ascontiguousarray(r.z[start:stop], dtype=np.float64) for r in inner]))
    return out


class Workspace:
    """Per-row buffers of one chunk (eta, mu, unit deviances, working weights and
    response; the weighted rows whose cross-products a pass adds to A), allocated
    once at the largest chunk's size and reused by every pass; and each chunk
    bound to them (``bound``)."""

    def __init__(self, rows: int):
        self.rows = rows
        self._buf = np.empty((7, rows))
        self._views: dict[int, tuple] = {}
        self._wide: dict = {}
        self._bound: dict[int, tuple] = {}

    def take(self, m: int):
        """(eta, mu, dev, sqrt_w, zwork, fixed, mu_eta) of a chunk of ``m`` rows."""
        views = self._views.get(m)
        if views is None:
            views = self._views[m] = tuple(self._buf[:, :m])
        return views

    def _rows(self, key, m: int, cols: int) -> np.ndarray:
        """The first ``m`` rows of the buffer ``key`` (``rows`` x ``cols``)."""
        buf = self._wide.get(key)
        if buf is None or buf.shape[1] != cols:
            buf = self._wide[key] = np.empty((self.rows, cols))
        return buf[:m]

    def bound(self, c: RowChunk, kern: Kernel) -> _pirls.RowPass:
        """The chunk ``c`` bound to these buffers: the steps of a pass over it, one
        compiled call each (made once per chunk and kernel)."""
        entry = self._bound.get(id(c))
        if entry is not None and entry[0] is c and entry[1] is kern:
            return entry[2]
        m = c.size
        rp = _pirls.RowPass(kern.link, kern.family, c.x, c.y, c.wt, c.offset, c.refs, c.z,
                            kern.unit, self.take(m), self._rows("xy_u", m, 1),
                            self._rows("xy_joint", m, c.x.shape[1] + 1),
                            [self._rows(("z", t), m, zz.shape[1]) for t, zz in enumerate(c.z)])
        self._bound[id(c)] = (c, kern, rp)
        return rp


def at_rows(c: RowChunk, kern: Kernel, beta: np.ndarray, b: list[np.ndarray],
            ws: Workspace):
    """eta = o + X beta + Z b, mu and the unit deviances of the chunk (eqs. 91, 92)
    into ``ws``, in one compiled loop; returns (sum of the unit deviances, whether
    every mu is in the family's range)."""
    return ws.bound(c, kern).evaluate(beta, b)


# ------------------------------------------------------------ what a partition computes
# Each function below works on one partition of the rows (a list of chunks) with a
# workspace; the partitions' results are summed (``LocalRows`` has one partition).

def pass_partition(chunks: list[RowChunk], ws: Workspace, acc, layout, kern: Kernel,
                   beta: np.ndarray, b: list[np.ndarray], joint: bool, newton: bool):
    """A PIRLS pass over the partition at (beta, b): (sum of the unit deviances,
    whether every mu is in the family's range, whether the observed information's
    weights were used, whether the working weights and response are finite).

    The weighted cross-products of [Z X z] (X where ``joint``) at the working
    weights are added to ``acc`` (A's accumulator: one column plain, two
    double-double, eq. 12).  Stops at the first chunk with a mu off the range
    (``_pirls.pass_chunks``, the compiled PIRLS loop's own pass).
    """
    return _pirls.pass_chunks([ws.bound(c, kern) for c in chunks], beta, b, joint, newton,
                              acc, layout.accumulation_codes, layout.patterns)


def aic_partition(chunks: list[RowChunk], ws: Workspace, kern: Kernel, family,
                  trials_given: bool, beta: np.ndarray, b: list[np.ndarray] | None,
                  at_mode: bool = False) -> float:
    """The family's aic (eq. 99) summed over the partition at (beta, b), with the
    binomial's trials m as R takes them from all rows (n where any n > 1, else wt);
    ``at_mode``: the workspace holds the one chunk's rows there."""
    total = 0.0
    for c in chunks:
        if not at_mode:
            at_rows(c, kern, beta, b, ws)
        total += family.aic_rows(c.y, c.trials if trials_given else c.wt, ws.take(c.size)[1],
                                 c.wt)
    return total


def extreme_partition(chunks: list[RowChunk], ws: Workspace, kern: Kernel, binomial: bool,
                      beta: np.ndarray, b: list[np.ndarray], tiny: float = 1e-8) -> int:
    """Rows whose mean is numerically 0 (or 1 for binomial) at (beta, b)."""
    n = 0
    for c in chunks:
        at_rows(c, kern, beta, b, ws)
        mu = ws.take(c.size)[1]
        n += int(((mu < tiny) | (mu > 1 - tiny)).sum()) if binomial else int((mu < tiny).sum())
    return n


def values_partition(chunks: list[RowChunk], ws: Workspace, kern: Kernel, family,
                     beta: np.ndarray, b: list[np.ndarray], what: str) -> np.ndarray:
    """One value per row at (beta, b): ``eta``, ``mu``, the unit deviances ``dev``
    (eqs. 91, 92), or lme4's residuals of type ``response`` (y - mu),
    ``deviance`` (sign(y - mu) sqrt(d)), ``pearson`` ((y - mu) sqrt(a / V(mu))) or
    ``working`` ((y - mu) / mu')."""
    out = []
    for c in chunks:
        at_rows(c, kern, beta, b, ws)
        eta, mu, dev = ws.take(c.size)[:3]
        if what in ("eta", "mu", "dev"):
            out.append({"eta": eta, "mu": mu, "dev": dev}[what].copy())
            continue
        r = c.y - mu
        if what == "response":
            out.append(r)
        elif what == "deviance":
            out.append(np.sign(r) * np.sqrt(np.clip(dev, 0.0, None)))
        elif what == "pearson":
            out.append(r * np.sqrt(c.wt / family.variance(mu)))
        else:
            out.append(r / family.mu_eta(eta))
    return np.concatenate(out) if out else np.zeros(0)


def start_partition(chunks: list[RowChunk], ws: Workspace, family) -> np.ndarray:
    """Rows with the R of W^(1/2) [X z] at R's mustart (one weighted least-squares
    step, lme4's first PIRLS iteration), by a QR over the chunks (``reduced_rows``)."""
    def scaled():
        for c in chunks:
            mu = family.mustart(c.y, c.wt)
            eta = family.linkfun(mu)
            mu_eta = family.mu_eta(eta)
            sw = np.sqrt(c.wt * mu_eta * mu_eta / family.variance(mu))
            yield np.column_stack([c.x * sw[:, None], (eta - c.offset + (c.y - mu) / mu_eta) * sw])
    return reduced_rows(scaled(), chunks[0].x.shape[1] + 1)


def merge_pass(a: tuple, b: tuple) -> tuple:
    """Two partitions' results of ``pass_partition`` combined."""
    return (a[0] + b[0], a[1] and b[1], a[2] and b[2], a[3] and b[3])


def merge_start(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return reduced_rows([a, b], a.shape[1])


def merge_sums(a: tuple, b: tuple) -> tuple:
    """Two partitions' tuples of sums combined, item by item."""
    return tuple(x + y for x, y in zip(a, b))


def whole_counts(m: np.ndarray, y: np.ndarray) -> bool:
    """Whether every m y is a whole number (the successes or counts whose aic is
    the sum of unit deviances plus a constant, eq. 99)."""
    return bool(np.all(np.abs(m * y - np.round(m * y)) <= 1e-9 * np.maximum(1.0, m)))


class LocalRows:
    """The rows of a model held in this process, in chunks: one partition, or
    with ``set_workers(n)`` n partitions of consecutive chunks that threads pass
    over at once (the compiled loops release the GIL), merged as a cluster's."""

    def __init__(self, design, chunk_rows: int | None = None):
        self.chunks = split_rows(design, chunk_rows)
        self.ws = Workspace(max(c.size for c in self.chunks))
        self.single = len(self.chunks) == 1
        self.nobs = design.nobs
        d = design
        self.trials_given = bool((d.trials > 1).any())
        self.whole = whole_counts(d.trials if self.trials_given else d.prior_weights, d.y)
        self._parts = [(self.chunks, self.ws)]

    @property
    def workers(self) -> int:
        return len(self._parts)

    def set_workers(self, n: int) -> None:
        """Pass over the rows in ``n`` partitions (at most one a chunk), each with its
        workspace, on as many threads."""
        n = max(1, min(int(n), len(self.chunks)))
        if n == self.workers:
            return
        bounds = np.linspace(0, len(self.chunks), n + 1).round().astype(int)
        groups = [self.chunks[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        self._parts = [(groups[0], self.ws)] + [
            (g, Workspace(max(c.size for c in g))) for g in groups[1:]]

    def _map(self, call):
        """``call(chunks, workspace, index)`` on every partition, on threads."""
        if len(self._parts) == 1:
            return [call(*self._parts[0], 0)]
        return list(_pool().map(lambda i: call(*self._parts[i], i), range(len(self._parts))))

    def run(self, fn, *args, merge=None):
        """``fn(chunks, workspace, *args)`` over the rows, the partitions' results
        combined by ``merge``."""
        if len(self._parts) == 1:
            return fn(self.chunks, self.ws, *args)
        return functools.reduce(merge, self._map(lambda ch, ws, i: fn(ch, ws, *args)))

    def series(self, fn, *args, name: str) -> np.ndarray:
        """``fn(chunks, workspace, *args)``, one value per row (an array here)."""
        return fn(self.chunks, self.ws, *args)

    def run_into(self, acc: np.ndarray, work: dict, fn, *args):
        """``fn(chunks, workspace, acc, *args)``: ``fn`` adds the rows' part of an
        accumulator to ``acc``; a further partition adds to an accumulator of its
        own (kept in ``work``), merged into ``acc`` in order (double-double sums
        exactly: ``_crossprod.dd_merge``)."""
        if len(self._parts) == 1:
            return fn(self.chunks, self.ws, acc, *args)
        accs = [acc] + [_zeroed(work.setdefault(("part", i), {}), acc)
                        for i in range(1, len(self._parts))]

        def call(chunks, ws, i):
            return fn(chunks, ws, accs[i], *args)

        results = self._map(call)
        for other in accs[1:]:
            if acc.shape[1] == 2:
                _crossprod.dd_merge(acc, other)
            else:
                acc += other
        return functools.reduce(merge_pass, results)


def _zeroed(work: dict, like: np.ndarray) -> np.ndarray:
    """A further partition's accumulator shaped as ``like``, kept in its ``work``
    from pass to pass, zeroed."""
    acc = work.get(("acc", like.shape))
    if acc is None:
        acc = work[("acc", like.shape)] = np.zeros_like(like)
    else:
        acc.fill(0.0)
    return acc


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The threads of ``LocalRows``' partitions (one per allowed core; a forked
    process makes its own)."""
    from ..threads import allowed_cores
    return ThreadPoolExecutor(max_workers=allowed_cores(), thread_name_prefix="lmmfast-rows")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.cache_clear)
