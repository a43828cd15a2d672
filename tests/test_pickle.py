"""Models pickle and deep-copy, fitted or not, and the copies give the original's numbers bit for bit."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.model import LinearMixedModel
from lmmfast.streaming import StreamedLinearMixedModel

from conftest import reference, reference_fit

MODELS = list(reference()["models"])
SMALL = [m for m in MODELS if m != "insteval"]
KINDS = ("REML", "ML")


def _round_trips():
    """pickle with the default protocol and protocol 5, and copy.deepcopy."""
    return {
        "pickle": lambda m: pickle.loads(pickle.dumps(m)),
        "pickle5": lambda m: pickle.loads(pickle.dumps(m, protocol=5)),
        "deepcopy": copy.deepcopy,
    }


ROUND_TRIPS = list(_round_trips())


def _spec(model):
    spec = reference()["models"][model]
    return spec["formula"], lmmfast.datasets.load(spec["dataset"])


def _assert_same_arrays(ours, ref):
    """theta and the results read off the factor, bit for bit; the copy's own factor
    solved again gives the original's solution."""
    assert type(ours) is type(ref)
    assert ours._core is not ref._core and ours._a is not ref._a
    assert np.array_equal(ours._a, ref._a)
    assert np.array_equal(ours._theta, ref._theta)
    assert ours.objective == ref.objective
    assert np.array_equal(ours.fixef, ref.fixef)
    assert np.array_equal(ours.vcov, ref.vcov)
    assert ours.sigma == ref.sigma
    assert ours.optsum.n_evals == ref.optsum.n_evals
    fresh, sol = ours._solve(), ref._solve()   # both from the factor as it is now
    assert np.array_equal(fresh["beta"], sol["beta"])
    assert (fresh["ld_l2"], fresh["ld_rx2"], fresh["pwrss"]) == \
        (sol["ld_l2"], sol["ld_rx2"], sol["pwrss"])
    for b_ours, b_ref in zip(fresh["b"], sol["b"]):
        assert np.array_equal(b_ours, b_ref)


@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model", MODELS)
def test_fitted_model_round_trips(model, kind, how):
    ref = reference_fit(model, kind)
    ours = _round_trips()[how](ref)
    _assert_same_arrays(ours, ref)
    if model == "insteval":   # (the arrays only: its rows' results cost seconds)
        return
    assert np.array_equal(ours.fitted, ref.fitted)
    assert np.array_equal(ours.residuals, ref.residuals)
    for group, frame in ref.ranef().items():
        pd.testing.assert_frame_equal(ours.ranef()[group], frame, check_exact=True)
    assert ours.summary() == ref.summary()
    theta = ref._theta * 1.1
    assert ours.criterion(theta) == ref.criterion(theta)
    assert ours.criterion_gradient(theta)[1].tolist() == ref.criterion_gradient(theta)[1].tolist()


@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("model", SMALL)
def test_unfitted_model_round_trips_then_fits(model, how):
    formula, df = _spec(model)
    original = LinearMixedModel(formula, df)
    ours = _round_trips()[how](original)
    assert ours._theta is None
    _assert_same_arrays(ours.fit(), original.fit())
    assert ours.summary() == original.summary()


@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("model", ["sleep_slope", "penicillin", "cake"])
def test_refit_and_bootstrap_of_a_copy(model, how):
    ref = reference_fit(model, "REML")
    y = ref.simulate(1, seed=11).ravel()
    ours = _round_trips()[how](ref)
    expected = ref.copy().refit(y)
    got = ours.refit(y)
    assert np.array_equal(got._theta, expected._theta)
    assert got.objective == expected.objective
    assert np.array_equal(got.fixef, expected.fixef)
    assert got.summary() == expected.summary()
    # a copy of a model that has refitted (its compiled plans packed) refits alike
    again = _round_trips()[how](got)
    y2 = ref.simulate(1, seed=12).ravel()
    assert again.refit(y2).objective == got.refit(y2).objective
    assert np.array_equal(again._theta, got._theta)
    boot = _round_trips()[how](ref).bootstrap(4, seed=5)
    pd.testing.assert_frame_equal(boot, ref.bootstrap(4, seed=5), check_exact=True)


def test_new_plain_attributes_travel():
    """State is the instance's attributes: one added to the model is kept."""
    fit = reference_fit("sleep_slope", "REML").copy()
    fit.working_shift = np.array([1.5, -2.0])
    fit.notes = {"centred": True, "scale": 0.25}
    for trip in _round_trips().values():
        ours = trip(fit)
        assert np.array_equal(ours.working_shift, fit.working_shift)
        assert ours.notes == fit.notes


def test_shallow_copy_shares_the_factor():
    """copy.copy keeps its meaning (the attributes shared, the factor too); copy()
    gives a factor of its own."""
    fit = reference_fit("sleep_int", "REML")
    shallow = copy.copy(fit)
    assert shallow._core is fit._core and shallow._a is fit._a
    own = fit.copy()
    assert own._core is not fit._core
    assert own.objective == fit.objective


@pytest.mark.parametrize("how", ROUND_TRIPS)
def test_core_and_compiled_plans_copy(how):
    """The compiled factor, objective and plans pickle and copy to objects in the
    same state (shallow copies share A, as the constructor does)."""
    fit = reference_fit("sleep_slope", "REML").copy()
    y = fit.simulate(1, seed=3).ravel()
    fit.refit(y)
    fit.refit(y)   # (the second run packs the plan's buffers)
    core = fit._core
    for clone in (copy.copy(core), _round_trips()[how](core)):
        assert np.array_equal(clone.l_values, core.l_values)
        assert clone.components() == core.components()
        theta = fit._to_internal(fit._theta * 0.9)
        g1, g2 = np.empty(3), np.empty(3)
        assert clone.gradient(theta, True, g1) == core.gradient(theta, True, g2)
        assert g1.tolist() == g2.tolist()
        fit._core.update(fit._to_internal(fit._theta))
    assert copy.copy(core).a_values is core.a_values
    assert _round_trips()[how](core).a_values is not core.a_values
    for name in ("_evaluator", "_optimum_plan"):
        clone = _round_trips()[how](fit.__dict__[name])
        assert type(clone) is type(fit.__dict__[name])
    plan = _round_trips()[how](fit._refit_plan)
    start = fit._theta.copy()
    ours = plan.run(y, start)
    theirs = fit._refit_plan.run(y, start)
    assert ours[0] == theirs[0] == 0 and np.array_equal(ours[1], theirs[1])
    assert ours[2] == theirs[2]


def test_streamed_model_round_trips():
    formula, df = _spec("sleep_slope")
    unfitted = StreamedLinearMixedModel.from_frame(formula, df, chunk_rows=50)
    ours = pickle.loads(pickle.dumps(unfitted)).fit()
    fit = unfitted.fit()
    assert type(ours) is StreamedLinearMixedModel
    _assert_same_arrays(ours, fit)
    for trip in _round_trips().values():
        clone = trip(fit)
        _assert_same_arrays(clone, fit)
        assert np.array_equal(clone.fitted, fit.fitted)
        assert clone.summary() == fit.summary()
    implicit = LinearMixedModel(formula, df, streaming=True)
    assert type(implicit) is StreamedLinearMixedModel
    assert copy.deepcopy(implicit).fit().objective == fit.objective


def test_model_from_crossproducts_round_trips():
    """A model of A alone (no rows) pickles; its row results stay unavailable."""
    ref = reference_fit("penicillin", "ML")
    reduced = LinearMixedModel.from_crossproducts(
        ref.formula, reml=False, remats=ref.remats, fixef_names=ref.fixef_names,
        layout=ref._layout, a=ref._a.copy(), nobs=ref.nobs, response=ref.response)
    ours = pickle.loads(pickle.dumps(reduced))
    _assert_same_arrays(ours.fit(), reduced.fit())
    _assert_same_arrays(pickle.loads(pickle.dumps(reduced, protocol=5)), reduced)
    assert ours.x is None
    with pytest.raises(lmmfast.errors.FitError):
        ours.refit(np.zeros(ours.nobs))


def test_dask_model_pickles_without_a_client():
    dd = pytest.importorskip("dask.dataframe")
    import dask
    formula, df = _spec("sleep_zerocorr")
    with dask.config.set(scheduler="synchronous"):
        fit = lmmfast.lmer(formula, dd.from_pandas(df, npartitions=3))
        ours = pickle.loads(pickle.dumps(fit))
        _assert_same_arrays(ours, fit)
        assert ours.summary() == fit.summary()
        assert np.array_equal(ours.fitted.compute(), fit.fitted.compute())


FORMERLY_CRASHING = {
    "pickle_unfitted": """
        pickle.loads(pickle.dumps(model)).fit()
    """,
    "deepcopy_unfitted": """
        copy.deepcopy(model).fit()
    """,
    "copy_core": """
        clone = copy.copy(model._core)
        clone.update(np.ones(3))
        print(clone.components())
    """,
    "copy_compiled_plans": """
        model.fit()
        for name in ("_evaluator", "_optimum_plan"):
            copy.copy(model.__dict__[name])
        copy.copy(model._optimum_plan).run(np.ones(3), None)
    """,
    "pickle_fitted": """
        pickle.loads(pickle.dumps(model.fit())).summary()
    """,
}


@pytest.mark.parametrize("call", list(FORMERLY_CRASHING))
def test_no_crash_in_a_fresh_interpreter(call, tmp_path):
    """Calls that crashed the interpreter (segfault) run, and a pickle loads in an
    interpreter that has not imported lmmfast."""
    script = textwrap.dedent("""
        import copy, pickle, sys
        import numpy as np
        import lmmfast
        df = lmmfast.datasets.load("sleepstudy")
        model = lmmfast.LinearMixedModel("Reaction ~ Days + (Days | Subject)", df)
    """) + textwrap.dedent(FORMERLY_CRASHING[call]) + textwrap.dedent("""
        open(sys.argv[1], "wb").write(pickle.dumps((model, model._core)))
    """)
    path = tmp_path / "saved.pkl"
    # (run in tmp_path: the checkout's lmmfast/ would shadow the installed package)
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    load = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; m, c = pickle.load(open(sys.argv[1], 'rb'));"
         " print(type(m).__name__, c.components())", str(path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert load.returncode == 0, load.stderr[-2000:]
    assert load.stdout.startswith("LinearMixedModel")
