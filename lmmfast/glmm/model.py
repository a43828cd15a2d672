"""The generalized linear mixed model: build, fit, and the results of the fit.

``GeneralizedLinearMixedModel(formula, data, family)`` builds the design and
PIRLS; ``fit()`` runs lme4's two stages (``stages``) and reads the results
at the optimum; ``glmer`` does both, with lme4's signature
(docs/theory.md, section "Generalized linear mixed models").
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..arguments import as_choice
from ..convergence import (Convergence, convergence_of, derivative_messages_of, passes,
                           within_check_limits)
from ..design.dask import SPLIT_EVERY, is_partitioned
from ..errors import ConvergenceWarning, DataError, FitError
from ..family import Family
from ..family import family as make_family
from ..formula import parse_formula
from ..summary import data_name, warn_if_singular
from . import stages
from .laplace import gradient_available, laplace_deviance, laplace_gradient
from .pirls import Mode, Pirls
from .predictor import build_design, condvar_blocks, varcorr
from .quadrature import agq_deviance, agq_gradient, check_agq
from .vcov import DELTA, GRADIENT_DELTA, fd_hessian, gradient_hessian, vcov_from_hessian

__all__ = ["DaskGeneralizedLinearMixedModel", "GeneralizedLinearMixedModel", "glmer"]

SINGULAR_TOL = 1e-4   # lme4's isSingular / getSingTol


def _as_nagq(n_agq) -> int:
    if isinstance(n_agq, (bool, np.bool_)) or not isinstance(n_agq, (int, np.integer)):
        raise DataError(f"nAGQ must be an integer from 0 to 100, got {n_agq!r}")
    n_agq = int(n_agq)
    if not 0 <= n_agq <= 100:
        raise DataError(f"nAGQ must be an integer from 0 to 100, got {n_agq}")
    return n_agq


class GeneralizedLinearMixedModel:
    """A GLMM ``g(E[y | b]) = X beta + Z b + o``, ``b ~ N(0, Lambda Lambda^T)`` (eq. 91).

    Parameters
    ----------
    formula : str
        lme4 formula; the response may be ``cbind(successes, failures)``,
        a proportion (with ``weights=`` trials), 0/1, a bool, a two-level
        factor (first level = failure) or counts.
    data : pandas.DataFrame (or a dict, polars or pyarrow table)
        Never modified.
    family : str, (name, link) or lmmfast.family.Family
        ``"binomial"`` (logit, probit, cloglog, cauchit) or ``"poisson"``
        (log, identity, sqrt).
    nAGQ : int
        0: theta only, beta inside PIRLS; 1: Laplace; > 1: adaptive
        Gauss-Hermite quadrature (one scalar term only).
    weights, offset : str or array-like, optional
        Prior weights and an offset (also ``offset(...)`` in the formula).
    """

    def __new__(cls, formula=None, data=None, *args, **kwargs):
        """A Dask DataFrame or Parquet data gives a ``DaskGeneralizedLinearMixedModel``."""
        if cls is GeneralizedLinearMixedModel and data is not None and is_partitioned(data):
            cls = DaskGeneralizedLinearMixedModel
        return super().__new__(cls)

    def __init__(self, formula: str, data, family="binomial", nAGQ: int = 1,
                 weights=None, offset=None):
        self.family: Family = make_family(family)
        self.n_agq = _as_nagq(nAGQ)
        self._setup(formula, data, build_design(formula, data, self.family.name, weights,
                                                offset), None, weights, offset)

    def _setup(self, formula: str, data, design, rows, weights, offset) -> None:
        """The model of ``design`` (its rows: ``rows``, default in this process)."""
        self.design = d = design
        for r in d.remats:
            if r.nlevels < 2:
                raise DataError(f"grouping factor {r.group!r} of random term {r.source} has "
                                f"{r.nlevels} level: grouping factors must have > 1 sampled level")
        if d.nobs <= d.p:
            raise DataError(f"{d.nobs} observations cannot identify {d.p} fixed effects")
        self.pirls = Pirls(d, self.family, rows)
        check_agq(self.pirls, self.n_agq)
        self.formula = formula
        self.data_name = data_name(data)
        self.has_weights = weights is not None
        self.weights_column = weights if isinstance(weights, str) else None
        self.offset_given = offset is not None
        self.offset_column = offset if isinstance(offset, str) else None
        self._has_offset = offset is not None or bool(parse_formula(formula).offsets)
        self.fixef_names = list(d.fixef_names)
        self.theta_names = [n for r in d.remats for n in r.theta_names()]
        self.n_theta = len(self.theta_names)
        self.theta_lower = np.concatenate([r.theta_lower() for r in d.remats])
        self.nobs = d.nobs
        self._mode: Mode | None = None
        self.n_evals = 0
        self.stage_evals: tuple[int, int] = (0, 0)
        self._vcov: np.ndarray | None = None
        self.hessian: np.ndarray | None = None
        # deviances for central-difference gradients where the analytic one failed
        self.fd_gradient_evals = 0
        self._last_gradient = None   # (x, the analytic gradient there) of _value_gradient

    # ------------------------------------------------------------ criteria
    def _deviance(self, mode: Mode, exact: bool = False) -> float:
        if self.n_agq > 1:
            return agq_deviance(self.pirls, mode, self.n_agq)
        return laplace_deviance(self.pirls, mode, exact)

    def deviance_theta(self, theta) -> float:
        """Stage 1's criterion: the Laplace deviance with beta and u by PIRLS (eq. 102)."""
        tol = stages.stage1_tolerances(self.n_agq, self._has_gradient())
        return laplace_deviance(self.pirls, self.pirls.mode_joint(
            theta, exact=self.n_agq == 0, search_tol=tol.search_tol, settle=tol.settle))

    def deviance_at(self, theta, beta) -> float:
        """-2 log L at (theta, beta): Laplace (eq. 98) or quadrature (eq. 101)."""
        return self._deviance(self.pirls.mode(theta, beta))

    def _deviance_x(self, x) -> float:
        return self.deviance_at(x[:self.n_theta], x[self.n_theta:])

    def _value_gradient(self, x):
        """The deviance and its analytic gradient in (theta, beta) at x: Laplace's
        (eq. 98) or the quadrature's (eq. 101a)."""
        mode = self.pirls.mode(x[:self.n_theta], x[self.n_theta:])
        self._last_gradient = None
        if self.n_agq > 1:
            value, g = agq_gradient(self.pirls, mode, self.n_agq)
        else:
            value, g = laplace_deviance(self.pirls, mode), laplace_gradient(self.pirls, mode)
            if g is None:   # (a non-canonical link's observed weights not all positive here)
                g, k = stages.fd_gradient(self._deviance_x, x, DELTA)
                self.fd_gradient_evals += k
                return value, g
        self._last_gradient = (x.copy(), g)
        return value, g

    def _gradient_at(self, x) -> np.ndarray:
        """The analytic gradient at x: the last one ``_value_gradient`` computed where
        that was at x (stage 2's last point), else ``_value_gradient``'s."""
        last = self._last_gradient
        if last is not None and np.array_equal(last[0], x):
            return last[1]
        return self._value_gradient(x)[1]

    def _has_gradient(self) -> bool:
        """Whether stage 2 and the Hessian use the analytic gradient: nAGQ = 1
        (``laplace.gradient_available``), or nAGQ > 1 with a canonical link."""
        fam = self.family
        return (self.n_agq == 1 or (self.n_agq > 1 and fam.link.name == fam.canonical)) \
            and gradient_available(self.pirls)

    # ------------------------------------------------------------ fitting
    def fit(self, start=None) -> GeneralizedLinearMixedModel:
        """lme4's two stages (eqs. 102, 103), then the results at the optimum.

        ``start``: a theta (lme4 order), or a dict with ``theta`` and/or
        ``fixef``/``beta``, as lme4's ``start``.  The BLAS runs one thread
        unless the factor has large dense blocks, and is left as it is for small
        work (``Pirls.blas_threads``); rows in
        several chunks are passed over on threads where cores are free
        (``Pirls.set_row_workers``).
        """
        self.pirls.set_row_workers()
        with self.pirls.blas_threads():
            return self._fit(start)

    def _fit(self, start) -> GeneralizedLinearMixedModel:
        nt = self.n_theta
        theta0, beta0 = self._start(start)
        pirls = self.pirls
        pirls.last_u = np.zeros_like(pirls.last_u)
        self._last_gradient = None   # (a refit's response is new)
        step1 = np.where(self.theta_lower == 0, np.maximum(0.2 * np.abs(theta0), 0.05), 0.1)
        s1 = stages.minimize_bobyqa(
            self.deviance_theta, theta0, self.theta_lower, step1,
            ftol_abs=stages.stage1_tolerances(self.n_agq, self._has_gradient()).ftol)
        theta1 = s1.x
        evals1 = s1.n_evals
        if self.n_agq == 0:
            theta1, _, extra = stages.check_boundary(self.deviance_theta, theta1, s1.fval,
                                                     self.theta_lower, nt)
            evals1 += extra
            mode = pirls.mode_joint(theta1)
            self._finish(mode, evals1, 0)
            warn_if_singular(self)
            return self
        beta1 = pirls.mode_joint(theta1).beta if beta0 is None else beta0
        x0 = np.concatenate([stages.off_bounds(theta1, self.theta_lower), beta1])
        lower = np.concatenate([self.theta_lower, np.full(len(beta1), -np.inf)])
        se0 = self._rx_se(theta1)
        step2 = np.concatenate([np.where(self.theta_lower == 0,
                                         np.maximum(0.05 * np.abs(theta1), 0.01), 0.02),
                                np.maximum(0.5 * se0, 1e-3)])
        x, fval, evals2 = self._stage2(x0, lower, step2)
        mode = pirls.mode(x[:nt], x[nt:])
        self._finish(mode, evals1, evals2)
        if self.is_singular and self.hessian is not None:
            # a boundary point where H has negative curvature is a saddle, not a
            # minimum (the deviance is even in theta): stage 2 again from the best
            # point along that direction, where it is lower
            escape = stages.escape_saddle(self._deviance_x, x, fval, self.hessian, lower)
            if escape is not None:
                x_e, _, k = escape
                x2, fval2, k2 = self._stage2(x_e, lower, step2)
                evals2 += k + k2
                if fval2 < fval:
                    self._finish(pirls.mode(x2[:nt], x2[nt:]), evals1, evals2)
                else:   # the factor back at the first optimum
                    pirls.mode(x[:nt], x[nt:])
                    self.stage_evals, self.n_evals = (evals1, evals2), evals1 + evals2
        warn_if_singular(self)
        for message in self._derivative_messages():
            warnings.warn(message, ConvergenceWarning, stacklevel=4)   # the caller of glmer
        return self

    def _stage2(self, x0, lower, step2) -> tuple[np.ndarray, float, int]:
        """Stage 2 (eq. 103) from x0: Newton steps, BOBYQA where they stop short,
        the boundary step; returns (x, -2 log L, evaluations)."""
        nt = self.n_theta
        gradient = self._has_gradient()
        beta_block = None
        if gradient:   # the first matrix's beta block: 2 R_X R_X^T of stage 1's joint factor
            rx = self.pirls.factor(True).rx()
            beta_block = 2.0 * (rx @ rx.T)
        fd_before = self.fd_gradient_evals
        newton = stages.minimize_newton(
            self._deviance_x, x0, np.isinf(lower), DELTA, self._start_hessian,
            at_point=self._anchor_at,
            value_gradient=self._value_gradient if gradient else None, beta_block=beta_block)
        evals = newton.n_evals + self.fd_gradient_evals - fd_before
        x, fval = newton.x, newton.fval
        if not newton.converged:
            s2 = stages.minimize_bobyqa(self._deviance_x, x if np.isfinite(fval) else x0,
                                        lower, step2, ftol_abs=0.0, xtol_abs=1e-7)
            evals += s2.n_evals
            if s2.fval < fval or not np.isfinite(fval):
                x, fval = s2.x, s2.fval
        x, fval, extra = stages.check_boundary(self._deviance_x, x, fval, lower, nt)
        return x, fval, evals + extra

    def _anchor_at(self, x) -> None:
        """Central differences about x start PIRLS from predicted modes (``Pirls.anchor``)."""
        if self.n_agq == 0:
            return
        nt = self.n_theta
        self.pirls.anchor(self.pirls.mode(x[:nt], x[nt:]))

    def _start_hessian(self, x, fx):
        """Stage 2's first Hessian: its diagonal, its theta block and the gradient
        by central differences (2n + n_theta (n_theta - 1) evaluations), the
        correlations of the beta block from R_X R_X^T of the joint factor (the
        curvature of the penalised deviance in beta), no theta-beta terms; BFGS
        adds them (eq. 103)."""
        n, nt = len(x), self.n_theta
        g = np.empty(n)
        diag = np.empty(n)
        fp, fm = np.empty(n), np.empty(n)
        for i in range(n):
            e = np.zeros(n)
            e[i] = DELTA
            fp[i], fm[i] = self._deviance_x(x + e), self._deviance_x(x - e)
            g[i] = (fp[i] - fm[i]) / (2 * DELTA)
            diag[i] = (fp[i] - 2 * fx + fm[i]) / DELTA ** 2
        h = np.diag(diag)
        evals = 2 * n
        for i in range(nt):   # the theta block in full (eq. 104's stencil)
            for j in range(i):
                e = np.zeros(n)
                e[i] = e[j] = DELTA
                fpp, fmm = self._deviance_x(x + e), self._deviance_x(x - e)
                evals += 2
                h[i, j] = h[j, i] = (fpp + fmm - fp[i] - fm[i] - fp[j] - fm[j] + 2 * fx) \
                    / (2 * DELTA ** 2)
        diag = np.where(diag > 0, diag, np.abs(diag) + 1e-8)
        rx = self.pirls.factor(True).rx()
        info = rx @ rx.T
        d = np.sqrt(np.diag(info))
        if np.all(d > 0):
            corr = info / np.outer(d, d)
            sd = np.sqrt(diag[nt:])
            h[nt:, nt:] = corr * np.outer(sd, sd)
        return h, g, evals

    def _rx_se(self, theta) -> np.ndarray:
        """Standard errors of beta from R_X at theta (the current joint factor)."""
        f = self.pirls.factor(True)
        rx = f.rx()
        try:
            inv = np.linalg.inv(rx)
            return np.sqrt(np.sum(inv * inv, axis=0))
        except np.linalg.LinAlgError:
            return np.ones(rx.shape[0])

    def _start(self, start):
        theta0 = np.concatenate([r.theta_init() for r in self.design.remats])
        beta0 = None
        if start is None:
            return theta0, beta0
        if isinstance(start, dict):
            th = start.get("theta")
            be = start.get("fixef", start.get("beta"))
        else:
            th, be = start, None
        if th is not None:
            th = np.asarray(th, dtype=np.float64).ravel()
            if th.shape != theta0.shape or not np.isfinite(th).all() \
                    or (th < self.theta_lower).any():
                raise DataError(f"start theta must be {len(theta0)} finite values within "
                                f"the bounds, got {th.tolist()}")
            theta0 = th
        if be is not None:
            be = np.asarray(be, dtype=np.float64).ravel()
            if be.shape != (len(self.fixef_names),) or not np.isfinite(be).all():
                raise DataError(f"start fixef must be {len(self.fixef_names)} finite values, "
                                f"got {be.tolist()}")
            beta0 = be
        return theta0, beta0

    def _finish(self, mode: Mode, evals1: int, evals2: int) -> None:
        self._mode = mode
        self._objective = self._deviance(mode, exact=True)
        self.stage_evals = (evals1, evals2)
        self.n_evals = evals1 + evals2
        self._vcov = None
        self.hessian = None
        self._convergence = None
        self._derivatives = None   # (g, H, whether lme4 checks them, the free parameters)
        nt = self.n_theta
        theta = mode.theta
        if self.n_agq > 0:   # as lme4, also at a singular fit (the deviance is even in theta)
            x = np.concatenate([theta, mode.beta])
            self.pirls.anchor(mode)   # (mode is the caller's PIRLS at x)
            analytic = self._has_gradient()
            if analytic:
                fd_before = self.fd_gradient_evals
                g = self._gradient_at(x)
                h = gradient_hessian(self._value_gradient, x, GRADIENT_DELTA, g0=g)[0]
                analytic = self.fd_gradient_evals == fd_before   # (no point fell back)
            if not analytic:
                h, _, g = fd_hessian(self._deviance_x, x, self._objective)
            self.pirls.anchor(None)
            self.hessian = h
            free = (theta - self.theta_lower >= SINGULAR_TOL).tolist() + [True] * len(mode.beta)
            self._derivatives = (g.tolist(), h.tolist(), within_check_limits(self), free)
            self._vcov = vcov_from_hessian(h, nt)
            self.pirls.mode(theta, mode.beta)   # the factor back at the optimum
        if self._vcov is None:
            self._vcov = self._rx_vcov(mode)

    def _rx_vcov(self, mode: Mode) -> np.ndarray:
        """(R_X R_X^T)^{-1} of the joint factor at the mode's weights (eq. 23, sigma = 1)."""
        inv = np.linalg.inv(self.pirls.factor_at(mode, joint=True).rx())
        return inv.T @ inv

    # ------------------------------------------------------------ results
    def _require_fit(self) -> Mode:
        if self._mode is None:
            raise FitError("the model is not fitted: call fit() first")
        return self._mode

    @property
    def theta(self) -> np.ndarray:
        return self._require_fit().theta.copy()

    @property
    def beta(self) -> np.ndarray:
        return self._require_fit().beta.copy()

    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self.beta, index=self.fixef_names, name="fixef")

    @property
    def objective(self) -> float:
        """-2 log L as lme4 reports it (``-2 * logLik``, its ``devcomp`` ``dev``):
        eq. 98 for nAGQ <= 1, eq. 101 for nAGQ > 1."""
        self._require_fit()
        return self._objective

    @property
    def deviance(self) -> float:
        """-2 log L, as ``objective`` (the "deviance" of lme4's glmer summary table).
        lme4's ``deviance()`` function of a glmer fit is ``conditional_deviance``."""
        return self.objective

    @property
    def conditional_deviance(self) -> float:
        """sum_i d_i(y_i, mu~_i), the unit deviances at the conditional modes (lme4's
        ``deviance()`` of a glmer fit, ``sum(residuals(fit, "deviance")^2)``)."""
        return self._require_fit().dev_sum

    @property
    def loglik(self) -> float:
        return -0.5 * self.objective

    @property
    def df(self) -> int:
        return self.n_theta + len(self.fixef_names)

    @property
    def aic(self) -> float:
        return self.objective + 2.0 * self.df

    @property
    def bic(self) -> float:
        return self.objective + np.log(self.nobs) * self.df

    @property
    def vcov(self) -> pd.DataFrame:
        """Var(beta-hat): from the Hessian of the deviance (eq. 104), lme4's default."""
        self._require_fit()
        return pd.DataFrame(self._vcov, index=self.fixef_names, columns=self.fixef_names)

    @property
    def stderr(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self._vcov)), index=self.fixef_names, name="stderr")

    @property
    def varcorr(self) -> pd.DataFrame:
        return varcorr(self.design, self.theta)

    @property
    def convergence(self) -> Convergence:
        """lme4's convergence checks at the fit (eqs. 85-88) on the gradient and
        Hessian of the deviance in (theta, beta) that the covariance of beta-hat
        is computed from (eq. 104); not run for nAGQ = 0, as lme4."""
        self._require_fit()
        if self._convergence is None:
            if self._derivatives is None:
                self._convergence = convergence_of([], [], self.is_singular, False)
            else:
                g, h, checked, free = self._derivatives
                self._convergence = convergence_of(g, h, self.is_singular, checked,
                                                   n_theta=self.n_theta, free=free)
        return self._convergence

    def _derivative_messages(self) -> list[str]:
        """The messages of ``convergence``'s gradient and Hessian checks: none,
        without the eigenvalues, where g and H pass them at a glance
        (``convergence.passes``)."""
        d = self._derivatives
        if d is not None and d[2] and not self.is_singular and passes(d[0], d[1]):
            return []
        return derivative_messages_of(self.convergence)

    @property
    def is_singular(self) -> bool:
        th = self.theta
        return bool(((th - self.theta_lower)[self.theta_lower == 0] < SINGULAR_TOL).any())

    @property
    def u(self) -> np.ndarray:
        """Spherical conditional modes, internal order."""
        return self._require_fit().u.copy()

    def ranef(self, condvar: bool = False) -> dict[str, pd.DataFrame]:
        """Conditional modes b = Lambda u per grouping factor (eq. 97); with
        ``condvar=True`` the conditional covariances in ``.attrs["condvar"]`` and
        standard deviations in ``.attrs["condsd"]`` (lme4's ``condVar``)."""
        mode = self._require_fit()
        d = self.design
        b_inner = self.pirls.b(mode.u, mode.theta)
        b = [None] * len(d.remats)
        for pos, i in enumerate(d.internal):
            b[i] = b_inner[pos]
        out: dict[str, pd.DataFrame] = {}
        for r, bt in zip(d.remats, b):
            df = pd.DataFrame(bt, index=pd.Index(r.levels, name=r.group), columns=r.cnames)
            out[r.group] = pd.concat([out[r.group], df], axis=1) if r.group in out else df
        if condvar:   # (the factor at the mode's weights: other calls may have moved it)
            blocks = condvar_blocks(d, self.pirls.factor_at(mode, joint=False), mode.theta)
            for g, df in out.items():
                v = blocks[g]
                df.attrs["condvar"] = v
                df.attrs["condsd"] = pd.DataFrame(
                    np.sqrt(np.clip(np.diagonal(v, axis1=1, axis2=2), 0.0, None)),
                    index=df.index.copy(), columns=list(df.columns))
        return out

    @property
    def linear_predictor(self) -> np.ndarray:
        return self.pirls.row_values(self._require_fit(), "eta")

    @property
    def fitted(self) -> np.ndarray:
        """Fitted means on the response scale, mu = g^{-1}(eta)."""
        return self.pirls.row_values(self._require_fit(), "mu")

    # ------------------------------------------------------------ the design
    reml = False   # maximum likelihood (for anova and the summary's criteria)

    @property
    def remats(self):
        """The random-effects terms, lme4's order."""
        return self.design.remats

    @property
    def x(self) -> np.ndarray:
        return self.design.x

    @property
    def y(self) -> np.ndarray:
        """The response on the family's scale (a proportion for binomial)."""
        return self.design.y

    @property
    def response(self) -> str:
        return self.design.response

    @property
    def prior_weights(self) -> np.ndarray:
        """R's ``weights(fit)``: prior weights (trials times weights for cbind)."""
        return self.design.prior_weights.copy()

    @property
    def offset(self) -> np.ndarray | None:
        """The total offset (``offset=`` plus the formula's ``offset()`` terms), or None."""
        return self.design.offset if self._has_offset else None

    @property
    def fixed_spec(self):
        return self.design.fixed_spec

    @property
    def dropped_columns(self) -> list[str]:
        return list(self.design.dropped_columns)

    @property
    def n_dropped(self) -> int:
        return self.design.n_dropped

    @property
    def ngrps(self) -> dict[str, int]:
        """Number of levels of each grouping factor (lme4's ``ngrps``)."""
        out: dict[str, int] = {}
        for r in self.remats:
            out.setdefault(r.group, r.nlevels)
        return out

    @property
    def df_params(self) -> int:
        return self.df

    @property
    def df_residual(self) -> int:
        """lme4's ``df.residual``: nobs minus the number of parameters."""
        return self.nobs - self.df

    # ------------------------------------------------------------ residuals
    def residuals(self, type: str = "deviance") -> np.ndarray:
        """lme4's ``residuals(fit, type)`` of a glmer fit (eq. 96), on the fit's rows:

        ``"deviance"`` sign(y - mu) sqrt(d_i); ``"pearson"`` (y - mu) sqrt(a_i / V(mu));
        ``"response"`` y - mu; ``"working"`` (y - mu) / (dmu/deta); y on the
        family's scale (a proportion for binomial), a_i the prior weights.
        """
        type = as_choice(type, "type", ("deviance", "pearson", "response", "working"))
        return self.pirls.row_values(self._require_fit(), type)

    def residual_quantiles(self) -> np.ndarray:
        """Quantiles (0, 1/4, 1/2, 3/4, 1) of the Pearson residuals (lme4's "Scaled
        residuals", sigma = 1)."""
        values = self.residuals("pearson")
        return np.quantile(values[np.isfinite(values)], [0.0, 0.25, 0.5, 0.75, 1.0])

    def overdispersion(self) -> pd.Series:
        """The overdispersion check users compute: ``chisq`` = sum of squared Pearson
        residuals, ``ratio`` = chisq / ``rdf`` (residual df, nobs minus parameters),
        ``p`` = P(chi^2_rdf > chisq).  A ratio well above 1 suggests overdispersion."""
        chisq = float(np.sum(self.residuals("pearson") ** 2))
        rdf = self.df_residual
        return pd.Series({"chisq": chisq, "ratio": chisq / rdf, "rdf": float(rdf),
                          "p": float(stats.chi2.sf(chisq, rdf))}, name="overdispersion")

    # ------------------------------------------------------------ inference
    def coef_table(self) -> pd.DataFrame:
        """Wald z tests of the fixed effects: Estimate, Std. Error, z value,
        Pr(>|z|) = 2 Phi(-|z|), with the standard errors of eq. 104."""
        est = self.beta
        se = np.sqrt(np.diag(self._vcov))
        with np.errstate(invalid="ignore", divide="ignore"):
            z = est / se
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "z value": z,
                             "Pr(>|z|)": 2.0 * stats.norm.sf(np.abs(z))},
                            index=pd.Index(self.fixef_names))

    # ------------------------------------------------------------ prediction
    def predict(self, newdata=None, type: str = "link", re_form=None,
                allow_new_levels: bool = False, offset=None) -> np.ndarray:
        """lme4's ``predict(fit, newdata, type, re.form, allow.new.levels)``.

        The linear predictor x_i beta + z_i b + o_i (eq. 91) of the fit's rows
        (``newdata=None``) or of ``newdata`` coded as in the fit
        (``lmmfast.predict``: factor levels, contrasts, new levels, offsets);
        ``type="response"`` maps it through the inverse link.  ``re_form``:
        None (all terms), ``"~0"``/NA (none) or a formula of some terms.
        """
        from ..predict import predict as predict_rows
        type = as_choice(type, "type", ("link", "response"))
        mode = self._require_fit()
        if newdata is None and re_form is None and offset is None:
            eta = self.pirls.row_values(mode, "eta")
        else:
            eta = predict_rows(self, newdata, re_form=re_form,
                               allow_new_levels=allow_new_levels, offset=offset)
        if type == "link":
            return eta
        out = np.full_like(eta, np.nan)
        ok = np.isfinite(eta)
        out[ok] = self.family.linkinv(eta[ok])
        return out

    # ------------------------------------------------------------ printing
    def summary(self, digits: int = 4) -> str:
        """lme4's glmer summary text (``lmmfast.glmm.summary``)."""
        from .summary import format_glmer_summary
        self._require_fit()
        return format_glmer_summary(self, digits)

    def __str__(self) -> str:
        if self._mode is None:
            return f"GeneralizedLinearMixedModel({self.formula!r}, family={self.family}, not fitted)"
        return self.summary()

    def __repr__(self) -> str:
        return self.__str__()

    # ------------------------------------------------------------ simulation and inference
    def copy(self) -> GeneralizedLinearMixedModel:
        """An independent model with the same design and estimates (its own PIRLS and factors)."""
        import copy as _copy
        import dataclasses
        new = _copy.copy(self)
        new.design = dataclasses.replace(self.design, y=self.design.y.copy())
        new.pirls = Pirls(new.design, self.family)
        if self._mode is not None:
            new.pirls.last_u = self._mode.u.copy()
        return new

    def refit(self, y, start=None) -> GeneralizedLinearMixedModel:
        """Refit in place to a new response on the model's scale (proportions for
        binomial, counts for poisson) with the same design, X, Z, weights and
        offset; returns ``self``.  The two stages start from ``start`` (default:
        the current theta and fixed effects)."""
        import dataclasses
        y = np.asarray(y, dtype=np.float64).ravel()
        if y.shape != self.design.y.shape:
            raise DataError(f"the new response has {y.size} values, the model has {self.nobs}")
        if not np.isfinite(y).all():
            raise DataError("the new response has non-finite values")
        if (y < 0).any() or (self.family.name == "binomial" and (y > 1).any()):
            raise DataError(f"the new response is outside the range of the {self.family.name} "
                            "family (binomial: proportions in [0, 1], poisson: counts >= 0)")
        if start is None and self._mode is not None:
            start = {"theta": self._mode.theta.copy(), "fixef": self._mode.beta.copy()}
        factors = self.pirls.factors()
        self.design = dataclasses.replace(self.design, y=y)
        self.pirls = Pirls(self.design, self.family)
        self.pirls.adopt(factors)   # they depend on X and Z only
        return self.fit(start)

    def simulate(self, nsim: int = 1, seed=None, re_form="NA") -> pd.DataFrame:
        """Responses simulated from the fit, as lme4's ``simulate`` (``lmmfast.glmm.simulate``)."""
        from .simulate import simulate
        return simulate(self, nsim, seed=seed, re_form=re_form)

    def bootstrap(self, n: int, seed=None, n_jobs: int | None = None, progress=None,
                  **kwargs) -> pd.DataFrame:
        """Parametric bootstrap, as lme4's ``bootMer`` (``lmmfast.glmm.bootstrap``)."""
        from .bootstrap import bootstrap
        return bootstrap(self, n, seed=seed, n_jobs=n_jobs, progress=progress, **kwargs)

    def profile(self, which=None, **kwargs) -> pd.DataFrame:
        """Profile zeta traces, as lme4's ``profile`` (``lmmfast.glmm.profile``)."""
        from .profile import profile
        return profile(self, which=which, **kwargs)

    def confint(self, parm=None, level: float = 0.95, method: str = "profile",
                **kwargs) -> pd.DataFrame:
        """Confidence intervals (``"wald"``, ``"profile"`` or ``"bootstrap"``), as lme4's
        ``confint`` (``lmmfast.glmm.confint``)."""
        from .confint import confint
        return confint(self, parm=parm, level=level, method=method, **kwargs)


class DaskGeneralizedLinearMixedModel(GeneralizedLinearMixedModel):
    """A GLMM of a Dask DataFrame or Parquet files (``glmm.dask``): the rows stay on
    the cluster the current ``distributed.Client`` is connected to, and every pass
    over them (a PIRLS iteration, the gradient, the family's aic) is one map-reduce.

    ``fitted``, ``residuals()`` and ``predict()`` of the fit's rows are Dask
    Series; ``dask_stats`` gives the partitions, the passes over the data and the
    bytes brought to the client.  ``simulate``, ``bootstrap`` and ``refit`` need the
    rows on the client and are not available.
    """

    def __init__(self, formula: str, data, family="binomial", nAGQ: int = 1,
                 weights=None, offset=None, *, split_every: int = SPLIT_EVERY,
                 chunk_rows: int | None = None):
        from .dask import dask_design
        self.family = make_family(family)
        self.n_agq = _as_nagq(nAGQ)
        design, rows, self._build_stats, self._ddf = dask_design(
            formula, data, self.family.name, weights, offset, split_every, chunk_rows)
        self._setup(formula, data, design, rows, weights, offset)

    @property
    def dask_stats(self) -> dict:
        """Partitions, passes over the data (building and fitting) and the bytes of
        their results brought to the client."""
        rows, built = self.pirls.rows, self._build_stats
        return {"partitions": built["partitions"], "passes": built["passes"] + rows.passes,
                "bytes_to_client": built["bytes_to_client"] + rows.bytes_to_client}

    def _no_rows(self, what: str):
        raise DataError(f"{what} needs the rows on the client; a model of a Dask DataFrame "
                        "keeps them on the cluster: fit ddf.compute() in memory for it")

    @property
    def y(self):
        self._no_rows("the response")

    @property
    def prior_weights(self):
        self._no_rows("prior_weights")

    @property
    def offset(self):
        if self._has_offset:
            self._no_rows("the offset")
        return None

    def copy(self):
        self._no_rows("copy()")

    def refit(self, y, start=None):
        self._no_rows("refit()")

    def simulate(self, nsim: int = 1, seed=None, re_form="NA"):
        self._no_rows("simulate()")

    def bootstrap(self, n: int, seed=None, n_jobs=None, progress=None, **kwargs):
        self._no_rows("bootstrap()")

    def residual_quantiles(self) -> np.ndarray:
        """Quantiles (0, 1/4, 1/2, 3/4, 1) of the Pearson residuals, from the cluster."""
        from ..design.dask import exact_quantiles
        return exact_quantiles(self.residuals("pearson"), [0.0, 0.25, 0.5, 0.75, 1.0])

    def overdispersion(self) -> pd.Series:
        chisq = float((self.residuals("pearson") ** 2).sum().compute())
        rdf = self.df_residual
        return pd.Series({"chisq": chisq, "ratio": chisq / rdf, "rdf": float(rdf),
                          "p": float(stats.chi2.sf(chisq, rdf))}, name="overdispersion")

    def predict(self, newdata=None, type: str = "link", re_form=None,
                allow_new_levels: bool = False, offset=None):
        """As ``GeneralizedLinearMixedModel.predict``; for the fit's rows a Dask Series."""
        if newdata is not None or re_form is not None or offset is not None:
            return super().predict(newdata, type, re_form, allow_new_levels, offset)
        type = as_choice(type, "type", ("link", "response"))
        mode = self._require_fit()
        return self.pirls.row_values(mode, "eta" if type == "link" else "mu")


def glmer(formula: str, data, family="binomial", nAGQ: int = 1, weights=None,
          offset=None, start=None) -> GeneralizedLinearMixedModel:
    """Fit a generalized linear mixed model as lme4's ``glmer``: of a pandas frame in
    memory, or of a Dask DataFrame or Parquet files on the cluster the current
    ``distributed.Client`` is connected to (``DaskGeneralizedLinearMixedModel``)."""
    return GeneralizedLinearMixedModel(formula, data, family, nAGQ, weights, offset).fit(start)
