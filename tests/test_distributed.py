"""Fits from Dask DataFrames and Parquet files on a real LocalCluster equal the pandas fits.

A is accumulated in double-double and rounded once, so the Dask path's A
(partials per partition, summed by a tree reduction on the cluster) is the
in-memory path's to the last bit; the optimiser then takes the same steps and
the fits agree to 1e-10 relative (in fact exactly).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.errors import DataError, LmmWarning, MissingValuesWarning

from conftest import extra_fit, extra_reference, load_extra_data, reference, reference_fit

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from lmmfast.distributed import DaskLinearMixedModel  # noqa: E402

RTOL = 1e-10
CASES = [(m, k) for m in reference()["models"] for k in ("REML", "ML")]


def _spec(model):
    spec = reference()["models"][model]
    return spec["formula"], lmmfast.datasets.load(spec["dataset"])


def _assert_same_fit(ours, ref):
    assert np.array_equal(ours._a, ref._a), "A differs from the in-memory A"
    assert ours.nobs == ref.nobs
    assert ours.objective == pytest.approx(ref.objective, rel=RTOL)
    np.testing.assert_allclose(ours.theta, ref.theta, rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(ours.fixef, ref.fixef, rtol=RTOL)
    assert list(ours.fixef.index) == list(ref.fixef.index)
    assert list(ours.theta.index) == list(ref.theta.index)
    assert ours.sigma == pytest.approx(ref.sigma, rel=RTOL)
    np.testing.assert_allclose(ours.stderr, ref.stderr, rtol=RTOL)
    for g, frame in ref.ranef().items():
        pd.testing.assert_frame_equal(ours.ranef()[g], frame, rtol=RTOL)


@pytest.mark.parametrize("model,kind", CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_reference_suite_dask_equals_pandas(client, model, kind):
    formula, df = _spec(model)
    ddf = dd.from_pandas(df, npartitions=4 if model == "insteval" else 3)
    fit = lmmfast.lmer(formula, ddf, reml=(kind == "REML"))
    assert isinstance(fit, DaskLinearMixedModel)
    _assert_same_fit(fit, reference_fit(model, kind))
    # parameter-level results are in memory; only reduced data came to the client
    assert isinstance(fit.varcorr, pd.DataFrame) and isinstance(fit.fixef, pd.Series)
    assert fit.dask_stats["partitions"] == ddf.npartitions
    assert fit.dask_stats["bytes_to_client"] < 16 * fit._layout.n_a + 200_000


EXTRA = [m for m in extra_reference()["models"] if m != "sleep_zero_weight"]


@pytest.mark.parametrize("model", EXTRA)
def test_extra_models_dask_equals_pandas(client, model):
    """Weights, offsets, formula features, missing values and rank deficiency."""
    spec = extra_reference()["models"][model]
    df = load_extra_data(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        fit = lmmfast.lmer(spec["formula"], dd.from_pandas(df, npartitions=3),
                           weights=spec["weights_column"], offset=spec["offset_column"])
    ref = extra_fit(model, "REML")
    _assert_same_fit(fit, ref)
    assert fit.dropped_columns == ref.dropped_columns
    assert fit.n_dropped == ref.n_dropped


def test_fitted_residuals_are_dask_series_equal_to_pandas(client):
    df = load_extra_data("sleep_weights_offset")
    df.index = df.index * 10 + 7              # labels that are not positions
    df.loc[df.index[[3, 50, 51]], "Reaction"] = np.nan
    formula = "Reaction ~ Days + (Days | Subject)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingValuesWarning)
        ref = lmmfast.lmer(formula, df, weights="w", offset="off")
        fit = lmmfast.lmer(formula, dd.from_pandas(df, npartitions=4), weights="w",
                           offset="off")
    for name in ("fitted", "residuals"):
        got = getattr(fit, name)
        assert type(got).__module__.startswith("dask"), type(got)
        values = got.compute()
        assert values.index.equals(ref.row_index)
        np.testing.assert_allclose(values.to_numpy(), getattr(ref, name), rtol=1e-12,
                                   atol=1e-12 * np.abs(ref.fitted).max())
    assert fit.summary() == ref.summary()


def test_predict_on_dask_frames(client):
    formula, df = _spec("penicillin")
    ref = reference_fit("penicillin", "REML")
    fit = lmmfast.lmer(formula, dd.from_pandas(df, npartitions=3))
    new = df.iloc[::3].copy()
    new.loc[new.index[0], "plate"] = np.nan
    dnew = dd.from_pandas(new, npartitions=2)
    for re_form in (None, "~0", "~ (1 | plate)"):
        got = fit.predict(dnew, re_form=re_form)
        assert type(got).__module__.startswith("dask")
        expected = ref.predict(new, re_form=re_form)
        np.testing.assert_allclose(got.compute().to_numpy(), expected, rtol=1e-12)
        np.testing.assert_allclose(fit.predict(new, re_form=re_form), expected, rtol=1e-12)
    own = fit.predict(re_form="~0").compute().to_numpy()
    np.testing.assert_allclose(own, ref.predict(re_form="~0"), rtol=1e-12)
    # any fitted model predicts a Dask frame partition by partition
    from lmmfast.distributed import predict
    got = predict(ref, dnew).compute().to_numpy()
    np.testing.assert_allclose(got, ref.predict(new), rtol=1e-12)


def test_parquet_glob(client, tmp_path):
    formula, df = _spec("pastes")
    for i, rows in enumerate(np.array_split(np.arange(len(df)), 4)):
        df.iloc[rows].to_parquet(tmp_path / f"part-{i}.parquet")
    fit = lmmfast.lmer(formula, str(tmp_path / "*.parquet"))
    _assert_same_fit(fit, reference_fit("pastes", "REML"))
    assert fit.dask_stats["partitions"] == 4
    fit_dir = lmmfast.lmer(formula, tmp_path)            # a directory, as a Path
    assert fit_dir.objective == fit.objective


def test_integer_grouping_column_and_interaction_levels(client):
    """Levels from the data: integer codes sort numerically, combinations as present."""
    df = lmmfast.datasets.load("Pastes")
    df = df.assign(batch=df["batch"].cat.codes.astype(np.int64) * 7 % 10,
                   cask=df["cask"].astype(str))
    formula = "strength ~ 1 + (1 | batch/cask)"
    ref = lmmfast.lmer(formula, df)
    fit = lmmfast.lmer(formula, dd.from_pandas(df, npartitions=5))
    _assert_same_fit(fit, ref)
    assert [r.levels for r in fit.remats] == [r.levels for r in ref.remats]


def test_continuous_random_slope(client):
    """The optimiser's scale of theta (root mean square of z) comes out the same too."""
    rng = np.random.default_rng(7)
    n, groups = 4000, 80
    g = rng.integers(0, groups, n)
    x = 1.7 * rng.standard_normal(n) + 0.3
    y = 1 + 0.5 * x + rng.standard_normal(groups)[g] \
        + 0.4 * rng.standard_normal(groups)[g] * x + rng.standard_normal(n)
    df = pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})
    formula = "y ~ 1 + x + (1 + x | g)"
    ref = lmmfast.lmer(formula, df)
    fit = lmmfast.lmer(formula, dd.from_pandas(df, npartitions=3))
    np.testing.assert_array_equal(fit._theta_scale(), ref._theta_scale())
    _assert_same_fit(fit, ref)


def test_errors_name_the_problem(client):
    formula, df = _spec("sleep_slope")
    ddf = dd.from_pandas(df, npartitions=2)
    with pytest.raises(lmmfast.FormulaError, match="'Nope'"):
        lmmfast.lmer("Reaction ~ Days + (1 | Nope)", ddf)
    with pytest.raises(DataError, match="column"):
        lmmfast.lmer(formula, ddf, weights=np.ones(len(df)))
    with pytest.raises(lmmfast.FormulaError, match=r"C\(Days\)"):
        lmmfast.lmer("Reaction ~ C(Days) + (1 | Subject)", ddf)
    bad = df.assign(Reaction=df["Reaction"].where(df.index != 100, np.inf))
    with pytest.raises(DataError, match="non-finite"):
        lmmfast.lmer(formula, dd.from_pandas(bad, npartitions=2))
    const = df.assign(Reaction=1.0)
    with pytest.raises(DataError, match="fitted exactly"):
        lmmfast.lmer(formula, dd.from_pandas(const, npartitions=2))


def test_anova_from_the_cross_products_equals_pandas(client):
    """Satterthwaite's F tests need only A: a Dask fit gives the pandas fit's table,
    weighted (the reduction's unweighted X'X) or not (R_X at theta = 0)."""
    for model in ("sleep_weights", "sleep_factor_slope", "cake_interaction"):
        spec = extra_reference()["models"][model]
        df = load_extra_data(model)
        ref = lmmfast.lmer(spec["formula"], df, weights=spec["weights_column"])
        fit = lmmfast.lmer(spec["formula"], dd.from_pandas(df, npartitions=3),
                           weights=spec["weights_column"])
        ours, theirs = fit.anova(), ref.anova()
        assert list(ours.index) == list(theirs.index)
        np.testing.assert_allclose(ours.to_numpy(float), theirs.to_numpy(float), rtol=1e-10)


def test_methods_that_need_rows_say_what_to_do(client):
    formula, df = _spec("sleep_slope")
    fit = lmmfast.lmer(formula, dd.from_pandas(df, npartitions=2))
    calls = [(lambda: fit.simulate(2, seed=1), r"simulate\(\)"),
             (lambda: fit.simulate(2, seed=1, use_re=False), r"simulate\(\)"),
             (lambda: fit.bootstrap(3, seed=1), r"bootstrap\(\)"),
             (lambda: fit.confint(method="bootstrap", n=3),
              r"confint\(method='bootstrap'\).*confint\(method='profile'\)"),
             (lambda: fit.anova(ddf="KR"), r"Kenward-Roger.*ddf='satterthwaite'")]
    for call, match in calls:
        with pytest.raises(DataError, match=match) as info:
            call()
        message = str(info.value)
        assert "needs the model's rows" in message and "ddf.compute()" in message, message
    with pytest.raises(DataError, match="reml must be True or False"):
        lmmfast.lmer(formula, dd.from_pandas(df, npartitions=2), reml=np.array([1, 0]))


def test_rank_check_from_pieces_keeps_earlier_columns():
    from lmmfast.design.fixed import independent_columns, r_factor
    rng = np.random.default_rng(3)
    a = rng.standard_normal((200, 5))
    x = np.column_stack([np.ones(200), a[:, 0], a[:, 0] * 2.0, a[:, 1], np.zeros(200),
                         a[:, 1] - 0.5 * a[:, 0], a[:, 2], a[:, 2] + 1e-5 * a[:, 3],
                         a[:, 2] + 1e-9 * a[:, 4]])
    expected = independent_columns(x)
    pieces = r_factor(iter([x[:70], x[70:150], x[150:]]), x.shape[1])
    np.testing.assert_array_equal(independent_columns(pieces), expected)
    np.testing.assert_array_equal(expected, [0, 1, 3, 6, 7])


NO_DASK = """
import sys
sys.modules["dask"] = None            # as if Dask were not installed
import lmmfast
df = lmmfast.datasets.load("Dyestuff")
try:
    lmmfast.lmer("Yield ~ 1 + (1 | Batch)", "data/*.parquet")
except ImportError as exc:
    print("ImportError:", exc)
print("objective", lmmfast.lmer("Yield ~ 1 + (1 | Batch)", df).objective)
"""


def test_without_dask_the_error_says_what_to_install(tmp_path):
    """In a fresh interpreter whose ``import dask`` fails (the cluster here keeps Dask).

    It runs in an empty directory, so that ``import lmmfast`` finds the installed
    package, not a source checkout in the working directory.
    """
    out = subprocess.run([sys.executable, "-c", NO_DASK], capture_output=True, text=True,
                         timeout=120, check=True, cwd=tmp_path).stdout
    assert "ImportError: fitting a Dask DataFrame or Parquet files needs" in out
    assert "pip install 'lmmfast[dask]'" in out
    objective = float(out.split("objective")[1])
    assert objective == pytest.approx(reference_fit("dyestuff", "REML").objective, rel=1e-12)


DASK_HABITS = [
    ("Reaction - 200 ~ Days + (1 | Subject)", "sleepstudy"),
    ("log(Reaction) ~ sqrt(Days) + I(Days^2) + (1 | Subject)", "sleepstudy"),
    ("Reaction ~ Days + offset(Days) + offset(log(Days + 1)) + (1 | Subject)", "sleepstudy"),
    ("angle ~ recipe * temperature + (temperature || replicate)", "cake"),
]


@pytest.mark.parametrize("formula,dataset", DASK_HABITS)
def test_formula_habits_dask_equals_pandas(client, formula, dataset):
    """Response arithmetic, R's functions, offset terms and ordered factors (contr.poly)
    on partitions give the in-memory fit."""
    df = lmmfast.datasets.load(dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        ref = lmmfast.lmer(formula, df)
        fit = lmmfast.lmer(formula, dd.from_pandas(df, npartitions=3))
    # (numpy's log and sqrt of a partition may differ in the last bit from the whole's)
    assert list(fit.fixef.index) == list(ref.fixef.index)
    assert list(fit.theta.index) == list(ref.theta.index)
    assert fit.objective == pytest.approx(ref.objective, rel=RTOL)
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=RTOL)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=RTOL, atol=1e-10)
    np.testing.assert_allclose(fit.fitted.compute().to_numpy(), ref.fitted, rtol=1e-10)


def test_row_dependent_transforms_need_the_in_memory_path(client):
    ddf = dd.from_pandas(lmmfast.datasets.load("sleepstudy"), npartitions=3)
    for formula, match in (("Reaction ~ factor(Days) + (1 | Subject)", r"factor\(\)"),
                           ("scale(Reaction) ~ Days + (1 | Subject)", r"scale\(\)")):
        with pytest.raises(lmmfast.FormulaError, match=match) as info:
            lmmfast.lmer(formula, ddf)
        assert "ddf.compute()" in str(info.value)
