"""Starting values of random intercepts by the method of moments (eq. 71)."""

from __future__ import annotations

import numpy as np
import pytest

import lmmfast
from conftest import reference, reference_fit
from lmmfast.optimize import default_start, intercept_terms


def _moments_from_rows(fit):
    """eq. 71 from the rows: OLS residuals, level sums, pairs (weights as A has them)."""
    w = fit.weights if fit.weights is not None else np.ones(fit.nobs)
    sw = np.sqrt(w)
    beta, *_ = np.linalg.lstsq(fit.x * sw[:, None], fit._y_eff * sw, rcond=None)
    r = fit._y_eff - fit.x @ beta
    rss = float(np.sum(w * r * r))
    out = []
    for j, _ in intercept_terms(fit):
        term = fit.remats[fit._internal[j]]
        s_g = np.bincount(term.refs, weights=w * r, minlength=term.nlevels)
        n_g = np.bincount(term.refs, weights=w, minlength=term.nlevels)
        out.append((s_g @ s_g - rss) / (n_g @ n_g - n_g.sum()))
    return rss, out


@pytest.mark.parametrize("model", ["dyestuff", "penicillin", "pastes", "cake", "sleep_int",
                                   "insteval"])
def test_moments_from_a_are_the_moments_from_the_rows(model):
    fit = reference_fit(model, "REML")
    rss, var = fit._core.moment_variances([j for j, _ in intercept_terms(fit)])
    rss_rows, var_rows = _moments_from_rows(fit)
    assert rss == pytest.approx(rss_rows, rel=1e-9)
    np.testing.assert_allclose(var, var_rows, rtol=1e-8, atol=1e-10 * rss / fit.nobs)


def test_weights_and_offset():
    data = lmmfast.datasets.load("Penicillin").copy()
    rng = np.random.default_rng(8)
    data["w"] = rng.uniform(0.5, 2.0, len(data))
    data["off"] = rng.normal(0.0, 1.0, len(data))
    fit = lmmfast.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", data, weights="w",
                       offset="off")
    rss, var = fit._core.moment_variances([j for j, _ in intercept_terms(fit)])
    rss_rows, var_rows = _moments_from_rows(fit)
    assert rss == pytest.approx(rss_rows, rel=1e-9)
    np.testing.assert_allclose(var, var_rows, rtol=1e-8)


@pytest.mark.parametrize("model", ["dyestuff", "cake", "sleep_int"])
def test_a_balanced_one_way_design_starts_at_its_ml_estimate(model):
    """sum_g S_g^2 = m SSB: the start is (SSB/G - MSW)/m over MSW, the ML optimum,
    where the Newton steps stop at once; lme4 finds the same theta."""
    fit = reference_fit(model, "ML")
    spec = reference()["models"][model]
    assert fit.n_evals == 1 and fit.optsum.return_code == "SUCCESS"
    np.testing.assert_allclose(fit.optsum.initial, fit.theta.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(fit.theta.to_numpy(), spec["fits"]["ML"]["theta"], rtol=1e-4)


def test_the_analytic_one_way_estimate():
    data = lmmfast.datasets.load("Dyestuff")
    fit = reference_fit("dyestuff", "ML")
    means = data.groupby("Batch", observed=True)["Yield"].mean().to_numpy()
    g, m = len(means), len(data) // len(means)
    ssb = m * np.sum((means - data["Yield"].mean()) ** 2)
    msw = (np.sum((data["Yield"] - data["Yield"].mean()) ** 2) - ssb) / (len(data) - g)
    theta = np.sqrt((ssb / g - msw) / m / msw)
    assert fit.optsum.initial[0] == pytest.approx(theta, rel=1e-12)


def test_other_terms_and_bobyqa_keep_lambda_i():
    fit = reference_fit("sleep_slope", "REML")
    np.testing.assert_array_equal(fit.optsum.initial, default_start(fit))
    zc = reference_fit("sleep_zerocorr", "REML")   # (1 | Subject) + (0 + Days | Subject)
    assert zc.optsum.initial[0] != 1.0 and zc.optsum.initial[1] == default_start(zc)[1]
    m = lmmfast.LinearMixedModel("Yield ~ 1 + (1 | Batch)", lmmfast.datasets.load("Dyestuff"))
    m.fit(optimizer="bobyqa")
    np.testing.assert_array_equal(m.optsum.initial, [1.0])


def test_no_variance_between_levels_starts_off_zero():
    """Dyestuff2's batch variance is estimated at zero: the start is 0.1."""
    fit = reference_fit("dyestuff2", "REML")
    assert fit.optsum.initial.tolist() == [0.1]
    assert fit.theta.iloc[0] == 0.0


def test_only_intercept_terms_are_asked_for():
    fit = reference_fit("sleep_slope", "REML")
    with pytest.raises(ValueError, match="2 random effects per level"):
        fit._core.moment_variances([0])
    assert intercept_terms(fit) == []

