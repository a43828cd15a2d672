# cython: language_level=3
"""``BlockedCholesky``: the blocked factor (``_factor``) with the derivatives of its
criterion in theta, the gradient (``_gradient``, eqs. 64-68) and the
approximate Hessian (``_hessian``, eq. 70), and the C entry points of the
optimiser's compiled loop (``c_api``, ``_core_api.pxd``).

The derivatives' work arrays are allocated on their first use.
"""

import numpy as np
cimport cython
from libc.math cimport INFINITY, NAN

from cpython.pycapsule cimport PyCapsule_New

from lmmfast._core_api cimport CoreApi
from lmmfast._factor cimport BlockedFactor, INTERRUPTED
from lmmfast._gradient cimport GradientWork
from lmmfast._hessian cimport HessianWork
from lmmfast._kernels cimport raise_pending

from lmmfast._factor import (BLOCK_BLOCKDIAG, BLOCK_DENSE, BLOCK_SPARSE,  # noqa: F401
                             PACK_BYTES, packed)


@cython.final
cdef class BlockedCholesky(BlockedFactor):
    """The blocked factor L(theta), its (RE)ML criteria (``BlockedFactor``) and their
    gradient and approximate Hessian in theta.  Constructed as ``BlockedFactor``."""

    cdef public Py_ssize_t sel_panel_columns   # > 0: panel width of the selected inverse (tests)
    cdef GradientWork grad_work
    cdef HessianWork hess_work

    def pack(self):
        """Move the factor's and the derivatives' small arrays into few allocations
        (``packed``), the derivatives' work arrays allocated first."""
        if self.n_terms > 0:
            self._derivative_work(True)
            self.grad_work.pack()
            self.hess_work.pack()
        BlockedFactor.pack(self)

    def __reduce__(self):
        """The constructor's arguments and ``__getstate__``, so that the restored
        core holds the same L(theta)."""
        return _restored_core, (self._constructor_args(), self.__getstate__())

    def __getstate__(self):
        """The factor state and the panel width of the selected inverse."""
        return BlockedFactor.__getstate__(self) + (self.sel_panel_columns,)

    def __setstate__(self, state):
        """Take the state of ``__getstate__``."""
        BlockedFactor.__setstate__(self, state[:3])
        self.sel_panel_columns = state[3]

    @property
    def c_api(self):
        """PyCapsule of the C entry points ``_value`` and ``_derivatives``
        (``_core_api.pxd``), for the optimiser's compiled loop."""
        return _CORE_API_CAPSULE

    cdef int _derivative_work(self, bint hessian) except -1:
        """Allocate the gradient's (and with ``hessian`` the Hessian's) work arrays."""
        if self.grad_work is None:
            self.grad_work = GradientWork(self)
        if hessian and self.hess_work is None:
            self.hess_work = HessianWork(self, self.grad_work)
        return 0

    def gradient(self, const double[::1] theta, bint reml, double[::1] grad):
        """Update L for ``theta``, write d criterion / d theta into ``grad``, return the criterion.

        ``theta`` and ``grad`` are in the internal order of ``objective``; the
        value returned is the one ``objective`` returns (eqs. 18, 20), and the
        factor is left as ``objective`` leaves it.  The derivative is analytic
        (eqs. 64-68): no division by theta, so it holds on the boundary too.
        Where the factorisation fails, returns +inf and fills ``grad`` with NaN.
        """
        cdef double val, dummy = 0.0
        if theta.shape[0] != self.n_theta:
            raise ValueError(f"theta has length {theta.shape[0]}, "
                             f"expected {self.n_theta}")
        if grad.shape[0] != self.n_theta:
            raise ValueError(f"grad has length {grad.shape[0]}, "
                             f"expected {self.n_theta}")
        with nogil:
            val = self._value(&theta[0] if self.n_theta > 0 else NULL, reml)
        if self.last_info == INTERRUPTED:
            raise_pending()
        self._derivatives(reml, &grad[0] if self.n_theta > 0 else &dummy, NULL)
        return val

    cdef double _derivatives(self, bint reml, double* grad, double* hess) except? -1.0:
        """``derivatives`` on raw arrays (n_theta, and n_theta^2 or NULL)."""
        cdef int ginfo = 0
        cdef double val
        cdef Py_ssize_t i, n = self.n_theta
        cdef GradientWork gw
        cdef HessianWork hw
        if self.last_info != 0:
            for i in range(n):
                grad[i] = NAN
            if hess != NULL:
                for i in range(n * n):
                    hess[i] = NAN
            return INFINITY
        if self.n_terms > 0:
            self._derivative_work(hess != NULL)
        gw = self.grad_work
        hw = self.hess_work
        with nogil:
            val = self._criterion(reml)
            if self.n_terms > 0:
                ginfo = gw.gradient(self, reml, self.sel_panel_columns, grad)
            if ginfo != 0:
                for i in range(n):
                    grad[i] = NAN
                if hess != NULL:
                    for i in range(n * n):
                        hess[i] = NAN
            elif hess != NULL and self.n_terms > 0:
                hw.hessian(self, gw, reml, hess)
        return val

    def derivatives(self, bint reml, double[::1] grad, hess=None):
        """Gradient (eq. 66) and, if ``hess`` is given, the approximate Hessian
        (eq. 70) of the criterion at the current factor; returns the criterion.

        Nothing is refactorised: this follows ``objective`` (or ``update``) at
        the theta whose derivatives are wanted, so that an optimiser that
        rejects a step pays for the criterion only.  ``grad`` (n_theta) and
        ``hess`` (n_theta x n_theta, C-contiguous) are in the internal order.
        Where the factor is not valid, returns +inf and fills them with NaN.
        """
        cdef Py_ssize_t n = self.n_theta
        cdef double[:, ::1] h
        cdef double dummy = 0.0
        if grad.shape[0] != n:
            raise ValueError(f"grad has length {grad.shape[0]}, expected {n}")
        if hess is None:
            return self._derivatives(reml, &grad[0] if n > 0 else &dummy, NULL)
        h = hess
        if h.shape[0] != n or h.shape[1] != n:
            raise ValueError(f"hess must be {n} x {n}")
        return self._derivatives(reml, &grad[0] if n > 0 else &dummy,
                                 &h[0, 0] if n > 0 else &dummy)


def _restored_core(args, state):
    """A ``BlockedCholesky`` from its ``__reduce__``: built from the constructor's
    arguments, then given the state."""
    core = BlockedCholesky(*args)
    core.__setstate__(state)
    return core


# ------------------------------------------- C entry points for the optimiser
cdef double _api_value(object core, const double* theta, bint reml) except? -1.0:
    return (<BlockedCholesky>core)._value(theta, reml)


cdef double _api_derivatives(object core, bint reml, double* grad,
                             double* hess) except? -1.0:
    return (<BlockedCholesky>core)._derivatives(reml, grad, hess)


cdef CoreApi _CORE_API
_CORE_API.value = _api_value
_CORE_API.derivatives = _api_derivatives
_CORE_API_CAPSULE = PyCapsule_New(<void*>&_CORE_API, b"lmmfast._cholesky.CoreApi", NULL)
