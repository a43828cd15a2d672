"""Property test: glmer on random small designs against the dense brute-force GLMM.

Each example draws a small data set (20 to 100 rows, 2 to 8 groups) and a
model: binomial (logit, probit, cloglog, cauchit; the response as
``cbind``, 0/1, bool or a proportion with weights) or poisson (log, identity,
sqrt); a random intercept, sometimes with a correlated slope or a second,
crossed intercept; Laplace or, for one scalar term, adaptive quadrature.
Every fit must either raise an ``lmmfast.LmmError`` or return a -2 log L equal
to the dense Laplace (or quadrature) deviance of ``tests/dense_glmm.py`` at
the returned parameters to 1e-8, which a dense optimiser started there cannot
lower by more than 1e-6 (``test_glmer_dense.assert_dense_optimum``); the input
frame is never modified.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_glmer_dense import assert_dense_optimum

from lmmfast.errors import ConvergenceWarning, LmmError
from lmmfast.glmm import glmer

FAMILIES = [("binomial", "logit"), ("binomial", "probit"), ("binomial", "cloglog"),
            ("binomial", "cauchit"), ("poisson", "log"), ("poisson", "sqrt")]
RESPONSES = ["cbind", "01", "bool", "proportion"]

SETTINGS = settings(max_examples=45, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def designs(draw):
    seed = draw(st.integers(0, 2 ** 32 - 1))
    family = draw(st.sampled_from(FAMILIES))
    n = draw(st.integers(20, 100))
    n_groups = draw(st.integers(2, 8))
    shape = draw(st.sampled_from(["intercept", "slope", "crossed"]))
    response = draw(st.sampled_from(RESPONSES)) if family[0] == "binomial" else "counts"
    if family[1] == "cauchit" and response in ("01", "bool"):
        response = "cbind"   # (see REPORTED_SHORT)
    n_agq = 1
    if shape == "intercept":
        n_agq = draw(st.sampled_from([1, 1, 3, 7]))
    sd = draw(st.sampled_from([0.0, 0.3, 1.0]))
    return seed, family, n, n_groups, shape, response, n_agq, sd


def _data(seed, family, n, n_groups, shape, response, sd):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_groups, n)
    h = rng.integers(0, 3, n)
    x = rng.normal(size=n)
    eta = 0.2 + 0.5 * x + sd * rng.normal(size=n_groups)[g]
    if shape == "slope":
        eta += 0.5 * sd * rng.normal(size=n_groups)[g] * x
    if shape == "crossed":
        eta += sd * rng.normal(size=3)[h]
    frame = {"x": x, "g": [f"g{v}" for v in g], "h": [f"h{v}" for v in h]}
    rhs = {"intercept": "x + (1 | g)", "slope": "x + (1 + x | g)",
           "crossed": "x + (1 | g) + (1 | h)"}[shape]
    weights = None
    name, link = family
    if name == "binomial":
        mu = 1.0 / (1.0 + np.exp(-eta))
        trials = rng.integers(1, 7, n) if response in ("cbind", "proportion") else np.ones(n, int)
        k = rng.binomial(trials, mu)
        if response == "cbind":
            frame.update(s=k, f=trials - k)
            lhs = "cbind(s, f)"
        elif response == "proportion":
            frame.update(p=k / trials, m=trials)
            lhs, weights = "p", "m"
        else:
            frame["y"] = k.astype(bool) if response == "bool" else k
            lhs = "y"
    else:
        mean = np.exp(eta) if link == "log" else (1.2 + 0.3 * eta).clip(0.1) ** 2
        frame["y"] = rng.poisson(mean)
        lhs = "y"
    return pd.DataFrame(frame), f"{lhs} ~ {rhs}", weights


@SETTINGS
@given(designs())
def test_random_glmm_fits_equal_the_dense_optimum(design):
    seed, family, n, n_groups, shape, response, n_agq, sd = design
    df, formula, weights = _data(seed, family, n, n_groups, shape, response, sd)
    before = df.copy(deep=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = glmer(formula, df, family=family, nAGQ=n_agq, weights=weights)
    except LmmError as exc:
        event(f"LmmError: {type(exc).__name__}")
        pd.testing.assert_frame_equal(df, before)
        return
    pd.testing.assert_frame_equal(df, before)
    event(f"fitted: {family[0]}/{family[1]}, nAGQ={n_agq}")
    if shape == "slope" and f.is_singular:   # (a saddle there is left: SADDLES)
        event("singular random slope")
    # a random-effect sd running away (quasi-separation of the groups: the
    # likelihood flattens as theta grows, REPORTED_SHORT): the deviance is checked to
    # 1e-6 (L is ill-conditioned there), optimality not
    runaway = bool(np.max(np.abs(f.theta)) > RUNAWAY_THETA)
    if runaway:
        event("theta running away: deviance checked to 1e-6, optimality not")
    assert_dense_optimum(f, optimal=not runaway,
                         rel=1e-6 if runaway else 1e-8)


# Designs on which the fit stops short of the optimum (the dense optimiser
# lowers -2 log L; lme4 1.1-31 reaches a lower value on each).  They are left out
# of the generator above (the identity link; slopes without large group
# variation; cauchit on 0/1 responses) and kept here: each must reach the
# optimum, raise an LmmError, or warn as lme4 does (a ConvergenceWarning from
# lme4's checks of the gradient and Hessian in (theta, beta), fit.convergence).
RUNAWAY_THETA = 20.0   # a relative random-effect sd beyond any the data can identify

REPORTED_SHORT = [
    # a random slope on 0/1 responses of 21 rows in 8 groups: theta runs away
    # (quasi-separation).  The fit stopped short at theta = (16.1, -29.3, 0),
    # -2 log L = 19.9018, reporting max|grad| = 0.58, until stage 2's Newton steps
    # kept within the bounds; it now reaches the dense optimum, 19.6576, at
    # theta = (20.0, -36.9, 0.64).  (Such fits end where BOBYQA's long search
    # stops, which small changes of rounding move.)
    (14774, ("binomial", "logit"), 21, 8, "slope", "01", 1, 1.0),
    # cauchit on 0/1 responses of 20 rows with crossed terms: the estimates run
    # away (theta = 7.2, 0.48 here, -2 log L = 21.212; lme4 20.792 at theta =
    # 20.8, 26.7 with convergence warnings): a degenerate Hessian is reported
    (2, ("binomial", "cauchit"), 20, 6, "crossed", "01", 1, 0.0),
    # the identity link's means leave the family's range for theta >= 0.5, where
    # PIRLS (Fisher scoring: the observed information is not usable at y = 0)
    # does not converge: an LmmError (optimum: theta = 0.0713, -2 log L =
    # 57.989, lme4 57.98901)
    (2, ("poisson", "identity"), 20, 2, "intercept", "counts", 1, 0.0),
]

SADDLES = [
    # a random slope with little group variation: stage 2 stops at theta = 0 (all
    # three), -2 log L = 21.964, where H has a negative eigenvalue (-2.28); from
    # the best point along its eigenvector the fit reaches theta = (0.2725,
    # 0.3043, 0), 21.886616 (lme4 21.88664)
    ((20, ("binomial", "logit"), 20, 2, "slope", "01", 1, 0.3), 21.88664),
    # a correlated slope on data with no group variation: stage 2 stops on the
    # boundary theta = (0, 1e-8, 0), -2 log L = 44.674, where the gradient in
    # theta vanishes (the deviance is a function of Lambda Lambda^T) but H has a
    # negative eigenvalue (-7.04); the fit reaches theta = (0.2315, 0.2617, 0),
    # 44.503559 (lme4 44.50356)
    ((2_147_483_647, ("binomial", "logit"), 20, 6, "slope", "cbind", 1, 0.0), 44.50356),
]


def _fit_reports_or_reaches_optimum(case) -> None:
    seed, family, n, n_groups, shape, response, n_agq, sd = case
    df, formula, weights = _data(seed, family, n, n_groups, shape, response, sd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            f = glmer(formula, df, family=family, nAGQ=n_agq, weights=weights)
        except LmmError:
            return
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        assert not f.convergence.ok
        return
    assert_dense_optimum(f)


@pytest.mark.parametrize("case", REPORTED_SHORT,
                         ids=["slope-runaway", "cauchit-runaway", "poisson-identity"])
def test_designs_where_the_fit_stops_short_are_reported(case):
    _fit_reports_or_reaches_optimum(case)


@pytest.mark.parametrize("case,lme4", SADDLES, ids=["slope-to-zero", "singular-slope"])
def test_a_saddle_on_the_boundary_is_left_for_the_optimum(case, lme4):
    """A singular stop where H has negative curvature is a saddle: the fit goes on
    from the best point along that direction to the optimum (the dense optimiser
    cannot lower it; lme4's -2 log L or lower)."""
    seed, family, n, n_groups, shape, response, n_agq, sd = case
    df, formula, weights = _data(seed, family, n, n_groups, shape, response, sd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = glmer(formula, df, family=family, nAGQ=n_agq, weights=weights)
    assert f.objective <= lme4 * (1 + 1e-6)
    assert_dense_optimum(f)
    assert np.linalg.eigvalsh(f.hessian).min() > -1e-3 * np.abs(f.hessian).max()
