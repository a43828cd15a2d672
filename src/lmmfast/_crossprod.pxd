# Cross-products of [Z X y] (src/lmmfast/_crossprod.pyx): a chunk's rows added to
# A's accumulator, for compiled callers (the GLMM's passes, src/_pirls.pyx).

cimport numpy as cnp

cdef Py_ssize_t add_rows(const cnp.int64_t[:, ::1] plan, list patterns, double[:, ::1] acc,
                         list refs, list z, const double[:, :] x, const double[::1] y,
                         const double[::1] sqrt_w, bint weighted, double[:, ::1] xy,
                         list scaled) except -1
