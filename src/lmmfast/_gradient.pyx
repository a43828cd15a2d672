# cython: language_level=3
"""The gradient of the profiled criterion in theta, by selected inversion (theory.md,
eqs. 64-68).

With Sigma the inverse of the penalised system (REML: Omega^{-1} without the
response row; ML: M^{-1}), the derivative in the entries of lambda_t is
2 K_t, K_t = sum_j [A Lambda~ Sigma]_tt[j, j] minus the residual term of
eq. 65 (``_accumulate_k``, ``_add_residual_term``).  Only the entries of
Sigma on the block pattern of L are needed: a selected inverse (eqs. 67, 68,
``_selected_inverse``).  No division by theta: the derivative holds on the
boundary too.
"""

import numpy as np
cimport cython
cimport numpy as cnp
from libc.string cimport memcpy, memset

from lmmfast._factor cimport BlockedFactor, bidx, DENSE, SPARSE
from lmmfast._factor import packed
from lmmfast._kernels cimport (blas_int, gemm_nn, gemm_tn, symm_ll, trsv_lt, gemv_t, gemv_n,
                               tri_inv_l, tri_inv_small, lauum_l)

cnp.import_array()

cdef enum:
    SEL_PANEL_BYTES = 1048576   # columns of Sigma_tr visited together by the selected inverse


cdef inline Py_ssize_t _seg_rows(BlockedFactor f, Py_ssize_t s) noexcept nogil:
    """Rows of segment s of the trailing matrix: term s, or X (s = T)."""
    return f.q[s] if s < f.n_terms else f.p1 - 1


cdef inline Py_ssize_t _seg_ld(BlockedFactor f, Py_ssize_t s) noexcept nogil:
    """Leading dimension of the blocks (s, t) of L with rows of segment s."""
    return f.q[s] if s < f.n_terms else f.p1


cdef inline bint _seg_dense(BlockedFactor f, Py_ssize_t s) noexcept nogil:
    """Whether block (s, 0) of L is dense (every row in every column)."""
    return s == f.n_terms or f.kind_l[bidx(s, 0)] == DENSE


cdef inline double sym_at(const double* d, Py_ssize_t ld, Py_ssize_t i,
                          Py_ssize_t j) noexcept nogil:
    """Element (i, j) of a symmetric matrix held by its lower triangle."""
    if i >= j:
        return d[i + j * ld]
    return d[j + i * ld]


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


cdef class GradientWork:
    """The work arrays of the gradient of one factor's criterion, and its last K_t."""

    def __init__(self, BlockedFactor f):
        """Work arrays for ``f``, sized for REML (ML uses less of them).

        ``troff``: row offset of term s >= 1 (and of X, s = T) in the dense
        trailing matrix; ``seloff``: offset of Sigma_00 (s = 0) and of
        Sigma_s0 (same layout as block (s, 0) of L) in ``sel``.
        """
        cdef Py_ssize_t T = f.n_terms, p = f.p1 - 1, s, b, t
        cdef Py_ssize_t k0 = f.k[0], g0 = f.nlev[0], q0 = f.q[0]
        cdef Py_ssize_t n_dense = p, kmax = 1, size
        troff = np.zeros(T + 1, dtype=np.int64)
        seloff = np.zeros(T + 1, dtype=np.int64)
        uoff = np.zeros(T + 1, dtype=np.int64)
        sparse_rows = np.zeros(g0, dtype=np.int64)
        seloff[1] = g0 * k0 * k0
        for t in range(T):
            uoff[t + 1] = uoff[t] + f.q[t]
            kmax = max(kmax, f.k[t])
        for s in range(1, T):
            troff[s + 1] = troff[s] + f.q[s]
            b = bidx(s, 0)
            if f.kind_l[b] == SPARSE:
                cp = np.asarray(f.colptr[f.sp_cp[b]:f.sp_cp[b] + g0 + 1])
                sparse_rows += np.diff(cp) * f.k[s]
                size = cp[g0] * f.k[s] * k0
            else:
                n_dense += f.q[s]
                size = f.q[s] * q0
            seloff[s + 1] = seloff[s] + size
        maxrows = max(n_dense + int(sparse_rows.max()), 1)
        n_tr = troff[T] + p
        self.troff = troff
        self.seloff = seloff
        self.uoff = uoff
        self.dinv = np.zeros(max(n_tr * n_tr, 1), dtype=np.float64)
        self.sel = np.zeros(seloff[T] + f.p1 * q0, dtype=np.float64)
        self.idx = np.zeros(maxrows, dtype=np.int64)
        self.lbase = np.zeros(maxrows, dtype=np.int64)
        self.sbase = np.zeros(maxrows, dtype=np.int64)
        self.stride = np.zeros(maxrows, dtype=np.int64)
        # the rows of every level of term 0, for the panels of step 3 of
        # ``_selected_inverse`` (sized for REML)
        size = max(int(sparse_rows.sum()) + g0 * n_dense, 1)
        self.goff = np.zeros(g0 + 1, dtype=np.int64)
        self.pns = np.zeros(max(g0, 1), dtype=np.int64)
        self.pidx = np.zeros(size, dtype=np.int64)
        self.plv = np.zeros(size * k0, dtype=np.float64)
        self.pyv = np.zeros(size * k0, dtype=np.float64)
        self.u = np.zeros(max(uoff[T], 1), dtype=np.float64)
        self.v = np.zeros(max(uoff[T], 1), dtype=np.float64)
        self.b = np.zeros(max(uoff[T], 1), dtype=np.float64)
        self.beta = np.zeros(f.p1, dtype=np.float64)
        self.kmat = np.zeros(max(f.lam_off[T], 1), dtype=np.float64)
        self.small = np.zeros(4 * kmax * kmax, dtype=np.float64)
        self.cursor = np.zeros(max(g0, 1), dtype=np.int64)
        self.done = -1
        self.reml = False

    @cython.final
    cdef int _selected_inverse(self, BlockedFactor f, bint reml,
                               Py_ssize_t panel_columns) noexcept nogil:
        """Sigma on the block pattern of L (eqs. 67, 68); LAPACK's info.

        REML: Sigma = Omega^{-1}, from L without its y row; ML: Sigma = M^{-1},
        from L_Z.  The trailing terms 1..T-1 (and X for REML) are dense in L,
        so their part of Sigma is the dense inverse (eq. 68), in ``dinv``
        (lower triangle).  Block column 0 follows level by level from the
        recurrence (eq. 67): Sigma_00[j, j] and Sigma_s0 on the pattern of
        L_s0, in ``sel``.  Products of dense rows with dense rows are done
        for all levels at once (BLAS), the rest per level, by panels of
        columns of Sigma_tr (``_sel_levels``).
        """
        cdef Py_ssize_t T = f.n_terms, p = f.p1 - 1
        cdef Py_ssize_t nseg = T + 1 if (reml and p > 0) else T
        cdef Py_ssize_t g0 = f.nlev[0], q0 = f.q[0]
        cdef Py_ssize_t n, s, t, sb, c, r0, rows_s, rows_t, ld_s, ld_b, w
        cdef const cnp.int64_t* troff = &self.troff[0]
        cdef const cnp.int64_t* seloff = &self.seloff[0]
        cdef double* dinv = &self.dinv[0]
        cdef double* sel = &self.sel[0]
        cdef const double* l = &f.l[0]
        cdef const double* src
        cdef double* dst
        cdef int info
        n = troff[T] + (p if nseg > T else 0)
        # 1. dense inverse of the trailing factor (eq. 68)
        if n > 0:
            for t in range(1, nseg):
                rows_t = _seg_rows(f, t)
                for s in range(t, nseg):
                    rows_s = _seg_rows(f, s)
                    ld_s = _seg_ld(f, s)
                    src = l + f.off_l[bidx(s, t)]
                    dst = dinv + troff[s] + troff[t] * n
                    for c in range(rows_t):
                        r0 = c if s == t else 0
                        memcpy(dst + r0 + c * n, src + r0 + c * ld_s,
                               (rows_s - r0) * sizeof(double))
            tri_inv_l(<blas_int>n, dinv, <blas_int>n)
            info = lauum_l(<blas_int>n, dinv, <blas_int>n)
            if info != 0:
                return info
        # 2. Y_s0 = sum_b Sigma_sb L_b0 over dense segments s, b, all levels at once
        for s in range(1, nseg):
            if not _seg_dense(f, s):
                continue
            rows_s = _seg_rows(f, s)
            ld_s = _seg_ld(f, s)
            dst = sel + seloff[s]
            memset(dst, 0, ld_s * q0 * sizeof(double))
            for sb in range(1, nseg):
                if not _seg_dense(f, sb):
                    continue
                src = l + f.off_l[bidx(sb, 0)]
                ld_b = _seg_ld(f, sb)
                if sb == s:
                    symm_ll(<blas_int>rows_s, <blas_int>q0, 1.0,
                            dinv + troff[s] * (n + 1), <blas_int>n,
                            src, <blas_int>ld_b, 1.0, dst, <blas_int>ld_s)
                elif sb < s:
                    gemm_nn(<blas_int>rows_s, <blas_int>q0,
                            <blas_int>_seg_rows(f, sb), 1.0,
                            dinv + troff[s] + troff[sb] * n, <blas_int>n,
                            src, <blas_int>ld_b, 1.0, dst, <blas_int>ld_s)
                else:
                    gemm_tn(<blas_int>rows_s, <blas_int>q0,
                            <blas_int>_seg_rows(f, sb), 1.0,
                            dinv + troff[sb] + troff[s] * n, <blas_int>n,
                            src, <blas_int>ld_b, 1.0, dst, <blas_int>ld_s)
        # 3. level by level: the rows R_j of column j of L below L_00[j, j].
        # Y_j = Sigma_tr[R_j, R_j] L_j on the pairs of rows with at least one
        # sparse row reads Sigma_tr scattered over all of it, so the pairs are
        # visited by panels of about SEL_PANEL_BYTES of its columns (the
        # column of the sparse row of the pair), every level's rows, L_j and
        # partial Y_j kept across panels (``pidx``, ``plv``, ``pyv``),
        # a per-level cursor marking its next sparse row.  Every entry of Y_j
        # receives its terms in the same order as level by level (the sparse
        # rows are sorted ascending): the same result, bit for bit.  When
        # Sigma_tr fits in one panel, the levels go one at a time.
        w = SEL_PANEL_BYTES // (<Py_ssize_t>sizeof(double) * (n if n > 0 else 1))
        if panel_columns > 0:
            w = panel_columns
        if w < 1:
            w = 1
        self._sel_levels(f, nseg, n, w, g0 if w < n else 1)
        return 0

    @cython.final
    cdef void _sel_levels(self, BlockedFactor f, Py_ssize_t nseg, Py_ssize_t n, Py_ssize_t w,
                          Py_ssize_t nchunk) noexcept nogil:
        """Step 3 of ``_selected_inverse``: nchunk levels of term 0 at a time, panels of w columns."""
        cdef Py_ssize_t k0 = f.k[0], g0 = f.nlev[0]
        cdef Py_ssize_t j, j0, j1, b, m, m2, mtot, ns, d, d2, c, im, im2, p0, p1
        cdef Py_ssize_t im3, im4, r
        cdef cnp.int64_t* idx = &self.idx[0]
        cdef cnp.int64_t* lbase = &self.lbase[0]
        cdef cnp.int64_t* sbase = &self.sbase[0]
        cdef cnp.int64_t* stride = &self.stride[0]
        cdef cnp.int64_t* goff = &self.goff[0]
        cdef cnp.int64_t* pns = &self.pns[0]
        cdef cnp.int64_t* cur = &self.cursor[0]
        cdef cnp.int64_t* pidx = &self.pidx[0]
        cdef const cnp.int64_t* jidx
        cdef double* plv = &self.plv[0]
        cdef double* pyv = &self.pyv[0]
        cdef double* lv
        cdef double* yv
        cdef const double* col
        cdef const double* col2
        cdef const double* col3
        cdef const double* col4
        cdef double la, lb, lc, ld, lm, acc2, acc3, acc4, sv2, sv3, sv4
        cdef const double* dinv = &self.dinv[0]
        cdef double* sel = &self.sel[0]
        cdef double* linv = &self.small[0]
        cdef double* cm = linv + k0 * k0
        cdef double* tmp = cm + k0 * k0
        cdef const double* l = &f.l[0]
        cdef const double* l00 = &f.l[f.off_l[0]]
        cdef double* dst
        cdef double acc, sv
        cdef bint any_sparse = False   # a sparse block (s, 0): pairs to visit by panels
        for j in range(1, f.n_terms):
            if f.kind_l[bidx(j, 0)] == SPARSE:
                any_sparse = True
        j0 = 0
        while j0 < g0:
            j1 = j0 + nchunk
            if j1 > g0:
                j1 = g0
            goff[j0] = 0
            for j in range(j0, j1):
                ns = self._level_rows(f, j, nseg, &mtot)
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
                    self._level_rows(f, j, nseg, &mtot)
                else:
                    mtot = goff[j + 1] - goff[j]
                lv = plv + goff[j] * k0
                yv = pyv + goff[j] * k0
                for c in range(k0 * k0):
                    linv[c] = l00[j * k0 * k0 + c]
                tri_inv_small(k0, linv, k0)
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

    @cython.final
    cdef Py_ssize_t _level_rows(self, BlockedFactor f, Py_ssize_t j, Py_ssize_t nseg,
                                Py_ssize_t* mtot) noexcept nogil:
        """The rows R_j of column j of L below L_00[j, j], for ``_selected_inverse``.

        Fills ``idx`` (row in the trailing matrix), ``lbase`` and
        ``sbase`` (offsets of the entry in L and in ``sel``) and
        ``stride`` (between the k_0 columns), the rows of sparse blocks first,
        sorted ascending; returns their number, and all rows in ``mtot``.
        """
        cdef Py_ssize_t T = f.n_terms, s, b, ks, c0, e, lev, c, r, ld_s
        cdef Py_ssize_t k0 = f.k[0], m = 0, ns
        cdef const cnp.int64_t* troff = &self.troff[0]
        cdef const cnp.int64_t* seloff = &self.seloff[0]
        cdef cnp.int64_t* idx = &self.idx[0]
        cdef cnp.int64_t* lbase = &self.lbase[0]
        cdef cnp.int64_t* sbase = &self.sbase[0]
        cdef cnp.int64_t* stride = &self.stride[0]
        for s in range(1, T):       # rows of sparse blocks first
            b = bidx(s, 0)
            if f.kind_l[b] != SPARSE:
                continue
            ks = f.k[s]
            c0 = f.sp_cp[b]
            for e in range(f.colptr[c0 + j], f.colptr[c0 + j + 1]):
                lev = f.rowidx[f.sp_ri[b] + e]
                for c in range(ks):
                    idx[m] = troff[s] + lev * ks + c
                    lbase[m] = f.off_l[b] + e * ks * k0 + c
                    sbase[m] = seloff[s] + e * ks * k0 + c
                    stride[m] = ks
                    m += 1
        ns = m
        for s in range(1, nseg):
            if not _seg_dense(f, s):
                continue
            ld_s = _seg_ld(f, s)
            b = bidx(s, 0)
            for r in range(_seg_rows(f, s)):
                idx[m] = troff[s] + r
                lbase[m] = f.off_l[b] + r + j * k0 * ld_s
                sbase[m] = seloff[s] + r + j * k0 * ld_s
                stride[m] = ld_s
                m += 1
        mtot[0] = m
        return ns

    @cython.final
    cdef void _accumulate_k(self, BlockedFactor f, bint reml) noexcept nogil:
        """K_t = sum_j [A Lambda~ Sigma]_tt[j, j] over the stored blocks of A (eq. 66).

        Block (s, t) of A, s > t, adds A_st^T lambda_s Sigma_st to K_t and
        A_st lambda_t Sigma_st^T to K_s, level pair by level pair; REML adds
        A_Xt^T Sigma_Xt.  Sigma comes from ``_selected_inverse``.
        """
        cdef Py_ssize_t T = f.n_terms, p = f.p1 - 1, p1 = f.p1
        cdef bint with_x = reml and p > 0
        cdef Py_ssize_t n, s, t, j, js, jt, e, c, d, r, b, ks, kt, nl, nnz
        cdef Py_ssize_t qs, qt, lds, r0
        cdef const cnp.int64_t* troff = &self.troff[0]
        cdef const cnp.int64_t* seloff = &self.seloff[0]
        cdef const double* dinv = &self.dinv[0]
        cdef const double* sel = &self.sel[0]
        cdef const double* a = &f.a[0]
        cdef double* kmat = &self.kmat[0]
        cdef double* sbuf = &self.small[0]
        cdef double* work = &self.small[0] + 2 * self.small.shape[0] // 4
        cdef const double* pa
        cdef const double* ps
        cdef const double* lam_s
        cdef const double* lam_t
        cdef double* k_s
        cdef double* k_t
        cdef double acc
        n = troff[T] + (p if with_x else 0)
        memset(kmat, 0, f.lam_off[T] * sizeof(double))
        for t in range(T):
            kt = f.k[t]
            nl = f.nlev[t]
            qt = f.q[t]
            lam_t = &f.lam[f.lam_off[t]]
            k_t = kmat + f.lam_off[t]
            # diagonal block: A_tt[j, j] lambda_t Sigma_tt[j, j]
            pa = a + f.off_a[bidx(t, t)]
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
                ks = f.k[s]
                qs = f.q[s]
                lam_s = &f.lam[f.lam_off[s]]
                k_s = kmat + f.lam_off[s]
                pa = a + f.off_a[b]
                if t == 0:
                    ps = sel + seloff[s]
                    lds = qs
                else:
                    ps = dinv + troff[s] + troff[t] * n
                    lds = n
                if f.kind_a[b] == SPARSE:
                    nnz = f.colptr[f.sp_cp[b] + nl]
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
                        for js in range(f.nlev[s]):
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
                pa = a + f.off_a[bidx(T, t)]
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

    @cython.final
    cdef void _add_residual_term(self, BlockedFactor f, double scale) noexcept nogil:
        """K_t -= scale * sum_j v_j u_j^T, v = Z^T W r = A_Zy - A_ZX beta - A_ZZ Lambda u (eq. 65)."""
        cdef Py_ssize_t T = f.n_terms, p = f.p1 - 1, p1 = f.p1
        cdef Py_ssize_t t, s, j, e, c, d, b, ks, kt, lev, c0, qs, qt
        cdef const cnp.int64_t* uoff = &self.uoff[0]
        cdef const double* lxx = &f.l[f.off_l[bidx(T, T)]]
        cdef const double* a = &f.a[0]
        cdef const double* pa
        cdef const double* lam_t
        cdef double* beta = &self.beta[0]
        cdef double* u = &self.u[0]
        cdef double* v = &self.v[0]
        cdef double* bv = &self.b[0]
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
        f._back_solve(beta, uoff, u)
        # b = Lambda u
        for t in range(T):
            kt = f.k[t]
            lam_t = &f.lam[f.lam_off[t]]
            for j in range(f.nlev[t]):
                for c in range(kt):
                    acc = 0.0
                    for d in range(c + 1):
                        acc = acc + lam_t[c + d * kt] * u[uoff[t] + j * kt + d]
                    bv[uoff[t] + j * kt + c] = acc
        # v_t = A_{T,t}^T (-beta, 1) - sum_s A_ts b_s
        memset(v, 0, uoff[T] * sizeof(double))
        for t in range(T):
            kt = f.k[t]
            qt = f.q[t]
            gemv_t(<blas_int>p1, <blas_int>qt, -1.0, a + f.off_a[bidx(T, t)],
                   <blas_int>p1, beta, v + uoff[t])
            pa = a + f.off_a[bidx(t, t)]
            for j in range(f.nlev[t]):
                for c in range(kt):
                    acc = 0.0
                    for d in range(kt):
                        acc = acc + pa[j * kt * kt + c + d * kt] * bv[uoff[t] + j * kt + d]
                    v[uoff[t] + j * kt + c] -= acc
            for s in range(t + 1, T):
                b = bidx(s, t)
                ks = f.k[s]
                qs = f.q[s]
                pa = a + f.off_a[b]
                if f.kind_a[b] == SPARSE:
                    c0 = f.sp_cp[b]
                    ri = &f.rowidx[f.sp_ri[b]]
                    vt = v + uoff[t]
                    vs = v + uoff[s]
                    bt = bv + uoff[t]
                    bs = bv + uoff[s]
                    for j in range(f.nlev[t]):
                        for e in range(f.colptr[c0 + j], f.colptr[c0 + j + 1]):
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
            kt = f.k[t]
            k_t = &self.kmat[f.lam_off[t]]
            for d in range(kt):
                for c in range(kt):
                    acc = 0.0
                    for j in range(f.nlev[t]):
                        acc = acc + v[uoff[t] + j * kt + c] * u[uoff[t] + j * kt + d]
                    k_t[c + d * kt] -= scale * acc

    @cython.final
    cdef int gradient(self, BlockedFactor f, bint reml, Py_ssize_t panel_columns,
                      double* grad) noexcept nogil:
        """d criterion / d theta at the current L into ``grad`` (eq. 66); LAPACK's info.

        Computed once per factor and criterion (REML or ML), then read off the
        K_t kept here.  ``panel_columns`` > 0 sets the panel width of the
        selected inverse (else its default).
        """
        cdef double ld_l2, ld_rx2, pwrss, dof
        cdef int info
        if self.done == f.n_updates and self.reml == reml:
            self.grad_from_k(f, grad)
            return 0
        info = self._selected_inverse(f, reml, panel_columns)
        if info != 0:
            return info
        self._accumulate_k(f, reml)
        f._components(&ld_l2, &ld_rx2, &pwrss)
        dof = f.nobs - (f.p1 - 1) if reml else f.nobs
        self._add_residual_term(f, dof / pwrss)
        self.grad_from_k(f, grad)
        self.done = f.n_updates
        self.reml = reml
        return 0

    @cython.final
    cdef void grad_from_k(self, BlockedFactor f, double* grad) noexcept nogil:
        """The gradient 2 (K_t)_ab (eq. 66) from the K_t of the last ``gradient``."""
        cdef Py_ssize_t t, i, j, kt, pos
        cdef const double* k_t
        for t in range(f.n_terms):
            kt = f.k[t]
            k_t = &self.kmat[f.lam_off[t]]
            pos = f.theta_off[t]
            for j in range(kt):
                for i in range(j, kt):
                    grad[pos] = 2.0 * k_t[i + j * kt]
                    pos += 1

    def pack(self):
        """Move the work arrays into one allocation (``packed``)."""
        (self.troff, self.seloff, self.uoff, self.idx, self.lbase, self.sbase, self.stride,
         self.goff, self.pns, self.pidx, self.cursor, self.small, self.kmat, self.beta,
         self.u, self.v, self.b, self.plv, self.pyv, self.dinv, self.sel) = packed(
            *map(np.asarray, [self.troff, self.seloff, self.uoff, self.idx, self.lbase,
                              self.sbase, self.stride, self.goff, self.pns, self.pidx,
                              self.cursor, self.small, self.kmat, self.beta, self.u, self.v,
                              self.b, self.plv, self.pyv, self.dinv, self.sel]))
