"""Block layout of A = [Z X y]^T W [Z X y] and of its factor L.

Terms are ordered internally by number of random effects, largest first, so
that the first diagonal block stays block-diagonal and only its off-diagonal
neighbours need a sparse format (theory.md, section "The blocked system").
The layout is pure structure: sizes, kinds, offsets into one flat array per
matrix, sparsity patterns.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from .._crossprod import PLAN_KINDS
from .._factor import BLOCK_BLOCKDIAG, BLOCK_DENSE, BLOCK_SPARSE

__all__ = ["BlockLayout", "sparsity_pattern", "block_index", "SPARSE_MIN_SIZE",
           "BLOCK_BLOCKDIAG", "BLOCK_DENSE", "BLOCK_SPARSE"]

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


def block_index(s: int, t: int) -> int:
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
                b = block_index(s, t)
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

    def with_p1(self, p1: int) -> BlockLayout:
        """The same layout for [X y] of ``p1`` columns (X's columns dropped)."""
        T = self.n_terms
        size_a = np.diff(np.append(self.off_a, self.n_a))
        size_l = np.diff(np.append(self.off_l, self.n_l))
        rows = (self.nlev * self.k).tolist() + [p1]
        for t in range(T + 1):
            b = block_index(T, t)
            size_a[b] = size_l[b] = p1 * rows[t]
        off_a = np.concatenate([[0], np.cumsum(size_a)[:-1]]).astype(np.int64)
        off_l = np.concatenate([[0], np.cumsum(size_l)[:-1]]).astype(np.int64)
        return dataclasses.replace(self, p1=p1, off_a=off_a, off_l=off_l,
                                   n_a=int(size_a.sum()), n_l=int(size_l.sum()))

    @functools.cached_property
    def response_offsets(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Where y's cross-products sit in A: the offset of block (T, t) per term,
        q_t per term, and the offset of block (T, T)."""
        T = self.n_terms
        return (np.ascontiguousarray(self.off_a[[block_index(T, t) for t in range(T)]]),
                np.ascontiguousarray(self.nlev * self.k), int(self.off_a[block_index(T, T)]))

    @functools.cached_property
    def accumulation_codes(self) -> np.ndarray:
        """Each block (s, t) of A, s >= t, as a row (kind, s, t, start, end, q_s):
        its kind (an index into ``_crossprod.PLAN_KINDS``: [X y] with itself or
        with term t, a diagonal block, a sparse or a dense off-diagonal one), its
        flat slice of A and the rows of term s (``_crossprod.add_chunk``'s plan)."""
        T = self.n_terms
        xy_xy, xy_z, diag, sparse, dense = range(len(PLAN_KINDS))
        off = self.off_a.tolist() + [int(self.n_a)]
        kinds = self.kind_a.tolist()
        rows = (self.nlev * self.k).tolist() + [int(self.p1)]
        plan = []
        for s in range(T + 1):
            for t in range(s + 1):
                b = block_index(s, t)
                if s == T:
                    kind = xy_xy if t == T else xy_z
                elif s == t:
                    kind = diag
                else:
                    kind = sparse if kinds[b] == BLOCK_SPARSE else dense
                plan.append((kind, s, t, off[b], off[b + 1], rows[s]))
        return np.array(plan, dtype=np.int64).reshape(-1, 6)

    @functools.cached_property
    def patterns(self) -> list:
        """(colptr, rowidx) of each term's sparse block (s, 0) (``pattern``), else None."""
        return [self.pattern(s) if s > 0 and self.kind_a[block_index(s, 0)] == BLOCK_SPARSE
                else None for s in range(self.n_terms)]

    def block_a(self, a: np.ndarray, s: int, t: int) -> np.ndarray:
        """The flat slice of ``a`` holding block (s, t)."""
        b = block_index(s, t)
        end = self.off_a[b + 1] if b + 1 < len(self.off_a) else self.n_a
        return a[self.off_a[b]:end]

    def pattern(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """colptr and rowidx of the sparse block (s, 0)."""
        b = block_index(s, 0)
        cp0, ri0 = self.sp_colptr_off[b], self.sp_rowidx_off[b]
        colptr = self.colptr[cp0:cp0 + self.nlev[0] + 1]
        return colptr, self.rowidx[ri0:ri0 + colptr[-1]]
