"""Pandas frames reduced to A in row chunks: ``StreamedLinearMixedModel``.

``LinearMixedModel(formula, df, streaming=True)`` (automatic above
``STREAM_MIN_ROWS`` rows) reduces the frame chunk by chunk
(``design.reduce.ChunkReducer``) without holding X, Z and y for all rows;
the fit equals the in-memory fit.
"""

from .design.spec import PIECE_ROWS as CHUNK_ROWS
from .design.rows import require_rows
from .model import STREAM_MIN_ROWS, StreamedLinearMixedModel

__all__ = ["CHUNK_ROWS", "STREAM_MIN_ROWS", "StreamedLinearMixedModel", "require_rows"]
