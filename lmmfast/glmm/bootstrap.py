"""Parametric bootstrap of a GLMM, as lme4's ``bootMer`` (docs/theory.md, eqs. 49, 91).

Each replicate simulates a response from the fit (``lmmfast.glmm.simulate``:
new random effects, then the family's draw at the estimates) and refits the
model to it by the fit's criterion (Laplace, quadrature or nAGQ = 0).  The
refit reuses the design, X, Z and the compiled factors: only the response
changes, and lme4's two stages start from the fit's theta and fixed effects.

Workers, seeds and the progress bar are the linear model's
(``lmmfast.bootstrap.run_replicates``): replicate i draws from the i-th child
of ``SeedSequence(seed)``, so the result does not depend on ``n_jobs``, and
``bootstrap(n, seed)`` refits exactly the columns of ``simulate(n, seed)``;
each worker runs its BLAS on one thread.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd

from ..bootstrap import run_replicates
from ..errors import LmmError
from ..profile import parameter_names, theta_to_sdcor
from .simulate import GlmmSimulator

__all__ = ["bootstrap"]


class _GlmmJob:
    """A block of replicates: simulate, refit, record (``lmmfast.bootstrap._Job``'s interface)."""

    def __init__(self, fit, seeds):
        self.fit = fit
        self.seeds = seeds
        self.start = {"theta": fit.theta, "fixef": fit.beta}
        self.p = len(fit.fixef_names)
        self.n_theta = fit.n_theta
        self.width = 1 + self.p + 2 * self.n_theta
        self.simulator = GlmmSimulator(fit)

    def new_model(self):
        return self.fit.copy()

    def serial_threads(self):
        return contextlib.nullcontext()

    def run(self, model, indices) -> tuple[np.ndarray, np.ndarray, int, int]:
        out = np.full((len(indices), self.width), np.nan)
        n_warn = n_fail = 0
        p, nt = self.p, self.n_theta
        for row, i in enumerate(indices):
            y = self.simulator.draw(np.random.default_rng(self.seeds[i]))
            try:
                model.refit(y, start=self.start)
            except LmmError:
                n_fail += 1
                continue
            n_warn += not model.convergence.ok
            theta = model.theta
            res = out[row]
            res[0] = model.objective
            res[1:1 + p] = model.beta
            res[1 + p:1 + p + nt] = theta
            res[1 + p + nt:] = theta_to_sdcor(model, theta, 1.0)
        return np.asarray(indices), out, n_warn, n_fail


def columns(fit) -> list[str]:
    """``objective``, the fixed effects, theta (lme4's names, e.g. ``herd.(Intercept)``)
    and the standard deviations/correlations (``sd_(Intercept)|herd``)."""
    _, desc = parameter_names(fit, sigma=False)
    return (["objective"] + list(fit.fixef_names) + list(fit.theta_names)
            + desc[:fit.n_theta])


def bootstrap(fit, n: int, seed=None, n_jobs: int | None = None, progress=None, *,
              backend: str | None = None) -> pd.DataFrame:
    """Parametric bootstrap of a GLMM fit: ``n`` simulated responses, each refitted.

    Parameters
    ----------
    fit : GeneralizedLinearMixedModel
        A fitted model; replicates are refitted with its nAGQ.
    n : int
        Number of replicates.
    seed : int, SeedSequence, Generator or None
        Replicate i uses the i-th child of ``SeedSequence(seed)``: the same
        result for every ``n_jobs`` and backend.
    n_jobs : int, optional
        Workers (default: the cores this process may use), one BLAS thread each.
    progress : bool, optional
        Progress bar on stderr; default: when stderr is a terminal.
    backend : {"process", "thread"}, optional
        Forked workers (default where ``fork`` exists) or threads.

    Returns
    -------
    pandas.DataFrame
        One row per replicate (``columns(fit)``); a failed refit is a row of
        NaN.  ``attrs``: ``seed``, ``n_jobs``, ``backend``, ``seconds``,
        ``n_failed`` (refits that raised an ``LmmError``), ``n_not_converged``
        (refits that failed lme4's convergence checks, ``fit.convergence``) and
        ``estimates`` (the fit's values).
    """
    fit._require_fit()
    result, attrs = run_replicates(lambda seeds: _GlmmJob(fit, seeds), n, seed, n_jobs,
                                   progress, backend)
    cols = columns(fit)
    df = pd.DataFrame(result, columns=cols)
    df.index.name = "replicate"
    theta = fit.theta
    est = np.concatenate([[fit.objective], fit.beta, theta, theta_to_sdcor(fit, theta, 1.0)])
    df.attrs.update(attrs, estimates=dict(zip(cols, est.tolist())))
    return df
