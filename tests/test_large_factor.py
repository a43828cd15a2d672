"""A fixed-effect factor with many levels: [X y]^T [X y] accumulated from a row's
nonzero entries only, chunk-independent and exact, and X's rank check on the
merged repeated rows (theory.md, eq. 12)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy.linalg.lapack import dgeqrf

from dense_reference import dense_criterion
from lmmfast import _crossprod
from lmmfast.design import crossprod as blocks
from lmmfast.model import LinearMixedModel
from lmmfast.design.fixed import independent_columns, merge_repeated_rows, r_diagonal


def _factor_data(n=1200, levels=300, groups=30, seed=0):
    rng = np.random.default_rng(seed)
    f = np.concatenate([np.arange(levels), rng.integers(0, levels, n - levels)])
    g = rng.integers(0, groups, n)
    y = 0.01 * f + rng.normal(size=groups)[g] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "f": pd.Categorical([f"f{i:03d}" for i in f]),
                         "g": pd.Categorical([f"g{i:02d}" for i in g])})


def _crossproduct_args(model):
    inner = [model.remats[i] for i in model._internal]
    return (model._layout, [r.refs for r in inner], [r.z for r in inner], model.x,
            model._y_eff)


def test_sparse_rows_give_the_correctly_rounded_sums():
    """Half the entries zero: the lower triangle of [X y]^T [X y] is the exact sum
    of the products rounded once (as adding every product in double-double)."""
    rng = np.random.default_rng(3)
    xy = rng.normal(size=(60, 9))
    xy[rng.random(xy.shape) < 0.5] = 0.0
    xy[:, 0] = 1.0
    acc = np.zeros((81, 2))
    _crossprod.add_xy_xy_dd(xy, acc)
    got = _crossprod.dd_round(acc).reshape(9, 9)   # column-major: got[j, i] = entry (i, j)
    for j in range(9):
        for i in range(j, 9):
            exact = sum(Fraction(a) * Fraction(b) for a, b in zip(xy[:, i], xy[:, j]))
            assert got[j, i] == float(exact)
    assert not got[np.triu_indices(9, 1)[::-1]].any()   # strict upper triangle untouched


def test_factor_a_is_the_same_in_any_chunks():
    """A 300-level fixed factor: A bit for bit the same from one chunk, from
    many chunks and from chunks shared among threads."""
    model = LinearMixedModel("y ~ f + (1 | g)", _factor_data())
    assert model.p == 300
    args = _crossproduct_args(model)
    one = blocks.crossproducts(*args, chunk_rows=len(model._y_eff), workers=1)
    for chunk_rows, workers in [(977, 1), (101, 1), (37, 3)]:
        np.testing.assert_array_equal(
            blocks.crossproducts(*args, chunk_rows=chunk_rows, workers=workers), one)


@pytest.mark.parametrize("reml", [True, False])
def test_factor_fit_matches_the_dense_reference(reml):
    data = _factor_data()
    fit = LinearMixedModel("y ~ f + (1 | g)", data, reml=reml).fit()
    ref = dense_criterion(fit.x, fit._y_eff, [(fit.remats[0].refs, fit.remats[0].z, 30)],
                          fit.theta, reml)
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-10)
    np.testing.assert_allclose(fit.fixef, ref["beta"], rtol=1e-7, atol=1e-9)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-8)


def test_merged_rows_have_lapacks_r_diagonal():
    """[X y] of a 300-level factor: the repeated rows of X merge into one row per
    level (and one for y's deviations), with |R_jj| of the whole matrix."""
    data = _factor_data()
    x = LinearMixedModel("y ~ f + (1 | g)", data).x
    xy = np.column_stack([x, data["y"].to_numpy()])
    merged = merge_repeated_rows(xy)
    assert merged.shape == (301, 301)
    want = np.abs(np.diag(dgeqrf(xy)[0]))
    np.testing.assert_allclose(np.abs(np.diag(dgeqrf(merged)[0])), want, rtol=1e-10)
    np.testing.assert_allclose(r_diagonal(iter([xy[:700], xy[700:]]), 301), want, rtol=1e-10)
    # rows not repeated: nothing to merge
    dense = np.random.default_rng(1).normal(size=(400, 20))
    assert merge_repeated_rows(dense) is dense


def test_rank_check_drops_the_later_collinear_columns_of_a_factor():
    """Dependent indicator columns among 300 are dropped (the later of two
    collinear columns, as R's limited pivoting does), also when the merged rows
    leave no spare rows for the rounding noise of a dropped column."""
    data = _factor_data()
    x = LinearMixedModel("y ~ f + (1 | g)", data).x.copy()
    x[:, 7] = x[:, 2]
    x[:, 150] = 2.0 * x[:, 10] - x[:, 11]
    x[:, 299] = x[:, 0] - x[:, 1:299].sum(axis=1)   # the reference level's indicator
    keep = independent_columns(x)
    assert sorted(set(range(300)) - set(keep.tolist())) == [7, 150, 299]
    # the same choice from QR without pivoting on the kept columns: all independent
    np.testing.assert_array_equal(independent_columns(x[:, keep]), np.arange(297))
