"""glmer's responses, weights and offsets as lme4 takes them, and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from test_glmer import dataset, fit, lme4_default, max_rel, values

import lmmfast
from lmmfast.errors import DataError, FitError, LmmError
from lmmfast.family import family
from lmmfast.glmm import GeneralizedLinearMixedModel, glmer

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def _same_fit(a, b, rel=1e-7):
    assert a.objective == pytest.approx(b.objective, rel=1e-10)
    assert max_rel(a.beta, b.beta) < rel
    assert max_rel(a.theta, b.theta) < rel


def test_cbind_and_proportion_with_weights_agree():
    """cbind(s, f) and s / n with weights = n: the same fit and the same -2 log L (lme4)."""
    _same_fit(fit("cbpp_laplace"), fit("cbpp_prop_weights"))


def test_bundled_cbpp_and_family_forms():
    cbpp = lmmfast.datasets.load("cbpp")
    a = glmer(CBPP, cbpp, family="binomial")
    assert a.objective <= lme4_default()["models"]["cbpp_laplace"]["minus2loglik"]
    b = glmer(CBPP, cbpp, family=family("binomial"))
    _same_fit(a, b)
    c = glmer(CBPP, cbpp, family=("binomial", "probit"))
    assert max_rel(c.beta, values(lme4_default()["models"]["cbpp_probit"]["fixef"])) < 2e-3


def _bernoulli(df: pd.DataFrame) -> pd.DataFrame:
    return df.iloc[::7].reset_index(drop=True)


def test_factor_bool_and_01_responses_agree():
    """VerbAgg's r2 (a factor N/Y: first level is failure), as bool and as 0/1."""
    verb = _bernoulli(dataset("VerbAgg"))
    f = "{} ~ Anger + btype + (1 | id)"
    a = glmer(f.format("r2"), verb, family="binomial")
    b = glmer(f.format("yes"), verb.assign(yes=verb["r2"] == "Y"), family="binomial")
    c = glmer(f.format("y01"), verb.assign(y01=(verb["r2"] == "Y").astype(int)),
              family="binomial")
    d = glmer(f.format("r2s"), verb.assign(r2s=verb["r2"].astype(str)), family="binomial")
    for other in (b, c, d):
        _same_fit(a, other)
    # reversing the level order swaps success and failure: every fixed effect changes sign
    rev = verb.assign(r2=verb["r2"].cat.reorder_categories(["Y", "N"]))
    e = glmer(f.format("r2"), rev, family="binomial")
    assert max_rel(-e.beta, a.beta) < 2e-5
    assert e.objective == pytest.approx(a.objective, rel=1e-9)


def test_input_frame_not_modified():
    verb = _bernoulli(dataset("VerbAgg"))
    before = verb.copy()
    glmer("r2 ~ Anger + (1 | id)", verb, family="binomial")
    pd.testing.assert_frame_equal(verb, before)


def test_offset_argument_and_offset_term_agree():
    epil = dataset("epil")
    a = glmer("y ~ lbase * trt + V4 + offset(lage) + (1 | subject)", epil, family="poisson")
    b = glmer("y ~ lbase * trt + V4 + (1 | subject)", epil, family="poisson", offset="lage")
    c = glmer("y ~ lbase * trt + V4 + (1 | subject)", epil, family="poisson",
              offset=epil["lage"].to_numpy())
    _same_fit(a, b)
    _same_fit(a, c)


def test_nagq0_and_start():
    """start= (theta, or theta with fixef) reaches the same optimum."""
    cbpp = dataset("cbpp")
    a = fit("cbpp_laplace")
    b = glmer(CBPP, cbpp, family="binomial", start={"theta": [0.5], "fixef": a.beta})
    assert b.objective == pytest.approx(a.objective, rel=1e-9)
    c = glmer(CBPP, cbpp, family="binomial", start=[0.3])
    assert c.objective == pytest.approx(a.objective, rel=1e-9)


def test_ranef_shapes_and_condvar():
    f = fit("verbagg_slope")
    re = f.ranef(condvar=True)
    assert set(re) == {"id", "item"}
    item = re["item"]
    assert list(item.columns) == ["(Intercept)", "GenderM"]
    v = item.attrs["condvar"]
    assert v.shape == (24, 2, 2)
    assert np.allclose(v, v.transpose(0, 2, 1))
    assert (np.linalg.eigvalsh(v) > 0).all()


def test_condvar_is_the_modes_after_deviances_elsewhere():
    """The conditional variances come from the factor at the mode's weights, not
    from wherever a later evaluation (``deviance_at``) left the factor."""
    f = glmer(CBPP, dataset("cbpp"), family="binomial")
    before = f.ranef(condvar=True)["herd"].attrs["condsd"].to_numpy()
    f.deviance_at(f.theta * 1.5, f.beta * 0.9)
    after = f.ranef(condvar=True)["herd"].attrs["condsd"].to_numpy()
    np.testing.assert_allclose(after, before, rtol=1e-12)


# ------------------------------------------------------------------ bad input
def test_negative_counts():
    epil = dataset("epil").assign(y=lambda d: d["y"].where(d.index != 3, -2))
    with pytest.raises(DataError, match="negative value -2"):
        glmer("y ~ lbase + (1 | subject)", epil, family="poisson")


def test_proportion_above_one():
    cbpp = dataset("cbpp").assign(p=lambda d: d["incidence"] / d["size"])
    cbpp.loc[5, "p"] = 1.5
    with pytest.raises(DataError, match="1.5"):
        glmer("p ~ period + (1 | herd)", cbpp, family="binomial", weights="size")


def test_negative_cbind_column():
    cbpp = dataset("cbpp")
    with pytest.raises(DataError, match="failures"):
        glmer("cbind(incidence, incidence - size) ~ period + (1 | herd)", cbpp,
              family="binomial")


def test_three_level_factor_for_binomial():
    verb = _bernoulli(dataset("VerbAgg"))
    with pytest.raises(DataError, match="btype.*3 levels"):
        glmer("btype ~ Anger + (1 | id)", verb, family="binomial")


def test_factor_response_for_poisson():
    verb = _bernoulli(dataset("VerbAgg"))
    with pytest.raises(DataError, match="r2.*poisson"):
        glmer("r2 ~ Anger + (1 | id)", verb, family="poisson")


def test_non_integer_counts_warn():
    epil = dataset("epil").assign(y=lambda d: d["y"] + 0.5)
    with pytest.warns(UserWarning, match="non-integer"):
        GeneralizedLinearMixedModel("y ~ lbase + (1 | subject)", epil, family="poisson")


def test_non_integer_successes_warn():
    cbpp = dataset("cbpp").assign(p=lambda d: d["incidence"] / d["size"])
    with pytest.warns(UserWarning, match="non-integer #successes"):
        GeneralizedLinearMixedModel("p ~ period + (1 | herd)", cbpp, family="binomial")


def test_agq_with_several_terms():
    verb = _bernoulli(dataset("VerbAgg"))
    with pytest.raises(FitError, match=r"nAGQ = 5.*\(1 \| id\), \(1 \| item\)"):
        glmer("r2 ~ Anger + (1 | id) + (1 | item)", verb, family="binomial", nAGQ=5)


def test_agq_with_vector_term():
    epil = dataset("epil")
    with pytest.raises(FitError, match=r"nAGQ = 9.*\(1 \+ V4 \| subject\)"):
        glmer("y ~ lbase + V4 + (1 + V4 | subject)", epil, family="poisson", nAGQ=9)


@pytest.mark.parametrize("bad", [-1, 101, 1.5, "1", True])
def test_bad_nagq(bad):
    with pytest.raises(DataError, match="nAGQ"):
        GeneralizedLinearMixedModel(CBPP, dataset("cbpp"), family="binomial", nAGQ=bad)


def test_unknown_family_and_link():
    with pytest.raises(DataError, match="gamma"):
        glmer(CBPP, dataset("cbpp"), family="gamma")
    with pytest.raises(DataError, match="log.*binomial"):
        glmer(CBPP, dataset("cbpp"), family=("binomial", "log"))


def test_cbind_for_poisson():
    with pytest.raises(DataError, match="cbind"):
        glmer(CBPP, dataset("cbpp"), family="poisson")


def test_pirls_failure_is_an_error_not_nan():
    """The identity link of a Poisson mean with a mean that turns negative:
    PIRLS cannot keep mu > 0, an LmmError names the parameters, no NaN result."""
    rng = np.random.default_rng(1)
    n = 60
    df = pd.DataFrame({"y": np.r_[np.zeros(n - 3), [400, 500, 600]],
                       "x": np.r_[np.zeros(n - 3), [1, 1, 1]] * 1.0,
                       "g": rng.integers(0, 6, n).astype(str)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            f = glmer("y ~ x + (1 | g)", df, family=("poisson", "identity"))
        except LmmError as e:
            assert "theta" in str(e) or "mu" in str(e) or "PIRLS" in str(e)
        else:
            assert np.isfinite(f.objective) and np.isfinite(f.beta).all()


def test_not_fitted():
    m = GeneralizedLinearMixedModel(CBPP, dataset("cbpp"), family="binomial")
    with pytest.raises(FitError, match="not fitted"):
        _ = m.fixef


def test_perfect_separation_is_named():
    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    df = pd.DataFrame({"y": (x > 0).astype(int), "x": x,
                       "g": rng.integers(0, 8, 80).astype(str)})
    with pytest.raises(FitError, match="separat"):
        glmer("y ~ x + (1 | g)", df, family="binomial")


def test_singular_fit_uses_rx_vcov():
    """theta at 0 (no group variation): Var(beta) from the Hessian, as lme4 (the
    deviance is even in theta, so no theta-beta terms), equal to R_X's and the
    GLM's; the -2 log L equals the GLM's (the random effects vanish)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    df = pd.DataFrame({"y": rng.binomial(1, 0.4, 80), "x": x,
                       "g": rng.integers(0, 8, 80).astype(str)})
    f = glmer("y ~ x + (1 | g)", df, family="binomial")
    assert f.is_singular and f.theta[0] == 0.0
    assert np.allclose(f.hessian[0, 1:], 0.0, atol=1e-4)
    # the GLM at theta = 0: IRLS by hand
    X = np.column_stack([np.ones(80), x])
    beta = np.zeros(2)
    for _ in range(50):
        mu = 1 / (1 + np.exp(-X @ beta))
        w = mu * (1 - mu)
        beta = beta + np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (df["y"] - mu))
    mu = 1 / (1 + np.exp(-X @ beta))
    w = mu * (1 - mu)
    assert max_rel(f.beta, beta) < 1e-6
    assert max_rel(f.stderr.values, np.sqrt(np.diag(np.linalg.inv(X.T @ (w[:, None] * X))))) < 1e-6
    y = df["y"].to_numpy()
    assert f.objective == pytest.approx(-2 * np.sum(y * np.log(mu) + (1 - y) * np.log(1 - mu)),
                                        rel=1e-9)
