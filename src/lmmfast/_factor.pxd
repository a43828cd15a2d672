# The blocked factor L(theta) and the criteria (src/lmmfast/_factor.pyx): its
# storage, read by the derivative modules (_gradient, _hessian), and the steps
# they call.

cimport cython
cimport numpy as cnp

# kinds of the blocks of A and L (``kind_a`` / ``kind_l``)
cdef enum:
    BLOCKDIAG = 0
    DENSE = 1
    SPARSE = 2

# ``_update``'s info when Ctrl-C (a pending exception) stopped it
cdef enum:
    INTERRUPTED = -(1 << 30)


cdef inline Py_ssize_t bidx(Py_ssize_t s, Py_ssize_t t) noexcept nogil:
    """Position of block (s, t), s >= t, in the packed lower triangle."""
    return s * (s + 1) // 2 + t


cdef class BlockedFactor:
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
    # counts the changes of L (updates, restored states): derivatives are kept per count
    cdef readonly Py_ssize_t n_updates
    # the current factor's log-determinants and penalised RSS, once computed
    cdef bint comp_valid
    cdef double comp_ld_l2, comp_ld_rx2, comp_pwrss

    cdef tuple _constructor_args(self)
    @cython.final
    cdef Py_ssize_t _rows(self, Py_ssize_t s) noexcept nogil
    @cython.final
    cdef Py_ssize_t _kk(self, Py_ssize_t s) noexcept nogil
    @cython.final
    cdef void _set_lambda(self, const double* theta) noexcept nogil
    @cython.final
    cdef void _scale_copy(self) noexcept nogil
    @cython.final
    cdef void _rank_update(self, Py_ssize_t t, Py_ssize_t r) noexcept nogil
    @cython.final
    cdef void _gemm_update(self, Py_ssize_t s, Py_ssize_t t, Py_ssize_t r) noexcept nogil
    @cython.final
    cdef void _rdiv(self, Py_ssize_t s, Py_ssize_t t) noexcept nogil
    @cython.final
    cdef void _rdiv_dense(self, Py_ssize_t t) noexcept nogil
    @cython.final
    cdef int _chol_diag(self, Py_ssize_t t) noexcept nogil
    @cython.final
    cdef int _update(self, const double* theta) noexcept nogil
    @cython.final
    cdef void _components(self, double* ld_l2, double* ld_rx2, double* pwrss) noexcept nogil
    @cython.final
    cdef double _criterion(self, bint reml) noexcept nogil
    @cython.final
    cdef double _value(self, const double* theta, bint reml) noexcept nogil
    @cython.final
    cdef void _solve_beta(self, double* beta) noexcept nogil
    @cython.final
    cdef void _back_solve(self, const double* rhs, const cnp.int64_t* uoff,
                          double* u) noexcept nogil
