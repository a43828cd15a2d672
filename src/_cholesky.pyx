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
of squares, beta-hat and the spherical conditional modes u.

Block kinds (``kind_a`` / ``kind_l``):

* ``BLOCKDIAG``: the diagonal block of a term, ``nl`` dense ``k x k`` blocks;
* ``DENSE``: column-major, leading dimension = number of rows;
* ``SPARSE``: blocked compressed-column storage over the levels of the first
  term: for level ``j`` of term 0, entries ``colptr[j]..colptr[j+1]`` give the
  level (``rowidx``) of the row term and a dense ``k_s x k_0`` block.

Only blocks (s, 0) with s a random-effects term may be sparse; their pattern
does not change under the factorisation because L_00 is block-diagonal.
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport log, sqrt, M_PI, INFINITY, NAN
from libc.string cimport memset

from _linalg cimport (blas_int, gemm_nt, syrk_n, trsm_rlt, trsv_lt, gemv_t,
                       potrf_l)

cnp.import_array()

cdef enum:
    BLOCKDIAG = 0
    DENSE = 1
    SPARSE = 2

BLOCK_BLOCKDIAG = BLOCKDIAG
BLOCK_DENSE = DENSE
BLOCK_SPARSE = SPARSE


cdef inline Py_ssize_t bidx(Py_ssize_t s, Py_ssize_t t) noexcept nogil:
    """Position of block (s, t), s >= t, in the packed lower triangle."""
    return s * (s + 1) // 2 + t


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
    cdef double acc
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


cdef inline void small_rdiv_lt(double* b, Py_ssize_t ldb, Py_ssize_t m,
                               const double* l, Py_ssize_t k) noexcept nogil:
    """B <- B L^{-T} for a small lower-triangular L (k x k), B: m x k."""
    cdef Py_ssize_t i, j, c
    cdef double d
    if k == 1:
        d = 1.0 / l[0]
        for i in range(m):
            b[i] *= d
        return
    # solve X L^T = B column by column: X[:, j] = (B[:, j] - sum_{c<j} X[:, c] L[j, c]) / L[j, j]
    for j in range(k):
        for c in range(j):
            d = l[j + c * k]
            if d != 0.0:
                for i in range(m):
                    b[i + j * ldb] -= b[i + c * ldb] * d
        d = 1.0 / l[j + j * k]
        for i in range(m):
            b[i + j * ldb] *= d


cdef class BlockedCholesky:
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

    cdef readonly Py_ssize_t n_terms, p1, n_theta
    cdef readonly double nobs, log_det_w
    cdef readonly cnp.ndarray a_values, l_values
    cdef cnp.int64_t[::1] nlev, k, q, theta_off
    cdef cnp.int64_t[::1] kind_a, kind_l, off_a, off_l, sp_cp, sp_ri
    cdef cnp.int64_t[::1] colptr, rowidx
    cdef double[::1] a, l, lam, work
    cdef cnp.int64_t[::1] lam_off
    cdef readonly int last_info

    def __init__(self, nlev, k, Py_ssize_t p1, kind_a, kind_l, off_a, off_l,
                 sp_colptr_off, sp_rowidx_off, colptr, rowidx, a,
                 Py_ssize_t n_l, double nobs, double log_det_w=0.0):
        cdef Py_ssize_t t, nt, kmax = 1, maxrows
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
        self.nobs = nobs
        self.log_det_w = log_det_w
        self.last_info = 0

    # ------------------------------------------------------------------ sizes
    cdef inline Py_ssize_t _rows(self, Py_ssize_t s) noexcept nogil:
        return self.q[s] if s < self.n_terms else self.p1

    cdef inline Py_ssize_t _kk(self, Py_ssize_t s) noexcept nogil:
        return self.k[s] if s < self.n_terms else self.p1

    # ------------------------------------------------------------- lambda(theta)
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
                    for lev in range(nl_t):
                        small_lt_a_l(NULL, 0, src + lev * kt * rs, rs, rs,
                                     lam_t, kt, dst + lev * kt * rs, rs, work)
                    continue
                ks = self.k[s]
                nl_s = self.nlev[s]
                lam_s = &self.lam[self.lam_off[s]]
                if s == t:
                    if self.kind_l[b] == BLOCKDIAG:
                        for lev in range(nl_t):
                            small_lt_a_l(lam_t, kt, src + lev * kt * kt, kt, kt,
                                         lam_t, kt, dst + lev * kt * kt, kt, work)
                            for i in range(kt):
                                dst[lev * kt * kt + i * (kt + 1)] += 1.0
                    else:
                        ld = self.q[t]
                        memset(dst, 0, ld * ld * sizeof(double))
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
                else:
                    ld = self.q[s]
                    for lev in range(nl_t):
                        for lev2 in range(nl_s):
                            small_lt_a_l(lam_s, ks,
                                         src + lev2 * ks + lev * kt * ld, ld, ks,
                                         lam_t, kt,
                                         dst + lev2 * ks + lev * kt * ld, ld, work)

    # ------------------------------------------------------ step 2: kernels
    cdef void _rank_update(self, Py_ssize_t t, Py_ssize_t r) noexcept nogil:
        """L_tt -= L_tr L_tr^T (lower triangle; L_tt dense)."""
        cdef Py_ssize_t b = bidx(t, r), bt = bidx(t, t)
        cdef Py_ssize_t rows = self._rows(t), cols = self._rows(r)
        cdef Py_ssize_t kt, kr, j, e1, e2, i1, i2, c0
        cdef double* src = &self.l[self.off_l[b]]
        cdef double* dst = &self.l[self.off_l[bt]]
        cdef const cnp.int64_t* ri
        cdef double v1
        if self.kind_l[b] == DENSE:
            syrk_n(<blas_int>rows, <blas_int>cols, -1.0, src, <blas_int>rows,
                   1.0, dst, <blas_int>rows)
            return
        # SPARSE (t, 0)
        kt = self.k[t]
        kr = self.k[r]
        c0 = self.sp_cp[b]
        ri = &self.rowidx[self.sp_ri[b]]
        if kt == 1 and kr == 1:
            for j in range(self.nlev[r]):
                for e1 in range(self.colptr[c0 + j], self.colptr[c0 + j + 1]):
                    i1 = ri[e1]
                    v1 = src[e1]
                    for e2 in range(self.colptr[c0 + j], e1 + 1):
                        dst[i1 + ri[e2] * rows] -= v1 * src[e2]
            return
        for j in range(self.nlev[r]):
            for e1 in range(self.colptr[c0 + j], self.colptr[c0 + j + 1]):
                i1 = self.rowidx[self.sp_ri[b] + e1]
                for e2 in range(self.colptr[c0 + j], e1 + 1):
                    i2 = self.rowidx[self.sp_ri[b] + e2]
                    small_sub_abt(src + e1 * kt * kr, kt, src + e2 * kt * kr, kt,
                                  kt, kt, kr, dst + i1 * kt + i2 * kt * rows, rows)

    cdef void _gemm_update(self, Py_ssize_t s, Py_ssize_t t,
                           Py_ssize_t r) noexcept nogil:
        """L_st -= L_sr L_tr^T (L_st dense)."""
        cdef Py_ssize_t ba = bidx(s, r), bb = bidx(t, r), bc = bidx(s, t)
        cdef Py_ssize_t rows_s = self._rows(s), rows_t = self._rows(t)
        cdef Py_ssize_t cols = self._rows(r)
        cdef Py_ssize_t ks = self._kk(s), kt = self._kk(t), kr = self.k[r]
        cdef Py_ssize_t j, ea, eb, ia, ib, ca, cb
        cdef double va, vb
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
            for j in range(self.nlev[r]):
                for ea in range(self.colptr[ca + j], self.colptr[ca + j + 1]):
                    ia = self.rowidx[self.sp_ri[ba] + ea]
                    va = pa[ea]
                    for eb in range(self.colptr[cb + j], self.colptr[cb + j + 1]):
                        pc[ia + self.rowidx[self.sp_ri[bb] + eb] * rows_s] -= va * pb[eb]
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
                for ea in range(self.colptr[ca + j], self.colptr[ca + j + 1]):
                    ia = self.rowidx[self.sp_ri[ba] + ea]
                    for eb in range(self.colptr[cb + j], self.colptr[cb + j + 1]):
                        ib = self.rowidx[self.sp_ri[bb] + eb]
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
                    small_rdiv_lt(pb + e * ks * kt, ks, ks, pl + j * kt * kt, kt)
        else:
            for j in range(self.nlev[t]):
                small_rdiv_lt(pb + j * kt * rows, rows, rows, pl + j * kt * kt, kt)

    cdef int _chol_diag(self, Py_ssize_t t) noexcept nogil:
        """Cholesky factor of diagonal block t in place; LAPACK info (0 = success)."""
        cdef Py_ssize_t b = bidx(t, t), lev, kt, n
        cdef double* p = &self.l[self.off_l[b]]
        cdef int info
        if self.kind_l[b] == BLOCKDIAG:
            kt = self.k[t]
            if kt == 1:
                for lev in range(self.nlev[t]):
                    if not p[lev] > 0.0:
                        return <int>(lev + 1)
                    p[lev] = sqrt(p[lev])
                return 0
            for lev in range(self.nlev[t]):
                info = potrf_l(<blas_int>kt, p + lev * kt * kt, <blas_int>kt)
                if info != 0:
                    return info
            return 0
        n = self._rows(t)
        return potrf_l(<blas_int>n, p, <blas_int>n)

    cdef int _update(self, const double* theta) noexcept nogil:
        """Recompute L for theta (eq. 15); returns 0 or the failing LAPACK info."""
        cdef Py_ssize_t T = self.n_terms, t, r, s
        cdef int info
        self._set_lambda(theta)
        self._scale_copy()
        for t in range(T + 1):
            for r in range(t):
                self._rank_update(t, r)
                for s in range(t + 1, T + 1):
                    self._gemm_update(s, t, r)
            info = self._chol_diag(t)
            if info != 0:
                # a failure in the last column only means a zero residual
                if t == T and info == self.p1:
                    self.l[self.off_l[bidx(T, T)] + self.p1 * self.p1 - 1] = 0.0
                    return 0
                return -(<int>t + 1) if t < T else info
            for s in range(t + 1, T + 1):
                self._rdiv(s, t)
        return 0

    # ------------------------------------------------------------ the criteria
    cdef void _components(self, double* ld_l2, double* ld_rx2,
                          double* pwrss) noexcept nogil:
        """log|L_Z|^2, log|R_X|^2 and the penalised RSS from L (eqs. 16-17)."""
        cdef Py_ssize_t T = self.n_terms, t, i, n, kt, lev
        cdef double acc = 0.0, r
        cdef double* p
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

    def objective(self, const double[::1] theta, bint reml):
        """Update L for ``theta`` and return the (RE)ML criterion (eqs. 18, 20).

        Returns +inf where the factorisation fails (theta outside the domain).
        """
        cdef int info
        cdef double val
        if theta.shape[0] != self.n_theta:
            raise ValueError(f"theta has length {theta.shape[0]}, "
                             f"expected {self.n_theta}")
        with nogil:
            info = self._update(&theta[0] if self.n_theta > 0 else NULL)
            if info != 0:
                val = INFINITY
            else:
                val = self._criterion(reml)
        self.last_info = info
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
        return info

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
        cdef Py_ssize_t n = self.p1
        b = bidx(self.n_terms, self.n_terms)
        arr = np.asarray(self.l[self.off_l[b]:self.off_l[b] + n * n])
        return np.tril(arr.reshape((n, n), order="F"))

    def solve_u(self, const double[::1] beta):
        """Spherical conditional modes u given beta-hat (eq. 22), internal order.

        Back-substitution through the transposed random-effects part of L:
        ``L_Z^T u = l_y - L_XZ^T beta``.
        """
        cdef Py_ssize_t T = self.n_terms, t, s, j, e, ks, kt, i, lev, c0
        cdef Py_ssize_t p = self.p1 - 1, rows_s, b, qt
        cdef cnp.int64_t[::1] uoff = np.zeros(T + 1, dtype=np.int64)
        for t in range(T):
            uoff[t + 1] = uoff[t] + self.q[t]
        u_arr = np.zeros(max(uoff[T], 1), dtype=np.float64)
        cdef double[::1] u = u_arr
        cdef double[::1] rhs = np.zeros(self.p1, dtype=np.float64)
        cdef double* pb
        cdef double* ut
        cdef double* us
        cdef double acc
        # rhs_X = (beta, -1): then l_y - L_XZ^T beta = -(L_XZ'^T rhs) with L_XZ' all p1 rows
        for i in range(p):
            rhs[i] = beta[i]
        rhs[p] = -1.0
        with nogil:
            for t in range(T - 1, -1, -1):
                qt = self.q[t]
                ut = &u[uoff[t]]
                kt = self.k[t]
                b = bidx(T, t)
                gemv_t(<blas_int>self.p1, <blas_int>qt, -1.0,
                       &self.l[self.off_l[b]], <blas_int>self.p1, &rhs[0], ut)
                for s in range(t + 1, T):
                    b = bidx(s, t)
                    us = &u[uoff[s]]
                    pb = &self.l[self.off_l[b]]
                    rows_s = self.q[s]
                    ks = self.k[s]
                    if self.kind_l[b] == DENSE:
                        gemv_t(<blas_int>rows_s, <blas_int>qt, -1.0, pb,
                               <blas_int>rows_s, us, ut)
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
        return u_arr[:uoff[T]]

    def lambda_blocks(self):
        """The per-term k x k lower-triangular lambda of the last update."""
        out = []
        for t in range(self.n_terms):
            kt = self.k[t]
            o = self.lam_off[t]
            out.append(np.asarray(self.lam[o:o + kt * kt]).reshape((kt, kt), order="F").copy())
        return out
