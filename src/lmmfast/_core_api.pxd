# The compiled core's entry points for the optimiser's loop (_trust_region.pyx):
# C functions behind a PyCapsule (``BlockedCholesky.c_api``), so that each
# evaluation is a C call without Python's argument handling in between.

ctypedef double (*value_fn)(object core, const double* theta, bint reml) except? -1.0
ctypedef double (*derivatives_fn)(object core, bint reml, double* grad,
                                  double* hess) except? -1.0

cdef struct CoreApi:
    value_fn value               # update L at theta, return the criterion (eqs. 18, 20)
    derivatives_fn derivatives   # gradient and Hessian at the current L (eqs. 66, 70)
