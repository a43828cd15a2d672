"""Property tests: lmmfast on small random designs against the dense reference.

Each example is a small data set (8 to 60 rows) with a random model: unbalanced
or empty grouping levels, crossed (g, h), nested (g/s) and interaction (g:h)
grouping factors, random slopes, uncorrelated terms, categorical fixed effects
with unused or singleton levels, collinear or confounded columns, a constant
response, extreme scales, prior weights, offsets and missing values.  Fitting it
by REML and by ML must either raise an ``lmmfast.LmmError`` or give a fit whose
criterion, fixed effects and optimum agree with ``dense_criterion``; the input
is never modified.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import lmmfast
from lmmfast.errors import LmmWarning

from dense_reference import dense_criterion, dense_Z

OBJECTIVE_RTOL = 1e-8
BETA_RTOL = 1e-6
OPTIMUM_RTOL = 1e-7     # a perturbed theta may not beat the optimum by more than this

FIXED_TERMS = ["x1", "f", "x2", "f2", "fg", "xc"]
RANDOM_TERMS = ["(1 | g)", "(1 | h)", "(1 | g/s)", "(1 + x1 | g)", "(x1 || g)",
                "(1 | g:h)", "(0 + x1 | h)", "(1 + xc | h)"]
SCALES = [1.0, 1.0, 1e-6, 1e6]

PROFILE = settings(
    derandomize=True,
    database=None,
    deadline=10_000,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


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
    return rng.choice(nlevels, size=n, p=p)


@st.composite
def designs(draw, slope_scales=(1.0,)):
    """A random case; covariates with a random slope are scaled by one of ``slope_scales``."""
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
    intercept = draw(st.sampled_from(["", "1 + ", "1 + ", "0 + "]))
    y_scale = draw(st.sampled_from(SCALES))
    slopes = any(t in ("(1 + x1 | g)", "(x1 || g)", "(0 + x1 | h)", "(1 + xc | h)") for t in random)
    x_scale = draw(st.sampled_from(slope_scales if slopes else SCALES))
    constant_y = draw(st.booleans().map(lambda b: b and rng.random() < 0.3))
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
        "x2": 2.0 * x1,
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
        col = rng.choice(["y", "x1", "g", "h", "f", "w", "off"])
        row = int(rng.integers(0, n))
        if isinstance(data[col].dtype, pd.CategoricalDtype) or data[col].dtype == object:
            data.loc[row, col] = None
        else:
            data[col] = data[col].astype(float)
            data.loc[row, col] = np.nan

    rhs = " + ".join(fixed + random)
    formula = f"y ~ {intercept}{rhs}"
    weights = {"column": "w", "array": data["w"].to_numpy().copy(), None: None}[weights_kind]
    offset = {"column": "off", "array": data["off"].to_numpy().copy(), None: None}[offset_kind]
    return dict(data=data, formula=formula, weights=weights, offset=offset, seed=seed)


def _dense(fit, theta):
    terms = [(r.refs, r.z, r.nlevels) for r in fit.remats]
    return dense_criterion(fit.x, fit.y, terms, np.asarray(theta, dtype=float), fit.reml,
                           fit.weights, fit.offset)


def _fit_or_error(case, reml):
    """lmer's fit of the case, or None when it raises an LmmError; checks the input is untouched."""
    data = case["data"]
    before = data.copy(deep=True)
    arrays = {k: copy.deepcopy(case[k]) for k in ("weights", "offset")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LmmWarning)
            fit = lmmfast.lmer(case["formula"], data, reml=reml,
                               weights=case["weights"], offset=case["offset"])
    except lmmfast.LmmError as exc:
        event(f"{type(exc).__name__}: {str(exc)[:40]}")
        fit = None
    pd.testing.assert_frame_equal(data, before)
    for k, v in arrays.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(case[k], v)
    return fit


def _perturbations(fit, rng):
    theta = fit.theta.to_numpy()
    lower = fit.lower_bounds
    out = [np.where(lower == 0, 1.0, 0.0)]                   # lambda = I
    for delta in (1e-4, 1e-3, 1e-2):
        for _ in range(2):
            step = delta * np.maximum(np.abs(theta), 1e-3) * rng.normal(size=theta.size)
            out.append(np.maximum(theta + step, lower))
    return out


def residual_identifiable(fit) -> bool:
    """Whether y - offset is not in the column space of [X Z].

    Otherwise X beta + Z b fits the response exactly and the criterion is unbounded
    below as sigma -> 0 (see test_saturated_model_is_rejected).
    """
    z = dense_Z([(r.refs, r.z, r.nlevels) for r in fit.remats], fit.nobs)
    xz = np.hstack([fit.x, z])
    y = fit.y - (fit.offset if fit.offset is not None else 0.0)
    coef, *_ = np.linalg.lstsq(xz, y, rcond=None)
    return np.linalg.norm(y - xz @ coef) > 1e-8 * np.linalg.norm(y)


def check_fit(fit, reml):
    assert fit.reml == reml
    obj = fit.objective
    assert np.isfinite(obj), f"objective {obj}"
    assert np.isfinite(fit.sigma) and fit.sigma > 0, f"sigma {fit.sigma}"
    fixef = fit.fixef.to_numpy()
    assert np.isfinite(fixef).all(), f"fixef {fixef}"
    theta = fit.theta.to_numpy()
    assert np.isfinite(theta).all() and (theta >= fit.lower_bounds).all(), f"theta {theta}"
    assert fixef.shape == (fit.x.shape[1],)
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
    assert np.isclose(fit.sigma, dense["sigma"], rtol=BETA_RTOL, atol=0), \
        f"sigma {fit.sigma} != dense {dense['sigma']}"

    rng = np.random.default_rng(12345)
    for i, trial in enumerate(_perturbations(fit, rng)):
        other = _dense(fit, trial)["objective"]
        assert other >= obj - OPTIMUM_RTOL * max(abs(obj), 1.0), \
            f"criterion {other!r} at theta {trial} beats the optimum {obj!r} at {theta}"
        if i:   # near the optimum, criterion() is the dense criterion
            assert abs(fit.criterion(trial) - other) <= OBJECTIVE_RTOL * max(abs(other), 1.0), \
                f"criterion({trial}) = {fit.criterion(trial)!r} != dense {other!r}"


@PROFILE
@given(designs())
def test_random_designs_reml_and_ml(case):
    import os, pickle
    if os.environ.get("DUMP"):
        pickle.dump(case, open(os.environ["DUMP"], "wb"))
    for reml in (True, False):
        fit = _fit_or_error(case, reml)
        if fit is not None:
            check_fit(fit, reml)
