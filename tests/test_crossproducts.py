"""A = [Z X y]^T W [Z X y] summed from pieces of the data equals the whole (eq. 12),
and a model fitted from summed partial cross-products equals the in-memory fit."""

from __future__ import annotations

import numpy as np
import pytest

import lmmfast
from lmmfast.design import crossprod as blocks
from lmmfast.design.layout import BLOCK_SPARSE
from lmmfast.model import LinearMixedModel

CASES = [
    ("sleepstudy", "Reaction ~ 1 + Days + (1 + Days | Subject)"),
    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    ("Pastes", "strength ~ 1 + (1 | batch/cask)"),
    ("InstEval", "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)"),
]


def _pieces(model, bounds):
    inner = [model.remats[i] for i in model._internal]
    w = model.weights
    total = np.zeros_like(model._a)
    for lo, hi in bounds:
        part = blocks.crossproducts(
            model._layout, [r.refs[lo:hi] for r in inner], [r.z[lo:hi] for r in inner],
            model.x[lo:hi], model._y_eff[lo:hi], None if w is None else np.sqrt(w[lo:hi]),
            chunk_rows=977)
        total += part
    return total


@pytest.mark.parametrize("dataset,formula", CASES, ids=[c[0] for c in CASES])
def test_partial_crossproducts_add_up(dataset, formula):
    model = LinearMixedModel(formula, lmmfast.datasets.load(dataset))
    n = model.nobs
    cuts = [0, n // 7, n // 2, n - 3, n]
    total = _pieces(model, list(zip(cuts[:-1], cuts[1:])))
    np.testing.assert_allclose(total, model._a, rtol=1e-12, atol=1e-9 * np.abs(model._a).max())


@pytest.mark.parametrize("dataset,formula", CASES[:3], ids=[c[0] for c in CASES[:3]])
@pytest.mark.parametrize("reml", [True, False])
def test_fit_from_crossproducts_equals_in_memory(dataset, formula, reml):
    model = LinearMixedModel(formula, lmmfast.datasets.load(dataset), reml=reml)
    a = _pieces(model, [(0, model.nobs // 3), (model.nobs // 3, model.nobs)])
    reduced = LinearMixedModel.from_crossproducts(
        formula, reml=reml, remats=model.remats, fixef_names=model.fixef_names,
        layout=model._layout, a=a, nobs=model.nobs, response=model.response).fit()
    full = model.fit()
    # A differs from the in-memory one by summation roundoff only; the optimiser
    # then stops at a point equally good to 1e-10, within its tolerance in theta
    assert reduced.objective == pytest.approx(full.objective, rel=1e-10)
    np.testing.assert_allclose(reduced.theta, full.theta, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(reduced.fixef, full.fixef, rtol=1e-6)
    assert reduced.sigma == pytest.approx(full.sigma, rel=1e-5)
    assert reduced.varcorr.grp.tolist() == full.varcorr.grp.tolist()
    with pytest.raises(Exception):
        reduced.fitted  # no rows: row-level results are not available


@pytest.mark.parametrize("dataset,formula", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("weighted", [False, True])
def test_threads_give_the_same_doubles(dataset, formula, weighted):
    """Chunks shared among threads, each accumulating in double-double, give A
    bit for bit as one thread does."""
    model = LinearMixedModel(formula, lmmfast.datasets.load(dataset))
    inner = [model.remats[i] for i in model._internal]
    sqrt_w = np.sqrt(np.linspace(0.5, 2.0, model.nobs)) if weighted else None
    args = (model._layout, [r.refs for r in inner], [r.z for r in inner], model.x,
            model._y_eff, sqrt_w)
    one = blocks.crossproducts(*args, chunk_rows=37, workers=1)
    for workers in (2, 3):
        np.testing.assert_array_equal(
            blocks.crossproducts(*args, chunk_rows=37, workers=workers), one)


def _layout(nlev, k, p1, pairs=None):
    """A layout for terms of ``nlev`` levels (the first two crossed by ``pairs``)."""
    rng = np.random.default_rng(0)
    n = 50_000
    refs = [rng.integers(0, nl, n) for nl in nlev]
    if pairs is not None:   # term 1's level determined by term 0's: a thin pattern
        refs[1] = (refs[0] * pairs) % nlev[1]
    return blocks.BlockLayout.build(refs, list(nlev), list(k), p1), n


def test_default_workers_one_per_core_for_a_small_a():
    """A dense-free longitudinal layout: A is tiny next to the rows, so a thread
    per core (at most one per chunk)."""
    layout, n = _layout([1000], [2], 3)
    assert blocks.default_workers(layout, n, n_chunks=16, cores=2) == 2
    assert blocks.default_workers(layout, n, n_chunks=16, cores=4) == 4
    assert blocks.default_workers(layout, n, n_chunks=1, cores=4) == 1


def test_default_workers_one_thread_for_a_large_sparse_a():
    """Two crossed factors whose sparse block has almost a pair per row: a further
    accumulator would cost more memory than a quarter of the rows' values."""
    layout, n = _layout([20_000, 5_000], [1, 1], 2)
    assert BLOCK_SPARSE in layout.kind_a
    assert 16 * layout.n_a > 8 * n * (layout.p1 + 2) // 4
    assert blocks.default_workers(layout, n, n_chunks=16, cores=2) == 1


def test_term_on_the_fixed_columns_shares_x():
    """(1 + Days | Subject) with X = [1, Days]: z is X itself (no second copy of the
    rows), and the fit is lme4's; a term on other columns keeps its own z."""
    data = lmmfast.datasets.load("sleepstudy")
    fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)", data)
    assert fit.remats[0].z is fit.x
    assert fit.objective == pytest.approx(1743.6282719599, rel=1e-9)
    other = lmmfast.lmer("Reaction ~ 1 + (1 + Days | Subject)", data)
    assert other.remats[0].z is not other.x
    assert not np.shares_memory(other.remats[0].z, other.x)


@pytest.mark.parametrize("m,p", [(10, 3), (180, 7), (5, 8), (1000, 16), (3, 1), (1, 3), (4, 4)])
def test_householder_r_is_lapacks_r(m, p):
    """The compiled QR of a few columns gives LAPACK's R (dgeqrf), signs included,
    also with a zero column, a repeated column and fewer rows than columns."""
    from scipy.linalg.lapack import dgeqrf
    from lmmfast import _crossprod
    rng = np.random.default_rng(m * 100 + p)
    a = rng.normal(size=(m, p))
    if p > 2:
        a[:, 1] = 0.0
        a[:, -1] = 2.0 * a[:, 0]
    ref = dgeqrf(a)[0]
    mine = a.copy()
    _crossprod.householder_r(mine)
    k = min(m, p)
    np.testing.assert_allclose(np.triu(mine[:k]), np.triu(ref[:k]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dataset,formula", [CASES[0], CASES[2], CASES[3]],
                         ids=["sleepstudy", "Pastes", "InstEval"])
@pytest.mark.parametrize("columns", [1, 2], ids=["plain", "double-double"])
def test_one_call_adds_every_block_as_its_kernel(dataset, formula, columns):
    """``_crossprod.add_chunk`` (every block of a chunk, scaled by sqrt(w)) adds to
    each block what that block's kernel adds, called alone on pre-scaled rows."""
    from lmmfast import _crossprod
    from lmmfast._crossprod import PLAN_KINDS
    model = LinearMixedModel(formula, lmmfast.datasets.load(dataset))
    lay = model._layout
    inner = [model.remats[i] for i in model._internal]
    refs = [np.ascontiguousarray(r.refs, dtype=np.int64) for r in inner]
    z = [np.ascontiguousarray(r.z, dtype=np.float64) for r in inner]
    sw = np.random.default_rng(1).uniform(0.5, 2.0, model.nobs)
    x, y = np.ascontiguousarray(model.x), np.ascontiguousarray(model._y_eff)
    acc = np.zeros((lay.n_a, columns))
    blocks.add_rows(lay, acc, refs, z, x, y, sw, {})
    xy = np.column_stack([x, y]) * sw[:, None]
    zs = [zz * sw[:, None] for zz in z]
    expected = np.zeros_like(acc)
    kinds = set()
    for kind, s, t, start, end, q_s in lay.accumulation_codes.tolist():
        blk = expected[start:end]
        name = PLAN_KINDS[kind]
        kinds.add(name)
        if name == "xy_xy":
            _crossprod.add_xy_xy_dd(xy, blk)
        elif name == "xy_z":
            _crossprod.add_xy_z_dd(refs[t], zs[t], xy, blk)
        elif name == "diag":
            _crossprod.add_diag_dd(refs[t], zs[t], blk)
        elif name == "sparse":
            colptr, rowidx = lay.pattern(s)
            assert _crossprod.add_offdiag_sparse_dd(refs[s], zs[s], refs[t], zs[t], colptr,
                                                    rowidx, blk) == 0
        else:
            _crossprod.add_offdiag_dense_dd(refs[s], zs[s], refs[t], zs[t], q_s, blk)
    np.testing.assert_array_equal(acc, expected)
    assert {"xy_xy", "xy_z", "diag"} <= kinds
    if dataset == "InstEval":
        assert {"sparse", "dense"} <= kinds
        # a level pair outside a sparse pattern is counted, not added
        bad = [r.copy() for r in refs]
        s = next(s for s in range(1, len(refs)) if lay.patterns[s] is not None)
        pair = set(zip(refs[s].tolist(), refs[0].tolist()))
        j = next(j for j in range(lay.nlev[s]) if (j, int(refs[0][0])) not in pair)
        bad[s][0] = j
        with pytest.raises(ValueError, match="1 rows have level pairs outside"):
            blocks.add_rows(lay, np.zeros((lay.n_a, columns)), bad, z, x, y, sw, {})
