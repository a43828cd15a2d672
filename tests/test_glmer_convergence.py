"""lme4's convergence checks of a glmer fit (``fit.convergence``, eqs. 85-88):
the scaled gradient and the Hessian of the deviance in (theta, beta) that the
covariance of beta-hat comes from (eq. 104), a ConvergenceWarning for each
message, the messages in the summary, and the bootstrap's count of refits
that fail them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_glmer import dataset, fit, lme4_default, spec

from lmmfast.convergence import GRADIENT_TOL
from lmmfast.errors import ConvergenceWarning
from lmmfast.glmm import glmer
from lmmfast.glmm.laplace import laplace_deviance

MODELS = list(lme4_default()["models"])


@pytest.mark.parametrize("name", MODELS)
def test_fixture_fits_pass_lme4s_checks_as_lme4s_do(name):
    """lme4 1.1-31 fits every fixture model without a convergence message; so
    does lmmfast, with the checks run wherever lme4 runs them (not nAGQ = 0)."""
    assert lme4_default()["models"][name]["converged_warnings"] is None
    m = spec(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        f = glmer(m["formula"], dataset(m["dataset"]), family=(m["family"], m["link"]),
                  nAGQ=m["nAGQ"], weights=m["weights"])
    c = f.convergence
    assert c.ok and c.messages == ()
    assert c.checked == (m["nAGQ"] > 0)
    if c.checked:
        n = f.n_theta + len(f.fixef_names)
        assert len(c.gradient) == n
        # 100 times tighter than lme4's check: the analytic gradient at a PIRLS mode
        # is itself accurate to about 1e-5 (VerbAgg with the slope: max|g| 2.2e-5,
        # then 4.3e-5 at a Newton decrement of 2e-13, a scaled gradient of 2.1e-6)
        assert c.scaled_grad < 1e-2 * GRADIENT_TOL and c.max_grad < 1e-3
        assert c.hessian_pd and 0 < c.hessian_min_eigen <= c.hessian_max_eigen
        # the extreme eigenvalues are those of the Hessian the covariance uses
        eig = np.linalg.eigvalsh(f.hessian)
        assert c.hessian_min_eigen == pytest.approx(eig[0], rel=1e-10)
        assert c.hessian_max_eigen == pytest.approx(eig[-1], rel=1e-10)


def test_a_fit_stopped_short_warns_and_its_summary_says_so(monkeypatch):
    """A fit whose stage 2 stops short of the optimum (here: stopped at its start,
    stage 1's loose optimum) has a gradient that is not zero there: lme4's
    message is warned, kept on the fit and printed."""
    from lmmfast.glmm import stages
    m = spec("cbpp_laplace")

    def stopped(fun, x0, *args, **kw):
        return stages.NewtonResult(np.array(x0), float(fun(x0)), 1, True)

    monkeypatch.setattr(stages, "minimize_newton", stopped)
    with pytest.warns(ConvergenceWarning, match=r"Model failed to converge with max\|grad\| ="):
        f = glmer(m["formula"], dataset(m["dataset"]), family=m["family"])
    c = f.convergence
    assert not c.ok and c.checked
    assert c.scaled_grad > GRADIENT_TOL
    failed = [m for m in c.messages if m.startswith("Model failed to converge with max|grad| = ")]
    assert len(failed) == 1 and f"(tol = {GRADIENT_TOL:g}, component " in failed[0]
    text = f.summary()
    assert "optimizer (bobyqa) convergence code: 0 (OK)" in text
    assert failed[0] in text


def test_at_a_singular_fit_the_free_parameters_gradient_is_checked():
    """lme4 checks nothing after a singular fit's message; the gradient in the
    parameters off the bounds must still vanish at an optimum, and is checked."""
    from lmmfast.convergence import convergence_of
    h = [[2.0, 0.0, 0.0], [0.0, 3.0, 0.5], [0.0, 0.5, 1.0]]
    g = [0.9, 1e-6, -2e-6]              # theta_1 on its bound: its gradient may be > 0
    c = convergence_of(g, h, singular=True, checked=True, n_theta=1,
                       free=[False, True, True])
    assert c.ok and c.messages == ("boundary (singular) fit: see help('isSingular')",)
    g = [0.9, 1e-6, -0.05]
    c = convergence_of(g, h, singular=True, checked=True, n_theta=1,
                       free=[False, True, True])
    assert not c.ok and c.messages[1].startswith("Model failed to converge with max|grad| = ")
    assert c.messages[1].endswith("component 3)")
    # without ``free`` (an LMM) a singular fit gets the singular message alone
    assert convergence_of(g, h, singular=True, checked=True).messages == c.messages[:1]


def test_a_singular_fit_gets_only_the_singular_message():
    """As lme4: at a singular fit the derivative checks do not run (the summary
    ends with the singular-fit message alone; tests/test_glmer_results.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | period)",
                  dataset("cbpp"), family="binomial")
    assert f.is_singular
    c = f.convergence
    assert c.singular and c.ok and c.messages == ("boundary (singular) fit: see help('isSingular')",)


def test_the_bootstrap_counts_refits_that_fail_the_checks():
    f = fit("cbpp_laplace")
    boot = f.bootstrap(4, seed=1, n_jobs=1, progress=False)
    assert boot.attrs["n_not_converged"] == 0
    assert boot.attrs["n_failed"] == 0


def test_the_fixed_effect_hessian_is_checked_first_with_lme4s_words():
    """lme4's checkConv for a GLMM runs checkHess on H's beta block ("fixed-effect")
    before the whole H; the messages are lme4's strings."""
    from lmmfast.convergence import convergence_of
    g = [0.0, 0.0, 0.0]
    # theta = 1 element; the beta block [[1, 2], [2, 1]] has one negative eigenvalue
    h = [[4.0, 0.1, 0.1], [0.1, 1.0, 2.0], [0.1, 2.0, 1.0]]
    c = convergence_of(g, h, singular=False, checked=True, n_theta=1)
    # lme4's order: the gradient's message, the beta block's, the whole H's
    assert c.messages == ("unable to evaluate scaled gradient",
                          "Model failed to converge: degenerate fixed-effect Hessian "
                          "with 1 negative eigenvalues",
                          "Model failed to converge: degenerate Hessian with 1 negative "
                          "eigenvalues")
    h = [[4.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]   # a singular beta block
    c = convergence_of(g, h, singular=False, checked=True, n_theta=1)
    assert c.messages[1] == ("fixed-effect Hessian is numerically singular: parameters "
                             "are not uniquely determined")
    # an LMM's checks (theta alone) are unchanged, and a singular fit gets no others
    assert convergence_of(g, h, singular=False, checked=True).messages == (
        "unable to evaluate scaled gradient",
        "Hessian is numerically singular: parameters are not uniquely determined")
    assert convergence_of(g, h, singular=True, checked=True, n_theta=1).messages == (
        "boundary (singular) fit: see help('isSingular')",)


def test_newton_steps_stay_within_the_bounds_and_converge_on_them():
    """Stage 2's steps hold a diagonal theta at its bound 0 where they would take it
    below, and shorten a step that crosses it: a quadratic whose minimum lies
    beyond the bound converges on the bound (such a step used to end the Newton
    steps, for BOBYQA to finish)."""
    from lmmfast.glmm import stages
    target, scale = np.array([1.0, -1.0, 0.5]), np.array([1.0, 2.0, 3.0])

    def value_gradient(x):
        return float((scale * (x - target) ** 2).sum()), 2.0 * scale * (x - target)

    free = np.array([True, False, False])
    r = stages.minimize_newton(lambda x: value_gradient(x)[0], np.array([0.0, 0.7, 0.2]),
                               free, 1e-4, None, value_gradient=value_gradient)
    assert r.converged
    np.testing.assert_allclose(r.x, [1.0, 0.0, 0.5], atol=1e-8)
    assert r.n_evals <= 8


def test_newton_steps_stop_where_the_deviance_rounds():
    """On a deviance of 1e6 whose gradient carries noise of 3e-6 (sums over many
    rows), the Newton decrement stays near 1e-11, above ``tol`` but below the
    deviance's rounding, where no line search can see a decrease: stage 2
    stops there, converged, instead of halving steps to its end."""
    from lmmfast.glmm import stages
    target = np.array([0.5, -0.3])

    def value_gradient(x):
        noise = 3e-6 * np.sin(1e7 * x)
        return 1e6 + float(((x - target) ** 2).sum()), 2.0 * (x - target) + noise

    r = stages.minimize_newton(lambda x: value_gradient(x)[0], np.zeros(2),
                               np.array([True, True]), 1e-4, None,
                               value_gradient=value_gradient)
    assert r.converged and r.n_evals <= 6
    np.testing.assert_allclose(r.x, target, atol=1e-5)
    assert stages.ROUNDING_DECREMENT * 1e6 > 1e-12


def test_a_theta_that_stage_1_leaves_on_its_bound_does_not_hold_stage_2(monkeypatch):
    """The deviance is even in a diagonal theta at 0, so its derivative there is 0:
    stage 2 starts it at ``OFF_BOUND`` and reaches the optimum off the bound."""
    from lmmfast.glmm import stages
    m = spec("cbpp_laplace")
    data = dataset(m["dataset"])
    expected = glmer(m["formula"], data, family=m["family"])
    bobyqa = stages.minimize_bobyqa
    calls = []

    def stage1_at_zero(fun, x0, lower, step, **kw):
        result = bobyqa(fun, x0, lower, step, **kw)
        if not calls:   # stage 1: its optimum replaced by the bound
            x = np.zeros_like(result.x)
            result = stages.StageResult(x, float(fun(x)), result.n_evals, result.return_code)
        calls.append(result)
        return result

    newton = stages.minimize_newton
    starts = []

    def recorded(fun, x0, *args, **kw):
        starts.append(np.array(x0))
        return newton(fun, x0, *args, **kw)

    monkeypatch.setattr(stages, "minimize_bobyqa", stage1_at_zero)
    monkeypatch.setattr(stages, "minimize_newton", recorded)
    f = glmer(m["formula"], data, family=m["family"])
    assert starts[0][0] == stages.OFF_BOUND   # theta; beta from stage 1's mode at 0
    assert len(calls) == 1   # stage 2 by Newton steps alone
    assert f.objective <= expected.objective * (1 + 1e-12)
    np.testing.assert_allclose(f.theta, expected.theta, rtol=1e-6)


def test_stage_1_is_loose_only_where_newton_steps_finish_the_search():
    from lmmfast.glmm import stages
    assert stages.stage1_tolerances(0, True) == stages.stage1_tolerances(0, False) \
        == (1e-8, 1e-5, False)
    assert stages.stage1_tolerances(1, False) == (1e-6, 1e-5, False)
    assert stages.stage1_tolerances(1, True) == (1.0, 1e-3, True)


@pytest.mark.parametrize("name", ["cbpp_laplace", "verbagg_main"])
def test_settled_search_is_near_the_mode_with_fewer_passes(name):
    """Stage 1's loose search stops PIRLS before its last step (``settle``): the
    point is within the step bound of the joint mode, its deviance within 1e-2
    of the exact one (BOBYQA's tolerance there is 1), in fewer passes."""
    m = spec(name)
    passes, modes = [], {}
    for settle in (False, True):   # each from the same state: a fit's end
        f = glmer(m["formula"], dataset(m["dataset"]), family=m["family"])
        p = f.pirls
        theta = f.theta * 1.2
        loop = p.factor(True).loop
        before = loop.n_passes
        modes[settle] = p.mode_joint(theta, exact=False, search_tol=1e-3, settle=settle)
        passes.append(loop.n_passes - before)
    assert passes[1] < passes[0]
    exact = p.mode_joint(theta)
    assert np.max(np.abs(modes[True].u - exact.u)) < 2e-3
    assert np.max(np.abs(modes[True].beta - exact.beta)) < 2e-3
    assert abs(f.deviance_theta(theta) - laplace_deviance(p, exact)) < 1e-2
