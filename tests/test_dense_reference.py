"""Check the dense reference implementation against lme4's published fits.

For each model and each of REML and ML, the data set is read from
``/work/shared/reference/data``, the fixed-effects matrix X and the
random-effects terms are built as lme4 builds them, ``dense_criterion`` is
evaluated at lme4's theta, and its objective, beta, sigma, vcov(beta) and
conditional modes are compared with ``lme4_results.json``.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.integrate
import scipy.stats

from dense_reference import dense_criterion, dense_Lambda, dense_Z

REFERENCE_DIR = Path("/work/shared/reference")
RESULTS_FILE = REFERENCE_DIR / "lme4_results.json"

MODELS = [
    "sleep_slope",
    "sleep_zerocorr",
    "sleep_int",
    "dyestuff",
    "dyestuff2",
    "penicillin",
    "pastes",
    "cake",
]
FITS = ["REML", "ML"]

RESPONSES = {
    "sleepstudy": "Reaction",
    "Dyestuff": "Yield",
    "Dyestuff2": "Yield",
    "Penicillin": "diameter",
    "Pastes": "strength",
    "cake": "angle",
}


@pytest.fixture(scope="module")
def lme4_results():
    """The parsed ``lme4_results.json``; skips when the reference is absent."""
    if not RESULTS_FILE.is_file():
        pytest.skip(f"lme4 reference results not found at {RESULTS_FILE}")
    with RESULTS_FILE.open() as handle:
        return json.load(handle)


def read_dataset(results, dataset):
    """Read a data set, with its factor columns as strings in R's level order."""
    columns = results["datasets"][dataset]["columns"]
    factors = {c["name"]: c for c in columns if c["type"] == "factor"}
    path = REFERENCE_DIR / results["datasets"][dataset]["file"]
    data = pd.read_csv(path, dtype={name: str for name in factors})
    for name, column in factors.items():
        data[name] = pd.Categorical(data[name], categories=column["levels"])
    return data


def model_column(data, factor_levels, name):
    """Return one column of lme4's model matrix, given its lme4 name.

    ``(Intercept)`` is a column of ones, a numeric variable is itself, a
    factor level ``<factor><level>`` is the treatment-contrast indicator of
    that level (never the first, reference level), and ``a:b`` is the
    elementwise product of the columns named ``a`` and ``b``.
    """
    if ":" in name:
        product = np.ones(len(data))
        for part in name.split(":"):
            product = product * model_column(data, factor_levels, part)
        return product
    if name == "(Intercept)":
        return np.ones(len(data))
    if name in data.columns:
        return data[name].to_numpy(dtype=float)
    for factor, levels in factor_levels.items():
        level = name[len(factor):]
        if name.startswith(factor) and level in levels:
            assert level != levels[0], f"{name} is the reference level of {factor}"
            return (data[factor].astype(str) == level).to_numpy(dtype=float)
    raise KeyError(f"cannot build model column {name!r}")


def grouping_labels(data, group):
    """Return the level label of each row for a grouping factor such as ``cask:batch``.

    An interaction ``f:g`` is the combination of the factors, labelled as
    lme4 labels it: the levels of f and g joined by ``:``.
    """
    parts = [data[factor].astype(str) for factor in group.split(":")]
    labels = parts[0]
    for part in parts[1:]:
        labels = labels + ":" + part
    return labels.to_numpy()


def build_model(results, model, fit_name):
    """Build X, y, the terms and the level names of each term for one fit."""
    spec = results["models"][model]
    fit = spec["fits"][fit_name]
    data = read_dataset(results, spec["dataset"])
    X = np.column_stack(
        [model_column(data, fit["factor_levels"], name) for name in fit["fixef"]["names"]]
    )
    y = data[RESPONSES[spec["dataset"]]].to_numpy(dtype=float)
    terms = []
    term_levels = []
    for re_term in fit["re_terms"]:
        refs, levels = pd.factorize(grouping_labels(data, re_term["group"]))
        z = np.column_stack(
            [model_column(data, fit["factor_levels"], name) for name in re_term["columns"]]
        )
        terms.append((refs, z, len(levels)))
        term_levels.append(list(levels))
    return fit, X, y, terms, term_levels


def relative_difference(actual, expected):
    """Largest |actual - expected| relative to the largest |expected|."""
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    scale = np.max(np.abs(expected))
    difference = np.max(np.abs(actual - expected))
    return difference / scale if scale > 0 else difference


def conditional_modes_by_name(fit, result, terms, term_levels):
    """Pair each conditional mode with lme4's value of the same group, column and level."""
    ours = []
    theirs = []
    position = 0
    for re_term, (refs, z, nl), levels in zip(fit["re_terms"], terms, term_levels):
        k = z.shape[1]
        reference = fit["ranef"][re_term["group"]]
        assert sorted(levels) == sorted(reference["levels"])
        for level_index, level in enumerate(levels):
            for j, column in enumerate(re_term["columns"]):
                ours.append(result["b"][position + level_index * k + j])
                theirs.append(reference["values"][level][reference["columns"].index(column)])
        position += nl * k
    assert position == len(result["b"])
    return np.array(ours), np.array(theirs)


@pytest.mark.parametrize("fit_name", FITS)
@pytest.mark.parametrize("model", MODELS)
def test_matches_lme4(lme4_results, model, fit_name):
    """Objective, beta, sigma, vcov and conditional modes agree with lme4 at its theta."""
    fit, X, y, terms, term_levels = build_model(lme4_results, model, fit_name)
    result = dense_criterion(X, y, terms, fit["theta"], reml=fit["REML"])

    assert relative_difference(result["objective"], fit["objective"]) < 1e-8
    np.testing.assert_allclose(result["beta"], fit["fixef"]["estimate"], rtol=1e-6)
    assert relative_difference(result["sigma"], fit["sigma"]) < 1e-6
    np.testing.assert_allclose(result["vcov_beta"], fit["vcov_fixef"], rtol=1e-6)
    ours, theirs = conditional_modes_by_name(fit, result, terms, term_levels)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.max(np.abs(theirs)))


@pytest.mark.parametrize("fit_name", FITS)
@pytest.mark.parametrize("model", MODELS)
def test_log_determinants_match_lme4_devcomp(lme4_results, model, fit_name):
    """log|V0| and log|X^T V0^-1 X| are lme4's ldL2 and ldRX2 (unit weights).

    Recovered from the objective: ML deviance - n log(2 pi sigma^2) - n is
    log|V0|; the REML criterion additionally contains log|A|.
    """
    fit, X, y, terms, _ = build_model(lme4_results, model, fit_name)
    result = dense_criterion(X, y, terms, fit["theta"], reml=fit["REML"])
    n, p = X.shape
    ml = dense_criterion(X, y, terms, fit["theta"], reml=False)
    log_det_V0 = ml["objective"] - n * np.log(2 * np.pi * ml["sigma"] ** 2) - n
    assert log_det_V0 == pytest.approx(fit["devcomp"]["ldL2"], rel=1e-9, abs=1e-9)
    if fit["REML"]:
        log_det_A = (
            result["objective"] - (n - p) * np.log(2 * np.pi * result["sigma"] ** 2)
            - (n - p) - log_det_V0
        )
        assert log_det_A == pytest.approx(fit["devcomp"]["ldRX2"], rel=1e-8)


@pytest.mark.parametrize("model", MODELS)
def test_ml_objective_is_minus_twice_normal_log_density(lme4_results, model):
    """The ML objective is -2 log N(y; X beta_hat, sigma_hat^2 V0) by scipy."""
    fit, X, y, terms, _ = build_model(lme4_results, model, "ML")
    result = dense_criterion(X, y, terms, fit["theta"], reml=False)
    Z = dense_Z(terms, len(y))
    Lambda = dense_Lambda(terms, fit["theta"])
    V0 = Z @ Lambda @ Lambda.T @ Z.T + np.eye(len(y))
    log_density = scipy.stats.multivariate_normal.logpdf(
        y, mean=X @ result["beta"], cov=result["sigma"] ** 2 * V0
    )
    assert result["objective"] == pytest.approx(-2 * log_density, rel=1e-10)


@pytest.mark.parametrize("reml", [True, False])
def test_constant_weights_rescale_theta_and_sigma(lme4_results, reml):
    """Weights c give Var(y) = sigma^2 (Z Lambda Lambda^T Z^T + I/c)
    = (sigma^2/c) (Z (sqrt(c) Lambda)(sqrt(c) Lambda)^T Z^T + I): the same
    objective, beta, modes and vcov as unit weights at sqrt(c) theta, with
    sigma multiplied by sqrt(c)."""
    fit, X, y, terms, _ = build_model(lme4_results, "sleep_slope", "REML")
    c = 2.5
    theta = np.asarray(fit["theta"])
    weighted = dense_criterion(X, y, terms, theta, reml, weights=np.full(len(y), c))
    rescaled = dense_criterion(X, y, terms, np.sqrt(c) * theta, reml)
    assert weighted["objective"] == pytest.approx(rescaled["objective"], rel=1e-12)
    assert weighted["sigma"] == pytest.approx(np.sqrt(c) * rescaled["sigma"], rel=1e-12)
    np.testing.assert_allclose(weighted["beta"], rescaled["beta"], rtol=1e-12)
    np.testing.assert_allclose(weighted["b"], rescaled["b"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weighted["vcov_beta"], rescaled["vcov_beta"], rtol=1e-10)


def test_weights_and_offset_enter_the_normal_density(lme4_results):
    """With unequal weights and an offset, the ML objective is
    -2 log N(y - offset; X beta_hat, sigma_hat^2 (Z Lambda Lambda^T Z^T + W^-1)),
    and subtracting the offset from y beforehand gives the same fit."""
    fit, X, y, terms, _ = build_model(lme4_results, "sleep_slope", "ML")
    rng = np.random.default_rng(20231125)
    weights = rng.uniform(0.5, 2.0, size=len(y))
    offset = rng.normal(0.0, 10.0, size=len(y))
    result = dense_criterion(X, y, terms, fit["theta"], False, weights=weights, offset=offset)
    Z = dense_Z(terms, len(y))
    Lambda = dense_Lambda(terms, fit["theta"])
    V0 = Z @ Lambda @ Lambda.T @ Z.T + np.diag(1.0 / weights)
    log_density = scipy.stats.multivariate_normal.logpdf(
        y - offset, mean=X @ result["beta"], cov=result["sigma"] ** 2 * V0
    )
    assert result["objective"] == pytest.approx(-2 * log_density, rel=1e-10)
    shifted = dense_criterion(X, y - offset, terms, fit["theta"], False, weights=weights)
    assert shifted["objective"] == pytest.approx(result["objective"], rel=1e-12)
    np.testing.assert_allclose(shifted["b"], result["b"], rtol=1e-10, atol=1e-10)


def test_reml_objective_is_likelihood_integrated_over_beta(lme4_results):
    """For Dyestuff (p = 1), -2 log of the numerically integrated likelihood
    over beta equals the REML criterion, and sigma_hat maximises it."""
    fit, X, y, terms, _ = build_model(lme4_results, "dyestuff", "REML")
    result = dense_criterion(X, y, terms, fit["theta"], reml=True)
    Z = dense_Z(terms, len(y))
    Lambda = dense_Lambda(terms, fit["theta"])
    V0 = Z @ Lambda @ Lambda.T @ Z.T + np.eye(len(y))
    beta_hat = result["beta"][0]
    beta_se = np.sqrt(result["vcov_beta"][0, 0])

    def minus_two_log_restricted_likelihood(sigma):
        log_peak = scipy.stats.multivariate_normal.logpdf(
            y, mean=X[:, 0] * beta_hat, cov=sigma**2 * V0
        )

        def likelihood_ratio(beta):
            log_density = scipy.stats.multivariate_normal.logpdf(
                y, mean=X[:, 0] * beta, cov=sigma**2 * V0
            )
            return np.exp(log_density - log_peak)

        integral, _ = scipy.integrate.quad(
            likelihood_ratio, beta_hat - 40 * beta_se, beta_hat + 40 * beta_se,
            points=[beta_hat], epsabs=0, epsrel=1e-12, limit=200,
        )
        return -2 * (log_peak + np.log(integral))

    sigma_hat = result["sigma"]
    at_optimum = minus_two_log_restricted_likelihood(sigma_hat)
    assert at_optimum == pytest.approx(result["objective"], rel=1e-10)
    for factor in (0.99, 1.01):
        assert minus_two_log_restricted_likelihood(factor * sigma_hat) > at_optimum


def test_lambda_fills_lower_triangle_column_by_column():
    """For a k = 2 term, theta = (l11, l21, l22) gives [[l11, 0], [l21, l22]] per level."""
    refs = np.array([0, 1, 1])
    z = np.column_stack([np.ones(3), np.array([1.0, 2.0, 3.0])])
    Lambda = dense_Lambda([(refs, z, 2)], [1.0, 2.0, 3.0])
    block = np.array([[1.0, 0.0], [2.0, 3.0]])
    np.testing.assert_array_equal(Lambda, np.kron(np.eye(2), block))


def test_Z_is_level_major():
    """Column level*k + j of a term's Z holds z[:, j] on the rows of that level."""
    refs = np.array([0, 1, 1])
    z = np.column_stack([np.ones(3), np.array([1.0, 2.0, 3.0])])
    expected = np.array(
        [
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 2.0],
            [0.0, 0.0, 1.0, 3.0],
        ]
    )
    np.testing.assert_array_equal(dense_Z([(refs, z, 2)], 3), expected)
