"""End-to-end fit time of every reference model (pytest-benchmark).

Run: ``pytest benchmarks/ --benchmark-only``.  Timings are reported, never
asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import lmmfast

sys.path.insert(0, str(Path(__file__).parent))
from models import MODELS  # noqa: E402



@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fit(benchmark, name, reml):
    dataset, formula = MODELS[name]
    data = lmmfast.datasets.load(dataset)
    rounds = 1 if name == "insteval" else 20
    fit = benchmark.pedantic(lmmfast.lmer, args=(formula, data), kwargs={"reml": reml},
                             rounds=rounds, warmup_rounds=1 if rounds > 1 else 0)
    benchmark.extra_info["n_evals"] = fit.n_evals
    benchmark.extra_info["objective"] = fit.objective
