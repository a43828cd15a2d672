"""The fixed-effects model matrix X with the response y, and X's rank check.

X is built by formulaic from the fixed part of the formula on the model
frame, with R's treatment contrasts and column names in lme4's spelling.  A
rank-deficient X loses the columns that are (numerically) linear
combinations of earlier ones, with a warning naming them, as lme4 does
(``chkRank.drop.cols``: a QR decomposition with R's limited pivoting keeps
the earlier of two collinear columns).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.linalg.lapack import dgeqrf, dgeqrt, dormqr

from .. import _crossprod
from ..errors import DataError, RankDeficiencyWarning
from ..formula import ParsedFormula, response_code
from .materialize import design_matrix
from .crossprod import row_chunks
from .frame import Columns

__all__ = ["XyMat", "build_xymat", "independent_columns", "merge_repeated_rows", "r_diagonal",
           "fixed_matrix", "r_factor", "response_vector", "warn_dropped"]

RANK_TOL = 1e-7  # lme4's default tolerance for the rank of X


@dataclass
class XyMat:
    """Fixed-effects matrix (full column rank) and the response."""

    x: np.ndarray          # n x p, float64
    y: np.ndarray          # n, float64 (offset not subtracted)
    names: list[str]       # lme4 names of X's columns, e.g. ["(Intercept)", "Days"]
    dropped: list[str]     # columns removed for rank deficiency
    response: str          # the response as written
    spec: object = None    # formulaic's ModelSpec of X, when formulaic built it


def r_diagonal(chunks, p: int) -> np.ndarray:
    """|R_jj| of the QR decomposition of the rows stacked from ``chunks`` (each n_i x p).

    Fewer rows than columns give zeros for the missing diagonal entries.
    """
    rows = reduced_rows(chunks, p)
    # R's diagonal as LAPACK leaves it, without forming R
    diag = np.abs(_householder(rows).diagonal()) if len(rows) else np.zeros(0)
    return np.concatenate([diag, np.zeros(p - len(diag))]) if len(diag) < p else diag


def reduced_rows(chunks, p: int) -> np.ndarray:
    """Rows with the R of the rows stacked from ``chunks`` (each n_i x p), at
    most the last chunk's and p more.

    Tall-skinny QR: R of [R_previous; chunk], one chunk at a time, so memory
    stays at one chunk however many rows there are.  Each chunk's repeated
    rows are merged first (``merge_repeated_rows``).
    """
    pending = np.zeros((0, p))
    for chunk in chunks:
        chunk = merge_repeated_rows(chunk)
        if len(pending):   # fold the rows so far into their R
            chunk = np.vstack([np.triu(_householder(pending)[:p]), chunk])
        pending = chunk
    return pending


def merge_repeated_rows(a: np.ndarray) -> np.ndarray:
    """Rows with the same R as ``a`` (n x p, up to the signs of R's rows), fewer
    when many rows agree in their first p - 1 columns (X of factors only, or
    [X y] for such an X).

    The c rows of a group equal in those columns, [u, y_i], are rotated
    (orthogonally) into one row sqrt(c) [u, mean(y)] and c - 1 rows that are
    zero but for the deviations of y from its group mean; the deviations of
    all groups then fold into one row [0, ..., 0, sqrt(sum of their squares)].
    Zero rows pad the result to p rows.  ``a`` itself is returned when that
    would not at least halve the rows.
    """
    n, p = a.shape
    if p <= SMALL_QR_COLUMNS or n < 2 * p:
        return a
    key = a[:, :-1]
    # group by a random projection of the row, then check the groups row by row
    weights = np.random.default_rng(20_000).normal(size=p - 1)
    _, first, group, counts = np.unique(key @ weights, return_index=True,
                                        return_inverse=True, return_counts=True)
    g = len(first)
    if g > n // 2:
        return a
    for start in range(0, n, MERGE_CHECK_ROWS):
        stop = min(n, start + MERGE_CHECK_ROWS)
        if not np.array_equal(key[start:stop], key[first[group[start:stop]]]):
            return a   # two different rows projected alike
    last = np.ascontiguousarray(a[:, -1])
    means = np.bincount(group, weights=last, minlength=g) / counts
    dev = last - means[group]
    root = np.sqrt(counts)
    # at least p rows: a column dependent on earlier ones still takes a row of R
    out = np.zeros((max(g + 1, p), p))
    np.multiply(key[first], root[:, None], out=out[:g, :-1])
    out[:g, -1] = means * root
    out[g, -1] = np.sqrt(dev @ dev)
    return out


MERGE_CHECK_ROWS = 4096   # rows per block when checking the merged groups
SMALL_QR_COLUMNS = 16   # up to this many columns, QR by the compiled loop
QR_BLOCK = 128          # columns per block of LAPACK's dgeqrt


def _householder(a: np.ndarray) -> np.ndarray:
    """QR of ``a`` (a copy): R on and above the diagonal.  A few columns by
    ``_crossprod.householder_r``, more by LAPACK's dgeqrt (dgeqrf's reflections,
    its panels by the recursive, matrix-product QR: a few times faster for
    hundreds of columns)."""
    if a.shape[1] <= SMALL_QR_COLUMNS:
        qr = np.array(a, dtype=np.float64, order="C")
        _crossprod.householder_r(qr)
        return qr
    if min(a.shape) == 0:
        return np.array(a, dtype=np.float64)
    qr, _, info = dgeqrt(min(QR_BLOCK, *a.shape), np.asarray(a, dtype=np.float64))
    if info != 0:
        raise np.linalg.LinAlgError(f"dgeqrt failed (info = {info})")
    return qr


def r_factor(chunks, p: int) -> np.ndarray:
    """R (at most p x p, upper triangular) of the QR decomposition of the rows stacked
    from ``chunks`` (each n_i x p): X's rank check from pieces of rows, since R of
    [R_1; R_2] is R of [X_1; X_2] (up to the signs of its rows)."""
    rows = reduced_rows(chunks, p)
    if not len(rows):
        return np.zeros((0, p))
    return np.triu(_householder(rows)[:p])


def independent_columns(x: np.ndarray, tol: float = RANK_TOL) -> np.ndarray:
    """Indices of the columns kept by a left-to-right QR with R's limited pivoting.

    ``x`` is X, or the R of X's QR decomposition (``r_factor``): the same columns.

    A column is dropped when its norm after projection on the earlier columns is
    below ``tol`` times its original norm (LINPACK ``dqrdc2``, used by R's ``qr``).
    Up to the first dropped column, that norm is |R_jj| of the QR decomposition
    without pivoting; a dropped column is then moved out of the way, as
    ``dqrdc2`` moves it to the end, so that its rounding noise takes no row
    from the later columns (``_limited_pivoting``).
    """
    n, p = x.shape
    if p == 0:
        return np.zeros(0, dtype=np.intp)
    norms = np.sqrt(np.einsum("ij,ij->j", x, x))
    scale = np.where(norms > 0, norms, 1.0)
    # columns at unit norm, so that |R_jj| is the ratio
    rows = reduced_rows((chunk / scale for chunk in row_chunks(x)), p)
    diag = np.abs(_householder(rows).diagonal()) if len(rows) else np.zeros(0)
    if len(diag) == p and (diag > tol).all():
        return np.arange(p, dtype=np.intp)
    return _limited_pivoting(rows, tol)


def _limited_pivoting(a: np.ndarray, tol: float) -> np.ndarray:
    """Columns of ``a`` (columns at unit norm) that QR with R's limited pivoting
    keeps: QR up to the first column whose |R_jj| is at most ``tol``, which is
    dropped; the later columns are carried past the kept ones' reflections
    (LAPACK dormqr) and the rest is done again on the rows left."""
    cols = np.arange(a.shape[1])
    keep = []
    a = np.asfortranarray(a, dtype=np.float64)
    while len(cols):
        if len(a) == 0:
            break
        qr, tau, _, info = dgeqrf(a)
        if info != 0:
            raise np.linalg.LinAlgError(f"dgeqrf failed (info = {info})")
        diag = np.abs(qr.diagonal())
        bad = np.flatnonzero(diag <= tol)
        if len(bad) == 0 and len(diag) == len(cols):
            keep.extend(cols.tolist())
            break
        d = int(bad[0]) if len(bad) else len(diag)   # the first dropped column
        keep.extend(cols[:d].tolist())
        rest = np.asfortranarray(a[:, d + 1:])
        if d and rest.shape[1]:
            _, work, info = dormqr("L", "T", qr[:, :d], tau[:d], rest, -1)
            rest, _, info = dormqr("L", "T", qr[:, :d], tau[:d], rest,
                                   max(int(work[0]), 1), overwrite_c=1)
            if info != 0:
                raise np.linalg.LinAlgError(f"dormqr failed (info = {info})")
        a = np.asfortranarray(rest[d:])
        cols = cols[d + 1:]
    return np.asarray(keep, dtype=np.intp)


def response_vector(resp: str, frame) -> np.ndarray:
    """y: the response column, or the response expression evaluated on ``frame``.

    The expression is arithmetic, as R evaluates a formula's left-hand side:
    ``Reaction - 200``, ``incidence/size``, ``log(y)``, ``y^2``.
    ``frame`` is a pandas DataFrame or a model frame's ``Columns``.
    """
    name = resp[1:-1] if resp.startswith("`") and resp.endswith("`") \
        and resp.count("`") == 2 else resp
    if name in frame.columns:
        col = frame[name]
        dtype = getattr(col, "dtype", None)
        if dtype is None or isinstance(dtype, pd.CategoricalDtype) \
                or not pd.api.types.is_numeric_dtype(dtype) or dtype.kind == "b":
            raise DataError(f"response {resp!r} must be numeric, got dtype "
                            f"{dtype if dtype is not None else 'factor'}")
        y = np.asarray(col, dtype=np.float64) if isinstance(col, np.ndarray) \
            else col.to_numpy(dtype=np.float64)
    else:
        ym, _ = design_matrix(f"0 + I({response_code(resp)})", frame, f"the response {resp!r}")
        if ym.shape[1] != 1:
            raise DataError(f"response {resp!r} must be one numeric column, "
                            f"it gives {ym.shape[1]}")
        y = ym.ravel()
    if not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise DataError(f"response {resp!r} has a non-finite value ({y[i]}) at row {i}")
    return y


def fixed_matrix(expr: str, frame, with_spec: bool = False) -> tuple:
    """X (every column) of the fixed part ``expr`` on ``frame``, its column names
    (and formulaic's ModelSpec); a DataError naming a column with non-finite values."""
    built = design_matrix(expr, frame, f"the fixed-effects part {expr!r}", with_spec=with_spec)
    x, names = built[0], built[1]
    if not np.isfinite(x).all():
        j = int(np.flatnonzero(~np.isfinite(x).all(axis=0))[0])
        raise DataError(f"fixed-effects column {names[j]!r} has non-finite values")
    return built


def warn_dropped(dropped: list[str], stacklevel: int) -> None:
    """lme4's warning that X's columns ``dropped`` were dropped for rank deficiency."""
    warnings.warn(
        f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
        f"column{'s' if len(dropped) > 1 else ''}: {', '.join(dropped)}",
        RankDeficiencyWarning, stacklevel=stacklevel + 1)


def build_xymat(parsed: ParsedFormula, frame, check_rank: bool = True) -> XyMat:
    """X (rank-checked) and y for ``parsed`` on the model frame ``frame``;
    ``check_rank=False``: every column of X (a piece of the data, whose rank
    check is that of all pieces)."""
    resp = parsed.response
    y = response_vector(resp, frame)
    x, names, spec = fixed_matrix(parsed.fixed, frame, with_spec=True)
    dropped = []
    if check_rank:
        keep = independent_columns(x)
        dropped = [names[j] for j in range(len(names)) if j not in set(keep.tolist())]
    if dropped:
        warn_dropped(dropped, stacklevel=3)
        x = x[:, keep]
        names = [names[j] for j in keep]
    if names == ["(Intercept)"] and isinstance(frame, Columns):
        x = frame.ones
    return XyMat(np.ascontiguousarray(x), y, names, dropped, resp, spec)
