"""The parts of a fit of every reference model, timed apart (pytest-benchmark).

Run: ``pytest benchmarks/test_bench_parts.py --benchmark-only``
(``-k "not insteval"`` for the small models only).

* ``test_setup[model]``: ``LinearMixedModel(formula, data)``: formula,
  model frame, X, y, random-effects terms, cross-products A and the factor's
  set-up; no optimisation.
* ``test_eval[model-fit]``: one evaluation of the profiled criterion,
  ``m.criterion(theta)``, at lmmfast's optimum (one refactorisation of A).
* ``test_eval_gradient[model-fit]``: the criterion with its gradient,
  ``m.criterion_gradient(theta)``: what one step of the default optimiser costs.
* ``test_fit[model-fit]``: ``m.fit()`` alone on a model already set up, with
  ``n_evals`` (the optimiser's evaluations), ``seconds_per_eval`` and the
  objective in ``extra_info``.

So fit time ~ n_evals x (criterion + gradient) time + optimiser overhead, and ``lmmfast.lmer``
(``test_bench_fit.py``) ~ setup + fit.  Timings are reported, never asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

from functools import lru_cache

import pytest

import lmmfast

sys.path.insert(0, str(Path(__file__).parent))
from models import MODELS  # noqa: E402

LARGE = {"insteval"}
FITS = {"REML": True, "ML": False}


def _rounds(name: str, small: int, large: int) -> dict:
    n = large if name in LARGE else small
    return {"rounds": n, "warmup_rounds": 1 if n > 3 else 0}


@lru_cache(maxsize=None)
def _data(dataset: str):
    return lmmfast.datasets.load(dataset)


@lru_cache(maxsize=None)
def _fitted(name: str, fit: str) -> lmmfast.LinearMixedModel:
    dataset, formula = MODELS[name]
    return lmmfast.LinearMixedModel(formula, _data(dataset), reml=FITS[fit]).fit()


@pytest.mark.parametrize("name", list(MODELS))
def test_setup(benchmark, name):
    dataset, formula = MODELS[name]
    data = _data(dataset)
    model = benchmark.pedantic(lmmfast.LinearMixedModel, args=(formula, data),
                               **_rounds(name, 50, 3))
    benchmark.extra_info.update(nobs=model.nobs, p=model.p,
                                q=int(sum(r.q for r in model.remats)),
                                n_theta=len(model.theta_names))


@pytest.mark.parametrize("fit", list(FITS))
@pytest.mark.parametrize("name", list(MODELS))
def test_eval(benchmark, name, fit):
    model = _fitted(name, fit)
    theta = model.theta.to_numpy()
    value = benchmark.pedantic(model.criterion, args=(theta,), **_rounds(name, 200, 5))
    benchmark.extra_info.update(criterion=value, n_theta=len(theta))


@pytest.mark.parametrize("fit", list(FITS))
@pytest.mark.parametrize("name", list(MODELS))
def test_eval_gradient(benchmark, name, fit):
    model = _fitted(name, fit)
    theta = model.theta.to_numpy()
    value, _ = benchmark.pedantic(model.criterion_gradient, args=(theta,),
                                  **_rounds(name, 200, 5))
    benchmark.extra_info.update(criterion=value, n_theta=len(theta))


@pytest.mark.parametrize("fit", list(FITS))
@pytest.mark.parametrize("name", list(MODELS))
def test_fit(benchmark, name, fit):
    dataset, formula = MODELS[name]
    model = lmmfast.LinearMixedModel(formula, _data(dataset), reml=FITS[fit])
    benchmark.pedantic(model.fit, **_rounds(name, 20, 1))
    benchmark.extra_info["n_evals"] = model.n_evals
    benchmark.extra_info["objective"] = model.objective
    if benchmark.stats is not None:
        benchmark.extra_info["seconds_per_eval"] = benchmark.stats.stats.median / model.n_evals
