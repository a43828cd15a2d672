"""The linear mixed-effects model: build, fit, and the results of the fit.

``LinearMixedModel(formula, data)`` builds the model frame, X, y and the
random-effects terms, orders the terms, computes the cross-products A once and
sets up the blocked Cholesky factor; ``fit()`` minimises the profiled
criterion over theta (eq. 24) and reads every result off the factor at the
optimum.  ``lmer`` does both, with lme4's signature.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import warnings
from functools import cached_property

import numpy as np
import pandas as pd

from ._cholesky import BlockedCholesky
from .arguments import as_flag
from .conditioning import DIGITS_TOL, condition, digits_lost
from .convergence import Convergence, allfit, check_convergence, warn_convergence
from ._trust_region import RUN_STATUS, CoreObjective, Optimum, Refit
from .design import crossprod as blocks
from .design.crossprod import row_chunks
from .design.dask import DaskReducer, DaskRows, as_dask_frame, exact_quantiles, is_partitioned
from .design.dask import predict as predict_dask
from .design.fixed import build_xymat, r_diagonal
from .design.frame import Factor, is_table, model_frame, used_frame
from .design.layout import BlockLayout
from .design.reduce import (ChunkReducer, Reduced, check_rank, reduce_design, reweighted,
                            streamable)
from .design.rows import ChunkedRows, InMemoryRows, column_sumsq, require_rows, theta_scale
from .design.spec import PIECE_ROWS, DesignSpec
from .design.terms import ReMat, build_remat
from .errors import ConditioningWarning, DataError, FitError
from .formula import parse_formula
from .optimize import (OptSummary, as_vector, default_start, fit_theta, intercept_terms,
                       newton_plan, take_run)
from .response import Response
from .summary import data_name, warn_if_singular
from .threads import as_n_threads, blas_threads
from .varcorr import varcorr_table

__all__ = ["DaskLinearMixedModel", "LinearMixedModel", "StreamedLinearMixedModel", "lmer"]

SINGULAR_TOL = 1e-4   # lme4's isSingular() tolerance on the diagonal of lambda
EAGER_SOLVE_MIN = 100_000   # entries of L above which results are solved when theta is set
STREAM_MIN_ROWS = 2_000_000   # larger pandas frames are reduced in row chunks
SPLIT_EVERY = 8   # partials merged per task of a Dask tree reduction


_COMPILED = (BlockedCholesky, CoreObjective, Optimum, Refit)   # rebuilt, never pickled


def _factor_state(core: BlockedCholesky) -> tuple:
    """L(theta) and lambda of ``core`` as its ``__reduce__`` keeps them (copies)."""
    return core.__reduce__()[1][1]


def _reduced_class(data, streaming) -> type | None:
    """The model class of data reduced elsewhere: Dask frames and Parquet paths
    (``DaskLinearMixedModel``), pandas frames in row chunks when ``streaming``
    is true, or None (the caller decides on size) and the frame has more than
    ``STREAM_MIN_ROWS`` rows (``StreamedLinearMixedModel``); else None."""
    if is_partitioned(data):
        return DaskLinearMixedModel
    if streaming is False or not is_table(data):
        return None
    if streaming:
        return StreamedLinearMixedModel
    return None


class LinearMixedModel:
    """A linear mixed-effects model ``y = X beta + Z b + e`` (eq. 1).

    Parameters
    ----------
    formula : str
        lme4 formula, e.g. ``"Reaction ~ 1 + Days + (1 + Days | Subject)"``.
    data : pandas.DataFrame, dask.dataframe.DataFrame or str
        The data; never modified.  A Dask DataFrame, or a path or glob of
        Parquet files, is reduced on its cluster (lmmfast.distributed).
    reml : bool
        Fit by REML (default) or maximum likelihood.
    weights, offset : str or array-like, optional
        Prior weights and an offset: a column name or one value per row.
    streaming : bool, optional
        Reduce a pandas frame to A in row chunks without holding X and Z for
        all rows (lmmfast.streaming); by default above ``STREAM_MIN_ROWS`` rows.
    n_threads : int, optional
        Most BLAS threads of the fit (lmmfast.threads); default None: chosen
        from the size of L's dense blocks and the free cores.
    """

    n_threads: int | None = None
    _rows = InMemoryRows()
    _z_sumsq_given = None

    def __new__(cls, formula=None, data=None, reml=True, weights=None, offset=None,
                streaming=None, **kwargs):
        """A ``StreamedLinearMixedModel`` or ``DaskLinearMixedModel`` where the data is
        to be reduced elsewhere (``_reduced_class``; automatic streaming above
        ``STREAM_MIN_ROWS`` rows), else a ``LinearMixedModel``."""
        if cls is LinearMixedModel and data is not None:
            target = _reduced_class(data, streaming)
            if target is None and streaming is None and isinstance(data, pd.DataFrame) \
                    and len(data) > STREAM_MIN_ROWS and streamable(formula, data.iloc[:0]):
                target = StreamedLinearMixedModel
            cls = target or cls
        return object.__new__(cls)

    def __init__(self, formula: str, data, reml: bool = True, weights=None, offset=None,
                 streaming: bool | None = None, *, n_threads: int | None = None):
        self.n_threads = as_n_threads(n_threads)
        # the name lme4 prints as "Data:": a bundled dataset's (datasets.load)
        self.data_name = data_name(data)
        self.formula = formula
        self.reml = as_flag(reml, "reml")
        # the data as given (a reference, not kept by pickles): what refits of other
        # models on the same data (ranova) read again, as lme4 keeps its frame
        self._call = {"data": data, "weights": weights, "offset": offset}
        parsed = parse_formula(formula)
        # the data in memory as the one piece of a reduction (design.reduce): its model
        # frame with its own levels, every column of X and the terms, A of all of
        # them, then X's rank check; the rows kept
        frame = model_frame(parsed, data, weights, offset)
        xy = build_xymat(parsed, frame.data, check_rank=False)
        remats = [build_remat(frame.data, term) for term in parsed.random]
        self.response = xy.response
        self.resp = resp = Response(xy.y, frame.weights, frame.offset,
                                    working_y=None if frame.offset is None
                                    else xy.y - frame.offset)
        self._order_terms(remats)
        inner = [self.remats[i] for i in self._internal]
        refs, z = [r.refs for r in inner], [r.z for r in inner]
        layout = BlockLayout.build(refs, [r.nlevels for r in inner], [r.k for r in inner],
                                   xy.x.shape[1] + 1)
        acc = blocks.crossproducts(layout, refs, z, xy.x, resp.z, resp.sqrt_w, rounded=False)
        keep, self.dropped_columns, layout, acc = check_rank(layout, acc, xy.x, xy.names,
                                                             stacklevel=3)
        self.x = np.ascontiguousarray(xy.x[:, keep]) if self.dropped_columns else xy.x
        self.fixef_names = [xy.names[j] for j in keep]
        self.n_dropped = frame.n_dropped
        self.row_index = frame.row_index
        self.nobs = len(self.y)
        self.offset_column = offset if isinstance(offset, str) else None
        self.offset_given = offset is not None   # (offset(...) terms are re-evaluated)
        self.fixed_spec = xy.spec
        self.factor_levels = {}
        grouping = {f.strip("`") for t in parsed.random for f in t.factors}
        for name in frame.data.columns:
            if isinstance(frame.data[name], Factor) or name in grouping:
                self.factor_levels[name] = list(frame.data.factor(name).levels)
        for r in remats:   # a term on the fixed effects' own columns shares X's memory
            if r.cnames == self.fixef_names and r.z.shape == self.x.shape \
                    and (r.z == self.x).all():
                r.z = self.x
        self._layout = layout
        self._setup_core(layout, acc, 0.0 if resp.w is None else blocks.dd_sum(np.log(resp.w)))

    def _form_crossproducts(self) -> None:
        """A = [Z X y]^T W [Z X y] from the rows held, with the response's working
        weights and working response (eq. 12), and the core on it."""
        require_rows(self, "reweight()")
        resp = self.resp
        inner = [self.remats[i] for i in self._internal]
        acc = blocks.crossproducts(self._layout, [r.refs for r in inner],
                                   [r.z for r in inner], self.x, resp.z, resp.sqrt_w,
                                   rounded=False)
        log_det_w = blocks.dd_sum(np.log(resp.w)) if resp.w is not None else 0.0
        self._setup_core(self._layout, acc, log_det_w)

    def reweight(self, weights=None, response=None) -> "LinearMixedModel":
        """Re-form A with new working weights and working response over the same
        design (Z, X and the layout of A and L are kept; theory.md, section
        "Predictor and response"); returns ``self``, not fitted.

        ``weights``: one positive value per row (None: the prior weights);
        ``response``: the working response, one value per row (None: y - offset).
        The result equals the model built with ``weights=`` to the bit.
        """
        self.resp = self.resp.reweighted(weights, response, self.nobs)
        for name in ("_working_rows", "_evaluator", "_optimum_plan", "_refit_plan", "vcov",
                     "varcorr", "fitted", "residuals", "convergence"):
            self.__dict__.pop(name, None)
        self._form_crossproducts()
        return self

    # --------------------------------------------------- the response's rows
    @property
    def y(self) -> np.ndarray | None:
        """The response of the model's rows (None where the rows are not held)."""
        return self.resp.y

    @y.setter
    def y(self, value) -> None:
        self.resp = self.resp.replace(y=value)

    @property
    def weights(self) -> np.ndarray | None:
        """The weights A is formed with: the prior weights unless reweighted (None: 1)."""
        return self.resp.w

    @weights.setter
    def weights(self, value) -> None:
        self.resp = self.resp.replace(weights=value, working_weights=None)

    @property
    def offset(self) -> np.ndarray | None:
        return self.resp.offset

    @offset.setter
    def offset(self, value) -> None:
        self.resp = self.resp.replace(offset=value)

    @property
    def _y_eff(self) -> np.ndarray | None:
        """The working response: y - offset unless reweighted with another."""
        return self.resp.z

    @_y_eff.setter
    def _y_eff(self, value) -> None:
        self.resp = self.resp.replace(working_y=value)

    @property
    def has_weights(self) -> bool:
        """Whether the model has prior weights (a column or values)."""
        spec = self.__dict__.get("_spec")
        return spec.has_weights if spec is not None else self.weights is not None

    @property
    def has_offset(self) -> bool:
        """Whether the model has an offset (argument or ``offset()`` terms)."""
        spec = self.__dict__.get("_spec")
        return (spec.has_offset or bool(spec.parsed.offsets)) if spec is not None \
            else self.offset is not None

    @classmethod
    def from_crossproducts(cls, formula: str, *, reml: bool, remats: list[ReMat],
                           fixef_names: list[str], layout: BlockLayout,
                           a: np.ndarray, nobs: int, log_det_w: float = 0.0,
                           response: str = "", n_dropped: int = 0,
                           dropped_columns: list[str] | None = None) -> "LinearMixedModel":
        """A model from its reduced form: A = [Z X y]^T W [Z X y] summed elsewhere (eq. 12).

        Used when the rows never sit in one place (partitioned or streamed data):
        ``remats`` carry the terms' names, columns and levels (their ``refs``/``z``
        may be empty), ``layout`` the block structure A was accumulated in (terms
        in internal order), ``remats`` in lme4 order.  Row-level results
        (``fitted``, ``residuals``) are not available on such a model.
        """
        self = object.__new__(cls)
        self._init_reduced(formula, reml, remats, fixef_names, layout, a, nobs, log_det_w,
                           response, n_dropped, dropped_columns)
        return self

    def _init_reduced(self, formula: str, reml: bool, remats: list[ReMat],
                      fixef_names: list[str], layout: BlockLayout, a: np.ndarray,
                      nobs: int, log_det_w: float, response: str, n_dropped: int,
                      dropped_columns: list[str] | None) -> None:
        """The model of A (or its accumulator) reduced from rows not held here."""
        self.formula = formula
        self.reml = as_flag(reml, "reml")
        self.response = response
        self.x = None
        self.resp = Response(None)
        self.fixef_names = list(fixef_names)
        self.dropped_columns = list(dropped_columns or [])
        self.n_dropped = n_dropped
        self.row_index = None
        self.nobs = int(nobs)
        self._order_terms(list(remats), sort=False)
        self._setup_core(layout, np.asarray(a, dtype=np.float64), log_det_w)

    def _init_from_reduction(self, formula: str, reml: bool, reduced: Reduced, rows) -> None:
        """The model of data reduced by ``design.reduce`` (``reduced``), its row
        results from the row source ``rows``."""
        spec = reduced.spec
        self._spec = spec
        self._keep = reduced.keep
        self._rows = rows
        self._z_sumsq_given = reduced.z_sumsq
        self._init_reduced(formula, reml, reduced.remats, reduced.fixef_names, reduced.layout,
                           reduced.acc, reduced.nobs, reduced.log_det_w,
                           spec.parsed.response, reduced.n_dropped, reduced.dropped_columns)
        self.factor_levels = spec.factor_levels
        self.fixed_spec = spec.fixed_spec   # the codings predict() uses for newdata
        self.weights_column = spec.weights_column
        self.offset_column = spec.offset_column
        self.offset_given = spec.has_offset   # (offset(...) terms are re-evaluated)
        r = reduced.x_r[:, reduced.keep]   # the unweighted X'X of weighted data (else in A)
        self._xtx = r.T @ r if spec.has_weights else None

    # ------------------------------------------------------------- building
    def _order_terms(self, remats: list[ReMat], sort: bool = True) -> None:
        """lme4's term order (decreasing levels, ties in formula order) and the
        internal order of the core (decreasing number of random effects)."""
        if sort:
            order = sorted(range(len(remats)), key=lambda i: -remats[i].nlevels)
            remats = [remats[i] for i in order]
        self.remats: list[ReMat] = remats
        self._internal = sorted(range(len(remats)), key=lambda i: -remats[i].q)
        starts = np.cumsum([0] + [r.n_theta for r in remats])
        self._theta_perm = np.concatenate(
            [np.arange(starts[i], starts[i + 1]) for i in self._internal]).astype(np.intp)

    def _check_identifiable(self) -> None:
        """lme4's checks of the numbers of levels and random effects against n, and
        a response that the fixed effects fit exactly (pwrss = 0 at theta = 0)."""
        n, p = self.nobs, self.p
        if n <= p:
            raise DataError(f"{n} observations cannot identify {p} fixed effects "
                            "and a residual variance")
        for r in self.remats:
            if r.nlevels < 2:
                raise DataError(
                    f"grouping factor {r.group!r} of random term {r.source} has "
                    f"{r.nlevels} level: grouping factors must have > 1 sampled level")
            if r.nlevels >= n:
                raise DataError(
                    f"grouping factor {r.group!r} of random term {r.source} has "
                    f"{r.nlevels} levels for {n} observations: the number of levels "
                    "of each grouping factor must be < number of observations")
            if r.q >= n:
                raise DataError(
                    f"random term {r.source} has {r.q} random effects for {n} "
                    "observations: the random-effects parameters and the residual "
                    "variance are probably unidentifiable")
        if self.x is not None:   # rows at hand: the OLS residual by QR
            sw = np.sqrt(self.weights) if self.weights is not None else None
            yw = self._y_eff if sw is None else self._y_eff * sw
            scale = max(float(yw.max()), -float(yw.min()))   # (no temporary of n values)
            scale = scale if scale > 0 else 1.0   # so that huge or tiny responses neither
            #                                       overflow nor underflow

            def scaled_rows():
                weights = row_chunks(sw) if sw is not None else itertools.repeat(None)
                for xc, yc, wc in zip(row_chunks(self.x), row_chunks(self._y_eff), weights):
                    block = np.column_stack([xc, yc])
                    if wc is not None:
                        block *= wc[:, None]
                    block /= scale
                    yield block
            # the last diagonal entry of R in [X y] = QR is the norm of y's residual on X
            resid = r_diagonal(scaled_rows(), p + 1)[p]
            norm = math.sqrt(sum(float(np.dot(c, c)) for c in (yc / scale for yc in row_chunks(yw))))
            exact = norm == 0 or resid <= 1e-10 * norm
        else:                    # only A: the OLS residual from the factor at theta = 0
            info = self._core.update(np.zeros(len(self.theta_names)))
            pwrss = self._core.components()[2] if info == 0 else 0.0
            exact = not pwrss > 1e-13 * self._basis.yty
        if exact:
            raise DataError(
                f"the response {self.response!r} is fitted exactly by the fixed effects "
                "(e.g. it is constant): the residual variance would be zero")

    def _setup_core(self, layout: BlockLayout, acc: np.ndarray,
                    log_det_w: float) -> None:
        """The core on A in its working basis (eq. 72) from A's double-double
        accumulator ``acc`` (``n_a x 2``; a rounded A, ``n_a``, is taken as exact)."""
        if acc.ndim == 1:
            acc = np.column_stack([acc, np.zeros_like(acc)])
        a, self._basis = condition(layout, np.ascontiguousarray(acc), self.fixef_names)
        self._layout = layout
        self._a = a
        self._log_det_w = log_det_w
        self._core = self._make_core(a)
        self.optsum: OptSummary | None = None
        self._theta = None
        self._solution_cache: dict | None = None
        self._check_identifiable()

    def _make_core(self, a: np.ndarray) -> BlockedCholesky:
        lay = self._layout
        return BlockedCholesky(
            lay.nlev, lay.k, lay.p1, lay.kind_a, lay.kind_l, lay.off_a, lay.off_l,
            lay.sp_colptr_off, lay.sp_rowidx_off, lay.colptr, lay.rowidx, a,
            lay.n_l, float(self.nobs), self._log_det_w)

    # ------------------------------------------------------ new responses
    def copy(self) -> "LinearMixedModel":
        """An independent model with the same design (its own A and factor), not refitted."""
        new = copy.copy(self)
        new._a = self._a.copy()
        new._attach_core(_factor_state(self._core))
        new._solution_cache = None if self._solution_cache is None else dict(self._solution_cache)
        for name in ("fitted", "residuals", "_evaluator", "_optimum_plan", "_refit_plan"):
            new.__dict__.pop(name, None)
        new.optsum = copy.deepcopy(self.optsum)
        return new

    def _attach_core(self, factor_state=None) -> None:
        """A factor of its own on ``self._a``: in ``factor_state`` (another core's
        L(theta), as its ``__reduce__`` gives it: the same to the bit), else
        factored at the fitted theta if there is one."""
        self._core = self._make_core(self._a)
        if factor_state is not None:
            self._core.__setstate__(factor_state)
        elif self._theta is not None:
            self._core.update(self._to_internal(self._theta))

    def __copy__(self) -> "LinearMixedModel":
        """A shallow copy: the same attributes, the factor shared (``copy()`` gives
        one of its own)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __getstate__(self) -> dict:
        """Every attribute but the compiled objects (the optimiser's plans, rebuilt
        when next needed, and the factor, rebuilt on A by ``__setstate__`` with its
        state L(theta) as it was: not refactored, so the same to the bit whatever
        the BLAS threads); for pickle and deepcopy."""
        state = {name: value for name, value in self.__dict__.items()
                 if not isinstance(value, _COMPILED) and name != "_call"}
        core = self.__dict__.get("_core")
        if isinstance(core, BlockedCholesky):
            state["_core_state"] = _factor_state(core)
        return state

    def __setstate__(self, state: dict) -> None:
        """The attributes of ``__getstate__``, and a factor on A in the state it had
        (none where the model carries no A, as a model shipped for predictions)."""
        state = dict(state)
        core_state = state.pop("_core_state", None)
        if "resp" not in state:   # the rows' response kept as separate arrays
            y = state.pop("y", None)
            state["resp"] = Response(y, state.pop("weights", None), state.pop("offset", None),
                                     working_y=state.pop("_y_eff", None))
        self.__dict__.update(state)
        if self.__dict__.get("_a") is None:
            self.__dict__.setdefault("_core", None)
        else:
            self._attach_core(core_state)

    def refit(self, y, *, start=None, **options) -> "LinearMixedModel":
        """Refit in place to a new response with the same design; returns ``self``.

        Only the y parts of A change (eq. 26); nothing is re-parsed or
        re-allocated, which makes this the inner loop of a parametric bootstrap.
        The optimiser starts from the current theta unless ``start`` is given.
        With the default optimiser and its settings, the whole refit is one
        compiled call (``_trust_region.Refit``) that takes the steps ``fit``
        would take; where it cannot finish (no convergence, theta running
        away), ``fit`` finishes it.
        """
        if self.y is None:
            raise FitError("this model has no rows to refit (it was built from cross-products)")
        if start is None and self._theta is not None:
            start = self._theta
        if not options and start is not None:
            return self._refit_compiled(y, start)
        y = np.asarray(y, dtype=np.float64).ravel()
        if y.shape != self.y.shape:
            raise DataError(f"the new response has {y.size} values, the model has {self.nobs}")
        if not np.isfinite(y).all():
            raise DataError("the new response has non-finite values")
        self.resp = self.resp.with_y(y)
        x_w, offset_w = self._working_rows
        y_w = y - offset_w if offset_w is not None else y
        wy = y_w * self.weights if self.weights is not None else y_w
        refs, z = self._inner_columns
        blocks.set_response(self._layout, self._a, refs, z, x_w, wy,
                            np.sqrt(self.weights) if self.weights is not None else None)
        return self.fit(start=start, **options)

    @cached_property
    def _working_rows(self) -> tuple[np.ndarray, np.ndarray | None]:
        """X M and offset + X gamma: the rows of a new response's y parts of A in
        the working basis (eq. 72)."""
        return self._basis.x_work(self.x), self._basis.offset_work(self.x, self.offset)

    def _refit_compiled(self, y, start) -> "LinearMixedModel":
        """``refit`` with the default optimiser, as one compiled call."""
        plan = self.__dict__.get("_refit_plan")
        if plan is None or not plan.serves(self._core, self.reml, self._a):
            off_zy, q, off_xy = self._layout.response_offsets
            refs, z = self._inner_columns
            x_w, offset_w = self._working_rows
            plan = self._refit_plan = Refit(self._optimum(), self._a, off_zy, q, off_xy,
                                            list(refs), list(z), x_w, self.weights, offset_w)
        y, start = as_vector(y), as_vector(start)
        result = plan.run(y, start)
        status = RUN_STATUS[result[0]]
        if status == "bad length":
            raise DataError(f"the new response has {y.size} values, the model has {self.nobs}")
        if status == "not finite":
            raise DataError("the new response has non-finite values")
        if status == "bad start":
            raise ValueError(f"start must have {len(self.lower_bounds)} values within "
                             "the lower bounds")
        self.resp = self.resp.with_y(y)
        if status != "done":   # y is in A: fit finishes it from the same start
            return self.fit(start=start, optimizer="quasi-newton")
        return self._take_optimum(take_run(OptSummary(start, self.lower_bounds), result))

    def _optimum(self) -> Optimum:
        """The compiled default fit of this model (``optimize.newton_plan``), kept."""
        plan = self.__dict__.get("_optimum_plan")
        if plan is not None and plan.serves(self._core, self.reml):
            return plan
        evaluator = self.__dict__.get("_evaluator")
        if evaluator is None or not evaluator.serves(self._core, self.reml):
            evaluator = self._evaluator = CoreObjective(self._core, self.reml, self._theta_perm)
        plan = self._optimum_plan = newton_plan(self, evaluator)
        return plan

    def _checked(self) -> "LinearMixedModel":
        """The fit's warnings (lost digits, a singular fit, lme4's convergence
        checks: lmmfast.convergence); returns ``self``."""
        self._check_digits()
        warn_if_singular(self)
        warn_convergence(self)
        return self

    def _check_digits(self) -> None:
        """Warn where the factor at the fitted theta cancels more digits of A than
        ``DIGITS_TOL`` allows (eq. 75)."""
        lay = self._layout
        xy = lay.block_a(self._a, lay.n_terms, lay.n_terms)[::lay.p1 + 1]
        lost = digits_lost(self._core.lxx(), xy)
        if lost > DIGITS_TOL:
            warnings.warn(
                f"the fixed effects or the response are so ill-conditioned that results "
                f"may be accurate only to about {lost:.0e} (relative): check for nearly "
                "collinear fixed-effect columns, or rescale them", ConditioningWarning,
                stacklevel=3)

    def _take_optimum(self, summary: OptSummary) -> "LinearMixedModel":
        """The results of a fit that is done, the factor at ``summary.final``."""
        self.optsum = summary
        self._set_theta(summary.final, factored=True)
        return self

    @cached_property
    def _inner_columns(self) -> tuple[list, list]:
        """Level codes and z of each term, in the core's order (for refits)."""
        inner = [self.remats[i] for i in self._internal]
        return [r.refs for r in inner], [r.z for r in inner]

    # ---------------------------------------------------------- theta spaces
    @cached_property
    def theta_names(self) -> list[str]:
        """lme4's names of theta, in lme4's order."""
        return [name for r in self.remats for name in r.theta_names()]

    @cached_property
    def lower_bounds(self) -> np.ndarray:
        """Lower bounds of theta in lme4's order (0 on lambda's diagonal, -inf below)."""
        return np.concatenate([r.theta_lower() for r in self.remats])

    def _to_internal(self, theta: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(theta, dtype=np.float64)[self._theta_perm])

    def criterion(self, theta) -> float:
        """The profiled criterion at ``theta`` (lme4 order): REML (eq. 20) or deviance (eq. 18).

        Evaluating it does not change the fitted results.
        """
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (len(self.theta_names),):
            raise ValueError(f"theta must have length {len(self.theta_names)}")
        value = self._core.objective(self._to_internal(theta), self.reml)
        if self._theta is not None:   # leave the factor at the fitted theta
            self._core.update(self._to_internal(self._theta))
        return value

    def criterion_gradient(self, theta) -> tuple[float, np.ndarray]:
        """The profiled criterion at ``theta`` (lme4 order) and its gradient in theta
        (eqs. 64-66); evaluating them does not change the fitted results."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (len(self.theta_names),):
            raise ValueError(f"theta must have length {len(self.theta_names)}")
        grad_internal = np.empty(len(theta))
        value = self._core.gradient(self._to_internal(theta), self.reml, grad_internal)
        if self._theta is not None:   # leave the factor at the fitted theta
            self._core.update(self._to_internal(self._theta))
        grad = np.empty(len(theta))
        grad[self._theta_perm] = grad_internal
        return value, grad

    # ------------------------------------------------------------------ fit
    def fit(self, *, start=None, n_threads=None, **options) -> "LinearMixedModel":
        """Minimise the profiled criterion over theta (eq. 24); returns ``self``.

        ``n_threads``: most BLAS threads (default: the model's ``n_threads``,
        else chosen by lmmfast.threads); see ``_fit`` for the rest.
        """
        n = self.n_threads if n_threads is None else as_n_threads(n_threads)
        with blas_threads(self._layout, n):
            return self._fit(start=start, **options)

    def _fit(self, *, start=None, **options) -> "LinearMixedModel":
        """The fit of ``fit``, with the BLAS threads already chosen: the sequence of
        ``optimize.fit_theta`` (start, Newton steps, BOBYQA fallback, boundary
        step, exact-fit check), then the checks of the fit at its optimum.

        ``start`` is theta's starting value (lme4 order; default lambda = I on
        the natural scale of each covariate, which is lme4's lambda = I for
        intercepts and covariates of unit root mean square, except that with
        the default optimiser a random intercept starts at its
        method-of-moments estimate, eq. 71);
        ``options`` choose the optimiser and its tolerances (fields of
        ``OptSummary``): ``optimizer`` is ``"quasi-newton"`` (trust-region
        Newton steps on the analytic gradient and the average-information
        Hessian, eqs. 66, 69, 70; the default, finished by BOBYQA if it stops
        without converging), ``"bobyqa"`` (derivative-free, as lme4),
        ``"nelder-mead"`` (NLopt's simplex) or ``"l-bfgs-b"`` (SciPy's, on the
        analytic gradient); a DataError for any other name;
        ``gtol`` (Newton steps),
        ``ftol_rel``, ``ftol_abs``, ``xtol_abs``, ``initial_step`` (BOBYQA),
        ``maxeval``.
        """
        return self._take_optimum(fit_theta(self, start, options))._checked()

    @cached_property
    def _default_start(self) -> np.ndarray:
        """``optimize.default_start`` of this model, kept (not to be changed)."""
        return default_start(self)

    @cached_property
    def _intercept_terms(self) -> list[tuple[int, int]]:
        """``optimize.intercept_terms`` of this model, kept."""
        return intercept_terms(self)

    @cached_property
    def _scale(self) -> np.ndarray:
        return self._theta_scale()

    def _theta_scale(self) -> np.ndarray:
        """The natural scale of each element of theta (``design.rows.theta_scale``)."""
        return theta_scale(self.remats, self._z_sumsq, self.nobs)

    @property
    def _z_sumsq(self) -> list[np.ndarray] | None:
        """Sum of squares of each column of each term's z (lme4's order), from the
        rows held or found by the reduction; None for a model of A alone."""
        if self._z_sumsq_given is not None:
            return self._z_sumsq_given
        if any(r.z is None or len(r.z) == 0 for r in self.remats):
            return None
        return [column_sumsq(r.z, r.cnames) for r in self.remats]

    def _set_theta(self, theta: np.ndarray, factored: bool = False) -> None:
        """Update the factor at theta (unless ``factored``: it is already there) and
        clear every result derived from it."""
        info = 0 if factored else self._core.update(self._to_internal(theta))
        if info != 0:
            raise FitError(f"the Cholesky factor failed at theta = {theta} (info {info})")
        self._theta = theta
        for name in ("vcov", "varcorr", "fitted", "residuals", "convergence"):
            self.__dict__.pop(name, None)
        self._solution_cache = None
        if self._layout.n_l > EAGER_SOLVE_MIN:   # while the factor is at hand
            self._solution_cache = self._solve()

    @property
    def _solution(self) -> dict:
        """beta-hat, u, b and the criterion's pieces at the fitted theta (computed
        when first asked for: a refit in a bootstrap loop may need only some)."""
        if self._solution_cache is None:
            self._require_fit()
            self._core.update(self._to_internal(self._theta))   # others may have moved it
            self._solution_cache = self._solve()
        return self._solution_cache

    def _require_fit(self) -> None:
        if self._theta is None:
            raise FitError("the model has not been fitted: call fit() first")

    # -------------------------------------------------------------- results
    def _fixed_factor(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """R_X (lower, L_XX of X's own basis), beta-hat, and beta-hat in the core's
        working basis, from the current factor (eqs. 21, 73, 74)."""
        lxx_w = self._core.lxx()
        p = lxx_w.shape[0] - 1
        beta_w = self._core.solve_beta()
        if self._basis.identity:
            return lxx_w[:p, :p], beta_w, beta_w
        return self._basis.lxx(lxx_w)[:p, :p], self._basis.beta(beta_w), beta_w

    def _solve(self) -> dict:
        """beta-hat, u, b and the criterion's pieces from the current factor (eqs. 16-22)."""
        rx, beta, beta_w = self._fixed_factor()
        u = self._core.solve_u(np.ascontiguousarray(beta_w))
        ld_l2, ld_rx2, pwrss = self._core.components()
        # u in internal order -> per term, lme4 order; b = lambda u per level
        u_terms, b_terms = {}, []
        start = 0
        for i in self._internal:
            q = self.remats[i].q
            u_terms[i] = u[start:start + q]
            start += q
        pos = 0
        for i, r in enumerate(self.remats):
            lam = r.lambda_(self._theta[pos:pos + r.n_theta])
            b_terms.append(u_terms[i].reshape(r.nlevels, r.k) @ lam.T)
            pos += r.n_theta
        return dict(beta=beta, rx=rx, u=u_terms, b=b_terms, ld_l2=ld_l2,
                    ld_rx2=ld_rx2, pwrss=pwrss)

    @property
    def theta(self) -> pd.Series:
        """Relative covariance parameters, lme4's order and names."""
        self._require_fit()
        return pd.Series(self._theta, index=self.theta_names, name="theta")

    @property
    def n_evals(self) -> int:
        """Objective evaluations used by the optimiser."""
        self._require_fit()
        return self.optsum.n_evals

    @property
    def converged(self) -> bool:
        self._require_fit()
        return self.optsum.converged

    @property
    def optimizer_message(self) -> str:
        self._require_fit()
        return self.optsum.return_code

    @cached_property
    def convergence(self) -> "Convergence":
        """lme4's convergence checks at the fit (scaled gradient, Hessian,
        singularity; lmmfast.convergence, eqs. 85-88), as a ``Convergence``."""
        self._require_fit()
        return check_convergence(self)

    def allfit(self, optimizers=None) -> pd.DataFrame:
        """Refit with every optimiser (or those named), as lme4's ``allFit``: one
        row per optimiser with objective, time, evaluations, theta and fixef."""
        return allfit(self, optimizers)

    @property
    def objective(self) -> float:
        """REML criterion (REML fits, eq. 20) or deviance (ML fits, eq. 18) at the fit."""
        self._require_fit()
        sol = self._solution
        n = self.nobs
        ld_w = self._log_det_w
        if self.reml:
            dof = n - self.p
            return float(sol["ld_l2"] - ld_w + sol["ld_rx2"]
                         + dof * (1 + np.log(2 * np.pi * sol["pwrss"] / dof)))
        return float(sol["ld_l2"] - ld_w + n * (1 + np.log(2 * np.pi * sol["pwrss"] / n)))

    @property
    def p(self) -> int:
        """Number of fixed effects (after dropping rank-deficient columns)."""
        return len(self.fixef_names)

    @property
    def sigma(self) -> float:
        """Residual standard deviation: sqrt(pwrss / (n - p)) for REML, sqrt(pwrss / n) for ML (eq. 19)."""
        dof = self.nobs - (self.p if self.reml else 0)
        return float(np.sqrt(self._solution["pwrss"] / dof))

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates beta-hat (eq. 21)."""
        return pd.Series(self._solution["beta"], index=self.fixef_names, name="fixef")

    @cached_property
    def vcov(self) -> pd.DataFrame:
        """Covariance of beta-hat: sigma^2 (R_X R_X^T)^{-1} (eq. 23)."""
        rx = self._solution["rx"]
        inv = np.linalg.inv(rx) if self.p else np.zeros((0, 0))
        v = self.sigma ** 2 * inv.T @ inv
        return pd.DataFrame(v, index=self.fixef_names, columns=self.fixef_names)

    @property
    def stderr(self) -> pd.Series:
        """Standard errors of the fixed effects."""
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self.fixef_names,
                         name="stderr")

    @property
    def df_params(self) -> int:
        """Number of parameters: fixed effects, theta and sigma."""
        return self.p + len(self.theta_names) + 1

    @property
    def loglik(self) -> float:
        """Log-likelihood (REML fits: the restricted log-likelihood), -objective / 2."""
        return -self.objective / 2.0

    @property
    def deviance(self) -> float:
        """-2 log-likelihood (for REML fits, -2 times the restricted one, as lme4's logLik)."""
        return -2.0 * self.loglik

    @property
    def aic(self) -> float:
        return self.deviance + 2.0 * self.df_params

    @property
    def bic(self) -> float:
        return self.deviance + np.log(self.nobs) * self.df_params

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))``: grp, var1, var2, vcov, sdcor."""
        theta_split = np.split(self._theta, np.cumsum([r.n_theta for r in self.remats])[:-1])
        lambdas = [r.lambda_(t) for r, t in zip(self.remats, theta_split)]
        return varcorr_table([r.group for r in self.remats], [r.cnames for r in self.remats],
                             lambdas, self.sigma)

    @property
    def ngrps(self) -> dict[str, int]:
        """Number of levels of each grouping factor (lme4's ``ngrps``)."""
        out: dict[str, int] = {}
        for r in self.remats:
            out.setdefault(r.group, r.nlevels)
        return out

    @property
    def is_singular(self) -> bool:
        """lme4's ``isSingular``: a diagonal element of some lambda below 1e-4."""
        self._require_fit()
        diag = self._theta[self.lower_bounds == 0]
        return bool((diag < SINGULAR_TOL).any())

    def ranef(self, condvar: bool = False) -> dict[str, pd.DataFrame]:
        """Conditional modes b of the random effects, per grouping factor (eq. 22).

        Terms that share a grouping factor (e.g. from ``||``) are shown together.
        With ``condvar=True`` each frame carries, in ``.attrs["condvar"]``, the
        conditional covariance matrices of its levels (lme4's ``condVar``, eq. 25)
        and the columns' conditional standard deviations in ``.attrs["condsd"]``.
        """
        if condvar:
            from .condvar import ranef_with_condvar
            return ranef_with_condvar(self)
        sol = self._solution
        out: dict[str, pd.DataFrame] = {}
        for r, b in zip(self.remats, sol["b"]):
            df = pd.DataFrame(b, index=pd.Index(r.levels, name=r.group), columns=r.cnames)
            out[r.group] = pd.concat([out[r.group], df], axis=1) if r.group in out else df
        return out

    @cached_property
    def fitted(self) -> np.ndarray:
        """Conditional fitted values X beta + Z b (+ offset)."""
        return self._rows.fitted(self)

    @cached_property
    def residuals(self) -> np.ndarray:
        """Response residuals y - fitted."""
        return self._rows.residuals(self)

    def residual_quantiles(self) -> np.ndarray:
        """Quantiles (0, 1/4, 1/2, 3/4, 1) of the scaled Pearson residuals,
        residual * sqrt(weight) / sigma, as lme4's summary prints them."""
        from .summary import scaled_residuals
        values = scaled_residuals(self)
        return np.quantile(values[np.isfinite(values)], [0.0, 0.25, 0.5, 0.75, 1.0])

    # ------------------------------------------------------------- inference
    def coef_table(self, ddf: str | None = None) -> pd.DataFrame:
        """Fixed-effects table: Estimate, Std. Error, (df,) t value, Pr(>|t|).

        ``ddf``: None (Wald, normal reference), ``"satterthwaite"`` (lmerTest) or
        ``"kenward-roger"`` (pbkrtest).
        """
        from .fixed_tests import coef_table
        return coef_table(self, ddf=ddf)

    def anova(self, ddf: str = "satterthwaite") -> pd.DataFrame:
        """Type III F tests of each fixed-effects term (lmerTest's ``anova``)."""
        from .fixed_tests import anova_table
        return anova_table(self, ddf=ddf)

    def r2(self) -> dict[str, float]:
        """Nakagawa's conditional and marginal R² (performance's ``r2_nakagawa``)."""
        from .r2 import r2_nakagawa
        return r2_nakagawa(self)

    def icc(self) -> dict[str, float]:
        """Adjusted and unadjusted intraclass correlation (performance's ``icc``)."""
        from .r2 import icc
        return icc(self)

    def ranova(self, data=None, weights=None, offset=None,
               reduce_terms: bool = True) -> pd.DataFrame:
        """LRT of each random-effects term reduced by one (lmerTest's ``ranova``).

        The reduced models are refitted to the data the model was built from;
        ``data``, ``weights``, ``offset`` give it again where the model does not
        hold it (one restored from a pickle)."""
        from .ranova import ranova
        if data is None:
            call = self.__dict__.get("_call")
            if call is None:
                raise FitError("ranova() refits reduced models to the model's data, which "
                               "this model does not hold (restored from a pickle, or built "
                               "from cross-products): pass data= (and weights=, offset= as "
                               "the model was fitted with)")
            data, weights, offset = call["data"], call["weights"], call["offset"]
        return ranova(self, data, weights=weights, offset=offset, reduce_terms=reduce_terms)

    def emmeans(self, specs, by=None, at=None, ddf: str = "kenward-roger", level: float = 0.95):
        """Estimated marginal means as R's emmeans: ``.table`` and ``.contrast(method, adjust)``."""
        from .emmeans import emmeans
        return emmeans(self, specs, by=by, at=at, ddf=ddf, level=level)

    def tidy(self, effects=("fixed", "ran_pars"), conf_int: bool = False,
             conf_level: float = 0.95, ddf: str | None = "satterthwaite") -> pd.DataFrame:
        """broom.mixed's ``tidy``: one row per fixed effect, variance parameter or conditional mode."""
        from .tidy import tidy
        return tidy(self, effects=effects, conf_int=conf_int, conf_level=conf_level, ddf=ddf)

    def glance(self) -> pd.DataFrame:
        """broom.mixed's ``glance``: nobs, sigma, logLik, AIC, BIC, REMLcrit or deviance, df.residual."""
        from .tidy import glance
        return glance(self)

    def confint(self, parm=None, level: float = 0.95, method: str = "profile",
                **kwargs) -> pd.DataFrame:
        """Confidence intervals (``"wald"``, ``"profile"`` or ``"bootstrap"``) as lme4's ``confint``."""
        from .confint import confint
        return confint(self, parm=parm, level=level, method=method, **kwargs)

    def profile(self, **kwargs):
        """Profile zeta traces of every parameter (lme4's ``profile``)."""
        from .profile import profile
        return profile(self, **kwargs)

    def bootstrap(self, n: int, seed=None, n_jobs: int | None = None, **kwargs) -> pd.DataFrame:
        """Parametric bootstrap: simulate from the fit and refit ``n`` times."""
        from .bootstrap import bootstrap
        return bootstrap(self, n, seed=seed, n_jobs=n_jobs, **kwargs)

    def simulate(self, n: int = 1, seed=None, **kwargs) -> np.ndarray:
        """Responses simulated from the fitted model (lme4's ``simulate``)."""
        from .simulate import simulate
        return simulate(self, n, seed=seed, **kwargs)

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False,
                offset=None, se_fit: bool = False, interval=None, level: float = 0.95):
        """Predictions as lme4's ``predict``: conditional on the random effects unless ``re_form="~0"``.

        ``offset``: the new rows' offset (a column name or values); by default the
        fit's offset column, when the fit was given one by name.  ``se_fit=True``
        or ``interval="confidence"`` (population level, ``re_form="~0"``) return a
        DataFrame with ``fit``, ``se.fit`` and Wald limits ``lwr``, ``upr`` at ``level``.
        """
        from .predict import predict
        return predict(self, newdata=newdata, re_form=re_form,
                       allow_new_levels=as_flag(allow_new_levels, "allow_new_levels"),
                       offset=offset, se_fit=se_fit, interval=interval, level=level)

    def marginal_effects(self, term, by=None, at=None, n: int = 10, level: float = 0.95):
        """ggeffects' ``ggpredict`` table: population-level predictions over ``term``'s values,
        one line per value of ``by``, other variables at their mean or reference level
        (``at=`` fixes them); see :mod:`lmmfast.effects`."""
        from .effects import marginal_effects
        return marginal_effects(self, term, by=by, at=at, n=n, level=level)

    # ---------------------------------------------------------- presentation
    def summary(self, ddf: str | None = None) -> str:
        """lme4-style summary text; ``ddf="satterthwaite"`` adds df and p-values as lmerTest."""
        from .summary import format_summary
        return format_summary(self) if ddf is None else format_summary(self, ddf=ddf)

    def __str__(self) -> str:
        if self._theta is None:
            return f"LinearMixedModel({self.formula!r}, not fitted)"
        return self.summary()

    def __repr__(self) -> str:
        return self.__str__()


class StreamedLinearMixedModel(LinearMixedModel):
    """A model of a pandas frame reduced in row chunks (``design.reduce``).

    Used automatically above ``STREAM_MIN_ROWS`` rows, or with
    ``streaming=True``: X, Z and y are never held for all rows.  Every
    parameter-level result is as in memory; ``fitted``, ``residuals`` and
    ``predict()`` are recomputed chunk by chunk from the caller's frame (which
    must not change in between); ``refit``, ``simulate``, ``bootstrap`` and
    Kenward-Roger's df, which need the rows, raise a DataError saying what to
    do instead (``design.rows.require_rows``).
    """

    def __init__(self, formula: str, data, reml: bool = True, weights=None, offset=None,
                 streaming: bool | None = None, *, n_threads: int | None = None,
                 chunk_rows: int = PIECE_ROWS, stacklevel: int = 3):
        self.n_threads = as_n_threads(n_threads)
        self.data_name = data_name(data)
        reml = as_flag(reml, "reml")
        data = used_frame(parse_formula(formula), data, weights, offset)
        reducer = ChunkReducer(data, weights, offset, chunk_rows)
        spec = DesignSpec.from_meta(formula, data.iloc[:0], weights, offset, chunk_rows)
        reduced = reduce_design(spec, reducer, stacklevel=stacklevel)
        rows = ChunkedRows(reducer, spec, reduced.keep)
        self._init_from_reduction(formula, reml, reduced, rows)
        if spec.has_weights or spec.has_offset or spec.parsed.offsets:
            kept = list(rows.model_rows())
            self.resp = Response(
                None, np.concatenate([r.weights for r in kept]) if spec.has_weights else None,
                np.concatenate([r.offset for r in kept])
                if spec.has_offset or spec.parsed.offsets else None)
        self.row_index = data.index if not self.n_dropped else None

    def _form_crossproducts(self) -> None:
        """A with the response's working weights and working response, re-formed
        from the data chunk by chunk (the pass of ``design.reduce`` that forms A)."""
        resp = self.resp
        layout, acc, log_det_w = reweighted(self._spec, self._rows.reducer, self._keep,
                                            resp.working_weights, resp.working_y)
        self._setup_core(layout, acc, log_det_w)

    @classmethod
    def from_frame(cls, formula: str, data, reml: bool = True, weights=None, offset=None,
                   *, chunk_rows: int = PIECE_ROWS) -> "StreamedLinearMixedModel":
        """The (unfitted) model of the pandas frame ``data``, in chunks of ``chunk_rows`` rows."""
        return cls(formula, data, reml, weights, offset, chunk_rows=chunk_rows, stacklevel=4)

    def refit(self, y, *, start=None, **options):
        require_rows(self, "refit")

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False,
                offset=None):
        """As ``LinearMixedModel.predict``; without ``newdata``, the fit's rows chunk by chunk."""
        if newdata is not None:
            return super().predict(newdata, re_form=re_form, allow_new_levels=allow_new_levels,
                                   offset=offset)
        if offset is not None:
            raise DataError("offset= applies to newdata; the fit's rows use the fit's offset")
        if re_form is None:
            return np.array(self.fitted, dtype=np.float64)
        from .predict import predict
        parts = [predict(self, piece, re_form=re_form, allow_new_levels=allow_new_levels,
                         offset=off) for piece, off in self._rows.complete_pieces()]
        return np.concatenate(parts) if parts else np.zeros(0)


class DaskLinearMixedModel(LinearMixedModel):
    """A model of a Dask DataFrame or Parquet files (``design.dask``).

    ``lmmfast.lmer(formula, ddf)`` and ``LinearMixedModel(formula, ddf)`` give
    one; ``fitted``, ``residuals`` and ``predict()`` of the fit's rows are Dask
    Series; ``dask_stats`` reports the partitions, passes over the data and the
    bytes brought to the client while building it.
    """

    def __init__(self, formula: str, data, reml: bool = True, weights=None, offset=None,
                 streaming: bool | None = None, *, n_threads: int | None = None,
                 split_every: int = SPLIT_EVERY, chunk_rows: int = PIECE_ROWS,
                 stacklevel: int = 3):
        self.n_threads = as_n_threads(n_threads)
        self.data_name = data_name(data)
        reml = as_flag(reml, "reml")
        ddf = as_dask_frame(data)
        for value, what in ((weights, "weights"), (offset, "offset")):
            if value is not None and not isinstance(value, str):
                raise DataError(f"for Dask data, {what} must be the name of a column "
                                f"(got {type(value).__name__})")
        spec = DesignSpec.from_meta(formula, ddf._meta, weights, offset, chunk_rows)
        reducer = DaskReducer(ddf, split_every)
        reduced = reduce_design(spec, reducer, stacklevel=stacklevel)
        self._init_from_reduction(formula, reml, reduced, DaskRows(ddf, spec, reduced.keep))
        self._ddf = ddf
        self.dask_stats = {"partitions": int(ddf.npartitions), "passes": reducer.passes,
                           "bytes_to_client": reducer.bytes_to_client}

    @classmethod
    def from_dask(cls, formula: str, data, reml: bool = True, weights=None, offset=None,
                  *, split_every: int = SPLIT_EVERY,
                  chunk_rows: int = PIECE_ROWS) -> "DaskLinearMixedModel":
        """The (unfitted) model of ``data``, a Dask DataFrame or a Parquet path/glob."""
        return cls(formula, data, reml, weights, offset, split_every=split_every,
                   chunk_rows=chunk_rows, stacklevel=4)

    def refit(self, y, *, start=None, **options):
        raise DataError("a model of a Dask DataFrame keeps no rows on the client: refit "
                        "needs the response as an array of the fit's rows")

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False,
                offset=None):
        """As ``LinearMixedModel.predict``: a Dask Series for the fit's rows or a Dask
        ``newdata``, an array for a pandas ``newdata``."""
        if newdata is None:
            if offset is not None:
                raise DataError("offset= applies to newdata; the fit's rows use the fit's offset")
            if re_form is None:
                return self.fitted
            return self._rows.predict(self, re_form, allow_new_levels)
        if is_partitioned(newdata) and not isinstance(newdata, (str, os.PathLike)):
            return predict_dask(self, newdata, re_form=re_form,
                                allow_new_levels=allow_new_levels, offset=offset)
        return super().predict(newdata, re_form=re_form, allow_new_levels=allow_new_levels,
                               offset=offset)

    def residual_quantiles(self) -> np.ndarray:
        """Quantiles (0, 1/4, 1/2, 3/4, 1) of the scaled Pearson residuals, from the cluster."""
        self._require_fit()
        key = tuple(self._theta)
        cached = self.__dict__.get("_resid_quantiles")
        if cached is None or cached[0] != key:
            cached = (key, exact_quantiles(self._rows.series(self, "pearson"),
                                           [0.0, 0.25, 0.5, 0.75, 1.0]))
            self.__dict__["_resid_quantiles"] = cached
        return cached[1] / self.sigma


def lmer(formula: str, data, reml: bool = True, weights=None, offset=None, *,
         n_threads: int | None = None) -> LinearMixedModel:
    """Fit a linear mixed-effects model, as lme4's ``lmer``.

    ``n_threads``: most BLAS threads of the fit (default: chosen by
    lmmfast.threads from the work and the free cores).

    >>> import lmmfast
    >>> fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)",
    ...                    lmmfast.datasets.load("sleepstudy"))
    >>> round(fit.objective, 4)
    1743.6283
    """
    return LinearMixedModel(formula, data, reml=reml, weights=weights, offset=offset,
                            n_threads=n_threads).fit()
