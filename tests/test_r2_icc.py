"""Nakagawa's R² and the ICC against performance's ``r2_nakagawa`` and ``icc``
(fixtures/posthoc_results.json, REML lme4 fits of cake, sleep_slope and penicillin).

At lme4's theta (recovered from broom.mixed's variance parameters in the
fixture) every value agrees to 1e-6 relative; at this library's own optimum
(lme4 stops up to ~3e-5 short in the variance components) to 1e-5.
"""

from __future__ import annotations


import numpy as np
import pytest
from conftest import assert_rel
from conftest import posthoc, posthoc_fit, posthoc_fit_at_lme4

import lmmfast
from lmmfast.errors import FitError
from lmmfast.r2 import icc, r2_nakagawa, variance_components

MODELS = ["cake", "sleep_slope", "penicillin"]


own_fit, lme4_fit = posthoc_fit, posthoc_fit_at_lme4


def check(fit, model: str, rtol: float) -> None:
    ref = posthoc()["models"][model]
    r2, cc = fit.r2(), fit.icc()
    assert list(r2) == ["R2_conditional", "R2_marginal"]
    assert list(cc) == ["ICC_adjusted", "ICC_unadjusted"]
    # penicillin's marginal R² is 0 (intercept only): compared absolutely
    assert_rel([r2["R2_conditional"], r2["R2_marginal"]],
               [ref["r2_nakagawa"]["conditional"], ref["r2_nakagawa"]["marginal"]],
               rtol, f"{model} r2", floor=1e-3)
    assert_rel([cc["ICC_adjusted"], cc["ICC_unadjusted"]],
               [ref["icc"]["adjusted"], ref["icc"]["unadjusted"]], rtol, f"{model} icc")


@pytest.mark.parametrize("model", MODELS)
def test_r2_icc_at_lme4_theta(model):
    check(lme4_fit(model), model, 1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_r2_icc_at_own_optimum(model):
    check(own_fit(model), model, 1e-5)


def test_random_slope_variance_is_johnsons_mean():
    """sleep_slope: the random part is mean_i z_i Sigma z_i^T over the rows (eq. 80),
    not the intercept's variance alone."""
    fit = own_fit("sleep_slope")
    vc = fit.varcorr
    s00, s11 = vc.vcov.iloc[0], vc.vcov.iloc[1]
    s01 = vc.vcov.iloc[2]
    days = fit.x[:, 1]
    johnson = np.mean(s00 + 2 * s01 * days + s11 * days ** 2)
    v = variance_components(fit)
    assert v["random"] == pytest.approx(johnson, rel=1e-12)
    assert v["random"] > s00 * 1.5
    assert v["residual"] == pytest.approx(fit.sigma ** 2, rel=1e-14)
    assert v["fixed"] == pytest.approx(np.var(fit.x @ fit.fixef.to_numpy(), ddof=1), rel=1e-14)


def test_crossed_intercepts_add_their_variances():
    fit = own_fit("penicillin")
    v = variance_components(fit)
    assert v["fixed"] == 0.0
    assert v["random"] == pytest.approx(fit.varcorr.vcov.iloc[:2].sum(), rel=1e-12)
    assert icc(fit)["ICC_adjusted"] == pytest.approx(r2_nakagawa(fit)["R2_conditional"],
                                                     rel=1e-14)


def test_unfitted_model_raises():
    spec = posthoc()["models"]["penicillin"]
    model = lmmfast.LinearMixedModel(spec["formula"], lmmfast.datasets.load(spec["dataset"]))
    with pytest.raises(FitError, match="not been fitted"):
        model.r2()
    with pytest.raises(FitError, match="not been fitted"):
        model.icc()
