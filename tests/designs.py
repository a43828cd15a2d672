"""Designs shared by the tests of the core's derivatives (test_gradient, test_hessian).

* ``MODELS``: the reference suite of benchmarks/models.py, name -> (dataset, formula);
* ``CROSSED_FORMULAS``: three-term crossed models on ``lmmfast.datasets.simulate``
  data whose block (1, 0) of L is sparse and block (2, 0) dense;
* ``dense_before_sparse``: data where term 1 is dense next to term 0 and term 2
  sparse, so that the core's term order is not lme4's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

import lmmfast
from lmmfast._cholesky import BLOCK_DENSE, BLOCK_SPARSE
from lmmfast.model import LinearMixedModel


def _benchmark_models() -> dict:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"
    spec = importlib.util.spec_from_file_location("benchmark_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODELS


MODELS = _benchmark_models()

CROSSED_FORMULAS = {
    "scalar": "y ~ 1 + x1 + (1 | g1) + (1 | g2) + (1 | g3)",
    "vector": "y ~ 1 + x1 + (1 + x1 | g1) + (1 + x1 | g2) + (1 | g3)",
    "mixed": "y ~ 1 + x1 + (1 | g1) + (1 + x1 | g2) + (0 + x1 | g3)",
}

DENSE_BEFORE_SPARSE = "y ~ 1 + x1 + x2 + (1 | a) + (1 + x1 + x2 | b) + (1 | c)"


def dense_before_sparse(n: int, levels_c: int, seed: int = 21) -> pd.DataFrame:
    """Data for ``DENSE_BEFORE_SPARSE``: factors of 400, 20 and ``levels_c`` levels."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "a": pd.Categorical(rng.integers(0, 400, n)),
        "b": pd.Categorical(rng.integers(0, 20, n)),
        "c": pd.Categorical(rng.integers(0, levels_c, n)),
        "x1": rng.normal(size=n),
        "x2": rng.normal(size=n),
    })
    df["y"] = (df.x1 + rng.normal(size=400)[df.a.cat.codes]
               + rng.normal(size=20)[df.b.cat.codes]
               + rng.normal(size=levels_c)[df.c.cat.codes] + rng.normal(size=n))
    return df


def crossed_model(formula: str, reml: bool, n: int, groups: tuple):
    """A ``CROSSED_FORMULAS`` model on simulated data, its block (1, 0) of L
    checked sparse and block (2, 0) dense."""
    model = LinearMixedModel(formula, lmmfast.datasets.simulate(n, groups=groups, covariates=1,
                                                                seed=1), reml=reml)
    assert model._layout.kind_l[1] == BLOCK_SPARSE    # block (1, 0)
    assert model._layout.kind_l[3] == BLOCK_DENSE     # block (2, 0)
    return model


def dense_before_sparse_model(reml: bool, n: int, levels_c: int):
    """The ``DENSE_BEFORE_SPARSE`` model, its terms (k = 1, 3, 1) and block kinds checked."""
    model = LinearMixedModel(DENSE_BEFORE_SPARSE, dense_before_sparse(n, levels_c), reml=reml)
    assert list(model._layout.k) == [1, 3, 1]
    assert model._layout.kind_l[1] == BLOCK_DENSE and model._layout.kind_l[3] == BLOCK_SPARSE
    return model
