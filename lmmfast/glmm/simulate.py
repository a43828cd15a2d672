"""Responses simulated from a fitted GLMM, as lme4's ``simulate.merMod`` (docs/theory.md, eq. 91).

With lme4's default ``re.form = NA`` each simulated response draws new
spherical random effects u* ~ N(0, I_q), so that b* = Lambda u* ~
N(0, Lambda Lambda^T), and then the response given b* from the family at

    mu* = g^{-1}(X beta-hat + o + Z Lambda u*)                        (eq. 91)

binomial: m_i y*_i ~ Binomial(m_i, mu*_i) with m_i the prior weights (the
trials of ``cbind``), poisson: y*_i ~ Poisson(mu*_i).  With ``re_form=None``
the random effects are the fitted conditional modes (mu* = fitted values),
as lme4's ``re.form = NULL``.

Column j is drawn with its own generator, seeded by the j-th child of
``numpy.random.SeedSequence(seed)`` (``lmmfast.simulate.spawn_seeds``), so
``bootstrap(n, seed)`` refits exactly the columns of ``simulate(n, seed)``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..arguments import as_count
from ..errors import DataError
from ..formula import split_top
from ..predict import parse_re_form
from ..simulate import spawn_seeds

__all__ = ["GlmmSimulator", "simulate"]

_CBIND = re.compile(r"^cbind\s*\((.*)\)\s*$", re.DOTALL)


def _cbind_columns(response: str) -> list[str] | None:
    """The two expressions of a ``cbind(successes, failures)`` response, else None."""
    m = _CBIND.match(response.strip())
    return None if m is None else [p.strip() for _, p in split_top(m.group(1), ",")]


class GlmmSimulator:
    """Draws responses of a fit (eq. 91) on the scale the model takes them:
    proportions for binomial (successes / trials), counts for poisson."""

    def __init__(self, fit, re_form="NA"):
        mode = fit._require_fit()
        wanted = parse_re_form(re_form)
        if wanted not in (None, ()):
            raise DataError(f"re_form {re_form!r}: simulate() conditions on all the random "
                            "effects (re_form=None) or on none (re_form=NA or '~0')")
        self.new_re = wanted == ()
        d = fit.design
        pirls = fit.pirls
        self.pirls = pirls
        self.family = fit.family
        self.fixed = d.offset + d.x @ mode.beta
        self.eta_modes = pirls.row_values(mode, "eta")
        self.theta = mode.theta
        self.q = int(pirls.q_off[-1])
        self.nobs = d.nobs
        if self.family.name == "binomial":
            size = d.prior_weights
            if (np.abs(size - np.round(size)) > 1e-8).any():
                raise DataError("cannot simulate from non-integer prior weights (the trials "
                                "of a binomial response)")
            self.size = np.round(size).astype(np.int64)

    def mu(self, rng: np.random.Generator) -> np.ndarray:
        """The conditional means of one simulation: new random effects (or the modes)."""
        if self.new_re:
            u = rng.standard_normal(self.q)
            eta = self.fixed + self.pirls.z_lambda_u(u, self.theta)
        else:
            eta = self.eta_modes
        return self.family.linkinv(eta)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One response on the model's scale (a proportion for binomial, counts for poisson)."""
        mu = self.mu(rng)
        if self.family.name == "binomial":
            k = rng.binomial(self.size, mu)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(self.size > 0, k / np.maximum(self.size, 1), 0.0)
        return rng.poisson(mu).astype(np.float64)


def simulate(fit, nsim: int = 1, seed=None, re_form="NA") -> pd.DataFrame:
    """``nsim`` simulated responses (eq. 91), as lme4's ``simulate(fit, nsim, seed)``.

    Returns a DataFrame indexed by the fit's rows with columns ``sim_1``,
    ... ``sim_<nsim>`` as lme4's: proportions for a binomial proportion, 0/1
    or bool response, the response's levels (a categorical column) for a
    factor or string response, counts (integers) for poisson; for a
    ``cbind(successes, failures)`` response, two
    columns per simulation, ``(sim_j, <successes>)`` and ``(sim_j,
    <failures>)`` (a column MultiIndex), as lme4's two-column matrices.
    """
    nsim = as_count(nsim, "nsim")
    seeds = spawn_seeds(seed, nsim)
    sim = GlmmSimulator(fit, re_form)
    out = np.empty((sim.nobs, nsim))
    for j, ss in enumerate(seeds):
        out[:, j] = sim.draw(np.random.default_rng(ss))
    d = fit.design
    names = [f"sim_{j + 1}" for j in range(nsim)]
    index = d.row_index.copy()
    pieces = _cbind_columns(d.response)
    if fit.family.name == "poisson":
        return pd.DataFrame(out.astype(np.int64), index=index, columns=names)
    levels = d.response_levels
    if pieces is None and levels is not None and len(levels) == 2:   # R's factor(1 + y*, labels)
        return pd.DataFrame({name: pd.Categorical.from_codes(out[:, j].astype(np.int8),
                                                             categories=levels)
                             for j, name in enumerate(names)}, index=index)
    if pieces is None:
        return pd.DataFrame(out, index=index, columns=names)
    succ = np.rint(out * sim.size[:, None]).astype(np.int64)
    cols = pd.MultiIndex.from_product([names, pieces])
    both = np.empty((sim.nobs, 2 * nsim), dtype=np.int64)
    both[:, 0::2] = succ
    both[:, 1::2] = sim.size[:, None] - succ
    return pd.DataFrame(both, index=index, columns=cols)
