# The parts of A that involve y (theory.md, eq. 26): Z_t^T W y, X^T W y and
# y^T W y, rewritten in place when a model is refitted to a new response.
#
# Shared by ``_crossprod.set_response`` (one call from Python) and the
# compiled refit of ``_trust_region`` (no Python call at all), so that both
# give the same doubles.  A's blocks are column-major; row p of block (T, t)
# holds the y row, p = number of fixed effects, p1 = p + 1.

from libc.stdint cimport int64_t


cdef inline void term_response(double* row_y, Py_ssize_t p1, Py_ssize_t q, Py_ssize_t n,
                               Py_ssize_t k, const int64_t* refs, const double* z,
                               const double* wy) noexcept nogil:
    """Z_t^T W y into ``row_y`` (the y row of block (T, t), stride p1): level
    refs[r] of the term gets wy[r] z[r, :] (z n x k, row-major)."""
    cdef Py_ssize_t j, r, b, col0
    cdef double w
    for j in range(q):
        row_y[j * p1] = 0.0
    for r in range(n):
        col0 = refs[r] * k
        w = wy[r]
        for b in range(k):
            row_y[(col0 + b) * p1] += w * z[r * k + b]


cdef inline void fixed_response(double* a, Py_ssize_t off_xy, Py_ssize_t n, Py_ssize_t p,
                                const double* x, const double* wy,
                                const double* y_raw) noexcept nogil:
    """X^T W y and y^T W y into the y row of block (T, T) at ``off_xy``
    (x n x p, row-major; ``y_raw`` is y, ``wy`` W y)."""
    cdef Py_ssize_t j, r, p1 = p + 1
    cdef double acc
    for j in range(p):
        acc = 0.0
        for r in range(n):
            acc = acc + x[r * p + j] * wy[r]
        a[off_xy + p + j * p1] = acc
    acc = 0.0
    for r in range(n):
        acc = acc + y_raw[r] * wy[r]
    a[off_xy + p + p * p1] = acc
