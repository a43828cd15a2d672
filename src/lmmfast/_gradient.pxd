# The gradient by selected inversion (src/lmmfast/_gradient.pyx): its work
# arrays and K_t, read by the Hessian (_hessian).

cimport cython
cimport numpy as cnp

from lmmfast._factor cimport BlockedFactor


cdef class GradientWork:
    cdef double[::1] dinv, sel, u, v, b, beta, kmat, small, plv, pyv
    cdef cnp.int64_t[::1] troff, seloff, uoff, idx, lbase, sbase, stride
    cdef cnp.int64_t[::1] goff, pns, pidx, cursor
    # the factor's ``n_updates`` and the criterion (REML or ML) that K_t belongs to
    cdef Py_ssize_t done
    cdef bint reml

    @cython.final
    cdef int _selected_inverse(self, BlockedFactor f, bint reml,
                               Py_ssize_t panel_columns) noexcept nogil
    @cython.final
    cdef void _sel_levels(self, BlockedFactor f, Py_ssize_t nseg, Py_ssize_t n, Py_ssize_t w,
                          Py_ssize_t nchunk) noexcept nogil
    @cython.final
    cdef Py_ssize_t _level_rows(self, BlockedFactor f, Py_ssize_t j, Py_ssize_t nseg,
                                Py_ssize_t* mtot) noexcept nogil
    @cython.final
    cdef void _accumulate_k(self, BlockedFactor f, bint reml) noexcept nogil
    @cython.final
    cdef void _add_residual_term(self, BlockedFactor f, double scale) noexcept nogil
    @cython.final
    cdef int gradient(self, BlockedFactor f, bint reml, Py_ssize_t panel_columns,
                      double* grad) noexcept nogil
    @cython.final
    cdef void grad_from_k(self, BlockedFactor f, double* grad) noexcept nogil
