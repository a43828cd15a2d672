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
from scipy.linalg.lapack import dgeqrf

from . import _crossprod
from .errors import DataError, RankDeficiencyWarning
from .formula import ParsedFormula
from .materialize import design_matrix
from .modelframe import Columns

__all__ = ["XyMat", "build_xymat", "independent_columns", "r_diagonal", "response_vector",
           "row_chunks"]

RANK_TOL = 1e-7  # lme4's default tolerance for the rank of X
CHUNK_ROWS = 65536  # rows per block of the tall-skinny QR


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

    Tall-skinny QR: R of [R_previous; chunk], one chunk at a time, so memory
    stays at one chunk however many rows there are.  Fewer rows than columns
    give zeros for the missing diagonal entries.
    """
    pending = np.zeros((0, p))
    for chunk in chunks:
        if len(pending):   # fold the rows so far into their R
            chunk = np.vstack([np.triu(_householder(pending)[:p]), chunk])
        pending = chunk
    # the last block: R's diagonal as LAPACK leaves it, without forming R
    diag = np.abs(_householder(pending).diagonal()) if len(pending) else np.zeros(0)
    return np.concatenate([diag, np.zeros(p - len(diag))]) if len(diag) < p else diag


SMALL_QR_COLUMNS = 16   # up to this many columns, QR by the compiled loop


def _householder(a: np.ndarray) -> np.ndarray:
    """QR of ``a`` (a copy): R on and above the diagonal.  A few columns by
    ``_crossprod.householder_r``, more by LAPACK's dgeqrf."""
    if a.shape[1] <= SMALL_QR_COLUMNS:
        qr = np.array(a, dtype=np.float64, order="C")
        _crossprod.householder_r(qr)
        return qr
    qr, _, _, info = dgeqrf(np.asarray(a, dtype=np.float64))
    if info != 0:
        raise np.linalg.LinAlgError(f"dgeqrf failed (info = {info})")
    return qr


def row_chunks(a: np.ndarray, chunk_rows: int = CHUNK_ROWS):
    """``a`` in consecutive blocks of at most ``chunk_rows`` rows (views)."""
    return (a[start:start + chunk_rows] for start in range(0, max(len(a), 1), chunk_rows))


def independent_columns(x: np.ndarray, tol: float = RANK_TOL) -> np.ndarray:
    """Indices of the columns kept by a left-to-right QR with R's limited pivoting.

    A column is dropped when its norm after projection on the earlier columns is
    below ``tol`` times its original norm (LINPACK ``dqrdc2``, used by R's ``qr``).
    That norm is |R_jj| of the QR decomposition without pivoting: a dropped
    column lies in the span of the kept ones before it, so projecting on all
    earlier columns is projecting on the kept ones.
    """
    n, p = x.shape
    if p == 0:
        return np.zeros(0, dtype=np.intp)
    norms = np.sqrt(np.einsum("ij,ij->j", x, x))
    scale = np.where(norms > 0, norms, 1.0)
    # columns at unit norm, so that |R_jj| is the ratio
    diag = r_diagonal((chunk / scale for chunk in row_chunks(x)), p)
    return ((norms > 0) & (diag > tol)).nonzero()[0].astype(np.intp)


def response_vector(resp: str, frame) -> np.ndarray:
    """y: the response column, or the response expression evaluated on ``frame``.

    ``frame`` is a pandas DataFrame or a model frame's ``Columns``.
    """
    if resp in frame.columns:
        col = frame[resp]
        dtype = getattr(col, "dtype", None)
        if dtype is None or isinstance(dtype, pd.CategoricalDtype) \
                or not pd.api.types.is_numeric_dtype(dtype) or dtype.kind == "b":
            raise DataError(f"response {resp!r} must be numeric, got dtype "
                            f"{dtype if dtype is not None else 'factor'}")
        y = np.asarray(col, dtype=np.float64) if isinstance(col, np.ndarray) \
            else col.to_numpy(dtype=np.float64)
    else:
        ym, _ = design_matrix(f"0 + {resp}", frame, f"the response {resp!r}")
        if ym.shape[1] != 1:
            raise DataError(f"response {resp!r} must be one numeric column, "
                            f"it gives {ym.shape[1]}")
        y = ym.ravel()
    if not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise DataError(f"response {resp!r} has a non-finite value ({y[i]}) at row {i}")
    return y


def build_xymat(parsed: ParsedFormula, frame) -> XyMat:
    """X (rank-checked) and y for ``parsed`` on the model frame ``frame``."""
    resp = parsed.response
    y = response_vector(resp, frame)
    x, names, spec = design_matrix(parsed.fixed, frame,
                                   f"the fixed-effects part {parsed.fixed!r}", with_spec=True)
    if not np.isfinite(x).all():
        j = int(np.flatnonzero(~np.isfinite(x).all(axis=0))[0])
        raise DataError(f"fixed-effects column {names[j]!r} has non-finite values")
    keep = independent_columns(x)
    dropped = [names[j] for j in range(len(names)) if j not in set(keep.tolist())]
    if dropped:
        warnings.warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
            f"column{'s' if len(dropped) > 1 else ''}: {', '.join(dropped)}",
            RankDeficiencyWarning, stacklevel=3)
        x = x[:, keep]
        names = [names[j] for j in keep]
    if names == ["(Intercept)"] and isinstance(frame, Columns):
        x = frame.ones
    return XyMat(np.ascontiguousarray(x), y, names, dropped, resp, spec)
