"""Property tests: lmmfast on small random designs against the dense reference.

Each example is a small data set (8 to 60 rows) with a random model: unbalanced
or empty grouping levels, crossed (g, h), nested (g/s) and interaction (g:h)
grouping factors, random slopes, uncorrelated terms, categorical fixed effects
with unused or singleton levels, collinear or confounded columns, a constant
response, extreme scales, prior weights, offsets and missing values.  Fitting it
by REML and by ML must either raise an ``lmmfast.LmmError`` or give a fit whose
criterion, fixed effects and optimum agree with ``dense_criterion``; the input
is never modified.

The regression tests at the end pin down inputs on which a fit once went
wrong: badly scaled covariates, flat directions, saturated designs.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import lmmfast
from lmmfast.errors import ConvergenceWarning, LmmWarning

from dense_reference import dense_criterion, dense_Z

OBJECTIVE_RTOL = 1e-8
BETA_RTOL = 1e-6
OPTIMUM_RTOL = 1e-7     # a perturbed theta may not beat the optimum by more than this

FIXED_TERMS = ["x1", "f", "x2", "f2", "fg", "xc"]
RANDOM_TERMS = ["(1 | g)", "(1 | h)", "(1 | g/s)", "(1 + x1 | g)", "(x1 || g)",
                "(1 | g:h)", "(0 + x1 | h)", "(1 + xc | h)"]
SLOPE_TERMS = {"(1 + x1 | g)", "(x1 || g)", "(0 + x1 | h)", "(1 + xc | h)"}
SCALES = [1.0, 1.0, 1e-6, 1e6]

PROFILE = settings(
    derandomize=True,
    database=None,
    deadline=10_000,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------- generation
def _labels(codes: np.ndarray, nlevels: int, kind: str, prefix: str, rng) -> pd.Series:
    """Level codes as an int, string or Categorical column (categories may be unused)."""
    if kind == "int":
        return pd.Series(codes.astype(np.int64) + 1)
    if kind == "str":
        return pd.Series([f"{prefix}{c}" for c in codes], dtype=object)
    cats = [f"{prefix}{c}" for c in range(nlevels + 2)]   # two never-used levels
    order = list(rng.permutation(cats))
    return pd.Series(pd.Categorical([f"{prefix}{c}" for c in codes], categories=order))


def _codes(rng, n: int, nlevels: int, alpha: float) -> np.ndarray:
    """Unbalanced level codes: Dirichlet(alpha) probabilities, so some levels may be empty."""
    p = rng.dirichlet(np.full(nlevels, alpha))
    codes = rng.choice(nlevels, size=n, p=p)
    codes[:2] = rng.permutation(nlevels)[:2]          # at least two levels are used
    return codes


@st.composite
def designs(draw):
    """A random data set, formula, weights and offset.

    Covariates with a random slope keep unit scale (see
    test_badly_scaled_slope_covariate for extreme ones), and the fixed factor ``fg``
    (a copy of ``g``) is not combined with a term grouped by ``g`` (see
    test_flat_direction_does_not_stop_the_optimiser).
    """
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(8, 60))
    alpha = draw(st.sampled_from([0.3, 1.0, 10.0]))
    ng = draw(st.integers(2, max(2, n // 3)))
    nh = draw(st.integers(2, 6))
    ns = draw(st.integers(2, 3))
    nf = draw(st.integers(2, 5))
    kinds = draw(st.tuples(*[st.sampled_from(["int", "str", "category"])] * 4))
    fixed = draw(st.lists(st.sampled_from(FIXED_TERMS), unique=True, max_size=3))
    random = draw(st.lists(st.sampled_from(RANDOM_TERMS), unique=True, min_size=1, max_size=2))
    if "fg" in fixed and any(t.endswith(("| g)", "| g/s)")) for t in random):
        fixed.remove("fg")
    intercept = draw(st.sampled_from(["", "1 + ", "1 + ", "0 + "]))
    y_scale = draw(st.sampled_from(SCALES))
    x_scale = 1.0 if SLOPE_TERMS.intersection(random) else draw(st.sampled_from(SCALES))
    constant_y = draw(st.integers(0, 9)) == 0
    sd_b = draw(st.sampled_from([0.0, 0.3, 1.0, 5.0]))
    weights_kind = draw(st.sampled_from([None, None, "column", "array"]))
    offset_kind = draw(st.sampled_from([None, None, "column", "array"]))
    n_missing = draw(st.sampled_from([0, 0, 0, 1, 3]))

    g = _codes(rng, n, ng, alpha)
    h = _codes(rng, n, nh, alpha)
    s = rng.integers(0, ns, size=n)                     # implicitly nested in g
    f = _codes(rng, n, nf, alpha)
    x1 = rng.normal(size=n) * x_scale
    xc = rng.integers(0, 4, size=n).astype(float) * x_scale
    eta = 1.0 + 0.5 * x1 / x_scale + rng.normal(size=nf)[f] + 0.2 * xc / x_scale
    eta += sd_b * (rng.normal(size=ng)[g] + rng.normal(size=nh)[h]
                   + rng.normal(size=(ng, ns))[g, s] + 0.5 * rng.normal(size=ng)[g] * x1 / x_scale)
    y = (eta + rng.normal(size=n)) * y_scale
    if constant_y:
        y = np.full(n, 3.25 * y_scale)

    data = pd.DataFrame({
        "y": y,
        "x1": x1,
        "x2": 2.0 * x1,                                                    # collinear with x1
        "xc": xc,
        "g": _labels(g, ng, kinds[0], "g", rng),
        "h": _labels(h, nh, kinds[1], "h", rng),
        "s": _labels(s, ns, kinds[2], "s", rng),
        "f": _labels(f, nf, kinds[3], "f", rng),
        "f2": pd.Series([f"z{(c * 7) % nf}" for c in f], dtype=object),   # f relabelled
        "fg": pd.Series([f"G{c}" for c in g], dtype=object),               # g as a fixed factor
        "w": np.exp(rng.uniform(-2.0, 2.0, size=n)),
        "off": rng.normal(size=n) * y_scale,
    })
    for _ in range(n_missing):
        col = str(rng.choice(["y", "x1", "g", "h", "f", "w", "off"]))
        row = int(rng.integers(0, n))
        if isinstance(data[col].dtype, pd.CategoricalDtype) or data[col].dtype == object:
            data.loc[row, col] = None
        else:
            data[col] = data[col].astype(float)
            data.loc[row, col] = np.nan

    formula = f"y ~ {intercept}{' + '.join(fixed + random)}"
    weights = {"column": "w", "array": data["w"].to_numpy().copy(), None: None}[weights_kind]
    offset = {"column": "off", "array": data["off"].to_numpy().copy(), None: None}[offset_kind]
    return dict(data=data, formula=formula, weights=weights, offset=offset)


# --------------------------------------------------------------------- checks
def _terms(fit):
    return [(r.refs, r.z, r.nlevels) for r in fit.remats]


def _dense(fit, theta):
    return dense_criterion(fit.x, fit.y, _terms(fit), np.asarray(theta, dtype=float), fit.reml,
                           fit.weights, fit.offset)


def _fit_or_error(case, reml):
    """lmer's fit of the case, or None when it raises an LmmError.

    The data frame and the weight and offset arrays must be unchanged afterwards,
    and any warning must be one of lmmfast's.
    """
    data = case["data"]
    before = data.copy(deep=True)
    arrays = {k: copy.deepcopy(case[k]) for k in ("weights", "offset")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = lmmfast.lmer(case["formula"], data, reml=reml,
                               weights=case["weights"], offset=case["offset"])
        except lmmfast.LmmError as exc:
            event(f"{type(exc).__name__}: {str(exc)[:30]}")
            if "fitted exactly by the fixed and random effects" in str(exc):
                model = lmmfast.LinearMixedModel(case["formula"], data, reml=reml,
                                                 weights=case["weights"], offset=case["offset"])
                assert not residual_identifiable(model, rtol=1e-6), f"not an exact fit: {exc}"
            fit = None
    pd.testing.assert_frame_equal(data, before)
    for k, v in arrays.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(case[k], v)
    foreign = [f"{w.category.__name__}: {w.message}" for w in caught
               if not issubclass(w.category, LmmWarning)]
    assert not foreign, f"warnings not from lmmfast: {foreign}"
    return fit


def residual_identifiable(fit, rtol=1e-8) -> bool:
    """Whether y - offset is not in the column space of [X Z].

    Otherwise X beta + Z b fits the response exactly and the criterion is unbounded
    below as sigma -> 0 (see test_saturated_design_is_rejected).
    """
    xz = np.hstack([fit.x, dense_Z(_terms(fit), fit.nobs)])
    y = fit.y - (fit.offset if fit.offset is not None else 0.0)
    coef, *_ = np.linalg.lstsq(xz, y, rcond=None)
    return np.linalg.norm(y - xz @ coef) > rtol * np.linalg.norm(y)


def reml_flat(fit) -> bool:
    """Whether some term's columns of Z lie in the column space of X.

    The REML criterion then does not depend on that term's theta (see
    test_flat_direction_does_not_stop_the_optimiser).
    """
    if not fit.reml or fit.x.shape[1] == 0:
        return False
    for r in fit.remats:
        z = dense_Z([(r.refs, r.z, r.nlevels)], fit.nobs)
        coef, *_ = np.linalg.lstsq(fit.x, z, rcond=None)
        if np.linalg.norm(z - fit.x @ coef) <= 1e-8 * np.linalg.norm(z):
            return True
    return False


def _perturbations(fit, rng):
    theta = fit.theta.to_numpy()
    lower = fit.lower_bounds
    out = [np.where(lower == 0, 1.0, 0.0)]                   # lambda = I
    for delta in (1e-4, 1e-3, 1e-2):
        step = delta * np.maximum(np.abs(theta), 1e-3) * rng.normal(size=theta.size)
        out.append(np.maximum(theta + step, lower))
    return out


def check_fit(fit, reml):
    assert fit.reml == reml
    obj = fit.objective
    assert np.isfinite(obj), f"objective {obj}"
    assert np.isfinite(fit.sigma) and fit.sigma > 0, f"sigma {fit.sigma}"
    fixef = fit.fixef.to_numpy()
    assert np.isfinite(fixef).all(), f"fixef {fixef}"
    assert fixef.shape == (fit.x.shape[1],)
    theta = fit.theta.to_numpy()
    assert np.isfinite(theta).all() and (theta >= fit.lower_bounds).all(), f"theta {theta}"
    assert np.isfinite(fit.vcov.to_numpy()).all()
    assert np.isfinite(fit.fitted).all() and np.isfinite(fit.residuals).all()
    assert all(np.isfinite(df.to_numpy()).all() for df in fit.ranef().values())
    if not residual_identifiable(fit):
        event("saturated: y - offset in span([X Z])")
        return

    dense = _dense(fit, theta)
    # The criterion is a sum of O(n) terms of order 1 (n log(2 pi sigma^2), log-determinants,
    # n), so near a zero crossing the relative error is measured against 1, not |objective|.
    scale = max(abs(dense["objective"]), 1.0)
    assert abs(obj - dense["objective"]) <= OBJECTIVE_RTOL * scale, \
        f"objective {obj!r} != dense {dense['objective']!r} at theta {theta}"
    # beta relative to its own size or its standard error, whichever is larger
    beta = dense["beta"]
    se = np.sqrt(np.diag(dense["vcov_beta"]))
    bscale = np.maximum(np.abs(beta), se)
    assert (np.abs(fixef - beta) <= BETA_RTOL * bscale).all(), \
        f"fixef {fixef} != dense beta {beta} (se {se})"
    assert abs(fit.sigma - dense["sigma"]) <= BETA_RTOL * dense["sigma"], \
        f"sigma {fit.sigma} != dense {dense['sigma']}"
    vcov = fit.vcov.to_numpy()
    assert (np.abs(vcov - dense["vcov_beta"]) <= BETA_RTOL * np.outer(se, se)).all(), \
        f"vcov {vcov} != dense {dense['vcov_beta']}"

    if min(r.nlevels for r in fit.remats) < 2:
        event("a grouping factor with one level")   # test_grouping_factor_with_one_level
        return
    if reml_flat(fit):
        event("REML criterion flat in a theta")
        return
    rng = np.random.default_rng(12345)
    for i, trial in enumerate(_perturbations(fit, rng)):
        other = _dense(fit, trial)["objective"]
        assert other >= obj - OPTIMUM_RTOL * max(abs(obj), 1.0), \
            f"criterion {other!r} at theta {trial} beats the optimum {obj!r} at {theta}"
        if i:   # near the optimum, criterion() is the dense criterion
            assert abs(fit.criterion(trial) - other) <= OBJECTIVE_RTOL * max(abs(other), 1.0), \
                f"criterion({trial}) = {fit.criterion(trial)!r} != dense {other!r}"
    assert fit.objective == obj and (fit.theta.to_numpy() == theta).all(), \
        "criterion() changed the fitted results"


@PROFILE
@given(designs())
def test_random_designs_reml_and_ml(case):
    for reml in (True, False):
        fit = _fit_or_error(case, reml)
        if fit is not None:
            check_fit(fit, reml)


# ------------------------------------------------------- regression examples
def _fit_quietly(formula, data, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = lmmfast.lmer(formula, data, **kw)
    return fit, [w for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("factor", [
    0.01, 10.0, 1e-6, 1e4, 1e6,
])
def test_badly_scaled_slope_covariate(sleepstudy, factor, reml):
    """Days in other units: the optimum moves by 2 log(factor) (REML) or not at all (ML)."""
    formula = "Reaction ~ Days + (Days | Subject)"
    ref = lmmfast.lmer(formula, sleepstudy, reml=reml).objective
    expected = ref + (2.0 * np.log(factor) if reml else 0.0)
    scaled = sleepstudy.assign(Days=sleepstudy["Days"] * factor)
    fit, convergence_warnings = _fit_quietly(formula, scaled, reml=reml)
    if not convergence_warnings:
        assert fit.objective <= expected + 1e-8 * abs(expected), \
            f"objective {fit.objective!r} at theta {fit.theta.to_numpy()}, optimum {expected!r}"


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_exact_fit_by_random_effects_is_rejected(reml):
    """y constant within the groups of g: X beta + Z b fits it exactly."""
    data = pd.DataFrame({"y": [1.0, 1, 1, 2, 2, 2, 4, 4, 4, 3, 3, 3],
                         "g": list("aaabbbcccddd")})
    before = data.copy(deep=True)
    try:
        with pytest.raises(lmmfast.LmmError, match="residual variance is estimated as zero: "
                                                  "the response 'y' is fitted exactly"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LmmWarning)
                lmmfast.lmer("y ~ 1 + (1 | g)", data, reml=reml)
    finally:
        pd.testing.assert_frame_equal(data, before)


# rank([X Z]) = n = 8: y - X beta lies in the span of Z, so the criterion decreases
# without bound as lambda grows along suitable directions.
SATURATED = pd.DataFrame({
    "y": [0.03885797174285677, 3.1416090362146734, 1.0727225839947505, 1.6495260639057614,
          -1.2347264157826574, 2.117389685092315, 2.2469494477704997, 2.1533271241530993],
    "x": [-1.1129663117554869, 1.8972998282179803, 1.1423870570037729, 0.5537510631022174,
          -0.30695761381680603, 1.5937537308847487, 0.9314951234762364, 1.283088602380094],
    "f": ["f0", "f2", "f0", "f2", "f1", "f0", "f2", "f3"],
    "h": [2, 1, 1, 1, 1, 1, 1, 1],
    "g": [2, 2, 1, 1, 1, 2, 2, 2],
})


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_saturated_design_is_rejected(reml):
    formula = "y ~ f + (1 | h) + (1 + x | g)"
    ml = lmmfast.LinearMixedModel(formula, SATURATED, reml=False)
    ray = [ml.criterion(np.array([1.0, 1.0, 0.0, 1.0]) * t) for t in (1e2, 1e3, 1e4)]
    assert ray[0] - 10 > ray[1] > ray[2] + 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        with pytest.raises(lmmfast.LmmError, match="residual variance is estimated as zero"):
            lmmfast.lmer(formula, SATURATED, reml=reml)


def _group_confounded_case(seed):
    rng = np.random.default_rng(seed)
    n, ng = int(rng.integers(9, 31)), int(rng.integers(2, 5))
    codes = np.r_[np.arange(ng), rng.integers(0, ng, n - ng)]
    x = rng.normal(size=n)
    y = rng.normal(size=ng)[codes] + rng.normal(size=ng)[codes] * x + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{c}" for c in codes]})


def test_flat_direction_does_not_stop_the_optimiser():
    """A fixed factor equal to the grouping factor makes the REML criterion flat in the
    random intercept's theta; the slope's optimum is that of the model without it."""
    bad = []
    for seed in range(200):
        data = _group_confounded_case(seed)
        full, warned = _fit_quietly("y ~ g + (x || g)", data)
        slope_only, warned_too = _fit_quietly("y ~ g + (0 + x | g)", data)
        flat = full.criterion(np.array([0.5, full.theta.iloc[1]]))
        assert abs(flat - full.objective) <= 1e-9 * abs(full.objective)
        if warned or warned_too:
            continue
        if abs(full.objective - slope_only.objective) > 1e-8 * abs(slope_only.objective):
            bad.append((seed, full.objective - slope_only.objective, full.n_evals))
    assert not bad, f"(seed, excess, evaluations): {bad}"
