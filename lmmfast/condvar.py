"""Conditional covariances of the random effects given the data (lme4's ``condVar``).

At the estimates, ``b | y`` is Gaussian with covariance (theory.md, eq. 25)

    Var(b | y) = sigma^2 Lambda (L_Z L_Z^T)^{-1} Lambda^T,

and lme4 reports only its k x k diagonal block of each level of each grouping
factor.  Those blocks are read off the blocked factor L without forming the
q x q inverse (eqs. 60-62).  With term 1 the first term of the internal order
(block-diagonal L_11) and ``tr`` the remaining terms (a dense lower-triangular
L_tr, the off-diagonal block G = L_{tr,1}), write M = L_tr^{-1}:

* trailing terms: (L_Z L_Z^T)^{-1}_{tr,tr} = M^T M, so the block of a level is
  the cross-product of its k columns of M (eq. 60);
* the first term: with Y = M G, the block of level j is
  L_11[j]^{-T} (I + Y_j^T Y_j) L_11[j]^{-1}, Y_j its k columns of Y (eq. 61);
* terms sharing a grouping factor also get their cross blocks (eq. 62).

M costs one triangular inversion of the dense trailing part (the same order of
work as one factorisation), Y one product with the sparse G, done in chunks of
levels so that memory stays bounded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse

from ._factor import BLOCK_SPARSE

__all__ = ["ranef_with_condvar", "condvar_blocks", "spherical_condvar_blocks",
           "factor_condvar_blocks", "scaled_condvar_blocks"]

CHUNK_DOUBLES = 1 << 22   # at most this many doubles of Y at a time


def _bidx(s: int, t: int) -> int:
    return s * (s + 1) // 2 + t


def _block(layout, l_values, s: int, t: int) -> np.ndarray:
    """The flat storage of block (s, t) of L (internal order)."""
    b = _bidx(s, t)
    end = layout.off_l[b + 1] if b + 1 < len(layout.off_l) else layout.n_l
    return l_values[layout.off_l[b]:end]


def _ensure_factor_at_fit(fit) -> None:
    """Make sure the core holds L at the fitted theta (``criterion()`` moves it)."""
    fit._require_fit()
    sol = fit._solution
    if tuple(fit._core.components()) != (sol["ld_l2"], sol["ld_rx2"], sol["pwrss"]):
        info = fit._core.update(fit._to_internal(fit._theta))
        if info != 0:
            raise RuntimeError(f"the Cholesky factor failed at the fitted theta (info {info})")


def _lower_inverse_stack(l: np.ndarray) -> np.ndarray:
    """Inverses of a stack (nl, k, k) of lower-triangular matrices."""
    if l.shape[1] == 1:
        return 1.0 / l
    return np.linalg.inv(l)


def spherical_condvar_blocks(fit) -> tuple[dict[int, np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """``factor_condvar_blocks`` of a fitted LMM, its factor at the fitted theta."""
    _ensure_factor_at_fit(fit)
    return factor_condvar_blocks(fit._layout, fit._core.l_values, fit.remats, fit._internal)


def factor_condvar_blocks(layout, l_values, remats, internal) -> tuple[
        dict[int, np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """Diagonal level blocks of (L_Z L_Z^T)^{-1}, the conditional covariance of u / sigma^2,
    from the blocked factor's ``layout`` and values ``l_values``.

    Returns ``(diag, cross)`` in lme4 term order (``remats``; ``internal`` maps
    the factor's term positions to them): ``diag[i]`` is an array
    (nl, k_i, k_i) with the block of each level of term i (eqs. 60, 61);
    ``cross[(i, j)]`` (nl, k_i, k_j), for terms i != j with the same grouping
    factor, the block between their effects of the same level (eq. 62).
    """
    inner = [remats[i] for i in internal]
    T = len(inner)
    nl = [r.nlevels for r in inner]
    k = [r.k for r in inner]
    q = [r.q for r in inner]
    same = {(s, t) for s in range(T) for t in range(T)
            if s != t and inner[s].group == inner[t].group}

    diag_i: dict[int, np.ndarray] = {}
    cross_i: dict[tuple[int, int], np.ndarray] = {}

    # term 0: block-diagonal L_11, stored level by level, each k x k column-major
    l0 = np.asarray(_block(layout, l_values, 0, 0)).reshape(nl[0], k[0], k[0]).transpose(0, 2, 1)
    inv0 = _lower_inverse_stack(np.tril(l0) if k[0] > 1 else l0)
    if T == 1:
        diag_i[0] = inv0.transpose(0, 2, 1) @ inv0
        return _to_lme4(internal, diag_i, cross_i)

    # the dense trailing part L_tr and M = L_tr^{-1} (eq. 60)
    off = np.concatenate([[0], np.cumsum(q[1:])]).astype(np.int64)   # offsets of terms 1..T-1
    qt = int(off[-1])
    ltr = np.zeros((qt, qt), order="F")
    for s in range(1, T):
        for t in range(1, s + 1):
            blk = np.asarray(_block(layout, l_values, s, t)).reshape(q[s], q[t], order="F")
            if s == t:
                blk = np.tril(blk)
            ltr[off[s - 1]:off[s], off[t - 1]:off[t]] = blk
    m, info = scipy.linalg.lapack.dtrtri(ltr, lower=1)
    if info != 0:
        raise RuntimeError(f"the trailing block of L is singular (info {info})")
    m = np.tril(m)
    mt = np.ascontiguousarray(m.T)            # row i of mt = column i of M

    def cols(t):                               # columns of M of term t, per level: (nl, k, rows)
        a, b = off[t - 1], off[t]
        return mt[a:b, a:].reshape(nl[t], k[t], qt - a), a

    for t in range(1, T):
        ct, a = cols(t)
        diag_i[t] = np.einsum("lai,lbi->lab", ct, ct)
        for s in range(t + 1, T):
            if (s, t) in same:
                cs, a_s = cols(s)
                cross_i[(s, t)] = np.einsum("lai,lbi->lab", cs, ct[:, :, a_s - a:])

    # G = L_{tr,0} by blocks: scipy sparse (from SPARSE blocks) or dense
    g_blocks = []
    for s in range(1, T):
        b = _bidx(s, 0)
        flat = np.asarray(_block(layout, l_values, s, 0))
        if layout.kind_l[b] == BLOCK_SPARSE:
            colptr, rowidx = layout.pattern(s)
            nnz = len(rowidx)
            vals = flat[:nnz * k[s] * k[0]].reshape(nnz, k[0], k[s])      # [e, c, a]
            lev_col = np.repeat(np.arange(nl[0]), np.diff(colptr))
            ai, ci = np.meshgrid(np.arange(k[s]), np.arange(k[0]), indexing="ij")
            rows = (rowidx[:, None, None] * k[s] + ai[None]).ravel()
            cols_ = (lev_col[:, None, None] * k[0] + ci[None]).ravel()
            data = vals.transpose(0, 2, 1).ravel()
            gs = scipy.sparse.csc_matrix((data, (rows, cols_)), shape=(q[s], q[0]))
            g_blocks.append(("sparse", s, gs))
        else:
            g_blocks.append(("dense", s, flat.reshape(q[s], q[0], order="F")))

    # Y = M G in chunks of term-0 levels; Y^T is stored (levels*k0, rows) (eq. 61)
    diag0 = np.empty((nl[0], k[0], k[0]))
    cross0 = {s: np.empty((nl[0], k[s], k[0])) for s in range(1, T) if (s, 0) in same}
    step = max(1, CHUNK_DOUBLES // max(1, k[0] * qt))
    eye = np.eye(k[0])
    for lo in range(0, nl[0], step):
        hi = min(nl[0], lo + step)
        c0, c1 = lo * k[0], hi * k[0]
        yt = np.zeros((c1 - c0, qt))
        for kind, s, gs in g_blocks:
            a = off[s - 1]
            part = gs[:, c0:c1]
            if kind == "sparse":
                yt[:, a:] += np.asarray(part.T.tocsr() @ mt[a:off[s], a:])
            else:
                yt[:, a:] += part.T @ mt[a:off[s], a:]
        yr = yt.reshape(hi - lo, k[0], qt)
        inner_prod = np.einsum("lai,lbi->lab", yr, yr) + eye
        iv = inv0[lo:hi]
        diag0[lo:hi] = iv.transpose(0, 2, 1) @ inner_prod @ iv
        for s in cross0:
            cs, a_s = cols(s)
            cross0[s][lo:hi] = -np.einsum("lai,lbi->lab", cs[lo:hi], yr[:, :, a_s:]) @ iv
    diag_i[0] = diag0
    for s, c in cross0.items():
        cross_i[(s, 0)] = c
    return _to_lme4(internal, diag_i, cross_i)


def _to_lme4(perm, diag_i, cross_i):
    """Re-key blocks from internal term positions to lme4 term indices (``perm``)."""
    diag = {perm[t]: v for t, v in diag_i.items()}
    cross = {}
    for (s, t), v in cross_i.items():
        cross[(perm[s], perm[t])] = v
        cross[(perm[t], perm[s])] = v.transpose(0, 2, 1)
    return diag, cross


def condvar_blocks(fit) -> dict[str, np.ndarray]:
    """Conditional covariance Var(b | y) of each level's random effects, per grouping factor.

    ``sigma^2 lambda_i S_ij lambda_j^T`` (eq. 25) for the terms i, j of the
    grouping factor, with S the blocks of (L_Z L_Z^T)^{-1} from
    :func:`spherical_condvar_blocks`.  Returns ``{group: array (nl, K, K)}``,
    K the total number of columns of the factor's terms in lme4 order (the
    columns of ``fit.ranef()[group]``).  Terms that share a grouping factor
    (from ``||``) are uncorrelated a priori but not given y: their cross
    blocks are included, whereas lme4 reports one array per term, which are
    the diagonal sub-blocks of this one.
    """
    diag, cross = spherical_condvar_blocks(fit)
    return scaled_condvar_blocks(diag, cross, fit.remats, fit._theta, fit.sigma ** 2)


def scaled_condvar_blocks(diag, cross, remats, theta: np.ndarray,
                          sigma2: float) -> dict[str, np.ndarray]:
    """``condvar_blocks`` from the spherical blocks ``(diag, cross)`` (lme4 term
    order) at ``theta`` (lme4 order) and sigma^2 (eq. 25)."""
    theta_split = np.split(np.asarray(theta, dtype=np.float64),
                           np.cumsum([r.n_theta for r in remats])[:-1])
    lams = [r.lambda_(th) for r, th in zip(remats, theta_split)]
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(remats):
        groups.setdefault(r.group, []).append(i)
    out: dict[str, np.ndarray] = {}
    for g, idx in groups.items():
        ks = [remats[i].k for i in idx]
        pos = np.concatenate([[0], np.cumsum(ks)])
        v = np.zeros((remats[idx[0]].nlevels, pos[-1], pos[-1]))
        for a, i in enumerate(idx):
            for b, j in enumerate(idx):
                s = diag[i] if i == j else cross[(i, j)]
                v[:, pos[a]:pos[a + 1], pos[b]:pos[b + 1]] = sigma2 * (lams[i] @ s @ lams[j].T)
        out[g] = 0.5 * (v + v.transpose(0, 2, 1))
    return out


def ranef_with_condvar(fit) -> dict[str, pd.DataFrame]:
    """``fit.ranef()`` with lme4's conditional variances attached (``ranef(fit, condVar = TRUE)``).

    Each frame (levels x columns, the conditional modes of eq. 22) carries
    ``.attrs["condvar"]``, an array (levels, K, K) of the conditional
    covariance matrices Var(b_j | y) of its levels (eq. 25; see
    :func:`condvar_blocks` for factors with several terms), and
    ``.attrs["condsd"]``, a frame like the modes with the square roots of
    their diagonals, lme4's conditional standard deviations.
    """
    frames = fit.ranef()
    blocks = condvar_blocks(fit)
    out: dict[str, pd.DataFrame] = {}
    for g, df in frames.items():
        df = df.copy()
        v = blocks[g]
        sd = np.sqrt(np.clip(np.diagonal(v, axis1=1, axis2=2), 0.0, None))
        df.attrs["condvar"] = v
        df.attrs["condsd"] = pd.DataFrame(sd, index=df.index.copy(), columns=list(df.columns))
        out[g] = df
    return out
