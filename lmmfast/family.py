"""GLM families and links, as R's ``binomial()`` and ``poisson()``.

A ``Family`` gives what penalised iteratively re-weighted least squares
needs of a response distribution: the link g and
its inverse, dmu/deta, the variance function V(mu), the unit deviances and
R's ``aic`` term, and R's starting values.  Each function follows R's
definition, including its clamps near the ends of the scale, so deviances
match R's to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special, stats

from . import _pirls
from .errors import DataError

__all__ = ["Family", "Link", "family", "FAMILIES", "LINKS"]

EPS = np.finfo(np.float64).eps
THRESH = 30.0                      # |eta| beyond which R clamps the logit link
PROBIT_THRESH = -special.ndtri(EPS)
CAUCHIT_THRESH = -stats.cauchy.ppf(EPS)


@dataclass(frozen=True)
class Link:
    """A link function g (eta = g(mu)) with its inverse and d mu / d eta."""

    name: str
    linkfun: Callable[[np.ndarray], np.ndarray]
    linkinv: Callable[[np.ndarray], np.ndarray]
    mu_eta: Callable[[np.ndarray], np.ndarray]
    positive_eta: bool = False     # eta must be > 0 (the sqrt link)

    def valid_eta(self, eta: np.ndarray) -> bool:
        eta = np.asarray(eta, dtype=np.float64)
        return bool(np.isfinite(eta).all() and (not self.positive_eta or (eta > 0).all()))


def _logit_linkinv(eta):
    e = np.exp(np.clip(eta, -THRESH, THRESH))
    e = np.where(eta < -THRESH, EPS, np.where(eta > THRESH, 1.0 / EPS, e))
    return e / (1.0 + e)


def _logit_mu_eta(eta):
    e = np.exp(np.clip(eta, -THRESH, THRESH))
    return np.where(np.abs(eta) > THRESH, EPS, e / ((1.0 + e) * (1.0 + e)))


def _norm_pdf(eta):
    """The standard normal density (``scipy.stats.norm.pdf``'s formula, without its
    argument checks)."""
    eta = np.asarray(eta, dtype=np.float64)
    return np.exp(-eta ** 2 / 2.0) / np.sqrt(2.0 * np.pi)


def _cauchy_pdf(eta):
    """The standard Cauchy density (``scipy.stats.cauchy.pdf``'s formula)."""
    eta = np.asarray(eta, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / np.pi / (1.0 + eta * eta)


def _cloglog_mu_eta(eta):
    e = np.minimum(eta, 700.0)
    return np.maximum(np.exp(e) * np.exp(-np.exp(e)), EPS)


LINKS: dict[str, Link] = {
    "logit": Link("logit", lambda mu: np.log(mu / (1.0 - mu)), _logit_linkinv, _logit_mu_eta),
    "probit": Link("probit", special.ndtri,
                   lambda eta: special.ndtr(np.clip(eta, -PROBIT_THRESH, PROBIT_THRESH)),
                   lambda eta: np.maximum(_norm_pdf(eta), EPS)),
    "cloglog": Link("cloglog", lambda mu: np.log(-np.log(1.0 - mu)),
                    lambda eta: np.clip(-np.expm1(-np.exp(eta)), EPS, 1.0 - EPS),
                    _cloglog_mu_eta),
    "cauchit": Link("cauchit", stats.cauchy.ppf,
                    lambda eta: np.arctan2(1.0, -np.clip(eta, -CAUCHIT_THRESH,
                                                         CAUCHIT_THRESH)) / np.pi,
                    lambda eta: np.maximum(_cauchy_pdf(eta), EPS)),
    "log": Link("log", np.log, lambda eta: np.maximum(np.exp(eta), EPS),
                lambda eta: np.maximum(np.exp(eta), EPS)),
    "identity": Link("identity", lambda mu: np.asarray(mu, dtype=np.float64),
                     lambda eta: np.asarray(eta, dtype=np.float64),
                     lambda eta: np.ones_like(np.asarray(eta, dtype=np.float64))),
    "sqrt": Link("sqrt", np.sqrt, lambda eta: np.asarray(eta, dtype=np.float64) ** 2,
                 lambda eta: 2.0 * np.asarray(eta, dtype=np.float64), positive_eta=True),
}


def _y_log_y(y, mu):
    """y log(y / mu), 0 where y = 0 (R's binomial deviance helper)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu), 0.0)


def _binomial_dev_resids(y, mu, wt):
    return 2.0 * wt * (_y_log_y(y, mu) + _y_log_y(1.0 - y, 1.0 - mu))


def _poisson_dev_resids(y, mu, wt):
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = wt * (y * np.log(np.where(y > 0, y, 1.0) / mu) - (y - mu))
    return 2.0 * np.where(y > 0, pos, mu * wt)


def _binomial_aic(y, n, mu, wt):
    """R's ``binomial()$aic``: -2 sum (wt/m) log dbinom(m y; m, mu), m the trials
    (n where any n > 1, else wt)."""
    return _binomial_aic_m(y, n if (np.asarray(n) > 1).any() else wt, mu, wt)


def _binomial_aic_m(y, m, mu, wt):
    """-2 sum (wt/m) log dbinom(round(m y); round(m), mu), compiled (``_pirls.aic_sum``)."""
    return _pirls.aic_sum(0, *_rows(y, m, mu, wt))


def _poisson_aic(y, n, mu, wt):
    """R's ``poisson()$aic``: -2 sum wt log dpois(y; mu), compiled (``_pirls.aic_sum``)."""
    return _pirls.aic_sum(1, *_rows(y, y, mu, wt))


def _rows(*values) -> list[np.ndarray]:
    """The values as contiguous float64 arrays of one length (scalars broadcast)."""
    return [np.ascontiguousarray(v, dtype=np.float64) for v in np.broadcast_arrays(*values)]


@dataclass(frozen=True)
class Family:
    """A response distribution with its link (R's ``family`` object)."""

    name: str
    link: Link
    variance: Callable[[np.ndarray], np.ndarray]
    dev_resids: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    aic_fn: Callable
    canonical: str

    def linkfun(self, mu):
        return self.link.linkfun(np.asarray(mu, dtype=np.float64))

    def linkinv(self, eta):
        return self.link.linkinv(np.asarray(eta, dtype=np.float64))

    def mu_eta(self, eta):
        return self.link.mu_eta(np.asarray(eta, dtype=np.float64))

    def aic(self, y, n, mu, wt) -> float:
        """R's ``family$aic(y, n, mu, wt)``: -2 log-likelihood of the response."""
        return self.aic_fn(*(np.asarray(v, dtype=np.float64) for v in (y, n, mu, wt)))

    def aic_rows(self, y, m, mu, wt) -> float:
        """``aic``'s sum over some of the rows, with the binomial's trials ``m`` as
        ``aic`` takes them from all rows (n where any n > 1, else wt)."""
        if self.name == "binomial":
            return _binomial_aic_m(y, m, mu, wt)
        return self.aic(y, m, mu, wt)

    def valid_mu(self, mu) -> bool:
        mu = np.asarray(mu, dtype=np.float64)
        ok = np.isfinite(mu).all() and (mu > 0).all()
        return bool(ok and (self.name != "binomial" or (mu < 1).all()))

    def mustart(self, y, weights) -> np.ndarray:
        """R's starting means: (w y + 1/2) / (w + 1) for binomial, y + 1/10 for poisson."""
        y = np.asarray(y, dtype=np.float64)
        if self.name == "binomial":
            w = np.asarray(weights, dtype=np.float64)
            return (w * y + 0.5) / (w + 1.0)
        return y + 0.1

    def __str__(self) -> str:
        return f"{self.name}({self.link.name})"


_FAMILIES = {
    "binomial": (("logit", "probit", "cloglog", "cauchit"),
                 lambda mu: mu * (1.0 - mu), _binomial_dev_resids, _binomial_aic, "logit"),
    "poisson": (("log", "identity", "sqrt"), lambda mu: np.asarray(mu, dtype=np.float64),
                _poisson_dev_resids, _poisson_aic, "log"),
}
FAMILIES = {name: spec[0] for name, spec in _FAMILIES.items()}


def family(spec, link: str | None = None) -> Family:
    """The Family of ``spec``: a name (``"binomial"``), a ``(name, link)`` pair,
    or a Family; ``link`` overrides the default (canonical) link."""
    if isinstance(spec, Family):
        return spec if link is None else family(spec.name, link)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        if link is not None:
            raise DataError("family: give the link once, in the pair or as link=")
        spec, link = spec
    if not isinstance(spec, str) or spec.lower() not in _FAMILIES:
        raise DataError(f"family {spec!r} is not available: use one of "
                        f"{', '.join(map(repr, _FAMILIES))}")
    name = spec.lower()
    links, variance, dev_resids, aic_fn, canonical = _FAMILIES[name]
    link = canonical if link is None else link
    if not isinstance(link, str) or link not in links:
        raise DataError(f"link {link!r} is not available for the {name} family: use one of "
                        f"{', '.join(map(repr, links))}")
    return Family(name, LINKS[link], variance, dev_resids, aic_fn, canonical)
