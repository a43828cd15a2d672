"""End-to-end fit time of every reference model (pytest-benchmark).

Run: ``pytest benchmarks/ --benchmark-only``.  Timings are reported, never
asserted.
"""

from __future__ import annotations

import pytest

import lmmfast

MODELS = {
    "sleep_slope": ("sleepstudy", "Reaction ~ 1 + Days + (1 + Days | Subject)"),
    "sleep_zerocorr": ("sleepstudy", "Reaction ~ 1 + Days + (1 + Days || Subject)"),
    "sleep_int": ("sleepstudy", "Reaction ~ 1 + Days + (1 | Subject)"),
    "dyestuff": ("Dyestuff", "Yield ~ 1 + (1 | Batch)"),
    "dyestuff2": ("Dyestuff2", "Yield ~ 1 + (1 | Batch)"),
    "penicillin": ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    "pastes": ("Pastes", "strength ~ 1 + (1 | batch/cask)"),
    "cake": ("cake", "angle ~ recipe * temp + (1 | recipe:replicate)"),
    "insteval": ("InstEval", "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)"),
}


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
