"""Prior weights, offsets and formula features against lme4 fits made for this suite.

The numbers come from ``fixtures/make_lme4_extra.R`` (lme4 1.1-31), stored in
``fixtures/lme4_extra.json`` with the exact data in ``fixtures/extra_data``.
theta, beta and sigma are compared with lme4's tightly converged refit (BOBYQA,
rhoend 1e-10), standard errors and variance components with its default fit.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

import lmmfast
from conftest import assert_rel, assert_varcorr, extra_fit, extra_reference, load_extra_data

MODELS = extra_reference()["models"]
FITTED = [(m, k) for m, spec in MODELS.items() if m != "sleep_zero_weight"
          for k in ("REML", "ML")]
IDS = [f"{m}-{k}" for m, k in FITTED]

# Flat optima, where 1e-3 replaces 1e-4:
# - the weighted sleepstudy fits: lme4's default stops 2e-7..4e-7 short of the optimum,
#   and theta moves by up to 3.4e-4 relative for a change of 3e-9 in the criterion;
# - sleep_na: lme4's default fit stops 4e-8 short; its variance components differ
#   from the optimum by up to 8e-4.
FLAT = {"sleep_weights", "sleep_weights_offset", "sleep_na"}
# (1 + phase || Subject) is not identifiable (lme4 warns so): only the objective is checked.
UNIDENTIFIABLE = {"sleep_zerocorr_factor"}


def _tol(model):
    return 1e-3 if model in FLAT else 1e-4


@pytest.mark.parametrize("model,kind", FITTED, ids=IDS)
def test_objective_and_parameters(model, kind):
    fit, ref = extra_fit(model, kind), MODELS[model]["fits"][kind]
    tight = ref["tight_refit"]
    assert fit.objective <= ref["objective"] + 1e-6 * abs(ref["objective"])
    assert list(fit.fixef.index) == ref["fixef"]["names"]
    assert list(fit.theta.index) == ref["theta_names"]
    assert fit.nobs == ref["nobs"]
    if model in UNIDENTIFIABLE:
        return
    assert fit.objective >= tight["objective"] - 1e-9 * abs(tight["objective"])
    tol = _tol(model)
    assert_rel(fit.theta, tight["theta"], tol, "theta", floor=1e-2)
    assert_rel(fit.fixef, tight["fixef"], tol, "fixef")
    assert_rel(fit.sigma, tight["sigma"], tol, "sigma")
    assert_rel(fit.stderr, ref["fixef"]["se"], tol, "se")
    assert_varcorr(fit.varcorr, ref["varcorr"], tol)
    assert_rel(fit.fitted[:10], ref["fitted_head"], tol, "fitted")
    assert abs(fit.loglik - ref["logLik"]) <= 1e-6 * abs(ref["logLik"])


@pytest.mark.parametrize("model,kind", FITTED, ids=IDS)
def test_criterion_at_lme4_theta(model, kind):
    """Weights (-sum log w) and offsets enter the criterion exactly as in lme4."""
    fit, ref = extra_fit(model, kind), MODELS[model]["fits"][kind]
    assert_rel(fit.criterion(np.array(ref["theta"])), ref["objective"], 1e-10,
               "criterion at lme4's theta")


def test_weights_as_array_and_column_agree():
    df = load_extra_data("sleep_weights")
    by_col = extra_fit("sleep_weights", "REML")
    by_arr = lmmfast.lmer(MODELS["sleep_weights"]["formula"], df,
                          weights=df["w"].to_numpy())
    assert by_arr.objective == pytest.approx(by_col.objective, rel=1e-12)
    assert "w" in df.columns and df.shape == (180, 4)


def test_offset_shifts_fixed_effect():
    """off = 2.5 * Days is absorbed by the Days coefficient, as lme4 shows."""
    plain = lmmfast.lmer("Reaction ~ Days + (Days | Subject)",
                         load_extra_data("sleep_offset"))
    shifted = extra_fit("sleep_offset", "REML")
    assert shifted.fixef["Days"] == pytest.approx(plain.fixef["Days"] - 2.5, rel=1e-9)
    assert shifted.objective == pytest.approx(plain.objective, rel=1e-12)
    assert_rel(shifted.fitted, plain.fitted, 1e-6, "fitted includes the offset")


def test_rank_deficient_column_dropped_with_warning():
    df = load_extra_data("sleep_rankdef")
    with pytest.warns(lmmfast.errors.RankDeficiencyWarning, match="Days2"):
        fit = lmmfast.lmer(MODELS["sleep_rankdef"]["formula"], df)
    assert fit.dropped_columns == MODELS["sleep_rankdef"]["fits"]["REML"]["dropped_columns"]
    assert list(fit.fixef.index) == ["(Intercept)", "Days"]


def test_missing_values_dropped_and_counted():
    df = load_extra_data("sleep_na")
    before = df.copy()
    with pytest.warns(lmmfast.errors.MissingValuesWarning, match="4 rows"):
        fit = lmmfast.lmer(MODELS["sleep_na"]["formula"], df)
    assert fit.n_dropped == 4 and fit.nobs == 176
    assert list(fit.row_index[:3]) == [0, 1, 3]
    pd.testing.assert_frame_equal(df, before)


def test_zero_weights_rejected():
    """lme4's criterion is +Inf with a zero weight; lmmfast says so instead of fitting."""
    assert MODELS["sleep_zero_weight"]["fits"]["REML"]["objective"] is None
    df = load_extra_data("sleep_zero_weight")
    with pytest.raises(lmmfast.DataError, match="weight 0"):
        lmmfast.lmer(MODELS["sleep_zero_weight"]["formula"], df,
                     weights=MODELS["sleep_zero_weight"]["weights_column"])


def test_nested_slash_and_explicit_interaction_agree():
    """(1 | batch/cask) is (1 | batch) + (1 | cask:batch): the same fit as batch:cask."""
    slash = lmmfast.lmer("strength ~ 1 + (1 | batch/cask)", lmmfast.datasets.load("Pastes"))
    explicit = extra_fit("pastes_nested_explicit", "REML")
    assert slash.objective == pytest.approx(explicit.objective, rel=1e-10)
    assert list(slash.ngrps) == ["cask:batch", "batch"]
    assert list(explicit.ngrps) == ["batch:cask", "batch"]
    ref = MODELS["pastes_nested_explicit"]["fits"]["REML"]["ranef"]["batch:cask"]
    assert list(explicit.ranef()["batch:cask"].index) == ref["levels"]
