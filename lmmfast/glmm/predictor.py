"""The design of a generalized linear mixed model, built by the linear model's machinery.

Every call into the LMM code (formula, model frame, X, the random-effects
terms, the block layout, the compiled cross-products and Cholesky factor)
sits in this module.  ``Design`` holds X, the terms' level codes ``refs``
and per-row ``z`` (internal order), lme4's term order, and the GLM response:
y on the family's scale, prior weights and the trials ``n`` (R's
``family$initialize``).  ``Factor`` is the blocked Cholesky factor of the
re-weighted cross-products (docs/theory.md, eqs. 12-15 with W the working
weights, eq. 93).
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pandas as pd

from .. import _pirls
from .._cholesky import BlockedCholesky
from ..design.fixed import build_xymat, response_vector
from ..design.frame import model_frame, used_frame
from ..design.layout import BlockLayout
from ..design.terms import ReMat, build_remat
from ..errors import DataError
from ..formula import parse_formula, split_top

__all__ = ["Design", "Factor", "build_design", "condvar_blocks", "varcorr"]

_CBIND = re.compile(r"^cbind\s*\((.*)\)\s*$", re.DOTALL)


@dataclasses.dataclass
class Design:
    """X, the random-effects terms and the GLM response of one model."""

    formula: str
    response: str
    x: np.ndarray               # n x p
    fixef_names: list[str]
    remats: list[ReMat]         # lme4's order
    internal: list[int]         # internal order: indices into remats (decreasing q)
    y: np.ndarray               # response on the family's scale (a proportion for binomial)
    prior_weights: np.ndarray   # R's weights after initialize (trials times weights for cbind)
    trials: np.ndarray          # R's n (trials of cbind, else 1)
    offset: np.ndarray          # total offset (zeros without one)
    row_index: pd.Index
    n_dropped: int
    dropped_columns: list[str]
    fixed_spec: object = None   # formulaic's ModelSpec of X (the codings predict() reuses)
    response_levels: list | None = None   # a factor or string response's two levels
    n_rows: int | None = None   # rows, where the design holds none (they are on a cluster)
    patterns: dict | None = None   # the sparse blocks' level pairs, found without the rows

    @property
    def nobs(self) -> int:
        return len(self.y) if self.n_rows is None else self.n_rows

    @property
    def p(self) -> int:
        return self.x.shape[1]

    @property
    def inner(self) -> list[ReMat]:
        return [self.remats[i] for i in self.internal]

    def theta_perm(self) -> np.ndarray:
        """Positions of the internal order's theta entries in lme4's theta."""
        starts = np.cumsum([0] + [r.n_theta for r in self.remats])
        return np.concatenate([np.arange(starts[i], starts[i + 1])
                               for i in self.internal]).astype(np.intp)


def _response_column(data: pd.DataFrame, name: str, family_name: str):
    """A factor, bool or string response as 0/1 (first level = failure, as R's
    binomial) and its levels (None for a bool: R's logical), or None where the
    column is numeric or not a column."""
    if name not in data.columns:
        return None
    col = data[name]
    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype) or dtype == object or dtype.kind == "b" \
            or pd.api.types.is_string_dtype(dtype) or str(dtype) == "boolean":
        if family_name != "binomial":
            raise DataError(f"response {name!r} is a factor: the {family_name} family "
                            "needs counts")
        if isinstance(dtype, pd.CategoricalDtype):
            cat = col.cat.remove_unused_categories()
            levels = list(cat.cat.categories)
            codes = np.asarray(cat.cat.codes)
        elif dtype.kind == "b" or str(dtype) == "boolean":
            levels = [False, True]
            values = col.astype("boolean")
            codes = np.where(values.isna().to_numpy(), -1,
                             values.fillna(False).to_numpy(dtype=bool).astype(np.int64))
        else:
            cat = pd.Categorical(col)
            levels = list(cat.categories)
            codes = np.asarray(cat.codes)
        if len(levels) > 2:
            shown = ", ".join(map(str, levels[:5])) + (", ..." if len(levels) > 5 else "")
            raise DataError(f"response {name!r} has {len(levels)} levels ({shown}): "
                            "a binomial response needs two (the first is failure)")
        out = np.where(codes < 0, np.nan, (codes >= 1).astype(np.float64))
        return out, (None if levels == [False, True] else levels)
    return None


@dataclasses.dataclass
class ResponseForm:
    """How a GLMM's left-hand side is read: ``cbind(successes, failures)`` (its two
    expressions), else one column or expression; the frame's formula (cbind's
    two parts summed, so that both are in the model frame)."""

    lhs: str
    pieces: list[str] | None
    parsed: object            # the formula of the frame (ParsedFormula)
    name: str                 # the response column, where it is one


def response_form(formula: str, family_name: str):
    """The parsed formula and its ``ResponseForm``."""
    parsed = parse_formula(formula)
    lhs = parsed.response.strip()
    m = _CBIND.match(lhs)
    pieces = None
    parsed_frame = parsed
    if m:
        pieces = [p.strip() for _, p in split_top(m.group(1), ",")]
        if len(pieces) != 2 or not all(pieces):
            raise DataError(f"response {lhs!r}: cbind() takes two columns, successes "
                            "and failures")
        if family_name != "binomial":
            raise DataError(f"response {lhs!r}: cbind(successes, failures) is for the "
                            f"binomial family, not {family_name}")
        parsed_frame = dataclasses.replace(parsed, response=f"({pieces[0]}) + ({pieces[1]})")
    name = lhs[1:-1] if lhs.startswith("`") and lhs.endswith("`") else lhs
    return parsed, ResponseForm(lhs, pieces, parsed_frame, name)


def glm_response(form: ResponseForm, frame, xy_y: np.ndarray, user_w, family_name: str,
                 successes: np.ndarray | None = None):
    """y on the family's scale, R's prior weights and trials (R's ``family$initialize``)
    of model-frame rows, and the warnings R gives for them; a ``DataError`` for a
    response outside the family's range.  ``successes``: cbind's first part, where
    the caller has it."""
    n = len(xy_y)
    trials = _constant(1.0, n)
    if form.pieces is not None:
        succ = response_vector(form.pieces[0], frame) if successes is None else successes
        fail = response_vector(form.pieces[1], frame)
        for v, what, expr in ((succ, "successes", form.pieces[0]),
                              (fail, "failures", form.pieces[1])):
            if (v < 0).any():
                i = int(np.flatnonzero(v < 0)[0])
                raise DataError(f"response {form.lhs!r}: the {what} {expr!r} are negative "
                                f"({v[i]}) at row {i}")
        trials = succ + fail
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(trials > 0, succ / np.where(trials > 0, trials, 1.0), 0.0)
        prior = trials if user_w is None else user_w * trials
    else:
        y = np.asarray(xy_y, dtype=np.float64)
        prior = _constant(1.0, n) if user_w is None else user_w
    return y, prior, trials, _check_response(y, prior, family_name, form.lhs)


def build_design(formula: str, data, family_name: str, weights=None,
                 offset=None) -> Design:
    """Parse ``formula`` and build X, the terms and the response on ``data``.

    The response may be ``cbind(successes, failures)``, a proportion (with
    ``weights=`` trials), 0/1, a bool or a two-level factor (binomial), or
    counts (poisson), as lme4 takes them.  ``data`` is never modified.
    """
    parsed, form = response_form(formula, family_name)
    levels = None
    frame_data = used_frame(form.parsed, data, weights, offset)
    if form.pieces is None:
        coded = _response_column(frame_data, form.name, family_name)
        if coded is not None:   # a new frame: the caller's is not modified
            coded, levels = coded
            frame_data = frame_data.assign(**{form.name: coded})
    frame = model_frame(form.parsed, frame_data, weights, offset)
    # (cbind: X with the successes as its y, which ``glm_response`` takes)
    xy = build_xymat(form.parsed if form.pieces is None
                     else dataclasses.replace(form.parsed, response=form.pieces[0]), frame.data)
    remats = [build_remat(frame.data, term) for term in parsed.random]
    order = sorted(range(len(remats)), key=lambda i: -remats[i].nlevels)
    remats = [remats[i] for i in order]
    internal = sorted(range(len(remats)), key=lambda i: -remats[i].q)
    remats = [_sharing_x(r, xy.x, xy.names) for r in remats]
    user_w = None if frame.weights is None else np.asarray(frame.weights, dtype=np.float64)
    y, prior, trials, notes = glm_response(form, frame.data, xy.y, user_w, family_name,
                                           xy.y if form.pieces is not None else None)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    n = len(y)
    return Design(formula, form.lhs, xy.x, xy.names, remats, internal, y, prior, trials,
                  model_offset(frame.offset, n),
                  frame.row_index, frame.n_dropped, xy.dropped, xy.spec, levels)


def model_offset(offset, n: int) -> np.ndarray:
    """The total offset of ``n`` model rows: a zero constant where there is none."""
    return _constant(0.0, n) if offset is None else np.asarray(offset, dtype=np.float64)


def _constant(value: float, n: int) -> np.ndarray:
    """A read-only column of ``n`` copies of ``value`` that takes no memory per row
    (unit prior weights and trials, a zero offset)."""
    return np.broadcast_to(np.float64(value), (n,))


def _sharing_x(remat: ReMat, x: np.ndarray, names: list[str]) -> ReMat:
    """The term with X itself as its z where z has X's columns (``(1 + x | g)``
    with fixed effects ``1 + x``): one copy of them instead of two."""
    if remat.cnames == names and remat.z.shape == x.shape and remat.z is not x \
            and x.flags.c_contiguous and np.array_equal(remat.z, x):
        return dataclasses.replace(remat, z=x)
    return remat


def _check_response(y: np.ndarray, prior: np.ndarray, family_name: str,
                    lhs: str) -> list[str]:
    """R's family checks: binomial y in [0, 1] (a warning for non-integer
    successes), poisson y >= 0 (a warning for non-integer counts); returns the
    warnings."""
    if family_name == "binomial":
        bad = (y < 0) | (y > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"response {lhs!r} has the value {y[i]} at row {i}: a binomial "
                            "response must be a proportion in [0, 1], 0/1, a two-level "
                            "factor or cbind(successes, failures)")
        m = prior * y
        if (np.abs(m - np.round(m)) > 1e-3).any():
            return [f"response {lhs!r}: non-integer #successes in a binomial glm"]
    else:
        if (y < 0).any():
            i = int(np.flatnonzero(y < 0)[0])
            raise DataError(f"response {lhs!r} has the negative value {y[i]} at row {i}: "
                            "poisson counts must be >= 0")
        if (np.abs(y - np.round(y)) > 1e-3 * np.maximum(1.0, np.abs(y))).any():
            i = int(np.flatnonzero(np.abs(y - np.round(y)) > 1e-3)[0])
            return [f"response {lhs!r}: non-integer count {y[i]} at row {i}"]
    return []


class Factor:
    """The blocked Cholesky factor of the re-weighted cross-products of [Z X z].

    ``with_x``: X's columns are in the system (u and beta solved together,
    eq. 95), else only the working response (u alone at fixed beta, eq. 94).
    A is re-formed chunk by chunk of rows with the working weights and
    response (``_pirls.pass_chunks``' ``_crossprod.add_rows``, eqs. 12, 105)
    and factored at theta (``update``, eqs. 13-15); PIRLS's iterations on it
    are compiled (``loop``, ``_pirls.PirlsLoop``).
    """

    def __init__(self, design: Design, with_x: bool):
        inner = design.inner
        self.p = design.p if with_x else 0
        self.layout = BlockLayout.build([r.refs for r in inner], [r.nlevels for r in inner],
                                        [r.k for r in inner], self.p + 1, design.patterns)
        lay = self.layout
        self.a = np.zeros(max(lay.n_a, 1))
        acc = np.zeros((len(self.a), 2))   # A's double-double accumulator
        # A's plain-double accumulator: the same memory (a factor sums one way at a time)
        acc_plain = acc.reshape(-1)[:len(self.a)].reshape(-1, 1)
        self.work: dict = {}   # further row partitions' accumulators (``LocalRows.run_into``)
        self.core = BlockedCholesky(
            lay.nlev, lay.k, lay.p1, lay.kind_a, lay.kind_l, lay.off_a, lay.off_l,
            lay.sp_colptr_off, lay.sp_rowidx_off, lay.colptr, lay.rowidx, self.a,
            lay.n_l, float(design.nobs), 0.0)
        # PIRLS on this factor, compiled (the rows' passes bound by ``Pirls``)
        self.loop = _pirls.PirlsLoop(self.core, self.a, acc, acc_plain, lay.accumulation_codes,
                                     lay.patterns, design.p, lay.nlev, lay.k)

    def form_a(self) -> None:
        """A from its accumulator (rounded once where summed in double-double)."""
        self.loop.form_a()

    def update(self, theta_internal: np.ndarray) -> int:
        """A from its accumulator, factored at theta; LAPACK's info (0: success)."""
        return self.loop.update(np.ascontiguousarray(theta_internal, dtype=np.float64))

    def u(self, beta: np.ndarray) -> np.ndarray:
        """Spherical modes u (internal order) from L_Z^T u = l_yZ - L_XZ^T beta (eq. 22)."""
        return np.array(self.core.solve_u(np.ascontiguousarray(beta, dtype=np.float64)))

    def rx(self) -> np.ndarray:
        """The lower-triangular R_X (eq. 11) of the current factor."""
        return self.core.lxx()[:self.p, :self.p]

    def l_diag_first(self) -> np.ndarray:
        """The diagonal of L_Z for one scalar term (its first block is diagonal)."""
        lay = self.layout
        return np.array(self.core.l_values[lay.off_l[0]:lay.off_l[0] + lay.nlev[0]])


def varcorr(design: Design, theta: np.ndarray) -> pd.DataFrame:
    """lme4's ``as.data.frame(VarCorr())`` of a GLMM (eq. 8 with sigma = 1, no
    residual row)."""
    from ..varcorr import varcorr_table
    split = np.split(np.asarray(theta, dtype=np.float64),
                     np.cumsum([r.n_theta for r in design.remats])[:-1])
    table = varcorr_table([r.group for r in design.remats], [r.cnames for r in design.remats],
                          [r.lambda_(th) for r, th in zip(design.remats, split)], 1.0)
    return table[table["grp"] != "Residual"].reset_index(drop=True)


def condvar_blocks(design: Design, factor: Factor, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Var(b | y) per level, Lambda (L_Z L_Z^T)^{-1} Lambda^T's diagonal blocks at the
    factor's current weights (eqs. 25, 60-62 with sigma = 1, eq. 97)."""
    from .. import condvar
    diag, cross = condvar.factor_condvar_blocks(factor.layout, factor.core.l_values,
                                                design.remats, design.internal)
    return condvar.scaled_condvar_blocks(diag, cross, design.remats, theta, 1.0)
