"""Block layout of A = [Z X y]^T W [Z X y] and of its factor L, and A's accumulation.

Terms are ordered internally by number of random effects, largest first, so
that the first diagonal block stays block-diagonal and only its off-diagonal
neighbours need a sparse format (theory.md, section "The blocked system").
The layout is pure structure (sizes, kinds, offsets into one flat array per
matrix, sparsity patterns); ``crossproducts`` fills A by summing over row
chunks, so partial cross-products of separate pieces of the data add up to
the same A.  The sums are accumulated in double-double and rounded once, so A
does not depend on how the rows were split into chunks or partitions
(``_crossprod``).
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import _crossprod
from ._cholesky import BLOCK_BLOCKDIAG, BLOCK_DENSE, BLOCK_SPARSE

__all__ = ["BlockLayout", "sparsity_pattern", "crossproducts", "default_workers", "dd_sum",
           "CHUNK_ROWS"]

CHUNK_ROWS = 65536        # rows per chunk when accumulating A
SPARSE_MIN_SIZE = 10000   # level pairs below which an off-diagonal block stays dense
SPARSE_MAX_DENSITY = 0.25


def sparsity_pattern(refs_s: np.ndarray, nl_s: int, refs_t: np.ndarray,
                     nl_t: int) -> tuple[np.ndarray, np.ndarray]:
    """Compressed-column pattern of the level pairs (refs_s[i], refs_t[i]) present.

    Returns ``colptr`` (nl_t + 1) and ``rowidx`` (sorted within each column).
    """
    # in place where possible: for a million rows every temporary is 8 MB
    keys = refs_t.astype(np.int64)
    keys *= nl_s
    keys += refs_s
    keys.sort()
    if len(keys):   # unique by sorting (faster than np.unique for int64 keys)
        first = np.empty(len(keys), dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        keys = keys[first]
        del first
    colptr = np.zeros(nl_t + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // nl_s, minlength=nl_t), out=colptr[1:])
    np.remainder(keys, nl_s, out=keys)   # the row levels
    return colptr, keys


def _bidx(s: int, t: int) -> int:
    return s * (s + 1) // 2 + t


@dataclass
class BlockLayout:
    """Sizes, kinds and flat offsets of every block of A and L (internal term order)."""

    nlev: np.ndarray
    k: np.ndarray
    p1: int
    kind_a: np.ndarray
    kind_l: np.ndarray
    off_a: np.ndarray
    off_l: np.ndarray
    sp_colptr_off: np.ndarray
    sp_rowidx_off: np.ndarray
    colptr: np.ndarray
    rowidx: np.ndarray
    n_a: int
    n_l: int

    @property
    def n_terms(self) -> int:
        return len(self.nlev)

    @classmethod
    def build(cls, refs: list[np.ndarray], nlev: list[int], k: list[int],
              p1: int, patterns: dict | None = None) -> "BlockLayout":
        """Layout for terms (already in internal order) with level codes ``refs``.

        ``patterns`` optionally gives, for a term s, the pattern (colptr, rowidx)
        of the level pairs of block (s, 0), found elsewhere (from data that is not
        in one place); its ``refs`` are then not used.
        """
        T = len(refs)
        q = [nl * kk for nl, kk in zip(nlev, k)]
        nb = (T + 1) * (T + 2) // 2
        kind_a = np.empty(nb, dtype=np.int64)
        kind_a.fill(BLOCK_DENSE)
        kind_l = kind_a.copy()
        off_a = np.zeros(nb, dtype=np.int64)
        off_l = np.zeros(nb, dtype=np.int64)
        cp_off = np.zeros(nb, dtype=np.int64)
        ri_off = np.zeros(nb, dtype=np.int64)
        colptrs, rowidxs = [], []
        n_cp = n_ri = 0
        pos_a = pos_l = 0
        rows = q + [p1]
        for s in range(T + 1):
            for t in range(s + 1):
                b = _bidx(s, t)
                size_a = size_l = rows[s] * rows[t]
                if s == t and s < T:
                    kind_a[b] = BLOCK_BLOCKDIAG
                    size_a = nlev[t] * k[t] * k[t]
                    if t == 0:
                        kind_l[b] = BLOCK_BLOCKDIAG
                        size_l = size_a
                elif t == 0 and s < T and nlev[s] * nlev[0] > SPARSE_MIN_SIZE:
                    colptr, rowidx = patterns[s] if patterns and s in patterns else \
                        sparsity_pattern(refs[s], nlev[s], refs[0], nlev[0])
                    if len(rowidx) < SPARSE_MAX_DENSITY * nlev[s] * nlev[0]:
                        kind_a[b] = kind_l[b] = BLOCK_SPARSE
                        size_a = size_l = len(rowidx) * k[s] * k[0]
                        cp_off[b], ri_off[b] = n_cp, n_ri
                        colptrs.append(colptr)
                        rowidxs.append(rowidx)
                        n_cp += len(colptr)
                        n_ri += len(rowidx)
                off_a[b], off_l[b] = pos_a, pos_l
                pos_a += size_a
                pos_l += size_l
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(1, dtype=np.int64))
        return cls(np.asarray(nlev, dtype=np.int64), np.asarray(k, dtype=np.int64), p1,
                   kind_a, kind_l, off_a, off_l, cp_off, ri_off,
                   cat(colptrs), cat(rowidxs), pos_a, pos_l)

    @functools.cached_property
    def response_offsets(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Where y's cross-products sit in A: the offset of block (T, t) per term,
        q_t per term, and the offset of block (T, T)."""
        T = self.n_terms
        return (np.ascontiguousarray(self.off_a[[_bidx(T, t) for t in range(T)]]),
                np.ascontiguousarray(self.nlev * self.k), int(self.off_a[_bidx(T, T)]))

    def block_a(self, a: np.ndarray, s: int, t: int) -> np.ndarray:
        """The flat slice of ``a`` holding block (s, t)."""
        b = _bidx(s, t)
        end = self.off_a[b + 1] if b + 1 < len(self.off_a) else self.n_a
        return a[self.off_a[b]:end]

    def pattern(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """colptr and rowidx of the sparse block (s, 0)."""
        b = _bidx(s, 0)
        cp0, ri0 = self.sp_colptr_off[b], self.sp_rowidx_off[b]
        colptr = self.colptr[cp0:cp0 + self.nlev[0] + 1]
        return colptr, self.rowidx[ri0:ri0 + colptr[-1]]


def accumulate(layout: BlockLayout, a: np.ndarray, refs: list[np.ndarray],
               z: list[np.ndarray], xy: np.ndarray) -> None:
    """Add one chunk's contribution to A in place (eq. 12).

    ``refs``/``z`` are the chunk's rows of each term (internal order), ``xy`` its
    rows of [X y] (C-contiguous), all already scaled by sqrt(prior weights).
    ``a`` is A (flat, ``n_a``) or a double-double accumulator of A (``n_a x 2``,
    see ``_crossprod``; ``_crossprod.dd_round`` gives A).
    """
    T = layout.n_terms
    dd = a.ndim == 2
    cp = _crossprod
    for s in range(T + 1):
        for t in range(s + 1):
            blk = layout.block_a(a, s, t)
            kind = layout.kind_a[_bidx(s, t)]
            if s == T and t == T:
                (cp.add_xy_xy_dd if dd else cp.add_xy_xy)(xy, blk)
            elif s == T:
                (cp.add_xy_z_dd if dd else cp.add_xy_z)(refs[t], z[t], xy, blk)
            elif s == t:
                (cp.add_diag_dd if dd else cp.add_diag)(refs[t], z[t], blk)
            elif kind == BLOCK_SPARSE:
                colptr, rowidx = layout.pattern(s)
                missing = (cp.add_offdiag_sparse_dd if dd else cp.add_offdiag_sparse)(
                    refs[s], z[s], refs[t], z[t], colptr, rowidx, blk)
                if missing:
                    raise ValueError(f"{missing} rows have level pairs outside the "
                                     f"sparsity pattern of block ({s}, {t})")
            else:
                (cp.add_offdiag_dense_dd if dd else cp.add_offdiag_dense)(
                    refs[s], z[s], refs[t], z[t], int(layout.nlev[s] * layout.k[s]), blk)


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
            xy = np.empty((stop - start, layout.p1))
            xy[:, :-1] = x[start:stop]
            xy[:, -1] = y[start:stop]
            zc = [zz[start:stop] for zz in z]
            if sqrt_w is not None:
                sw = sqrt_w[start:stop, None]
                xy *= sw
                zc = [np.ascontiguousarray(zz * sw) for zz in zc]
            accumulate(layout, acc, [r[start:stop] for r in refs], zc, xy)
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
