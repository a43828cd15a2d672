"""Row-level results of a fit: fitted values and residuals, wherever the rows are.

``linear_predictor`` is the one computation of X beta + Z b + offset.  A model
holds a row source saying where its rows are: ``InMemoryRows`` (X, the terms'
``refs`` and ``z`` and y held by the model), ``ChunkedRows`` (a pandas frame
reduced in row chunks: the rows are made again from the frame, chunk by
chunk) or ``design.dask.DaskRows`` (a Dask frame: Dask Series computed
partition by partition).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError
from .crossprod import dd_sum
from .frame import ModelFrame
from .spec import DesignSpec, piece_columns

__all__ = ["ChunkedRows", "InMemoryRows", "column_sumsq", "linear_predictor", "require_rows",
           "row_values", "theta_scale"]


def linear_predictor(x: np.ndarray, beta: np.ndarray, refs: list[np.ndarray],
                     z: list[np.ndarray], b: list[np.ndarray],
                     offset: np.ndarray | None) -> np.ndarray:
    """X beta + Z b (+ offset) of rows: ``refs``/``z`` of each term with its
    conditional modes ``b`` (levels x k), in the same order (eqs. 2, 22)."""
    mu = x @ beta
    for refs_t, z_t, b_t in zip(refs, z, b):
        mu += np.einsum("ij,ij->i", z_t, b_t[refs_t])
    if offset is not None:
        mu += offset
    return mu


def column_sumsq(z: np.ndarray, cnames: list[str]) -> np.ndarray:
    """Sum of squares of each column of z, in double-double rounded once (an
    intercept's column of ones: its number of rows, without summing)."""
    return np.array([float(len(z)) if name == "(Intercept)" else dd_sum(c ** 2)
                     for name, c in zip(cnames, z.T)])


def theta_scale(remats: list, z_sumsq: list[np.ndarray] | None, nobs: int) -> np.ndarray:
    """The natural scale of each theta element: 1 / rms of its row's column of z.

    Element (i, j) of a term's lambda multiplies the i-th random effect, whose
    covariate has root mean square c_i, so its size is of order 1 / c_i:
    optimising theta / scale makes the fit invariant to rescaling a covariate.
    Without the sums of squares (``z_sumsq`` None), scale 1.
    """
    out = []
    for t, r in enumerate(remats):
        if z_sumsq is None:
            out.append(np.ones(r.n_theta))
            continue
        rms = [math.sqrt(ss / nobs) for ss in z_sumsq[t].tolist()]
        rms = [v if v > 0 else 1.0 for v in rms]
        out.append(np.array([1.0 / rms[i] for j in range(r.k) for i in range(j, r.k)]))
    return np.concatenate(out)


def row_values(spec: DesignSpec, keep: np.ndarray, beta: np.ndarray, b_terms: dict,
               rows: ModelFrame, what: str) -> np.ndarray:
    """Fitted values or residuals of model-frame ``rows`` made by ``spec``."""
    n = len(rows.data)
    out = np.empty(n)
    for start in range(0, n, spec.chunk_rows):
        stop = min(n, start + spec.chunk_rows)
        frame = rows.data.slice(start, stop) if n > spec.chunk_rows else rows.data
        xy = spec.xy(frame)
        terms = [spec.remat(frame, i) for i in spec.order]
        mu = linear_predictor(
            xy.x[:, keep], beta, [r.refs for r in terms], [r.z for r in terms],
            [b_terms[i] for i in spec.order],
            None if rows.offset is None else rows.offset[start:stop])
        out[start:stop] = xy.y - mu if what == "residuals" else mu
    return out


def row_parameters(model) -> tuple[np.ndarray, dict]:
    """beta and the conditional modes b per term (formula order), for ``row_values``."""
    model._require_fit()
    sol = model._solution
    return sol["beta"], {i: b for i, b in zip(model._spec.order, sol["b"])}


def require_rows(fit, what: str, instead: str = "") -> None:
    """Raise a DataError when ``fit`` holds no rows (X, Z, y) and ``what`` needs them.

    A model reduced to A (streamed or Dask data) keeps only A; the message says
    how to get a model with rows, and ``instead`` what else would do.
    """
    if getattr(fit, "x", None) is not None:
        return
    source = getattr(fit, "_rows", None)
    held = getattr(source, "HELD_BY", "a model built from its cross-products")
    advice = getattr(source, "ADVICE", "fit the data in memory with lmmfast.lmer")
    raise DataError(f"{what} needs the model's rows (X, Z and y), which {held} does not keep: "
                    f"{advice}{instead}")


class InMemoryRows:
    """The rows held by the model itself (``x``, the terms' ``refs`` and ``z``, ``y``)."""

    def fitted(self, model) -> np.ndarray:
        sol = model._solution
        return linear_predictor(model.x, sol["beta"], [r.refs for r in model.remats],
                                [r.z for r in model.remats], sol["b"], model.offset)

    def residuals(self, model) -> np.ndarray:
        return model.y - model.fitted


class ChunkedRows:
    """The rows of a pandas frame, made again chunk by chunk (``reducer.pieces``)."""

    HELD_BY = "a model reduced in row chunks (streaming=True)"
    ADVICE = "fit the data in memory, LinearMixedModel(formula, data, streaming=False).fit()"

    def __init__(self, reducer, spec: DesignSpec, keep: np.ndarray):
        self.reducer = reducer
        self.spec = spec
        self.keep = keep

    def model_rows(self):
        """The model-frame rows of each chunk (``spec.rows``)."""
        for piece, w, off in self.reducer.pieces(piece_columns(self.spec)):
            yield self.spec.rows(piece, w, off)

    def _values(self, model, what: str) -> np.ndarray:
        beta, b = row_parameters(model)
        parts = [row_values(self.spec, self.keep, beta, b, rows, what)
                 for rows in self.model_rows()]
        return np.concatenate(parts) if parts else np.zeros(0)

    def fitted(self, model) -> np.ndarray:
        return self._values(model, "fitted")

    def residuals(self, model) -> np.ndarray:
        return self._values(model, "residuals")

    def complete_pieces(self):
        """Each chunk of the data as given, its rows with missing values left out,
        with the offset argument of those rows: (piece, offset)."""
        for piece, w, off in self.reducer.pieces(list(self.reducer.data.columns)):
            rows = self.spec.rows(piece, w, off, coded=False)
            yield (piece if rows.keep is None else piece[rows.keep]), rows.offset
