"""The working basis of A: [X y] replaced by [X M, y - X gamma], applied to A in
double-double before it is rounded.

A response or covariate far from zero relative to its spread (y + 1e7, a year
in an interaction) makes the Cholesky factor of A cancel most of its digits
(theory.md, "The working basis").  ``condition`` changes the variables so that
X's columns are orthogonal and y is orthogonal to them (eq. 72); theta, sigma
and the criterion do not change, and beta and L_XX map back exactly (eqs. 73,
74).  Each step acts only where it removes at least ``CENTRE_RATIO`` of
magnitude; for most models the basis is the identity and A is rounded as
accumulated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import lapack, solve_triangular

from . import _crossprod

__all__ = ["WorkingBasis", "condition", "digits_lost", "CENTRE_RATIO", "DIGITS_TOL"]

CENTRE_RATIO = 1e3   # magnitude a step must remove: A's diagonal over what the factor keeps of it
DIGITS_TOL = 1e-8    # relative accuracy below which a fit warns of lost digits
MAX_PASSES = 3       # passes of each step (each removes what rounding left of the last)


@dataclass(frozen=True)
class WorkingBasis:
    """[X_w y_w] = [X M, y - offset - X gamma], M unit upper triangular (eq. 72).

    ``yty`` is y'W y before the change (for the exact-fit check on A alone).
    """

    m: np.ndarray
    gamma: np.ndarray
    yty: float = np.nan
    identity: bool = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "identity", not self.gamma.any() and _is_eye(self.m))

    def x_work(self, x: np.ndarray) -> np.ndarray:
        """X M, the rows of X in the working basis."""
        if _is_eye(self.m):
            return x
        return np.ascontiguousarray(x @ self.m)

    def offset_work(self, x: np.ndarray, offset: np.ndarray | None) -> np.ndarray | None:
        """offset + X gamma, what a new response loses before it enters A."""
        if not self.gamma.any():
            return offset
        shift = x @ self.gamma
        return shift if offset is None else offset + shift

    def beta(self, beta_w: np.ndarray) -> np.ndarray:
        """beta = M beta_w + gamma (eq. 73)."""
        return self.m @ beta_w + self.gamma

    def lxx(self, lxx_w: np.ndarray) -> np.ndarray:
        """[L_XX, 0; l^T, r] in X's own basis from the working one's:
        L_XX = M^-T L_XX,w and l = l_w + L_XX^T gamma (eq. 74)."""
        if self.identity:
            return lxx_w
        p = len(self.gamma)
        out = np.array(lxx_w)
        out[:p, :p] = solve_triangular(self.m, lxx_w[:p, :p], trans="T", lower=False,
                                       unit_diagonal=True)
        out[p, :p] = lxx_w[p, :p] + out[:p, :p].T @ self.gamma
        return out


def _is_eye(m: np.ndarray) -> bool:
    """m is the identity matrix."""
    return bool((m.diagonal() == 1.0).all() and np.count_nonzero(m) == len(m))


def _transform(acc: np.ndarray, layout, t: np.ndarray) -> None:
    """A's double-double accumulator in the basis [X y] t: the last block row
    (Z_t^T W [X y] and [X y]^T W [X y]) multiplied by t^T, and by t on the right."""
    T, p1 = layout.n_terms, layout.p1
    for s in range(T):
        b = T * (T + 1) // 2 + s
        _crossprod.dd_left_multiply(acc, int(layout.off_a[b]), p1,
                                    int(layout.nlev[s] * layout.k[s]), t)
    # [X y]^T W [X y]: its lower triangle made whole, t^T S, transposed, t^T (t^T S)^T
    off = int(layout.off_a[(T + 1) * (T + 2) // 2 - 1])
    block = acc[off:off + p1 * p1]
    full = block.reshape(p1, p1, 2).transpose(1, 0, 2).copy()   # [i, j] = entry (i, j)
    low = np.tril_indices(p1)
    full[low[1], low[0]] = full[low]                             # the upper triangle
    work = np.ascontiguousarray(full.transpose(1, 0, 2).reshape(-1, 2))   # column-major
    _crossprod.dd_left_multiply(work, 0, p1, p1, t)
    work = np.ascontiguousarray(work.reshape(p1, p1, 2).transpose(1, 0, 2).reshape(-1, 2))
    _crossprod.dd_left_multiply(work, 0, p1, p1, t)
    out = work.reshape(p1, p1, 2)             # [j, i] = entry (i, j), column-major
    out[np.tril_indices(p1, -1)] = 0.0        # entries (i, j), i < j: not kept
    block[:] = work


def _xy_block(layout, a: np.ndarray) -> np.ndarray:
    """[X y]^T W [X y] (p1 x p1, symmetric) from the rounded A."""
    T, p1 = layout.n_terms, layout.p1
    s = layout.block_a(a, T, T).reshape(p1, p1).T.copy()   # lower triangle: entry (i, j), i >= j
    upper = _upper_indices(p1)
    s[upper] = s.T[upper]
    return s


@functools.lru_cache(maxsize=64)
def _upper_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the strict upper triangle of an n x n matrix."""
    return np.triu_indices(n, 1)


def _pivot_ratios(s: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """The Cholesky factor R (upper) of s and the ratios s_jj / R_jj^2 (inf where
    the factorisation fails)."""
    try:
        r = np.linalg.cholesky(s).T
    except np.linalg.LinAlgError:
        return None, np.full(len(s), np.inf)
    with np.errstate(divide="ignore"):
        return r, s.diagonal() / r.diagonal() ** 2


def condition(layout, acc: np.ndarray, names: list[str]) -> tuple[np.ndarray, WorkingBasis]:
    """A rounded from its double-double accumulator ``acc`` (changed in place)
    in the working basis, and that basis (eq. 72)."""
    p1 = layout.p1
    p = p1 - 1
    total = None

    def apply(t: np.ndarray) -> np.ndarray:
        nonlocal total
        _transform(acc, layout, t)
        total = t if total is None else total @ t
        return _xy_block(layout, _crossprod.dd_round(acc))

    a = _crossprod.dd_round(acc)
    s = _xy_block(layout, a)
    yty = float(s[p, p])
    # 1. columns centred on the intercept, where their mean dwarfs their spread
    if p > 1 and names and names[0] == "(Intercept)" and s[0, 0] > 0:
        mean = s[0, 1:p] / s[0, 0]
        spread = np.maximum(s.diagonal()[1:p] / s[0, 0] - mean ** 2, 0.0)
        centre = np.where(mean ** 2 > CENTRE_RATIO * spread, mean, 0.0)
        if centre.any():
            t = np.eye(p1)
            t[0, 1:p] = -centre
            s = apply(t)
    # 2. X's columns orthogonalised, X M with M = U^-1 of X'WX = R'R, R = D U
    r, ratios = _pivot_ratios(s[:p, :p])
    for _ in range(MAX_PASSES if p > 1 else 0):
        if r is None or not ratios.max() > CENTRE_RATIO:
            break
        t = np.eye(p1)
        t[:p, :p] = solve_triangular(r / r.diagonal()[:, None], np.eye(p), lower=False,
                                     unit_diagonal=True)
        s = apply(t)
        r, ratios = _pivot_ratios(s[:p, :p])
    # 3. y less its least-squares fit on X
    for _ in range(MAX_PASSES if p and r is not None else 0):
        step, _ = lapack.dpotrs(r, s[:p, p], lower=0)   # R'R step = X'W y
        rss = s[p, p] - float(s[:p, p] @ step)
        if not np.isfinite(step).all() or not (rss <= 0 or s[p, p] > CENTRE_RATIO * rss):
            break
        t = np.eye(p1)
        t[:p, p] = -step
        s = apply(t)   # (X's part, and so r, stays as it was)
    if total is None:
        return a, WorkingBasis(np.eye(p), np.zeros(p), yty)
    return _crossprod.dd_round(acc), WorkingBasis(total[:p, :p], -total[:p, p], yty)


def digits_lost(lxx: np.ndarray, a_diag: np.ndarray) -> float:
    """The largest relative error that cancellation leaves in a pivot of L_XX or
    in r^2: machine epsilon times A's diagonal over the pivot's square (eq. 75)."""
    pivots = lxx.diagonal() ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(pivots > 0, a_diag / pivots, np.inf)
    return float(np.finfo(float).eps * ratios.max()) if len(ratios) else 0.0
