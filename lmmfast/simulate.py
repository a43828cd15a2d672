"""Responses simulated from a fitted model, as lme4's ``simulate`` (theory.md, eq. 48).

By default every simulated response draws new random effects and new noise
at the estimates (lme4's default ``re.form = NA``):

    y* = X beta-hat + o + Z Lambda_theta-hat sigma-hat u* + sigma-hat W^{-1/2} e*,
    u* ~ N(0, I_q), e* ~ N(0, I_n)                                         (eq. 48)

so that b* = sigma-hat Lambda u* ~ N(0, sigma-hat^2 Lambda Lambda^T) as in
eq. (1).  With ``use_re=False`` the random effects are not drawn: the fitted
conditional modes b-tilde (eq. 22) are used instead, y* = fitted + noise
(lme4's ``use.u = TRUE``).

Column j is drawn with its own generator, seeded by the j-th child of
``numpy.random.SeedSequence(seed)``; ``bootstrap(fit, n, seed)`` refits to
exactly the columns of ``simulate(fit, n, seed)``.
"""

from __future__ import annotations

import numpy as np

from .arguments import as_count, as_flag, describe
from .errors import DataError
from .design.rows import require_rows

__all__ = ["simulate", "Simulator", "spawn_seeds", "seed_sequence"]


def seed_sequence(seed) -> np.random.SeedSequence:
    """The SeedSequence of ``seed``: None, a non-negative int or sequence of them, a
    SeedSequence or a numpy Generator (which draws the entropy); a DataError otherwise."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(2 ** 63)))
    if not isinstance(seed, (bool, np.bool_, str, bytes, float, np.floating)):
        try:
            return np.random.SeedSequence(seed)
        except (TypeError, ValueError):
            pass
    raise DataError(f"seed must be None, a non-negative integer (or a sequence of them), a "
                    f"numpy SeedSequence or a numpy Generator, got {describe(seed)}")


def spawn_seeds(seed, n: int) -> list[np.random.SeedSequence]:
    """``n`` independent child seeds of ``seed`` (see ``seed_sequence``)."""
    base = seed_sequence(seed)
    if base is seed:   # a copy: spawning advances the caller's SeedSequence
        base = np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key,
                                      pool_size=seed.pool_size)
    return base.spawn(int(n))


class Simulator:
    """Draws responses from a fit (eq. 48), with the fit's design and estimates fixed once."""

    def __init__(self, fit, use_re: bool = True, what: str = "simulate()"):
        fit._require_fit()
        self.use_re = as_flag(use_re, "use_re")
        if self.use_re or getattr(fit, "_ddf", None) is not None:
            require_rows(fit, what)
        sigma = fit.sigma
        if self.use_re:
            mean = fit.x @ fit.fixef.to_numpy()
            if fit.offset is not None:
                mean = mean + fit.offset
            theta = fit.theta.to_numpy()
            split = np.split(theta, np.cumsum([r.n_theta for r in fit.remats])[:-1])
            self.terms = [(r.refs, r.z, r.nlevels, r.k, sigma * r.lambda_(t).T)
                          for r, t in zip(fit.remats, split)]
        else:
            mean = np.array(fit.fitted, dtype=np.float64)
            self.terms = []
        self.mean = np.ascontiguousarray(mean, dtype=np.float64)
        self.noise_sd = (sigma / np.sqrt(fit.weights) if fit.weights is not None
                         else np.float64(sigma))
        self.nobs = fit.nobs

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One response: random effects (term by term, level by level) first, then the noise."""
        y = self.mean.copy()
        for refs, z, nl, k, lam_t in self.terms:
            b = rng.standard_normal((nl, k)) @ lam_t          # rows: b_j = sigma lambda u_j
            if k == 1:
                y += z[:, 0] * b[refs, 0]
            else:
                y += np.einsum("ij,ij->i", z, b[refs])
        y += self.noise_sd * rng.standard_normal(self.nobs)
        return y


def simulate(fit, n: int = 1, seed=None, use_re: bool = True) -> np.ndarray:
    """Simulated responses, an ``nobs x n`` array (eq. 48; lme4's ``simulate(fit, nsim = n)``).

    Parameters
    ----------
    fit : LinearMixedModel
        A fitted model; its estimates (REML or ML) are the true values.
    n : int
        Number of responses.
    seed : int, SeedSequence, Generator or None
        Column j uses the j-th child of ``SeedSequence(seed)``.
    use_re : bool
        True (default, lme4's ``re.form = NA``): new random effects
        b* ~ N(0, sigma^2 Lambda Lambda^T) in every column.  False: the fitted
        conditional modes instead of new random effects (lme4's ``use.u = TRUE``),
        i.e. fitted values plus noise.
    """
    n = as_count(n, "n")
    seeds = spawn_seeds(seed, n)
    sim = Simulator(fit, use_re=use_re)
    out = np.empty((fit.nobs, n))
    for j, ss in enumerate(seeds):
        out[:, j] = sim.draw(np.random.default_rng(ss))
    return out
