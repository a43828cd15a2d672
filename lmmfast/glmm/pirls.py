"""Penalised iteratively re-weighted least squares for the conditional modes.

At given theta (and beta), the conditional mode u~ of the spherical random
effects minimises the penalised deviance (docs/theory.md, eq. 92)

    pdev(u) = sum_i d_i(y_i, mu_i) + ||u||^2,   eta = o + X beta + Z Lambda u.

Each iteration forms the working weights and response at the current eta
(eq. 93), re-forms the weighted cross-products and factors them in the
compiled core (``predictor.Factor``), and solves the penalised least-squares
problem for the new u (eq. 94; with beta too in the nAGQ = 0 stage, eq. 95),
halving a long step while the penalised deviance does not decrease.  For a
non-canonical link the iterations use the observed information (Newton
steps) where its weights are positive.  At the mode the factor is re-formed
once more with the Fisher weights, so that log|L_Z|^2 belongs to the weights
at u~ (eq. 96).

The passes over rows (eta, mu and the unit deviances, the working weights
and response) are compiled (``_pirls``); the cross-products of the
iterations before the mode are summed in plain double, those at the mode
(the factor the deviance is read from) in double-double.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _pirls
from ..errors import FitError
from ..family import Family
from .predictor import Design, Factor

__all__ = ["Mode", "Pirls"]

MAX_ITER = 100         # PIRLS iterations (lme4's maxit)
MAX_HALVINGS = 20      # step-halvings per iteration (lme4's maxstephalfit)
# Converged when no coordinate of u (and beta) moves by more than this.  For the
# canonical links PIRLS is Newton's method, and for the others too where the
# observed information's weights are positive: after a step of 1e-7 the error
# is of order 1e-14.  Fisher scoring converges linearly: a tighter bound.
TOL_U = 1e-7
# Stage 1's search (``exact=False``, a canonical link): Newton's error after a step
# of 1e-5 is of order 1e-10, below what BOBYQA's tolerance there resolves.
TOL_U_SEARCH = 1e-5
TOL_U_FISHER = 1e-10
STEP_CHECK = 1e-3      # steps longer than this must decrease pdev (shorter ones are Newton's
#                        or Fisher scoring's steps close to the mode)
TOL_SAME = 0.0         # a last step of exactly zero leaves the factor as it was
PLAIN_ITERATIONS = True   # A summed in plain double before the mode (double-double at it)


@dataclass
class Mode:
    """The conditional mode at (theta, beta) and what is read off the factor there."""

    theta: np.ndarray       # lme4 order
    beta: np.ndarray
    u: np.ndarray           # spherical modes, internal order
    eta: np.ndarray
    mu: np.ndarray
    dev_resid: np.ndarray   # unit deviances d_i
    ld_l2: float            # log |L_Z|^2 at the weights of u~
    iterations: int

    @property
    def sqr_u(self) -> float:
        return float(self.u @ self.u)

    @property
    def pdev(self) -> float:
        return float(self.dev_resid.sum()) + self.sqr_u


def family_has_no_constant(family: Family) -> bool:
    """Families whose aic is not the deviance plus a constant of the data."""
    return family.name not in ("binomial", "poisson")


class Pirls:
    """PIRLS for one model: the design, the family and the compiled factors."""

    def __init__(self, design: Design, family: Family):
        self.design = design
        self.family = family
        self.y = design.y
        self.wt = design.prior_weights
        self.offset = design.offset
        self.x = design.x
        inner = design.inner
        self.refs = [r.refs for r in inner]
        self.z = [r.z for r in inner]
        self.k = [r.k for r in inner]
        self.nl = [r.nlevels for r in inner]
        self.q_off = np.concatenate([[0], np.cumsum([r.q for r in inner])]).astype(np.intp)
        self._ones = [[bool((r.z[:, a] == 1.0).all()) for a in range(r.k)] for r in inner]
        self._link_code = _pirls.LINK_CODES[family.link.name]
        self._family_code = _pirls.FAMILY_CODES[family.name]
        self._z_c = [np.ascontiguousarray(z, dtype=np.float64) for z in self.z]
        self._refs_c = [np.ascontiguousarray(r, dtype=np.int64) for r in self.refs]
        self._sw = np.empty(len(self.y))
        self._zwork = np.empty(len(self.y))
        # lambda's lower triangle column by column (eq. 7)
        self._tril = [(np.array([i for j in range(k) for i in range(j, k)], dtype=np.intp),
                       np.array([j for j in range(k) for i in range(j, k)], dtype=np.intp))
                      for k in self.k]
        self.perm = design.theta_perm()
        self.n_theta = len(self.perm)
        self._factors: dict[bool, Factor] = {}
        self.last_u: np.ndarray = np.zeros(int(self.q_off[-1]))
        self.last_beta: np.ndarray | None = None
        self._aic_const: float | None = None
        self.tol_u = TOL_U if family.link.name == family.canonical else TOL_U_FISHER
        self._anchor: np.ndarray | None = None
        m = design.trials if (design.trials > 1).any() else self.wt
        self._whole = bool(np.all(np.abs(m * self.y - np.round(m * self.y)) <= 1e-9 * np.maximum(1.0, m)))

    def aic(self, mode: Mode, exact: bool = False) -> float:
        """The family's aic term a(y, mu) at the mode: sum of unit deviances plus
        a constant of the data (eq. 99)."""
        d = self.design
        if exact or not self._whole or family_has_no_constant(self.family):
            return self.family.aic(d.y, d.trials, mode.mu, d.prior_weights)
        if self._aic_const is None:
            self._aic_const = self.family.aic(d.y, d.trials, mode.mu, d.prior_weights) \
                - float(mode.dev_resid.sum())
        return float(mode.dev_resid.sum()) + self._aic_const

    def blas_count(self) -> int:
        """BLAS threads for a fit: one (its BLAS calls on rows, n x p, are too small
        to gain from threads and lose much on a busy machine), unless the joint
        factor has dense blocks as large as the LMM gives threads
        (``threads.choose``)."""
        from .. import threads
        layout = self.factor(True).layout
        if threads.dense_entries(layout) < threads.BLAS_MIN_ENTRIES:
            return 1
        return threads.choose(layout, None)

    def factor(self, with_x: bool) -> Factor:
        f = self._factors.get(with_x)
        if f is None:
            f = self._factors[with_x] = Factor(self.design, with_x)
        return f

    # ------------------------------------------------------------ pieces
    def theta_internal(self, theta: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(theta, dtype=np.float64)[self.perm])

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Each term's k x k lambda (internal order) from theta in lme4's order (eq. 7)."""
        ti = self.theta_internal(theta)
        out, pos = [], 0
        for k, (rows, cols) in zip(self.k, self._tril):
            lam = np.zeros((k, k))
            lam[rows, cols] = ti[pos:pos + len(rows)]
            pos += len(rows)
            out.append(lam)
        return out

    def z_lambda_u(self, u: np.ndarray, lams: list[np.ndarray]) -> np.ndarray:
        """Z Lambda u (eqs. 2, 3): each row's effects of its own levels."""
        return self.eta_at(np.zeros(len(self.y)), u, lams)

    def eta_at(self, fixed: np.ndarray, u: np.ndarray, lams: list[np.ndarray]) -> np.ndarray:
        """eta = fixed + Z Lambda u (eqs. 2, 3), in one compiled pass."""
        out = np.empty(len(self.y))
        _pirls.linear_predictor(out, np.ascontiguousarray(fixed, dtype=np.float64),
                                self._refs_c, self._z_c, self.b(u, lams), self._ones)
        return out

    def means(self, eta: np.ndarray):
        """mu at eta and whether every mu is in the family's range, compiled."""
        mu = np.empty(len(eta))
        return mu, _pirls.means(self._link_code, self._family_code, eta, mu)

    def deviances(self, mu: np.ndarray):
        """The unit deviances at mu and their sum (eq. 92), compiled."""
        dev = np.empty(len(mu))
        return dev, _pirls.deviances(self._family_code, self.y, mu, self.wt, dev)

    def ell(self, theta: np.ndarray):
        """Z and G = Z Lambda row by row (eqs. 2, 3): each row's columns of the
        random effects (internal order, n x sum k) and its values of Z and of G."""
        cols, zv, gv = [], [], []
        for t, lam in enumerate(self.lambdas(theta)):
            k = self.k[t]
            first = self.q_off[t] + self.refs[t] * k
            cols.append(first[:, None] + np.arange(k)[None, :])
            zv.append(self.z[t])
            gv.append(self.z[t] @ lam)
        return np.hstack(cols), np.hstack(zv), np.hstack(gv)

    def b(self, u: np.ndarray, lams: list[np.ndarray]) -> list[np.ndarray]:
        """b = Lambda u per term (internal order), arrays (nl, k)."""
        return [np.ascontiguousarray(
                    u[self.q_off[t]:self.q_off[t + 1]].reshape(self.nl[t], self.k[t]) @ lam.T)
                for t, lam in enumerate(lams)]

    def _working(self, eta: np.ndarray, mu: np.ndarray):
        """sqrt of the working weights and the working residual (eq. 93)."""
        fam = self.family
        mu_eta = fam.mu_eta(eta)
        w = self.wt * mu_eta * mu_eta / fam.variance(mu)
        return np.sqrt(w), (self.y - mu) / mu_eta

    # ------------------------------------------------------------ PIRLS
    def mode(self, theta, beta, u0: np.ndarray | None = None) -> Mode:
        """u~ at (theta, beta) (eq. 94), started at ``u0``; by default at the
        anchor's prediction (``anchor``) where theta is the anchor's, else at
        the last mode."""
        theta = np.asarray(theta, dtype=np.float64)
        beta = np.asarray(beta, dtype=np.float64)
        if u0 is None and self._anchor is not None and np.array_equal(theta, self._anchor):
            u0 = self.factor(True).u(beta)
        return self._run(theta, beta, u0, joint=False)

    def anchor(self, mode: Mode | None) -> None:
        """Predict the modes of nearby beta at the same theta from ``mode`` (None: stop).

        The joint factor of eq. 95 at the weights of ``mode``: its solution
        u(beta') = L_Z^{-T}(l_zZ - L_XZ^T beta') is one Newton step from
        ``mode`` towards the mode at beta', exact to second order in
        beta' - beta (eq. 96).  Central differences in beta then start PIRLS
        within ~1e-8 of the mode.
        """
        self._anchor = None
        if mode is None or self.x.shape[1] == 0:
            return
        factor = self.factor(True)
        fixed = self.offset + self.x @ mode.beta
        self._refactor(factor, mode.eta, mode.mu, fixed, True, self.theta_internal(mode.theta),
                       mode.theta)
        self._anchor = mode.theta.copy()

    def mode_joint(self, theta, beta0=None, u0=None, exact: bool = True) -> Mode:
        """u~ and beta together at theta (nAGQ = 0, eq. 95); with ``exact=False``
        (stage 1's search before stage 2) the factor at the mode is summed in
        plain double too, and a canonical link's PIRLS stops at steps of
        ``TOL_U_SEARCH``."""
        self._anchor = None   # (the joint factor is about to change)
        if beta0 is None:
            beta0 = self.last_beta if self.last_beta is not None else self.glm_start()
        return self._run(np.asarray(theta, dtype=np.float64), np.asarray(beta0, dtype=np.float64),
                         u0, joint=True, exact=exact)

    def glm_start(self) -> np.ndarray:
        """beta of one weighted least-squares step from R's mustart (lme4's first PIRLS
        iteration starts from eta = linkfun(mustart))."""
        fam = self.family
        mu = fam.mustart(self.y, self.wt)
        eta = fam.linkfun(mu)
        sw, r = self._working(eta, mu)
        zw = eta - self.offset + r
        xs = self.x * sw[:, None]
        beta, *_ = np.linalg.lstsq(xs, zw * sw, rcond=None)
        return beta

    def _separation_note(self, mu: np.ndarray) -> str:
        """A hint where fitted probabilities are numerically 0 or 1 (or means 0)."""
        tiny = 1e-8
        if self.family.name == "binomial":
            n = int(((mu < tiny) | (mu > 1 - tiny)).sum())
            if n:
                return (f": {n} fitted probabilities are numerically 0 or 1, the fixed "
                        "effects separate the response (perfect or quasi-complete separation)")
        elif (mu < tiny).any():
            return (f": {int((mu < tiny).sum())} fitted means are numerically 0, the fixed "
                    "effects drive them to zero (all-zero counts in a group of the design)")
        return ""

    def _refactor(self, factor: Factor, eta, mu, fixed, joint: bool, ti, theta,
                  newton: bool = False, plain: bool = False) -> bool:
        """Working weights and response at eta (eq. 93), A re-formed and factored
        (summed in plain double with ``plain``, else in double-double).

        With ``newton`` (a non-canonical link, before the mode), the observed
        information's weights where they are positive.  Returns whether they were used.
        """
        base = np.ascontiguousarray(self.offset if joint else fixed, dtype=np.float64)
        sw, zwork = self._sw, self._zwork
        observed = newton and _pirls.working_observed(self._link_code, self._family_code, eta,
                                                      self.y, self.wt, base, sw, zwork)
        finite = observed or _pirls.working(self._link_code, self._family_code, eta, self.y,
                                            self.wt, base, sw, zwork)
        if not finite:
            raise FitError(f"PIRLS: non-finite working weights or response at theta = "
                           f"{theta.tolist()}")
        info = factor.refactor(sw, zwork, ti, plain=plain and PLAIN_ITERATIONS)
        if info != 0:
            raise FitError(f"PIRLS: the Cholesky factor failed (info {info}) at theta = "
                           f"{theta.tolist()}")
        return observed

    def _run(self, theta, beta, u0, joint: bool, exact: bool = True) -> Mode:
        if theta.shape != (self.n_theta,) or not np.isfinite(theta).all():
            raise FitError(f"theta must be {self.n_theta} finite values, got {theta}")
        if not np.isfinite(beta).all():
            raise FitError(f"beta must be finite, got {beta}")
        factor = self.factor(joint)
        ti = self.theta_internal(theta)
        lams = self.lambdas(theta)
        u = self.last_u.copy() if u0 is None else np.array(u0, dtype=np.float64)
        if not np.isfinite(u).all():
            u = np.zeros_like(u)
        fixed = self.offset + self.x @ beta
        eta = self.eta_at(fixed, u, lams)
        mu, valid = self.means(eta)
        if not valid:   # a start off the family's range: from u = 0
            u = np.zeros_like(u)
            eta = fixed.copy()
            mu, valid = self.means(eta)
        dev = pdev = None   # computed where a step is checked (and at the mode)
        it = 0
        newton = self.family.link.name != self.family.canonical
        tol = self.tol_u if exact or newton else TOL_U_SEARCH
        observed = self._refactor(factor, eta, mu, fixed, joint, ti, theta, newton, plain=True)
        plain = True   # the factor's A was summed in plain double
        while True:
            beta_new = factor.beta() if joint else beta
            u_new = factor.u(beta_new if joint else np.zeros(0))
            fixed_new = self.offset + self.x @ beta_new if joint else fixed
            eta_new = self.eta_at(fixed_new, u_new, lams)
            mu_new, valid = self.means(eta_new)
            dev_new = pdev_new = None
            step = float(np.max(np.abs(u_new - u), initial=0.0))
            if joint:
                step = max(step, float(np.max(np.abs(beta_new - beta), initial=0.0)))
            halvings = 0
            rounding = False
            if step > STEP_CHECK or not valid:
                # a long step (or one off the family's range) must decrease pdev (eq. 92)
                if pdev is None:
                    dev, dsum = self.deviances(mu)
                    pdev = dsum + float(u @ u)
                dev_new, dsum = self.deviances(mu_new)
                pdev_new = dsum + float(u_new @ u_new)
                while not (valid and pdev_new <= pdev * (1 + 1e-15) + 1e-300):   # (and NaN)
                    if halvings == MAX_HALVINGS:
                        if valid and np.isfinite(pdev_new) \
                                and abs(pdev_new - pdev) <= 1e-10 * abs(pdev):
                            rounding = True   # rounding level at the mode
                            break
                        raise FitError(
                            f"PIRLS step-halvings failed to reduce the penalised deviance "
                            f"({pdev!r}) at theta = {theta.tolist()}, beta = {beta.tolist()}")
                    u_new = 0.5 * (u + u_new)
                    if joint:
                        beta_new = 0.5 * (beta + beta_new)
                        fixed_new = self.offset + self.x @ beta_new
                    eta_new = self.eta_at(fixed_new, u_new, lams)
                    mu_new, valid = self.means(eta_new)
                    dev_new, dsum = self.deviances(mu_new)
                    pdev_new = dsum + float(u_new @ u_new)
                    halvings += 1
                step = float(np.max(np.abs(u_new - u), initial=0.0))
                if joint:
                    step = max(step, float(np.max(np.abs(beta_new - beta), initial=0.0)))
            u, eta, mu, dev, pdev = u_new, eta_new, mu_new, dev_new, pdev_new
            if joint:
                beta, fixed = beta_new, fixed_new
            it += 1
            # (a step shortened by halving is no sign of convergence)
            if rounding or (halvings == 0 and step <= (TOL_U if observed else tol)):
                # the factor at the weights of the mode, in double-double (eq. 96)
                if step > TOL_SAME or observed or (plain and PLAIN_ITERATIONS and exact):
                    self._refactor(factor, eta, mu, fixed, joint, ti, theta, plain=not exact)
                break
            if it == MAX_ITER:
                raise FitError(f"PIRLS did not converge in {MAX_ITER} iterations at theta = "
                               f"{theta.tolist()}, beta = {beta.tolist()}"
                               + self._separation_note(mu))
            observed = self._refactor(factor, eta, mu, fixed, joint, ti, theta, newton,
                                      plain=True)
        if dev is None:
            dev = self.deviances(mu)[0]
        if not np.isfinite(dev).all():
            raise FitError(f"PIRLS: non-finite unit deviances at theta = {theta.tolist()}, "
                           f"beta = {beta.tolist()}")
        self.last_u = u.copy()
        if joint:
            self.last_beta = beta.copy()
        return Mode(theta.copy(), beta.copy(), u, eta, mu, dev, factor.log_det_lz(), it)
