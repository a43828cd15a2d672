"""The rows of a GLMM in chunks, and what a pass of PIRLS computes on one chunk.

A pass at (beta, b = Lambda u) forms each row's linear predictor, mean and
unit deviance (docs/theory.md, eqs. 91, 92) and, where a factor is to be
re-formed, the working weights and response (eq. 93) whose cross-products
``predictor.Factor.add`` sums (eq. 12).  It goes one chunk of rows at a
time, so a fit holds no per-row array beyond the design and one chunk's
workspace, however many rows there are.  A chunk's arrays are views of the
design's where these are contiguous; a constant column (unit prior weights,
a zero offset) is one shared chunk of its value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _pirls
PASS_ROWS = 16384   # rows per chunk of a pass (its workspace stays in cache)

__all__ = ["RowChunk", "Workspace", "split_rows", "at_rows", "working_at"]


@dataclass
class RowChunk:
    """Rows ``start:stop`` of the design (C-contiguous arrays)."""

    start: int
    stop: int
    x: np.ndarray              # m x p
    y: np.ndarray
    wt: np.ndarray             # prior weights
    offset: np.ndarray
    refs: list[np.ndarray]     # per term (internal order), int64 level codes
    z: list[np.ndarray]        # per term, m x k

    @property
    def size(self) -> int:
        return self.stop - self.start

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
            _chunk_of(design.y, start, stop, shared), _chunk_of(design.prior_weights, start,
                                                                stop, shared),
            _chunk_of(design.offset, start, stop, shared),
            [np.ascontiguousarray(r.refs[start:stop], dtype=np.int64) for r in inner],
            [np.ascontiguousarray(r.z[start:stop], dtype=np.float64) for r in inner]))
    return out


class Workspace:
    """Per-row buffers of one chunk (eta, mu, unit deviances, working weights and
    response), allocated once at the largest chunk's size and reused by every pass."""

    def __init__(self, rows: int):
        self._buf = np.empty((6, rows))
        self._views: dict[int, tuple] = {}

    def take(self, m: int):
        """(eta, mu, dev, sqrt_w, zwork, fixed) of a chunk of ``m`` rows."""
        views = self._views.get(m)
        if views is None:
            views = self._views[m] = tuple(self._buf[:, :m])
        return views


def at_rows(c: RowChunk, link: int, family: int, beta: np.ndarray, b: list[np.ndarray],
            unit: list[list[bool]], ws: Workspace):
    """eta = o + X beta + Z b, mu and the unit deviances of the chunk (eqs. 91, 92)
    into ``ws``, in one compiled loop; returns (sum of the unit deviances, whether
    every mu is in the family's range)."""
    eta, mu, dev, _, _, fixed = ws.take(c.size)
    return _pirls.evaluate(link, family, c.x, beta, c.offset, c.refs, c.z, b, unit, c.y,
                           c.wt, fixed, eta, mu, dev)


def working_at(c: RowChunk, link: int, family: int, joint: bool, newton: bool,
               ws: Workspace):
    """sqrt of the working weights and the working response (eq. 93) at the chunk's
    eta in ``ws`` (after ``at_rows``): with ``newton`` the observed information's
    where all of them are positive, else Fisher's.  The response is taken net of
    the offset (``joint``: beta in the system, eq. 95) or of o + X beta.  Returns
    (whether the observed information's were used, whether all are finite)."""
    eta, _, _, sw, zwork, fixed = ws.take(c.size)
    base = c.offset if joint else fixed
    observed = newton and _pirls.working_observed(link, family, eta, c.y, c.wt, base, sw,
                                                  zwork)
    finite = observed or _pirls.working(link, family, eta, c.y, c.wt, base, sw, zwork)
    return observed, finite
