# The approximate Hessian (src/lmmfast/_hessian.pyx) and its work arrays.

cimport cython
cimport numpy as cnp

from lmmfast._factor cimport BlockedFactor
from lmmfast._gradient cimport GradientWork


cdef class HessianWork:
    cdef double[::1] vm, av, y, ew

    @cython.final
    cdef void _a_times(self, BlockedFactor f, GradientWork gw, Py_ssize_t t,
                       const double* vt, double* out) noexcept nogil
    @cython.final
    cdef void _forward_solve(self, BlockedFactor f, GradientWork gw, bint with_x,
                             Py_ssize_t nrhs, double* y, Py_ssize_t ldy) noexcept nogil
    @cython.final
    cdef void hessian(self, BlockedFactor f, GradientWork gw, bint reml,
                      double* h) noexcept nogil
