# cython: language_level=3
"""The approximate Hessian of the profiled criterion in theta (theory.md, eq. 70),
from the factor and the gradient's conditional residual v and K_t.

For each entry m of theta, V_m = D_m v with D_m = d(Lambda Lambda^T)/d theta_m;
the Hessian combines V_m^T A_ZZ V_n with y_m^T y_n, y_m = L^{-1} c_m
(``_a_times``, ``_forward_solve``), and the term of the gradient in
lambda_t lambda_t^T.
"""

import numpy as np
cimport cython
cimport numpy as cnp
from libc.math cimport fabs
from libc.string cimport memset

from lmmfast._factor cimport BlockedFactor, bidx, SPARSE
from lmmfast._factor import packed
from lmmfast._gradient cimport GradientWork
from lmmfast._kernels cimport blas_int, gemm_nn, trsm_lln, ldiv_l_small, gemv_t, gemv_n

cnp.import_array()


cdef class HessianWork:
    """The work arrays of the Hessian of one factor's criterion."""

    def __init__(self, BlockedFactor f, GradientWork gw):
        """Per theta entry m: D_m v (q), A D_m v and L^{-1} c_m (q + p each),
        column after column (``gw``'s offsets of the terms in q)."""
        cdef Py_ssize_t n = max(f.n_theta, 1)
        cdef Py_ssize_t qtot = gw.uoff[f.n_terms]
        cdef Py_ssize_t ld = qtot + f.p1 - 1
        self.vm = np.zeros(max(qtot * n, 1), dtype=np.float64)
        self.av = np.zeros(max(ld * n, 1), dtype=np.float64)
        self.y = np.zeros(max(ld * n, 1), dtype=np.float64)
        self.ew = np.zeros(n, dtype=np.float64)

    def pack(self):
        """Move the work arrays into one allocation (``packed``)."""
        self.ew, self.vm, self.av, self.y = packed(
            *map(np.asarray, [self.ew, self.vm, self.av, self.y]))

    @cython.final
    cdef void _a_times(self, BlockedFactor f, GradientWork gw, Py_ssize_t t,
                       const double* vt, double* out) noexcept nogil:
        """out += A_{., t} vt: block column t of A (Z rows, then X rows) times
        a vector of term t's random effects (eq. 70)."""
        cdef Py_ssize_t T = f.n_terms, p = f.p1 - 1, s, j, e, c, d, b, lev
        cdef Py_ssize_t kt = f.k[t], ks, k0 = f.k[0]
        cdef const cnp.int64_t* uoff = &gw.uoff[0]
        cdef const cnp.int64_t* ri
        cdef const double* pa
        cdef const double* blk
        cdef double acc
        cdef double* o
        # the diagonal block, level by level
        pa = &f.a[f.off_a[bidx(t, t)]]
        o = out + uoff[t]
        for j in range(f.nlev[t]):
            for c in range(kt):
                acc = 0.0
                for d in range(kt):
                    acc = acc + pa[j * kt * kt + c + d * kt] * vt[j * kt + d]
                o[j * kt + c] += acc
        # blocks (s, t) below it: out_s += A_st vt
        for s in range(t + 1, T):
            b = bidx(s, t)
            ks = f.k[s]
            pa = &f.a[f.off_a[b]]
            o = out + uoff[s]
            if f.kind_a[b] == SPARSE:
                ri = &f.rowidx[f.sp_ri[b]]
                for j in range(f.nlev[t]):
                    for e in range(f.colptr[f.sp_cp[b] + j],
                                   f.colptr[f.sp_cp[b] + j + 1]):
                        lev = ri[e]
                        blk = pa + e * ks * kt
                        for c in range(ks):
                            acc = 0.0
                            for d in range(kt):
                                acc = acc + blk[c + d * ks] * vt[j * kt + d]
                            o[lev * ks + c] += acc
            else:
                gemv_n(<blas_int>f.q[s], <blas_int>f.q[t], 1.0, pa,
                       <blas_int>f.q[s], vt, o)
        # blocks (t, s) to its left: out_s += A_ts^T vt
        for s in range(t):
            b = bidx(t, s)
            pa = &f.a[f.off_a[b]]
            o = out + uoff[s]
            if f.kind_a[b] == SPARSE:   # s = 0
                ri = &f.rowidx[f.sp_ri[b]]
                for j in range(f.nlev[0]):
                    for e in range(f.colptr[f.sp_cp[b] + j],
                                   f.colptr[f.sp_cp[b] + j + 1]):
                        lev = ri[e]
                        blk = pa + e * kt * k0
                        for d in range(k0):
                            acc = 0.0
                            for c in range(kt):
                                acc = acc + blk[c + d * kt] * vt[lev * kt + c]
                            o[j * k0 + d] += acc
            else:
                gemv_t(<blas_int>f.q[t], <blas_int>f.q[s], 1.0, pa,
                       <blas_int>f.q[t], vt, o)
        # the fixed-effects rows (not the response's)
        gemv_n(<blas_int>p, <blas_int>f.q[t], 1.0, &f.a[f.off_a[bidx(T, t)]],
               <blas_int>f.p1, vt, out + uoff[T])

    @cython.final
    cdef void _forward_solve(self, BlockedFactor f, GradientWork gw, bint with_x,
                             Py_ssize_t nrhs, double* y, Py_ssize_t ldy) noexcept nogil:
        """Y <- L^{-1} Y for ``nrhs`` columns (leading dimension ``ldy``): L_Z,
        or with ``with_x`` the factor of Omega (L without its response row)."""
        cdef Py_ssize_t T = f.n_terms, p = f.p1 - 1, t, s, j, e, c, d, r, b
        cdef Py_ssize_t nseg = T + 1 if with_x else T, rows_t, ld_t, kt, k0 = f.k[0]
        cdef const cnp.int64_t* uoff = &gw.uoff[0]
        cdef const cnp.int64_t* ri
        cdef const double* pb
        cdef const double* blk
        cdef double acc
        cdef double* yt
        for t in range(nseg):
            rows_t = f.q[t] if t < T else p
            ld_t = f.q[t] if t < T else f.p1
            kt = f.k[t] if t < T else 1
            yt = y + uoff[t]
            if rows_t == 0:
                continue
            for s in range(t):
                b = bidx(t, s)
                pb = &f.l[f.off_l[b]]
                if f.kind_l[b] == SPARSE:   # s = 0, t < T
                    ri = &f.rowidx[f.sp_ri[b]]
                    for r in range(nrhs):
                        for j in range(f.nlev[0]):
                            for e in range(f.colptr[f.sp_cp[b] + j],
                                           f.colptr[f.sp_cp[b] + j + 1]):
                                blk = pb + e * kt * k0
                                for c in range(kt):
                                    acc = 0.0
                                    for d in range(k0):
                                        acc = acc + blk[c + d * kt] * y[r * ldy + j * k0 + d]
                                    yt[r * ldy + ri[e] * kt + c] -= acc
                else:
                    gemm_nn(<blas_int>rows_t, <blas_int>nrhs, <blas_int>f.q[s], -1.0,
                            pb, <blas_int>ld_t, y + uoff[s], <blas_int>ldy, 1.0,
                            yt, <blas_int>ldy)
            pb = &f.l[f.off_l[bidx(t, t)]]
            if t == 0:
                for j in range(f.nlev[0]):
                    ldiv_l_small(k0, nrhs, pb + j * k0 * k0, k0, yt + j * k0, ldy)
            else:
                trsm_lln(<blas_int>rows_t, <blas_int>nrhs, pb, <blas_int>ld_t,
                         yt, <blas_int>ldy)

    @cython.final
    cdef void hessian(self, BlockedFactor f, GradientWork gw, bint reml,
                      double* h) noexcept nogil:
        """The approximate Hessian of the criterion in theta at the current
        factor (eq. 70) into ``h`` (n_theta x n_theta), after ``gw.gradient``.

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
        cdef Py_ssize_t T = f.n_terms, p = f.p1 - 1, n = f.n_theta
        cdef Py_ssize_t qtot = gw.uoff[T], ld = qtot + p
        cdef Py_ssize_t t, s, m, mm, i, j, c, d, r, kt, lv, pos, pos2, i2, j2
        cdef bint with_x = reml and p > 0
        cdef Py_ssize_t nrow = ld if with_x else qtot
        cdef const cnp.int64_t* uoff = &gw.uoff[0]
        cdef const double* v = &gw.v[0]
        cdef const double* lam_t
        cdef const double* x
        cdef const double* k_t
        cdef double* vm = &self.vm[0]
        cdef double* av = &self.av[0]
        cdef double* y = &self.y[0]
        cdef double* ew = &self.ew[0]
        cdef double* out
        cdef double* g = &gw.small[0]
        cdef double ld_l2, ld_rx2, pwrss, nu, s2, acc, dot, lmax
        cdef bint ok
        f._components(&ld_l2, &ld_rx2, &pwrss)
        nu = f.nobs - p if reml else f.nobs
        s2 = pwrss / nu
        memset(vm, 0, qtot * n * sizeof(double))
        memset(av, 0, ld * n * sizeof(double))
        # V_m = D_m v, (D_m x)_r = [r = i] lambda[:, j].x + lambda[r, j] x_i
        for t in range(T):
            kt = f.k[t]
            lam_t = &f.lam[f.lam_off[t]]
            m = f.theta_off[t]
            for j in range(kt):
                for i in range(j, kt):
                    out = vm + m * qtot + uoff[t]
                    acc = 0.0
                    for lv in range(f.nlev[t]):
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
                    self._a_times(f, gw, t, out, av + m * ld)
                    m += 1
        # c_m = [Lambda^T (A V_m)_Z ; (A V_m)_X], then y_m = L^{-1} c_m
        for m in range(n):
            for t in range(T):
                kt = f.k[t]
                lam_t = &f.lam[f.lam_off[t]]
                for lv in range(f.nlev[t]):
                    x = av + m * ld + uoff[t] + lv * kt
                    out = y + m * ld + uoff[t] + lv * kt
                    for c in range(kt):
                        acc = 0.0
                        for r in range(c, kt):
                            acc = acc + lam_t[r + c * kt] * x[r]
                        out[c] = acc
            for r in range(p):
                y[m * ld + qtot + r] = av[m * ld + qtot + r]
        self._forward_solve(f, gw, with_x, n, y, ld)
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
            kt = f.k[t]
            lam_t = &f.lam[f.lam_off[t]]
            k_t = &gw.kmat[f.lam_off[t]]
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
            pos = f.theta_off[t]
            for j in range(kt):
                for i in range(j, kt):
                    pos2 = f.theta_off[t]
                    for j2 in range(kt):
                        for i2 in range(j2, kt):
                            if j2 == j:
                                h[pos * n + pos2] += g[i + i2 * kt] + g[i2 + i * kt]
                            pos2 += 1
                    pos += 1
