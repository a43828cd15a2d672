"""The response seam: A re-formed with new working weights and working response
over the same design equals A of the model built with them, to the bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lmmfast
from lmmfast import DataError, LinearMixedModel
from lmmfast.model import StreamedLinearMixedModel

FORMULA = "Reaction ~ 1 + Days + (1 + Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    df = lmmfast.datasets.load("sleepstudy").copy()
    rng = np.random.default_rng(12)
    df["w"] = rng.uniform(0.5, 2.0, len(df))
    df["off"] = rng.normal(0.0, 3.0, len(df))
    df["z"] = df["Reaction"] + rng.normal(0.0, 10.0, len(df))
    return df


def _same_model(a: LinearMixedModel, b: LinearMixedModel) -> None:
    assert a._a.tobytes() == b._a.tobytes()
    assert a._log_det_w == b._log_det_w
    a.fit()
    b.fit()
    assert a.objective == b.objective
    np.testing.assert_array_equal(a._theta, b._theta)
    np.testing.assert_array_equal(a.fixef, b.fixef)


def test_reweighting_equals_the_model_built_with_the_weights(sleep):
    model = LinearMixedModel(FORMULA, sleep)
    design = (model.x, [r.refs for r in model.remats], [r.z for r in model.remats])
    model.reweight(sleep["w"].to_numpy())
    assert model.x is design[0] and [r.refs for r in model.remats] == design[1]
    _same_model(model, LinearMixedModel(FORMULA, sleep, weights="w"))
    np.testing.assert_array_equal(model.weights, sleep["w"].to_numpy())


def test_a_working_response_equals_the_model_of_that_response(sleep):
    model = LinearMixedModel(FORMULA, sleep, offset="off")
    model.reweight(sleep["w"].to_numpy(), sleep["z"].to_numpy())
    _same_model(model, LinearMixedModel("z ~ 1 + Days + (1 + Days | Subject)", sleep,
                                        weights="w"))


def test_reweighting_back_to_the_prior_weights(sleep):
    model = LinearMixedModel(FORMULA, sleep, weights="w", offset="off")
    a = model._a.copy()
    model.reweight(np.ones(model.nobs)).reweight()
    assert model._a.tobytes() == a.tobytes()


def test_reweighting_in_row_chunks_equals_in_memory(sleep):
    streamed = StreamedLinearMixedModel.from_frame(FORMULA, sleep, chunk_rows=7)
    memory = LinearMixedModel(FORMULA, sleep)
    w, z = sleep["w"].to_numpy(), sleep["z"].to_numpy()
    streamed.reweight(w, z)
    memory.reweight(w, z)
    _same_model(streamed, memory)
    built = StreamedLinearMixedModel.from_frame(FORMULA, sleep, weights="w", chunk_rows=7)
    _same_model(StreamedLinearMixedModel.from_frame(FORMULA, sleep, chunk_rows=11).reweight(w),
                built)


def test_reweighting_keeps_rows_with_missing_values_out(sleep):
    df = sleep.copy()
    df.loc[[3, 50, 51], "Days"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmmfast.errors.MissingValuesWarning)
        streamed = StreamedLinearMixedModel.from_frame(FORMULA, df, chunk_rows=13)
        memory = LinearMixedModel(FORMULA, df, weights="w")
    _same_model(streamed.reweight(df["w"].to_numpy()[memory.row_index]), memory)


def test_bad_working_weights_and_response_name_the_argument(sleep):
    model = LinearMixedModel(FORMULA, sleep)
    with pytest.raises(DataError, match="weights has 3 values, the model has 180"):
        model.reweight(np.ones(3))
    with pytest.raises(DataError, match="weights must be positive; row 0"):
        model.reweight(np.zeros(180))
    with pytest.raises(DataError, match="working response has non-finite"):
        model.reweight(None, np.full(180, np.nan))
