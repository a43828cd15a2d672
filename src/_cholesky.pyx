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
of squares, beta-hat and the spherical conditional modes u.  ``gradient`` adds
the derivative of the criterion in theta (eqs. 64-68), from the entries of
L's inverse cross-product on the block pattern of L (a selected inverse).

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
cimport cython
cimport numpy as cnp
from libc.math cimport fabs, fma, log, sqrt, M_PI, INFINITY, NAN
from libc.string cimport memcpy, memset

from cpython.pycapsule cimport PyCapsule_New

from _core_api cimport CoreApi
from _linalg cimport (blas_int, gemm_nt, gemm_nn, gemm_tn, symm_ll, syrk_n,
                       trsm_rlt, trsm_lln, trmm_lln, trmm_rln, trsv_lt, gemv_t, gemv_n,
                       potrf_l, lauum_l, interrupted, raise_pending)

cnp.import_array()

cdef enum:
    BLOCKDIAG = 0
    DENSE = 1
    SPARSE = 2

# ``_update``'s info when Ctrl-C (a pending exception) stopped it; factors with
# more than SIGNAL_CHECK_SIZE values of L ask for signals between their steps
cdef enum:
    INTERRUPTED = -(1 << 30)
    SIGNAL_CHECK_SIZE = 1 << 16

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


cdef enum:
    PANEL_BYTES = 524288   # columns of a dense block updated together by sparse loops

cdef enum:
    SEL_PANEL_BYTES = 1048576   # columns of Sigma_tr visited together by the selected inverse

cdef enum:
    SKINNY_ROWS = 256      # up to this many rows below a dense L_tt: one left-side dtrsm

cdef enum:
    SMALL_TRI = 64     # order up to which triangular inverses and products are plain loops


cdef void tri_inv_small(Py_ssize_t n, double* a, Py_ssize_t lda) noexcept nogil:
    """In-place inverse of a lower-triangular A (n x n) with positive diagonal, by columns."""
    cdef Py_ssize_t i, j, m
    cdef double ajj, acc
    for j in range(n):
        ajj = 1.0 / a[j + j * lda]
        a[j + j * lda] = ajj
        for i in range(j + 1, n):
            acc = a[i + j * lda] * ajj
            for m in range(j + 1, i):
                acc = acc + a[i + m * lda] * a[m + j * lda]
            a[i + j * lda] = -acc / a[i + i * lda]


cdef void tri_inv_l(blas_int n, double* a, blas_int lda) noexcept nogil:
    """In-place inverse of the lower-triangular A (n x n, positive diagonal).

    By halves: with A = [[A11, 0], [A21, A22]], the inverse is
    [[A11^{-1}, 0], [-A22^{-1} A21 A11^{-1}, A22^{-1}]], the off-diagonal
    block by two triangular products (BLAS dtrmm) once the diagonal blocks
    are inverted; blocks up to ``SMALL_TRI`` by ``tri_inv_small``.  (Faster
    than LAPACK's dtrtri in OpenBLAS, which is slow for small orders.)
    """
    cdef blas_int h
    if n <= SMALL_TRI:
        tri_inv_small(n, a, lda)
        return
    h = n // 2
    tri_inv_l(h, a, lda)
    tri_inv_l(n - h, a + h + <Py_ssize_t>h * lda, lda)
    trmm_lln(n - h, h, -1.0, a + h + <Py_ssize_t>h * lda, lda, a + h, lda)
    trmm_rln(n - h, h, 1.0, a, lda, a + h, lda)


cdef int lauum_lower(blas_int n, double* a, blas_int lda) noexcept nogil:
    """Lower triangle of A^T A for the lower-triangular A (n x n), in place; 0 or LAPACK's info.

    LAPACK's dlauum above ``SMALL_TRI``, plain loops below.
    """
    cdef Py_ssize_t i, j, k
    cdef double acc
    if n > SMALL_TRI:
        return lauum_l(n, a, lda)
    for j in range(n):
        for i in range(j, n):
            acc = 0.0
            for k in range(i, n):
                acc = acc + a[k + i * lda] * a[k + j * lda]
            a[i + j * lda] = acc
    return 0


cdef inline double sym_at(const double* d, Py_ssize_t ld, Py_ssize_t i,
                          Py_ssize_t j) noexcept nogil:
    """Element (i, j) of a symmetric matrix held by its lower triangle."""
    if i >= j:
        return d[i + j * ld]
    return d[j + i * ld]


cdef inline void small_tri_inv(const double* l, Py_ssize_t k,
                               double* out) noexcept nogil:
    """out = L^{-1} for a small lower-triangular L (k x k, column-major, ld k)."""
    cdef Py_ssize_t i, j, m
    cdef double acc
    for j in range(k):
        for i in range(j):
            out[i + j * k] = 0.0
        out[j + j * k] = 1.0 / l[j + j * k]
        for i in range(j + 1, k):
            acc = 0.0
            for m in range(j, i):
                acc = acc + l[i + m * k] * out[m + j * k]
            out[i + j * k] = -acc / l[i + i * k]


cdef inline void small_add_at_lam_b(const double* a, Py_ssize_t lda,
                                    const double* lam, Py_ssize_t m,
                                    const double* b, Py_ssize_t ldb,
                                    Py_ssize_t n, double* kmat,
                                    double* work) noexcept nogil:
    """K += A^T lam B for small blocks (A, B: m x n; lam: m x m lower-triangular; K: n x n).

    ``work`` holds at least ``m * n`` doubles.
    """
    cdef Py_ssize_t i, c, d, r
    cdef double acc
    for c in range(n):
        for i in range(m):
            acc = 0.0
            for r in range(i + 1):
                acc = acc + lam[i + r * m] * b[r + c * ldb]
            work[i + c * m] = acc
    for d in range(n):
        for c in range(n):
            acc = 0.0
            for i in range(m):
                acc = acc + a[i + c * lda] * work[i + d * m]
            kmat[c + d * n] += acc


cdef inline void small_add_a_lam_bt(const double* a, Py_ssize_t lda,
                                    const double* lam, Py_ssize_t n,
                                    const double* b, Py_ssize_t ldb,
                                    Py_ssize_t m, double* kmat,
                                    double* work) noexcept nogil:
    """K += A lam B^T for small blocks (A, B: m x n; lam: n x n lower-triangular; K: m x m).

    ``work`` holds at least ``m * n`` doubles.
    """
    cdef Py_ssize_t i, i2, c, r
    cdef double acc
    for c in range(n):
        for i in range(m):
            acc = 0.0
            for r in range(c, n):
                acc = acc + a[i + r * lda] * lam[r + c * n]
            work[i + c * m] = acc
    for i2 in range(m):
        for i in range(m):
            acc = 0.0
            for c in range(n):
                acc = acc + work[i + c * m] * b[i2 + c * ldb]
            kmat[i + i2 * m] += acc


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


@cython.final
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
    cdef cnp.int64_t[::1] cursor
    cdef double[::1] tbuf
    cdef cnp.int64_t[::1] lam_off
    cdef readonly int last_info
    cdef public Py_ssize_t sel_panel_columns   # > 0: panel width of _selected_inverse (tests)
    # work arrays of ``gradient``, allocated on its first call
    cdef bint g_ready
    cdef double[::1] g_dinv, g_sel, g_u, g_v, g_b, g_beta, g_kmat
    cdef double[::1] g_small
    cdef cnp.int64_t[::1] g_troff, g_seloff, g_uoff, g_idx, g_lbase, g_sbase
    cdef cnp.int64_t[::1] g_stride
    cdef cnp.int64_t[::1] g_goff, g_pns, g_pidx
    cdef double[::1] g_plv, g_pyv
    # work arrays of ``hessian``, allocated on its first call
    cdef bint h_ready
    cdef double[::1] h_vm, h_av, h_y, h_ew
    # whether the gradient's work arrays hold the derivatives of the current factor
    cdef bint g_current
    cdef bint g_current_reml
    # the current factor's log-determinants and penalised RSS, once computed
    cdef bint comp_valid
    cdef double comp_ld_l2, comp_ld_rx2, comp_pwrss

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
        self.sel_panel_columns = 0
        self.g_ready = False
        self.h_ready = False
        self.g_current = False
        self.comp_valid = False

    def pack(self):
        """Move the small metadata and work arrays into one allocation (``packed``),
        the derivatives' work arrays allocated first.

        For a core that is evaluated many times after other work, as a
        model's refits are: what an evaluation reads then sits on few pages.
        (Not done for every core: packing costs more than a small fit gains.)
        """
        if not self.g_ready:
            self._alloc_gradient()
        if not self.h_ready:
            self._alloc_hessian()
        (self.nlev, self.k, self.q, self.theta_off, self.lam_off, self.kind_a, self.kind_l,
         self.off_a, self.off_l, self.sp_cp, self.sp_ri, self.lam, self.work, self.tbuf,
         self.cursor, self.colptr, self.rowidx, self.g_troff, self.g_seloff, self.g_uoff,
         self.g_idx, self.g_lbase, self.g_sbase, self.g_stride, self.g_goff, self.g_pns,
         self.g_pidx, self.g_small, self.g_kmat, self.g_beta, self.g_u, self.g_v, self.g_b,
         self.h_ew, self.g_plv, self.g_pyv, self.h_vm, self.h_av, self.h_y, self.g_dinv,
         self.g_sel, self.l_values) = packed(
            *map(np.asarray, [self.nlev, self.k, self.q, self.theta_off, self.lam_off,
                              self.kind_a, self.kind_l, self.off_a, self.off_l, self.sp_cp,
                              self.sp_ri, self.lam, self.work, self.tbuf, self.cursor,
                              self.colptr, self.rowidx, self.g_troff, self.g_seloff,
                              self.g_uoff, self.g_idx, self.g_lbase, self.g_sbase,
                              self.g_stride, self.g_goff, self.g_pns, self.g_pidx,
                              self.g_small, self.g_kmat, self.g_beta, self.g_u, self.g_v,
                              self.g_b, self.h_ew, self.g_plv, self.g_pyv, self.h_vm,
                              self.h_av, self.h_y, self.g_dinv, self.g_sel]),
            self.l_values)
        self.l = self.l_values

    # ---------------------------------------------------------- pickle, copy
    def __reduce__(self):
        """The constructor's arguments (A itself: a shallow copy shares it, as the
        constructor does; pickle and deepcopy copy it) and the factor's state,
        so that the restored core holds the same L(theta)."""
        args = (np.array(self.nlev), np.array(self.k), self.p1, np.array(self.kind_a),
                np.array(self.kind_l), np.array(self.off_a), np.array(self.off_l),
                np.array(self.sp_cp), np.array(self.sp_ri), np.array(self.colptr),
                np.array(self.rowidx), self.a_values, self.l_values.shape[0], self.nobs,
                self.log_det_w)
        state = (np.array(self.l_values), np.array(self.lam), self.last_info,
                 self.sel_panel_columns)
        return _restored_core, (args, state)

    def __setstate__(self, state):
        """Take the factor state of ``__reduce__``: L, lambda and the last LAPACK info."""
        l_values, lam, last_info, sel_panel_columns = state
        if l_values.shape[0] != self.l.shape[0] or lam.shape[0] != self.lam.shape[0]:
            raise ValueError("the factor state does not match this core's layout")
        self.l_values[:] = l_values
        np.asarray(self.lam)[:] = lam
        self.last_info = last_info
        self.sel_panel_columns = sel_panel_columns
        self.g_current = False
        self.comp_valid = False

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

    cdef int _update(self, const double* theta) noexcept nogil:
        """Recompute L for theta (eq. 15); returns 0, the failing LAPACK info, or
        INTERRUPTED when a signal handler raised between two steps of a large
        factor (L is then incomplete: the next update recomputes it)."""
        cdef Py_ssize_t T = self.n_terms, t, r, s
        cdef int info
        cdef bint check = self.l.shape[0] > SIGNAL_CHECK_SIZE
        self.g_current = False
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

    @property
    def c_api(self):
        """PyCapsule of the C entry points ``_value`` and ``_derivatives``
        (``src/_core_api.pxd``), for the optimiser's compiled loop."""
        return _CORE_API_CAPSULE

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

    # ------------------------------------------------- the gradient in theta
    cdef inline Py_ssize_t _seg_rows(self, Py_ssize_t s) noexcept nogil:
        """Rows of segment s of the trailing matrix: term s, or X (s = T)."""
        return self.q[s] if s < self.n_terms else self.p1 - 1

    cdef inline Py_ssize_t _seg_ld(self, Py_ssize_t s) noexcept nogil:
        """Leading dimension of the blocks (s, t) of L with rows of segment s."""
        return self.q[s] if s < self.n_terms else self.p1

    cdef inline bint _seg_dense(self, Py_ssize_t s) noexcept nogil:
        """Whether block (s, 0) of L is dense (every row in every column)."""
        return s == self.n_terms or self.kind_l[bidx(s, 0)] == DENSE

    cdef void _alloc_gradient(self) except *:
        """Work arrays of ``gradient``, sized for REML (ML uses less of them).

        ``g_troff``: row offset of term s >= 1 (and of X, s = T) in the dense
        trailing matrix; ``g_seloff``: offset of Sigma_00 (s = 0) and of
        Sigma_s0 (same layout as block (s, 0) of L) in ``g_sel``.
        """
        cdef Py_ssize_t T = self.n_terms, p = self.p1 - 1, s, b, t
        cdef Py_ssize_t k0 = self.k[0], g0 = self.nlev[0], q0 = self.q[0]
        cdef Py_ssize_t n_dense = p, kmax = 1, size
        troff = np.zeros(T + 1, dtype=np.int64)
        seloff = np.zeros(T + 1, dtype=np.int64)
        uoff = np.zeros(T + 1, dtype=np.int64)
        sparse_rows = np.zeros(g0, dtype=np.int64)
        seloff[1] = g0 * k0 * k0
        for t in range(T):
            uoff[t + 1] = uoff[t] + self.q[t]
            kmax = max(kmax, self.k[t])
        for s in range(1, T):
            troff[s + 1] = troff[s] + self.q[s]
            b = bidx(s, 0)
            if self.kind_l[b] == SPARSE:
                cp = np.asarray(self.colptr[self.sp_cp[b]:self.sp_cp[b] + g0 + 1])
                sparse_rows += np.diff(cp) * self.k[s]
                size = cp[g0] * self.k[s] * k0
            else:
                n_dense += self.q[s]
                size = self.q[s] * q0
            seloff[s + 1] = seloff[s] + size
        maxrows = max(n_dense + int(sparse_rows.max()), 1)
        n_tr = troff[T] + p
        self.g_troff = troff
        self.g_seloff = seloff
        self.g_uoff = uoff
        self.g_dinv = np.zeros(max(n_tr * n_tr, 1), dtype=np.float64)
        self.g_sel = np.zeros(seloff[T] + self.p1 * q0, dtype=np.float64)
        self.g_idx = np.zeros(maxrows, dtype=np.int64)
        self.g_lbase = np.zeros(maxrows, dtype=np.int64)
        self.g_sbase = np.zeros(maxrows, dtype=np.int64)
        self.g_stride = np.zeros(maxrows, dtype=np.int64)
        # the rows of every level of term 0, for the panels of step 3 of
        # ``_selected_inverse`` (sized for REML)
        size = max(int(sparse_rows.sum()) + g0 * n_dense, 1)
        self.g_goff = np.zeros(g0 + 1, dtype=np.int64)
        self.g_pns = np.zeros(max(g0, 1), dtype=np.int64)
        self.g_pidx = np.zeros(size, dtype=np.int64)
        self.g_plv = np.zeros(size * k0, dtype=np.float64)
        self.g_pyv = np.zeros(size * k0, dtype=np.float64)
        self.g_u = np.zeros(max(uoff[T], 1), dtype=np.float64)
        self.g_v = np.zeros(max(uoff[T], 1), dtype=np.float64)
        self.g_b = np.zeros(max(uoff[T], 1), dtype=np.float64)
        self.g_beta = np.zeros(self.p1, dtype=np.float64)
        self.g_kmat = np.zeros(max(self.lam_off[T], 1), dtype=np.float64)
        self.g_small = np.zeros(4 * kmax * kmax, dtype=np.float64)
        self.g_ready = True

    cdef int _selected_inverse(self, bint reml) noexcept nogil:
        """Sigma on the block pattern of L (eqs. 67, 68); LAPACK's info.

        REML: Sigma = Omega^{-1}, from L without its y row; ML: Sigma = M^{-1},
        from L_Z.  The trailing terms 1..T-1 (and X for REML) are dense in L,
        so their part of Sigma is the dense inverse (eq. 68), in ``g_dinv``
        (lower triangle).  Block column 0 follows level by level from the
        recurrence (eq. 67): Sigma_00[j, j] and Sigma_s0 on the pattern of
        L_s0, in ``g_sel``.  Products of dense rows with dense rows are done
        for all levels at once (BLAS), the rest per level, by panels of
        columns of Sigma_tr (``_sel_levels``).
        """
        cdef Py_ssize_t T = self.n_terms, p = self.p1 - 1
        cdef Py_ssize_t nseg = T + 1 if (reml and p > 0) else T
        cdef Py_ssize_t g0 = self.nlev[0], q0 = self.q[0]
        cdef Py_ssize_t n, s, t, sb, c, r0, rows_s, rows_t, ld_s, ld_b, w
        cdef const cnp.int64_t* troff = &self.g_troff[0]
        cdef const cnp.int64_t* seloff = &self.g_seloff[0]
        cdef double* dinv = &self.g_dinv[0]
        cdef double* sel = &self.g_sel[0]
        cdef const double* l = &self.l[0]
        cdef const double* src
        cdef double* dst
        cdef int info
        n = troff[T] + (p if nseg > T else 0)
        # 1. dense inverse of the trailing factor (eq. 68)
        if n > 0:
            for t in range(1, nseg):
                rows_t = self._seg_rows(t)
                for s in range(t, nseg):
                    rows_s = self._seg_rows(s)
                    ld_s = self._seg_ld(s)
                    src = l + self.off_l[bidx(s, t)]
                    dst = dinv + troff[s] + troff[t] * n
                    for c in range(rows_t):
                        r0 = c if s == t else 0
                        memcpy(dst + r0 + c * n, src + r0 + c * ld_s,
                               (rows_s - r0) * sizeof(double))
            tri_inv_l(<blas_int>n, dinv, <blas_int>n)
            info = lauum_lower(<blas_int>n, dinv, <blas_int>n)
            if info != 0:
                return info
        # 2. Y_s0 = sum_b Sigma_sb L_b0 over dense segments s, b, all levels at once
        for s in range(1, nseg):
            if not self._seg_dense(s):
                continue
            rows_s = self._seg_rows(s)
            ld_s = self._seg_ld(s)
            dst = sel + seloff[s]
            memset(dst, 0, ld_s * q0 * sizeof(double))
            for sb in range(1, nseg):
                if not self._seg_dense(sb):
                    continue
                src = l + self.off_l[bidx(sb, 0)]
                ld_b = self._seg_ld(sb)
                if sb == s:
                    symm_ll(<blas_int>rows_s, <blas_int>q0, 1.0,
                            dinv + troff[s] * (n + 1), <blas_int>n,
                            src, <blas_int>ld_b, 1.0, dst, <blas_int>ld_s)
                elif sb < s:
                    gemm_nn(<blas_int>rows_s, <blas_int>q0,
                            <blas_int>self._seg_rows(sb), 1.0,
                            dinv + troff[s] + troff[sb] * n, <blas_int>n,
                            src, <blas_int>ld_b, 1.0, dst, <blas_int>ld_s)
                else:
                    gemm_tn(<blas_int>rows_s, <blas_int>q0,
                            <blas_int>self._seg_rows(sb), 1.0,
                            dinv + troff[sb] + troff[s] * n, <blas_int>n,
                            src, <blas_int>ld_b, 1.0, dst, <blas_int>ld_s)
        # 3. level by level: the rows R_j of column j of L below L_00[j, j].
        # Y_j = Sigma_tr[R_j, R_j] L_j on the pairs of rows with at least one
        # sparse row reads Sigma_tr scattered over all of it, so the pairs are
        # visited by panels of about SEL_PANEL_BYTES of its columns (the
        # column of the sparse row of the pair), every level's rows, L_j and
        # partial Y_j kept across panels (``g_pidx``, ``g_plv``, ``g_pyv``),
        # a per-level cursor marking its next sparse row.  Every entry of Y_j
        # receives its terms in the same order as level by level (the sparse
        # rows are sorted ascending): the same result, bit for bit.  When
        # Sigma_tr fits in one panel, the levels go one at a time.
        w = SEL_PANEL_BYTES // (<Py_ssize_t>sizeof(double) * (n if n > 0 else 1))
        if self.sel_panel_columns > 0:
            w = self.sel_panel_columns
        if w < 1:
            w = 1
        self._sel_levels(nseg, n, w, g0 if w < n else 1)
        return 0

    cdef void _sel_levels(self, Py_ssize_t nseg, Py_ssize_t n, Py_ssize_t w,
                          Py_ssize_t nchunk) noexcept nogil:
        """Step 3 of ``_selected_inverse``: nchunk levels of term 0 at a time, panels of w columns."""
        cdef Py_ssize_t k0 = self.k[0], g0 = self.nlev[0]
        cdef Py_ssize_t j, j0, j1, b, m, m2, mtot, ns, d, d2, c, im, im2, p0, p1
        cdef Py_ssize_t im3, im4, r
        cdef cnp.int64_t* idx = &self.g_idx[0]
        cdef cnp.int64_t* lbase = &self.g_lbase[0]
        cdef cnp.int64_t* sbase = &self.g_sbase[0]
        cdef cnp.int64_t* stride = &self.g_stride[0]
        cdef cnp.int64_t* goff = &self.g_goff[0]
        cdef cnp.int64_t* pns = &self.g_pns[0]
        cdef cnp.int64_t* cur = &self.cursor[0]
        cdef cnp.int64_t* pidx = &self.g_pidx[0]
        cdef const cnp.int64_t* jidx
        cdef double* plv = &self.g_plv[0]
        cdef double* pyv = &self.g_pyv[0]
        cdef double* lv
        cdef double* yv
        cdef const double* col
        cdef const double* col2
        cdef const double* col3
        cdef const double* col4
        cdef double la, lb, lc, ld, lm, acc2, acc3, acc4, sv2, sv3, sv4
        cdef const double* dinv = &self.g_dinv[0]
        cdef double* sel = &self.g_sel[0]
        cdef double* linv = &self.g_small[0]
        cdef double* cm = linv + k0 * k0
        cdef double* tmp = cm + k0 * k0
        cdef const double* l = &self.l[0]
        cdef const double* l00 = &self.l[self.off_l[0]]
        cdef double* dst
        cdef double acc, sv
        cdef bint any_sparse = False   # a sparse block (s, 0): pairs to visit by panels
        for j in range(1, self.n_terms):
            if self.kind_l[bidx(j, 0)] == SPARSE:
                any_sparse = True
        j0 = 0
        while j0 < g0:
            j1 = j0 + nchunk
            if j1 > g0:
                j1 = g0
            goff[j0] = 0
            for j in range(j0, j1):
                ns = self._level_rows(j, nseg, &mtot)
                b = goff[j]
                pns[j] = ns
                cur[j] = 0
                goff[j + 1] = b + mtot
                for m in range(mtot):
                    pidx[b + m] = idx[m]
                    for d in range(k0):
                        plv[(b + m) * k0 + d] = l[lbase[m] + d * stride[m]]
                        pyv[(b + m) * k0 + d] = sel[sbase[m] + d * stride[m]] if m >= ns else 0.0
            p0 = 0 if any_sparse else n
            while p0 < n:
                p1 = p0 + w
                for j in range(j0, j1):
                    m2 = cur[j]
                    ns = pns[j]
                    if m2 >= ns:
                        continue
                    b = goff[j]
                    mtot = goff[j + 1] - b
                    jidx = pidx + b
                    if jidx[m2] >= p1:
                        continue
                    lv = plv + b * k0
                    yv = pyv + b * k0
                    # the sparse row first (column-wise in the lower triangle)
                    if k0 == 1:
                        # four, then two sparse rows m2, m2 + 1, ... at a time:
                        # each entry still gets its terms in the same order
                        while m2 + 3 < ns and jidx[m2 + 3] < p1:
                            im = jidx[m2]
                            im2 = jidx[m2 + 1]
                            im3 = jidx[m2 + 2]
                            im4 = jidx[m2 + 3]
                            col = dinv + im * n
                            col2 = dinv + im2 * n
                            col3 = dinv + im3 * n
                            col4 = dinv + im4 * n
                            la = lv[m2]
                            lb = lv[m2 + 1]
                            lc = lv[m2 + 2]
                            ld = lv[m2 + 3]
                            acc = col[im] * la
                            sv = col[im2]
                            yv[m2 + 1] += sv * la
                            acc = acc + sv * lb
                            sv = col[im3]
                            sv2 = col2[im3]
                            yv[m2 + 2] = (yv[m2 + 2] + sv * la) + sv2 * lb
                            acc = acc + sv * lc
                            acc2 = col2[im2] * lb + sv2 * lc
                            sv = col[im4]
                            sv2 = col2[im4]
                            sv3 = col3[im4]
                            yv[m2 + 3] = ((yv[m2 + 3] + sv * la) + sv2 * lb) + sv3 * lc
                            acc = acc + sv * ld
                            acc2 = acc2 + sv2 * ld
                            acc3 = col3[im3] * lc + sv3 * ld
                            acc4 = col4[im4] * ld
                            for m in range(m2 + 4, ns):
                                r = jidx[m]
                                sv = col[r]
                                sv2 = col2[r]
                                sv3 = col3[r]
                                sv4 = col4[r]
                                lm = lv[m]
                                yv[m] = (((yv[m] + sv * la) + sv2 * lb) + sv3 * lc) + sv4 * ld
                                acc = acc + sv * lm
                                acc2 = acc2 + sv2 * lm
                                acc3 = acc3 + sv3 * lm
                                acc4 = acc4 + sv4 * lm
                            for m in range(ns, mtot):
                                r = jidx[m]
                                sv = sym_at(dinv, n, r, im)
                                sv2 = sym_at(dinv, n, r, im2)
                                sv3 = sym_at(dinv, n, r, im3)
                                sv4 = sym_at(dinv, n, r, im4)
                                lm = lv[m]
                                yv[m] = (((yv[m] + sv * la) + sv2 * lb) + sv3 * lc) + sv4 * ld
                                acc = acc + sv * lm
                                acc2 = acc2 + sv2 * lm
                                acc3 = acc3 + sv3 * lm
                                acc4 = acc4 + sv4 * lm
                            yv[m2] += acc
                            yv[m2 + 1] += acc2
                            yv[m2 + 2] += acc3
                            yv[m2 + 3] += acc4
                            m2 += 4
                        while m2 + 1 < ns and jidx[m2 + 1] < p1:
                            im = jidx[m2]
                            im2 = jidx[m2 + 1]
                            col = dinv + im * n
                            col2 = dinv + im2 * n
                            la = lv[m2]
                            lb = lv[m2 + 1]
                            acc = col[im] * la
                            sv = col[im2]
                            yv[m2 + 1] += sv * la
                            acc = acc + sv * lb
                            acc2 = col2[im2] * lb
                            for m in range(m2 + 2, ns):
                                sv = col[jidx[m]]
                                sv2 = col2[jidx[m]]
                                yv[m] = (yv[m] + sv * la) + sv2 * lb
                                acc = acc + sv * lv[m]
                                acc2 = acc2 + sv2 * lv[m]
                            for m in range(ns, mtot):
                                sv = sym_at(dinv, n, jidx[m], im)
                                sv2 = sym_at(dinv, n, jidx[m], im2)
                                yv[m] = (yv[m] + sv * la) + sv2 * lb
                                acc = acc + sv * lv[m]
                                acc2 = acc2 + sv2 * lv[m]
                            yv[m2] += acc
                            yv[m2 + 1] += acc2
                            m2 += 2
                        if m2 < ns and jidx[m2] < p1:
                            im = jidx[m2]
                            col = dinv + im * n
                            acc = col[im] * lv[m2]
                            for m in range(m2 + 1, ns):
                                sv = col[jidx[m]]
                                yv[m] += sv * lv[m2]
                                acc = acc + sv * lv[m]
                            for m in range(max(m2 + 1, ns), mtot):
                                sv = sym_at(dinv, n, jidx[m], im)
                                yv[m] += sv * lv[m2]
                                acc = acc + sv * lv[m]
                            yv[m2] += acc
                            m2 += 1
                    else:
                        while m2 < ns and jidx[m2] < p1:
                            im = jidx[m2]
                            sv = dinv[im * (n + 1)]
                            for d in range(k0):
                                yv[m2 * k0 + d] += sv * lv[m2 * k0 + d]
                            for m in range(m2 + 1, mtot):
                                sv = sym_at(dinv, n, jidx[m], im)
                                for d in range(k0):
                                    yv[m * k0 + d] += sv * lv[m2 * k0 + d]
                                    yv[m2 * k0 + d] += sv * lv[m * k0 + d]
                            m2 += 1
                    cur[j] = m2
                p0 = p1
            for j in range(j0, j1):
                if j1 - j0 > 1:
                    self._level_rows(j, nseg, &mtot)
                else:
                    mtot = goff[j + 1] - goff[j]
                lv = plv + goff[j] * k0
                yv = pyv + goff[j] * k0
                small_tri_inv(l00 + j * k0 * k0, k0, linv)
                # Sigma_00[j, j] = L_jj^{-T} (I + L_j^T Y) L_jj^{-1}
                for d2 in range(k0):
                    for d in range(k0):
                        acc = 1.0 if d == d2 else 0.0
                        for m in range(mtot):
                            acc = acc + lv[m * k0 + d] * yv[m * k0 + d2]
                        cm[d + d2 * k0] = acc
                for d2 in range(k0):
                    for d in range(k0):
                        acc = 0.0
                        for c in range(d2, k0):
                            acc = acc + cm[d + c * k0] * linv[c + d2 * k0]
                        tmp[d + d2 * k0] = acc
                dst = sel + j * k0 * k0
                for d2 in range(k0):
                    for d in range(k0):
                        acc = 0.0
                        for c in range(d, k0):
                            acc = acc + linv[c + d * k0] * tmp[c + d2 * k0]
                        dst[d + d2 * k0] = acc
                # Sigma_tr,j = -Y L_jj^{-1}
                for m in range(mtot):
                    for d in range(k0):
                        acc = 0.0
                        for c in range(d, k0):
                            acc = acc + yv[m * k0 + c] * linv[c + d * k0]
                        sel[sbase[m] + d * stride[m]] = -acc
            j0 = j1

    cdef inline Py_ssize_t _level_rows(self, Py_ssize_t j, Py_ssize_t nseg,
                                Py_ssize_t* mtot) noexcept nogil:
        """The rows R_j of column j of L below L_00[j, j], for ``_selected_inverse``.

        Fills ``g_idx`` (row in the trailing matrix), ``g_lbase`` and
        ``g_sbase`` (offsets of the entry in L and in ``g_sel``) and
        ``g_stride`` (between the k_0 columns), the rows of sparse blocks first,
        sorted ascending; returns their number, and all rows in ``mtot``.
        """
        cdef Py_ssize_t T = self.n_terms, s, b, ks, c0, e, lev, c, r, ld_s
        cdef Py_ssize_t k0 = self.k[0], m = 0, ns
        cdef const cnp.int64_t* troff = &self.g_troff[0]
        cdef const cnp.int64_t* seloff = &self.g_seloff[0]
        cdef cnp.int64_t* idx = &self.g_idx[0]
        cdef cnp.int64_t* lbase = &self.g_lbase[0]
        cdef cnp.int64_t* sbase = &self.g_sbase[0]
        cdef cnp.int64_t* stride = &self.g_stride[0]
        for s in range(1, T):       # rows of sparse blocks first
            b = bidx(s, 0)
            if self.kind_l[b] != SPARSE:
                continue
            ks = self.k[s]
            c0 = self.sp_cp[b]
            for e in range(self.colptr[c0 + j], self.colptr[c0 + j + 1]):
                lev = self.rowidx[self.sp_ri[b] + e]
                for c in range(ks):
                    idx[m] = troff[s] + lev * ks + c
                    lbase[m] = self.off_l[b] + e * ks * k0 + c
                    sbase[m] = seloff[s] + e * ks * k0 + c
                    stride[m] = ks
                    m += 1
        ns = m
        for s in range(1, nseg):
            if not self._seg_dense(s):
                continue
            ld_s = self._seg_ld(s)
            b = bidx(s, 0)
            for r in range(self._seg_rows(s)):
                idx[m] = troff[s] + r
                lbase[m] = self.off_l[b] + r + j * k0 * ld_s
                sbase[m] = seloff[s] + r + j * k0 * ld_s
                stride[m] = ld_s
                m += 1
        mtot[0] = m
        return ns

    cdef void _accumulate_k(self, bint reml) noexcept nogil:
        """K_t = sum_j [A Lambda~ Sigma]_tt[j, j] over the stored blocks of A (eq. 66).

        Block (s, t) of A, s > t, adds A_st^T lambda_s Sigma_st to K_t and
        A_st lambda_t Sigma_st^T to K_s, level pair by level pair; REML adds
        A_Xt^T Sigma_Xt.  Sigma comes from ``_selected_inverse``.
        """
        cdef Py_ssize_t T = self.n_terms, p = self.p1 - 1, p1 = self.p1
        cdef bint with_x = reml and p > 0
        cdef Py_ssize_t n, s, t, j, js, jt, e, c, d, r, b, ks, kt, nl, nnz
        cdef Py_ssize_t qs, qt, lds, r0
        cdef const cnp.int64_t* troff = &self.g_troff[0]
        cdef const cnp.int64_t* seloff = &self.g_seloff[0]
        cdef const double* dinv = &self.g_dinv[0]
        cdef const double* sel = &self.g_sel[0]
        cdef const double* a = &self.a[0]
        cdef double* kmat = &self.g_kmat[0]
        cdef double* sbuf = &self.g_small[0]
        cdef double* work = &self.g_small[0] + 2 * self.g_small.shape[0] // 4
        cdef const double* pa
        cdef const double* ps
        cdef const double* lam_s
        cdef const double* lam_t
        cdef double* k_s
        cdef double* k_t
        cdef double acc
        n = troff[T] + (p if with_x else 0)
        memset(kmat, 0, self.lam_off[T] * sizeof(double))
        for t in range(T):
            kt = self.k[t]
            nl = self.nlev[t]
            qt = self.q[t]
            lam_t = &self.lam[self.lam_off[t]]
            k_t = kmat + self.lam_off[t]
            # diagonal block: A_tt[j, j] lambda_t Sigma_tt[j, j]
            pa = a + self.off_a[bidx(t, t)]
            for j in range(nl):
                if t == 0:
                    ps = sel + j * kt * kt
                else:
                    r0 = troff[t] + j * kt
                    for d in range(kt):
                        for c in range(kt):
                            sbuf[c + d * kt] = sym_at(dinv, n, r0 + c, r0 + d)
                    ps = sbuf
                if kt == 1:
                    k_t[0] += pa[j] * lam_t[0] * ps[0]
                else:
                    small_add_at_lam_b(pa + j * kt * kt, kt, lam_t, kt, ps, kt,
                                       kt, k_t, work)
            # off-diagonal blocks (s, t), s > t
            for s in range(t + 1, T):
                b = bidx(s, t)
                ks = self.k[s]
                qs = self.q[s]
                lam_s = &self.lam[self.lam_off[s]]
                k_s = kmat + self.lam_off[s]
                pa = a + self.off_a[b]
                if t == 0:
                    ps = sel + seloff[s]
                    lds = qs
                else:
                    ps = dinv + troff[s] + troff[t] * n
                    lds = n
                if self.kind_a[b] == SPARSE:
                    nnz = self.colptr[self.sp_cp[b] + nl]
                    if ks == 1 and kt == 1:
                        acc = 0.0
                        for e in range(nnz):
                            acc = acc + pa[e] * ps[e]
                        k_t[0] += lam_s[0] * acc
                        k_s[0] += lam_t[0] * acc
                    else:
                        for e in range(nnz):
                            small_add_at_lam_b(pa + e * ks * kt, ks, lam_s, ks,
                                               ps + e * ks * kt, ks, kt, k_t, work)
                            small_add_a_lam_bt(pa + e * ks * kt, ks, lam_t, kt,
                                               ps + e * ks * kt, ks, ks, k_s, work)
                elif ks == 1 and kt == 1:
                    acc = 0.0
                    for c in range(qt):
                        for r in range(qs):
                            acc = acc + pa[r + c * qs] * ps[r + c * lds]
                    k_t[0] += lam_s[0] * acc
                    k_s[0] += lam_t[0] * acc
                else:
                    for jt in range(nl):
                        for js in range(self.nlev[s]):
                            small_add_at_lam_b(pa + js * ks + jt * kt * qs, qs,
                                               lam_s, ks,
                                               ps + js * ks + jt * kt * lds, lds,
                                               kt, k_t, work)
                            small_add_a_lam_bt(pa + js * ks + jt * kt * qs, qs,
                                               lam_t, kt,
                                               ps + js * ks + jt * kt * lds, lds,
                                               ks, k_s, work)
            # fixed effects (REML): A_Xt^T Sigma_Xt
            if with_x:
                pa = a + self.off_a[bidx(T, t)]
                if t == 0:
                    ps = sel + seloff[T]
                    lds = p1
                else:
                    ps = dinv + troff[T] + troff[t] * n
                    lds = n
                for j in range(nl):
                    for d in range(kt):
                        for c in range(kt):
                            acc = 0.0
                            for r in range(p):
                                acc = acc + (pa[r + (j * kt + c) * p1]
                                             * ps[r + (j * kt + d) * lds])
                            k_t[c + d * kt] += acc

    cdef void _add_residual_term(self, double scale) noexcept nogil:
        """K_t -= scale * sum_j v_j u_j^T, v = Z^T W r = A_Zy - A_ZX beta - A_ZZ Lambda u (eq. 65)."""
        cdef Py_ssize_t T = self.n_terms, p = self.p1 - 1, p1 = self.p1
        cdef Py_ssize_t t, s, j, e, c, d, b, ks, kt, lev, c0, qs, qt
        cdef const cnp.int64_t* uoff = &self.g_uoff[0]
        cdef const double* lxx = &self.l[self.off_l[bidx(T, T)]]
        cdef const double* a = &self.a[0]
        cdef const double* pa
        cdef const double* lam_t
        cdef double* beta = &self.g_beta[0]
        cdef double* u = &self.g_u[0]
        cdef double* v = &self.g_v[0]
        cdef double* bv = &self.g_b[0]
        cdef const cnp.int64_t* ri
        cdef double* vt
        cdef double* vs
        cdef const double* bt
        cdef const double* bs
        cdef double* k_t
        cdef double acc
        # beta-hat (eq. 21), then u (eq. 22) with rhs = (beta, -1)
        for c in range(p):
            beta[c] = lxx[p + c * p1]
        trsv_lt(<blas_int>p, lxx, <blas_int>p1, beta)
        beta[p] = -1.0
        self._back_solve(beta, uoff, u)
        # b = Lambda u
        for t in range(T):
            kt = self.k[t]
            lam_t = &self.lam[self.lam_off[t]]
            for j in range(self.nlev[t]):
                for c in range(kt):
                    acc = 0.0
                    for d in range(c + 1):
                        acc = acc + lam_t[c + d * kt] * u[uoff[t] + j * kt + d]
                    bv[uoff[t] + j * kt + c] = acc
        # v_t = A_{T,t}^T (-beta, 1) - sum_s A_ts b_s
        memset(v, 0, uoff[T] * sizeof(double))
        for t in range(T):
            kt = self.k[t]
            qt = self.q[t]
            gemv_t(<blas_int>p1, <blas_int>qt, -1.0, a + self.off_a[bidx(T, t)],
                   <blas_int>p1, beta, v + uoff[t])
            pa = a + self.off_a[bidx(t, t)]
            for j in range(self.nlev[t]):
                for c in range(kt):
                    acc = 0.0
                    for d in range(kt):
                        acc = acc + pa[j * kt * kt + c + d * kt] * bv[uoff[t] + j * kt + d]
                    v[uoff[t] + j * kt + c] -= acc
            for s in range(t + 1, T):
                b = bidx(s, t)
                ks = self.k[s]
                qs = self.q[s]
                pa = a + self.off_a[b]
                if self.kind_a[b] == SPARSE:
                    c0 = self.sp_cp[b]
                    ri = &self.rowidx[self.sp_ri[b]]
                    vt = v + uoff[t]
                    vs = v + uoff[s]
                    bt = bv + uoff[t]
                    bs = bv + uoff[s]
                    for j in range(self.nlev[t]):
                        for e in range(self.colptr[c0 + j], self.colptr[c0 + j + 1]):
                            lev = ri[e]
                            for d in range(kt):
                                for c in range(ks):
                                    acc = pa[e * ks * kt + c + d * ks]
                                    vt[j * kt + d] -= acc * bs[lev * ks + c]
                                    vs[lev * ks + c] -= acc * bt[j * kt + d]
                else:
                    gemv_t(<blas_int>qs, <blas_int>qt, -1.0, pa, <blas_int>qs,
                           bv + uoff[s], v + uoff[t])
                    gemv_n(<blas_int>qs, <blas_int>qt, -1.0, pa, <blas_int>qs,
                           bv + uoff[t], v + uoff[s])
        for t in range(T):
            kt = self.k[t]
            k_t = &self.g_kmat[self.lam_off[t]]
            for d in range(kt):
                for c in range(kt):
                    acc = 0.0
                    for j in range(self.nlev[t]):
                        acc = acc + v[uoff[t] + j * kt + c] * u[uoff[t] + j * kt + d]
                    k_t[c + d * kt] -= scale * acc

    cdef int _gradient(self, bint reml, double* grad) noexcept nogil:
        """d criterion / d theta at the current L into ``grad`` (eq. 66); LAPACK's info."""
        cdef Py_ssize_t T = self.n_terms, t, i, j, kt, pos
        cdef double ld_l2, ld_rx2, pwrss, dof
        cdef const double* k_t
        cdef int info = self._selected_inverse(reml)
        if info != 0:
            return info
        self._accumulate_k(reml)
        self._components(&ld_l2, &ld_rx2, &pwrss)
        dof = self.nobs - (self.p1 - 1) if reml else self.nobs
        self._add_residual_term(dof / pwrss)
        for t in range(T):
            kt = self.k[t]
            k_t = &self.g_kmat[self.lam_off[t]]
            pos = self.theta_off[t]
            for j in range(kt):
                for i in range(j, kt):
                    grad[pos] = 2.0 * k_t[i + j * kt]
                    pos += 1
        return 0

    def gradient(self, const double[::1] theta, bint reml, double[::1] grad):
        """Update L for ``theta``, write d criterion / d theta into ``grad``, return the criterion.

        ``theta`` and ``grad`` are in the internal order of ``objective``; the
        value returned is the one ``objective`` returns (eqs. 18, 20), and the
        factor is left as ``objective`` leaves it.  The derivative is analytic
        (eqs. 64-68): no division by theta, so it holds on the boundary too.
        Where the factorisation fails, returns +inf and fills ``grad`` with NaN.
        """
        cdef double val, dummy = 0.0
        if theta.shape[0] != self.n_theta:
            raise ValueError(f"theta has length {theta.shape[0]}, "
                             f"expected {self.n_theta}")
        if grad.shape[0] != self.n_theta:
            raise ValueError(f"grad has length {grad.shape[0]}, "
                             f"expected {self.n_theta}")
        with nogil:
            val = self._value(&theta[0] if self.n_theta > 0 else NULL, reml)
        if self.last_info == INTERRUPTED:
            raise_pending()
        self._derivatives(reml, &grad[0] if self.n_theta > 0 else &dummy, NULL)
        return val

    cdef double _derivatives(self, bint reml, double* grad, double* hess) except? -1.0:
        """``derivatives`` on raw arrays (n_theta, and n_theta^2 or NULL)."""
        cdef int ginfo = 0
        cdef double val
        cdef Py_ssize_t i, n = self.n_theta
        if self.last_info != 0:
            for i in range(n):
                grad[i] = NAN
            if hess != NULL:
                for i in range(n * n):
                    hess[i] = NAN
            return INFINITY
        if not self.g_ready and self.n_terms > 0:
            self._alloc_gradient()
        if hess != NULL and not self.h_ready and self.n_terms > 0:
            self._alloc_hessian()
        with nogil:
            val = self._criterion(reml)
            if self.n_terms > 0 and not (self.g_current and self.g_current_reml == reml):
                ginfo = self._gradient(reml, grad)
                if ginfo == 0:
                    self.g_current = True
                    self.g_current_reml = reml
            elif self.n_terms > 0:
                self._grad_from_k(grad)
            if ginfo != 0:
                for i in range(n):
                    grad[i] = NAN
                if hess != NULL:
                    for i in range(n * n):
                        hess[i] = NAN
            elif hess != NULL and self.n_terms > 0:
                self._hessian(reml, hess)
        return val

    def derivatives(self, bint reml, double[::1] grad, hess=None):
        """Gradient (eq. 66) and, if ``hess`` is given, the approximate Hessian
        (eq. 70) of the criterion at the current factor; returns the criterion.

        Nothing is refactorised: this follows ``objective`` (or ``update``) at
        the theta whose derivatives are wanted, so that an optimiser that
        rejects a step pays for the criterion only.  ``grad`` (n_theta) and
        ``hess`` (n_theta x n_theta, C-contiguous) are in the internal order.
        Where the factor is not valid, returns +inf and fills them with NaN.
        """
        cdef Py_ssize_t n = self.n_theta
        cdef double[:, ::1] h
        cdef double dummy = 0.0
        if grad.shape[0] != n:
            raise ValueError(f"grad has length {grad.shape[0]}, expected {n}")
        if hess is None:
            return self._derivatives(reml, &grad[0] if n > 0 else &dummy, NULL)
        h = hess
        if h.shape[0] != n or h.shape[1] != n:
            raise ValueError(f"hess must be {n} x {n}")
        return self._derivatives(reml, &grad[0] if n > 0 else &dummy,
                                 &h[0, 0] if n > 0 else &dummy)

    # ------------------------------------ the approximate Hessian in theta
    cdef void _alloc_hessian(self) except *:
        """Work arrays of ``_hessian``: per theta entry m, D_m v (q), A D_m v
        and L^{-1} c_m (q + p each), column after column."""
        cdef Py_ssize_t n = max(self.n_theta, 1)
        cdef Py_ssize_t qtot = self.g_uoff[self.n_terms]
        cdef Py_ssize_t ld = qtot + self.p1 - 1
        self.h_vm = np.zeros(max(qtot * n, 1), dtype=np.float64)
        self.h_av = np.zeros(max(ld * n, 1), dtype=np.float64)
        self.h_y = np.zeros(max(ld * n, 1), dtype=np.float64)
        self.h_ew = np.zeros(n, dtype=np.float64)
        self.h_ready = True

    cdef void _grad_from_k(self, double* grad) noexcept nogil:
        """The gradient 2 (K_t)_ab (eq. 66) from the K_t of the last ``_gradient``."""
        cdef Py_ssize_t t, i, j, kt, pos
        cdef const double* k_t
        for t in range(self.n_terms):
            kt = self.k[t]
            k_t = &self.g_kmat[self.lam_off[t]]
            pos = self.theta_off[t]
            for j in range(kt):
                for i in range(j, kt):
                    grad[pos] = 2.0 * k_t[i + j * kt]
                    pos += 1

    cdef void _a_times(self, Py_ssize_t t, const double* vt, double* out) noexcept nogil:
        """out += A_{., t} vt: block column t of A (Z rows, then X rows) times
        a vector of term t's random effects (eq. 70)."""
        cdef Py_ssize_t T = self.n_terms, p = self.p1 - 1, s, j, e, c, d, b, lev
        cdef Py_ssize_t kt = self.k[t], ks, k0 = self.k[0]
        cdef const cnp.int64_t* uoff = &self.g_uoff[0]
        cdef const cnp.int64_t* ri
        cdef const double* pa
        cdef const double* blk
        cdef double acc
        cdef double* o
        # the diagonal block, level by level
        pa = &self.a[self.off_a[bidx(t, t)]]
        o = out + uoff[t]
        for j in range(self.nlev[t]):
            for c in range(kt):
                acc = 0.0
                for d in range(kt):
                    acc = acc + pa[j * kt * kt + c + d * kt] * vt[j * kt + d]
                o[j * kt + c] += acc
        # blocks (s, t) below it: out_s += A_st vt
        for s in range(t + 1, T):
            b = bidx(s, t)
            ks = self.k[s]
            pa = &self.a[self.off_a[b]]
            o = out + uoff[s]
            if self.kind_a[b] == SPARSE:
                ri = &self.rowidx[self.sp_ri[b]]
                for j in range(self.nlev[t]):
                    for e in range(self.colptr[self.sp_cp[b] + j],
                                   self.colptr[self.sp_cp[b] + j + 1]):
                        lev = ri[e]
                        blk = pa + e * ks * kt
                        for c in range(ks):
                            acc = 0.0
                            for d in range(kt):
                                acc = acc + blk[c + d * ks] * vt[j * kt + d]
                            o[lev * ks + c] += acc
            else:
                gemv_n(<blas_int>self.q[s], <blas_int>self.q[t], 1.0, pa,
                       <blas_int>self.q[s], vt, o)
        # blocks (t, s) to its left: out_s += A_ts^T vt
        for s in range(t):
            b = bidx(t, s)
            pa = &self.a[self.off_a[b]]
            o = out + uoff[s]
            if self.kind_a[b] == SPARSE:   # s = 0
                ri = &self.rowidx[self.sp_ri[b]]
                for j in range(self.nlev[0]):
                    for e in range(self.colptr[self.sp_cp[b] + j],
                                   self.colptr[self.sp_cp[b] + j + 1]):
                        lev = ri[e]
                        blk = pa + e * kt * k0
                        for d in range(k0):
                            acc = 0.0
                            for c in range(kt):
                                acc = acc + blk[c + d * kt] * vt[lev * kt + c]
                            o[j * k0 + d] += acc
            else:
                gemv_t(<blas_int>self.q[t], <blas_int>self.q[s], 1.0, pa,
                       <blas_int>self.q[t], vt, o)
        # the fixed-effects rows (not the response's)
        gemv_n(<blas_int>p, <blas_int>self.q[t], 1.0, &self.a[self.off_a[bidx(T, t)]],
               <blas_int>self.p1, vt, out + uoff[T])

    cdef void _forward_solve(self, bint with_x, Py_ssize_t nrhs, double* y,
                             Py_ssize_t ldy) noexcept nogil:
        """Y <- L^{-1} Y for ``nrhs`` columns (leading dimension ``ldy``): L_Z,
        or with ``with_x`` the factor of Omega (L without its response row)."""
        cdef Py_ssize_t T = self.n_terms, p = self.p1 - 1, t, s, j, e, c, d, r, b
        cdef Py_ssize_t nseg = T + 1 if with_x else T, rows_t, ld_t, kt, k0 = self.k[0]
        cdef const cnp.int64_t* uoff = &self.g_uoff[0]
        cdef const cnp.int64_t* ri
        cdef const double* pb
        cdef const double* blk
        cdef double acc
        cdef double* yt
        for t in range(nseg):
            rows_t = self.q[t] if t < T else p
            ld_t = self.q[t] if t < T else self.p1
            kt = self.k[t] if t < T else 1
            yt = y + uoff[t]
            if rows_t == 0:
                continue
            for s in range(t):
                b = bidx(t, s)
                pb = &self.l[self.off_l[b]]
                if self.kind_l[b] == SPARSE:   # s = 0, t < T
                    ri = &self.rowidx[self.sp_ri[b]]
                    for r in range(nrhs):
                        for j in range(self.nlev[0]):
                            for e in range(self.colptr[self.sp_cp[b] + j],
                                           self.colptr[self.sp_cp[b] + j + 1]):
                                blk = pb + e * kt * k0
                                for c in range(kt):
                                    acc = 0.0
                                    for d in range(k0):
                                        acc = acc + blk[c + d * kt] * y[r * ldy + j * k0 + d]
                                    yt[r * ldy + ri[e] * kt + c] -= acc
                else:
                    gemm_nn(<blas_int>rows_t, <blas_int>nrhs, <blas_int>self.q[s], -1.0,
                            pb, <blas_int>ld_t, y + uoff[s], <blas_int>ldy, 1.0,
                            yt, <blas_int>ldy)
            pb = &self.l[self.off_l[bidx(t, t)]]
            if t == 0:
                for r in range(nrhs):
                    for j in range(self.nlev[0]):
                        blk = pb + j * k0 * k0
                        for c in range(k0):
                            acc = yt[r * ldy + j * k0 + c]
                            for d in range(c):
                                acc = acc - blk[c + d * k0] * yt[r * ldy + j * k0 + d]
                            yt[r * ldy + j * k0 + c] = acc / blk[c + c * k0]
            else:
                trsm_lln(<blas_int>rows_t, <blas_int>nrhs, pb, <blas_int>ld_t,
                         yt, <blas_int>ldy)

    cdef void _hessian(self, bint reml, double* h) noexcept nogil:
        """The approximate Hessian of the criterion in theta at the current
        factor (eq. 70) into ``h`` (n_theta x n_theta), after ``_gradient``.

        With v = Z^T W e, the conditional residual's cross-product (eq. 65),
        sigma^2 = r^2 / nu and, for each entry m of theta, the vector
        V_m = D_m v with D_m = d(Lambda Lambda^T)/d theta_m:

            H_mn = (V_m^T A_ZZ V_n - y_m^T y_n) / sigma^2
                   - (v^T V_m)(v^T V_n) / (sigma^4 nu) + 2 G_t[a, b] [same column],

        y_m = L^{-1} c_m, c_m = [Lambda^T A_Z. ; A_X.] V_m (REML; ML without
        the X rows), and G_t = K_t lambda_t^{-1} the derivative of the
        criterion in lambda_t lambda_t^T (eq. 66), left out for a term with a
        zero on lambda's diagonal.
        """
        cdef Py_ssize_t T = self.n_terms, p = self.p1 - 1, n = self.n_theta
        cdef Py_ssize_t qtot = self.g_uoff[T], ld = qtot + p
        cdef Py_ssize_t t, s, m, mm, i, j, c, d, r, kt, lv, pos, pos2, i2, j2
        cdef bint with_x = reml and p > 0
        cdef Py_ssize_t nrow = ld if with_x else qtot
        cdef const cnp.int64_t* uoff = &self.g_uoff[0]
        cdef const double* v = &self.g_v[0]
        cdef const double* lam_t
        cdef const double* x
        cdef const double* k_t
        cdef double* vm = &self.h_vm[0]
        cdef double* av = &self.h_av[0]
        cdef double* y = &self.h_y[0]
        cdef double* ew = &self.h_ew[0]
        cdef double* out
        cdef double* g = &self.g_small[0]
        cdef double ld_l2, ld_rx2, pwrss, nu, s2, acc, dot, lmax
        cdef bint ok
        self._components(&ld_l2, &ld_rx2, &pwrss)
        nu = self.nobs - p if reml else self.nobs
        s2 = pwrss / nu
        memset(vm, 0, qtot * n * sizeof(double))
        memset(av, 0, ld * n * sizeof(double))
        # V_m = D_m v, (D_m x)_r = [r = i] lambda[:, j].x + lambda[r, j] x_i
        for t in range(T):
            kt = self.k[t]
            lam_t = &self.lam[self.lam_off[t]]
            m = self.theta_off[t]
            for j in range(kt):
                for i in range(j, kt):
                    out = vm + m * qtot + uoff[t]
                    acc = 0.0
                    for lv in range(self.nlev[t]):
                        x = v + uoff[t] + lv * kt
                        dot = 0.0
                        for r in range(j, kt):
                            dot = dot + lam_t[r + j * kt] * x[r]
                        for r in range(j, kt):
                            out[lv * kt + r] = lam_t[r + j * kt] * x[i]
                        out[lv * kt + i] += dot
                        for r in range(kt):
                            acc = acc + x[r] * out[lv * kt + r]
                    ew[m] = acc
                    self._a_times(t, out, av + m * ld)
                    m += 1
        # c_m = [Lambda^T (A V_m)_Z ; (A V_m)_X], then y_m = L^{-1} c_m
        for m in range(n):
            for t in range(T):
                kt = self.k[t]
                lam_t = &self.lam[self.lam_off[t]]
                for lv in range(self.nlev[t]):
                    x = av + m * ld + uoff[t] + lv * kt
                    out = y + m * ld + uoff[t] + lv * kt
                    for c in range(kt):
                        acc = 0.0
                        for r in range(c, kt):
                            acc = acc + lam_t[r + c * kt] * x[r]
                        out[c] = acc
            for r in range(p):
                y[m * ld + qtot + r] = av[m * ld + qtot + r]
        self._forward_solve(with_x, n, y, ld)
        for m in range(n):
            for mm in range(m + 1):
                acc = 0.0
                for r in range(qtot):
                    acc = acc + vm[m * qtot + r] * av[mm * ld + r]
                dot = 0.0
                for r in range(nrow):
                    dot = dot + y[m * ld + r] * y[mm * ld + r]
                acc = (acc - dot) / s2 - ew[m] * ew[mm] / (s2 * s2 * nu)
                h[m * n + mm] = acc
                h[mm * n + m] = acc
        # + 2 G_t[a, b] for two entries (a, j), (b, j) of one column of lambda_t
        for t in range(T):
            kt = self.k[t]
            lam_t = &self.lam[self.lam_off[t]]
            k_t = &self.g_kmat[self.lam_off[t]]
            lmax = 0.0
            for r in range(kt * kt):
                lmax = max(lmax, fabs(lam_t[r]))
            ok = lmax > 0
            for c in range(kt):
                if not fabs(lam_t[c + c * kt]) > 1e-10 * lmax:
                    ok = False
            if not ok:
                continue
            # G lambda = K: row by row, columns from the last
            for r in range(kt):
                for c in range(kt - 1, -1, -1):
                    acc = k_t[r + c * kt]
                    for d in range(c + 1, kt):
                        acc = acc - g[r + d * kt] * lam_t[d + c * kt]
                    g[r + c * kt] = acc / lam_t[c + c * kt]
            pos = self.theta_off[t]
            for j in range(kt):
                for i in range(j, kt):
                    pos2 = self.theta_off[t]
                    for j2 in range(kt):
                        for i2 in range(j2, kt):
                            if j2 == j:
                                h[pos * n + pos2] += g[i + i2 * kt] + g[i2 + i * kt]
                            pos2 += 1
                    pos += 1


def _restored_core(args, state):
    """A ``BlockedCholesky`` from its ``__reduce__``: built from the constructor's
    arguments, then given the factor state."""
    core = BlockedCholesky(*args)
    core.__setstate__(state)
    return core


# pickles name the package's module (the extension registers itself as ``_cholesky`` too,
# which a fresh interpreter cannot import before lmmfast)
_restored_core.__module__ = __name__


# ------------------------------------------- C entry points for the optimiser
cdef double _api_value(object core, const double* theta, bint reml) except? -1.0:
    return (<BlockedCholesky>core)._value(theta, reml)


cdef double _api_derivatives(object core, bint reml, double* grad,
                             double* hess) except? -1.0:
    return (<BlockedCholesky>core)._derivatives(reml, grad, hess)


cdef CoreApi _CORE_API
_CORE_API.value = _api_value
_CORE_API.derivatives = _api_derivatives
_CORE_API_CAPSULE = PyCapsule_New(<void*>&_CORE_API, b"lmmfast._cholesky.CoreApi", NULL)
