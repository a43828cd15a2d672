"""The compiled kernels of ``BlockedCholesky`` against the dense reference criterion.

Small crossed designs whose block (1, 0) is stored sparse, with scalar and
k = 2 terms, exercise the sparse rank update by panels, the unrolled k = 2
kernels (scaled copy, Cholesky of the block-diagonal L_00) and the one
left-side dtrsm below a dense diagonal block.
"""

import numpy as np
import pytest

from lmmfast._cholesky import BLOCK_SPARSE, BlockedCholesky
from lmmfast.design.crossprod import crossproducts
from lmmfast.design.layout import BlockLayout

from dense_reference import dense_criterion


def _design(k0, k1, seed=3, n=900, g0=150, g1=90):
    rng = np.random.default_rng(seed)
    r0 = rng.integers(0, g0, n)
    r1 = rng.integers(0, g1, n)
    r0[:g0] = np.arange(g0)
    r1[:g1] = np.arange(g1)
    x = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = x @ [1.0, 0.5] + rng.standard_normal(n)
    z0 = np.column_stack([np.ones(n), x[:, 1]])[:, :k0]
    z1 = np.column_stack([np.ones(n), rng.standard_normal(n)])[:, :k1]
    return x, y, [(r0, np.ascontiguousarray(z0), g0), (r1, np.ascontiguousarray(z1), g1)]


def _core(x, y, terms, layout=None):
    refs = [t[0] for t in terms]
    lay = layout or BlockLayout.build(refs, [t[2] for t in terms], [t[1].shape[1] for t in terms],
                                      x.shape[1] + 1)
    a = crossproducts(lay, refs, [t[1] for t in terms], x, y)
    core = BlockedCholesky(lay.nlev, lay.k, lay.p1, lay.kind_a, lay.kind_l, lay.off_a,
                           lay.off_l, lay.sp_colptr_off, lay.sp_rowidx_off, lay.colptr,
                           lay.rowidx, a, lay.n_l, float(len(y)))
    return core, lay


def _theta(k, rng):
    out = []
    for kk in k:
        lam = np.tril(rng.uniform(0.2, 1.0, (kk, kk)))
        out.extend(lam[i, j] for j in range(kk) for i in range(j, kk))
    return np.array(out)


@pytest.mark.parametrize("k0,k1", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("reml", [False, True])
def test_sparse_block_criterion_matches_dense(k0, k1, reml):
    x, y, terms = _design(k0, k1)
    core, lay = _core(x, y, terms)
    assert int(lay.kind_l[1]) == BLOCK_SPARSE
    rng = np.random.default_rng(k0 * 10 + k1)
    for _ in range(3):
        theta = _theta([k0, k1], rng)
        got = core.objective(theta, reml)
        want = dense_criterion(x, y, terms, theta, reml)["objective"]
        assert got == pytest.approx(want, rel=1e-10)


def test_k2_cholesky_failure_reports_inf():
    x, y, terms = _design(2, 1)
    core, _ = _core(x, y, terms)
    # lambda_0 with a NaN: the block-diagonal factor fails, as dpotrf would
    assert core.objective(np.array([np.nan, 0.1, 0.5, 0.5]), False) == np.inf
    assert core.last_info != 0


def test_unsorted_pattern_is_rejected():
    x, y, terms = _design(1, 1)
    refs = [t[0] for t in terms]
    lay = BlockLayout.build(refs, [150, 90], [1, 1], 3)
    cp, ri = lay.pattern(1)
    j = int(np.argmax(np.diff(cp)))
    lay.rowidx[cp[j]:cp[j + 1]] = lay.rowidx[cp[j]:cp[j + 1]][::-1].copy()
    with pytest.raises(ValueError, match="ascending"):
        BlockedCholesky(lay.nlev, lay.k, lay.p1, lay.kind_a, lay.kind_l, lay.off_a,
                        lay.off_l, lay.sp_colptr_off, lay.sp_rowidx_off, lay.colptr,
                        lay.rowidx, np.zeros(lay.n_a), lay.n_l, 900.0)


@pytest.mark.parametrize("k0,k1", [(1, 1), (2, 1)])
def test_derivatives_follow_the_factor(k0, k1):
    """The gradient and Hessian kept by the derivative work belong to one factor and one
    criterion: an update, a restored factor state or the other criterion recomputes them."""
    x, y, terms = _design(k0, k1)
    core, _ = _core(x, y, terms)
    fresh, _ = _core(x, y, terms)
    rng = np.random.default_rng(5)
    theta1, theta2 = _theta([k0, k1], rng), _theta([k0, k1], rng)
    n = len(theta1)

    def derivatives(c, theta, reml):
        g, h = np.empty(n), np.empty((n, n))
        c.objective(theta, reml)
        value = c.derivatives(reml, g, h)
        return value, g, h

    for reml in (False, True):
        want = derivatives(fresh, theta2, reml)
        derivatives(core, theta1, not reml)
        got = derivatives(core, theta2, reml)   # an update and the other criterion
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        other, _ = _core(x, y, terms)
        derivatives(other, theta1, reml)
        other.__setstate__(core.__reduce__()[1][1])   # core's factor at theta2
        g, h = np.empty(n), np.empty((n, n))
        assert other.derivatives(reml, g, h) == want[0]
        np.testing.assert_array_equal(g, want[1])
        np.testing.assert_array_equal(h, want[2])
