"""Likelihood profiles of every parameter, as lme4's ``profile.merMod`` (theory.md, eqs. 41-44).

The parameters are lme4's: the standard deviations and correlations of the
random effects (``.sig01``, ...; eq. 41), the residual standard deviation
(``.sigma``) and the fixed effects.  For each parameter, the ML deviance is
minimised over all the others with the parameter held fixed; the profile is
the signed square root of the increase over the minimum,

    zeta(value) = sign(value - estimate) * sqrt(d_fixed(value) - d(estimate))   (eq. 42),

traced from the estimate outwards in both directions until |zeta| exceeds
``sqrt(chi2_{1 - alphamax}(number of parameters))``, wide enough for 99 %
intervals.  As in lme4, a REML fit is profiled on the ML deviance of its ML
refit.

* A variance parameter is fixed and the deviance as a function of all
  standard deviations, correlations and sigma (eq. 43, beta profiled out)
  is minimised over the others with BOBYQA, each optimisation starting from
  the previous point of the trace.
* A fixed effect beta_j is fixed at b and the profiled deviance of eq. (18)
  with r^2(theta) replaced by r^2(theta) + (b - beta_j(theta))^2 / C_jj(theta)
  (eq. 44, from eq. 11) is minimised over theta; this equals lme4's refit with
  X_j b moved into the offset, without building a second model.

The step from one point to the next aims at a change of ``delta`` in zeta
(lme4's rule: the last secant's slope, steps capped at ``maxmult`` times the
last one), so the traces of lme4 and of this module have nearly the same
points, and the interval ends interpolated from them (``confint``) agree.
"""

from __future__ import annotations

import math
import warnings

import nlopt
import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import solve_triangular

from .arguments import as_count, as_positive, as_probability, describe
from .errors import DataError, FitError, LmmWarning

INVALID_PENALTY = 1e4
"""Added to the deviance per unit by which standard deviations and correlations
miss a valid covariance (terms with 3 or more random effects per level)."""

__all__ = ["profile", "parameter_names", "theta_to_sdcor", "sdcor_to_theta",
           "ml_refit", "resolve_parameters"]


# ------------------------------------------------------------------ parameters
def _term_slices(fit) -> list[tuple[int, slice]]:
    out, pos = [], 0
    for r in fit.remats:
        out.append((r.k, slice(pos, pos + r.n_theta)))
        pos += r.n_theta
    return out


def parameter_names(fit, sigma: bool = True) -> tuple[list[str], list[str]]:
    """lme4's profile names of all parameters and their descriptive names.

    Returns ``(names, descriptive)``: ``[".sig01", ..., ".sigma", <fixed effects>]``
    and ``["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", ...,
    "sigma", <fixed effects>]`` (lme4's ``tnames(fit, old = FALSE)``), the
    variance parameters in the order of theta (eq. 7): standard deviations on
    lambda's diagonal, correlations below it.  ``sigma=False``: without
    ``.sigma``/``sigma`` (a GLMM with no scale parameter, as lme4's glmer).
    """
    n_theta = len(fit.theta_names)
    names = [f".sig{i + 1:02d}" for i in range(n_theta)] + ([".sigma"] if sigma else [])
    desc = []
    for r in fit.remats:
        for j in range(r.k):
            for i in range(j, r.k):
                if i == j:
                    desc.append(f"sd_{r.cnames[i]}|{r.group}")
                else:
                    desc.append(f"cor_{r.cnames[i]}.{r.cnames[j]}|{r.group}")
    if sigma:
        desc.append("sigma")
    fe = list(fit.fixef_names)
    return names + fe, desc + fe


def theta_to_sdcor(fit, theta, sigma: float) -> np.ndarray:
    """Standard deviations and correlations (theta's layout) of sigma^2 lambda lambda^T (eq. 8).

    With plain floats: each lambda is a few rows, and this runs once per
    replicate of a bootstrap and per point of a profile.
    """
    values = np.asarray(theta, dtype=np.float64).tolist()
    out = []
    for k, sl in _term_slices(fit):
        t = values[sl]
        if k == 1:
            out.append(sigma * abs(t[0]))
            continue
        lam = [[0.0] * k for _ in range(k)]   # lower-triangular, by columns (eq. 7)
        pos = 0
        for j in range(k):
            for i in range(j, k):
                lam[i][j] = t[pos]
                pos += 1
        cov = [[sum(lam[i][c] * lam[j][c] for c in range(min(i, j) + 1)) for j in range(k)]
               for i in range(k)]
        sd = [math.sqrt(cov[i][i]) for i in range(k)]
        for j in range(k):
            for i in range(j, k):
                if i == j:
                    out.append(sigma * sd[i])
                else:
                    den = sd[i] * sd[j]
                    out.append(min(1.0, max(-1.0, cov[i][j] / den)) if den > 0 else math.nan)
    return np.array(out, dtype=np.float64)


def _chol_corr(corr: np.ndarray) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of a correlation matrix, row by row, and how far R is from valid.

    Returns ``(chol, excess)``.  For a positive semi-definite R, ``chol``
    reproduces it and ``excess`` is 0.  Otherwise a negative pivot is set to
    0 and its row rescaled to unit length, which gives a valid correlation
    matrix near R, and ``excess`` adds up the amounts by which R misses
    validity (the negative pivots, and the residuals where a zero pivot
    leaves a correlation unreachable).
    """
    k = corr.shape[0]
    chol = np.zeros((k, k))
    excess = 0.0
    for a in range(k):
        for j in range(a):
            s = corr[a, j] - chol[a, :j] @ chol[j, :j]
            if chol[j, j] > 1e-12:
                chol[a, j] = s / chol[j, j]
            else:
                excess += abs(s) if abs(s) > 1e-10 else 0.0
        d = 1.0 - chol[a, :a] @ chol[a, :a]
        if d >= 0:
            chol[a, a] = math.sqrt(d)
        else:
            if d < -1e-10:
                excess -= d
            chol[a, :a] /= math.sqrt(1.0 - d)
    return chol, excess


def _sdcor_theta(fit, sdcor, sigma: float) -> tuple[np.ndarray, float]:
    """theta of ``sdcor`` at ``sigma`` and the excess of :func:`_chol_corr` over all terms."""
    v = np.asarray(sdcor, dtype=np.float64)
    out = np.empty(len(v))
    excess = 0.0
    for k, sl in _term_slices(fit):
        t = v[sl]
        if k == 1:
            out[sl] = t[0] / sigma
            continue
        if k == 2:
            s1, rho, s2 = t[0] / sigma, t[1], t[2] / sigma
            out[sl] = (s1, rho * s2, s2 * math.sqrt(max(0.0, 1.0 - rho * rho)))
            continue
        sd = np.empty(k)
        corr = np.eye(k)
        pos = 0
        for j in range(k):
            for i in range(j, k):
                if i == j:
                    sd[i] = t[pos] / sigma
                else:
                    corr[i, j] = corr[j, i] = t[pos]
                pos += 1
        chol, ex = _chol_corr(corr)
        excess += ex
        lam = sd[:, None] * chol
        out[sl] = lam[np.triu_indices(k)[::-1]]
    return out, excess


def sdcor_to_theta(fit, sdcor, sigma: float) -> np.ndarray | None:
    """theta (eq. 7) of the standard deviations and correlations ``sdcor`` at residual ``sigma``.

    lambda = diag(sd / sigma) chol(R), R the correlation matrix (eq. 41): the
    inverse of :func:`theta_to_sdcor`.  None when R is not positive semi-definite.
    """
    theta, excess = _sdcor_theta(fit, sdcor, sigma)
    return theta if excess == 0 else None


def ml_refit(fit):
    """The fit if fitted by ML, else a copy refitted by ML from its theta (lme4's ``refitML``)."""
    if not fit.reml:
        return fit
    ml = fit.copy()
    ml.reml = False
    return ml.fit(start=np.maximum(fit.theta.to_numpy(), fit.lower_bounds))


def resolve_parameters(which, names: list[str], descriptive: list[str], n_var: int,
                       argument: str = "which") -> list[int]:
    """Indices of the parameters selected by ``which`` (lme4's ``parm``/``which``).

    ``None``: all; ``"theta_"``: the variance parameters (incl. sigma);
    ``"beta_"``: the fixed effects; otherwise names (lme4's or descriptive)
    or 0-based indices, in any mix.  ``argument`` names ``which`` in errors.
    """
    if which is None:
        return list(range(len(names)))
    if isinstance(which, (str, int, np.integer)):
        if which == "theta_":
            return list(range(n_var))
        if which == "beta_":
            return list(range(n_var, len(names)))
        which = [which]
    try:
        which = list(which)
    except TypeError:
        raise DataError(f"{argument} must be a parameter name, an index or a list of them, "
                        f"got {describe(which)}") from None
    out = []
    for w in which:
        if isinstance(w, (int, np.integer)) and not isinstance(w, (bool, np.bool_)):
            if not 0 <= w < len(names):
                raise DataError(f"{argument}: parameter index {w} out of range "
                                f"0..{len(names) - 1}")
            idx = int(w)
        elif isinstance(w, str) and w in names:
            idx = names.index(w)
        elif isinstance(w, str) and w in descriptive:
            idx = descriptive.index(w)
        else:
            raise DataError(f"{argument}: unknown parameter {describe(w)}; parameters are "
                            f"{names} (or {descriptive})")
        if idx not in out:
            out.append(idx)
    return sorted(out)


# ------------------------------------------------------------------ deviances
class _MLDeviance:
    """The ML deviance at any (theta, sigma) or (theta, beta_j) from a private copy of an ML fit."""

    def __init__(self, ml):
        self._model = ml.copy()
        self._core = self._model._core
        self._perm = self._model._theta_perm
        self._buf = np.empty(len(self._perm))
        self.n = float(ml.nobs)
        self.ld_w = float(np.log(ml.weights).sum()) if ml.weights is not None else 0.0
        self.p = ml.p

    def _update(self, theta) -> bool:
        self._buf[:] = np.asarray(theta)[self._perm]
        return self._core.update(self._buf) == 0

    def at_sigma(self, theta, sigma: float) -> float:
        """ld|L_Z|^2 - sum log w + r^2(theta) / sigma^2 + n log(2 pi sigma^2)  (eq. 43)."""
        if theta is None or not sigma > 0 or not self._update(theta):
            return math.inf
        ld_l2, _, pwrss = self._core.components()
        s2 = sigma * sigma
        return ld_l2 - self.ld_w + pwrss / s2 + self.n * math.log(2 * math.pi * s2)

    def _rx_beta(self):
        rx, beta, _ = self._model._fixed_factor()
        return rx, beta

    def beta_hat(self, theta) -> np.ndarray:
        """beta-hat(theta) (eq. 21)."""
        if not self._update(theta):
            return np.full(self.p, np.nan)
        return self._rx_beta()[1]

    def at_beta(self, theta, j: int, b: float):
        """Profiled deviance with beta_j fixed at b (eq. 44); also sigma and the whole beta."""
        if not self._update(theta):
            return math.inf, math.nan, None
        ld_l2, _, pwrss = self._core.components()
        rx, beta = self._rx_beta()
        e = np.zeros(self.p)
        e[j] = 1.0
        w = solve_triangular(rx, e, lower=True)          # R_X^{-1} e_j
        col = solve_triangular(rx.T, w, lower=False)     # C e_j, C = (R_X R_X^T)^{-1}
        cjj = col[j]
        r2 = pwrss + (b - beta[j]) ** 2 / cjj
        dev = ld_l2 - self.ld_w + self.n * (1.0 + math.log(2 * math.pi * r2 / self.n))
        beta_b = beta + col / cjj * (b - beta[j])
        beta_b[j] = b
        return dev, math.sqrt(r2 / self.n), beta_b


def _minimise(fun, x0, lower, upper, step, ftol_abs, maxeval):
    """BOBYQA from x0 within the bounds; returns (fmin, xmin)."""
    n = len(x0)
    if n == 0:
        return fun(np.zeros(0)), np.zeros(0)
    best = [math.inf, np.array(x0, dtype=np.float64)]

    def f(x, grad):
        val = fun(x)
        if val < best[0]:
            best[0], best[1] = val, x.copy()
        return val if math.isfinite(val) else 1e300

    opt = nlopt.opt(nlopt.LN_BOBYQA, n)
    opt.set_lower_bounds(lower)
    opt.set_upper_bounds(upper)
    opt.set_min_objective(f)
    opt.set_ftol_abs(ftol_abs)
    opt.set_xtol_rel(1e-10)
    opt.set_maxeval(maxeval)
    opt.set_initial_step(step)
    x0 = np.clip(np.asarray(x0, dtype=np.float64), lower, upper)
    try:
        opt.optimize(x0)
    except nlopt.RoundoffLimited:
        pass
    return best[0], best[1]


# ------------------------------------------------------------------ tracing
def _next_value(prev, last, zprev, zlast, delta, lower, upper, maxmult, minstep=1e-6):
    """lme4's step: a change of ``delta`` in zeta along the last secant, at most maxmult last steps.

    Returns ``(value, irregular)``; ``irregular`` is True when the last two
    points do not rise away from the estimate and a minimal step is taken.
    """
    num = last - prev
    den = zlast - zprev
    irregular = False
    if not np.isfinite(den) or den == 0:
        step, irregular = minstep, True
    else:
        step = delta * num / den
        if step < 0:
            step, irregular = minstep, True
        elif abs(step) > maxmult * abs(num):
            step = maxmult * abs(num)
    return min(upper, max(lower, last + math.copysign(step, num))), irregular


def _trace(rows, col, zeta_at, lowcut, upcut, delta, cutoff, maxpts, maxmult):
    """Extend ``rows`` (the first two points given) until |zeta| > cutoff, a bound or maxpts.

    Returns the rows and the number of irregular steps.
    """
    irregular = 0
    while len(rows) < maxpts:
        last = rows[-1]
        value, z = last[col], last[0]
        if not (lowcut < value < upcut) or (np.isfinite(z) and abs(z) > cutoff):
            break
        prev = rows[-2]
        nxt, odd = _next_value(prev[col], value, prev[0], z, delta, lowcut, upcut, maxmult)
        irregular += odd
        rows.append(zeta_at(nxt, last))
    return rows, irregular


def profile(fit, which=None, *, alphamax: float = 0.01, maxpts: int = 100, delta=None,
            delta_cutoff: float = 0.125, maxmult: float = 10.0, devtol: float = 1e-6,
            ftol_abs: float = 1e-10, maxeval: int = 10_000) -> pd.DataFrame:
    """Profile zeta traces of the parameters of a fit, as lme4's ``profile(fit)``.

    Parameters
    ----------
    fit : LinearMixedModel
        A fitted model; REML fits are profiled on the deviance of their ML
        refit, as lme4 does.
    which : None, str, int or list
        Parameters to profile: lme4 names (``".sig01"``, ``".sigma"``,
        ``"(Intercept)"``), descriptive names (``"sd_(Intercept)|Batch"``),
        0-based indices, ``"theta_"`` (variance parameters) or ``"beta_"``
        (fixed effects); default all.
    alphamax, delta_cutoff, maxpts, maxmult :
        lme4's settings: the traces extend to |zeta| >
        ``sqrt(chi2.ppf(1 - alphamax, n_parameters))`` (eq. 42), in steps
        aiming at ``delta = delta_cutoff * cutoff`` in zeta, at most
        ``maxpts`` points per direction.
    devtol : float
        A deviance below the fit's by more than this raises ``FitError``
        (the fit is not at the optimum).

    Returns
    -------
    pandas.DataFrame
        One row per profile point: ``parameter`` (lme4 name), ``value``,
        ``zeta``, then every parameter's value at that point (columns named
        as ``parameter``), sorted by parameter and value.  ``attrs`` holds
        ``descriptive`` (name -> descriptive name), ``estimates``, ``lower``
        and ``upper`` (the parameters' bounds), ``deviance`` (the ML deviance
        at the estimates) and ``cutoff``.
    """
    fit._require_fit()
    selected = resolve_parameters(which, *parameter_names(fit), len(fit.theta_names) + 1)
    alphamax = as_probability(alphamax, "alphamax")
    maxpts = as_count(maxpts, "maxpts", minimum=1)
    maxeval = as_count(maxeval, "maxeval", minimum=1)
    delta = None if delta is None else as_positive(delta, "delta")
    delta_cutoff = as_positive(delta_cutoff, "delta_cutoff")
    maxmult = as_positive(maxmult, "maxmult")
    devtol = as_positive(devtol, "devtol", allow_zero=True)
    ftol_abs = as_positive(ftol_abs, "ftol_abs")
    ml = ml_refit(fit)
    names, desc = parameter_names(ml)
    n_theta = len(ml.theta_names)
    n_var = n_theta + 1
    p = ml.p
    dev = _MLDeviance(ml)
    base = ml.objective
    sigma_hat = ml.sigma
    theta_hat = ml.theta.to_numpy()
    opt = np.concatenate([theta_to_sdcor(ml, theta_hat, sigma_hat), [sigma_hat],
                          ml.fixef.to_numpy()])
    nptot = len(opt)
    cutoff = math.sqrt(stats.chi2.ppf(1.0 - alphamax, nptot))
    if delta is None:
        delta = cutoff * delta_cutoff

    theta_lower = ml.lower_bounds
    lower = np.concatenate([np.maximum(theta_lower, -1.0), [0.0], np.full(p, -np.inf)])
    upper = np.concatenate([np.where(theta_lower == 0, np.inf, 1.0), [np.inf],
                            np.full(p, np.inf)])
    is_sd = np.concatenate([theta_lower == 0, [True]])

    check = dev.at_sigma(_sdcor_theta(ml, opt[:n_theta], sigma_hat)[0], sigma_hat)
    if not abs(check - base) <= 1e-6 * max(1.0, abs(base)):
        raise FitError("the deviance at fixed sigma does not reproduce the fit's deviance "
                       f"({check} vs {base})")

    def zeta_of(value, devval, estimate):
        diff = devval - base
        if not np.isfinite(diff):
            return math.nan
        if diff < -devtol:
            raise FitError(f"profiling found a deviance {-diff:.3g} below the fit's: the fit "
                           "is not at the optimum; refit with tighter tolerances")
        return math.copysign(math.sqrt(max(diff, 0.0)), value - estimate)

    traces: dict[int, list[np.ndarray]] = {}

    # variance parameters: fix one of (sd/cor..., sigma), optimise the others
    for w in (i for i in selected if i < n_var):
        others = np.array([i for i in range(n_var) if i != w], dtype=np.intp)
        lo, hi = lower[others], upper[others]
        scale = np.where(is_sd[others], np.maximum(0.1 * np.abs(opt[others]), 1e-2 * sigma_hat),
                         0.05)

        def objective(x, value, w=w, others=others):
            pars = np.empty(n_var)
            pars[w] = value
            pars[others] = x
            sigma = pars[n_theta]
            if not sigma > 0:
                return math.inf
            theta, excess = _sdcor_theta(ml, pars[:n_theta], sigma)
            return dev.at_sigma(theta, sigma) + INVALID_PENALTY * excess

        def zeta_at(value, start_row, w=w, others=others, lo=lo, hi=hi, scale=scale,
                    objective=objective):
            x0 = start_row[1:n_var + 1][others]
            fval, x = _minimise(lambda x: objective(x, value), x0, lo, hi,
                                np.minimum(scale, np.maximum((hi - lo) / 4, 1e-8)),
                                ftol_abs, maxeval)
            row = np.empty(1 + nptot)
            row[1 + w] = value
            row[1 + others] = x
            sigma = row[1 + n_theta]
            row[0] = zeta_of(value, fval, opt[w])
            if not sigma > 0:
                row[0] = math.nan
                row[1 + n_var:] = math.nan
                return row
            theta, excess = _sdcor_theta(ml, row[1:1 + n_theta], sigma)
            if excess > 0:          # no valid covariance has this value of the parameter
                row[0] = math.nan
            row[1 + n_var:] = dev.beta_hat(theta)
            return row

        traces[w] = _trace_both(opt, w, zeta_at, lower[w], upper[w], delta, cutoff,
                                maxpts, maxmult, shift=_shift(opt[w], lower[w], upper[w]))

    # fixed effects: fix beta_j, optimise theta with sigma profiled (eq. 44)
    se = ml.stderr.to_numpy()
    lb_theta = theta_lower
    step_theta = np.full(n_theta, 0.25)
    for w in (i for i in selected if i >= n_var):
        j = w - n_var
        start = {"theta": theta_hat.copy()}

        def zeta_at(value, start_row, j=j, w=w, start=start):
            fval, theta = _minimise(lambda t: dev.at_beta(t, j, value)[0], start["theta"],
                                    lb_theta, np.full(n_theta, np.inf), step_theta,
                                    ftol_abs, maxeval)
            _, sigma, beta = dev.at_beta(theta, j, value)
            start["theta"] = theta
            row = np.empty(1 + nptot)
            row[0] = zeta_of(value, fval, opt[w])
            row[1:1 + n_theta] = theta_to_sdcor(ml, theta, sigma)
            row[1 + n_theta] = sigma
            row[1 + n_var:] = beta if beta is not None else np.nan
            return row

        def reset(start=start):
            start["theta"] = theta_hat.copy()

        traces[w] = _trace_both(opt, w, zeta_at, -np.inf, np.inf, delta, cutoff, maxpts,
                                maxmult, shift=opt[w] + delta * se[j], reset=reset)

    out = traces_frame(traces, selected, names)
    out.attrs.update(
        descriptive=dict(zip(names, desc)),
        estimates=dict(zip(names, opt.tolist())),
        lower=dict(zip(names, lower.tolist())),
        upper=dict(zip(names, upper.tolist())),
        deviance=float(base),
        cutoff=float(cutoff),
        reml_refitted=bool(fit.reml),
    )
    return out



def traces_frame(traces: dict, selected: list[int], names: list[str]) -> pd.DataFrame:
    """The profile table of the traced parameters (parameter, value, zeta, and every
    parameter at each point), warning where a trace was irregular."""
    irregular = {names[w]: traces[w][1] for w in selected if traces[w][1]}
    if irregular:
        warnings.warn("irregular profile (zeta not increasing away from the estimate, "
                      "minimal steps taken) for " + ", ".join(
                          f"{k} ({v} points)" for k, v in irregular.items())
                      + "; its intervals may be unreliable", LmmWarning, stacklevel=3)
    frames = []
    for w in selected:
        arr = np.array(traces[w][0])
        df = pd.DataFrame(arr[:, 1:], columns=names)
        df.insert(0, "zeta", arr[:, 0])
        df.insert(0, "value", arr[:, 1 + w])
        df.insert(0, "parameter", names[w])
        frames.append(df)
    return pd.concat(frames, ignore_index=True)

def _shift(est, lo, hi):
    """First step from the estimate: 1 % of it, or 0.001 at zero (lme4), within the bounds."""
    s = 0.001 if est == 0 else est * 1.01
    if not lo <= s <= hi:
        s = est * 0.99
    return s


def _trace_both(opt, w, zeta_at, lowcut, upcut, delta, cutoff, maxpts, maxmult, shift,
                reset=None):
    """Both directions of one parameter's trace, merged and sorted by its value.

    The first trace starts at the estimate and the shifted point, the second
    (skipped when the estimate is at its lower bound) at the same two points
    in the opposite order, so it moves the other way.
    """
    col = 1 + w
    est_row = np.concatenate([[0.0], opt])
    if reset is not None:
        reset()
    shifted = zeta_at(shift, est_row)
    rows, irregular = _trace([est_row, shifted], col, zeta_at, lowcut, upcut, delta, cutoff,
                             maxpts, maxmult)
    if opt[w] > lowcut:
        if reset is not None:
            reset()
        down, odd = _trace([shifted, est_row], col, zeta_at, lowcut, upcut, delta, cutoff,
                           maxpts, maxmult)
        rows, irregular = rows + down[2:], irregular + odd
    rows.sort(key=lambda r: r[col])
    return rows, irregular
