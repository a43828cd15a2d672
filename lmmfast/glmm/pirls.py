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

import functools
import math
import operator
from dataclasses import dataclass

import numpy as np

from .. import _pirls
from .._pirls import (MAX_ITER, RUN_FACTOR, RUN_HALVINGS, RUN_MAX_ITER, RUN_START,
                      RUN_WORKING, TOL_U, TOL_U_FISHER)
from ..errors import FitError
from ..family import Family
from .predictor import Design, Factor
from .rows import (Kernel, LocalRows, aic_partition, extreme_partition, merge_start,
                   pass_partition, start_partition, values_partition)

__all__ = ["Mode", "Pirls"]

# Stage 1's search (``exact=False``, a canonical link): Newton's error after a step
# of 1e-5 is of order 1e-10, below what BOBYQA's tolerance there resolves (a
# looser bound where that tolerance is loose: ``stages.stage1_tolerances``).
TOL_U_SEARCH = 1e-5
# a further thread's buffers for the passes over rows, at most this part of the rows'
# values (y, X, Z's codes and values): 200,000 rows in 13 chunks keep one thread
ROW_WORKER_MEMORY = 1 / 8


@dataclass
class Mode:
    """The conditional mode at (theta, beta) and what is read off the factor there."""

    theta: np.ndarray       # lme4 order
    beta: np.ndarray
    u: np.ndarray           # spherical modes, internal order
    dev_sum: float          # sum of the unit deviances d_i at the mode
    ld_l2: float            # log |L_Z|^2 at the weights of u~
    iterations: int
    sqr_u: float            # ||u~||^2

    @property
    def pdev(self) -> float:
        return self.dev_sum + self.sqr_u


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
        # each theta entry's z column and lambda column (lambda's lower triangle column
        # by column, eq. 7) as positions among a row's random-effects columns, the
        # terms' k side by side (the Laplace gradient's)
        tril = [(np.array([i for j in range(k) for i in range(j, k)], dtype=np.intp),
                 np.array([j for j in range(k) for i in range(j, k)], dtype=np.intp))
                for k in self.k]
        koff = np.cumsum([0] + self.k[:-1])
        self.theta_columns = tuple(
            np.concatenate([o + tr[i] for o, tr in zip(koff, tril)]).astype(np.int64)
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
        """The family's aic at the mode, summed chunk by chunk of rows (from the
        workspace where it holds the mode's rows)."""
        at_mode = self.rows_at_mode(mode)
        return self.run_rows(aic_partition, self.kern, self.family, self.rows.trials_given,
                             mode.beta, None if at_mode else self.b(mode.u, mode.theta),
                             at_mode, merge=operator.add)

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
        if n > 1:
            p1, k = self.x.shape[1] + 1, sum(self.k)
            extra = 8 * max(c.size for c in chunks) * (7 + p1 + 4 * k) \
                + 16 * self.factor(True).layout.n_a
            values = 8 * self.rows.nobs * (p1 + 2 * k)
            while n > 1 and extra * (n - 1) > ROW_WORKER_MEMORY * values:
                n -= 1
        if n != self.rows.workers:
            self.rows.set_workers(n)
            for factor in self._factors.values():
                self._bind(factor)

    def blas_threads(self):
        """Context for a fit's BLAS: nothing changed where every call is small (the
        joint factor's L and a chunk's rows [X z] below ``threads.BLAS_SERIAL_ENTRIES``:
        the BLAS runs them on one thread by itself); else one thread (its calls on
        rows, m x p, are too small to gain from threads and lose much on a busy
        machine), unless the joint factor has dense blocks as large as the LMM
        gives threads (``threads.choose``)."""
        from .. import threads
        layout = self.factor(True).layout
        if isinstance(self.rows, LocalRows) and layout.n_l < threads.BLAS_SERIAL_ENTRIES \
                and max(c.size for c in self.chunks) * layout.p1 < threads.BLAS_SERIAL_ENTRIES:
            return threads.blas_threads(layout)
        if threads.dense_entries(layout) < threads.BLAS_MIN_ENTRIES:
            return threads.limit_blas(1)
        return threads.limit_blas(threads.choose(layout, None))

    def factor(self, with_x: bool | str) -> Factor:
        """The factor with X's columns (True), without (False), or the u-only one at
        the observed information's weights ("observed"), made on first need."""
        f = self._factors.get(with_x)
        if f is None:
            f = self._factors[with_x] = Factor(self.design, with_x is True)
            self._bind(f)
        return f

    def factors(self) -> dict:
        """The factors made so far (``factor``), by key."""
        return dict(self._factors)

    def adopt(self, factors: dict) -> None:
        """Take another Pirls's factors of the same X and Z (a refit to a new
        response), their passes bound to these rows."""
        self._factors = dict(factors)
        for factor in self._factors.values():
            self._bind(factor)

    def _bind(self, factor: Factor) -> None:
        """The factor's compiled PIRLS passes over the rows: by the chunks' ``RowPass``
        where the rows are one partition in this process, else by the partitions'
        ``rows.pass_partition`` (threads, a cluster)."""
        rows = self.rows
        if isinstance(rows, LocalRows) and rows.workers == 1:
            factor.loop.bind(passes=[rows.ws.bound(c, self.kern) for c in rows.chunks])
        else:
            factor.loop.bind(pass_fn=functools.partial(self._pass_partitions, factor))

    def _pass_partitions(self, factor: Factor, beta, b, acc, joint: bool, newton: bool):
        return self.rows.run_into(acc, factor.work, pass_partition, factor.layout, self.kern,
                                  beta, b, joint, newton)

    # ------------------------------------------------------------ pieces
    def theta_internal(self, theta: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(theta, dtype=np.float64)[self.perm])

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Each term's k x k lambda (internal order) from theta in lme4's order (eq. 7,
        ``_pirls.PirlsLoop.lambdas``); the last theta's are kept."""
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if key == self._lams_key:
            return self._lams
        out = self._loop().lambdas(self.theta_internal(theta))
        for lam in out:
            lam.flags.writeable = False
        self._lams_key, self._lams = key, out
        return out

    def z_lambda_u(self, u: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Z Lambda u (eqs. 2, 3): each row's effects of its own levels."""
        out = np.empty(self.rows.nobs)
        b = self.b(u, theta)
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
                                self.b(mode.u, mode.theta), what, name=what)

    def run_rows(self, fn, *args, merge):
        """``fn(chunks, workspace, *args)`` over every partition of the rows, the
        results combined by ``merge`` (``rows.LocalRows.run``)."""
        self._ws_mode = None
        return self.rows.run(fn, *args, merge=merge)

    def rows_at_mode(self, mode: Mode) -> bool:
        """Whether the workspace holds ``mode``'s rows (one chunk, PIRLS's last pass)."""
        return self._ws_mode is mode

    def b(self, u: np.ndarray, theta: np.ndarray) -> list[np.ndarray]:
        """b = Lambda u per term (internal order; theta in lme4's), arrays (nl, k):
        PIRLS's own (``_pirls.PirlsLoop.lambda_u``)."""
        return self._loop().lambda_u(np.ascontiguousarray(u, dtype=np.float64),
                                     self.theta_internal(theta))

    def _loop(self):
        """A compiled PIRLS loop of this design (any factor's: theta, lambda and
        b = Lambda u are the same for all)."""
        for f in self._factors.values():
            return f.loop
        return self.factor(True).loop

    # ------------------------------------------------------------ a pass over the rows
    def _pass(self, beta, u, theta, factor: Factor, joint: bool = False, newton: bool = False,
              plain: bool = True):
        """One pass over the rows at (beta, u) (eqs. 91-93, ``_pirls.PirlsLoop.pass_at``)
        with the factor's A re-formed at the working weights there (it is factored by
        ``Factor.update``): (the sum of the unit deviances, whether every mu is in
        the family's range, whether the observed information's weights were used)."""
        self._ws_mode = None
        dsum, valid, observed, finite = factor.loop.pass_at(
            np.ascontiguousarray(beta, dtype=np.float64), np.ascontiguousarray(u),
            self.theta_internal(theta), joint, newton, plain)
        if not finite:
            raise self._failure(RUN_WORKING, factor.loop, self._theta_now)
        return dsum, valid, observed

    def _update(self, factor: Factor, ti: np.ndarray, theta: np.ndarray) -> None:
        if factor.update(ti) != 0:
            raise self._failure(RUN_FACTOR, factor.loop, theta)

    def factor_at(self, mode: Mode, joint: bool) -> Factor:
        """The factor (with beta's columns where ``joint``) at the Fisher weights of
        ``mode``, summed in double-double (eqs. 95, 96)."""
        factor = self.factor(joint)
        self._theta_now = mode.theta
        self._pass(mode.beta, mode.u, mode.theta, factor, joint=joint, plain=False)
        self._update(factor, self.theta_internal(mode.theta), mode.theta)
        return factor

    def observed_factor(self, mode: Mode) -> Factor | None:
        """A u-only factor whose A (not factored) holds the cross-products at the
        observed information's weights of ``mode`` (a non-canonical link's Hessian
        of eq. 92 in u, eq. 98a); None where a weight is not positive there."""
        factor = self.factor("observed")
        self._theta_now = mode.theta
        _, valid, observed = self._pass(mode.beta, mode.u, mode.theta, factor, newton=True)
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

    def _separation_note(self, beta, u, theta) -> str:
        """A hint where fitted probabilities are numerically 0 or 1 (or means 0)."""
        binomial = self.family.name == "binomial"
        n = self.run_rows(extreme_partition, self.kern, binomial, beta, self.b(u, theta),
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
        """PIRLS at theta from beta (and u0), compiled (``_pirls.PirlsLoop.run``): by
        default from the last mode's b = Lambda u (the same eta, so the factor's A
        is already that of the start, eq. 93; for a canonical link, whose first
        step it is), else from the last u."""
        if theta.shape != (self.n_theta,) or not _pirls.all_finite(theta):
            raise FitError(f"theta must be {self.n_theta} finite values, got {theta}")
        if not _pirls.all_finite(beta):
            raise FitError(f"beta must be finite, got {beta}")
        self._theta_now = theta
        factor = self.factor(joint)
        loop = factor.loop
        newton = self.family.link.name != self.family.canonical
        loop.beta_arr[:] = beta
        u = self.last_u if u0 is None else np.asarray(u0, dtype=np.float64)
        loop.u_arr[:] = u if _pirls.all_finite(u) else 0.0
        self._ws_mode = None
        code = loop.run(self.theta_internal(theta), joint, newton,
                        self.tol_u if exact or newton else search_tol, exact, settle,
                        u0 is None and not newton)
        if code:
            raise self._failure(code, loop, theta)
        if not math.isfinite(loop.dsum):
            raise FitError(f"PIRLS: non-finite unit deviances at theta = {theta.tolist()}, "
                           f"beta = {loop.beta_arr.tolist()}")
        u, beta = loop.u_arr.copy(), loop.beta_arr.copy()
        self.last_u = u   # (modes are not modified in place)
        if joint:
            self.last_beta = beta
        mode = Mode(theta.copy(), beta, u, loop.dsum, loop.log_det(), loop.iterations,
                    float(u @ u))
        self._ws_mode = mode if self.rows.single else None   # (the last pass was at it)
        return mode

    def _failure(self, code: int, loop, theta) -> FitError:
        """The error of a PIRLS run that ended with ``code`` (``_pirls.RUN_*``)."""
        at = f"theta = {theta.tolist()}"
        where = f"{at}, beta = {loop.beta_arr.tolist()}"
        message = {
            RUN_WORKING: f"non-finite working weights or response at {at}",
            RUN_START: f"the means at the start (u = 0) leave the {self.family.name} "
                       f"family's range at {where}",
            RUN_FACTOR: f"the Cholesky factor failed (info {loop.info}) at {at}",
            RUN_HALVINGS: f"step-halvings failed to reduce the penalised deviance "
                          f"({loop.pdev!r}) at {where}",
        }.get(code)
        if message is not None:
            return FitError(f"PIRLS: {message}")
        assert code == RUN_MAX_ITER
        return FitError(f"PIRLS did not converge in {MAX_ITER} iterations at {where}"
                        + self._separation_note(loop.beta_arr.copy(), loop.u_arr.copy(), theta))
