"""GLM families and links against R's binomial() and poisson() (tests/fixtures/r_families.json)."""

import json
from pathlib import Path

import numpy as np
import pytest

from lmmfast import LmmError
from lmmfast.family import FAMILIES, family

R = json.loads((Path(__file__).parent / "fixtures" / "r_families.json").read_text())
CASES = [k for k in R if k != "meta"]


def test_every_family_and_link_has_r_values():
    assert sorted(CASES) == sorted(f"{f}_{link}" for f, links in FAMILIES.items()
                                   for link in links)


@pytest.mark.parametrize("case", CASES)
def test_link_functions_match_r(case):
    ref = R[case]
    fam = family(ref["family"], ref["link"])
    eta, mu = np.array(ref["eta"]), np.array(ref["mu"])
    np.testing.assert_allclose(fam.linkinv(eta), ref["linkinv"], rtol=1e-13, atol=0)
    np.testing.assert_allclose(fam.mu_eta(eta), ref["mu_eta"], rtol=1e-13, atol=0)
    np.testing.assert_allclose(fam.linkfun(mu), ref["linkfun"], rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(fam.variance(mu), ref["variance"], rtol=1e-15, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_deviance_and_aic_match_r(case):
    ref = R[case]
    fam = family(ref["family"], ref["link"])
    y, mu, wt = (np.array(ref[k]) for k in ("y", "mu", "wt"))
    np.testing.assert_allclose(fam.dev_resids(y, mu, wt), ref["dev_resids"], rtol=1e-13,
                               atol=1e-300)
    n = wt if ref["family"] == "binomial" else np.ones_like(y)
    assert fam.aic(y, n, mu, wt) == pytest.approx(ref["aic"], rel=1e-13)


def test_aic_at_the_edges_is_the_log_pmf():
    """The compiled aic (``_pirls.aic_sum``) row by row against scipy's log pmf, with
    the trials m given (``aic_rows``): no trials (a row that counts for nothing), all or no successes at mu 0 or 1,
    m y half-way between counts (R rounds half to even), zero counts at mu 0."""
    from scipy import stats
    binomial, poisson = family("binomial"), family("poisson")
    y = np.array([0.0, 0.0, 1.0, 0.5, 0.3, 0.625])
    m = np.array([0.0, 4.0, 3.0, 5.0, 10.0, 4.0])
    mu = np.array([0.2, 0.0, 1.0, 0.4, 0.35, 0.7])
    wt = np.array([1.0, 4.0, 3.0, 5.0, 10.0, 8.0])
    for i in range(len(y)):
        want = 0.0 if m[i] == 0 else -2.0 * wt[i] / m[i] * stats.binom.logpmf(
            np.round(m[i] * y[i]), np.round(m[i]), mu[i])
        assert binomial.aic_rows(y[i:i + 1], m[i:i + 1], mu[i:i + 1], wt[i:i + 1]) \
            == pytest.approx(want, rel=1e-14, abs=1e-300)
    assert np.round(5 * 0.5) == 2.0   # (k of the fourth row)
    counts = np.array([0.0, 0.0, 3.0, 7.0])
    means = np.array([0.0, 1.5, 2.5, 7.0])
    assert poisson.aic(counts, 1.0, means, 2.0) == pytest.approx(
        -2.0 * 2.0 * stats.poisson.logpmf(counts, means).sum(), rel=1e-14)


def test_logit_clamps_as_r_beyond_30():
    fam = family("binomial")
    eps = np.finfo(float).eps
    assert fam.linkinv(np.array([-31.0]))[0] == pytest.approx(eps / (1 + eps), rel=1e-15)
    assert fam.mu_eta(np.array([40.0]))[0] == eps


def test_spec_forms():
    assert str(family("binomial")) == "binomial(logit)"
    assert str(family(("binomial", "probit"))) == "binomial(probit)"
    assert str(family("Poisson", "sqrt")) == "poisson(sqrt)"
    assert family(family("poisson"), "identity").link.name == "identity"
    assert family("poisson").mustart([0.0, 2.0], None).tolist() == [0.1, 2.1]
    assert family("binomial").mustart([0.0, 1.0], [1.0, 3.0]).tolist() == [0.25, 0.875]


@pytest.mark.parametrize("spec, link, word", [
    ("gaussian", None, "'gaussian'"), ("binomial", "inverse", "'inverse'"),
    (("poisson", "logit"), None, "'logit'"), (3, None, "3")])
def test_bad_family_or_link_names_it(spec, link, word):
    with pytest.raises(LmmError, match=word):
        family(spec, link)


def test_validity():
    assert family("binomial").valid_mu([0.2, 0.9]) and not family("binomial").valid_mu([1.0])
    assert family("poisson").valid_mu([3.0]) and not family("poisson").valid_mu([0.0])
    assert not family("poisson", "sqrt").link.valid_eta([-1.0, 2.0])
