"""Accumulation of A = [Z X y]^T W [Z X y] from rows (theory.md, eq. 12).

``add_rows`` adds a chunk of rows (level codes and z of each term, X, y and
sqrt(prior weights)) to a double-double accumulator of A; every path from
data to A goes through it: ``crossproducts`` for rows held in memory (chunks
shared among threads), ``design.reduce`` for pieces of data read one at a
time or on a cluster.  The sums are accumulated in double-double and rounded
once, so A does not depend on how the rows were split into chunks, pieces or
partitions (``_crossprod``).
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _crossprod
from .layout import BlockLayout

__all__ = ["CHUNK_ROWS", "add_rows", "crossproducts", "default_workers",
           "dd_sum", "row_chunks", "set_response"]

CHUNK_ROWS = 65536        # rows per chunk of a pass over rows (A, X's QR, fitted values)


def _buffer(work: dict | None, key, shape: tuple) -> np.ndarray:
    """An array of ``shape`` kept in ``work`` across calls (a new one without
    ``work``): the first rows of the largest asked for under ``key``."""
    if work is None:
        return np.empty(shape)
    view = work.get((key, shape))
    if view is None:
        buf = work.get(key)
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = work[key] = np.empty(shape)
        view = work[(key, shape)] = buf[:shape[0]]
    return view


def add_rows(layout: BlockLayout, acc: np.ndarray, refs: list[np.ndarray],
             z: list[np.ndarray], x: np.ndarray, y: np.ndarray,
             sqrt_w: np.ndarray | None = None, work: dict | None = None) -> None:
    """Add the rows' contribution W^(1/2) [Z X y] to A's accumulator ``acc`` (eq. 12).

    ``refs``/``z``: each term's level codes and z (internal order); ``x``, ``y``
    (the offset removed) and ``sqrt_w`` (None: unit weights) of the same rows.
    ``work``: a dict whose arrays are reused from call to call (a GLMM's PIRLS
    re-forms A over the same rows at every iteration).
    """
    xy = _buffer(work, "xy", (len(y), layout.p1))
    scaled = None
    if sqrt_w is not None:
        sqrt_w = np.ascontiguousarray(sqrt_w, dtype=np.float64)
        scaled = [_buffer(work, ("z", t), zz.shape) for t, zz in enumerate(z)]
    missing = _crossprod.add_chunk(layout.accumulation_codes, layout.patterns, acc, refs, z, x,
                                   np.ascontiguousarray(y, dtype=np.float64), sqrt_w, xy, scaled)
    if missing:
        raise ValueError(f"{missing} rows have level pairs outside the sparsity "
                         f"pattern of A's sparse blocks")


def row_chunks(a: np.ndarray, chunk_rows: int = CHUNK_ROWS):
    """``a`` in consecutive blocks of at most ``chunk_rows`` rows (views)."""
    return (a[start:start + chunk_rows] for start in range(0, max(len(a), 1), chunk_rows))


def set_response(layout: BlockLayout, a: np.ndarray, refs: list[np.ndarray],
                 z: list[np.ndarray], x: np.ndarray, wy: np.ndarray,
                 sqrt_w: np.ndarray | None = None) -> None:
    """Overwrite the parts of A that involve y (Z^T W y, X^T W y, y^T W y) in place.

    ``wy`` is the response with the offset removed, multiplied by the prior
    weights (W y).  Everything else in A depends on the design only, so a
    refit with a new response re-uses it (theory.md, eq. 26).
    """
    off_zy, q, off_xy = layout.response_offsets
    y_raw = wy if sqrt_w is None else wy / sqrt_w ** 2
    _crossprod.set_response(a, off_zy, q, list(refs), list(z), x, wy, y_raw, off_xy)


def default_workers(layout: BlockLayout, n: int, n_chunks: int, cores: int) -> int:
    """Threads for ``crossproducts``: one per core, at most one per chunk, and
    only while the accumulators the further threads hold (A in double-double,
    16 bytes an entry) stay below a quarter of the rows' values [Z X y]."""
    workers = max(1, min(cores, n_chunks))
    row_bytes = 8 * n * (layout.p1 + sum(layout.k.tolist()))
    while workers > 1 and 16 * max(layout.n_a, 1) * (workers - 1) > row_bytes // 4:
        workers -= 1
    return workers


@functools.cache
def _cores() -> int:
    """Number of cores (asked once: the call costs more than a small model's A)."""
    return os.cpu_count() or 1


def crossproducts(layout: BlockLayout, refs: list[np.ndarray], z: list[np.ndarray],
                  x: np.ndarray, y: np.ndarray, sqrt_w: np.ndarray | None = None,
                  chunk_rows: int = CHUNK_ROWS, workers: int | None = None,
                  rounded: bool = True) -> np.ndarray:
    """A = [Z X y]^T W [Z X y] as a flat array, summed over chunks of rows (eq. 12).

    With ``rounded=False``, the double-double accumulator of A (``n_a x 2``)
    instead, for a working basis to be applied before rounding
    (``conditioning.condition``).

    Accumulated in double-double and rounded once: the same doubles as any other
    split of the rows into pieces whose double-double partial sums are merged.
    So the chunks are shared among ``workers`` threads (default: one per core,
    from two chunks on; the kernels release the GIL), each with its own
    accumulator, merged at the end.  By default a thread is added only while
    the accumulators it adds (16 bytes per entry of A) stay below a quarter of
    the rows' values [Z X y]: for a large sparse A (crossed factors) the
    memory matters more than the time.  Ctrl-C stops the kernels within a
    second in one thread; with more, the threads stop after their current chunk.
    """
    n = len(y)
    starts = list(range(0, n, chunk_rows))
    if workers is None:
        workers = default_workers(layout, n, len(starts), _cores() if len(starts) > 1 else 1)
    workers = max(1, min(workers, len(starts)))

    stop_event = threading.Event()   # set by Ctrl-C in the calling thread

    def accumulate_rows(first: int) -> np.ndarray:
        acc = np.zeros((max(layout.n_a, 1), 2))
        for start in starts[first::workers]:
            if stop_event.is_set():
                break
            stop = min(n, start + chunk_rows)
            add_rows(layout, acc, [r[start:stop] for r in refs], [zz[start:stop] for zz in z],
                     x[start:stop], y[start:stop],
                     None if sqrt_w is None else sqrt_w[start:stop])
        return acc

    finish = _crossprod.dd_round if rounded else (lambda acc: acc)
    if workers == 1:
        return finish(accumulate_rows(0))
    with ThreadPoolExecutor(workers) as pool:
        try:
            parts = list(pool.map(accumulate_rows, range(workers)))
        except BaseException:   # KeyboardInterrupt: the threads stop after their chunk
            stop_event.set()
            raise
    total = parts.pop(0)
    while parts:   # each merged accumulator freed before the next (and the rounding)
        _crossprod.dd_merge(total, parts.pop())
    return finish(total)


def dd_sum(values: np.ndarray) -> float:
    """sum(values) accumulated in double-double and rounded once (order-independent)."""
    acc = np.zeros(2)
    _crossprod.add_sum_dd(np.ascontiguousarray(values, dtype=np.float64), acc)
    return float(acc[0] + acc[1])
