"""A pandas frame reduced in bounded row chunks gives the in-memory fit, in bounded memory."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast import blocks, model as model_module
from lmmfast.errors import LmmWarning
from lmmfast.model import LinearMixedModel
from lmmfast.streaming import StreamedLinearMixedModel

from conftest import extra_reference, load_extra_data, reference, reference_fit

SMALL = [m for m in reference()["models"] if m != "insteval"]


def _assert_same_fit(ours, ref, rtol=1e-10):
    assert np.array_equal(ours._a, ref._a)
    assert ours.objective == pytest.approx(ref.objective, rel=rtol)
    np.testing.assert_allclose(ours.theta, ref.theta, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(ours.fixef, ref.fixef, rtol=rtol)
    assert ours.sigma == pytest.approx(ref.sigma, rel=rtol)


@pytest.mark.parametrize("model", SMALL)
@pytest.mark.parametrize("chunk_rows", [7, 64])
def test_streamed_equals_in_memory(model, chunk_rows):
    spec = reference()["models"][model]
    df = lmmfast.datasets.load(spec["dataset"])
    fit = StreamedLinearMixedModel.from_frame(spec["formula"], df, chunk_rows=chunk_rows).fit()
    ref = reference_fit(model, "REML")
    _assert_same_fit(fit, ref)
    np.testing.assert_allclose(fit.fitted, ref.fitted, rtol=1e-12)
    np.testing.assert_allclose(fit.residuals, ref.residuals, rtol=1e-12,
                               atol=1e-12 * np.abs(ref.fitted).max())
    assert fit.summary() == ref.summary()


def test_streamed_insteval_cross_products():
    spec = reference()["models"]["insteval"]
    df = lmmfast.datasets.load("InstEval")
    streamed = StreamedLinearMixedModel.from_frame(spec["formula"], df, chunk_rows=10_000)
    in_memory = LinearMixedModel(spec["formula"], df)
    assert np.array_equal(streamed._a, in_memory._a)
    assert streamed.criterion(in_memory.lower_bounds.clip(0) + 0.5) == \
        in_memory.criterion(in_memory.lower_bounds.clip(0) + 0.5)


@pytest.mark.parametrize("model", [m for m in extra_reference()["models"]
                                   if m != "sleep_zero_weight"])
def test_streamed_extra_models(model):
    """Weights and offsets (as arrays), missing values, rank deficiency, formula features."""
    spec = extra_reference()["models"][model]
    df = load_extra_data(model)
    w = None if spec["weights_column"] is None else df[spec["weights_column"]].to_numpy()
    off = None if spec["offset_column"] is None else df[spec["offset_column"]].to_numpy()
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always", LmmWarning)
        fit = StreamedLinearMixedModel.from_frame(spec["formula"], df, weights=w, offset=off,
                                                  chunk_rows=50).fit()
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always", LmmWarning)
        ref = LinearMixedModel(spec["formula"], df, weights=w, offset=off).fit()
    assert [str(m.message) for m in ours] == [str(m.message) for m in theirs]
    _assert_same_fit(fit, ref)
    assert fit.dropped_columns == ref.dropped_columns and fit.n_dropped == ref.n_dropped
    np.testing.assert_allclose(fit.fitted, ref.fitted, rtol=1e-12)
    if ref.weights is not None:
        np.testing.assert_array_equal(fit.weights, ref.weights)


def test_weights_log_determinant_is_order_independent():
    rng = np.random.default_rng(0)
    w = rng.uniform(0.1, 10, 100_001)
    total = blocks.dd_sum(np.log(w))
    assert blocks.dd_sum(np.log(w[::-1])) == total
    assert blocks.dd_sum(np.log(rng.permutation(w))) == total


def test_streaming_is_automatic_above_the_threshold(monkeypatch):
    df = lmmfast.datasets.load("sleepstudy")
    formula = "Reaction ~ 1 + Days + (1 + Days | Subject)"
    monkeypatch.setattr(model_module, "STREAM_MIN_ROWS", 100)
    fit = lmmfast.lmer(formula, df)
    assert isinstance(fit, StreamedLinearMixedModel) and fit.x is None
    _assert_same_fit(fit, reference_fit("sleep_slope", "REML"))
    np.testing.assert_allclose(fit.predict(re_form="~0"), reference_fit(
        "sleep_slope", "REML").predict(re_form="~0"), rtol=1e-12)
    assert type(LinearMixedModel(formula, df, streaming=False)) is LinearMixedModel
    # levels that depend on the rows at hand (C() of a numeric column) cannot be
    # found piece by piece: the in-memory path takes such a formula
    coded = LinearMixedModel("Reaction ~ 1 + C(Days) + (1 | Subject)", df)
    assert type(coded) is LinearMixedModel
    with pytest.raises(lmmfast.FormulaError, match=r"C\(Days\)"):
        LinearMixedModel("Reaction ~ 1 + C(Days) + (1 | Subject)", df, streaming=True)
    with pytest.raises(lmmfast.DataError, match="refit"):
        fit.refit(df["Reaction"].to_numpy())


def _crossed(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g1 = rng.integers(0, 2000, n)
    g2 = rng.integers(0, 100, n)
    x = rng.standard_normal(n)
    y = 1.0 + 0.5 * x + 0.8 * rng.standard_normal(2000)[g1] \
        + 0.4 * rng.standard_normal(100)[g2] + rng.standard_normal(n)
    return pd.DataFrame({"y": y, "x": x,
                         "g1": pd.Categorical.from_codes(g1.astype(np.int16),
                                                         [f"s{i}" for i in range(2000)]),
                         "g2": pd.Categorical.from_codes(g2.astype(np.int8),
                                                         [f"t{i}" for i in range(100)])})


FORMULA = "y ~ 1 + x + (1 | g1) + (1 | g2)"


def test_streamed_chunks_of_a_larger_frame_equal_in_memory():
    df = _crossed(300_000, seed=1)
    streamed = StreamedLinearMixedModel.from_frame(FORMULA, df, chunk_rows=40_000).fit()
    ref = LinearMixedModel(FORMULA, df).fit()
    _assert_same_fit(streamed, ref)


def test_streamed_continuous_random_slope():
    rng = np.random.default_rng(8)
    n, groups = 4000, 80
    g = rng.integers(0, groups, n)
    x = 1.7 * rng.standard_normal(n) + 0.3
    y = 1 + 0.5 * x + rng.standard_normal(groups)[g] \
        + 0.4 * rng.standard_normal(groups)[g] * x + rng.standard_normal(n)
    df = pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})
    formula = "y ~ 1 + x + (1 + x | g)"
    fit = StreamedLinearMixedModel.from_frame(formula, df, chunk_rows=700).fit()
    ref = LinearMixedModel(formula, df).fit()
    np.testing.assert_array_equal(fit._theta_scale(), ref._theta_scale())
    _assert_same_fit(fit, ref)


def test_streamed_memory_is_bounded():
    """Peak traced memory of a 3-million-row streamed fit against the size of its model matrices."""
    n = 3_000_000
    df = _crossed(n)
    # X (2 columns), y, and per term z (1 column) and refs: what the in-memory path holds
    matrices = n * (2 + 1 + 2 * 2) * 8
    tracemalloc.start()
    try:
        fit = lmmfast.lmer(FORMULA, df)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(fit, StreamedLinearMixedModel)
    assert fit.nobs == n and fit.converged
    assert peak < matrices / 4, f"peak {peak / 2**20:.0f} MiB, matrices {matrices / 2**20:.0f} MiB"
    assert fit.fixef["x"] == pytest.approx(0.5, abs=0.01)
