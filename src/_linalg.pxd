# Typed wrappers around the BLAS/LAPACK routines the compiled core uses.
#
# Every kernel calls these instead of the raw Fortran signatures, so the
# integer type of the LAPACK interface is declared once (``blas_int``) and the
# column-major conventions live in one place.  All matrices are column-major
# with an explicit leading dimension.

from scipy.linalg cimport cython_blas as blas
from scipy.linalg cimport cython_lapack as lapack

ctypedef int blas_int


cdef inline void gemm_nt(blas_int m, blas_int n, blas_int k, double alpha,
                         const double* a, blas_int lda,
                         const double* b, blas_int ldb, double beta,
                         double* c, blas_int ldc) noexcept nogil:
    """C <- alpha * A * B^T + beta * C   (A: m x k, B: n x k, C: m x n)."""
    cdef char ta = b'N'
    cdef char tb = b'T'
    if m == 0 or n == 0:
        return
    blas.dgemm(&ta, &tb, &m, &n, &k, &alpha, <double*>a, &lda,
               <double*>b, &ldb, &beta, c, &ldc)


cdef inline void syrk_n(blas_int n, blas_int k, double alpha,
                        const double* a, blas_int lda, double beta,
                        double* c, blas_int ldc) noexcept nogil:
    """Lower triangle of C <- alpha * A * A^T + beta * C   (A: n x k)."""
    cdef char uplo = b'L'
    cdef char tr = b'N'
    if n == 0:
        return
    blas.dsyrk(&uplo, &tr, &n, &k, &alpha, <double*>a, &lda, &beta, c, &ldc)


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
    blas.dtrsm(&side, &uplo, &ta, &diag, &m, &n, &one, <double*>l, &ldl, b, &ldb)


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
    blas.dtrsm(&side, &uplo, &ta, &diag, &m, &n, &one, <double*>l, &ldl, b, &ldb)


cdef inline void trsv_lt(blas_int n, const double* l, blas_int ldl,
                         double* x) noexcept nogil:
    """x <- L^{-T} x for lower-triangular L (n x n)."""
    cdef char uplo = b'L'
    cdef char ta = b'T'
    cdef char diag = b'N'
    cdef blas_int inc = 1
    if n == 0:
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
    blas.dgemv(&tr, &m, &n, &alpha, <double*>a, &lda, <double*>x, &inc,
               &one, y, &inc)


cdef inline blas_int potrf_l(blas_int n, double* a, blas_int lda) noexcept nogil:
    """In-place lower Cholesky factor of A (n x n); returns LAPACK's info."""
    cdef char uplo = b'L'
    cdef blas_int info = 0
    if n == 0:
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
    blas.dgemm(&ta, &tb, &m, &n, &k, &alpha, <double*>a, &lda,
               <double*>b, &ldb, &beta, c, &ldc)


cdef inline void symm_ll(blas_int m, blas_int n, double alpha,
                         const double* a, blas_int lda,
                         const double* b, blas_int ldb, double beta,
                         double* c, blas_int ldc) noexcept nogil:
    """C <- alpha * A * B + beta * C, A symmetric (m x m) given by its lower triangle."""
    cdef char side = b'L'
    cdef char uplo = b'L'
    if m == 0 or n == 0:
        return
    blas.dsymm(&side, &uplo, &m, &n, &alpha, <double*>a, &lda,
               <double*>b, &ldb, &beta, c, &ldc)


cdef inline void gemv_n(blas_int m, blas_int n, double alpha, const double* a,
                        blas_int lda, const double* x, double* y) noexcept nogil:
    """y <- y + alpha * A x   (A: m x n)."""
    cdef char tr = b'N'
    cdef blas_int inc = 1
    cdef double one = 1.0
    if m == 0 or n == 0:
        return
    blas.dgemv(&tr, &m, &n, &alpha, <double*>a, &lda, <double*>x, &inc,
               &one, y, &inc)


cdef inline blas_int lauum_l(blas_int n, double* a, blas_int lda) noexcept nogil:
    """Lower triangle of A^T A for the lower-triangular A (n x n), in place; LAPACK's info."""
    cdef char uplo = b'L'
    cdef blas_int info = 0
    if n == 0:
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
