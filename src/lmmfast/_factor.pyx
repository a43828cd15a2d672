# cython: language_level=3
"""Blocked Cholesky factor L(theta) of the penalised system and the profiled criteria.

The symmetric matrix

    A = [Z X y]^T W [Z X y]                                   (theory.md, eq. 12)

is held as a lower-triangular array of blocks: one block row/column per
random-effects term (internal order, largest first) and a last one for the
fixed-effects columns with the response appended, ``[X y]``.  For a given
theta the factor L of

    [Lambda^T Z^T W Z Lambda + I, Lambda^T Z^T W X, Lambda^T Z^T W y]
    [ ...                         X^T W X,          X^T W y         ]   (eq. 13)
    [ ...                         ...,              y^T W y         ]

is computed block by block (left-looking); every number the optimiser and the
results need is read off L: log|L_Z|^2, log|R_X|^2, the penalised residual sum
of squares, beta-hat and the spherical conditional modes u.  The derivatives
in theta are computed from L by ``_gradient`` and ``_hessian``.

Block kinds (``kind_a`` / ``kind_l``, declared in ``_factor.pxd``):

* ``BLOCKDIAG``: the diagonal block of a term, ``nl`` dense ``k x k`` blocks;
* ``DENSE``: column-major, leading dimension = number of rows;
* ``SPARSE``: blocked compressed-column storage over the levels of the first
  term: for level ``j`` of term 0, entries ``colptr[j]..colptr[j+1]`` give the
  level (``rowidx``) of the row term and a dense ``k_s x k_0`` block.

Only blocks (s, 0) with s a random-effects term may be sparse; their pattern
does not change under the factorisation because L_00 is block-diagonal.
"""

import numpy as np
cimport cython
cimport numpy as cnp
from libc.math cimport fma, log, sqrt, M_PI, INFINITY
from libc.string cimport memset

from lmmfast._kernels cimport (blas_int, gemm_nt, syrk_n, trsm_rlt, trsm_lln, trsv_lt,
                               gemv_t, potrf_l, rdiv_lt_small, interrupted, raise_pending)

cnp.import_array()

# factors with more than SIGNAL_CHECK_SIZE values of L ask for signals between their steps
cdef enum:
    SIGNAL_CHECK_SIZE = 1 << 16

BLOCK_BLOCKDIAG = BLOCKDIAG
BLOCK_DENSE = DENSE
BLOCK_SPARSE = SPARSE


cdef inline void small_lt_a_l(const double* lam_s, Py_ssize_t ks,
                              const double* src, Py_ssize_t ld_src,
                              Py_ssize_t nrow,
                              const double* lam_t, Py_ssize_t kt,
                              double* dst, Py_ssize_t ld_dst,
                              double* work) noexcept nogil:
    """dst = lam_s^T src lam_t for one ``nrow x kt`` block (``lam_s`` NULL: identity).

    ``lam`` are k x k lower-triangular, column-major.  ``work`` holds at least
    ``nrow * kt`` doubles.  With ``lam_s`` given, ``nrow == ks``.
    """
    cdef Py_ssize_t i, j, m
    cdef double acc, w00, w01, w10, w11, s0, s1
    if kt == 2 and (lam_s == NULL or ks == 2):
        # the loops below unrolled for k = 2, the same operations in the same order
        if lam_s == NULL:
            for i in range(nrow):
                s0 = src[i]
                s1 = src[i + ld_src]
                dst[i] = 0.0 + s0 * lam_t[0] + s1 * lam_t[1]
                dst[i + ld_dst] = 0.0 + s1 * lam_t[3]
            return
        w00 = 0.0 + src[0] * lam_t[0] + src[ld_src] * lam_t[1]
        w10 = 0.0 + src[1] * lam_t[0] + src[1 + ld_src] * lam_t[1]
        w01 = 0.0 + src[ld_src] * lam_t[3]
        w11 = 0.0 + src[1 + ld_src] * lam_t[3]
        dst[0] = 0.0 + lam_s[0] * w00 + lam_s[1] * w10
        dst[1] = 0.0 + lam_s[3] * w10
        dst[ld_dst] = 0.0 + lam_s[0] * w01 + lam_s[1] * w11
        dst[1 + ld_dst] = 0.0 + lam_s[3] * w11
        return
    # work = src * lam_t : column j = sum_{m >= j} src[:, m] * lam_t[m, j]
    for j in range(kt):
        for i in range(nrow):
            acc = 0.0
            for m in range(j, kt):
                acc = acc + src[i + m * ld_src] * lam_t[m + j * kt]
            work[i + j * nrow] = acc
    if lam_s == NULL:
        for j in range(kt):
            for i in range(nrow):
                dst[i + j * ld_dst] = work[i + j * nrow]
        return
    # dst = lam_s^T work : row i = sum_{m >= i} lam_s[m, i] * work[m, :]
    for j in range(kt):
        for i in range(ks):
            acc = 0.0
            for m in range(i, ks):
                acc = acc + lam_s[m + i * ks] * work[m + j * nrow]
            dst[i + j * ld_dst] = acc


cdef inline void small_sub_abt(const double* a, Py_ssize_t lda,
                               const double* b, Py_ssize_t ldb,
                               Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                               double* c, Py_ssize_t ldc) noexcept nogil:
    """C -= A B^T for small blocks (A: m x k, B: n x k, C: m x n)."""
    cdef Py_ssize_t i, j, l
    cdef double bjl
    for l in range(k):
        for j in range(n):
            bjl = b[j + l * ldb]
            if bjl != 0.0:
                for i in range(m):
                    c[i + j * ldc] -= a[i + l * lda] * bjl


cdef enum:
    PANEL_BYTES = 524288   # columns of a dense block updated together by sparse loops

cdef enum:
    SKINNY_ROWS = 256      # up to this many rows below a dense L_tt: one left-side dtrsm


PACK_BYTES = 1 << 16   # arrays up to this size are packed together by ``packed``


def packed(*arrays):
    """The C-contiguous float64/int64 ``arrays``, those up to ``PACK_BYTES`` copied
    into one allocation (each from a 64-byte line of its own), the larger ones
    as they are.

    The core's metadata and work arrays are many and small; an evaluation
    reads most of them.  Apart, each sits on a different page of the heap;
    together they take a few, which is what an evaluation that follows other
    work (whose memory has pushed the core's out of the caches) pays for.
    """
    sizes = [(a.nbytes + 63) // 64 * 8 if a.nbytes <= PACK_BYTES else 0 for a in arrays]
    buf = np.empty(sum(sizes) + 8, dtype=np.float64)
    pos = (-buf.ctypes.data % 64) // 8
    out = []
    for a, size in zip(arrays, sizes):
        if size == 0:
            out.append(a)
            continue
        view = buf[pos:pos + a.size].view(a.dtype).reshape(a.shape)
        view[...] = a
        out.append(view)
        pos += size
    return out


cdef class BlockedFactor:
    """The blocked factor L(theta) and the profiled (RE)ML criteria computed from it.

    Parameters
    ----------
    nlev, k : int64 arrays (n_terms,)
        Number of levels and of random effects per level of each term.
    p1 : int
        Number of fixed-effects columns plus one (the response).
    kind_a, kind_l, off_a, off_l : int64 arrays (n_blocks,)
        Kind and offset into the flat value arrays of every block of A and L.
    sp_colptr_off, sp_rowidx_off : int64 arrays (n_blocks,)
        For SPARSE blocks: offsets into ``colptr`` and ``rowidx``.
    colptr, rowidx : int64 arrays
        Concatenated sparsity patterns of all SPARSE blocks.
    a : float64 array
        The cross-products A (flat, shared with the caller: refits with a new
        response overwrite it in place).
    n_l : int
        Length of the flat storage of L.
    nobs : float
        Number of observations (with prior weights: of those with w > 0).
    log_det_w : float
        sum(log w) over the prior weights, 0 without weights (eqs. 18, 20).
    """

    def __init__(self, nlev, k, Py_ssize_t p1, kind_a, kind_l, off_a, off_l,
                 sp_colptr_off, sp_rowidx_off, colptr, rowidx, a,
                 Py_ssize_t n_l, double nobs, double log_det_w=0.0):
        cdef Py_ssize_t t, nt, b, kmax = 1, maxrows
        self.nlev = np.ascontiguousarray(nlev, dtype=np.int64)
        self.k = np.ascontiguousarray(k, dtype=np.int64)
        nt = self.nlev.shape[0]
        self.n_terms = nt
        self.p1 = p1
        self.q = np.asarray(self.nlev) * np.asarray(self.k)
        self.kind_a = np.ascontiguousarray(kind_a, dtype=np.int64)
        self.kind_l = np.ascontiguousarray(kind_l, dtype=np.int64)
        self.off_a = np.ascontiguousarray(off_a, dtype=np.int64)
        self.off_l = np.ascontiguousarray(off_l, dtype=np.int64)
        self.sp_cp = np.ascontiguousarray(sp_colptr_off, dtype=np.int64)
        self.sp_ri = np.ascontiguousarray(sp_rowidx_off, dtype=np.int64)
        self.colptr = np.ascontiguousarray(colptr, dtype=np.int64)
        if len(rowidx) == 0:
            rowidx = np.zeros(1, dtype=np.int64)
        for t in range(nt):
            b = bidx(t, 0)
            if t > 0 and kind_l[b] == SPARSE:
                # the sparse kernels rely on rows ascending within each column
                cp = np.asarray(colptr[sp_colptr_off[b]:sp_colptr_off[b] + self.nlev[0] + 1])
                starts = cp[:self.nlev[0]]
                ri = np.asarray(rowidx[sp_rowidx_off[b]:sp_rowidx_off[b] + cp[self.nlev[0]]])
                inner = np.ones(len(ri), dtype=bool)
                inner[starts[starts < len(ri)]] = False
                if len(ri) and not (np.diff(ri)[inner[1:]] > 0).all():
                    raise ValueError(f"rowidx of block ({t}, 0) is not strictly "
                                     "ascending within each column")
        self.rowidx = np.ascontiguousarray(rowidx, dtype=np.int64)
        if not (isinstance(a, np.ndarray) and a.dtype == np.float64
                and a.flags.c_contiguous):
            raise TypeError("a must be a contiguous float64 array")
        self.a_values = a
        self.a = a
        self.l_values = np.zeros(max(n_l, 1), dtype=np.float64)
        self.l = self.l_values
        offs = np.zeros(nt + 1, dtype=np.int64)
        toff = np.zeros(nt + 1, dtype=np.int64)
        for t in range(nt):
            offs[t + 1] = offs[t] + self.k[t] * self.k[t]
            toff[t + 1] = toff[t] + self.k[t] * (self.k[t] + 1) // 2
            kmax = max(kmax, self.k[t])
        self.lam_off = offs
        self.theta_off = toff
        self.n_theta = toff[nt]
        self.lam = np.zeros(max(offs[nt], 1), dtype=np.float64)
        maxrows = max(p1, kmax)
        self.work = np.zeros(maxrows * kmax + kmax * kmax, dtype=np.float64)
        nbuf = 1
        for t in range(1, nt):
            maxrows = sum(self.q[s] for s in range(t + 1, nt)) + p1
            if maxrows <= SKINNY_ROWS:
                nbuf = max(nbuf, maxrows * self.q[t])
        self.tbuf = np.zeros(nbuf, dtype=np.float64)
        self.cursor = np.zeros(max(self.nlev[0], 1) if nt > 0 else 1, dtype=np.int64)
        self.nobs = nobs
        self.log_det_w = log_det_w
        self.last_info = 0
        self.n_updates = 0
        self.comp_valid = False

    def pack(self):
        """Move the small metadata and work arrays into one allocation (``packed``).

        For a core that is evaluated many times after other work, as a
        model's refits are: what an evaluation reads then sits on few pages.
        (Not done for every core: packing costs more than a small fit gains.)
        """
        (self.nlev, self.k, self.q, self.theta_off, self.lam_off, self.kind_a, self.kind_l,
         self.off_a, self.off_l, self.sp_cp, self.sp_ri, self.lam, self.work, self.tbuf,
         self.cursor, self.colptr, self.rowidx, self.l_values) = packed(
            *map(np.asarray, [self.nlev, self.k, self.q, self.theta_off, self.lam_off,
                              self.kind_a, self.kind_l, self.off_a, self.off_l, self.sp_cp,
                              self.sp_ri, self.lam, self.work, self.tbuf, self.cursor,
                              self.colptr, self.rowidx]),
            self.l_values)
        self.l = self.l_values

    # ---------------------------------------------------------- pickle, copy
    cdef tuple _constructor_args(self):
        """The constructor's arguments, A itself (a shallow copy shares it, as the
        constructor does; pickle and deepcopy copy it)."""
        return (np.array(self.nlev), np.array(self.k), self.p1, np.array(self.kind_a),
                np.array(self.kind_l), np.array(self.off_a), np.array(self.off_l),
                np.array(self.sp_cp), np.array(self.sp_ri), np.array(self.colptr),
                np.array(self.rowidx), self.a_values, self.l_values.shape[0], self.nobs,
                self.log_det_w)

    def __getstate__(self):
        """The factor state: L, lambda and the last LAPACK info."""
        return np.array(self.l_values), np.array(self.lam), self.last_info

    def __setstate__(self, state):
        """Take the factor state of ``__getstate__``."""
        l_values, lam, last_info = state
        if l_values.shape[0] != self.l.shape[0] or lam.shape[0] != self.lam.shape[0]:
            raise ValueError("the factor state does not match this core's layout")
        self.l_values[:] = l_values
        np.asarray(self.lam)[:] = lam
        self.last_info = last_info
        self.n_updates += 1
        self.comp_valid = False

    # ------------------------------------------------------------------ sizes
    @cython.final
    cdef Py_ssize_t _rows(self, Py_ssize_t s) noexcept nogil:
        return self.q[s] if s < self.n_terms else self.p1

    @cython.final
    cdef Py_ssize_t _kk(self, Py_ssize_t s) noexcept nogil:
        return self.k[s] if s < self.n_terms else self.p1

    # ------------------------------------------------------------- lambda(theta)
    @cython.final
    cdef void _set_lambda(self, const double* theta) noexcept nogil:
        """Fill each term's k x k lower-triangular lambda from theta (eq. 7)."""
        cdef Py_ssize_t t, i, j, kt, pos
        cdef double* lam
        for t in range(self.n_terms):
            kt = self.k[t]
            lam = &self.lam[self.lam_off[t]]
            pos = self.theta_off[t]
            for j in range(kt):
                for i in range(kt):
                    if i < j:
                        lam[i + j * kt] = 0.0
                    else:
                        lam[i + j * kt] = theta[pos]
                        pos += 1

    # ---------------------------------------------------- step 1: scaled copy
    @cython.final
    cdef void _scale_copy(self) noexcept nogil:
        """L <- Lambda^T A Lambda (+ I on the random-effects diagonal), eq. 14."""
        cdef Py_ssize_t T = self.n_terms, s, t, b, lev, lev2, e, rs, ct, ks, kt
        cdef Py_ssize_t i, nl_s, nl_t, ld
        cdef double acc
        cdef const double* lam_s
        cdef const double* lam_t
        cdef double* src
        cdef double* dst
        cdef double* work = &self.work[0]
        for s in range(T + 1):
            for t in range(s + 1):
                b = bidx(s, t)
                src = &self.a[self.off_a[b]]
                dst = &self.l[self.off_l[b]]
                if s == T and t == T:
                    rs = self.p1
                    for i in range(rs * rs):
                        dst[i] = src[i]
                    continue
                kt = self.k[t]
                nl_t = self.nlev[t]
                lam_t = &self.lam[self.lam_off[t]]
                if s == T:
                    # [X y]^T Z_t Lambda_t: p1 x q_t dense
                    rs = self.p1
                    if kt == 1:   # (small_lt_a_l's operations, without a call an entry)
                        for i in range(rs * nl_t):
                            dst[i] = 0.0 + src[i] * lam_t[0]
                        continue
                    for lev in range(nl_t):
                        small_lt_a_l(NULL, 0, src + lev * kt * rs, rs, rs,
                                     lam_t, kt, dst + lev * kt * rs, rs, work)
                    continue
                ks = self.k[s]
                nl_s = self.nlev[s]
                lam_s = &self.lam[self.lam_off[s]]
                if s == t:
                    if self.kind_l[b] == BLOCKDIAG and kt == 1:
                        for lev in range(nl_t):
                            dst[lev] = (0.0 + lam_t[0] * (0.0 + src[lev] * lam_t[0])) + 1.0
                    elif self.kind_l[b] == BLOCKDIAG:
                        for lev in range(nl_t):
                            small_lt_a_l(lam_t, kt, src + lev * kt * kt, kt, kt,
                                         lam_t, kt, dst + lev * kt * kt, kt, work)
                            for i in range(kt):
                                dst[lev * kt * kt + i * (kt + 1)] += 1.0
                    else:
                        # only the lower triangle is read (potrf, syrk, trsm)
                        ld = self.q[t]
                        for i in range(ld):
                            memset(dst + i * (ld + 1), 0, (ld - i) * sizeof(double))
                        for lev in range(nl_t):
                            small_lt_a_l(lam_t, kt, src + lev * kt * kt, kt, kt,
                                         lam_t, kt, dst + lev * kt * (ld + 1), ld,
                                         work)
                            for i in range(kt):
                                dst[(lev * kt + i) * (ld + 1)] += 1.0
                elif self.kind_a[b] == SPARSE and ks == 1 and kt == 1:
                    acc = lam_s[0] * lam_t[0]
                    for e in range(self.colptr[self.sp_cp[b] + nl_t]):
                        dst[e] = acc * src[e]
                elif self.kind_a[b] == SPARSE:
                    for e in range(self.colptr[self.sp_cp[b] + nl_t]):
                        small_lt_a_l(lam_s, ks, src + e * ks * kt, ks, ks,
                                     lam_t, kt, dst + e * ks * kt, ks, work)
                elif ks == 1 and kt == 1:   # dense q_s x q_t, one call's operations an entry
                    for i in range(nl_s * nl_t):
                        dst[i] = 0.0 + lam_s[0] * (0.0 + src[i] * lam_t[0])
                else:
                    ld = self.q[s]
                    for lev in range(nl_t):
                        for lev2 in range(nl_s):
                            small_lt_a_l(lam_s, ks,
                                         src + lev2 * ks + lev * kt * ld, ld, ks,
                                         lam_t, kt,
                                         dst + lev2 * ks + lev * kt * ld, ld, work)

    # ------------------------------------------------------ step 2: kernels
    @cython.final
    cdef void _rank_update(self, Py_ssize_t t, Py_ssize_t r) noexcept nogil:
        """L_tt -= L_tr L_tr^T (lower triangle; L_tt dense), eq. 15.

        Sparse L_t0: every pair of entries e2 <= e1 of a column j adds to
        element (row of e1, row of e2) of L_tt, the rows sorted ascending
        within a column (``sparsity_pattern``), so e1's row is the larger.
        The pairs are visited by panels of columns of L_tt of about
        ``PANEL_BYTES`` (a per-level cursor marks where each column j of L_t0
        resumes), so that the scattered updates stay in cache; within a panel
        the inner loop runs down a column of L_tt.  Every element still
        receives its updates in the order of j: the result is the same, bit
        for bit, as column j by column j.
        """
        cdef Py_ssize_t b = bidx(t, r), bt = bidx(t, t)
        cdef Py_ssize_t rows = self._rows(t), cols = self._rows(r)
        cdef Py_ssize_t kt, kr, j, e1, e2, i2, c0, e_end, w, p0, p1, nlt
        cdef double* src = &self.l[self.off_l[b]]
        cdef double* dst = &self.l[self.off_l[bt]]
        cdef double* col
        cdef const cnp.int64_t* ri
        cdef const cnp.int64_t* cp
        cdef cnp.int64_t* cur = &self.cursor[0]
        cdef double v2
        if self.kind_l[b] == DENSE:
            syrk_n(<blas_int>rows, <blas_int>cols, -1.0, src, <blas_int>rows,
                   1.0, dst, <blas_int>rows)
            return
        # SPARSE (t, 0)
        kt = self.k[t]
        kr = self.k[r]
        cp = &self.colptr[self.sp_cp[b]]
        ri = &self.rowidx[self.sp_ri[b]]
        nlt = self.nlev[t]
        for j in range(self.nlev[r]):
            cur[j] = cp[j]
        # panel width in levels of term t (columns of L_tt: w * kt)
        w = PANEL_BYTES // (<Py_ssize_t>sizeof(double) * rows * kt)
        if w < 1:
            w = 1
        p0 = 0
        if kt == 1 and kr == 1:
            while p0 < nlt:
                p1 = p0 + w
                for j in range(self.nlev[r]):
                    e_end = cp[j + 1]
                    e2 = cur[j]
                    while e2 < e_end and ri[e2] < p1:
                        col = dst + ri[e2] * rows
                        v2 = src[e2]
                        for e1 in range(e2, e_end):
                            col[ri[e1]] -= src[e1] * v2
                        e2 += 1
                    cur[j] = e2
                p0 = p1
            return
        while p0 < nlt:
            p1 = p0 + w
            for j in range(self.nlev[r]):
                e_end = cp[j + 1]
                e2 = cur[j]
                while e2 < e_end and ri[e2] < p1:
                    i2 = ri[e2]
                    for e1 in range(e2, e_end):
                        small_sub_abt(src + e1 * kt * kr, kt,
                                      src + e2 * kt * kr, kt, kt, kt, kr,
                                      dst + ri[e1] * kt + i2 * kt * rows, rows)
                    e2 += 1
                cur[j] = e2
            p0 = p1

    @cython.final
    cdef void _gemm_update(self, Py_ssize_t s, Py_ssize_t t,
                           Py_ssize_t r) noexcept nogil:
        """L_st -= L_sr L_tr^T (L_st dense)."""
        cdef Py_ssize_t ba = bidx(s, r), bb = bidx(t, r), bc = bidx(s, t)
        cdef Py_ssize_t rows_s = self._rows(s), rows_t = self._rows(t)
        cdef Py_ssize_t cols = self._rows(r)
        cdef Py_ssize_t ks = self._kk(s), kt = self._kk(t), kr = self.k[r]
        cdef Py_ssize_t j, ea, eb, ia, ib, ca, cb
        cdef double va, vb
        cdef double* col
        cdef double* pa = &self.l[self.off_l[ba]]
        cdef double* pb = &self.l[self.off_l[bb]]
        cdef double* pc = &self.l[self.off_l[bc]]
        cdef bint sa = self.kind_l[ba] == SPARSE
        cdef bint sb = self.kind_l[bb] == SPARSE
        if not sa and not sb:
            gemm_nt(<blas_int>rows_s, <blas_int>rows_t, <blas_int>cols, -1.0,
                    pa, <blas_int>rows_s, pb, <blas_int>rows_t, 1.0,
                    pc, <blas_int>rows_s)
            return
        ca = self.sp_cp[ba]
        cb = self.sp_cp[bb]
        if ks == 1 and kt == 1 and kr == 1 and sa and sb:
            # column ib of L_st outer, its rows ia inner (one update per element and j)
            for j in range(self.nlev[r]):
                for eb in range(self.colptr[cb + j], self.colptr[cb + j + 1]):
                    col = pc + self.rowidx[self.sp_ri[bb] + eb] * rows_s
                    vb = pb[eb]
                    for ea in range(self.colptr[ca + j], self.colptr[ca + j + 1]):
                        col[self.rowidx[self.sp_ri[ba] + ea]] -= pa[ea] * vb
            return
        if kt == 1 and kr == 1 and sb and not sa:
            for j in range(self.nlev[r]):
                for eb in range(self.colptr[cb + j], self.colptr[cb + j + 1]):
                    ib = self.rowidx[self.sp_ri[bb] + eb]
                    vb = pb[eb]
                    for ia in range(rows_s):
                        pc[ia + ib * rows_s] -= pa[ia + j * rows_s] * vb
            return
        for j in range(self.nlev[r]):
            if sa and sb:
                for eb in range(self.colptr[cb + j], self.colptr[cb + j + 1]):
                    ib = self.rowidx[self.sp_ri[bb] + eb]
                    for ea in range(self.colptr[ca + j], self.colptr[ca + j + 1]):
                        ia = self.rowidx[self.sp_ri[ba] + ea]
                        small_sub_abt(pa + ea * ks * kr, ks, pb + eb * kt * kr, kt,
                                      ks, kt, kr,
                                      pc + ia * ks + ib * kt * rows_s, rows_s)
            elif sb:
                # dense L_sr (rows_s x q_r), sparse L_tr
                for eb in range(self.colptr[cb + j], self.colptr[cb + j + 1]):
                    ib = self.rowidx[self.sp_ri[bb] + eb]
                    small_sub_abt(pa + j * kr * rows_s, rows_s, pb + eb * kt * kr,
                                  kt, rows_s, kt, kr,
                                  pc + ib * kt * rows_s, rows_s)
            else:
                # sparse L_sr, dense L_tr (rows_t x q_r)
                for ea in range(self.colptr[ca + j], self.colptr[ca + j + 1]):
                    ia = self.rowidx[self.sp_ri[ba] + ea]
                    small_sub_abt(pa + ea * ks * kr, ks, pb + j * kr * rows_t,
                                  rows_t, ks, rows_t, kr, pc + ia * ks, rows_s)

    @cython.final
    cdef void _rdiv(self, Py_ssize_t s, Py_ssize_t t) noexcept nogil:
        """L_st <- L_st L_tt^{-T}."""
        cdef Py_ssize_t b = bidx(s, t), bt = bidx(t, t)
        cdef Py_ssize_t rows = self._rows(s), kt = self.k[t], ks = self._kk(s)
        cdef Py_ssize_t j, e, c0
        cdef double* pb = &self.l[self.off_l[b]]
        cdef double* pl = &self.l[self.off_l[bt]]
        if self.kind_l[bt] == DENSE:
            trsm_rlt(<blas_int>rows, <blas_int>self.q[t], pl, <blas_int>self.q[t],
                     pb, <blas_int>rows)
        elif self.kind_l[b] == SPARSE:
            c0 = self.sp_cp[b]
            for j in range(self.nlev[t]):
                for e in range(self.colptr[c0 + j], self.colptr[c0 + j + 1]):
                    rdiv_lt_small(ks, kt, pl + j * kt * kt, kt, pb + e * ks * kt, ks)
        else:
            for j in range(self.nlev[t]):
                rdiv_lt_small(rows, kt, pl + j * kt * kt, kt, pb + j * kt * rows, rows)

    @cython.final
    cdef void _rdiv_dense(self, Py_ssize_t t) noexcept nogil:
        """L_st <- L_st L_tt^{-T} for all s > t, L_tt dense (eq. 15).

        With few rows below L_tt (at most ``SKINNY_ROWS``), the blocks are
        copied transposed, side by side, into one q_t x rows matrix and solved
        by one left-side dtrsm, L_tt^{-1} [L_st^T ...]: OpenBLAS's right-side
        dtrsm with a few rows was measured at about half the speed.
        """
        cdef Py_ssize_t T = self.n_terms, s, c, i, rows_s, qt = self.q[t], tot = 0
        cdef double* pl = &self.l[self.off_l[bidx(t, t)]]
        cdef double* wb = &self.tbuf[0]
        cdef double* pb
        for s in range(t + 1, T + 1):
            tot += self._rows(s)
        if tot > SKINNY_ROWS:
            for s in range(t + 1, T + 1):
                self._rdiv(s, t)
            return
        tot = 0
        for s in range(t + 1, T + 1):
            rows_s = self._rows(s)
            pb = &self.l[self.off_l[bidx(s, t)]]
            for c in range(qt):
                for i in range(rows_s):
                    wb[c + (tot + i) * qt] = pb[i + c * rows_s]
            tot += rows_s
        trsm_lln(<blas_int>qt, <blas_int>tot, pl, <blas_int>qt, wb, <blas_int>qt)
        tot = 0
        for s in range(t + 1, T + 1):
            rows_s = self._rows(s)
            pb = &self.l[self.off_l[bidx(s, t)]]
            for c in range(qt):
                for i in range(rows_s):
                    pb[i + c * rows_s] = wb[c + (tot + i) * qt]
            tot += rows_s

    @cython.final
    cdef int _chol_diag(self, Py_ssize_t t) noexcept nogil:
        """Cholesky factor of diagonal block t in place; LAPACK info (0 = success)."""
        cdef Py_ssize_t b = bidx(t, t), lev, kt, n
        cdef double* p = &self.l[self.off_l[b]]
        cdef double* q
        cdef double d, l10
        cdef int info
        if self.kind_l[b] == BLOCKDIAG:
            kt = self.k[t]
            if kt == 1:
                for lev in range(self.nlev[t]):
                    if not p[lev] > 0.0:
                        return <int>(lev + 1)
                    p[lev] = sqrt(p[lev])
                return 0
            if kt == 2:
                # dpotf2's operations for k = 2 (a scaling by the reciprocal),
                # without a LAPACK call per level
                for lev in range(self.nlev[t]):
                    q = p + lev * 4
                    d = q[0]
                    if not d > 0.0:
                        return 1
                    d = sqrt(d)
                    q[0] = d
                    l10 = q[1] * (1.0 / d)
                    q[1] = l10
                    d = q[3] - l10 * l10
                    if not d > 0.0:
                        return 2
                    q[3] = sqrt(d)
                return 0
            for lev in range(self.nlev[t]):
                info = potrf_l(<blas_int>kt, p + lev * kt * kt, <blas_int>kt)
                if info != 0:
                    return info
            return 0
        n = self._rows(t)
        return potrf_l(<blas_int>n, p, <blas_int>n)

    @cython.final
    cdef int _update(self, const double* theta) noexcept nogil:
        """Recompute L for theta (eq. 15); returns 0, the failing LAPACK info, or
        INTERRUPTED when a signal handler raised between two steps of a large
        factor (L is then incomplete: the next update recomputes it)."""
        cdef Py_ssize_t T = self.n_terms, t, r, s
        cdef int info
        cdef bint check = self.l.shape[0] > SIGNAL_CHECK_SIZE
        self.n_updates += 1
        self.comp_valid = False
        self._set_lambda(theta)
        self._scale_copy()
        for t in range(T + 1):
            for r in range(t):
                if check and interrupted():
                    return INTERRUPTED
                self._rank_update(t, r)
                for s in range(t + 1, T + 1):
                    self._gemm_update(s, t, r)
            if check and interrupted():
                return INTERRUPTED
            info = self._chol_diag(t)
            if info != 0:
                # a failure in the last column only means a zero residual
                if t == T and info == self.p1:
                    self.l[self.off_l[bidx(T, T)] + self.p1 * self.p1 - 1] = 0.0
                    return 0
                return -(<int>t + 1) if t < T else info
            if self.kind_l[bidx(t, t)] == DENSE:
                self._rdiv_dense(t)
            else:
                for s in range(t + 1, T + 1):
                    self._rdiv(s, t)
        return 0

    # ------------------------------------------------------------ the criteria
    @cython.final
    cdef void _components(self, double* ld_l2, double* ld_rx2,
                          double* pwrss) noexcept nogil:
        """log|L_Z|^2, log|R_X|^2 and the penalised RSS from L (eqs. 16-17),
        computed once per factor (the logarithms cost as much as a small
        model's factorisation)."""
        cdef Py_ssize_t T = self.n_terms, t, i, n, kt, lev
        cdef double acc = 0.0, r
        cdef double* p
        if self.comp_valid:
            ld_l2[0] = self.comp_ld_l2
            ld_rx2[0] = self.comp_ld_rx2
            pwrss[0] = self.comp_pwrss
            return
        for t in range(T):
            p = &self.l[self.off_l[bidx(t, t)]]
            if self.kind_l[bidx(t, t)] == BLOCKDIAG:
                kt = self.k[t]
                for lev in range(self.nlev[t]):
                    for i in range(kt):
                        acc += log(p[lev * kt * kt + i * (kt + 1)])
            else:
                n = self.q[t]
                for i in range(n):
                    acc += log(p[i * (n + 1)])
        ld_l2[0] = 2.0 * acc
        p = &self.l[self.off_l[bidx(T, T)]]
        n = self.p1
        acc = 0.0
        for i in range(n - 1):
            acc += log(p[i * (n + 1)])
        ld_rx2[0] = 2.0 * acc
        r = p[n * n - 1]
        pwrss[0] = r * r
        self.comp_ld_l2 = ld_l2[0]
        self.comp_ld_rx2 = ld_rx2[0]
        self.comp_pwrss = pwrss[0]
        self.comp_valid = True

    @cython.final
    cdef double _criterion(self, bint reml) noexcept nogil:
        """Profiled deviance (eq. 18) or REML criterion (eq. 20) at the current L."""
        cdef double ld_l2, ld_rx2, pwrss, dof
        self._components(&ld_l2, &ld_rx2, &pwrss)
        if reml:
            dof = self.nobs - (self.p1 - 1)
            return (ld_l2 - self.log_det_w + ld_rx2
                    + dof * (1.0 + log(2.0 * M_PI * pwrss / dof)))
        return (ld_l2 - self.log_det_w
                + self.nobs * (1.0 + log(2.0 * M_PI * pwrss / self.nobs)))

    @cython.final
    cdef double _value(self, const double* theta, bint reml) noexcept nogil:
        """Update L for theta and return the criterion, +inf where that fails."""
        cdef int info = self._update(theta)
        self.last_info = info
        if info == INTERRUPTED:
            return -1.0   # the error value of the C entry point: the exception is set
        if info != 0:
            return INFINITY
        return self._criterion(reml)

    def objective(self, const double[::1] theta, bint reml):
        """Update L for ``theta`` and return the (RE)ML criterion (eqs. 18, 20).

        Returns +inf where the factorisation fails (theta outside the domain).
        """
        cdef double val
        if theta.shape[0] != self.n_theta:
            raise ValueError(f"theta has length {theta.shape[0]}, "
                             f"expected {self.n_theta}")
        with nogil:
            val = self._value(&theta[0] if self.n_theta > 0 else NULL, reml)
        if self.last_info == INTERRUPTED:
            raise_pending()
        return val

    def update(self, const double[::1] theta):
        """Update L for ``theta``; returns LAPACK's info (0 = success)."""
        cdef int info
        if theta.shape[0] != self.n_theta:
            raise ValueError(f"theta has length {theta.shape[0]}, "
                             f"expected {self.n_theta}")
        with nogil:
            info = self._update(&theta[0] if self.n_theta > 0 else NULL)
        self.last_info = info
        if info == INTERRUPTED:
            raise_pending()
        return info

    def moment_variances(self, terms):
        """Method-of-moments variances of random intercepts from A alone (eq. 71).

        ``terms``: internal indices of terms with one random effect per level,
        an intercept.  With r = y - X beta_OLS, RSS = r^T W r and S_g the sum
        of r over level g of term t, sigma_t^2 = (sum_g S_g^2 - RSS) /
        sum_g n_g (n_g - 1).  Returns ``(RSS, [sigma_t^2 per term])``, or None
        where X^T W X is not positive definite or a term has no two rows on a
        level.  O(p^3 + p q): no pass over the rows.
        """
        cdef Py_ssize_t T = self.n_terms, p1 = self.p1, p = p1 - 1, i, j, g, t, nl
        cdef const double* xy = &self.a[self.off_a[bidx(T, T)]]
        cdef const double* blk
        cdef double s_g, sum_s2, pairs, rss, n_g
        chol = np.empty((max(p, 1), max(p, 1)))
        beta_arr = np.empty(max(p, 1))
        cdef double[:, ::1] lc = chol
        cdef double[::1] beta = beta_arr
        # X^T W X = L L^T (column-major in lc's rows), c = L^{-1} X^T W y
        for j in range(p):
            for i in range(j, p):
                lc[j, i] = xy[i + j * p1]
            beta[j] = xy[p + j * p1]
        if p and potrf_l(<blas_int>p, &lc[0, 0], <blas_int>p) != 0:
            return None
        for i in range(p):
            for j in range(i):
                beta[i] -= lc[j, i] * beta[j]
            beta[i] /= lc[i, i]
        rss = xy[p + p * p1]
        for i in range(p):
            rss -= beta[i] * beta[i]
        trsv_lt(<blas_int>p, &lc[0, 0], <blas_int>p, &beta[0])   # beta = L^{-T} c
        if not rss > 0:
            return None
        out = []
        for t in terms:
            if not 0 <= t < T:
                raise IndexError(f"term {t} is not one of the {T} terms")
            if self.k[t] != 1:
                raise ValueError(f"term {t} has {self.k[t]} random effects per level, not 1")
            nl = self.nlev[t]
            blk = &self.a[self.off_a[bidx(T, t)]]
            sum_s2 = 0.0
            pairs = 0.0
            for g in range(nl):
                s_g = blk[p + g * p1]
                for j in range(p):
                    s_g -= beta[j] * blk[j + g * p1]
                sum_s2 += s_g * s_g
                n_g = self.a[self.off_a[bidx(t, t)] + g]
                pairs += n_g * (n_g - 1.0)
            if not pairs > 0:
                return None
            out.append((sum_s2 - rss) / pairs)
        return rss, out

    def components(self):
        """``(ldL2, ldRX2, pwrss)`` of the current factor (eqs. 16-17)."""
        cdef double ld_l2, ld_rx2, pwrss
        self._components(&ld_l2, &ld_rx2, &pwrss)
        return ld_l2, ld_rx2, pwrss

    def criterion(self, bint reml):
        """The (RE)ML criterion of the current factor, without updating it."""
        return self._criterion(reml)

    # ------------------------------------------------------- solutions from L
    def lxx(self):
        """Copy of the dense lower-right block of L: [[R_X, 0], [l_yX, r]] (lower-triangular R_X)."""
        cdef Py_ssize_t n = self.p1, i, j
        cdef const double* src = &self.l[self.off_l[bidx(self.n_terms, self.n_terms)]]
        out = np.zeros((n, n))
        cdef double[:, ::1] dst = out
        for j in range(n):
            for i in range(j, n):
                dst[i, j] = src[i + j * n]   # column-major lower triangle
        return out

    @cython.final
    cdef void _solve_beta(self, double* beta) noexcept nogil:
        """beta from R_X^T beta = l_yX (eq. 21), R_X and l_yX the lower-triangular
        last block of L ([[R_X, 0], [l_yX, r]]), into ``beta`` (p values)."""
        cdef Py_ssize_t n = self.p1, p = self.p1 - 1, i
        cdef const double* last = &self.l[self.off_l[bidx(self.n_terms, self.n_terms)]]
        for i in range(p):
            beta[i] = last[p + i * n]
        trsv_lt(<blas_int>p, last, <blas_int>n, beta)

    def solve_beta(self):
        """beta-hat of the current factor (eq. 21), in the working basis of its X."""
        out = np.empty(self.p1 - 1)
        cdef double[::1] beta = out
        if self.p1 > 1:
            self._solve_beta(&beta[0])
        return out

    @cython.final
    cdef void _back_solve(self, const double* rhs, const cnp.int64_t* uoff,
                          double* u) noexcept nogil:
        """Spherical conditional modes u (eq. 22) into ``u``, term t at ``uoff[t]``.

        ``rhs`` is ``(beta, -1)``: then ``l_y - L_XZ^T beta = -(L_XZ'^T rhs)``
        with L_XZ' all p1 rows of the last block row, and
        ``L_Z^T u = l_y - L_XZ^T beta`` is solved from the last term to the first.
        Scalar entries of a sparse block are subtracted inline by a fused
        multiply-add, rounded as the 1 x 1 dgemv call they replace (OpenBLAS).
        """
        cdef Py_ssize_t T = self.n_terms, t, s, j, e, ks, kt, lev, c0
        cdef Py_ssize_t rows_s, b, qt
        cdef const cnp.int64_t* ri
        cdef double* pb
        cdef double* ut
        cdef double* us
        memset(u, 0, uoff[T] * sizeof(double))
        for t in range(T - 1, -1, -1):
            qt = self.q[t]
            ut = u + uoff[t]
            kt = self.k[t]
            b = bidx(T, t)
            gemv_t(<blas_int>self.p1, <blas_int>qt, -1.0,
                   &self.l[self.off_l[b]], <blas_int>self.p1, rhs, ut)
            for s in range(t + 1, T):
                b = bidx(s, t)
                us = u + uoff[s]
                pb = &self.l[self.off_l[b]]
                rows_s = self.q[s]
                ks = self.k[s]
                if self.kind_l[b] == DENSE:
                    gemv_t(<blas_int>rows_s, <blas_int>qt, -1.0, pb,
                           <blas_int>rows_s, us, ut)
                elif ks == 1 and kt == 1:
                    c0 = self.sp_cp[b]
                    ri = &self.rowidx[self.sp_ri[b]]
                    for j in range(self.nlev[t]):
                        for e in range(self.colptr[c0 + j],
                                       self.colptr[c0 + j + 1]):
                            ut[j] = fma(-pb[e], us[ri[e]], ut[j])
                else:
                    c0 = self.sp_cp[b]
                    for j in range(self.nlev[t]):
                        for e in range(self.colptr[c0 + j],
                                       self.colptr[c0 + j + 1]):
                            lev = self.rowidx[self.sp_ri[b] + e]
                            gemv_t(<blas_int>ks, <blas_int>kt, -1.0,
                                   pb + e * ks * kt, <blas_int>ks,
                                   us + lev * ks, ut + j * kt)
            b = bidx(t, t)
            pb = &self.l[self.off_l[b]]
            if self.kind_l[b] == DENSE:
                trsv_lt(<blas_int>qt, pb, <blas_int>qt, ut)
            else:
                for j in range(self.nlev[t]):
                    trsv_lt(<blas_int>kt, pb + j * kt * kt, <blas_int>kt,
                            ut + j * kt)

    def solve_u(self, const double[::1] beta):
        """Spherical conditional modes u given beta-hat (eq. 22), internal order.

        Back-substitution through the transposed random-effects part of L:
        ``L_Z^T u = l_y - L_XZ^T beta``.
        """
        cdef Py_ssize_t T = self.n_terms, t, i
        cdef Py_ssize_t p = self.p1 - 1
        cdef cnp.int64_t[::1] uoff = np.zeros(T + 1, dtype=np.int64)
        for t in range(T):
            uoff[t + 1] = uoff[t] + self.q[t]
        u_arr = np.zeros(max(uoff[T], 1), dtype=np.float64)
        cdef double[::1] u = u_arr
        cdef double[::1] rhs = np.zeros(self.p1, dtype=np.float64)
        for i in range(p):
            rhs[i] = beta[i]
        rhs[p] = -1.0
        with nogil:
            self._back_solve(&rhs[0], &uoff[0], &u[0])
        return u_arr[:uoff[T]]

    def lambda_blocks(self):
        """The per-term k x k lower-triangular lambda of the last update."""
        out = []
        for t in range(self.n_terms):
            kt = self.k[t]
            o = self.lam_off[t]
            out.append(np.asarray(self.lam[o:o + kt * kt]).reshape((kt, kt), order="F").copy())
        return out
