# The small dense kernels of the compiled core: typed wrappers around the
# BLAS/LAPACK routines it uses, each with its plain-loop version for tiny
# sizes, and the per-level block kernels of the factor and its derivatives.
#
# Every kernel calls these instead of the raw Fortran signatures, so the
# integer type of the LAPACK interface is declared once (``blas_int``) and the
# column-major conventions live in one place.  All matrices are column-major
# with an explicit leading dimension.

from libc.math cimport sqrt
from scipy.linalg cimport cython_blas as blas
from scipy.linalg cimport cython_lapack as lapack

ctypedef int blas_int

cdef extern from "Python.h":
    int PyErr_CheckSignals()
    void* PyErr_Occurred()


# Long loops of the core ask for pending signals (Ctrl-C) about every this many
# inner iterations, so that an interrupt stops a build or a fit within a second.
cdef enum:
    SIGNAL_CHECK_WORK = 1 << 22


cdef inline bint interrupted() noexcept nogil:
    """Run Python's signal handlers; True when one raised (KeyboardInterrupt
    from Ctrl-C) or an exception is already pending: the caller stops and
    lets its Python caller propagate the exception."""
    with gil:
        return PyErr_Occurred() != NULL or PyErr_CheckSignals() != 0


cdef inline int raise_pending() except -1:
    """Propagate the exception ``interrupted`` found (it is set already)."""
    return -1

# ----------------------------------------------------------- size policy
# A BLAS/LAPACK call whose work is at most TINY_WORK multiply-adds is done by
# plain loops instead: OpenBLAS takes a work buffer under a mutex on every
# call, which costs more than the arithmetic of a small model's blocks (a few
# rows of X, a few random effects per level).  The triangular inverse and
# product (``tri_inv_l``, ``lauum_l``) are plain loops up to order TRI_ORDER,
# where OpenBLAS's dtrtri and dlauum are slower than the loops.
cdef enum:
    TINY_WORK = 2048
    TRI_ORDER = 64


cdef inline bint tiny(long work) noexcept nogil:
    """Whether a kernel of ``work`` multiply-adds runs as plain loops (not BLAS)."""
    return work <= TINY_WORK


cdef inline void _scale_c(blas_int m, blas_int n, double beta, double* c,
                          blas_int ldc) noexcept nogil:
    """C <- beta C (beta = 0 clears C without reading it)."""
    cdef blas_int i, j
    if beta == 1.0:
        return
    for j in range(n):
        for i in range(m):
            c[i + j * ldc] = 0.0 if beta == 0.0 else beta * c[i + j * ldc]


cdef inline void _small_gemm(blas_int m, blas_int n, blas_int k, double alpha,
                             const double* a, blas_int a_row, blas_int a_col,
                             const double* b, blas_int b_row, blas_int b_col,
                             double beta, double* c, blas_int ldc) noexcept nogil:
    """C <- alpha op(A) op(B) + beta C by plain loops; op(A)[i, l] is
    a[i * a_row + l * a_col] and op(B)[l, j] is b[l * b_row + j * b_col]."""
    cdef blas_int i, j, l
    cdef double acc
    _scale_c(m, n, beta, c, ldc)
    for j in range(n):
        for i in range(m):
            acc = 0.0
            for l in range(k):
                acc = acc + a[i * a_row + l * a_col] * b[l * b_row + j * b_col]
            c[i + j * ldc] += alpha * acc


cdef inline void gemm_nt(blas_int m, blas_int n, blas_int k, double alpha,
                         const double* a, blas_int lda,
                         const double* b, blas_int ldb, double beta,
                         double* c, blas_int ldc) noexcept nogil:
    """C <- alpha * A * B^T + beta * C   (A: m x k, B: n x k, C: m x n)."""
    cdef char ta = b'N'
    cdef char tb = b'T'
    if m == 0 or n == 0:
        return
    if tiny(<long>m * n * k):
        _small_gemm(m, n, k, alpha, a, 1, lda, b, ldb, 1, beta, c, ldc)
        return
    blas.dgemm(&ta, &tb, &m, &n, &k, &alpha, <double*>a, &lda,
               <double*>b, &ldb, &beta, c, &ldc)


cdef inline void syrk_n(blas_int n, blas_int k, double alpha,
                        const double* a, blas_int lda, double beta,
                        double* c, blas_int ldc) noexcept nogil:
    """Lower triangle of C <- alpha * A * A^T + beta * C   (A: n x k)."""
    cdef char uplo = b'L'
    cdef char tr = b'N'
    cdef blas_int i, j, l
    cdef double acc
    if n == 0:
        return
    if tiny(<long>n * n * k):
        for j in range(n):
            for i in range(j, n):
                acc = 0.0
                for l in range(k):
                    acc = acc + a[i + l * lda] * a[j + l * lda]
                c[i + j * ldc] = (alpha * acc if beta == 0.0
                                  else beta * c[i + j * ldc] + alpha * acc)
        return
    blas.dsyrk(&uplo, &tr, &n, &k, &alpha, <double*>a, &lda, &beta, c, &ldc)


cdef inline void rdiv_lt_small(Py_ssize_t m, Py_ssize_t n, const double* l, Py_ssize_t ldl,
                               double* b, Py_ssize_t ldb) noexcept nogil:
    """B <- B L^{-T} by plain loops, L lower-triangular (n x n), B: m x n.

    Solves X L^T = B column by column:
    X[:, j] = (B[:, j] - sum_{c<j} X[:, c] L[j, c]) / L[j, j], skipping zeros of L.
    """
    cdef Py_ssize_t i, j, c
    cdef double d
    for j in range(n):
        for c in range(j):
            d = l[j + c * ldl]
            if d != 0.0:
                for i in range(m):
                    b[i + j * ldb] -= b[i + c * ldb] * d
        d = 1.0 / l[j + j * ldl]
        for i in range(m):
            b[i + j * ldb] *= d


cdef inline void trsm_rlt(blas_int m, blas_int n, const double* l, blas_int ldl,
                          double* b, blas_int ldb) noexcept nogil:
    """B <- B * L^{-T} for lower-triangular L (n x n), B: m x n."""
    cdef char side = b'R'
    cdef char uplo = b'L'
    cdef char ta = b'T'
    cdef char diag = b'N'
    cdef double one = 1.0
    if m == 0 or n == 0:
        return
    if tiny(<long>m * n * n):
        rdiv_lt_small(m, n, l, ldl, b, ldb)
        return
    blas.dtrsm(&side, &uplo, &ta, &diag, &m, &n, &one, <double*>l, &ldl, b, &ldb)


cdef inline void ldiv_l_small(Py_ssize_t m, Py_ssize_t n, const double* l, Py_ssize_t ldl,
                              double* b, Py_ssize_t ldb) noexcept nogil:
    """B <- L^{-1} B by plain loops (forward substitution column by column of B),
    L lower-triangular (m x m), B: m x n."""
    cdef Py_ssize_t i, j, c
    cdef double d
    for j in range(n):
        for i in range(m):
            d = b[i + j * ldb]
            for c in range(i):
                d = d - l[i + c * ldl] * b[c + j * ldb]
            b[i + j * ldb] = d / l[i + i * ldl]


cdef inline void trsm_lln(blas_int m, blas_int n, const double* l, blas_int ldl,
                          double* b, blas_int ldb) noexcept nogil:
    """B <- L^{-1} B for lower-triangular L (m x m), B: m x n."""
    cdef char side = b'L'
    cdef char uplo = b'L'
    cdef char ta = b'N'
    cdef char diag = b'N'
    cdef double one = 1.0
    if m == 0 or n == 0:
        return
    if tiny(<long>m * m * n):
        ldiv_l_small(m, n, l, ldl, b, ldb)
        return
    blas.dtrsm(&side, &uplo, &ta, &diag, &m, &n, &one, <double*>l, &ldl, b, &ldb)


cdef inline void trsv_lt(blas_int n, const double* l, blas_int ldl,
                         double* x) noexcept nogil:
    """x <- L^{-T} x for lower-triangular L (n x n)."""
    cdef char uplo = b'L'
    cdef char ta = b'T'
    cdef char diag = b'N'
    cdef blas_int inc = 1
    cdef blas_int i, c
    cdef double d
    if n == 0:
        return
    if tiny(<long>n * n):
        # back substitution: x[i] = (x[i] - sum_{c>i} L[c, i] x[c]) / L[i, i]
        for i in range(n - 1, -1, -1):
            d = x[i]
            for c in range(i + 1, n):
                d = d - l[c + i * ldl] * x[c]
            x[i] = d / l[i + i * ldl]
        return
    blas.dtrsv(&uplo, &ta, &diag, &n, <double*>l, &ldl, x, &inc)


cdef inline void gemv_t(blas_int m, blas_int n, double alpha, const double* a,
                        blas_int lda, const double* x, double* y) noexcept nogil:
    """y <- y + alpha * A^T x   (A: m x n)."""
    cdef char tr = b'T'
    cdef blas_int inc = 1
    cdef double one = 1.0
    if m == 0 or n == 0:
        return
    if tiny(<long>m * n):
        _small_gemm(n, 1, m, alpha, a, lda, 1, x, 1, 0, 1.0, y, n)
        return
    blas.dgemv(&tr, &m, &n, &alpha, <double*>a, &lda, <double*>x, &inc,
               &one, y, &inc)


cdef inline blas_int potrf_l(blas_int n, double* a, blas_int lda) noexcept nogil:
    """In-place lower Cholesky factor of A (n x n); returns LAPACK's info."""
    cdef char uplo = b'L'
    cdef blas_int info = 0
    cdef blas_int i, j, c
    cdef double d
    if n == 0:
        return 0
    if tiny(<long>n * n * n):
        # dpotf2's order: the diagonal, then the column below it scaled by its reciprocal
        for j in range(n):
            d = a[j + j * lda]
            for c in range(j):
                d = d - a[j + c * lda] * a[j + c * lda]
            if not d > 0.0:
                return j + 1
            d = sqrt(d)
            a[j + j * lda] = d
            d = 1.0 / d
            for c in range(j):
                for i in range(j + 1, n):
                    a[i + j * lda] -= a[i + c * lda] * a[j + c * lda]
            for i in range(j + 1, n):
                a[i + j * lda] *= d
        return 0
    lapack.dpotrf(&uplo, &n, a, &lda, &info)
    return info


cdef inline void gemm_nn(blas_int m, blas_int n, blas_int k, double alpha,
                         const double* a, blas_int lda,
                         const double* b, blas_int ldb, double beta,
                         double* c, blas_int ldc) noexcept nogil:
    """C <- alpha * A * B + beta * C   (A: m x k, B: k x n, C: m x n)."""
    cdef char ta = b'N'
    cdef char tb = b'N'
    if m == 0 or n == 0:
        return
    if tiny(<long>m * n * k):
        _small_gemm(m, n, k, alpha, a, 1, lda, b, 1, ldb, beta, c, ldc)
        return
    blas.dgemm(&ta, &tb, &m, &n, &k, &alpha, <double*>a, &lda,
               <double*>b, &ldb, &beta, c, &ldc)


cdef inline void gemm_tn(blas_int m, blas_int n, blas_int k, double alpha,
                         const double* a, blas_int lda,
                         const double* b, blas_int ldb, double beta,
                         double* c, blas_int ldc) noexcept nogil:
    """C <- alpha * A^T * B + beta * C   (A: k x m, B: k x n, C: m x n)."""
    cdef char ta = b'T'
    cdef char tb = b'N'
    if m == 0 or n == 0:
        return
    if tiny(<long>m * n * k):
        _small_gemm(m, n, k, alpha, a, lda, 1, b, 1, ldb, beta, c, ldc)
        return
    blas.dgemm(&ta, &tb, &m, &n, &k, &alpha, <double*>a, &lda,
               <double*>b, &ldb, &beta, c, &ldc)


cdef inline void symm_ll(blas_int m, blas_int n, double alpha,
                         const double* a, blas_int lda,
                         const double* b, blas_int ldb, double beta,
                         double* c, blas_int ldc) noexcept nogil:
    """C <- alpha * A * B + beta * C, A symmetric (m x m) given by its lower triangle."""
    cdef char side = b'L'
    cdef char uplo = b'L'
    cdef blas_int i, j, l
    cdef double acc
    if m == 0 or n == 0:
        return
    if tiny(<long>m * m * n):
        _scale_c(m, n, beta, c, ldc)
        for j in range(n):
            for i in range(m):
                acc = 0.0
                for l in range(m):
                    acc = acc + (a[i + l * lda] if i >= l else a[l + i * lda]) * b[l + j * ldb]
                c[i + j * ldc] += alpha * acc
        return
    blas.dsymm(&side, &uplo, &m, &n, &alpha, <double*>a, &lda,
               <double*>b, &ldb, &beta, c, &ldc)


cdef inline void gemv_n(blas_int m, blas_int n, double alpha, const double* a,
                        blas_int lda, const double* x, double* y) noexcept nogil:
    """y <- y + alpha * A x   (A: m x n)."""
    cdef char tr = b'N'
    cdef blas_int inc = 1
    cdef double one = 1.0
    cdef blas_int i, j
    cdef double t
    if m == 0 or n == 0:
        return
    if tiny(<long>m * n):
        for j in range(n):
            t = alpha * x[j]
            for i in range(m):
                y[i] += t * a[i + j * lda]
        return
    blas.dgemv(&tr, &m, &n, &alpha, <double*>a, &lda, <double*>x, &inc,
               &one, y, &inc)


cdef inline blas_int lauum_l(blas_int n, double* a, blas_int lda) noexcept nogil:
    """Lower triangle of A^T A for the lower-triangular A (n x n), in place; LAPACK's info."""
    cdef char uplo = b'L'
    cdef blas_int info = 0
    cdef Py_ssize_t i, j, k
    cdef double acc
    if n == 0:
        return 0
    if n <= TRI_ORDER:
        for j in range(n):
            for i in range(j, n):
                acc = 0.0
                for k in range(i, n):
                    acc = acc + a[k + i * lda] * a[k + j * lda]
                a[i + j * lda] = acc
        return 0
    lapack.dlauum(&uplo, &n, a, &lda, &info)
    return info


cdef inline void trmm_lln(blas_int m, blas_int n, double alpha, const double* l,
                          blas_int ldl, double* b, blas_int ldb) noexcept nogil:
    """B <- alpha * L * B for lower-triangular L (m x m), B: m x n."""
    cdef char side = b'L'
    cdef char uplo = b'L'
    cdef char ta = b'N'
    cdef char diag = b'N'
    if m == 0 or n == 0:
        return
    blas.dtrmm(&side, &uplo, &ta, &diag, &m, &n, &alpha, <double*>l, &ldl, b, &ldb)


cdef inline void trmm_rln(blas_int m, blas_int n, double alpha, const double* l,
                          blas_int ldl, double* b, blas_int ldb) noexcept nogil:
    """B <- alpha * B * L for lower-triangular L (n x n), B: m x n."""
    cdef char side = b'R'
    cdef char uplo = b'L'
    cdef char ta = b'N'
    cdef char diag = b'N'
    if m == 0 or n == 0:
        return
    blas.dtrmm(&side, &uplo, &ta, &diag, &m, &n, &alpha, <double*>l, &ldl, b, &ldb)


cdef inline blas_int syev_l(blas_int n, double* a, blas_int lda, double* w,
                            double* work, blas_int lwork) noexcept nogil:
    """Eigenvalues (ascending, into w) and eigenvectors (over A's columns) of the
    symmetric A (n x n) given by its lower triangle; returns LAPACK's info."""
    cdef char jobz = b'V'
    cdef char uplo = b'L'
    cdef blas_int info = 0
    if n == 0:
        return 0
    lapack.dsyev(&jobz, &uplo, &n, a, &lda, w, work, &lwork, &info)
    return info


cdef inline void tri_inv_small(Py_ssize_t n, double* a, Py_ssize_t lda) noexcept nogil:
    """In-place inverse of a lower-triangular A (n x n) with positive diagonal, by plain loops."""
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


cdef inline void tri_inv_l(blas_int n, double* a, blas_int lda) noexcept nogil:
    """In-place inverse of the lower-triangular A (n x n, positive diagonal).

    By halves: with A = [[A11, 0], [A21, A22]], the inverse is
    [[A11^{-1}, 0], [-A22^{-1} A21 A11^{-1}, A22^{-1}]], the off-diagonal
    block by two triangular products (BLAS dtrmm) once the diagonal blocks
    are inverted; blocks up to ``TRI_ORDER`` by ``tri_inv_small``.  (Faster
    than LAPACK's dtrtri in OpenBLAS, which is slow for small orders.)
    """
    cdef blas_int h
    if n <= TRI_ORDER:
        tri_inv_small(n, a, lda)
        return
    h = n // 2
    tri_inv_l(h, a, lda)
    tri_inv_l(n - h, a + h + <Py_ssize_t>h * lda, lda)
    trmm_lln(n - h, h, -1.0, a + h + <Py_ssize_t>h * lda, lda, a + h, lda)
    trmm_rln(n - h, h, 1.0, a, lda, a + h, lda)
