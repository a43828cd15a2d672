"""The compiled parts of glmer's PIRLS against their numpy definitions.

``src/_pirls.pyx`` (eta, mu, unit deviances, working weights and response,
docs/theory.md eqs. 92-93) must give ``lmmfast.family``'s numbers (R's
families, checked against R there) to rounding; the cross-product kernels'
plain-double accumulation must give the double-double one's A to rounding;
and summing the iterations before the mode in plain double must leave the
Laplace deviance the optimiser sees unchanged to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_glmer import dataset, fit, spec

import lmmfast
from lmmfast import _crossprod, _pirls
from lmmfast.design.layout import BLOCK_DENSE, BLOCK_SPARSE
from lmmfast.family import FAMILIES, family
from lmmfast.glmm import glmer

PAIRS = [(f, link) for f, links in FAMILIES.items() for link in links]


def _eta(link: str, rng) -> np.ndarray:
    """Linear predictors over the link's range, with the clamps' ends for the
    binomial links (|eta| > 30, beyond -qnorm(eps))."""
    if link == "sqrt":
        return rng.uniform(0.05, 6.0, 500)
    if link == "identity":
        return rng.uniform(0.05, 20.0, 500)
    if link == "log":
        return np.concatenate([rng.normal(0, 3, 497), [-40.0, 0.0, 5.0]])
    return np.concatenate([rng.normal(0, 4, 494), [-40.0, -31.0, -9.0, 9.0, 31.0, 40.0]])


@pytest.mark.parametrize("fam,link", PAIRS)
def test_compiled_means_and_working_equal_numpy(fam, link):
    rng = np.random.default_rng(7)
    f = family(fam, link)
    eta = _eta(link, rng)
    n = len(eta)
    wt = rng.integers(1, 6, n).astype(float)
    y = rng.integers(0, 2, n).astype(float) if fam == "binomial" else \
        rng.poisson(3.0, n).astype(float)
    code, fcode = _pirls.LINK_CODES[link], _pirls.FAMILY_CODES[fam]
    # eta = o + X beta: X's two columns and the offset make up the test's eta
    x = np.column_stack([np.ones(n), rng.normal(0, 1, n)])
    beta = np.array([0.25, -0.5])
    offset = eta - x @ beta
    eta_c, mu, dev, sw, zw, fixed_c, mu_eta_c = views = tuple(np.empty((7, n)))
    rows = _pirls.RowPass(code, fcode, x, y, wt, offset, [], [], [], views, np.empty((n, 1)),
                          np.empty((n, 3)), [])
    total, valid = rows.evaluate(beta, [])
    np.testing.assert_allclose(eta_c, eta, rtol=1e-13, atol=1e-13)
    assert np.array_equal(eta_c, fixed_c)
    mu_np = f.linkinv(eta_c)
    np.testing.assert_allclose(mu, mu_np, rtol=1e-13, atol=0)
    assert valid == f.valid_mu(mu_np)
    dev_np = f.dev_resids(y, mu_np, wt)
    np.testing.assert_allclose(dev, dev_np, rtol=1e-12, atol=1e-300)
    assert total == pytest.approx(dev_np.sum(), rel=1e-13)
    assert total == float(np.sum(dev.astype(np.longdouble)))   # compensated
    mu_eta = f.mu_eta(eta_c)
    np.testing.assert_allclose(mu_eta_c, mu_eta, rtol=1e-13, atol=0)
    assert rows.working(False, False) == (False, True)   # (Fisher's weights, all finite)
    np.testing.assert_allclose(sw, np.sqrt(wt * mu_eta ** 2 / f.variance(mu_np)),
                               rtol=1e-13)
    # the working response net of o + X beta (u alone, eq. 94) or of the offset (eq. 95)
    np.testing.assert_allclose(zw, eta_c - fixed_c + (y - mu_np) / mu_eta, rtol=1e-12,
                               atol=1e-12)
    assert rows.working(True, False) == (False, True)
    np.testing.assert_allclose(zw, eta_c - offset + (y - mu_np) / mu_eta, rtol=1e-12,
                               atol=1e-11)


@pytest.mark.parametrize("formula", [
    "y ~ lbase * trt + (1 + V4 + lage | subject) + (1 | period)",
    "y ~ lbase + (1 + V4 | subject) + (0 + lage | subject)",
    "y ~ lbase + (1 | subject)"])
def test_compiled_lambdas_are_the_terms_lambdas(formula):
    """The compiled loop's lambda from theta (eq. 7) is each term's ``lambda_``."""
    from lmmfast.glmm.model import GeneralizedLinearMixedModel
    f = GeneralizedLinearMixedModel(formula, dataset("epil"), family="poisson")
    p = f.pirls
    theta = np.random.default_rng(5).uniform(-2, 2, f.n_theta)
    split = np.split(theta, np.cumsum([r.n_theta for r in f.design.remats])[:-1])
    want = [f.design.remats[i].lambda_(split[i]) for i in f.design.internal]
    for got, lam in zip(p.lambdas(theta), want):
        np.testing.assert_array_equal(got, lam)


def test_linear_predictor_equals_dense_z_lambda_u():
    f = fit("verbagg_slope")
    p = f.pirls
    rng = np.random.default_rng(3)
    u = rng.normal(size=len(p.last_u))
    fixed = rng.normal(size=f.nobs)
    dense = fixed.copy()
    for r, b in zip(f.design.inner, p.b(u, f.theta)):
        dense += np.einsum("nk,nk->n", r.z, b[r.refs])
    np.testing.assert_allclose(fixed + p.z_lambda_u(u, f.theta), dense, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["verbagg_slope", "epil_slope"])
def test_plain_accumulation_equals_double_double(name):
    """The one template of the cross-product kernels: a one-column accumulator
    sums in plain double, a two-column one in double-double."""
    f = fit(name)
    fac = f.pirls.factor(True)
    mode = f.pirls.mode(f.theta, f.beta)
    eta, mu = (f.pirls.row_values(mode, what) for what in ("eta", "mu"))
    fam, d = f.family, f.design
    mu_eta = fam.mu_eta(eta)
    sw = np.sqrt(d.prior_weights * mu_eta ** 2 / fam.variance(mu))
    from lmmfast.design.crossprod import add_rows
    dd = np.zeros((len(fac.a), 2))
    plain = np.zeros((len(fac.a), 1))
    refs, z = [r.refs for r in d.inner], [np.ascontiguousarray(r.z) for r in d.inner]
    for acc in (dd, plain):
        add_rows(fac.layout, acc, refs, z, d.x, eta + (d.y - mu) / mu_eta, sw)
    a_dd = _crossprod.dd_round(dd)
    np.testing.assert_allclose(plain[:, 0], a_dd, rtol=1e-11, atol=1e-9 * np.abs(a_dd).max())
    with pytest.raises(ValueError, match="1 \\(plain\\) or 2"):
        _crossprod.add_diag_dd(refs[0], z[0], np.zeros((len(fac.a), 3)))


@pytest.mark.parametrize("name", ["cbpp_laplace", "verbagg_main", "epil_slope", "cbpp_nagq0"])
def test_plain_iterations_leave_the_deviance_unchanged(name):
    """Iterations summed in plain double, the factor at the mode in double-double:
    the same deviance as double-double throughout, at the optimum and off it."""
    f = fit(name).copy()
    points = [(f.theta, f.beta), (f.theta * 1.3 + 0.05, f.beta * 0.9)]
    got = [f.deviance_at(t, b) if f.n_agq else f.deviance_theta(t) for t, b in points]
    _double_double_throughout(f)
    for (t, b), g in zip(points, got):
        f.pirls.last_u = np.zeros_like(f.pirls.last_u)
        ref = f.deviance_at(t, b) if f.n_agq else f.deviance_theta(t)
        assert g == pytest.approx(ref, rel=1e-12)


def _double_double_throughout(f):
    """Every PIRLS iteration of ``f``'s factors summed in double-double."""
    for key in (True, False):
        loop = f.pirls.factor(key).loop
        assert loop.plain_iterations
        loop.plain_iterations = False


def test_fit_unchanged_by_plain_iterations():
    from lmmfast.glmm.model import GeneralizedLinearMixedModel
    m = spec("epil_int")
    fast = fit("epil_int")
    ref = GeneralizedLinearMixedModel(m["formula"], dataset(m["dataset"]),
                                      family=(m["family"], m["link"]))
    _double_double_throughout(ref)
    ref.fit()
    assert fast.objective == pytest.approx(ref.objective, rel=1e-12)
    np.testing.assert_allclose(fast.beta, ref.beta, rtol=1e-7)


def _assert_gradient_is_differences(f):
    """laplace.laplace_gradient against central differences of the deviance, at
    the optimum and off it."""
    from lmmfast.glmm.laplace import laplace_gradient
    x_hat = np.concatenate([f.theta, f.beta])
    nt = f.n_theta
    for x in (x_hat, x_hat * 1.05 + 0.01):
        g = laplace_gradient(f.pirls, f.pirls.mode(x[:nt], x[nt:]))
        h = 1e-5
        fd = np.array([(f._deviance_x(x + h * e) - f._deviance_x(x - h * e)) / (2 * h)
                       for e in np.eye(len(x))])
        scale = max(1.0, float(np.abs(fd).max()))
        assert np.max(np.abs(g - fd)) < 1e-6 * scale


@pytest.mark.parametrize("name", ["cbpp_laplace", "cbpp_prop_weights", "epil_int",
                                  "epil_slope", "epil_offset", "verbagg_main",
                                  "verbagg_slope"])
def test_analytic_gradient_equals_central_differences(name):
    """The Laplace deviance's gradient in (theta, beta) (laplace.laplace_gradient)
    against central differences of the deviance, at the optimum and off it."""
    _assert_gradient_is_differences(fit(name))


@pytest.mark.parametrize("formula,kinds", [
    ("y ~ x + (1 | a) + (1 | b)", {BLOCK_SPARSE}),
    ("y ~ x + (1 + x | a) + (1 | b)", {BLOCK_SPARSE}),
    ("y ~ x + (1 | a) + (1 + x | b) + (1 | c)", {BLOCK_SPARSE, BLOCK_DENSE}),
])
def test_analytic_gradient_on_every_block_kind(formula, kinds):
    """The gradient reads M = Lambda^T A_Z Lambda + I off the factor's A: a sparse
    (s, 0) block, dense blocks between later terms, vector-valued terms; against
    central differences of the deviance."""
    from lmmfast.design.layout import block_index
    from lmmfast.glmm.laplace import laplace_gradient
    rng = np.random.default_rng(3)
    n = 3000
    a, b, c = rng.integers(0, 600, n), rng.integers(0, 40, n), rng.integers(0, 5, n)
    x = rng.normal(size=n)
    eta = 0.3 * x + 0.5 * rng.normal(size=600)[a] + 0.4 * rng.normal(size=40)[b] \
        + 0.2 * rng.normal(size=5)[c]
    df = pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "a": pd.Categorical(a),
                       "b": pd.Categorical(b), "c": pd.Categorical(c)})
    f = glmer(formula, df, family="poisson")
    lay = f.pirls.factor(False).layout
    off_diagonal = {int(lay.kind_a[block_index(s, t)]) for s in range(lay.n_terms)
                    for t in range(s)}
    assert kinds <= off_diagonal
    nt = f.n_theta
    xh = np.concatenate([f.theta * 1.1 + 0.05, f.beta])
    g = laplace_gradient(f.pirls, f.pirls.mode(xh[:nt], xh[nt:]))
    h = 1e-5
    fd = np.array([(f._deviance_x(xh + h * e) - f._deviance_x(xh - h * e)) / (2 * h)
                   for e in np.eye(len(xh))])
    assert np.max(np.abs(g - fd)) < 1e-6 * max(1.0, float(np.abs(fd).max()))


NON_CANONICAL = [
    ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", ("binomial", "probit")),
    ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", ("binomial", "cloglog")),
    ("VerbAgg", "r2 ~ Anger + btype + (1 | id) + (1 + Gender | item)", ("binomial", "probit")),
    ("epil", "y ~ lbase * trt + lage + V4 + (1 + V4 | subject)", ("poisson", "sqrt")),
]


@pytest.mark.parametrize("data,formula,fam", NON_CANONICAL,
                         ids=[f"{d}-{f[1]}" for d, _, f in NON_CANONICAL])
def test_non_canonical_gradient_equals_central_differences(data, formula, fam):
    """For a non-canonical link the mode's sensitivity takes the observed
    information (eq. 98a, ``Pirls.observed_factor``): the gradient against
    central differences of the deviance, at the optimum and off it; the fit
    takes it (no central-difference gradients)."""
    f = glmer(formula, lmmfast.datasets.load(data), family=fam)
    assert f._has_gradient() and f.fd_gradient_evals == 0
    _assert_gradient_is_differences(f)


def test_no_analytic_gradient_where_it_does_not_apply():
    """The cauchit link (not log-concave) and a non-canonical link with quadrature
    keep central differences."""
    from lmmfast.glmm.laplace import laplace_gradient
    m = spec("cbpp_probit")
    data = dataset(m["dataset"])
    c = glmer(m["formula"], data, family=("binomial", "cauchit"))
    assert not c._has_gradient()
    assert laplace_gradient(c.pirls, c.pirls.mode(c.theta, c.beta)) is None
    q = glmer(m["formula"], data, family=(m["family"], m["link"]), nAGQ=5)
    assert not q._has_gradient()


def test_gradient_falls_back_where_observed_weights_vanish():
    """A Poisson identity link's observed information is 0 at y = 0: there the
    gradient is central differences of the deviance, counted in ``n_evals``,
    and the covariance comes from the deviance's stencil (eq. 104): the same
    fit as with the analytic gradient switched off."""
    from lmmfast.glmm.laplace import laplace_gradient
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(30), 8)
    x = rng.uniform(0, 1, len(g))
    mu = 2.0 + 3.0 * x + rng.gamma(4.0, 0.25, 30)[g]
    df = pd.DataFrame({"y": rng.poisson(mu), "x": x, "g": pd.Categorical(g)})
    assert (df["y"] == 0).any()
    f = glmer("y ~ x + (1 | g)", df, family=("poisson", "identity"))
    assert f._has_gradient() and f.fd_gradient_evals > 0
    assert laplace_gradient(f.pirls, f.pirls.mode(f.theta, f.beta)) is None
    ref = glmer("y ~ x + (1 | g)", df, family=("poisson", "identity"))
    ref._has_gradient = lambda: False
    ref.fit()
    assert f.objective <= ref.objective + 1e-8 * abs(ref.objective)
    np.testing.assert_allclose(f.beta, ref.beta, rtol=1e-5)
    np.testing.assert_allclose(f.stderr, ref.stderr, rtol=1e-4)


@pytest.mark.parametrize("name", ["cbpp_agq25", "epil_agq9"])
def test_quadrature_gradient_equals_central_differences(name):
    """The quadrature deviance's gradient in (theta, beta) (eq. 101a,
    quadrature.agq_gradient) against central differences of the deviance, at the
    optimum and off it; its value is the deviance's."""
    from lmmfast.glmm.quadrature import agq_gradient
    f = fit(name)
    assert f._has_gradient()
    x_hat = np.concatenate([f.theta, f.beta])
    nt = f.n_theta
    for x in (x_hat, x_hat * 1.05 + 0.01):
        value, g = agq_gradient(f.pirls, f.pirls.mode(x[:nt], x[nt:]), f.n_agq)
        assert value == pytest.approx(f._deviance_x(x), rel=1e-13)
        h = 1e-5
        fd = np.array([(f._deviance_x(x + h * e) - f._deviance_x(x - h * e)) / (2 * h)
                       for e in np.eye(len(x))])
        scale = max(1.0, float(np.abs(fd).max()))
        assert np.max(np.abs(g - fd)) < 1e-6 * scale


@pytest.mark.parametrize("name", ["cbpp_laplace", "epil_slope", "cbpp_agq25"])
def test_gradient_hessian_equals_deviance_hessian(name):
    """The covariance's Hessian from differences of gradients (2n evaluations)
    agrees with lme4's stencil on the deviance (n(n + 1) evaluations)."""
    from lmmfast.glmm.vcov import fd_hessian, gradient_hessian
    f = fit(name)
    x = np.concatenate([f.theta, f.beta])
    hg, kg = gradient_hessian(f._value_gradient, x)
    hf, kf, _ = fd_hessian(f._deviance_x, x, f._deviance_x(x))
    assert kg == 2 * len(x) and kf == len(x) * (len(x) + 1)
    np.testing.assert_allclose(hg, hf, rtol=2e-4, atol=2e-4 * np.abs(hf).max())
    # the fit's own H: forward differences of gradients at GRADIENT_DELTA (n runs)
    np.testing.assert_allclose(f.hessian, hg, rtol=1e-5, atol=1e-5 * np.abs(hg).max())


def _benchmark(name: str):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec_ = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec_)
    import sys
    sys.modules[spec_.name] = mod   # (its dataclasses look their module up)
    spec_.loader.exec_module(mod)
    return mod


def test_compare_glmm_suite_models_and_peers():
    """compare.py --suite glmm: the fixture's 10 models, their fit labels, where
    statsmodels' BinomialBayesMixedGLM applies, and mixedlm's cbind rewrite
    reaching lme4's -2 log L on cbpp."""
    compare = _benchmark("compare")
    models = compare.glmm_models()
    assert len(models) == 10
    assert [compare.glmm_fit_name(models[n]) for n in ("cbpp_laplace", "cbpp_agq25",
                                                          "cbpp_nagq0")] == \
        ["Laplace", "nAGQ=25", "nAGQ=0"]
    runs_sm = [n for n, m in models.items() if compare.sm_binary_applies(m) is None]
    assert runs_sm == ["verbagg_main"]
    data = compare.glmm_data("cbpp")
    assert list(data["period"].cat.categories) == ["1", "2", "3", "4"]
    pytest.importorskip("mixedlm")
    res = compare.mixedlm_glmer(models["cbpp_laplace"], data)
    assert -2.0 * float(res.logLik().value) == pytest.approx(fit("cbpp_laplace").objective,
                                                             rel=1e-6)


def test_bench_glmm_scale_small():
    """bench_glmm_scale.py on a small design: what it reports."""
    bench = _benchmark("bench_glmm_scale")
    res = bench.run(3000, 60)
    assert res["rows"] == 3000 and res["groups"] == 60
    assert len(res["theta"]) == 3 and np.isfinite(res["minus2loglik"])
    assert res["n_evals"] == sum(res["stage_evals"]) and res["peak_over_input"] > 0
