"""The selected inverse of ``BlockedCholesky.gradient`` visited by panels of columns.

Step 3 of ``_selected_inverse`` (eq. 68) visits the pairs of rows of every level
of term 0 by panels of columns of the dense Sigma_tr.  Each entry receives its
terms in the same order whatever the panel width, so narrow panels (forced with
``sel_panel_columns``) must give the same value and gradient, bit for bit, as
one panel (levels one at a time), on designs with scalar and vector terms,
one and two sparse blocks and a dense term before a sparse one.
"""

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast import LinearMixedModel


def _thetas(model, n, seed):
    rng = np.random.default_rng(seed)
    start = np.concatenate([r.theta_init() for r in model.remats]) * model._scale
    return [model._to_internal(start * rng.uniform(0.3, 1.5, start.size)) for _ in range(n)]


def _crossed(formula):
    data = lmmfast.datasets.simulate(2000, groups=(200, 60, 8), covariates=1, seed=4)
    return formula, data


def _dense_before_sparse():
    """Term 1 dense next to term 0, term 2 sparse (as in test_gradient.py)."""
    rng = np.random.default_rng(21)
    n = 1500
    df = pd.DataFrame({
        "a": pd.Categorical(rng.integers(0, 400, n)),
        "b": pd.Categorical(rng.integers(0, 20, n)),
        "c": pd.Categorical(rng.integers(0, 30, n)),
        "x1": rng.normal(size=n),
        "x2": rng.normal(size=n),
    })
    df["y"] = (df.x1 + rng.normal(size=400)[df.a.cat.codes] + rng.normal(size=20)[df.b.cat.codes]
               + rng.normal(size=30)[df.c.cat.codes] + rng.normal(size=n))
    return "y ~ 1 + x1 + x2 + (1 | a) + (1 + x1 + x2 | b) + (1 | c)", df


def _two_sparse(formula):
    return formula, lmmfast.datasets.simulate(1500, groups=(300, 200, 150), covariates=1, seed=4)


DESIGNS = {
    "scalar": _crossed("y ~ 1 + x1 + (1 | g1) + (1 | g2) + (1 | g3)"),
    "vector": _crossed("y ~ 1 + x1 + (1 + x1 | g1) + (1 + x1 | g2) + (1 | g3)"),
    "mixed": _crossed("y ~ 1 + x1 + (1 | g1) + (1 + x1 | g2) + (0 + x1 | g3)"),
    "k0_2": _crossed("y ~ 1 + x1 + (1 + x1 | g1) + (1 | g2)"),
    "two_sparse": _two_sparse("y ~ 1 + x1 + (1 | g1) + (1 + x1 | g2) + (1 | g3)"),
    "two_sparse_k0_2": _two_sparse("y ~ 1 + x1 + (1 + x1 | g1) + (1 | g2) + (1 + x1 | g3)"),
    "dense_first": _dense_before_sparse(),
}
LAYOUT = {  # kind_l of blocks (1, 0) and (2, 0): 2 sparse, 1 dense
    "two_sparse": (2, 2), "two_sparse_k0_2": (2, 2), "dense_first": (1, 2),
}


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("name", list(DESIGNS))
def test_panel_width_does_not_change_the_gradient(name, reml):
    formula, data = DESIGNS[name]
    model = LinearMixedModel(formula, data, reml=reml)
    core = model._core
    if name in LAYOUT:
        assert (int(model._layout.kind_l[1]), int(model._layout.kind_l[3])) == LAYOUT[name]
    for theta in _thetas(model, 2, seed=5):
        theta = np.ascontiguousarray(theta)
        core.sel_panel_columns = 0
        g0 = np.full(theta.size, np.nan)
        v0 = core.gradient(theta, reml, g0)
        assert np.all(np.isfinite(g0))
        for width in (1, 2, 3, 7, 64):
            core.sel_panel_columns = width
            g = np.full(theta.size, np.nan)
            v = core.gradient(theta, reml, g)
            assert v == v0
            np.testing.assert_array_equal(g, g0)
    core.sel_panel_columns = 0
