"""glmer's simulate() and parametric bootstrap against the model's implied moments.

simulate (lme4's ``simulate.merMod``): new random effects b* ~ N(0, Lambda
Lambda^T), then the response from the family.  Its marginal moments are
known: for a scalar random intercept with sd theta, E[y_i] and Var(y_i) are
one-dimensional integrals over b ~ N(0, theta^2), computed here by
Gauss-Hermite quadrature (closed forms for poisson with the log link); the
Monte Carlo means of many fixed-seed simulations must lie within a few
standard errors of them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_glmer import dataset, fit

from lmmfast.errors import DataError, FitError, LmmError
import lmmfast
from lmmfast.glmm import GeneralizedLinearMixedModel, glmer

NSIM = 2000
Z_MAX = 5.0   # Monte Carlo tolerance in standard errors (fixed seeds: deterministic)


def _gh_moments(f, link_inv, trials):
    """E[K_i] and Var(K_i) of a binomial count K_i (trials m_i) under b ~ N(0, theta^2)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    fixed = f.design.offset + f.design.x @ f.beta
    mu = link_inv(fixed[:, None] + f.theta[0] * nodes[None, :])
    e_mu = mu @ weights
    e_mu2 = (mu * mu) @ weights
    mean = trials * e_mu
    var = trials * (e_mu - e_mu2) + trials ** 2 * (e_mu2 - e_mu ** 2)
    return mean, var


def test_simulate_cbind_shape_type_and_names():
    f = fit("cbpp_laplace")
    s = f.simulate(3, seed=1)
    assert isinstance(s, pd.DataFrame) and s.shape == (56, 6)
    assert list(s.columns) == [(f"sim_{j}", c) for j in (1, 2, 3)
                               for c in ("incidence", "size - incidence")]
    assert all(dt == np.int64 for dt in s.dtypes)
    size = dataset("cbpp")["size"].to_numpy()
    for j in (1, 2, 3):
        both = s[f"sim_{j}"].to_numpy()
        assert (both >= 0).all() and np.array_equal(both.sum(axis=1), size)


def test_simulate_proportion_poisson_and_bernoulli_shapes():
    p = fit("cbpp_prop_weights").simulate(2, seed=3)
    assert list(p.columns) == ["sim_1", "sim_2"] and p.dtypes.iloc[0] == np.float64
    size = dataset("cbpp")["size"].to_numpy()
    assert np.allclose(p.to_numpy() * size[:, None], np.round(p.to_numpy() * size[:, None]))
    assert ((p >= 0) & (p <= 1)).all().all()
    e = fit("epil_int").simulate(4, seed=3)
    assert e.shape == (236, 4) and all(dt == np.int64 for dt in e.dtypes)
    v = fit("verbagg_main").simulate(2, seed=3)
    assert v.shape == (7584, 2)


def test_simulate_factor_response_gives_its_levels_as_r():
    """R's binomial()$simulate: factor(1 + y*, labels = levels(y)) for a factor
    response; a logical response gives 0/1 numbers."""
    f = fit("verbagg_main")           # r2: a factor with levels N, Y
    v = f.simulate(3, seed=3)
    for col in v.columns:
        assert isinstance(v[col].dtype, pd.CategoricalDtype)
        assert list(v[col].cat.categories) == ["N", "Y"]
    draws = f.simulate(3, seed=3, re_form=None)
    assert set(draws["sim_1"].unique()) == {"N", "Y"}
    # the same draws as the 0/1 coding of the same response
    data = dataset("VerbAgg").assign(r01=lambda d: (d["r2"] == "Y").astype(float),
                                      rbool=lambda d: d["r2"] == "Y")
    formula = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
    f01 = lmmfast.glmer(formula.replace("r2", "r01"), data, family="binomial")
    as01 = f01.simulate(3, seed=3)
    np.testing.assert_array_equal((v == "Y").to_numpy(), as01.to_numpy() == 1.0)
    fbool = lmmfast.glmer(formula.replace("r2", "rbool"), data, family="binomial")
    b = fbool.simulate(1, seed=3)
    assert b.dtypes.iloc[0] == np.float64 and set(np.unique(b.to_numpy())) <= {0.0, 1.0}


def test_simulate_reproducible_with_seed():
    f = fit("epil_int")
    a, b = f.simulate(5, seed=42), f.simulate(5, seed=42)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(f.simulate(5, seed=43))
    # column j depends only on the j-th child seed
    pd.testing.assert_frame_equal(f.simulate(2, seed=42), a[["sim_1", "sim_2"]])
    ss = np.random.SeedSequence(42)
    pd.testing.assert_frame_equal(f.simulate(5, seed=ss), a)
    assert f.simulate(0, seed=1).shape == (236, 0)


def test_poisson_marginal_moments():
    """log link, random intercept: E y = exp(f + theta^2/2) = m,
    Var y = m + m^2 (exp(theta^2) - 1)."""
    f = fit("epil_int")
    y = f.simulate(NSIM, seed=2024).to_numpy().astype(float)
    fixed = f.design.x @ f.beta
    t2 = f.theta[0] ** 2
    m = np.exp(fixed + t2 / 2)
    var = m + m * m * np.expm1(t2)
    z = (y.mean(axis=1) - m) / np.sqrt(var / NSIM)
    assert np.max(np.abs(z)) < Z_MAX
    assert abs(z.mean()) * np.sqrt(len(z)) < 3 * Z_MAX   # (rows of a subject are correlated)
    # sample variances: relative error of a variance ~ sqrt((kurtosis - 1) / n)
    assert np.median(np.abs(y.var(axis=1, ddof=1) / var - 1)) < 0.1


@pytest.mark.parametrize("name", ["cbpp_laplace", "cbpp_probit"])
def test_binomial_marginal_moments(name):
    f = fit(name)
    s = f.simulate(NSIM, seed=7)
    succ = np.stack([s[f"sim_{j + 1}"]["incidence"].to_numpy() for j in range(NSIM)], axis=1)
    size = dataset("cbpp")["size"].to_numpy().astype(float)
    mean, var = _gh_moments(f, f.family.linkinv, size)
    z = (succ.mean(axis=1) - mean) / np.sqrt(var / NSIM)
    assert np.max(np.abs(z)) < Z_MAX
    assert np.median(np.abs(succ.var(axis=1, ddof=1) / var - 1)) < 0.1


def test_re_form_none_conditions_on_the_modes():
    """re_form=None (lme4's re.form = NULL): E y* = fitted, Var = m mu (1 - mu)."""
    f = fit("cbpp_laplace")
    s = f.simulate(NSIM, seed=11, re_form=None)
    succ = np.stack([s[f"sim_{j + 1}"]["incidence"].to_numpy() for j in range(NSIM)], axis=1)
    size = dataset("cbpp")["size"].to_numpy().astype(float)
    mu = f.fitted
    z = (succ.mean(axis=1) - size * mu) / np.sqrt(size * mu * (1 - mu) / NSIM)
    assert np.max(np.abs(z)) < Z_MAX
    # the default draws new random effects: a larger spread than the conditional one
    s0 = f.simulate(NSIM, seed=11)
    succ0 = np.stack([s0[f"sim_{j + 1}"]["incidence"].to_numpy() for j in range(NSIM)], axis=1)
    assert succ0.var(axis=1).sum() > 1.5 * succ.var(axis=1).sum()
    pd.testing.assert_frame_equal(f.simulate(2, seed=1, re_form="~0"), f.simulate(2, seed=1))
    pd.testing.assert_frame_equal(f.simulate(2, seed=1, re_form=np.nan), f.simulate(2, seed=1))


def test_simulate_bad_input():
    f = fit("epil_int")
    with pytest.raises(LmmError, match="nsim"):
        f.simulate(-1)
    with pytest.raises(LmmError, match="seed"):
        f.simulate(1, seed="abc")
    with pytest.raises(DataError, match="re_form"):
        f.simulate(1, re_form="~ (1 | subject)")
    m = GeneralizedLinearMixedModel("y ~ lbase + (1 | subject)", dataset("epil"), "poisson")
    with pytest.raises(FitError, match="not fitted"):
        m.simulate(1)
    df = dataset("cbpp").assign(p=lambda d: d.incidence / d["size"],
                                w=lambda d: d["size"] + 0.5)
    with pytest.warns(UserWarning):
        g = glmer("p ~ period + (1 | herd)", df, "binomial", weights="w")
    with pytest.raises(DataError, match="non-integer prior weights"):
        g.simulate(1)


# ------------------------------------------------------------------ refit and bootstrap
def test_refit_to_own_response_reproduces_the_fit():
    f = fit("cbpp_laplace")
    g = f.copy().refit(f.design.y.copy())
    assert g.objective == pytest.approx(f.objective, rel=1e-10)
    assert np.allclose(g.beta, f.beta, rtol=1e-5) and np.allclose(g.theta, f.theta, rtol=1e-5)
    with pytest.raises(DataError, match="56"):
        f.copy().refit(np.zeros(3))
    with pytest.raises(DataError, match="range"):
        f.copy().refit(np.full(56, 1.5))


def test_bootstrap_refits_the_simulated_columns():
    f = fit("cbpp_laplace")
    objective = f.objective
    b = f.bootstrap(3, seed=9, n_jobs=1, progress=False)
    s = f.simulate(3, seed=9)
    for j in range(3):
        both = s[f"sim_{j + 1}"].to_numpy()
        g = f.copy().refit(both[:, 0] / both.sum(axis=1))
        assert b.iloc[j]["objective"] == pytest.approx(g.objective, rel=1e-12)
        assert np.allclose(b.iloc[j][list(f.fixef_names)], g.beta, rtol=1e-10)
    assert f.objective == objective   # the fit itself is not changed
    assert list(b.columns) == ["objective", "(Intercept)", "period2", "period3", "period4",
                               "herd.(Intercept)", "sd_(Intercept)|herd"]
    assert b.attrs["estimates"]["(Intercept)"] == pytest.approx(f.beta[0])
    assert b.attrs["estimates"]["sd_(Intercept)|herd"] == pytest.approx(f.theta[0])


def test_bootstrap_reproducible_across_n_jobs_and_backends():
    f = fit("epil_int")
    a = f.bootstrap(8, seed=123, n_jobs=1, progress=False)
    b = f.bootstrap(8, seed=123, n_jobs=2, progress=False)
    c = f.bootstrap(8, seed=123, n_jobs=2, progress=False, backend="thread")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    pd.testing.assert_frame_equal(a, c, check_exact=True)
    assert b.attrs["n_jobs"] == 2 and a.attrs["backend"] == "serial"
    assert not a.equals(f.bootstrap(8, seed=124, n_jobs=1, progress=False))


def test_bootstrap_mean_near_estimate_cbpp():
    """The bootstrap distribution of beta-hat centres on the estimate: its mean
    within 4 Monte Carlo standard errors (the fixed effects' small-sample
    bias is far below that), and its sd near the Wald standard errors."""
    f = fit("cbpp_laplace")
    n = 100
    b = f.bootstrap(n, seed=2026, n_jobs=2, progress=False)
    assert b.attrs["n_failed"] == 0 and np.isfinite(b.to_numpy()).all()
    beta = b[list(f.fixef_names)]
    z = (beta.mean() - f.fixef) / (beta.std() / np.sqrt(n))
    assert np.max(np.abs(z)) < 4
    ratio = beta.std() / f.stderr
    assert ((ratio > 0.7) & (ratio < 1.4)).all()
    sd = b["sd_(Intercept)|herd"]
    assert (sd >= 0).all() and abs(sd.median() - f.theta[0]) < 0.3


def test_bootstrap_progress_bar_and_bad_n(capsys):
    f = fit("cbpp_laplace")
    f.bootstrap(2, seed=1, n_jobs=1, progress=True)
    assert "2/2" in capsys.readouterr().err   # tqdm or the plain bar
    f.bootstrap(2, seed=1, n_jobs=1, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(LmmError, match="n"):
        f.bootstrap(-1)
    with pytest.raises(LmmError, match="backend"):
        f.bootstrap(1, backend="mpi")
