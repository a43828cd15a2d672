"""Shared test fixtures: lme4's reference results and cached fits."""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lmmfast

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def shared_reference(*parts: str) -> Path:
    """A file or folder of ``../shared/reference``; skips the test, saying why, when absent."""
    path = SHARED_REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs lme4's reference data {path}, from the project's shared "
                    "folder shared/reference, beside this checkout; it is not present here")
    return path


@lru_cache(maxsize=None)
def reference() -> dict:
    """lme4's fits of the reference suite (a copy of shared/reference/lme4_results.json)."""
    return json.loads((FIXTURES / "lme4_results.json").read_text())


@lru_cache(maxsize=None)
def extra_reference() -> dict:
    """lme4's fits of the extra models made by fixtures/make_lme4_extra.R."""
    return json.loads((FIXTURES / "lme4_extra.json").read_text())


def load_extra_data(name: str) -> pd.DataFrame:
    """The data frame of an extra-fixture model, factors with lme4's level order."""
    spec = extra_reference()["models"][name]
    factors = {c["name"]: c for c in spec["columns"] if c["type"] == "factor"}
    df = pd.read_csv(FIXTURES / "extra_data" / spec["data_file"],
                     dtype={n: str for n in factors})
    for n, c in factors.items():
        if c.get("levels"):
            df[n] = pd.Categorical(df[n], categories=c["levels"])
    return df


@lru_cache(maxsize=None)
def reference_fit(model: str, kind: str) -> lmmfast.LinearMixedModel:
    """lmmfast's fit of a reference-suite model (cached: InstEval takes seconds)."""
    spec = reference()["models"][model]
    return lmmfast.lmer(spec["formula"], lmmfast.datasets.load(spec["dataset"]),
                        reml=(kind == "REML"))


@lru_cache(maxsize=None)
def extra_fit(model: str, kind: str) -> lmmfast.LinearMixedModel:
    spec = extra_reference()["models"][model]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmmfast.errors.LmmWarning)
        return lmmfast.lmer(spec["formula"], load_extra_data(model), reml=(kind == "REML"),
                            weights=spec["weights_column"], offset=spec["offset_column"])


def assert_rel(actual, expected, rtol, what="", floor=0.0):
    """|actual - expected| <= rtol * max(|expected|, floor), elementwise."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    scale = np.maximum(np.abs(e), floor)
    err = np.abs(a - e)
    bad = err > rtol * scale
    assert not bad.any(), (f"{what}: relative difference {np.max(err / np.where(scale > 0, scale, 1)):.3g}"
                           f" > {rtol}; got {a[bad][:5]}, lme4 {e[bad][:5]}")


@pytest.fixture
def sleepstudy() -> pd.DataFrame:
    return lmmfast.datasets.load("sleepstudy")


def assert_varcorr(ours: pd.DataFrame, ref_rows: list[dict], rtol: float) -> None:
    """Compare a VarCorr table with lme4's rows.

    Variances and standard deviations: relative (floor 1e-8 of the residual
    variance, for zero components); covariances relative to the product of
    the two standard deviations; correlations absolutely (they are on [-1, 1]).
    """
    theirs = pd.DataFrame(ref_rows)
    assert list(ours.columns) == ["grp", "var1", "var2", "vcov", "sdcor"]
    for col in ("grp", "var1", "var2"):
        assert ours[col].fillna("").tolist() == theirs[col].fillna("").tolist(), col
    is_var = theirs.var2.isna().to_numpy()
    resid = float(theirs.vcov.iloc[-1])
    assert_rel(ours.vcov[is_var], theirs.vcov[is_var].astype(float), rtol, "variances",
               floor=1e-8 * resid)
    assert_rel(ours.sdcor[is_var], theirs.sdcor[is_var].astype(float), rtol, "std. devs",
               floor=1e-4 * np.sqrt(resid))
    sd = {(g, v): s for g, v, s in zip(theirs.grp[is_var], theirs.var1[is_var],
                                       theirs.sdcor[is_var].astype(float))}
    for i in np.flatnonzero(~is_var):
        row = theirs.iloc[i]
        scale = sd[(row.grp, row.var1)] * sd[(row.grp, row.var2)]
        assert abs(ours.vcov.iloc[i] - row.vcov) <= rtol * max(scale, 1e-8 * resid), \
            f"covariance {row.grp} {row.var1}:{row.var2}"
        if row.sdcor is not None and np.isfinite(float(row.sdcor)):
            assert abs(ours.sdcor.iloc[i] - float(row.sdcor)) <= rtol, \
                f"correlation {row.grp} {row.var1}:{row.var2}"


@lru_cache(maxsize=None)
def posthoc() -> dict:
    """R's post-fit results (emmeans, performance, lmerTest, broom.mixed) for three
    REML fits: a copy of shared/reference/posthoc/posthoc_results.json."""
    return json.loads((FIXTURES / "posthoc_results.json").read_text())


def lme4_theta(fit, tidy: dict) -> np.ndarray:
    """theta from broom.mixed's sd__/cor__ rows: each term's covariance factor over sigma."""
    rows = [(g, t, e) for g, t, e, eff in zip(tidy["group"], tidy["term"], tidy["estimate"],
                                               tidy["effect"]) if eff == "ran_pars"]
    sigma = next(e for g, t, e in rows if g == "Residual")
    theta = []
    for r in fit.remats:
        sd = {t[4:]: e for g, t, e in rows if g == r.group and t.startswith("sd__")}
        cor = {t[5:]: e for g, t, e in rows if g == r.group and t.startswith("cor__")}
        s = np.array([sd[c] for c in r.cnames])
        corr = np.eye(r.k)
        for a in range(r.k):
            for b in range(a):
                corr[a, b] = corr[b, a] = cor[f"{r.cnames[b]}.{r.cnames[a]}"]
        chol = np.linalg.cholesky(corr * np.outer(s, s)) / sigma
        theta += [chol[a, b] for b in range(r.k) for a in range(b, r.k)]
    return np.array(theta)


@lru_cache(maxsize=None)
def posthoc_fit(model: str) -> lmmfast.LinearMixedModel:
    """lmmfast's fit of a model of R's post-fit fixture."""
    spec = posthoc()["models"][model]
    return lmmfast.lmer(spec["formula"], lmmfast.datasets.load(spec["dataset"]),
                        reml=spec["reml"])


@lru_cache(maxsize=None)
def posthoc_fit_at_lme4(model: str) -> lmmfast.LinearMixedModel:
    """That fit moved to lme4's optimum (theta from broom.mixed's sd/cor rows)."""
    fit = posthoc_fit(model).copy()
    fit._set_theta(lme4_theta(fit, posthoc()["models"][model]["tidy"]))
    return fit


@pytest.fixture(scope="module")
def client():
    """A Dask LocalCluster of 2 worker processes with 1 thread each, as the default
    scheduler (the tests that use it are skipped without distributed)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
