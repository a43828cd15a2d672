# cython: language_level=3
"""The trust-region quasi-Newton loop of the optimiser (theory.md, eq. 69), and a
model's default fit and its refits to new responses as one call each
(``Optimum``, ``Refit``).

Compiled because theta is short and one evaluation of a small model takes a
few microseconds: the optimiser's own arithmetic (an eigendecomposition of
the n x n model Hessian per step, the BFGS update) must cost less than that,
which numpy's per-call overhead does not allow.  The objective is a Python
callable returning the criterion and its gradient, or a ``CoreObjective`` that
calls the compiled core directly.
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
    as the objective of ``minimize``, theta given in lme4's order and permuted
    to the core's internal order here, without a Python function per evaluation.
    ``minimize`` takes Newton steps on the approximate Hessian of eq. 70 for
    it and asks for derivatives only at accepted points.
    """
    cdef object core
    cdef bint reml
    cdef Py_ssize_t[::1] perm
    cdef double[::1] theta_in, grad_in
    cdef double[:, ::1] hess_in
    cdef CoreApi* api                           # the core's C entry points
    cdef _Work work                             # ``minimize``'s buffers, kept for refits
    cdef readonly Py_ssize_t n_derivatives
    cdef readonly double magnitude              # n (1 + log 2 pi): see ``_minimize``

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


cdef double _evaluate(object fg, const double[::1] theta, double[::1] grad) except? -1.0:
    """d(theta) of a Python callable into the return value, its gradient into ``grad``."""
    cdef double f
    cdef double[::1] g
    f, g_val = fg(np.asarray(theta))
    g = np.asarray(g_val, dtype=np.float64)
    grad[:] = g
    return f


cdef class _Work:
    """Buffers of one run (n small)."""
    cdef Py_ssize_t n
    cdef double[::1] lam, gv, p, bs, y, x_new, work
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
        self.y = np.empty(n)
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
         self.x_new, self.bs, self.y, self.lam, self.gv, self.b_arr, self.v,
         self.work) = packed(
            *map(np.asarray, [owner.theta_in, owner.grad_in, owner.hess_in, self.theta,
                              self.g, self.gn, self.p, self.x_new, self.bs, self.y,
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
    is replaced by the diagonal start of the quasi-Newton method."""
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


def minimize(fg, const double[::1] x0, const double[::1] scale, hessian,
             double gtol, double ftol_rel, double xtol_abs, Py_ssize_t maxeval):
    """Trust-region quasi-Newton minimisation of ``fg(theta) -> (d, gradient)``
    (a Python callable, or a ``CoreObjective``).

    Works on x = theta / ``scale``; ``hessian`` is B at the start in x (None:
    diagonal, B_ii = 2 |g_i|).  Returns ``(theta, d, evaluations, code, B)``.
    See ``lmmfast.optimize.quasi_newton`` for the method and the stopping rules.
    """
    cdef Py_ssize_t n = x0.shape[0], count = 0
    cdef bint core = isinstance(fg, CoreObjective)
    cdef _Work w = (<CoreObjective>fg).work if core else _Work(n)
    cdef double f = 0.0
    x_arr = np.array(x0, dtype=np.float64)
    cdef int stop = _minimize(fg, x_arr, scale, hessian, gtol, ftol_rel, xtol_abs, maxeval,
                              w, &count, &f)
    return (x_arr * np.asarray(scale), f, count, CODES[stop],
            None if stop == STOP_NOT_FINITE_START else np.array(w.b_arr))


cdef int _minimize(object fg, double[::1] x, const double[::1] scale, object hessian,
                   double gtol, double ftol_rel, double xtol_abs, Py_ssize_t maxeval,
                   _Work w, Py_ssize_t* n_evals, double* f_out) except -1:
    """``minimize``'s loop on x in place (x = theta / scale at the start and at the
    end); the evaluations into ``n_evals``, d into ``f_out``; returns how it
    stopped (``STOP_*``).  ``gtol`` and ``ftol_rel`` are relative to |d|, or for
    the core's criterion to n (1 + log 2 pi), its size for a response in units
    of sigma: d itself moves by 2 n log c when y is scaled by c, and a stopping
    rule relative to it would not be invariant to y's units."""
    cdef Py_ssize_t n = x.shape[0], i, j, count = 0
    # a CoreObjective: Newton steps on eq. 70; a Python callable: BFGS
    cdef bint newton = isinstance(fg, CoreObjective)
    cdef double magnitude = (<CoreObjective>fg).magnitude if newton else -1.0
    cdef double f, f_new, actual, predicted, ratio, radius, norm, sbs, sy, wt, floor
    cdef double gmax, t, step_radius, rate
    cdef double prev_actual = -1.0   # the decrease of the last accepted Newton step
    cdef bint accepted
    cdef int code = STOP_MAXEVAL
    if newton:
        (<CoreObjective>fg).n_derivatives = 0
    cdef double[::1] theta = w.theta
    cdef double[::1] g = w.g
    cdef double[:, ::1] b = w.b
    cdef double[::1] gn = w.gn
    cdef double* p = &w.p[0]
    w.have_eig = False
    for i in range(n):
        theta[i] = x[i] * scale[i]
    if newton:
        f = (<CoreObjective>fg).value(theta)
    else:
        f = _evaluate(fg, theta, gn)
    count += 1
    if not isfinite(f):
        n_evals[0] = count
        f_out[0] = f
        return STOP_NOT_FINITE_START
    if newton:   # B is eq. 70's, here and at every accepted point
        _newton_derivatives(<CoreObjective>fg, scale, gn, g, b, f, w)
    else:
        for i in range(n):
            g[i] = gn[i] * scale[i]
        if hessian is None:
            floor = 1e-8 * max(fabs(f), 1.0)   # keeps B_0 positive definite
            for i in range(n):
                for j in range(n):
                    b[i, j] = 0.0
                b[i, i] = max(2.0 * fabs(g[i]), floor)
        else:
            w.b_arr[...] = hessian
    radius = 0.5 * sqrt(<double>n)

    while count < maxeval:
        PyErr_CheckSignals()   # Ctrl-C stops the loop between two iterations
        gmax = 0.0
        for i in range(n):
            t = fabs(g[i]) * max(fabs(x[i]), 1.0)
            if t > gmax:
                gmax = t
        if gmax <= gtol * (magnitude if newton else max(fabs(f), 1.0)):
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
        if predicted <= 0.1 * ftol_rel * (magnitude if newton else fabs(f)) and radius > norm:
            code = STOP_FTOL   # the model's minimum is inside: nothing left to gain
            break
        for i in range(n):
            w.x_new[i] = x[i] + p[i]
            theta[i] = w.x_new[i] * scale[i]
        if newton:
            f_new = (<CoreObjective>fg).value(theta)
        else:
            f_new = _evaluate(fg, theta, gn)
        count += 1
        actual = f - f_new if isfinite(f_new) else -1.0
        ratio = actual / predicted if predicted > 0 else -1.0
        if isfinite(f_new) and not newton:
            # damped BFGS update of B (positive definite even where d is not convex)
            sbs = 0.0
            sy = 0.0
            for i in range(n):
                w.y[i] = gn[i] * scale[i] - g[i]
                sbs += p[i] * w.bs[i]
                sy += p[i] * w.y[i]
            if sbs > 0:
                if sy < 0.2 * sbs:
                    wt = 0.8 * sbs / (sbs - sy)
                    for i in range(n):
                        w.y[i] = wt * w.y[i] + (1.0 - wt) * w.bs[i]
                    sy = 0.0
                    for i in range(n):
                        sy += p[i] * w.y[i]
                for i in range(n):
                    for j in range(n):
                        b[i, j] += w.y[i] * w.y[j] / sy - w.bs[i] * w.bs[j] / sbs
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
                if not newton:
                    g[i] = gn[i] * scale[i]
                t = max(t, fabs(p[i]))
            f = f_new
            if t <= xtol_abs:
                code = STOP_XTOL
                break
            if actual <= ftol_rel * (magnitude if newton else fabs(f)) \
                    and predicted <= 10 * ftol_rel * (magnitude if newton else fabs(f)):
                code = STOP_FTOL
                break
            if newton:
                # two interior Newton steps, the second predicted well and
                # ``rate`` of the first: the gap left, about rate / (1 - rate) of
                # the second, below the decrease that stops the loop at its top;
                # stop without the derivatives that would only confirm it
                # (theory.md, eq. 69: the last step without derivatives)
                rate = actual / prev_actual if prev_actual > 0 else 1.0
                if rate <= 0.1 and fabs(ratio - 1.0) <= 0.25 and norm < 0.99 * step_radius \
                        and rate / (1.0 - rate) * actual <= 0.1 * ftol_rel * magnitude:
                    code = STOP_FTOL
                    break
                prev_actual = actual if norm < 0.99 * step_radius else -1.0
                _newton_derivatives(<CoreObjective>fg, scale, gn, g, b, f, w)
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
    """A model's fit with the quasi-Newton optimiser, from a start to the optimum as
    one compiled call.

    ``run`` moves the all-zero columns of lambda off zero, minimises the
    criterion by ``_minimize``'s Newton steps, negates the columns of lambda
    whose diagonal ends negative (eq. 24), takes 0 for a diagonal element
    within ``boundary_tol`` of it where the criterion is no worse, and leaves
    the core's factor at the result.  ``LinearMixedModel.fit`` finishes what
    it cannot: a run that did not converge (by BOBYQA), and a suspect one
    (an exact fit?).  It calls no Python function, which keeps a fit that
    follows other work (whose memory has pushed the model's out of the
    caches) short: it touches few memory pages.  ``runaway``: the largest
    theta / scale that is not suspect of an exact fit (-inf: every fit is).
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
        cdef double f = 0.0, val, s
        cdef bint at_result = True
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
        cdef int stop = _minimize(fg, theta, self.scale, None, gtol, ftol_rel, xtol_abs,
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
        # a diagonal element that ends near its bound: the bound, if no worse
        for c in range(self.diag.shape[0]):
            i = self.diag[c]
            if 0.0 < theta[i] < self.boundary_tol:
                val = theta[i]
                theta[i] = 0.0
                s = fg.value(theta)
                count += 1
                if s <= f:
                    f = s
                else:
                    theta[i] = val
        # the factor at the result: the last evaluation's theta, unless that was a trial
        for i in range(nt):
            at_result = at_result and fg.theta_in[i] == theta[fg.perm[i]]
        if not at_result:
            fg.value(theta)
        if not isfinite(f):
            status = RUN_SUSPECT
        for i in range(nt):
            if not theta[i] / self.scale[i] <= self.runaway:
                status = RUN_SUSPECT
        return self._result(status, f, count, stop, hess_arr, initial)

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
