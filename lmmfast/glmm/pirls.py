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

Each iteration is one pass over the rows, chunk by chunk (``rows``): at the
new (beta, u) it forms eta, mu and the unit deviances, and the working
weights and response whose cross-products re-form the factor, in compiled
loops (``_pirls``).  The cross-products of the iterations before the mode
are summed in plain double, those at the mode (the factor the deviance is
read from) in double-double.  A ``Mode`` keeps (theta, beta, u) and sums;
its per-row values are formed again where asked (``Pirls.row_values``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from .. import _pirls
from ..errors import FitError
from ..family import Family
from .predictor import Design, Factor
from .rows import (Kernel, LocalRows, aic_partition, extreme_partition, merge_pass,
                   merge_start, pass_partition, start_partition, values_partition)

__all__ = ["Mode", "Pirls"]

MAX_ITER = 100         # PIRLS iterations (lme4's maxit)
MAX_HALVINGS = 20      # step-halvings per iteration (lme4's maxstephalfit)
# Converged when no coordinate of u (and beta) moves by more than this.  For the
# canonical links PIRLS is Newton's method, and for the others too where the
# observed information's weights are positive: after a step of 1e-7 the error
# is of order 1e-14.  Fisher scoring converges linearly: a tighter bound.
TOL_U = 1e-7
# Stage 1's search (``exact=False``, a canonical link): Newton's error after a step
# of 1e-5 is of order 1e-10, below what BOBYQA's tolerance there resolves (a
# looser bound where that tolerance is loose: ``stages.stage1_tolerances``).
TOL_U_SEARCH = 1e-5
TOL_U_FISHER = 1e-10
STEP_CHECK = 1e-3      # steps longer than this must decrease pdev (shorter ones are Newton's
#                        or Fisher scoring's steps close to the mode)
# a further thread's buffers for the passes over rows, at most this part of the rows'
# values (y, X, Z's codes and values): 200,000 rows in 13 chunks keep one thread
ROW_WORKER_MEMORY = 1 / 8
PLAIN_ITERATIONS = True   # A summed in plain double before the mode (double-double at it)


@dataclass
class Mode:
    """The conditional mode at (theta, beta) and what is read off the factor there."""

    theta: np.ndarray       # lme4 order
    beta: np.ndarray
    u: np.ndarray           # spherical modes, internal order
    dev_sum: float          # sum of the unit deviances d_i at the mode
    ld_l2: float            # log |L_Z|^2 at the weights of u~
    iterations: int

    @property
    def sqr_u(self) -> float:
        return float(self.u @ self.u)

    @property
    def pdev(self) -> float:
        return self.dev_sum + self.sqr_u


def _max_abs(v: np.ndarray) -> float:
    """max |v_i| (0 for an empty v)."""
    return float(np.abs(v).max()) if v.size else 0.0


def family_has_no_constant(family: Family) -> bool:
    """Families whose aic is not the deviance plus a constant of the data."""
    return family.name not in ("binomial", "poisson")


class Pirls:
    """PIRLS for one model: the design in chunks of rows, the family and the
    compiled factors."""

    def __init__(self, design: Design, family: Family, rows=None):
        self.design = design
        self.family = family
        self.x = design.x
        inner = design.inner
        self.k = [r.k for r in inner]
        self.nl = [r.nlevels for r in inner]
        self.q_off = np.concatenate([[0], np.cumsum([r.q for r in inner])]).astype(np.intp)
        self.q_off64 = self.q_off.astype(np.int64)
        # the rows: in this process (``LocalRows``) or on a cluster (``glmm.dask``)
        self.rows = LocalRows(design) if rows is None else rows
        self.kern = Kernel(_pirls.LINK_CODES[family.link.name], _pirls.FAMILY_CODES[family.name],
                           [[name == "(Intercept)" for name in r.cnames] for r in inner])
        # lambda's lower triangle column by column (eq. 7)
        self._tril = [(np.array([i for j in range(k) for i in range(j, k)], dtype=np.intp),
                       np.array([j for j in range(k) for i in range(j, k)], dtype=np.intp))
                      for k in self.k]
        # each theta entry's z column and lambda column as positions among a row's
        # random-effects columns, the terms' k side by side (the Laplace gradient's)
        koff = np.cumsum([0] + self.k[:-1])
        self.theta_columns = tuple(
            np.concatenate([o + tr[i] for o, tr in zip(koff, self._tril)]).astype(np.int64)
            for i in (0, 1))
        self.perm = design.theta_perm()
        self.n_theta = len(self.perm)
        self._factors: dict[bool | str, Factor] = {}   # ("observed": observed_factor's)
        self.last_u: np.ndarray = np.zeros(int(self.q_off[-1]))
        self.last_beta: np.ndarray | None = None
        self._aic_const: float | None = None
        self.tol_u = TOL_U if family.link.name == family.canonical else TOL_U_FISHER
        self._anchor: np.ndarray | None = None
        self._ws_mode: Mode | None = None   # the mode whose rows the workspace holds
        self._lams_key, self._lams = b"", []   # (``lambdas``' last theta)

    @property
    def chunks(self):
        """The rows in chunks (rows held in this process)."""
        return self.rows.chunks

    def aic(self, mode: Mode, exact: bool = False) -> float:
        """The family's aic term a(y, mu) at the mode: sum of unit deviances plus
        a constant of the data (eq. 99)."""
        if exact or not self.rows.whole or family_has_no_constant(self.family):
            return self._family_aic(mode)
        if self._aic_const is None:
            self._aic_const = self._family_aic(mode) - mode.dev_sum
        return mode.dev_sum + self._aic_const

    def _family_aic(self, mode: Mode) -> float:
        """The family's aic at the mode, summed chunk by chunk of rows."""
        return self.run_rows(aic_partition, self.kern, self.family, self.rows.trials_given,
                             mode.beta, self.b(mode.u, self.lambdas(mode.theta)),
                             merge=operator.add)

    def set_row_workers(self, n_threads: int | None = None) -> None:
        """Threads for the passes over rows held in this process: one a partition of
        consecutive chunks (``threads.row_workers``, ``rows.LocalRows.set_workers``),
        and only while the further partitions' buffers (a chunk's workspace and row
        buffers, an accumulator of A) stay within ``ROW_WORKER_MEMORY`` of the rows'
        values, as ``design.crossprod.default_workers``'s."""
        if not isinstance(self.rows, LocalRows):
            return
        from .. import threads
        chunks = self.rows.chunks
        n = threads.row_workers(len(chunks), n_threads)
        if n == 1:
            self.rows.set_workers(1)
            return
        p1, k = self.x.shape[1] + 1, sum(self.k)
        extra = 8 * max(c.size for c in chunks) * (7 + p1 + 4 * k) \
            + 16 * self.factor(True).layout.n_a
        values = 8 * self.rows.nobs * (p1 + 2 * k)
        while n > 1 and extra * (n - 1) > ROW_WORKER_MEMORY * values:
            n -= 1
        self.rows.set_workers(n)

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
        """Each term's k x k lambda (internal order) from theta in lme4's order (eq. 7);
        the last theta's are kept (every pass of a PIRLS run takes them)."""
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if key == self._lams_key:
            return self._lams
        ti = self.theta_internal(theta)
        out, pos = [], 0
        for k, (rows, cols) in zip(self.k, self._tril):
            lam = np.zeros((k, k))
            lam[rows, cols] = ti[pos:pos + len(rows)]
            pos += len(rows)
            lam.flags.writeable = False
            out.append(lam)
        self._lams_key, self._lams = key, out
        return out

    def z_lambda_u(self, u: np.ndarray, lams: list[np.ndarray]) -> np.ndarray:
        """Z Lambda u (eqs. 2, 3): each row's effects of its own levels."""
        out = np.empty(self.rows.nobs)
        b = self.b(u, lams)
        for c in self.chunks:
            _pirls.linear_predictor(out[c.rows], np.zeros(c.size), c.refs, c.z, b,
                                    self.kern.unit)
        return out

    def row_values(self, mode: Mode, what: str):
        """One value per row at ``mode`` (``rows.values_partition``: eta, mu, the unit
        deviances or a type of residual): an array, or a Dask Series for rows on a
        cluster."""
        self._ws_mode = None
        return self.rows.series(values_partition, self.kern, self.family, mode.beta,
                                self.b(mode.u, self.lambdas(mode.theta)), what, name=what)

    def run_rows(self, fn, *args, merge):
        """``fn(chunks, workspace, *args)`` over every partition of the rows, the
        results combined by ``merge`` (``rows.LocalRows.run``)."""
        self._ws_mode = None
        return self.rows.run(fn, *args, merge=merge)

    def rows_at_mode(self, mode: Mode) -> bool:
        """Whether the workspace holds ``mode``'s rows (one chunk, PIRLS's last pass)."""
        return self._ws_mode is mode

    def b(self, u: np.ndarray, lams: list[np.ndarray]) -> list[np.ndarray]:
        """b = Lambda u per term (internal order), arrays (nl, k)."""
        q_off = self.q_off
        return [(u[q_off[t]:q_off[t + 1]] * lam[0, 0]).reshape(-1, 1) if len(lam) == 1 else
                np.ascontiguousarray(u[q_off[t]:q_off[t + 1]].reshape(self.nl[t], self.k[t])
                                     @ lam.T)
                for t, lam in enumerate(lams)]

    # ------------------------------------------------------------ a pass over the rows
    def _pass(self, beta, u, lams, factor: Factor | None = None, joint: bool = False,
              newton: bool = False, plain: bool = True):
        """One pass over the rows at (beta, u) (eqs. 91-93, ``rows.pass_partition``):
        (the sum of the unit deviances, whether every mu is in the family's range,
        whether the observed information's weights were used).  With ``factor``,
        its A is re-formed at the working weights there (it is factored by
        ``Factor.update``)."""
        b = self.b(u, lams)
        self._ws_mode = None
        args = (self.kern, beta, b, joint, newton)
        if factor is None:
            dsum, valid, observed, _ = self.run_rows(pass_partition, None, None, *args,
                                                     merge=merge_pass)
            return dsum, valid, observed
        acc = factor.reset(plain and PLAIN_ITERATIONS)
        dsum, valid, observed, finite = self.rows.run_into(acc, factor.work, pass_partition,
                                                           factor.layout, *args)
        if not finite:
            raise FitError(f"PIRLS: non-finite working weights or response at theta = "
                           f"{self._theta_now.tolist()}")
        if valid:   # where A was formed: (beta, b, sum of unit deviances, observed)
            factor.at = (beta.copy(), b, dsum, observed)
        return dsum, valid, observed

    def _u_of(self, at, beta: np.ndarray, lams: list[np.ndarray]) -> np.ndarray | None:
        """u with Lambda u = b of the point ``at`` where the factor's A was formed, at
        its beta; None where there is none, beta differs or some Lambda's diagonal is
        near 0 (lme4's singular tolerance, 1e-4)."""
        if at is None or at[0].tolist() != beta.tolist() \
                or any(np.diag(lam).min(initial=1.0) < 1e-4 for lam in lams):
            return None
        return np.concatenate([(b / lam[0, 0] if len(lam) == 1 else
                                np.linalg.solve(lam, b.T).T).ravel()
                               for lam, b in zip(lams, at[1])])

    def _update(self, factor: Factor, ti: np.ndarray, theta: np.ndarray) -> None:
        info = factor.update(ti)
        if info != 0:
            raise FitError(f"PIRLS: the Cholesky factor failed (info {info}) at theta = "
                           f"{theta.tolist()}")

    def factor_at(self, mode: Mode, joint: bool) -> Factor:
        """The factor (with beta's columns where ``joint``) at the Fisher weights of
        ``mode``, summed in double-double (eqs. 95, 96)."""
        factor = self.factor(joint)
        self._theta_now = mode.theta
        self._pass(mode.beta, mode.u, self.lambdas(mode.theta), factor, joint=joint,
                   plain=False)
        self._update(factor, self.theta_internal(mode.theta), mode.theta)
        return factor

    def observed_factor(self, mode: Mode) -> Factor | None:
        """A u-only factor whose A (not factored) holds the cross-products at the
        observed information's weights of ``mode`` (a non-canonical link's Hessian
        of eq. 92 in u, eq. 98a); None where a weight is not positive there."""
        factor = self._factors.get("observed")
        if factor is None:
            factor = self._factors["observed"] = Factor(self.design, False)
        self._theta_now = mode.theta
        _, valid, observed = self._pass(mode.beta, mode.u, self.lambdas(mode.theta), factor,
                                        newton=True)
        if not (valid and observed):
            return None
        factor.form_a()
        self._ws_mode = mode if self.rows.single else None   # (the pass was at it)
        return factor

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
        self.factor_at(mode, joint=True)
        self._anchor = mode.theta.copy()

    def mode_joint(self, theta, beta0=None, u0=None, exact: bool = True,
                   search_tol: float = TOL_U_SEARCH, settle: bool = False) -> Mode:
        """u~ and beta together at theta (nAGQ = 0, eq. 95); with ``exact=False``
        (stage 1's search before stage 2) the factor at the mode is summed in
        plain double too, and a canonical link's PIRLS stops at steps of
        ``search_tol``: with ``settle``, at the point before that step, whose
        pass the factor already holds (``stages.Stage1``)."""
        self._anchor = None   # (the joint factor is about to change)
        if beta0 is None:
            beta0 = self.last_beta if self.last_beta is not None else self.glm_start()
        return self._run(np.asarray(theta, dtype=np.float64), np.asarray(beta0, dtype=np.float64),
                         u0, joint=True, exact=exact, search_tol=search_tol,
                         settle=settle and not exact)

    def glm_start(self) -> np.ndarray:
        """beta of one weighted least-squares step from R's mustart (lme4's first PIRLS
        iteration starts from eta = linkfun(mustart)), by a QR over chunks of rows."""
        rows = self.run_rows(start_partition, self.family, merge=merge_start)
        beta, *_ = np.linalg.lstsq(rows[:, :-1], rows[:, -1], rcond=None)
        return beta

    def _separation_note(self, beta, u, lams) -> str:
        """A hint where fitted probabilities are numerically 0 or 1 (or means 0)."""
        binomial = self.family.name == "binomial"
        n = self.run_rows(extreme_partition, self.kern, binomial, beta, self.b(u, lams),
                          merge=operator.add)
        if not n:
            return ""
        if binomial:
            return (f": {n} fitted probabilities are numerically 0 or 1, the fixed "
                    "effects separate the response (perfect or quasi-complete separation)")
        return (f": {n} fitted means are numerically 0, the fixed "
                "effects drive them to zero (all-zero counts in a group of the design)")

    def _run(self, theta, beta, u0, joint: bool, exact: bool = True,
             search_tol: float = TOL_U_SEARCH, settle: bool = False) -> Mode:
        if theta.shape != (self.n_theta,) or not np.isfinite(theta).all():
            raise FitError(f"theta must be {self.n_theta} finite values, got {theta}")
        if not np.isfinite(beta).all():
            raise FitError(f"beta must be finite, got {beta}")
        self._theta_now = theta
        beta = np.ascontiguousarray(beta, dtype=np.float64)
        factor = self.factor(joint)
        ti = self.theta_internal(theta)
        lams = self.lambdas(theta)
        newton = self.family.link.name != self.family.canonical
        tol = self.tol_u if exact or newton else search_tol
        # by default from the last mode's b = Lambda u (the same eta, so the factor's
        # A is already that of the start, eq. 93; for a canonical link, whose first
        # step it is), else from the last u
        u = self._u_of(factor.at, beta, lams) if u0 is None and not newton else None
        if u is not None:
            dsum, valid, observed = factor.at[2], True, factor.at[3]
        else:
            u = self.last_u.copy() if u0 is None else np.array(u0, dtype=np.float64)
            if not np.isfinite(u).all():
                u = np.zeros_like(u)
            dsum, valid, observed = self._pass(beta, u, lams, factor, joint, newton)
        if not valid:   # a start off the family's range: from u = 0
            u = np.zeros_like(u)
            dsum, valid, observed = self._pass(beta, u, lams, factor, joint, newton)
            if not valid:
                raise FitError(f"PIRLS: the means at the start (u = 0) leave the "
                               f"{self.family.name} family's range at theta = "
                               f"{theta.tolist()}, beta = {beta.tolist()}")
        self._update(factor, ti, theta)
        pdev = dsum + float(u @ u)
        it = 0
        while True:
            beta_new = factor.beta() if joint else beta
            u_new = factor.u(beta_new if joint else np.zeros(0))
            step = _max_abs(u_new - u)
            if joint:
                step = max(step, _max_abs(beta_new - beta))
            # a step this short is the last: the factor at its point with the Fisher
            # weights, in double-double (eq. 96)
            last = step <= (TOL_U if observed else tol)
            if last and settle and not newton:   # (u, beta) and its factor as they are
                break
            dsum_new, valid, observed = self._pass(beta_new, u_new, lams, factor, joint,
                                                   newton and not last, plain=not (last and exact))
            pdev_new = dsum_new + float(u_new @ u_new)
            halvings = 0
            rounding = False
            if step > STEP_CHECK or not valid:
                # a long step (or one off the family's range) must decrease pdev (eq. 92)
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
                    dsum_new, valid, observed = self._pass(beta_new, u_new, lams, factor, joint,
                                                           newton)
                    pdev_new = dsum_new + float(u_new @ u_new)
                    halvings += 1
                step = _max_abs(u_new - u)
                if joint:
                    step = max(step, _max_abs(beta_new - beta))
            u, dsum, pdev = u_new, dsum_new, pdev_new
            if joint:
                beta = beta_new
            it += 1
            # (a step shortened by halving is no sign of convergence)
            if rounding or (halvings == 0 and last):
                if rounding:   # the factor at the mode, as above
                    self._pass(beta, u, lams, factor, joint, plain=not exact)
                self._update(factor, ti, theta)
                break
            if it == MAX_ITER:
                raise FitError(f"PIRLS did not converge in {MAX_ITER} iterations at theta = "
                               f"{theta.tolist()}, beta = {beta.tolist()}"
                               + self._separation_note(beta, u, lams))
            self._update(factor, ti, theta)
        if not np.isfinite(dsum):
            raise FitError(f"PIRLS: non-finite unit deviances at theta = {theta.tolist()}, "
                           f"beta = {beta.tolist()}")
        self.last_u = u.copy()
        if joint:
            self.last_beta = beta.copy()
        mode = Mode(theta.copy(), beta.copy(), u, dsum, factor.log_det_lz(), it)
        self._ws_mode = mode if self.rows.single else None   # (the last pass was at it)
        return mode
