"""Fits and refits to a new response (eq. 26) as one compiled call each.

``LinearMixedModel.fit`` with the quasi-Newton optimiser runs
``_trust_region.Optimum`` (all of its steps compiled), and ``refit`` runs
``_trust_region.Refit``, which also writes the new response into A.  A refit
must give the same doubles as writing y into A in Python
(``blocks.set_response``) and fitting, which a refit with an option does
(``optimizer="quasi-newton"``), and a fit with options must give those of the
default fit when the options are the defaults.  Where the compiled run cannot
finish (no convergence, an exact fit), ``fit`` finishes it in Python.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lmmfast
from conftest import reference, reference_fit
from lmmfast._cholesky import PACK_BYTES, packed
from lmmfast._trust_region import RUN_STATUS
from lmmfast.errors import DataError, FitError
from lmmfast.optimize import moment_start

SMALL = [m for m in reference()["models"] if m != "insteval"]
CASES = [(m, k) for m in SMALL for k in ("REML", "ML")]
IDS = [f"{m}-{k}" for m, k in CASES]


def _general(fit, y, start):
    return fit.copy().refit(y, start=start, optimizer="quasi-newton")


def _assert_same(a, b):
    """Every result of two refits is the same double."""
    assert a.theta.to_numpy().tolist() == b.theta.to_numpy().tolist()
    assert a.objective == b.objective
    for field in ("n_evals", "n_gradients", "return_code", "fmin"):
        assert getattr(a.optsum, field) == getattr(b.optsum, field), field
    np.testing.assert_array_equal(a.optsum.hessian, b.optsum.hessian)
    np.testing.assert_array_equal(a.optsum.initial, b.optsum.initial)
    np.testing.assert_array_equal(a.optsum.final, b.optsum.final)
    np.testing.assert_array_equal(a._a, b._a)
    np.testing.assert_array_equal(a.fixef.to_numpy(), b.fixef.to_numpy())
    assert a.sigma == b.sigma
    np.testing.assert_array_equal(a.fitted, b.fitted)


ALL = [(m, k) for m in reference()["models"] for k in ("REML", "ML")]


@pytest.mark.parametrize("model,kind", ALL, ids=[f"{m}-{k}" for m, k in ALL])
def test_a_fit_with_default_options_is_the_default_fit(model, kind):
    spec = reference()["models"][model]
    data = lmmfast.datasets.load(spec["dataset"])
    fast = lmmfast.LinearMixedModel(spec["formula"], data, reml=(kind == "REML")).fit()
    assert "_optimum_plan" in fast.__dict__
    general = lmmfast.LinearMixedModel(spec["formula"], data, reml=(kind == "REML"))
    general.fit(optimizer="quasi-newton", gtol=1e-10, ftol_rel=1e-12)
    assert general.optsum.gtol == 1e-10 and general.optsum.optimizer == "quasi-newton"
    _assert_same(fast, general)


def test_a_run_that_does_not_converge_is_finished_by_bobyqa():
    """The Newton steps stop at maxeval; BOBYQA goes on from where they ended, and
    the factor is left at the result."""
    data = lmmfast.datasets.load("sleepstudy")
    m = lmmfast.LinearMixedModel("Reaction ~ 1 + Days + (1 + Days | Subject)", data)
    newton = lmmfast.LinearMixedModel("Reaction ~ 1 + Days + (1 + Days | Subject)", data)
    newton._optimum()
    stopped = newton._optimum().run(moment_start(newton), (1e-10, 1e-12, 1e-10, 2))
    assert RUN_STATUS[stopped[0]] == "finish" and stopped[5] == "MAXEVAL_REACHED"
    with pytest.warns(lmmfast.errors.ConvergenceWarning, match="MAXEVAL_REACHED"):
        m.fit(maxeval=2)
    np.testing.assert_array_equal(m.optsum.initial, stopped[1])   # BOBYQA's start
    assert m.optsum.n_evals > 2 and m.optsum.return_code == "MAXEVAL_REACHED"
    assert m.objective == m.criterion(m.theta.to_numpy())


def test_a_fit_from_a_given_start():
    fit = reference_fit("pastes", "ML")
    for start in ([1.0, 1.0], [0.0, 2.0], fit.theta.to_numpy()):
        fast = fit.copy().fit(start=start)
        _assert_same(fast, fit.copy().fit(start=start, optimizer="quasi-newton"))
    with pytest.raises(ValueError, match="within the lower bounds"):
        fit.copy().fit(start=[-1.0, 1.0])


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_compiled_refit_is_the_general_refit(model, kind):
    fit = reference_fit(model, kind)
    theta0 = fit.theta.to_numpy()
    y = fit.y + np.random.default_rng(7).normal(0.0, fit.sigma, fit.nobs)
    fast = fit.copy().refit(y, start=theta0)
    assert "_refit_plan" in fast.__dict__
    _assert_same(fast, _general(fit, y, theta0))
    # and it is the fit of a model built on the new response
    spec = reference()["models"][model]
    data = lmmfast.datasets.load(spec["dataset"]).copy()
    data[fit.response] = y
    fresh = lmmfast.lmer(spec["formula"], data, reml=(kind == "REML"))
    assert fast.objective == pytest.approx(fresh.objective, rel=1e-10)
    np.testing.assert_allclose(fast.fixef, fresh.fixef, rtol=1e-6)


def test_refits_in_a_row_each_match_a_fresh_start():
    """A loop of refits (the bootstrap's) on one copy: each the general path's result."""
    fit = reference_fit("sleep_slope", "REML")
    theta0 = fit.theta.to_numpy()
    boot = fit.copy()
    rng = np.random.default_rng(11)
    for _ in range(5):
        y = fit.fitted + rng.normal(0.0, fit.sigma, fit.nobs)
        boot.refit(y, start=theta0)
        _assert_same(boot, _general(fit, y, theta0))
    boot.refit(fit.y, start=theta0)
    assert boot.objective == pytest.approx(fit.objective, rel=1e-12)


def test_weights_and_offset():
    data = lmmfast.datasets.load("sleepstudy").copy()
    rng = np.random.default_rng(5)
    data["w"] = rng.uniform(0.5, 2.0, len(data))
    data["off"] = rng.normal(0.0, 10.0, len(data))
    fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)", data,
                       weights="w", offset="off")
    y = fit.y + rng.normal(0.0, 20.0, fit.nobs)
    theta0 = fit.theta.to_numpy()
    fast = fit.copy().refit(y, start=theta0)
    _assert_same(fast, _general(fit, y, theta0))
    fresh = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)",
                         data.assign(Reaction=y), weights="w", offset="off")
    assert fast.objective == pytest.approx(fresh.objective, rel=1e-10)


def test_a_variance_at_its_bound():
    """No batch effect in y: theta ends at 0, through the trial of the bound."""
    fit = reference_fit("dyestuff", "REML")
    y = 1500.0 + np.random.default_rng(2).normal(0.0, 50.0, fit.nobs)
    fast = fit.copy().refit(y, start=fit.theta.to_numpy())
    general = _general(fit, y, fit.theta.to_numpy())
    _assert_same(fast, general)
    assert fast.theta.iloc[0] == 0.0 and fast.is_singular


def test_starts_with_all_zero_columns():
    """An all-zero column of lambda is moved off zero before the first step (eq. 69)."""
    fit = reference_fit("sleep_slope", "ML")
    y = fit.y + np.random.default_rng(4).normal(0.0, fit.sigma, fit.nobs)
    for start in ([0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.5, -0.3, 0.0]):
        start = np.array(start)
        fast = fit.copy().refit(y, start=start)
        _assert_same(fast, _general(fit, y, start))
        assert (fast.optsum.initial != start).any()


def test_a_refit_that_cannot_finish_compiled_is_finished_by_fit():
    """A response fitted exactly (constant within subjects): the compiled run
    hands over, and ``fit`` raises as it does for a new model."""
    fit = reference_fit("sleep_slope", "REML").copy()
    codes = fit.remats[0].refs
    y = np.asarray(codes, dtype=np.float64) * 10.0 + 200.0
    with pytest.raises(FitError, match="fitted exactly"):
        fit.refit(y, start=fit.theta.to_numpy())


def test_inputs_of_other_types_give_the_same_refit():
    fit = reference_fit("penicillin", "ML")
    theta0 = fit.theta.to_numpy()
    y = np.round(fit.y + np.random.default_rng(9).normal(0.0, 1.0, fit.nobs))
    want = fit.copy().refit(y, start=theta0)
    for y_as in (y.tolist(), pd.Series(y), y.reshape(-1, 1), y.astype(np.int64),
                 np.repeat(y, 2)[::2]):
        got = fit.copy().refit(y_as, start=list(theta0))
        _assert_same(got, want)
    got = fit.copy().refit(y, start=pd.Series(theta0, index=fit.theta.index))
    _assert_same(got, want)


def test_bad_input_changes_nothing():
    fit = reference_fit("sleep_slope", "REML").copy()
    before = (fit._a.copy(), fit.theta.to_numpy().copy(), fit.objective, fit.y.copy())
    y = fit.y.copy()
    y[17] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        fit.refit(y)
    with pytest.raises(DataError, match="179 values, the model has 180"):
        fit.refit(fit.y[:-1])
    with pytest.raises(ValueError, match="within the lower bounds"):
        fit.refit(fit.y, start=[-1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="within the lower bounds"):
        fit.refit(fit.y, start=[1.0, 0.0])
    np.testing.assert_array_equal(fit._a, before[0])
    np.testing.assert_array_equal(fit.theta.to_numpy(), before[1])
    assert fit.objective == before[2]
    np.testing.assert_array_equal(fit.y, before[3])


def test_a_copy_refits_its_own_cross_products():
    fit = reference_fit("cake", "REML").copy()
    fit.refit(fit.y)
    plan = fit._refit_plan
    a_before = fit._a.copy()
    other = fit.copy()
    assert "_refit_plan" not in other.__dict__
    other.refit(fit.y[::-1].copy())
    np.testing.assert_array_equal(fit._a, a_before)
    assert fit._refit_plan is plan and other._refit_plan is not plan
    assert other._optimum_plan is not fit._optimum_plan


def test_a_model_without_rows_cannot_refit():
    from lmmfast.design.dask import _lean
    lean = _lean(reference_fit("dyestuff", "REML"))
    with pytest.raises(FitError, match="no rows"):
        lean.refit(np.zeros(30))


def test_run_takes_contiguous_float_vectors_only():
    fit = reference_fit("dyestuff", "ML").copy()
    fit.refit(fit.y)
    with pytest.raises(TypeError, match="C-contiguous float64"):
        fit._refit_plan.run(fit.y.astype(np.float32), fit.theta.to_numpy())
    with pytest.raises(TypeError, match="C-contiguous float64"):
        fit._refit_plan.run(np.repeat(fit.y, 2)[::2], fit.theta.to_numpy())


def test_packed_arrays_share_one_allocation():
    small = [np.arange(5, dtype=np.int64), np.linspace(0, 1, 7), np.ones((3, 4))]
    big = np.zeros(PACK_BYTES // 8 + 1)
    out = packed(*small, big)
    assert out[3] is big
    for a, b in zip(small, out[:3]):
        np.testing.assert_array_equal(a, b)
        assert b.dtype == a.dtype and b.shape == a.shape and b.flags.c_contiguous
        assert b.ctypes.data % 64 == 0
    assert out[0].base is out[1].base is out[2].base
    assert out[1].ctypes.data - out[0].ctypes.data == 64
    assert out[2].ctypes.data - out[1].ctypes.data == 64


@pytest.mark.parametrize("model", ["penicillin", "sleep_zerocorr", "insteval"])
def test_packing_a_core_changes_no_result(model):
    """``BlockedCholesky.pack`` moves the arrays, not their values: the factor, the
    criterion, its gradient and Hessian are the same doubles after it."""
    fit = reference_fit(model, "REML").copy()
    core = fit._core
    theta = fit._to_internal(fit.theta.to_numpy() * 1.1)
    n = len(theta)

    def state():
        value = core.objective(theta, True)
        grad, hess = np.empty(n), np.empty((n, n))
        core.derivatives(True, grad, hess)
        return value, grad, hess, core.l_values.copy(), core.lxx()

    before = state()
    core.derivatives(True, np.empty(n), np.empty((n, n)))   # work arrays with content
    core.pack()
    after = state()
    assert before[0] == after[0]
    for b, a in zip(before[1:], after[1:]):
        np.testing.assert_array_equal(b, a)
    core.pack()   # again: no change either
    for b, a in zip(before[1:], state()[1:]):
        np.testing.assert_array_equal(b, a)
