# cython: language_level=3
"""PIRLS for a GLMM (docs/theory.md, eqs. 91-96), compiled, and the passes over
rows of its deviances' gradients.

``RowPass`` binds a chunk of rows to its workspace's buffers once, so each
step of a pass over it is one call: ``evaluate`` forms the chunk's eta = o +
X beta + Z Lambda u from X, each term's level codes and per-row z (eqs. 2,
3, 91), maps it to mu and gives the unit deviances (eq. 92) and their sum;
``working`` forms the square roots of the working weights and the working
response (eq. 93); ``pass_chunks`` does both over chunks and adds the
weighted rows' cross-products to A (``_crossprod.add_chunk``, eq. 12).  ``PirlsLoop`` runs
PIRLS's iterations on one factor: passes, factorisations, the solves for
beta and u, step-halving and the stopping rule (eqs. 94-96).
``linear_predictor`` is Z Lambda u alone.  ``gradient_columns``,
``gradient_first`` and ``gradient_second`` are the two passes of the Laplace
deviance's gradient (``lmmfast.glmm.laplace``, eq. 98a); ``agq_sums`` the
level sums of adaptive quadrature and its gradient, ``agq_combine`` the
deviance and gradient from them (eqs. 101, 101a).  One nogil loop each, no
temporaries.  The links and families are those of ``lmmfast.family`` (R's
``binomial()`` and ``poisson()``) with R's clamps near the ends of the
scale, so the numbers are the numpy ones to rounding.
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport (exp, expm1, log, log1p, sqrt, fabs, erf, erfc, atan, fmin, fmax,
                        isfinite, lgamma, nearbyint, M_PI, NAN)

from lmmfast._crossprod cimport add_rows
from lmmfast._factor cimport BlockedFactor, INTERRUPTED
from lmmfast._kernels cimport raise_pending

cnp.import_array()

cdef double EPS = 2.220446049250313e-16
cdef double THRESH = 30.0
cdef double PROBIT_THRESH = 8.125890664701906      # -qnorm(eps)
cdef double CAUCHIT_THRESH = 1.4334931811815208e15  # -qcauchy(eps)
cdef double SQRT1_2 = 0.7071067811865476
cdef double INV_SQRT_2PI = 0.3989422804014327

LINK_CODES = {"logit": 0, "probit": 1, "cloglog": 2, "cauchit": 3, "log": 4,
              "identity": 5, "sqrt": 6}
FAMILY_CODES = {"binomial": 0, "poisson": 1}


cdef inline double _ndtr(double a) noexcept nogil:
    """The standard normal distribution function (cephes' ndtr, as scipy)."""
    cdef double x = a * SQRT1_2, z = fabs(x), y
    if z < SQRT1_2:
        return 0.5 + 0.5 * erf(x)
    y = 0.5 * erfc(z)
    return 1.0 - y if x > 0 else y


cdef inline void _link(int link, double eta, double* mu, double* mu_eta) noexcept nogil:
    """mu = g^{-1}(eta) and d mu / d eta with R's clamps (``family.LINKS``)."""
    cdef double e, c
    if link == 0:       # logit
        if eta < -THRESH:
            e = EPS
        elif eta > THRESH:
            e = 1.0 / EPS
        else:
            e = exp(eta)
        mu[0] = e / (1.0 + e)
        mu_eta[0] = EPS if fabs(eta) > THRESH else e / ((1.0 + e) * (1.0 + e))
    elif link == 1:     # probit
        c = fmin(fmax(eta, -PROBIT_THRESH), PROBIT_THRESH)
        mu[0] = _ndtr(c)
        mu_eta[0] = fmax(INV_SQRT_2PI * exp(-0.5 * eta * eta), EPS)
    elif link == 2:     # cloglog
        mu[0] = fmin(fmax(-expm1(-exp(eta)), EPS), 1.0 - EPS)
        e = fmin(eta, 700.0)
        mu_eta[0] = fmax(exp(e) * exp(-exp(e)), EPS)
    elif link == 3:     # cauchit
        c = fmin(fmax(eta, -CAUCHIT_THRESH), CAUCHIT_THRESH)
        mu[0] = 0.5 + atan(c) / M_PI
        mu_eta[0] = fmax(1.0 / (M_PI * (1.0 + eta * eta)), EPS)
    elif link == 4:     # log
        mu[0] = fmax(exp(eta), EPS)
        mu_eta[0] = mu[0]
    elif link == 5:     # identity
        mu[0] = eta
        mu_eta[0] = 1.0
    else:               # sqrt
        mu[0] = eta * eta
        mu_eta[0] = 2.0 * eta


cdef inline double _y_log_y(double y, double mu) noexcept nogil:
    return y * log(y / mu) if y > 0 else 0.0


cdef inline double _unit_deviance(int family, double y, double mu, double wt) noexcept nogil:
    """R's ``dev.resids`` of one row."""
    if family == 0:
        return 2.0 * wt * (_y_log_y(y, mu) + _y_log_y(1.0 - y, 1.0 - mu))
    if y > 0:
        return 2.0 * wt * (y * log(y / mu) - (y - mu))
    return 2.0 * mu * wt


cdef inline bint _valid(int family, double mu) noexcept nogil:
    if not (isfinite(mu) and mu > 0):
        return False
    return family != 0 or mu < 1.0


cdef void _add_zb(double[::1] out, list refs, list z, list b, list unit):
    """out += Z Lambda u: row r gets sum_t z_t[r, :] . b_t[refs_t[r], :]."""
    cdef Py_ssize_t n = out.shape[0], r, t, a, k
    cdef const cnp.int64_t[::1] rt
    cdef const double[:, ::1] zt
    cdef const double[:, ::1] bt
    cdef double s
    for t in range(len(refs)):
        rt = refs[t]
        zt = z[t]
        bt = b[t]
        k = zt.shape[1]
        if k == 1 and unit[t][0]:
            with nogil:
                for r in range(n):
                    out[r] += bt[rt[r], 0]
        else:
            with nogil:
                for r in range(n):
                    s = 0.0
                    for a in range(k):
                        s += zt[r, a] * bt[rt[r], a]
                    out[r] += s


def aic_sum(int family, const double[::1] y, const double[::1] m, const double[::1] mu,
            const double[::1] wt):
    """R's ``family$aic`` (-2 log-likelihood of the response, eq. 99) over rows:
    binomial -2 sum (wt/m) log dbinom(k; n, mu), n = round(m), k = round(m y) (m
    the trials, wt where none is given); poisson -2 sum wt log dpois(y; mu)."""
    cdef Py_ssize_t r, rows = y.shape[0]
    cdef double total = 0.0, n, k, lp, scale
    if m.shape[0] != rows or mu.shape[0] != rows or wt.shape[0] != rows:
        raise ValueError("y, m, mu and wt must have as many values")
    with nogil:
        for r in range(rows):
            if family == 1:   # poisson
                lp = -mu[r] - lgamma(y[r] + 1.0)
                if y[r] != 0.0:
                    lp = lp + y[r] * log(mu[r])
                total += wt[r] * lp
                continue
            if not m[r] > 0.0:
                continue
            scale = wt[r] / m[r]
            n = nearbyint(m[r])   # (R's round: half to even)
            k = nearbyint(m[r] * y[r])
            lp = lgamma(n + 1.0) - (lgamma(k + 1.0) + lgamma(n - k + 1.0))
            if k != 0.0:
                lp = lp + k * log(mu[r])
            if n - k != 0.0:
                lp = lp + (n - k) * log1p(-mu[r])
            total += scale * lp
    return -2.0 * total


def all_finite(const double[:] v):
    """Whether every value of v is finite."""
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        if not isfinite(v[i]):
            return False
    return True


def linear_predictor(double[::1] out, const double[::1] base, list refs, list z, list b,
                     list unit):
    """out = base + Z Lambda u: row r gets sum_t z_t[r, :] . b_t[refs_t[r], :]
    (b_t = Lambda_t u_t, nl x k); ``unit[t][a]`` marks columns of z that are all 1."""
    out[:] = base
    _add_zb(out, refs, z, b, unit)


cdef tuple _evaluate(int link, int family, const double[:, ::1] x, const double[::1] beta,
                     const double[::1] offset, list refs, list z, list b, list unit,
                     const double[::1] y, const double[::1] wt, double[::1] fixed,
                     double[::1] eta, double[::1] mu, double[::1] dev, double[::1] mu_eta):
    """A chunk of rows at (beta, b): fixed = o + X beta, eta = fixed + Z b (eqs. 2, 3,
    91), mu = g^{-1}(eta), d mu / d eta and the unit deviances (eq. 92).  Returns
    (their sum, compensated (Neumaier), and whether every mu is in the family's
    range)."""
    cdef Py_ssize_t n = eta.shape[0], p = x.shape[1], r, j
    cdef double s, total = 0.0, comp = 0.0, t, v
    cdef bint valid = True
    with nogil:
        for r in range(n):
            s = 0.0
            for j in range(p):
                s += x[r, j] * beta[j]
            fixed[r] = offset[r] + s
            eta[r] = fixed[r]
    _add_zb(eta, refs, z, b, unit)
    with nogil:
        for r in range(n):
            _link(link, eta[r], &mu[r], &mu_eta[r])
            valid = valid and _valid(family, mu[r])
            v = _unit_deviance(family, y[r], mu[r], wt[r])
            dev[r] = v
            t = total + v
            if fabs(total) >= fabs(v):
                comp += (total - t) + v
            else:
                comp += (v - t) + total
            total = t
    return total + comp, bool(valid)


cdef bint _working(int family, const double[::1] eta, const double[::1] mu,
                   const double[::1] mu_eta, const double[::1] y, const double[::1] wt,
                   const double[::1] fixed, double[::1] sqrt_w, double[::1] zwork):
    """sqrt of the working weights w = a mu'^2 / V(mu) and the working response
    z = eta - fixed + (y - mu) / mu' (eq. 93), at ``evaluate``'s mu and mu';
    returns whether all are finite."""
    cdef Py_ssize_t n = eta.shape[0], r
    cdef double m, me, var
    cdef bint finite = True
    with nogil:
        for r in range(n):
            m = mu[r]
            me = mu_eta[r]
            var = m * (1.0 - m) if family == 0 else m
            sqrt_w[r] = sqrt(wt[r] * me * me / var)
            zwork[r] = eta[r] - fixed[r] + (y[r] - m) / me
            finite = finite and isfinite(sqrt_w[r]) and isfinite(zwork[r])
    return finite


cdef inline double _mu_eta_slope(int link, double eta, double mu, double me) noexcept nogil:
    """d(mu')/d eta of the link's clamped d mu / d eta (0 where a clamp holds it)."""
    cdef double e
    if link == 0:       # logit
        return 0.0 if fabs(eta) > THRESH else me * (1.0 - 2.0 * mu)
    if link == 1:       # probit
        return 0.0 if me <= EPS else -eta * me
    if link == 2:       # cloglog
        if eta > 700.0 or me <= EPS:
            return 0.0
        return me * (1.0 - exp(eta))
    if link == 3:       # cauchit
        e = 1.0 + eta * eta
        return 0.0 if me <= EPS else -2.0 * eta / (M_PI * e * e)
    if link == 4:       # log
        return 0.0 if me <= EPS else me
    if link == 5:       # identity
        return 0.0
    return 2.0          # sqrt


cdef inline void _variance(int family, double mu, double* var, double* dvar) noexcept nogil:
    """V(mu) and V'(mu) of the family."""
    if family == 0:
        var[0] = mu * (1.0 - mu)
        dvar[0] = 1.0 - 2.0 * mu
    else:
        var[0] = mu
        dvar[0] = 1.0


cdef inline double _observed_unit(double resid, double me, double d2, double var,
                                  double dvar) noexcept nogil:
    """The observed information's weight of a row with a = 1:
    mu'^2 / V - (y - mu)(mu'' / V - mu'^2 V' / V^2)."""
    return me * me / var - resid * (d2 / var - me * me * dvar / (var * var))


cdef bint _working_observed(int link, int family, const double[::1] eta,
                            const double[::1] mu, const double[::1] mu_eta,
                            const double[::1] y, const double[::1] wt,
                            const double[::1] fixed, double[::1] sqrt_w,
                            double[::1] zwork):
    """A Newton step's working weights and response for a non-canonical link: eq. 93
    with the observed information, w = a [mu'^2 / V - (y - mu)(mu'' / V - mu'^2 V' / V^2)],
    sqrt(w) and z = eta - fixed + a (y - mu) mu' / (V w), at ``evaluate``'s mu and
    mu'.  Returns False
    where a weight of a row with a > 0 is not positive or not finite (the caller
    then takes the Fisher weights of ``working``)."""
    cdef Py_ssize_t n = eta.shape[0], r
    cdef double m, me, var, dvar, resid, w
    cdef bint ok = True
    with nogil:
        for r in range(n):
            m = mu[r]
            me = mu_eta[r]
            _variance(family, m, &var, &dvar)
            resid = y[r] - m
            w = wt[r] * _observed_unit(resid, me, _mu_eta_slope(link, eta[r], m, me), var, dvar)
            if not isfinite(w) or (wt[r] > 0 and not w > 0):
                ok = False
                break
            if w > 0:
                sqrt_w[r] = sqrt(w)
                zwork[r] = eta[r] - fixed[r] + wt[r] * resid * me / var / w
            else:
                sqrt_w[r] = 0.0
                zwork[r] = eta[r] - fixed[r]
            if not isfinite(zwork[r]):
                ok = False
                break
    return ok


# ------------------------------------------------------------ a chunk bound to its workspace

cdef class RowPass:
    """One chunk of rows bound to its workspace's buffers (``glmm.rows.Workspace``):
    each step of a PIRLS pass over it (eqs. 91-93) is one call.

    ``views``: the workspace's (eta, mu, dev, sqrt_w, zwork, fixed, mu_eta) for the
    chunk; ``xy``: its [X y] buffers for a u-only system (m x 1) and a joint one
    (m x (p + 1)); ``scaled``: per term, a buffer shaped as z.
    """

    cdef int link, family
    cdef const double[:, ::1] x
    cdef const double[::1] y, wt, offset
    cdef list refs, z, unit, scaled
    cdef double[::1] eta, mu, dev, sqrt_w, zwork, fixed, mu_eta
    cdef const double[:, ::1] x_none
    cdef double[:, ::1] xy_u, xy_joint

    def __init__(self, int link, int family, x, y, wt, offset, list refs, list z, list unit,
                 tuple views, xy_u, xy_joint, list scaled):
        self.link, self.family = link, family
        self.x_none = np.empty((x.shape[0], 0))
        self.x, self.y, self.wt, self.offset = x, y, wt, offset
        self.refs, self.z, self.unit = refs, z, unit
        self.eta, self.mu, self.dev, self.sqrt_w, self.zwork, self.fixed, self.mu_eta = views
        self.xy_u, self.xy_joint, self.scaled = xy_u, xy_joint, scaled

    def evaluate(self, const double[::1] beta, list b):
        """fixed = o + X beta, eta = fixed + Z b (eqs. 2, 3, 91), mu = g^{-1}(eta),
        d mu / d eta and the unit deviances (eq. 92) into the workspace.  Returns
        (their sum, compensated (Neumaier), and whether every mu is in the
        family's range)."""
        return _evaluate(self.link, self.family, self.x, beta, self.offset, self.refs, self.z,
                         b, self.unit, self.y, self.wt, self.fixed, self.eta, self.mu,
                         self.dev, self.mu_eta)

    def working(self, bint joint, bint newton):
        """sqrt of the working weights and the working response (eq. 93) at the
        evaluated eta: with ``newton`` the observed information's where all of
        them are positive, else Fisher's; the response net of the offset
        (``joint``: beta in the system, eq. 95) or of o + X beta.  Returns
        (whether the observed information's were used, whether all are finite)."""
        cdef bint observed
        cdef bint finite = self._working_rows(joint, newton, &observed)
        return observed, finite

    cdef bint _working_rows(self, bint joint, bint newton, bint* observed):
        """``working`` with ``observed`` through a pointer; returns whether all are finite."""
        cdef const double[::1] base = self.offset if joint else self.fixed
        observed[0] = newton and _working_observed(
            self.link, self.family, self.eta, self.mu, self.mu_eta, self.y, self.wt, base,
            self.sqrt_w, self.zwork)
        return observed[0] or _working(self.family, self.eta, self.mu, self.mu_eta, self.y,
                                       self.wt, base, self.sqrt_w, self.zwork)

    cdef bint _pass_rows(self, const double[::1] beta, list b, bint joint, bint newton,
                         double[:, ::1] acc, const cnp.int64_t[:, ::1] plan, list patterns,
                         double* dsum, bint* observed, bint* finite) except? False:
        """``evaluate``; with ``acc`` (A's accumulator) and a valid mu, ``working`` and
        the weighted cross-products of [Z X z] (X where ``joint``) added to ``acc``
        by ``_crossprod.add_rows`` with ``plan`` (eq. 12).  The sum of the unit
        deviances, whether the observed information's weights were used and whether
        the working values are finite go through the pointers; returns whether every
        mu is in range."""
        cdef bint valid
        dsum[0], valid = _evaluate(self.link, self.family, self.x, beta, self.offset, self.refs,
                                   self.z, b, self.unit, self.y, self.wt, self.fixed, self.eta,
                                   self.mu, self.dev, self.mu_eta)
        observed[0], finite[0] = newton, True
        if not valid:
            return valid
        finite[0] = self._working_rows(joint, newton, observed)
        if not finite[0]:
            observed[0] = False
            return True
        missing = add_rows(plan, patterns, acc, self.refs, self.z,
                           self.x if joint else self.x_none, self.zwork, self.sqrt_w, True,
                           self.xy_joint if joint else self.xy_u, self.scaled)
        if missing:
            raise ValueError(f"{missing} rows have level pairs outside the sparsity "
                             f"pattern of A's sparse blocks")
        return True


cdef bint _pass_chunks(list passes, const double[::1] beta, list b, bint joint, bint newton,
                       double[:, ::1] acc, const cnp.int64_t[:, ::1] plan, list patterns,
                       double* dsum, bint* observed, bint* finite) except? False:
    """A pass over the chunks of ``passes`` (``RowPass``) with A re-formed in ``acc``:
    the sum of the unit deviances, whether the observed information's weights were
    used and whether all working values are finite through the pointers; returns
    whether every mu is in range.  Stops at the first chunk off the range (sum NaN)
    or with a working value that is not finite."""
    cdef RowPass rp
    cdef double d
    cdef bint obs
    dsum[0], observed[0], finite[0] = 0.0, newton, True
    for rp in passes:
        if not rp._pass_rows(beta, b, joint, newton, acc, plan, patterns, &d, &obs, finite):
            dsum[0], observed[0], finite[0] = NAN, False, True
            return False
        dsum[0] += d
        if not finite[0]:
            observed[0] = False
            return True
        observed[0] = observed[0] and obs
    return True


def pass_chunks(list passes, const double[::1] beta, list b, bint joint, bint newton,
                double[:, ::1] acc, const cnp.int64_t[:, ::1] plan, list patterns):
    """A PIRLS pass over the chunks of ``passes`` (``RowPass``), A re-formed in ``acc``
    (eq. 12): (sum of the unit deviances, whether every mu is in range, whether the
    observed information's weights were used, whether the working values are finite)."""
    cdef double dsum
    cdef bint observed, finite
    cdef bint valid = _pass_chunks(passes, beta, b, joint, newton, acc, plan, patterns, &dsum,
                                   &observed, &finite)
    return dsum, valid, observed, finite


# ------------------------------------------------------------ PIRLS's iterations

cdef enum:
    C_MAX_ITER = 100       # PIRLS iterations (lme4's maxit)
    C_MAX_HALVINGS = 20    # step-halvings per iteration (lme4's maxstephalfit)
# Converged when no coordinate of u (and beta) moves by more than this.  For the
# canonical links PIRLS is Newton's method, and for the others too where the
# observed information's weights are positive: after a step of 1e-7 the error
# is of order 1e-14.  Fisher scoring converges linearly: a tighter bound.
cdef double C_TOL_U = 1e-7
cdef double C_STEP_CHECK = 1e-3   # steps longer than this must decrease pdev (shorter
#                                   ones are Newton's or Fisher scoring's close to the mode)
MAX_ITER, MAX_HALVINGS, TOL_U, STEP_CHECK = C_MAX_ITER, C_MAX_HALVINGS, C_TOL_U, C_STEP_CHECK
TOL_U_FISHER = 1e-10

# how ``PirlsLoop.run`` ended
RUN_DONE, RUN_FACTOR, RUN_HALVINGS, RUN_MAX_ITER, RUN_START, RUN_WORKING = range(6)


cdef class PirlsLoop:
    """PIRLS on one factor (eqs. 94, 95): the passes over the rows that re-form its A
    at the working weights (eq. 93), its Cholesky factor at theta (eq. 15), the
    solves for beta and u (eqs. 21, 22), the step-halvings and the stopping rule,
    all in compiled code.

    The rows of one partition in this process pass by their ``RowPass`` (``bind``);
    rows in several partitions (threads, a cluster) by a Python function
    ``pass_fn(beta, b, acc, joint, newton)`` with ``pass_chunks``' results.
    The factor keeps where its A was last formed (beta, b = Lambda u, the sum of
    the unit deviances, whether the observed information's weights were used):
    a run at the same beta starts there without a pass.
    """

    cdef BlockedFactor core
    cdef double[::1] a
    cdef double[:, ::1] acc_dd, acc_plain
    cdef object acc_dd_arr, acc_plain_arr, patterns, pass_fn
    cdef const cnp.int64_t[:, ::1] plan
    cdef list passes
    cdef readonly bint plain            # the accumulator of the last pass was plain double
    cdef readonly Py_ssize_t n_terms, q, p
    cdef cnp.int64_t[::1] uoff, nl, k
    cdef double[::1] lam                # each term's k x k lambda, row-major, at lam_off[t]
    cdef object lam_arr
    cdef cnp.int64_t[::1] lam_off
    cdef readonly Py_ssize_t n_theta
    # where A was formed
    cdef readonly bint at_valid, at_observed
    cdef readonly double at_dsum
    cdef double[::1] at_beta, at_b
    # the iterate and its buffers (the model's beta: p_model values)
    cdef readonly object u_arr, beta_arr, b_arr
    cdef double[::1] u, beta, u_new, beta_new, bflat, rhs
    cdef list b_terms
    cdef readonly int info, iterations
    cdef readonly double dsum, pdev
    cdef readonly Py_ssize_t n_passes   # passes over the rows so far
    # A summed in plain double before the mode (double-double at it)
    cdef public bint plain_iterations

    def __init__(self, BlockedFactor core, double[::1] a, acc_dd, acc_plain, plan, list patterns,
                 Py_ssize_t p_model, nl, k, bint plain_iterations=True):
        cdef Py_ssize_t t, q = 0
        self.plain_iterations = plain_iterations
        self.core, self.a = core, a
        self.acc_dd_arr, self.acc_plain_arr = acc_dd, acc_plain
        self.acc_dd, self.acc_plain = acc_dd, acc_plain
        self.plan, self.patterns = plan, patterns
        self.n_terms = len(nl)
        self.p = core.p1 - 1
        self.nl = np.ascontiguousarray(nl, dtype=np.int64)
        self.k = np.ascontiguousarray(k, dtype=np.int64)
        self.uoff = np.zeros(self.n_terms + 1, dtype=np.int64)
        self.lam_off = np.zeros(self.n_terms + 1, dtype=np.int64)
        for t in range(self.n_terms):
            self.uoff[t + 1] = self.uoff[t] + self.nl[t] * self.k[t]
            self.lam_off[t + 1] = self.lam_off[t] + self.k[t] * self.k[t]
        self.q = q = self.uoff[self.n_terms]
        self.lam_arr = np.zeros(max(self.lam_off[self.n_terms], 1))
        self.lam = self.lam_arr
        self.n_theta = sum(self.k[t] * (self.k[t] + 1) // 2 for t in range(self.n_terms))
        self.u_arr, self.beta_arr = np.zeros(q), np.zeros(p_model)
        self.u, self.u_new = self.u_arr, np.zeros(q)
        self.beta, self.beta_new = self.beta_arr, np.zeros(p_model)
        self.at_beta, self.at_b = np.zeros(p_model), np.zeros(q)
        self.b_arr = np.zeros(q)
        self.bflat = self.b_arr
        self.b_terms = [self.b_arr[self.uoff[t]:self.uoff[t + 1]].reshape(self.nl[t], self.k[t])
                        for t in range(self.n_terms)]
        self.rhs = np.zeros(core.p1)
        self.passes = None
        self.pass_fn = None

    def bind(self, list passes=None, pass_fn=None):
        """The rows' passes: ``RowPass`` objects of one partition, or ``pass_fn``; the
        point of the last pass forgotten (the rows may hold a new response)."""
        self.passes, self.pass_fn = passes, pass_fn
        self.at_valid = False

    # ------------------------------------------------------------ the factor
    cdef object _reset(self, bint plain):
        """A new A's accumulator, zeroed (plain double, or double-double summed and
        rounded once); the point of the last pass forgotten."""
        cdef Py_ssize_t i, n = self.a.shape[0]
        self.plain = plain
        self.at_valid = False
        if plain:
            for i in range(n):
                self.acc_plain[i, 0] = 0.0
            return self.acc_plain_arr
        for i in range(n):
            self.acc_dd[i, 0] = 0.0
            self.acc_dd[i, 1] = 0.0
        return self.acc_dd_arr

    cdef void _form_a(self) noexcept nogil:
        cdef Py_ssize_t i, n = self.a.shape[0]
        if self.plain:
            for i in range(n):
                self.a[i] = self.acc_plain[i, 0]
        else:
            for i in range(n):
                self.a[i] = self.acc_dd[i, 0] + self.acc_dd[i, 1]

    def form_a(self):
        """A from its accumulator (rounded once where summed in double-double)."""
        self._form_a()

    cdef int _update(self, const double* theta) except? -1:
        cdef int info
        self._form_a()
        with nogil:
            info = self.core._update(theta)
        self.core.last_info = info
        if info == INTERRUPTED:
            raise_pending()
        return info

    def update(self, const double[::1] theta_internal):
        """A from its accumulator, factored at theta (internal order); LAPACK's info
        (also ``info``)."""
        self.info = self._update(&theta_internal[0] if theta_internal.shape[0] else NULL)
        return self.info

    # ------------------------------------------------------------ a pass
    cdef void _set_theta(self, const double* ti) noexcept nogil:
        """Each term's lambda (row-major at lam_off[t]) from theta in internal order:
        its lower triangle column by column (eq. 7)."""
        cdef Py_ssize_t t, i, j, kt, base, pos = 0
        for t in range(self.n_terms):
            kt = self.k[t]
            base = self.lam_off[t]
            for j in range(kt):
                for i in range(j):
                    self.lam[base + i * kt + j] = 0.0
                for i in range(j, kt):
                    self.lam[base + i * kt + j] = ti[pos]
                    pos += 1

    cdef void _set_theta_of(self, const double[::1] theta_internal) except *:
        if theta_internal.shape[0] != self.n_theta:
            raise ValueError(f"theta must have {self.n_theta} values, got "
                             f"{theta_internal.shape[0]}")
        if self.n_theta:
            self._set_theta(&theta_internal[0])

    def lambdas(self, const double[::1] theta_internal):
        """Each term's k x k lambda from theta in internal order (eq. 7), new arrays."""
        cdef Py_ssize_t t
        self._set_theta_of(theta_internal)
        return [self.lam_arr[self.lam_off[t]:self.lam_off[t + 1]].reshape(
            self.k[t], self.k[t]).copy() for t in range(self.n_terms)]

    cdef void _b_of(self, const double[::1] u) noexcept nogil:
        """b = Lambda u per term (b_t[l, i] = sum_j lambda_t[i, j] u_t[l, j])."""
        cdef Py_ssize_t t, l, i, j, kt, base
        cdef double s
        cdef const double* lam
        for t in range(self.n_terms):
            kt = self.k[t]
            lam = &self.lam[self.lam_off[t]]
            if kt == 1:
                for l in range(self.uoff[t], self.uoff[t + 1]):
                    self.bflat[l] = u[l] * lam[0]
                continue
            for l in range(self.nl[t]):
                base = self.uoff[t] + l * kt
                for i in range(kt):
                    s = 0.0
                    for j in range(i + 1):
                        s = s + lam[i * kt + j] * u[base + j]
                    self.bflat[base + i] = s

    def lambda_u(self, const double[::1] u, const double[::1] theta_internal):
        """b = Lambda u per term (internal order, arrays nl x k), new arrays."""
        cdef Py_ssize_t t
        self._set_theta_of(theta_internal)
        self._b_of(u)
        return [self.b_arr[self.uoff[t]:self.uoff[t + 1]].reshape(self.nl[t], self.k[t]).copy()
                for t in range(self.n_terms)]

    cdef int _pass(self, const double[::1] beta, const double[::1] u, bint joint, bint newton,
                   bint plain, double* dsum, bint* valid, bint* observed) except -1:
        """A pass at (beta, u): A re-formed at its working weights (eq. 93).  Returns
        0, or RUN_WORKING where a working weight or response is not finite."""
        cdef Py_ssize_t i
        cdef bint fin
        self.n_passes += 1
        self._b_of(u)
        acc = self._reset(plain)
        if self.passes is not None:
            valid[0] = _pass_chunks(self.passes, beta, self.b_terms, joint, newton,
                                    self.acc_plain if plain else self.acc_dd, self.plan,
                                    self.patterns, dsum, observed, &fin)
        else:
            dsum[0], valid[0], observed[0], fin = self.pass_fn(
                np.asarray(beta), self.b_terms, acc, joint, newton)
        if not fin:
            return RUN_WORKING
        if valid[0]:
            self.at_valid, self.at_dsum, self.at_observed = True, dsum[0], observed[0]
            for i in range(beta.shape[0]):
                self.at_beta[i] = beta[i]
            for i in range(self.q):
                self.at_b[i] = self.bflat[i]
        return 0

    def pass_at(self, const double[::1] beta, const double[::1] u,
                const double[::1] theta_internal, bint joint, bint newton, bint plain):
        """One pass at (beta, u) with A re-formed (not factored): (the sum of the unit
        deviances, whether every mu is in range, whether the observed information's
        weights were used, whether the working weights and response are finite)."""
        cdef double dsum
        cdef bint valid, observed
        self._set_theta_of(theta_internal)
        finite = self._pass(beta, u, joint, newton, plain, &dsum, &valid, &observed) == 0
        return dsum, valid, observed, finite

    cdef bint _u_from_at(self, const double[::1] beta) noexcept nogil:
        """u with Lambda u = b of the point where A was formed, at its beta (then the
        factor's A is that of the start, eq. 93); False where there is none, beta
        differs or some lambda's diagonal is near 0 (lme4's singular tolerance, 1e-4)."""
        cdef Py_ssize_t t, l, i, j, kt, base
        cdef double s
        cdef const double* lam
        if not self.at_valid:
            return False
        for i in range(beta.shape[0]):
            if self.at_beta[i] != beta[i]:
                return False
        for t in range(self.n_terms):
            kt = self.k[t]
            for i in range(kt):
                if self.lam[self.lam_off[t] + i * kt + i] < 1e-4:
                    return False
        for t in range(self.n_terms):
            kt = self.k[t]
            lam = &self.lam[self.lam_off[t]]
            for l in range(self.nl[t]):
                base = self.uoff[t] + l * kt
                for i in range(kt):   # lambda_t u = b: forward substitution
                    s = self.at_b[base + i]
                    for j in range(i):
                        s = s - lam[i * kt + j] * self.u[base + j]
                    self.u[base + i] = s / lam[i * kt + i]
        return True

    # ------------------------------------------------------------ the iterations
    cdef double _max_step(self, bint joint) noexcept nogil:
        cdef Py_ssize_t i
        cdef double step = 0.0
        for i in range(self.q):
            step = fmax(step, fabs(self.u_new[i] - self.u[i]))
        if joint:
            for i in range(self.beta.shape[0]):
                step = fmax(step, fabs(self.beta_new[i] - self.beta[i]))
        return step

    cdef double _sqr(self, const double[::1] v) noexcept nogil:
        cdef Py_ssize_t i
        cdef double s = 0.0
        for i in range(v.shape[0]):
            s = s + v[i] * v[i]
        return s

    cdef void _solve(self, bint joint) noexcept nogil:
        """beta_new (joint: R_X^T beta = l_yX, eq. 21; else beta) and u_new (eq. 22)."""
        cdef Py_ssize_t i, p = self.p
        if joint:
            self.core._solve_beta(&self.beta_new[0])
        else:
            for i in range(self.beta.shape[0]):
                self.beta_new[i] = self.beta[i]
        for i in range(p):
            self.rhs[i] = self.beta_new[i]
        self.rhs[p] = -1.0
        self.core._back_solve(&self.rhs[0], &self.uoff[0], &self.u_new[0])

    def run(self, const double[::1] theta_internal, bint joint, bint newton,
            double tol, bint exact, bint settle, bint from_at):
        """PIRLS at theta from (``beta_arr``, ``u_arr``), which the caller sets (from
        the point where A was formed where ``from_at`` and that is at the same beta),
        to the mode (eqs. 94, 95; ``settle``: stop before the last step, at the point
        whose pass the factor holds).  Returns a ``RUN_*`` code; the mode is in
        ``u_arr``, ``beta_arr``, ``dsum`` and ``iterations``, the factor there."""
        self._set_theta_of(theta_internal)
        return self._run(&theta_internal[0] if theta_internal.shape[0] else NULL, joint,
                         newton, tol, exact, settle, from_at)

    cdef int _run(self, const double* ti, bint joint, bint newton, double tol, bint exact,
                  bint settle, bint from_at) except -1:
        cdef Py_ssize_t i, nb = self.beta.shape[0]
        cdef bint valid, observed, last, rounding
        cdef double dsum, dsum_new, pdev, pdev_new, step
        cdef int it = 0, halvings, code
        if from_at and self._u_from_at(self.beta):
            dsum, valid, observed = self.at_dsum, True, self.at_observed
        else:
            code = self._pass(self.beta, self.u, joint, newton, self.plain_iterations, &dsum,
                              &valid, &observed)
            if code:
                return code
            if not valid:   # a start off the family's range: from u = 0
                for i in range(self.q):
                    self.u[i] = 0.0
                code = self._pass(self.beta, self.u, joint, newton, self.plain_iterations, &dsum,
                                  &valid, &observed)
                if code:
                    return code
                if not valid:
                    return RUN_START
        self.info = self._update(ti)
        if self.info:
            return RUN_FACTOR
        pdev = dsum + self._sqr(self.u)
        while True:
            self._solve(joint)
            step = self._max_step(joint)
            # a step this short is the last: the factor at its point with the Fisher
            # weights, in double-double (eq. 96)
            last = step <= (C_TOL_U if observed else tol)
            if last and settle and not newton:   # (u, beta) and its factor as they are
                break
            code = self._pass(self.beta_new, self.u_new, joint, newton and not last,
                              self.plain_iterations and not (last and exact), &dsum_new, &valid,
                              &observed)
            if code:
                return code
            pdev_new = dsum_new + self._sqr(self.u_new)
            halvings = 0
            rounding = False
            if step > C_STEP_CHECK or not valid:
                # a long step (or one off the family's range) must decrease pdev (eq. 92)
                while not (valid and pdev_new <= pdev * (1 + 1e-15) + 1e-300):   # (and NaN)
                    if halvings == C_MAX_HALVINGS:
                        if valid and isfinite(pdev_new) \
                                and fabs(pdev_new - pdev) <= 1e-10 * fabs(pdev):
                            rounding = True   # rounding level at the mode
                            break
                        self.pdev = pdev
                        return RUN_HALVINGS
                    for i in range(self.q):
                        self.u_new[i] = 0.5 * (self.u[i] + self.u_new[i])
                    if joint:
                        for i in range(nb):
                            self.beta_new[i] = 0.5 * (self.beta[i] + self.beta_new[i])
                    code = self._pass(self.beta_new, self.u_new, joint, newton,
                                      self.plain_iterations, &dsum_new, &valid, &observed)
                    if code:
                        return code
                    pdev_new = dsum_new + self._sqr(self.u_new)
                    halvings += 1
            for i in range(self.q):
                self.u[i] = self.u_new[i]
            if joint:
                for i in range(nb):
                    self.beta[i] = self.beta_new[i]
            dsum, pdev = dsum_new, pdev_new
            it += 1
            # (a step shortened by halving is no sign of convergence)
            if rounding or (halvings == 0 and last):
                if rounding:   # the factor at the mode, as above
                    code = self._pass(self.beta, self.u, joint, False,
                                      self.plain_iterations and not exact, &dsum_new, &valid,
                                      &observed)
                    if code:
                        return code
                self.info = self._update(ti)
                if self.info:
                    return RUN_FACTOR
                break
            if it == C_MAX_ITER:
                self.iterations = it
                return RUN_MAX_ITER
            self.info = self._update(ti)
            if self.info:
                return RUN_FACTOR
        self.dsum, self.pdev, self.iterations = dsum, pdev, it
        return RUN_DONE

    def log_det(self):
        """log |L_Z|^2 of the current factor (eq. 16)."""
        cdef double ld_l2, ld_rx2, pwrss
        self.core._components(&ld_l2, &ld_rx2, &pwrss)
        return ld_l2


# ------------------------------------------------------------ the Laplace gradient's passes

cdef inline double _s_at(Py_ssize_t ia, Py_ssize_t ib, Py_ssize_t pa, Py_ssize_t pb,
                         Py_ssize_t level, Py_ssize_t q1, Py_ssize_t k1, Py_ssize_t q2,
                         const double* s11, const double* s12,
                         const double* s22) noexcept nogil:
    """S[ia, ib] of the gradient's inverse (``laplace._Inverse``): the first term's
    diagonal blocks (by positions pa, pb within a level), S_12 and S_22."""
    if ia < q1:
        if ib < q1:
            return s11[(level * k1 + pa) * k1 + pb]
        return s12[ia * q2 + ib - q1]
    if ib < q1:
        return s12[ib * q2 + ia - q1]
    return s22[(ia - q1) * q2 + ib - q1]


cdef inline double _h_of(Py_ssize_t r, const cnp.int64_t[:, ::1] cols, const double[:, ::1] gv,
                         Py_ssize_t q1, Py_ssize_t k1, Py_ssize_t q2, const double* s11,
                         const double* s12, const double* s22) noexcept nogil:
    """h = g^T S g of row r (g: its G = Z Lambda values at its columns)."""
    cdef Py_ssize_t K = cols.shape[1], a, b, level = cols[r, 0] // k1
    cdef double h = 0.0, ga
    for a in range(K):
        ga = gv[r, a]
        h += ga * ga * _s_at(cols[r, a], cols[r, a], a, a, level, q1, k1, q2, s11, s12, s22)
        for b in range(a + 1, K):
            h += 2.0 * ga * gv[r, b] * _s_at(cols[r, a], cols[r, b], a, b, level, q1, k1,
                                             q2, s11, s12, s22)
    return h


def gradient_columns(list refs, list z, list lams, const cnp.int64_t[::1] q_off,
                     cnp.int64_t[:, ::1] cols, double[:, ::1] gv, double[:, ::1] zall):
    """Each row's random-effects columns (term t's k_t at q_off[t] + refs_t k_t, the
    terms side by side: m x K), its G = Z Lambda values there (eqs. 2, 3) and its z."""
    cdef Py_ssize_t n = cols.shape[0], t, r, a, c, k, koff = 0
    cdef const cnp.int64_t[::1] rt
    cdef const double[:, ::1] zt
    cdef const double[:, ::1] lam
    cdef double s
    for t in range(len(refs)):
        rt = refs[t]
        zt = z[t]
        lam = lams[t]
        k = zt.shape[1]
        with nogil:
            for r in range(n):
                for a in range(k):
                    cols[r, koff + a] = q_off[t] + rt[r] * k + a
                    zall[r, koff + a] = zt[r, a]
                    s = 0.0
                    for c in range(a, k):   # lambda is lower-triangular
                        s += zt[r, c] * lam[c, a]
                    gv[r, koff + a] = s
        koff += k


cdef inline void _gradient_weights(int link, int family, double y, double wt, double eta,
                                   double mu, double me, double* s, double* w,
                                   double* dw_unit, double* w_obs) noexcept nogil:
    """A row's terms of the Laplace gradient at ``evaluate``'s mu and mu' = ``me``:
    s = d d_i / d eta, the Fisher weight w = a mu'^2 / V, d w / d eta = a dw_unit,
    and the observed information's weight w_obs = (d^2 d_i / d eta^2) / 2; for the
    canonical links w_obs = w."""
    cdef double var, dvar, d2
    if (family == 0 and link == 0) or (family == 1 and link == 4):
        s[0] = -2.0 * wt * (y - mu)
        w[0] = wt * me
        dw_unit[0] = me * (1.0 - 2.0 * mu) if family == 0 else me
        w_obs[0] = w[0]
        return
    _variance(family, mu, &var, &dvar)
    d2 = _mu_eta_slope(link, eta, mu, me)
    s[0] = -2.0 * wt * (y - mu) * me / var
    w[0] = wt * me * me / var
    dw_unit[0] = 2.0 * me * d2 / var - me * me * me * dvar / (var * var)
    w_obs[0] = wt * _observed_unit(y - mu, me, d2, var, dvar)


def gradient_first(int link, int family, const double[::1] y, const double[::1] wt,
                   const double[::1] eta, const double[::1] mu, const double[::1] mu_eta,
                   const cnp.int64_t[:, ::1] cols, const double[:, ::1] gv, Py_ssize_t q1,
                   Py_ssize_t k1, cnp.ndarray s11, cnp.ndarray s12, cnp.ndarray s22,
                   double[::1] gtv):
    """The rows' G^T v into ``gtv``, v = h w' (``laplace.laplace_gradient``,
    w' = d w / d eta of the Fisher weights)."""
    cdef Py_ssize_t n = eta.shape[0], K = cols.shape[1], r, a
    cdef Py_ssize_t q2 = cnp.PyArray_DIM(s22, 0)
    cdef const double* p11 = <const double*>cnp.PyArray_DATA(s11)
    cdef const double* p12 = <const double*>cnp.PyArray_DATA(s12)
    cdef const double* p22 = <const double*>cnp.PyArray_DATA(s22)
    cdef double v, s, w, dw, w_obs
    with nogil:
        for r in range(n):
            _gradient_weights(link, family, y[r], wt[r], eta[r], mu[r], mu_eta[r], &s, &w, &dw,
                              &w_obs)
            v = _h_of(r, cols, gv, q1, k1, q2, p11, p12, p22) * wt[r] * dw
            for a in range(K):
                gtv[cols[r, a]] += gv[r, a] * v


def gradient_second(int link, int family, const double[::1] y, const double[::1] wt,
                    const double[::1] eta, const double[::1] mu, const double[::1] mu_eta,
                    const double[:, ::1] x, const cnp.int64_t[:, ::1] cols,
                    const double[:, ::1] gv,
                    const double[:, ::1] zall, Py_ssize_t q1, Py_ssize_t k1, cnp.ndarray s11,
                    cnp.ndarray s12, cnp.ndarray s22, const double[::1] rv,
                    const double[::1] u, const cnp.int64_t[::1] ent_z,
                    const cnp.int64_t[::1] ent_col, double[::1] g_theta,
                    double[::1] grad_beta):
    """The rows' sums of the gradient in theta (entry m: z's column ``ent_z[m]`` and
    lambda's column ``ent_col[m]``, positions in the rows' columns) and in beta,
    with e = s + v - w_obs G r (``laplace.laplace_gradient``)."""
    cdef Py_ssize_t n = eta.shape[0], K = cols.shape[1], p = x.shape[1], r, a, j, mm, col, cc
    cdef Py_ssize_t n_ent = ent_z.shape[0], level
    cdef Py_ssize_t q2 = cnp.PyArray_DIM(s22, 0)
    cdef const double* p11 = <const double*>cnp.PyArray_DATA(s11)
    cdef const double* p12 = <const double*>cnp.PyArray_DATA(s12)
    cdef const double* p22 = <const double*>cnp.PyArray_DATA(s22)
    cdef double v, w, s, dw, w_obs, gr, e, zr, sg
    with nogil:
        for r in range(n):
            _gradient_weights(link, family, y[r], wt[r], eta[r], mu[r], mu_eta[r], &s, &w, &dw,
                              &w_obs)
            v = _h_of(r, cols, gv, q1, k1, q2, p11, p12, p22) * wt[r] * dw
            gr = 0.0
            for a in range(K):
                gr += gv[r, a] * rv[cols[r, a]]
            e = s + v - w_obs * gr
            for j in range(p):
                grad_beta[j] += x[r, j] * e
            level = cols[r, 0] // k1
            for mm in range(n_ent):
                zr = zall[r, ent_z[mm]]
                cc = ent_col[mm]
                col = cols[r, cc]
                sg = 0.0
                for a in range(K):
                    sg += gv[r, a] * _s_at(cols[r, a], col, a, cc, level, q1, k1, q2,
                                           p11, p12, p22)
                g_theta[mm] += zr * (e * u[col] - 0.5 * s * rv[col] + 2.0 * w * sg)


# ------------------------------------------------------------ adaptive quadrature's level sums

def agq_sums(int link, int family, const cnp.int64_t[::1] refs, const double[::1] z,
             const double[:, ::1] x, const double[::1] y, const double[::1] wt,
             const double[::1] eta, const double[::1] mu, const double[::1] mu_eta,
             const double[::1] dev, double lam,
             const double[:, ::1] shift, double[::1] c0, double[:, ::1] ck,
             bint gradient=False, double[:, ::1] s_x=None, double[::1] s_z=None,
             double[::1] w_z2=None, double[:, ::1] w_zx=None, double[:, ::1] w1_z2x=None,
             double[::1] w1_z3=None, double[:, :, ::1] t_x=None, double[:, ::1] t_z=None):
    """A chunk's level sums for adaptive quadrature (eq. 101, one scalar term: row r
    in level refs[r] with z[r]): the unit deviances at the mode (``dev``) into c0
    and at each node's eta + z lam shift[k, level] into ck[k]; with ``gradient``
    (a canonical link, eq. 101a) also, with s = d d_i / d eta, w the working
    weight and w' = d w / d eta at the mode, the sums of s z, s x, w z^2, w z x,
    w' z^2 x and w' z^3, and of s z and s x at each node."""
    cdef Py_ssize_t n = eta.shape[0], nk = shift.shape[0], p = x.shape[1], r, k, j, level
    cdef double zr, s, w, w1, ek, mk, mek, sk
    with nogil:
        for r in range(n):
            level = refs[r]
            zr = z[r]
            c0[level] += dev[r]
            if gradient:
                s = -2.0 * wt[r] * (y[r] - mu[r])
                w = wt[r] * mu_eta[r]
                w1 = w * (1.0 - 2.0 * mu[r]) if family == 0 else w
                s_z[level] += s * zr
                w_z2[level] += w * zr * zr
                w1_z3[level] += w1 * zr * zr * zr
                for j in range(p):
                    s_x[level, j] += s * x[r, j]
                    w_zx[level, j] += w * zr * x[r, j]
                    w1_z2x[level, j] += w1 * zr * zr * x[r, j]
            for k in range(nk):
                ek = eta[r] + zr * lam * shift[k, level]
                _link(link, ek, &mk, &mek)
                ck[k, level] += _unit_deviance(family, y[r], mk, wt[r])
                if gradient:
                    sk = -2.0 * wt[r] * (y[r] - mk)
                    t_z[k, level] += sk * zr
                    for j in range(p):
                        t_x[k, level, j] += sk * x[r, j]


def agq_combine(const double[::1] c0, const double[:, ::1] ck, const double[::1] u,
                const double[:, ::1] shift, const double[::1] zk, const double[::1] wk,
                double w0, double ld_l2, bint gradient=False, double theta=0.0,
                const double[::1] l2=None, const double[::1] sd=None,
                const double[:, ::1] s_x=None, const double[::1] s_z=None,
                const double[::1] w_z2=None, const double[:, ::1] w_zx=None,
                const double[:, ::1] w1_z2x=None, const double[::1] w1_z3=None,
                const double[:, :, ::1] t_x=None, const double[:, ::1] t_z=None,
                double[::1] grad=None):
    """-2 log L of eq. 101 from ``agq_sums``' level sums: c0 and ck (K x nl) at the
    mode u and the nodes u + shift[k] (nodes zk off 0 with weights wk, w0 the
    weight at 0), log|L_Z|^2 ``ld_l2``; None where a level's integral is not
    finite and positive.  With ``gradient``, also its gradient in (theta, beta)
    (eq. 101a, a canonical link) into ``grad``, from the level's L_jj^2 (l2),
    s_j = 1 / L_jj (sd) and the gradient's sums of ``agq_sums``."""
    cdef Py_ssize_t nl = c0.shape[0], nk = ck.shape[0], p = 0, j, k, i, n
    cdef double total = 0.0, logs = 0.0, cj, ukj, mult, e, th = theta, q
    cdef double slope, fac
    cdef bint failed = False
    cdef double[::1] du, dl2, dsd, ej
    if gradient:
        p = s_x.shape[1]
        n = p + 1
        du, dl2, dsd, ej = np.empty(n), np.empty(n), np.empty(n), np.empty(nk)
        grad[:] = 0.0
    with nogil:
        for j in range(nl):
            cj = c0[j] + u[j] * u[j]
            total += cj
            mult = w0
            for k in range(nk):
                ukj = u[j] + shift[k, j]
                e = exp(0.5 * zk[k] * zk[k] - 0.5 * (ck[k, j] + ukj * ukj - cj))
                mult += wk[k] * e
                if gradient:
                    ej[k] = e
            if not (isfinite(mult) and mult > 0.0):
                failed = True
                break
            logs += log(mult)
            if not gradient:
                continue
            # the mode's and the scale's derivatives (eq. 101a): [theta, beta...]
            du[0] = -(0.5 * s_z[j] + th * u[j] * w_z2[j]) / l2[j]
            for i in range(p):
                du[i + 1] = -th * w_zx[j, i] / l2[j]
            dl2[0] = 2.0 * th * w_z2[j] + th * th * w1_z3[j] * (u[j] + th * du[0])
            for i in range(p):
                dl2[i + 1] = th * th * (w1_z2x[j, i] + th * w1_z3[j] * du[i + 1])
            for i in range(n):
                dsd[i] = -0.5 * sd[j] * sd[j] * sd[j] * dl2[i]
                grad[i] += dl2[i] / l2[j]
            # d c_j(u~) / d phi
            grad[0] += s_z[j] * u[j]
            for i in range(p):
                grad[i + 1] += s_x[j, i]
            for k in range(nk):
                ukj = u[j] + shift[k, j]
                fac = wk[k] * ej[k] / mult
                slope = 2.0 * ukj + th * t_z[k, j]
                grad[0] += fac * (t_z[k, j] * ukj + slope * (du[0] + zk[k] * dsd[0])
                                  - s_z[j] * u[j])
                for i in range(p):
                    grad[i + 1] += fac * (t_x[k, j, i] + slope * (du[i + 1] + zk[k] * dsd[i + 1])
                                          - s_x[j, i])
    if failed:
        return None
    return total + ld_l2 - 2.0 * logs
