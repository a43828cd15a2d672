"""lme4's convergence checks (eqs. 85-88) and refits with every optimiser (allFit).

The checks are compared with lme4's on the reference suite: the same messages
(none, or the singular-fit one), and the analytic gradient at lme4's optimum
against the gradient lme4 recorded there.  Fits that lme4 would reject (too
few evaluations, a badly scaled covariate) must warn, with lme4's text.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from conftest import extra_fit, extra_reference, reference, reference_fit
from lmmfast.convergence import (GRADIENT_TOL, Convergence, _hessian_messages, _scaled_gradient,
                                 check_convergence, convergence_of, passes)
from lmmfast.errors import ConvergenceWarning, DataError
from lmmfast.summary import SINGULAR_MESSAGE

SMALL = [m for m in reference()["models"] if m != "insteval"]
CASES = [(m, k) for m in SMALL for k in ("REML", "ML")]
IDS = [f"{m}-{k}" for m, k in CASES]
pytestmark = pytest.mark.filterwarnings("ignore:boundary \\(singular\\) fit")


def _model(name: str, kind: str) -> lmmfast.LinearMixedModel:
    spec = reference()["models"][name]
    return lmmfast.LinearMixedModel(spec["formula"], lmmfast.datasets.load(spec["dataset"]),
                                    reml=(kind == "REML"))


def _sleepstudy() -> lmmfast.LinearMixedModel:
    return _model("sleep_slope", "REML")


def _fit_recording(model, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(**options)
    return [w for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_reference_fits_pass_as_in_lme4(model, kind):
    ref = reference()["models"][model]["fits"][kind]
    fit = _model(model, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit.fit()
    conv = fit.convergence
    assert isinstance(conv, Convergence)
    assert list(conv.messages) == ref["convergence"]["lme4_messages"]
    assert conv.singular == ref["is_singular"]
    assert conv.checked == (not ref["is_singular"])
    if not ref["is_singular"]:
        assert conv.scaled_grad < 1e-4 and conv.hessian_pd and conv.hessian_min_eigen > 0
        assert conv.ok
    np.testing.assert_allclose(conv.gradient, fit.criterion_gradient(fit._theta)[1],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
def test_gradient_at_lme4_optimum_is_lme4s(model, kind):
    """lme4 records its finite-difference gradient at its optimum; the analytic
    gradient there agrees to the differences' error."""
    ref = reference()["models"][model]["fits"][kind]
    grad = _model(model, kind).criterion_gradient(np.array(ref["theta"]))[1]
    np.testing.assert_allclose(grad, ref["gradient_at_optimum"], rtol=0, atol=5e-5)


EXTRA = [(m, k) for m in extra_reference()["models"] if m != "sleep_zero_weight"
         for k in ("REML", "ML")]


@pytest.mark.parametrize("model,kind", EXTRA, ids=[f"{m}-{k}" for m, k in EXTRA])
def test_extra_fits_as_in_lme4(model, kind):
    """Weights, offsets, formula features: lme4's messages, and lme4's gradient at
    its optimum.  (1 + phase || Subject) is not identifiable: lme4 stops on the
    boundary (a singular fit), lmmfast on the flat ridge 2 units of criterion
    lower, where H has a zero eigenvalue and lme4's check says so (eq. 87)."""
    ref = extra_reference()["models"][model]["fits"][kind]
    fit = extra_fit(model, kind)
    if model == "sleep_zerocorr_factor":
        assert fit.objective < ref["objective"] - 1
        assert fit.convergence.messages == (
            "Hessian is numerically singular: parameters are not uniquely determined",)
        assert abs(fit.convergence.hessian_min_eigen) < 1e-6
    else:
        assert list(fit.convergence.messages) == ref["convergence"]["lme4_messages"]
    grad = fit.criterion_gradient(np.array(ref["theta"]))[1]
    np.testing.assert_allclose(grad, ref["gradient_at_optimum"], rtol=0, atol=5e-5)


def test_insteval_is_not_checked_as_in_lme4():
    """lme4 skips the derivative checks from 10,000 observations (InstEval: 73,421)."""
    conv = reference_fit("insteval", "REML").convergence
    assert not conv.checked and conv.messages == ()
    assert conv.scaled_grad < GRADIENT_TOL and conv.hessian_pd


def test_hessian_is_close_to_differences_of_the_gradient():
    fit = reference_fit("sleep_slope", "REML")
    theta = fit._theta
    n, h = len(theta), 1e-5
    numeric = np.empty((n, n))
    for j in range(n):
        step = np.zeros(n)
        step[j] = h
        numeric[:, j] = (fit.criterion_gradient(theta + step)[1]
                         - fit.criterion_gradient(theta - step)[1]) / (2 * h)
    expected = np.linalg.eigvalsh((numeric + numeric.T) / 2)
    conv = fit.convergence
    np.testing.assert_allclose([conv.hessian_min_eigen, conv.hessian_max_eigen],
                               [expected[0], expected[-1]], rtol=1e-4)


@pytest.mark.parametrize("options,evals", [
    (dict(optimizer="bobyqa", maxeval=5), 5),
    (dict(optimizer="nelder-mead", maxeval=10), 10),
    (dict(optimizer="l-bfgs-b", maxeval=4), None),
    (dict(optimizer="quasi-newton", maxeval=2), None),
], ids=["bobyqa", "nelder-mead", "l-bfgs-b", "quasi-newton"])
def test_stopped_fit_warns_as_lme4(options, evals):
    fit = _sleepstudy()
    caught = _fit_recording(fit, **options)
    texts = [str(w.message) for w in caught]
    assert any(t.startswith("the optimiser stopped with MAXEVAL_REACHED") for t in texts)
    conv = fit.convergence
    assert conv.scaled_grad > GRADIENT_TOL and not conv.ok
    grad_message = (f"Model failed to converge with max|grad| = {conv.scaled_grad:g} "
                    f"(tol = 0.002, component ")
    assert any(t.startswith(grad_message) for t in texts), texts
    assert conv.messages[0].startswith(grad_message)
    if evals is not None:
        assert fit.n_evals == evals
    # the warning points at the caller
    assert all(w.filename == __file__ for w in caught)
    # and the summary ends with lme4's lines
    notes = fit.summary().splitlines()[-2:]
    assert notes[0].startswith("optimizer did not converge: MAXEVAL_REACHED")
    assert notes[1] == conv.messages[0]


def test_checks_at_fit_time_equal_later_ones():
    fit = _sleepstudy()
    _fit_recording(fit, optimizer="bobyqa", maxeval=5)
    at_fit = fit.convergence
    assert fit.__dict__.pop("convergence") is at_fit
    assert fit.convergence == at_fit
    assert check_convergence(fit) == at_fit


def test_badly_scaled_covariate_warns_as_lme4():
    """Days in thousandths: theta's slope element is 1000 times smaller and H's
    eigenvalue 10^6 times larger, which lme4 reports (eq. 88)."""
    df = lmmfast.datasets.load("sleepstudy").copy()
    df["Hours"] = df["Days"] * 1000.0
    model = lmmfast.LinearMixedModel("Reaction ~ 1 + Hours + (1 + Hours | Subject)", df)
    caught = _fit_recording(model)
    expected = ["Model is nearly unidentifiable: very large eigenvalue\n - Rescale variables?",
                "Model is nearly unidentifiable: large eigenvalue ratio\n - Rescale variables?"]
    assert [str(w.message) for w in caught] == expected
    assert list(model.convergence.messages) == expected
    assert model.convergence.hessian_max_eigen > 1e6
    text = model.summary()
    assert "optimizer (quasi-newton) convergence code: 0 (OK)" in text
    assert text.endswith(expected[1])
    # the fit is that of Days: REML's log|R_X|^2 gains 2 log 1000 (eq. 20)
    plain = reference_fit("sleep_slope", "REML")
    assert model.objective == pytest.approx(plain.objective + 2 * np.log(1000.0), rel=1e-10)
    np.testing.assert_allclose(model._theta * [1, 1000, 1000], plain._theta, rtol=1e-5)


def test_refit_checks_the_new_theta():
    fit = _sleepstudy()
    fit.fit()
    before = fit.convergence
    y = fit.simulate(1, seed=4)[:, 0]
    fit.refit(y)
    after = fit.convergence
    assert after.gradient != before.gradient
    np.testing.assert_allclose(after.gradient, fit.criterion_gradient(fit._theta)[1],
                               rtol=1e-12, atol=1e-12)


def test_large_fit_is_not_checked():
    """From 10,000 observations lme4 computes no derivatives, and does not warn."""
    rng = np.random.default_rng(1)
    n = 10_000
    g = rng.integers(0, 50, n)
    df = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=n)})
    df["y"] = 1 + df["x"] + rng.normal(size=50)[g] + rng.normal(size=n)
    model = lmmfast.LinearMixedModel("y ~ x + (1 | g)", df)
    caught = _fit_recording(model, optimizer="bobyqa", maxeval=3)
    assert [str(w.message).split(" with ")[0] for w in caught] == ["the optimiser stopped"]
    conv = model.convergence
    assert not conv.checked and conv.messages == ()
    assert conv.scaled_grad > GRADIENT_TOL   # the numbers are there when asked for
    assert "max|grad|" not in model.summary()


def test_scaled_gradient_is_lme4s():
    """lme4: solve(chol(H), g), chol(H) = R upper with H = R'R; then the
    component-wise minimum with |g|."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 4))
    h = a @ a.T + 0.5 * np.eye(4)
    g = rng.normal(size=4)
    r = np.linalg.cholesky(h).T
    expected = np.minimum(np.abs(np.linalg.solve(r, g)), np.abs(g))
    pd_, scaled, component = _scaled_gradient(g.tolist(), h.tolist())
    assert pd_ and component == int(np.argmax(expected)) + 1
    assert scaled == pytest.approx(expected.max(), rel=1e-12)
    assert _scaled_gradient(g.tolist(), (-h).tolist()) [0] is False


@pytest.mark.parametrize("eigen,expected", [
    ([-1.0, 2.0, -3.0], ["Model failed to converge: degenerate Hessian with 2 negative "
                         "eigenvalues"]),
    ([1e-8, 1.0], ["Hessian is numerically singular: parameters are not uniquely determined"]),
    ([1.0, 2e6], ["Model is nearly unidentifiable: very large eigenvalue\n - Rescale variables?",
                  "Model is nearly unidentifiable: large eigenvalue ratio\n - Rescale variables?"]),
    ([1e-3, 1e4], ["Model is nearly unidentifiable: large eigenvalue ratio\n - Rescale variables?"]),
    ([1.0, 10.0], []),
])
def test_hessian_messages_are_lme4s(eigen, expected):
    assert _hessian_messages(eigen, all(v > 0 for v in eigen)) == expected


def test_what_passes_at_a_glance_passes_every_check():
    """``passes`` (the fit-time glance that skips the eigenvalues) is sufficient:
    wherever it holds, the full checks give no message, those of a GLMM's beta
    block (a principal block of H) included."""
    rng = np.random.default_rng(11)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        n = int(rng.integers(1, 7))
        q = np.linalg.qr(rng.normal(size=(n, n)))[0]
        eig = 10.0 ** rng.uniform(-7.5, 6.5, n)
        h = (q * eig) @ q.T
        g = rng.normal(size=n) * 10.0 ** rng.uniform(-6, -1)
        ok = passes(g.tolist(), h.tolist())
        nt = int(rng.integers(0, n)) if n > 1 else None
        conv = convergence_of(g.tolist(), h.tolist(), False, True, n_theta=nt)
        seen[ok] += 1
        if ok:
            assert conv.messages == (), (eig, g)
    assert min(seen.values()) > 300   # (both outcomes drawn often)


def test_singular_fit_gets_only_the_singular_message():
    fit = reference_fit("dyestuff2", "REML")
    conv = fit.convergence
    assert conv.messages == (SINGULAR_MESSAGE,) and conv.singular and not conv.checked
    assert conv.ok


# ------------------------------------------------------------------ allfit
@pytest.mark.parametrize("model", ["sleep_slope", "penicillin"])
def test_allfit_reaches_lme4s_objective(model):
    ref = reference()["models"][model]["fits"]["REML"]
    fit = _model(model, "REML").fit()
    theta, optimizer, objective = fit.theta.copy(), fit.optsum.optimizer, fit.objective
    table = fit.allfit()
    assert list(table.columns) == (["optimizer", "objective", "time", "n_evals", "converged",
                                    "messages"] + ref["theta_names"] + ref["fixef"]["names"])
    assert list(table["optimizer"]) == ["quasi-newton", "bobyqa", "nelder-mead", "l-bfgs-b"]
    np.testing.assert_allclose(table["objective"], ref["objective"], rtol=1e-6)
    np.testing.assert_allclose(table[ref["theta_names"]].to_numpy(),
                               np.tile(ref["theta"], (4, 1)), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(table[ref["fixef"]["names"]].to_numpy(),
                               np.tile(ref["fixef"]["estimate"], (4, 1)), rtol=1e-6)
    assert table["converged"].all() and (table["messages"] == "").all()
    assert (table["time"] > 0).all() and (table["n_evals"] > 0).all()
    # the fit itself is untouched
    assert fit.optsum.optimizer == optimizer and fit.objective == objective
    pd.testing.assert_series_equal(fit.theta, theta)


def test_allfit_singular_fit_and_a_subset():
    fit = reference_fit("dyestuff2", "ML")
    table = fit.allfit(["bobyqa", "Nelder_Mead"])
    assert list(table["optimizer"]) == ["bobyqa", "nelder-mead"]
    assert table["converged"].all()
    assert table["messages"].str.startswith(SINGULAR_MESSAGE).all()
    ref = reference()["models"]["dyestuff2"]["fits"]["ML"]
    np.testing.assert_allclose(table["objective"], ref["objective"], rtol=1e-6)


@pytest.mark.parametrize("bad", ["newton", ["bobyqa", "simplex"], "bobyqa", 3, []])
def test_allfit_bad_optimizers(bad):
    fit = reference_fit("sleep_int", "REML")
    with pytest.raises(DataError, match="optimizer"):
        fit.allfit(bad)


@pytest.mark.parametrize("model,kind", CASES, ids=IDS)
@pytest.mark.parametrize("optimizer", ["nelder-mead", "L-BFGS-B"])
def test_new_optimizers_reach_lme4(model, kind, optimizer):
    ref = reference()["models"][model]["fits"][kind]
    fit = _model(model, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit.fit(optimizer=optimizer)
    assert fit.optsum.optimizer == optimizer.lower() and fit.converged
    assert fit.objective <= ref["objective"] * (1 + 1e-6)
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-6)


def test_unknown_optimizer_is_a_data_error():
    with pytest.raises(DataError, match="optimizer must be one of 'quasi-newton', 'bobyqa', "
                                        "'nelder-mead', 'l-bfgs-b', got 'simplex'"):
        _sleepstudy().fit(optimizer="simplex")


def test_unfitted_model_has_no_checks():
    model = _sleepstudy()
    with pytest.raises(lmmfast.FitError, match="not been fitted"):
        _ = model.convergence
    with pytest.raises(lmmfast.FitError, match="not been fitted"):
        model.allfit()


def test_allfit_keeps_theta_apart_from_a_fixed_effect_of_the_same_name():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(10), 8)
    df = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=80),
                       "g.x": rng.normal(size=80)})
    df["y"] = df["g.x"] + df["x"] * rng.normal(size=10)[g] + rng.normal(size=80)
    fit = lmmfast.lmer("y ~ g.x + (0 + x | g)", df)
    assert fit.theta_names == ["g.x"] and "g.x" in fit.fixef_names
    table = fit.allfit(["quasi-newton"])
    assert table.loc[0, "theta.g.x"] == pytest.approx(fit.theta["g.x"], rel=1e-8)
    assert table.loc[0, "g.x"] == pytest.approx(fit.fixef["g.x"], rel=1e-8)
