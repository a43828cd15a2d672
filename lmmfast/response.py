"""The response side of a model: y, prior weights, offset, working weights and response.

The predictor (Z, X, Lambda_theta and the factor L) stays fixed while the
response may change: A = [Z X y]^T W [Z X y] is re-formed from the working
weights W and the working response over the same design (theory.md, section
"Predictor and response").  For the linear mixed model (identity link,
Gaussian family) the working weights are the prior weights and the working
response is y - offset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import DataError

__all__ = ["Response"]


@dataclass(frozen=True)
class Response:
    """y, prior weights and offset of the model's rows, and the working weights
    and working response A is formed with (by default: the prior weights and
    y - offset)."""

    y: np.ndarray | None
    weights: np.ndarray | None = None    # prior weights (None: all 1)
    offset: np.ndarray | None = None
    working_weights: np.ndarray | None = None
    working_y: np.ndarray | None = None

    @property
    def w(self) -> np.ndarray | None:
        """The working weights (None: all 1)."""
        return self.weights if self.working_weights is None else self.working_weights

    @property
    def z(self) -> np.ndarray | None:
        """The working response: y - offset unless given."""
        if self.working_y is not None:
            return self.working_y
        if self.y is None or self.offset is None:
            return self.y
        return self.y - self.offset

    @property
    def sqrt_w(self) -> np.ndarray | None:
        w = self.w
        return None if w is None else np.sqrt(w)

    def with_y(self, y: np.ndarray) -> "Response":
        """The same rows, weights and offset with a new response y."""
        return Response(y, self.weights, self.offset, self.working_weights)

    def replace(self, **changes) -> "Response":
        """A new Response with ``changes`` (fields of this one)."""
        return replace(self, **changes)

    def reweighted(self, weights=None, working_y=None, n: int | None = None) -> "Response":
        """The same ``n`` rows with new working weights and working response (each
        optional: None keeps the prior weights, y - offset), checked."""
        w = _checked_rows(weights, n, "weights")
        if w is not None and not (w > 0).all():
            i = int(np.flatnonzero(~(w > 0))[0])
            raise DataError(f"weights must be positive; row {i} has weight {w[i]}")
        return replace(self, working_weights=w,
                       working_y=_checked_rows(working_y, n, "working response"))


def _checked_rows(values, n: int | None, what: str) -> np.ndarray | None:
    if values is None:
        return None
    values = np.ascontiguousarray(np.asarray(values, dtype=np.float64).ravel())
    if n is not None and len(values) != n:
        raise DataError(f"the {what} has {len(values)} values, the model has {n} rows")
    if not np.isfinite(values).all():
        raise DataError(f"the {what} has non-finite values")
    return values
