# cython: language_level=3
"""The compiled steps of the fit over theta (theory.md, eqs. 24, 69, 70): the
trust-region Newton loop, the boundary step and the check for a fit that ran
away, a model's default fit and its refits to new responses as one call each
(``Optimum``, ``Refit``).  ``lmmfast.optimize`` runs them in sequence.

Compiled because theta is short and one evaluation of a small model takes a
few microseconds: the optimiser's own arithmetic (an eigendecomposition of
the n x n model Hessian per step) must cost less than that, which numpy's
per-call overhead does not allow.  The objective is a ``CoreObjective``,
which calls the compiled core directly.
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport sqrt, fabs, isfinite, log, M_PI

from cpython.exc cimport PyErr_CheckSignals
from cpython.pycapsule cimport PyCapsule_GetPointer

from lmmfast._core_api cimport CoreApi
from lmmfast._kernels cimport blas_int, syev_l
from lmmfast._response cimport term_response, fixed_response

cnp.import_array()

from lmmfast._cholesky import packed


cdef class CoreObjective:
    """The criterion and derivatives of a ``BlockedCholesky`` (eqs. 18, 20, 66, 70)
    as the objective of the trust-region loop, theta given in lme4's order and
    permuted to the core's internal order here, without a Python function per
    evaluation.  The loop takes Newton steps on the approximate Hessian of
    eq. 70 and asks for derivatives only at accepted points.  ``criterion``
    and ``criterion_gradient`` serve the optimisers written in Python; every
    evaluation records its theta (``last_theta``: the core's factor is there).
    """
    cdef object core
    cdef bint reml
    cdef Py_ssize_t[::1] perm
    cdef double[::1] theta_in, grad_in
    cdef double[:, ::1] hess_in
    cdef CoreApi* api                           # the core's C entry points
    cdef _Work work                             # the loop's buffers, kept for refits
    cdef readonly Py_ssize_t n_derivatives
    cdef readonly double magnitude              # n (1 + log 2 pi): see ``_minimize``
    cdef object grad_arr                        # ``criterion_gradient``'s buffer

    def __init__(self, core, bint reml, perm):
        n = len(perm)
        self.core = core
        self.magnitude = core.nobs * (1.0 + log(2.0 * M_PI))
        self.reml = reml
        self.perm = np.ascontiguousarray(perm, dtype=np.intp)
        self.theta_in = np.full(n, np.nan)
        self.grad_in = np.empty(n)
        self.hess_in = np.empty((n, n))
        self.n_derivatives = 0
        self.api = <CoreApi*>PyCapsule_GetPointer(core.c_api, b"lmmfast._cholesky.CoreApi")
        self.work = _Work(n)

    def pack(self):
        """The buffers of this objective, of its runs and of its core, each in one
        allocation (``_cholesky.packed``): for an objective evaluated many times
        after other work, as a model's refits are."""
        self.work.pack(self)
        self.core.pack()

    def serves(self, core, bint reml):
        """Whether this objective evaluates ``core``'s criterion (REML or ML)."""
        return self.core is core and self.reml == reml

    def __reduce__(self):
        """Rebuilt on its core (the C entry points are the core's), with the count of
        derivatives and the theta of the last evaluation."""
        return _rebuilt, ("CoreObjective", (self.core, self.reml, np.array(self.perm)),
                          (self.n_derivatives, np.array(self.theta_in)))

    def __setstate__(self, state):
        self.n_derivatives, theta_in = state
        np.asarray(self.theta_in)[:] = theta_in

    def criterion(self, theta):
        """The criterion at ``theta`` (lme4 order; a float64 vector); the core's
        factor is left there."""
        cdef const double[::1] t = theta
        if t.shape[0] != self.perm.shape[0]:
            raise ValueError(f"theta must have {self.perm.shape[0]} values")
        return self.value(t)

    def criterion_gradient(self, theta):
        """The criterion at ``theta`` (lme4 order) and its gradient (eq. 66, lme4
        order, a new array), by the core's ``gradient``; the factor is left there."""
        cdef Py_ssize_t i, n = self.perm.shape[0]
        cdef const double[::1] t = theta
        if t.shape[0] != n:
            raise ValueError(f"theta must have {n} values")
        for i in range(n):
            self.theta_in[i] = t[self.perm[i]]
        if self.grad_arr is None:
            self.grad_arr = np.empty(n)
        value = self.core.gradient(self.theta_in, self.reml, self.grad_arr)
        grad = np.empty(n)
        grad[np.asarray(self.perm)] = self.grad_arr
        return value, grad

    @property
    def last_theta(self):
        """The core's theta (internal order) at the last evaluation: its factor's."""
        return np.array(self.theta_in)

    cdef double value(self, const double[::1] theta) except? -1.0:
        """The criterion at theta (the core's factor is left there)."""
        cdef Py_ssize_t i, n = self.perm.shape[0]
        for i in range(n):
            self.theta_in[i] = theta[self.perm[i]]
        return self.api.value(self.core, &self.theta_in[0], self.reml)

    cdef int derivatives(self, double[::1] grad, double[:, ::1] hess) except -1:
        """Gradient and approximate Hessian at the theta of the last ``value``."""
        cdef Py_ssize_t i, j, n = self.perm.shape[0]
        self.api.derivatives(self.core, self.reml, &self.grad_in[0], &self.hess_in[0, 0])
        self.n_derivatives += 1
        for i in range(n):
            grad[self.perm[i]] = self.grad_in[i]
            for j in range(n):
                hess[self.perm[i], self.perm[j]] = self.hess_in[i, j]
        return 0


cdef class _Work:
    """Buffers of one run (n small)."""
    cdef Py_ssize_t n
    cdef double[::1] lam, gv, p, bs, x_new, work
    cdef double[:, ::1] v      # eigenvectors, column-major in the C-ordered array's rows
    cdef blas_int lwork
    cdef bint have_eig         # v and lam hold B's eigendecomposition already
    cdef double[::1] theta, g, gn
    cdef double[:, ::1] b
    cdef object b_arr

    def __init__(self, Py_ssize_t n):
        self.n = n
        self.lam = np.empty(n)
        self.gv = np.empty(n)
        self.p = np.empty(n)
        self.bs = np.empty(n)
        self.x_new = np.empty(n)
        self.v = np.empty((n, n))
        self.lwork = <blas_int>max(3 * n, 1) * 8
        self.work = np.empty(self.lwork)
        self.have_eig = False
        self.theta = np.empty(n)
        self.g = np.empty(n)
        self.gn = np.empty(n)
        self.b_arr = np.empty((n, n))
        self.b = self.b_arr

    cdef void pack(self, CoreObjective owner) except *:
        """These buffers and ``owner``'s, in one allocation (``packed``)."""
        (owner.theta_in, owner.grad_in, owner.hess_in, self.theta, self.g, self.gn, self.p,
         self.x_new, self.bs, self.lam, self.gv, self.b_arr, self.v,
         self.work) = packed(
            *map(np.asarray, [owner.theta_in, owner.grad_in, owner.hess_in, self.theta,
                              self.g, self.gn, self.p, self.x_new, self.bs,
                              self.lam, self.gv]),
            self.b_arr, np.asarray(self.v), np.asarray(self.work))
        self.b = self.b_arr


cdef enum:
    JACOBI_MAX_N = 8   # orders up to which eigendecompositions are cyclic Jacobi sweeps


cdef int _eigh(Py_ssize_t n, double* v, double* lam, _Work w) noexcept nogil:
    """Eigendecomposition of the symmetric matrix in ``v`` (n x n, column-major):
    eigenvalues ascending into ``lam``, eigenvectors into the columns of ``v``;
    0, or LAPACK's info.

    Up to ``JACOBI_MAX_N`` (the length of theta of most models) by cyclic
    Jacobi rotations, accurate to rounding and without LAPACK's dsyev, whose
    several routines cost more to reach than such a matrix costs to diagonalise.
    """
    cdef Py_ssize_t i, j, r, c, sweep, best
    cdef double* m = &w.work[0]
    cdef double off, scale, app, aqq, apq, theta, t, cs, sn, x, y
    if n > JACOBI_MAX_N:
        return syev_l(<blas_int>n, v, <blas_int>n, lam, &w.work[0], w.lwork)
    for i in range(n * n):
        m[i] = v[i]
        v[i] = 0.0
    for i in range(n):
        v[i + i * n] = 1.0
    for sweep in range(100):
        off = 0.0
        scale = 0.0
        for c in range(n):
            for r in range(n):
                if r != c:
                    off += m[r + c * n] * m[r + c * n]
                else:
                    scale += m[r + c * n] * m[r + c * n]
        if off <= 1e-32 * scale or off == 0.0:
            break
        for r in range(n - 1):
            for c in range(r + 1, n):
                apq = m[r + c * n]
                if apq == 0.0:
                    continue
                app = m[r + r * n]
                aqq = m[c + c * n]
                theta = (aqq - app) / (2.0 * apq)
                t = 1.0 / (fabs(theta) + sqrt(theta * theta + 1.0))
                if theta < 0:
                    t = -t
                cs = 1.0 / sqrt(t * t + 1.0)
                sn = t * cs
                # M <- J^T M J with J the rotation in the (r, c) plane
                for i in range(n):
                    x = m[i + r * n]
                    y = m[i + c * n]
                    m[i + r * n] = cs * x - sn * y
                    m[i + c * n] = sn * x + cs * y
                for j in range(n):
                    x = m[r + j * n]
                    y = m[c + j * n]
                    m[r + j * n] = cs * x - sn * y
                    m[c + j * n] = sn * x + cs * y
                m[r + c * n] = 0.0
                m[c + r * n] = 0.0
                for i in range(n):
                    x = v[i + r * n]
                    y = v[i + c * n]
                    v[i + r * n] = cs * x - sn * y
                    v[i + c * n] = sn * x + cs * y
    for i in range(n):
        lam[i] = m[i + i * n]
    # ascending, eigenvectors with them
    for i in range(n - 1):
        best = i
        for j in range(i + 1, n):
            if lam[j] < lam[best]:
                best = j
        if best != i:
            x = lam[i]
            lam[i] = lam[best]
            lam[best] = x
            for r in range(n):
                x = v[r + i * n]
                v[r + i * n] = v[r + best * n]
                v[r + best * n] = x
    return 0


def symmetric_eigen(a):
    """Eigenvalues (ascending) and eigenvectors (columns) of the symmetric ``a``,
    as the optimiser's steps compute them (``_eigh``)."""
    cdef Py_ssize_t n = len(a)
    cdef _Work w = _Work(max(n, 1))
    v_arr = np.asfortranarray(a, dtype=np.float64).copy(order="F")
    cdef double[::1, :] v = v_arr
    lam = np.empty(n)
    cdef double[::1] lv = lam
    if n and _eigh(n, &v[0, 0], &lv[0], w) != 0:
        raise np.linalg.LinAlgError("eigendecomposition failed")
    return lam, v_arr


cdef double _norm(const double* a, Py_ssize_t n) noexcept nogil:
    cdef double acc = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        acc += a[i] * a[i]
    return sqrt(acc)


cdef double _step_norm(const double* lam, const double* gv, Py_ssize_t n,
                       double mu) noexcept nogil:
    cdef double acc = 0.0, t
    cdef Py_ssize_t i
    for i in range(n):
        t = gv[i] / (lam[i] + mu)
        acc += t * t
    return sqrt(acc)


cdef int _trust_region_step(const double* g, const double* b, double radius,
                            _Work w) noexcept nogil:
    """w.p = argmin g'p + p'Bp/2 over ||p|| <= radius; 0, or LAPACK's info.

    By B's eigendecomposition B = V diag(lam) V': the Newton step if B is
    positive definite and the step fits, else p(mu) = -(B + mu I)^{-1} g with
    mu >= max(0, -lam_min) such that ||p(mu)|| = radius (bisection); in the
    hard case the step is completed along the lowest eigenvector.
    """
    cdef Py_ssize_t n = w.n, i, j
    cdef double* v = &w.v[0, 0]
    cdef double* lam = &w.lam[0]
    cdef double* gv = &w.gv[0]
    cdef double* p = &w.p[0]
    cdef double lo, hi, mu, acc, rest, gnorm
    cdef int info
    if not w.have_eig:
        for i in range(n * n):
            v[i] = b[i]
        info = _eigh(n, v, lam, w)
        if info != 0:
            return info
    # v is column-major: eigenvector j is v[j*n : (j+1)*n]
    for j in range(n):
        acc = 0.0
        for i in range(n):
            acc += v[i + j * n] * g[i]
        gv[j] = acc
    mu = 0.0
    if lam[0] > 0 and _step_norm(lam, gv, n, 0.0) <= radius:
        mu = 0.0
    else:
        lo = max(0.0, -lam[0]) + 1e-12 * max(1.0, fabs(lam[n - 1]))
        gnorm = _norm(g, n)
        hi = lo + gnorm / radius + fabs(lam[n - 1])
        if _step_norm(lam, gv, n, lo) <= radius:
            # hard case: the step at lo, completed along the lowest eigenvector
            for i in range(n):
                p[i] = 0.0
                for j in range(n):
                    p[i] -= v[i + j * n] * gv[j] / (lam[j] + lo)
            rest = radius * radius - _norm(p, n) ** 2
            rest = sqrt(rest) if rest > 0 else 0.0
            for i in range(n):
                p[i] += rest * v[i]
            return 0
        for _ in range(200):
            mu = 0.5 * (lo + hi)
            if _step_norm(lam, gv, n, mu) > radius:
                lo = mu
            else:
                hi = mu
            if hi - lo <= 1e-12 * hi:
                break
        mu = hi
    for i in range(n):
        p[i] = 0.0
        for j in range(n):
            p[i] -= v[i + j * n] * gv[j] / (lam[j] + mu)
    return 0


cdef void _newton_derivatives(CoreObjective fg, const double[::1] scale, double[::1] gn,
                              double[::1] g, double[:, ::1] b, double f,
                              _Work w) except *:
    """g and B in x = theta / scale from the core's gradient and approximate
    Hessian (eq. 70) at the last point evaluated; a Hessian that is not finite
    is replaced by the diagonal B_ii = max(2 |g_i|, 1e-8 max(|d|, 1))."""
    cdef Py_ssize_t i, j, n = g.shape[0]
    cdef bint finite = True
    cdef double floor = 1e-8 * max(fabs(f), 1.0)
    fg.derivatives(gn, b)
    for i in range(n):
        g[i] = gn[i] * scale[i]
        for j in range(n):
            b[i, j] *= scale[i] * scale[j]
            finite = finite and isfinite(b[i, j])
    w.have_eig = False
    if not finite:
        for i in range(n):
            for j in range(n):
                b[i, j] = 0.0
            b[i, i] = max(2.0 * fabs(g[i]), floor)
    else:
        _floor_spectrum(b, floor, w)


cdef void _floor_spectrum(double[:, ::1] b, double floor, _Work w) except *:
    """B with every eigenvalue of magnitude below ``floor`` raised to it, so that
    a direction in which the criterion is flat (zero curvature, a gradient of
    rounding errors) gets short steps rather than steps to the trust radius."""
    cdef Py_ssize_t n = w.n, i, j, c
    cdef double* v = &w.v[0, 0]
    cdef double acc
    cdef bint changed = False
    w.have_eig = False
    for i in range(n):
        for j in range(n):
            v[i + j * n] = b[i, j]
    if _eigh(n, v, &w.lam[0], w) != 0:
        return
    w.have_eig = True   # B = V diag(lam) V' (symmetric: row-major b is its transpose)
    for c in range(n):
        if fabs(w.lam[c]) < floor:
            w.lam[c] = floor
            changed = True
    if not changed:
        return
    for i in range(n):
        for j in range(n):
            acc = 0.0
            for c in range(n):
                acc += v[i + c * n] * w.lam[c] * v[j + c * n]
            b[i, j] = acc


cdef enum:
    # how ``_minimize`` stopped (``CODES`` names them as nlopt does)
    STOP_SUCCESS, STOP_FTOL, STOP_XTOL, STOP_ROUNDOFF, STOP_MAXEVAL, STOP_FAILURE, \
        STOP_NOT_FINITE_START

CODES = ("SUCCESS", "FTOL_REACHED", "XTOL_REACHED", "ROUNDOFF_LIMITED", "MAXEVAL_REACHED",
         "FAILURE", "FAILURE")


cdef int _minimize(CoreObjective fg, double[::1] x, const double[::1] scale,
                   double gtol, double ftol_rel, double xtol_abs, Py_ssize_t maxeval,
                   _Work w, Py_ssize_t* n_evals, double* f_out) except -1:
    """Trust-region Newton steps on x = theta / scale in place (eqs. 69, 70; x is
    theta / scale at the start and at the end); the evaluations into
    ``n_evals``, d into ``f_out``; returns how it stopped (``STOP_*``).

    Each step minimises the quadratic model g'p + p'Bp/2 within ||p|| <= radius
    (``_trust_region_step``), B the approximate Hessian of eq. 70 with its small
    eigenvalues floored (``_newton_derivatives``); the radius starts at 1/2 per
    coordinate, doubles after a good step that reached it and shrinks to a
    quarter of the step after a poor one.  A trial point costs the criterion
    alone: g and B are computed only once it is accepted.  The criterion is
    minimised without bounds (the caller negates the columns of lambda whose
    diagonal ends negative, eq. 24).  Stops with ``STOP_SUCCESS`` when the
    gradient is below ``gtol``, ``STOP_XTOL`` when the step falls below
    ``xtol_abs``, ``STOP_FTOL`` when an accepted step and the model's predicted
    decrease are both below ``ftol_rel``, or the model's minimum promises less
    than a tenth of that, or two Newton steps show the gap left below it, and
    ``STOP_ROUNDOFF`` when the radius has shrunk below ``xtol_abs`` without a
    decrease.  ``gtol`` and ``ftol_rel`` are relative to n (1 + log 2 pi), the
    criterion's size for a response in units of sigma: d itself moves by
    2 n log c when y is scaled by c, and a stopping rule relative to it would
    not be invariant to y's units."""
    cdef Py_ssize_t n = x.shape[0], i, j, count = 0
    cdef double magnitude = fg.magnitude
    cdef double f, f_new, actual, predicted, ratio, radius, norm
    cdef double gmax, t, step_radius, rate
    cdef double prev_actual = -1.0   # the decrease of the last accepted Newton step
    cdef bint accepted
    cdef int code = STOP_MAXEVAL
    fg.n_derivatives = 0
    cdef double[::1] theta = w.theta
    cdef double[::1] g = w.g
    cdef double[:, ::1] b = w.b
    cdef double[::1] gn = w.gn
    cdef double* p = &w.p[0]
    w.have_eig = False
    for i in range(n):
        theta[i] = x[i] * scale[i]
    f = fg.value(theta)
    count += 1
    if not isfinite(f):
        n_evals[0] = count
        f_out[0] = f
        return STOP_NOT_FINITE_START
    # B is eq. 70's, here and at every accepted point
    _newton_derivatives(fg, scale, gn, g, b, f, w)
    radius = 0.5 * sqrt(<double>n)

    while count < maxeval:
        PyErr_CheckSignals()   # Ctrl-C stops the loop between two iterations
        gmax = 0.0
        for i in range(n):
            t = fabs(g[i]) * max(fabs(x[i]), 1.0)
            if t > gmax:
                gmax = t
        if gmax <= gtol * magnitude:
            code = STOP_SUCCESS
            break
        if _trust_region_step(&g[0], &b[0, 0], radius, w) != 0:
            code = STOP_FAILURE
            break
        predicted = 0.0
        for i in range(n):
            w.bs[i] = 0.0
            for j in range(n):
                w.bs[i] += b[i, j] * p[j]
            predicted -= g[i] * p[i] + 0.5 * p[i] * w.bs[i]
        norm = _norm(p, n)
        if predicted <= 0.1 * ftol_rel * magnitude and radius > norm:
            code = STOP_FTOL   # the model's minimum is inside: nothing left to gain
            break
        for i in range(n):
            w.x_new[i] = x[i] + p[i]
            theta[i] = w.x_new[i] * scale[i]
        f_new = fg.value(theta)
        count += 1
        actual = f - f_new if isfinite(f_new) else -1.0
        ratio = actual / predicted if predicted > 0 else -1.0
        step_radius = radius
        if ratio < 0.25:
            radius = 0.25 * norm
        elif ratio > 0.75 and norm >= 0.99 * radius:
            radius = 2.0 * radius
        accepted = actual > 0 and ratio > 1e-4
        if accepted:
            t = 0.0
            for i in range(n):
                x[i] = w.x_new[i]
                t = max(t, fabs(p[i]))
            f = f_new
            if t <= xtol_abs:
                code = STOP_XTOL
                break
            if actual <= ftol_rel * magnitude and predicted <= 10 * ftol_rel * magnitude:
                code = STOP_FTOL
                break
            # two interior Newton steps, the second predicted well and ``rate`` of
            # the first: the gap left, about rate / (1 - rate) of the second, below
            # the decrease that stops the loop at its top; stop without the
            # derivatives that would only confirm it (theory.md, eq. 69: the last
            # step without derivatives)
            rate = actual / prev_actual if prev_actual > 0 else 1.0
            if rate <= 0.1 and fabs(ratio - 1.0) <= 0.25 and norm < 0.99 * step_radius \
                    and rate / (1.0 - rate) * actual <= 0.1 * ftol_rel * magnitude:
                code = STOP_FTOL
                break
            prev_actual = actual if norm < 0.99 * step_radius else -1.0
            _newton_derivatives(fg, scale, gn, g, b, f, w)
        elif radius <= xtol_abs:
            code = STOP_ROUNDOFF
            break
    n_evals[0] = count
    f_out[0] = f
    return code


# ------------------------------------------------------------ fits and refits

cdef enum:
    # what ``Optimum.run`` and ``Refit.run`` did
    RUN_DONE,          # the fit is complete: theta, d and B are the optimum's
    RUN_FINISH,        # the optimiser did not converge: theta, d and B are where it
                       # stopped, for the caller to finish derivative-free
    RUN_BAD_LENGTH,    # y has the wrong length (nothing changed)
    RUN_NOT_FINITE,    # y has a value that is not finite (nothing changed)
    RUN_BAD_START,     # the start is not within the bounds (nothing changed)
    RUN_SUSPECT        # converged, but the criterion is not finite or theta ran away:
                       # the caller checks for an exact fit

RUN_STATUS = ("done", "finish", "bad length", "not finite", "bad start", "suspect")


cdef inline bint _is_vector(cnp.ndarray a):
    return (cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE
            and cnp.PyArray_IS_C_CONTIGUOUS(a))


cdef tuple _not_run(int status):
    return status, None, 0.0, 0, 0, None, None, None


cdef class Optimum:
    """A model's default fit, from a start to the optimum as one compiled call.

    ``run`` takes the compiled steps of the sequence ``lmmfast.optimize.fit_theta``
    describes: the all-zero columns of lambda moved off zero, the Newton steps
    (``_minimize``), the columns of lambda whose diagonal ends negative negated
    (eq. 24), then, where the steps converged, the boundary step
    (``boundary_step``) and the check for a fit that ran away (``suspect``).
    It leaves the core's factor at the result and calls no Python function,
    which keeps a fit that follows other work (whose memory has pushed the
    model's out of the caches) short: it touches few memory pages.
    ``runaway``: the largest theta / scale that is not suspect of an exact fit
    (-inf: every fit is).
    """
    cdef readonly CoreObjective objective
    cdef double[::1] scale, theta
    cdef const Py_ssize_t[::1] diag, column
    cdef Py_ssize_t n_theta, maxeval
    cdef double gtol, ftol_rel, xtol_abs, boundary_tol, runaway

    def __init__(self, CoreObjective objective, scale, diag, column, double gtol,
                 double ftol_rel, double xtol_abs, Py_ssize_t maxeval, double boundary_tol,
                 double runaway):
        self.objective = objective
        self.scale = np.array(scale, dtype=np.float64)
        self.theta = np.empty(len(scale))
        self.diag = np.ascontiguousarray(diag, dtype=np.intp)
        self.column = np.ascontiguousarray(column, dtype=np.intp)
        self.n_theta = len(scale)
        if self.column.shape[0] != self.n_theta or objective.perm.shape[0] != self.n_theta:
            raise ValueError("scale, column and the objective's theta must have one length")
        self.gtol = gtol
        self.ftol_rel = ftol_rel
        self.xtol_abs = xtol_abs
        self.maxeval = maxeval
        self.boundary_tol = boundary_tol
        self.runaway = runaway

    def serves(self, core, bint reml):
        """Whether this fits ``core``'s criterion (REML or ML)."""
        return self.objective.serves(core, reml)

    def __reduce__(self):
        """Rebuilt from the constructor's arguments (``theta`` is a run's buffer)."""
        return _rebuilt, ("Optimum", (self.objective, np.array(self.scale), np.array(self.diag),
                                      np.array(self.column), self.gtol, self.ftol_rel,
                                      self.xtol_abs, self.maxeval, self.boundary_tol,
                                      self.runaway), None)

    cdef void _pack(self) except *:
        """The objective's buffers and these, each in one allocation (``packed``)."""
        self.objective.pack()
        self.scale, self.theta, self.diag, self.column = packed(
            np.asarray(self.scale), np.asarray(self.theta), np.asarray(self.diag),
            np.asarray(self.column))

    cdef const double* _start(self, cnp.ndarray start_arr) except? NULL:
        """The start's values, or NULL where it is not within the bounds."""
        cdef Py_ssize_t i
        if not _is_vector(start_arr):
            raise TypeError("start must be a C-contiguous float64 vector")
        cdef const double* start = <const double*>cnp.PyArray_DATA(start_arr)
        if cnp.PyArray_DIM(start_arr, 0) != self.n_theta:
            return NULL
        for i in range(self.diag.shape[0]):
            if start[self.diag[i]] < 0:
                return NULL
        return start

    def run(self, cnp.ndarray start_arr, tolerances=None):
        """Fit from ``start`` (theta, lme4 order, a C-contiguous float64 vector,
        read without the buffer protocol); ``tolerances``: ``(gtol, ftol_rel,
        xtol_abs, maxeval)`` for this run instead of the plan's.

        Returns ``(status, theta, d, evaluations, derivatives, code, B, initial)``:
        ``RUN_STATUS[status]``, the optimum's theta (lme4 order), criterion,
        counts, the optimiser's stopping code, its B (x = theta / scale; None
        where the criterion was not finite at the start) and the start it took.
        """
        cdef const double* start = self._start(start_arr)
        if start == NULL:
            return _not_run(RUN_BAD_START)
        if tolerances is None:
            return self._run(start, self.gtol, self.ftol_rel, self.xtol_abs, self.maxeval)
        gtol, ftol_rel, xtol_abs, maxeval = tolerances
        return self._run(start, gtol, ftol_rel, xtol_abs, maxeval)

    def canonical(self, theta):
        """``(theta, signs)``: every column of lambda whose diagonal is negative
        negated (eq. 24; lambda lambda^T, hence the criterion, is unchanged), and
        the sign applied to each element."""
        t = np.array(theta, dtype=np.float64)
        if t.shape != (self.n_theta,):
            raise ValueError(f"theta must have {self.n_theta} values")
        signs = np.ones(self.n_theta)
        cdef double[::1] tv = t
        cdef double[::1] sv = signs
        self._canonical(&tv[0], &sv[0], NULL)
        return t, signs

    cdef void _canonical(self, double* theta, double* signs, double* hess) noexcept:
        """Columns of lambda with a negative diagonal negated in ``theta``, their
        signs into ``signs``, and B (n x n, row-major; NULL: none) with them."""
        cdef Py_ssize_t nt = self.n_theta, i, j, c
        cdef bint flipped = False
        for c in range(self.diag.shape[0]):
            flipped = flipped or theta[self.diag[c]] < 0
        if not flipped:
            return
        for i in range(nt):
            signs[i] = -1.0 if theta[self.diag[self.column[i]]] < 0 else 1.0
        for i in range(nt):
            theta[i] = theta[i] * signs[i]
            if hess != NULL:
                for j in range(nt):
                    hess[i * nt + j] = hess[i * nt + j] * (signs[i] * signs[j])

    cdef tuple _run(self, const double* start, double gtol, double ftol_rel, double xtol_abs,
                    Py_ssize_t maxeval):
        cdef Py_ssize_t nt = self.n_theta, i, j, c, count = 0
        cdef double f = 0.0, s
        cdef int status = RUN_DONE
        cdef cnp.npy_intp dims[2]
        cdef CoreObjective fg = self.objective
        cdef _Work w = fg.work
        # the start, all-zero columns of lambda moved off zero (eq. 69)
        dims[0] = nt
        dims[1] = nt
        initial = cnp.PyArray_EMPTY(1, dims, cnp.NPY_DOUBLE, 0)
        cdef double* init = <double*>cnp.PyArray_DATA(initial)
        for i in range(nt):
            init[i] = start[i]
        for c in range(self.diag.shape[0]):
            s = 0.0
            for i in range(nt):
                if self.column[i] == c and start[i] != 0:
                    s = 1.0
            if s == 0.0:
                init[self.diag[c]] = 0.1 * self.scale[self.diag[c]]
        cdef double[::1] theta = self.theta
        for i in range(nt):
            theta[i] = init[i] / self.scale[i]
        cdef int stop = _minimize(fg, theta, self.scale, gtol, ftol_rel, xtol_abs,
                                  maxeval, w, &count, &f)
        for i in range(nt):
            theta[i] = theta[i] * self.scale[i]
        hess_arr = None
        cdef double* hess = NULL
        if stop != STOP_NOT_FINITE_START:
            hess_arr = cnp.PyArray_EMPTY(2, dims, cnp.NPY_DOUBLE, 0)
            hess = <double*>cnp.PyArray_DATA(hess_arr)
            for i in range(nt):
                for j in range(nt):
                    hess[i * nt + j] = w.b[i, j]
        # columns of lambda with a negative diagonal negated (eq. 24)
        self._canonical(&theta[0], &w.x_new[0], hess)
        if stop != STOP_SUCCESS and stop != STOP_FTOL and stop != STOP_XTOL:
            return self._result(RUN_FINISH, f, count, stop, hess_arr, initial)
        count += self._boundary_step(theta, &f)
        if self._suspect(&theta[0], f):
            status = RUN_SUSPECT
        return self._result(status, f, count, stop, hess_arr, initial)

    def boundary_step(self, theta, double f):
        """``(theta, d, evaluations)``: each diagonal element of lambda in (0,
        ``boundary_tol``) tried at exactly 0, in turn, and kept there where the
        criterion is no worse than ``f`` (its value at ``theta``, lme4 order);
        the core's factor is left at the result."""
        t = np.array(theta, dtype=np.float64)
        if t.shape != (self.n_theta,):
            raise ValueError(f"theta must have {self.n_theta} values")
        cdef double[::1] tv = t
        cdef Py_ssize_t count = self._boundary_step(tv, &f)
        return t, f, count

    cdef Py_ssize_t _boundary_step(self, double[::1] theta, double* f) except -1:
        """``boundary_step`` on ``theta`` and ``f`` in place; returns the evaluations."""
        cdef Py_ssize_t nt = self.n_theta, i, c, count = 0
        cdef double val, s
        cdef bint at_result = True
        cdef CoreObjective fg = self.objective
        for c in range(self.diag.shape[0]):
            i = self.diag[c]
            if 0.0 < theta[i] < self.boundary_tol:
                val = theta[i]
                theta[i] = 0.0
                s = fg.value(theta)
                count += 1
                if s <= f[0]:
                    f[0] = s
                else:
                    theta[i] = val
        # the factor at the result: the last evaluation's theta, unless that was a trial
        for i in range(nt):
            at_result = at_result and fg.theta_in[i] == theta[fg.perm[i]]
        if not at_result:
            fg.value(theta)
        return count

    def suspect(self, theta, double f):
        """Whether a fit that ended at ``theta`` (lme4 order) with criterion ``f``
        shows the symptoms of an exact fit: d not finite, or theta / scale above
        ``runaway`` (theta growing without bound as sigma goes to 0)."""
        cdef const double[::1] tv = np.ascontiguousarray(theta, dtype=np.float64)
        if tv.shape[0] != self.n_theta:
            raise ValueError(f"theta must have {self.n_theta} values")
        return self._suspect(&tv[0], f)

    cdef bint _suspect(self, const double* theta, double f) noexcept:
        cdef Py_ssize_t i
        if not isfinite(f):
            return True
        for i in range(self.n_theta):
            if not theta[i] / self.scale[i] <= self.runaway:
                return True
        return False

    cdef tuple _result(self, int status, double f, Py_ssize_t count, int stop, hess_arr,
                       initial):
        """``run``'s tuple, with theta from ``self.theta``."""
        cdef cnp.npy_intp n = self.n_theta
        cdef Py_ssize_t i
        theta_arr = cnp.PyArray_EMPTY(1, &n, cnp.NPY_DOUBLE, 0)
        for i in range(n):
            (<double*>cnp.PyArray_DATA(theta_arr))[i] = self.theta[i]
        return (status, theta_arr, f, count, self.objective.n_derivatives, CODES[stop],
                hess_arr, initial)


cdef class Refit:
    """A model's refits to new responses with the same design, each one compiled
    call from y to the optimum (the inner loop of a parametric bootstrap).

    ``run`` writes W(y - offset) into the y parts of A (eq. 26, by
    ``_response.pxd``'s loops, as ``_crossprod.set_response``), then fits
    from the start as ``Optimum.run``.
    """
    cdef readonly Optimum optimum
    cdef object a_obj
    cdef double[::1] a
    cdef list refs, z                           # the terms' columns, kept alive for:
    cdef const cnp.int64_t[::1] term_refs, term_z, term_k   # their addresses, and k
    cdef Py_ssize_t n_terms, n_runs
    cdef const cnp.int64_t[::1] off_zy, q
    cdef Py_ssize_t off_xy, n, p
    cdef const double[:, ::1] x
    cdef const double[::1] weights, offset
    cdef bint has_weights, has_offset
    cdef double[::1] wy, y_raw

    def __init__(self, Optimum optimum, a, off_zy, q, Py_ssize_t off_xy, list refs, list z, x,
                 weights, offset):
        cdef Py_ssize_t t
        self.optimum = optimum
        self.a_obj = a
        self.a = a
        self.off_xy = off_xy
        x = np.ascontiguousarray(x, dtype=np.float64)
        self.n = x.shape[0]
        self.p = x.shape[1]
        refs = [np.ascontiguousarray(r, dtype=np.int64) for r in refs]
        z = [np.ascontiguousarray(zt, dtype=np.float64) for zt in z]
        for t in range(len(refs)):
            if len(refs[t]) != self.n or z[t].shape[0] != self.n:
                raise ValueError("every term needs one level and one row of z per row of X")
        self.has_weights = weights is not None
        self.has_offset = offset is not None
        if (self.has_weights and len(weights) != self.n) or (
                self.has_offset and len(offset) != self.n):
            raise ValueError("weights and offset need one value per row of X")
        self._use([np.ascontiguousarray(off_zy, dtype=np.int64),
                   np.ascontiguousarray(q, dtype=np.int64),
                   np.empty(self.n), np.empty(self.n if self.has_weights else 0),
                   np.ascontiguousarray(weights if self.has_weights else np.empty(0),
                                        dtype=np.float64),
                   np.ascontiguousarray(offset if self.has_offset else np.empty(0),
                                        dtype=np.float64),
                   x], refs, z)
        self.n_runs = 0

    cdef void _use(self, list arrays, list refs, list z) except *:
        """Take the arrays ``__init__`` lists, and each term's level codes and z."""
        cdef Py_ssize_t t
        (self.off_zy, self.q, self.wy, self.y_raw, self.weights, self.offset,
         self.x) = arrays
        if not self.has_weights:
            self.y_raw = self.wy
        self.refs = refs
        self.z = z
        self.n_terms = len(refs)
        terms = np.zeros((3, max(self.n_terms, 1)), dtype=np.int64)
        for t in range(self.n_terms):
            terms[0, t] = <size_t>cnp.PyArray_DATA(refs[t])
            terms[1, t] = <size_t>cnp.PyArray_DATA(z[t])
            terms[2, t] = z[t].shape[1]
        self.term_refs, self.term_z, self.term_k = terms

    cdef void _pack(self) except *:
        """Everything a refit reads in few allocations (``packed``), the rows' columns
        copied where they are small; done at the second refit, as a plan that is
        used again will be used in a loop (a bootstrap's)."""
        self.optimum._pack()
        arrays = packed(*map(np.asarray, [self.off_zy, self.q, self.wy]),
                        np.asarray(self.y_raw) if self.has_weights else np.empty(0),
                        *map(np.asarray, [self.weights, self.offset, self.x]),
                        *self.refs, *self.z)
        self._use(arrays[:7], arrays[7:7 + self.n_terms], arrays[7 + self.n_terms:])

    def serves(self, core, bint reml, a):
        """Whether this refits ``core``'s criterion (REML or ML) on the cross-products ``a``."""
        return self.optimum.serves(core, reml) and self.a_obj is a

    def __reduce__(self):
        """Rebuilt from the constructor's arguments: the cross-products it writes into
        and the rows' columns (the response buffers are a run's)."""
        return _rebuilt, ("Refit", (self.optimum, self.a_obj, np.array(self.off_zy),
                                    np.array(self.q), self.off_xy, list(self.refs),
                                    list(self.z), np.asarray(self.x),
                                    np.asarray(self.weights) if self.has_weights else None,
                                    np.asarray(self.offset) if self.has_offset else None),
                          None)

    def run(self, cnp.ndarray y_arr, cnp.ndarray start_arr):
        """Refit to ``y`` from ``start`` (theta, lme4 order), both C-contiguous
        float64 vectors (read without the buffer protocol); returns as
        ``Optimum.run``.  Unless the status is "done" or "finish", nothing has
        changed.
        """
        cdef Py_ssize_t n = self.n, i, t
        cdef double sw
        if not _is_vector(y_arr):
            raise TypeError("y must be a C-contiguous float64 vector")
        cdef const double* y = <const double*>cnp.PyArray_DATA(y_arr)
        if cnp.PyArray_DIM(y_arr, 0) != n:
            return _not_run(RUN_BAD_LENGTH)
        cdef const double* start = self.optimum._start(start_arr)
        if start == NULL:
            return _not_run(RUN_BAD_START)
        for i in range(n):
            if not isfinite(y[i]):
                return _not_run(RUN_NOT_FINITE)
        self.n_runs += 1
        if self.n_runs == 2:
            self._pack()
        # W (y - offset) into A (eq. 26), as LinearMixedModel.refit computes it
        for i in range(n):
            self.wy[i] = y[i] - self.offset[i] if self.has_offset else y[i]
            if self.has_weights:
                self.wy[i] = self.wy[i] * self.weights[i]
                sw = sqrt(self.weights[i])
                self.y_raw[i] = self.wy[i] / (sw * sw)
        for t in range(self.n_terms):
            term_response(&self.a[self.off_zy[t] + self.p], self.p + 1, self.q[t], n,
                          self.term_k[t], <const cnp.int64_t*><size_t>self.term_refs[t],
                          <const double*><size_t>self.term_z[t], &self.wy[0])
        fixed_response(&self.a[0], self.off_xy, n, self.p, &self.x[0, 0] if self.p else NULL,
                       &self.wy[0], &self.y_raw[0])
        cdef Optimum opt = self.optimum
        return opt._run(start, opt.gtol, opt.ftol_rel, opt.xtol_abs, opt.maxeval)


def _rebuilt(name, args, state):
    """An ``Optimum``, ``Refit`` or ``CoreObjective`` from its ``__reduce__``."""
    obj = {"CoreObjective": CoreObjective, "Optimum": Optimum, "Refit": Refit}[name](*args)
    if state is not None:
        obj.__setstate__(state)
    return obj


# pickles name the package's module (the extension registers itself as ``_trust_region``
# too, which a fresh interpreter cannot import before lmmfast)
_rebuilt.__module__ = __name__
