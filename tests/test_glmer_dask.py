"""glmer of a Dask DataFrame on a LocalCluster of two worker processes: the
in-memory fit's numbers.

Every pass over the rows (PIRLS, the family's aic, the gradient, the
quadrature) is the in-memory fit's own partition function, run on each
partition held by a worker and merged by a tree reduction (``glmm.dask``).
Only the rounding of sums over other partitions differs, so the optimiser
takes the same steps: the deviance, beta, theta, the standard errors and the
conditional modes equal the pandas fit's on the whole shared GLMM suite.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from test_glmer import dataset, fit, lme4_default, spec

from lmmfast.errors import DataError
from lmmfast.glmm import glmer

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from lmmfast.glmm.model import DaskGeneralizedLinearMixedModel  # noqa: E402

MODELS = list(lme4_default()["models"]) + ["epil_offset"]


def _dask_fit(name: str, npartitions: int = 3, **kwargs):
    m = spec(name)
    ddf = dd.from_pandas(dataset(m["dataset"]), npartitions=npartitions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return glmer(m["formula"], ddf, family=(m["family"], m["link"]), nAGQ=m["nAGQ"],
                     weights=m["weights"], **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_the_glmm_suite_on_dask_equals_pandas(client, name):
    ref = fit(name)
    got = _dask_fit(name)
    assert isinstance(got, DaskGeneralizedLinearMixedModel)
    assert got.nobs == ref.nobs and got.fixef_names == ref.fixef_names
    assert got.objective == pytest.approx(ref.objective, rel=1e-10)
    # nAGQ = 0 ends where BOBYQA stops on theta alone: its rounding moves that stop by
    # ~1e-8 (the deviance agrees to 1e-15)
    rtol = 1e-7 if ref.n_agq == 0 else 1e-8
    np.testing.assert_allclose(got.theta, ref.theta, rtol=rtol)
    np.testing.assert_allclose(got.beta, ref.beta, rtol=rtol)
    # (the quadrature's standard errors are second differences of the deviance)
    np.testing.assert_allclose(got.stderr, ref.stderr, rtol=1e-6)
    for g, frame in ref.ranef().items():
        np.testing.assert_allclose(got.ranef()[g].to_numpy(), frame.to_numpy(),
                                   rtol=1e-6, atol=1e-8)
    stats = got.dask_stats
    assert stats["partitions"] == 3 and stats["passes"] > got.n_evals
    assert 0 < stats["bytes_to_client"] < 2 * stats["passes"] * 16 * (
        got.pirls.factor(True).layout.n_a + 1000)


def test_row_results_are_dask_series_equal_to_pandas(client):
    ref = fit("epil_slope")
    got = _dask_fit("epil_slope", npartitions=4)
    pairs = [(got.fitted, ref.fitted), (got.linear_predictor, ref.linear_predictor),
             (got.predict(type="response"), ref.predict(type="response"))]
    pairs += [(got.residuals(t), ref.residuals(t))
              for t in ("deviance", "pearson", "response", "working")]
    for series, array in pairs:
        assert type(series).__module__.startswith("dask"), type(series)
        values = series.compute()
        assert list(values.index) == list(range(ref.nobs))
        np.testing.assert_allclose(values.to_numpy(), array, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got.residual_quantiles(), ref.residual_quantiles(), rtol=1e-7)
    pd.testing.assert_series_equal(got.overdispersion(), ref.overdispersion(), rtol=1e-7)
    assert "Scaled residuals" in got.summary()
    newdata = dataset("epil").iloc[:10]
    np.testing.assert_allclose(got.predict(newdata, type="response"),
                               ref.predict(newdata, type="response"), rtol=1e-7)


def test_parquet_files_and_missing_values(client, tmp_path):
    """Parquet files on disk, a row with a missing value dropped as in memory."""
    cb = dataset("cbpp").copy()   # (the cached frame is shared)
    cb.loc[3, "incidence"] = np.nan
    for i, start in enumerate(range(0, len(cb), 20)):
        cb.iloc[start:start + 20].to_parquet(tmp_path / f"part{i}.parquet")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    with pytest.warns(Warning, match="missing values"):
        ref = glmer(formula, cb, family="binomial")
    with pytest.warns(Warning, match="missing values"):
        got = glmer(formula, str(tmp_path / "*.parquet"), family="binomial")
    assert got.nobs == ref.nobs == 55 and got.n_dropped == ref.n_dropped == 1
    assert got.objective == pytest.approx(ref.objective, rel=1e-10)
    np.testing.assert_allclose(got.beta, ref.beta, rtol=1e-8)


def test_factor_and_bool_responses(client):
    verb = dataset("VerbAgg")
    formula = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
    ref = fit("verbagg_main")
    got = glmer(formula, dd.from_pandas(verb, npartitions=2), family="binomial")
    assert got.objective == pytest.approx(ref.objective, rel=1e-10)
    assert got.design.response_levels == ref.design.response_levels
    ddf = dd.from_pandas(verb.assign(r2=verb["r2"] == "Y"), npartitions=2)
    assert glmer(formula, ddf, family="binomial").objective == pytest.approx(ref.objective,
                                                                            rel=1e-10)


def test_without_a_distributed_client_the_partitions_are_built_here():
    import dask
    ref = fit("cbpp_laplace")
    with dask.config.set(scheduler="synchronous"):
        got = _dask_fit("cbpp_laplace")
        assert got.pirls.rows.client is None
        assert got.objective == pytest.approx(ref.objective, rel=1e-10)
        np.testing.assert_allclose(got.fitted.compute().to_numpy(), ref.fitted, rtol=1e-8)


def test_what_needs_the_rows_on_the_client_says_so(client):
    got = _dask_fit("cbpp_laplace")
    for call in (lambda: got.simulate(), lambda: got.bootstrap(2),
                 lambda: got.refit(np.zeros(56)), lambda: got.prior_weights):
        with pytest.raises(DataError, match="on the cluster"):
            call()
    verb = dataset("VerbAgg").assign(r2=lambda d: d["r2"].astype(str))
    with pytest.raises(DataError, match="categorical"):
        glmer("r2 ~ Anger + (1 | id)", dd.from_pandas(verb, npartitions=2),
              family="binomial")
    with pytest.raises(DataError, match="weights must be the name of a column"):
        glmer("r2 ~ Anger + (1 | id)", dd.from_pandas(dataset("VerbAgg"), npartitions=2),
              family="binomial", weights=np.ones(7584))
