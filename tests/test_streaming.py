"""A pandas frame reduced in bounded row chunks gives the in-memory fit, in bounded memory."""

from __future__ import annotations

import json
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast import model as model_module
from lmmfast.design import crossprod as blocks
from lmmfast.errors import LmmWarning
from lmmfast.model import LinearMixedModel
from lmmfast.streaming import StreamedLinearMixedModel

from conftest import FIXTURES, extra_reference, load_extra_data, reference, reference_fit

SMALL = [m for m in reference()["models"] if m != "insteval"]


def _assert_same_fit(ours, ref, rtol=1e-10):
    assert np.array_equal(ours._a, ref._a)
    assert ours.objective == pytest.approx(ref.objective, rel=rtol)
    np.testing.assert_allclose(ours.theta, ref.theta, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(ours.fixef, ref.fixef, rtol=rtol)
    assert ours.sigma == pytest.approx(ref.sigma, rel=rtol)


@pytest.mark.parametrize("model", SMALL)
@pytest.mark.parametrize("chunk_rows", [7, 64])
def test_streamed_equals_in_memory(model, chunk_rows):
    spec = reference()["models"][model]
    df = lmmfast.datasets.load(spec["dataset"])
    fit = StreamedLinearMixedModel.from_frame(spec["formula"], df, chunk_rows=chunk_rows).fit()
    ref = reference_fit(model, "REML")
    _assert_same_fit(fit, ref)
    np.testing.assert_allclose(fit.fitted, ref.fitted, rtol=1e-12)
    np.testing.assert_allclose(fit.residuals, ref.residuals, rtol=1e-12,
                               atol=1e-12 * np.abs(ref.fitted).max())
    assert fit.summary() == ref.summary()


def test_streamed_insteval_cross_products():
    spec = reference()["models"]["insteval"]
    df = lmmfast.datasets.load("InstEval")
    streamed = StreamedLinearMixedModel.from_frame(spec["formula"], df, chunk_rows=10_000)
    in_memory = LinearMixedModel(spec["formula"], df)
    assert np.array_equal(streamed._a, in_memory._a)
    assert streamed.criterion(in_memory.lower_bounds.clip(0) + 0.5) == \
        in_memory.criterion(in_memory.lower_bounds.clip(0) + 0.5)


@pytest.mark.parametrize("model", [m for m in extra_reference()["models"]
                                   if m != "sleep_zero_weight"])
def test_streamed_extra_models(model):
    """Weights and offsets (as arrays), missing values, rank deficiency, formula features."""
    spec = extra_reference()["models"][model]
    df = load_extra_data(model)
    w = None if spec["weights_column"] is None else df[spec["weights_column"]].to_numpy()
    off = None if spec["offset_column"] is None else df[spec["offset_column"]].to_numpy()
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always", LmmWarning)
        fit = StreamedLinearMixedModel.from_frame(spec["formula"], df, weights=w, offset=off,
                                                  chunk_rows=50).fit()
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always", LmmWarning)
        ref = LinearMixedModel(spec["formula"], df, weights=w, offset=off).fit()
    assert [str(m.message) for m in ours] == [str(m.message) for m in theirs]
    _assert_same_fit(fit, ref)
    assert fit.dropped_columns == ref.dropped_columns and fit.n_dropped == ref.n_dropped
    np.testing.assert_allclose(fit.fitted, ref.fitted, rtol=1e-12)
    if ref.weights is not None:
        np.testing.assert_array_equal(fit.weights, ref.weights)


def test_weights_log_determinant_is_order_independent():
    rng = np.random.default_rng(0)
    w = rng.uniform(0.1, 10, 100_001)
    total = blocks.dd_sum(np.log(w))
    assert blocks.dd_sum(np.log(w[::-1])) == total
    assert blocks.dd_sum(np.log(rng.permutation(w))) == total


def test_streaming_is_automatic_above_the_threshold(monkeypatch):
    df = lmmfast.datasets.load("sleepstudy")
    formula = "Reaction ~ 1 + Days + (1 + Days | Subject)"
    ref = reference_fit("sleep_slope", "REML")   # cached in memory before the threshold drops
    monkeypatch.setattr(model_module, "STREAM_MIN_ROWS", 100)
    fit = lmmfast.lmer(formula, df)
    assert isinstance(fit, StreamedLinearMixedModel) and fit.x is None
    _assert_same_fit(fit, ref)
    np.testing.assert_allclose(fit.predict(re_form="~0"), ref.predict(re_form="~0"),
                               rtol=1e-12)
    assert type(LinearMixedModel(formula, df, streaming=False)) is LinearMixedModel
    # levels that depend on the rows at hand (C() of a numeric column) cannot be
    # found piece by piece: the in-memory path takes such a formula
    coded = LinearMixedModel("Reaction ~ 1 + C(Days) + (1 | Subject)", df)
    assert type(coded) is LinearMixedModel
    with pytest.raises(lmmfast.FormulaError, match=r"C\(Days\)"):
        LinearMixedModel("Reaction ~ 1 + C(Days) + (1 | Subject)", df, streaming=True)
    with pytest.raises(lmmfast.DataError, match="refit"):
        fit.refit(df["Reaction"].to_numpy())


def _crossed(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g1 = rng.integers(0, 2000, n)
    g2 = rng.integers(0, 100, n)
    x = rng.standard_normal(n)
    y = 1.0 + 0.5 * x + 0.8 * rng.standard_normal(2000)[g1] \
        + 0.4 * rng.standard_normal(100)[g2] + rng.standard_normal(n)
    return pd.DataFrame({"y": y, "x": x,
                         "g1": pd.Categorical.from_codes(g1.astype(np.int16),
                                                         [f"s{i}" for i in range(2000)]),
                         "g2": pd.Categorical.from_codes(g2.astype(np.int8),
                                                         [f"t{i}" for i in range(100)])})


FORMULA = "y ~ 1 + x + (1 | g1) + (1 | g2)"


def test_streamed_chunks_of_a_larger_frame_equal_in_memory():
    df = _crossed(300_000, seed=1)
    streamed = StreamedLinearMixedModel.from_frame(FORMULA, df, chunk_rows=40_000).fit()
    ref = LinearMixedModel(FORMULA, df).fit()
    _assert_same_fit(streamed, ref)


def test_streamed_continuous_random_slope():
    rng = np.random.default_rng(8)
    n, groups = 4000, 80
    g = rng.integers(0, groups, n)
    x = 1.7 * rng.standard_normal(n) + 0.3
    y = 1 + 0.5 * x + rng.standard_normal(groups)[g] \
        + 0.4 * rng.standard_normal(groups)[g] * x + rng.standard_normal(n)
    df = pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})
    formula = "y ~ 1 + x + (1 + x | g)"
    fit = StreamedLinearMixedModel.from_frame(formula, df, chunk_rows=700).fit()
    ref = LinearMixedModel(formula, df).fit()
    np.testing.assert_array_equal(fit._theta_scale(), ref._theta_scale())
    _assert_same_fit(fit, ref)


def test_streamed_memory_is_bounded():
    """Peak traced memory of a 3-million-row streamed fit against the size of its model matrices."""
    n = 3_000_000
    df = _crossed(n)
    # X (2 columns), y, and per term z (1 column) and refs: what the in-memory path holds
    matrices = n * (2 + 1 + 2 * 2) * 8
    tracemalloc.start()
    try:
        fit = lmmfast.lmer(FORMULA, df)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(fit, StreamedLinearMixedModel)
    assert fit.nobs == n and fit.converged
    assert peak < matrices / 4, f"peak {peak / 2**20:.0f} MiB, matrices {matrices / 2**20:.0f} MiB"
    assert fit.fixef["x"] == pytest.approx(0.5, abs=0.01)


# ------------------------------------------- inference on a model without rows
ANOVA_MODELS = ["sleep_factor_slope", "cake_interaction", "cake_nointercept", "cake_colon",
                "sleep_quadratic", "sleep_rankdef", "sleep_weights"]


def _streamed_and_in_memory(model: str, kind: str = "REML", weights=None):
    spec = extra_reference()["models"][model]
    df = load_extra_data(model)
    w = spec["weights_column"] if weights is None else weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        streamed = StreamedLinearMixedModel.from_frame(
            spec["formula"], df, reml=(kind == "REML"), weights=w, chunk_rows=50).fit()
        in_memory = LinearMixedModel(spec["formula"], df, reml=(kind == "REML"),
                                     weights=w).fit()
    return streamed, in_memory


@pytest.mark.parametrize("kind", ["REML", "ML"])
@pytest.mark.parametrize("model", ANOVA_MODELS)
def test_streamed_anova_equals_in_memory(model, kind):
    """Satterthwaite's type III F tests need only A: a streamed fit gives the in-memory
    table (type I hypotheses of one-term models from R_X at theta = 0, or from the
    reduction's unweighted X'X for weighted data)."""
    streamed, in_memory = _streamed_and_in_memory(model, kind)
    assert streamed.x is None
    ours, ref = streamed.anova(), in_memory.anova()
    assert list(ours.index) == list(ref.index)
    np.testing.assert_allclose(ours.to_numpy(float), ref.to_numpy(float), rtol=1e-10)
    lmertest = json.loads((FIXTURES / "lmertest_extra.json").read_text())
    expected = lmertest["models"][model]["fits"][kind]["anova_satterthwaite"]
    for column, key in (("F value", "f_value"), ("DenDF", "den_df")):
        values = np.array([np.nan if v is None else v for v in expected[key]], dtype=float)
        np.testing.assert_allclose(ours[column], values, rtol=1e-3)


def test_streamed_anova_of_a_weighted_one_term_factor_model():
    """lmerTest's hypotheses of a single term come from the unweighted X'X, which the
    weighted A does not give: the reduction keeps it (a 2-row F test, whose df depends
    on the rows of the hypothesis)."""
    df = lmmfast.datasets.load("sleepstudy")
    df = df.assign(f=pd.Categorical(np.tile(["a", "b", "c"], 60)),
                   w=np.random.default_rng(3).uniform(0.5, 2.0, len(df)))
    formula = "Reaction ~ 0 + f + (1 | Subject)"
    streamed = StreamedLinearMixedModel.from_frame(formula, df, weights="w",
                                                   chunk_rows=50).fit()
    in_memory = lmmfast.lmer(formula, df, weights="w")
    np.testing.assert_allclose(streamed.anova().to_numpy(float),
                               in_memory.anova().to_numpy(float), rtol=1e-10)
    np.testing.assert_allclose(streamed._xtx, in_memory.x.T @ in_memory.x, rtol=1e-14)


def test_streamed_anova_of_covariates_far_from_zero():
    """X'X from the factor at theta = 0 in X's own basis, also where A is reduced to a
    working basis (columns and response far from zero)."""
    df = lmmfast.datasets.load("sleepstudy")
    df = df.assign(D=df.Days + 1e5, R=df.Reaction + 1e7)
    formula = "R ~ D + (1 | Subject)"
    streamed = StreamedLinearMixedModel.from_frame(formula, df, chunk_rows=50).fit()
    in_memory = lmmfast.lmer(formula, df)
    np.testing.assert_allclose(streamed.anova().to_numpy(float),
                               in_memory.anova().to_numpy(float), rtol=1e-10)


ROWS_NEEDED = [
    ("simulate", lambda fit: fit.simulate(2, seed=1), r"simulate\(\) needs the model's rows"),
    ("bootstrap", lambda fit: fit.bootstrap(3, seed=1), r"bootstrap\(\) needs the model's rows"),
    ("confint", lambda fit: fit.confint(method="bootstrap", n=3),
     r"confint\(method='bootstrap'\) needs .*confint\(method='profile'\)"),
    ("kenward-roger", lambda fit: fit.anova(ddf="kenward-roger"),
     r"Kenward-Roger.* needs .*ddf='satterthwaite'"),
    ("kr-coef", lambda fit: fit.coef_table(ddf="KR"), r"Kenward-Roger.* needs the model's rows"),
]


@pytest.mark.parametrize("call,match", [(c, m) for _, c, m in ROWS_NEEDED],
                         ids=[name for name, _, _ in ROWS_NEEDED])
def test_streamed_methods_that_need_rows_say_what_to_do(call, match):
    fit = StreamedLinearMixedModel.from_frame("Reaction ~ Days + (Days | Subject)",
                                              lmmfast.datasets.load("sleepstudy"),
                                              chunk_rows=50).fit()
    with pytest.raises(lmmfast.DataError, match=match) as info:
        call(fit)
    assert "streaming=False" in str(info.value)


def test_streamed_simulate_from_the_fitted_values_and_wald_profile_intervals():
    """What needs only A or the chunk-wise fitted values works on a streamed fit."""
    df = lmmfast.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    streamed = StreamedLinearMixedModel.from_frame(formula, df, chunk_rows=50).fit()
    ref = reference_fit("sleep_slope", "REML")
    np.testing.assert_allclose(streamed.simulate(3, seed=5, use_re=False),
                               ref.simulate(3, seed=5, use_re=False), rtol=1e-12)
    pd.testing.assert_frame_equal(streamed.confint(method="wald"), ref.confint(method="wald"),
                                  rtol=1e-10)
    np.testing.assert_allclose(streamed.confint(parm=".sigma")[["lower", "upper"]],
                               ref.confint(parm=".sigma")[["lower", "upper"]], rtol=1e-6)


@pytest.mark.parametrize("reml", [np.array([True, False]), "yes", 2, None])
def test_streamed_reml_must_be_a_bool(reml):
    with pytest.raises(lmmfast.DataError, match="reml must be True or False"):
        StreamedLinearMixedModel.from_frame("Reaction ~ Days + (1 | Subject)",
                                            lmmfast.datasets.load("sleepstudy"), reml=reml)


# ------------------------------------------------- R's formula habits, in pieces
def _habit_data(name: str):
    """The data sets of test_formula_habits.py, by name."""
    sleep = lmmfast.datasets.load("sleepstudy")
    if name == "sleep":
        return sleep
    if name == "cake":
        return lmmfast.datasets.load("cake")
    if name == "cbpp":
        return lmmfast.datasets.load("cbpp")
    if name == "offset_na":
        data = sleep.assign(o=sleep.Days.astype(float))
        data.loc[5, "o"] = np.nan
        return data
    if name == "dotted":
        return sleep.rename(columns={"Days": "my.x", "Subject": "my.g", "Reaction": "my.y"})
    if name == "quoted":
        return sleep.rename(columns={"Days": "my x", "Subject": "sujet é"})
    if name == "non_ascii":
        return sleep.rename(columns={"Days": "jóur", "Subject": "sujeté"})
    if name.startswith("ordered"):
        k = int(name[-1])
        rng = np.random.default_rng(k)
        g = np.repeat(np.arange(8), 3 * k)
        f = np.tile(np.arange(k), 24)
        return pd.DataFrame({"y": rng.normal(size=len(g)) + f, "g": g,
                             "f": pd.Categorical.from_codes(f, [f"L{i}" for i in range(k)],
                                                            ordered=True)})
    if name == "nullable_bool":
        data = sleep.assign(b=pd.array(np.where(sleep.Days > 4, True, False), dtype="boolean"))
        data.loc[3, "b"] = pd.NA
        return data
    raise KeyError(name)


HABITS = [
    ("Reaction - 200 ~ Days + (1 | Subject)", "sleep", {}),
    ("Reaction + 1 ~ Days + (1 | Subject)", "sleep", {}),
    ("log(Reaction) ~ Days + (1 | Subject)", "sleep", {}),
    ("Reaction^2/1000 ~ Days + (1 | Subject)", "sleep", {}),
    ("sqrt(Reaction) * 2 ~ Days + (1 | Subject)", "sleep", {}),
    ("(Reaction - 250) / 10 ~ Days + (1 | Subject)", "sleep", {}),
    ("incidence/size ~ period + (1 | herd)", "cbpp", {}),
    ("Reaction ~ sqrt(Days) + (1 | Subject)", "sleep", {}),
    ("Reaction ~ abs(Days - 4) + (1 | Subject)", "sleep", {}),
    ("Reaction ~ log1p(Days) + (1 | Subject)", "sleep", {}),
    ("Reaction ~ exp(Days/10) + (1 | Subject)", "sleep", {}),
    ("Reaction ~ log(Days + 1) + (1 | Subject)", "sleep", {}),
    ("Reaction ~ as.numeric(Days) + (1 | Subject)", "sleep", {}),
    ("Reaction ~ I(Days^2) + (1 | Subject)", "sleep", {}),
    ("log(Reaction) ~ as.numeric(Days) + (1 | Subject)", "sleep", {}),
    ("Reaction ~ Days + (sqrt(Days) | Subject)", "sleep", {}),
    ("angle ~ as.numeric(recipe) + (1 | replicate)", "cake", {}),
    ("Reaction ~ Days + offset(Days) + (1 | Subject)", "sleep", {}),
    ("Reaction ~ Days + offset(Days) + (1 | Subject)", "sleep", {"offset": "Days"}),
    ("Reaction ~ Days + offset(Days) + offset(log(Days + 1)) + (1 | Subject)", "sleep",
     {"offset": np.linspace(-1, 1, 180)}),
    ("Reaction ~ Days + offset(o) + (1 | Subject)", "offset_na", {}),
    ("my.y ~ my.x + I(my.x^2) + (my.x | my.g)", "dotted", {}),
    ("Reaction ~ `my x` + (`my x` | `sujet é`)", "quoted", {}),
    ("Reaction ~ Q('my x') + (Q('my x') | Q('sujet é'))", "quoted", {}),
    ('Reaction ~ Q("my x") + (1 + Q("my x") | `sujet é`)', "quoted", {}),
    ("Reaction ~ jóur + (jóur | sujeté)", "non_ascii", {}),
    ("y ~ f + (1 | g)", "ordered3", {}),
    ("y ~ f + (1 | g)", "ordered6", {}),
    ("y ~ 0 + f + (1 | g)", "ordered4", {}),
    ("angle ~ recipe * temperature + (1 | recipe:replicate)", "cake", {}),
    ("angle ~ recipe + (temperature | replicate)", "cake", {}),
    ("Reaction ~ b + (1 | Subject)", "nullable_bool", {}),
    ("Reaction ~ Days + (1 + Days*b || Subject)", "nullable_bool", {}),
]


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        return fn(*args, **kw)


def _same_as_in_memory(fit, ref, rtol=1e-10):
    assert list(fit.fixef.index) == list(ref.fixef.index)
    assert list(fit.theta.index) == list(ref.theta.index)
    assert fit.nobs == ref.nobs
    assert fit.objective == pytest.approx(ref.objective, rel=rtol)
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=rtol, atol=1e-10)


@pytest.mark.parametrize("formula,data,kw", HABITS, ids=[f"{f}-{d}" for f, d, _ in HABITS])
def test_streamed_formula_habits_equal_in_memory(formula, data, kw):
    """Every formula habit of the in-memory path gives the in-memory fit in chunks:
    response arithmetic, R's functions and names, offset terms (summed with offset=),
    ordered factors (contr.poly), nullable booleans."""
    df = _habit_data(data)
    ref = _quiet(lambda: LinearMixedModel(formula, df, streaming=False, **kw).fit())
    fit = _quiet(lambda: StreamedLinearMixedModel.from_frame(formula, df, chunk_rows=7,
                                                             **kw).fit())
    _same_as_in_memory(fit, ref)
    np.testing.assert_allclose(fit.fitted, ref.fitted, rtol=1e-10)
    if ref.offset is not None:
        np.testing.assert_allclose(fit.offset, ref.offset, rtol=1e-15)
    auto = _quiet(lambda: LinearMixedModel(formula, df, streaming=True, **kw).fit())
    assert isinstance(auto, StreamedLinearMixedModel)
    _same_as_in_memory(auto, ref)


def test_streamed_offset_term_is_added():
    """lme4: Reaction ~ Days + offset(Days) has the Days slope 10.467 - 1."""
    df = lmmfast.datasets.load("sleepstudy")
    fit = StreamedLinearMixedModel.from_frame("Reaction ~ Days + offset(Days) + (1 | Subject)",
                                              df, chunk_rows=7).fit()
    ref = reference()["models"]["sleep_int"]["fits"]["REML"]
    np.testing.assert_allclose(fit.fixef, np.array(ref["fixef"]["estimate"]) - [0.0, 1.0],
                               rtol=1e-6)
    nd = df.iloc[[0, 15]].assign(Days=[20.0, 30.0])
    beta = fit.fixef.to_numpy()
    want = beta[0] + beta[1] * nd.Days + nd.Days + fit.ranef()["Subject"].loc[
        nd.Subject.astype(str), "(Intercept)"].to_numpy()
    np.testing.assert_allclose(fit.predict(nd), want.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(fit.predict(re_form="~0"),
                               beta[0] + beta[1] * df.Days + df.Days, rtol=1e-12)


@pytest.mark.parametrize("formula", [
    "angle ~ recipe * temperature + (1 | replicate)",
    "angle ~ recipe + (temperature | replicate)",
])
def test_streamed_ordered_factor_codes_and_predicts_as_in_memory(formula):
    cake = lmmfast.datasets.load("cake")
    assert cake.temperature.cat.ordered
    ref = _quiet(lambda: LinearMixedModel(formula, cake, streaming=False).fit())
    fit = _quiet(lambda: StreamedLinearMixedModel.from_frame(formula, cake,
                                                             chunk_rows=20).fit())
    assert "temperature.L" in list(fit.fixef.index) + fit.remats[0].cnames
    _same_as_in_memory(fit, ref)
    nd = cake.iloc[::9]
    np.testing.assert_allclose(fit.predict(nd), ref.predict(nd), rtol=1e-10)
    assert fit.summary() == ref.summary()


@pytest.mark.parametrize("formula,match", [
    ("Reaction ~ factor(Days) + (1 | Subject)", r"factor\(\).*Categorical"),
    ("Reaction ~ as.factor(Days) + (1 | Subject)", r"as\.factor\(\)"),
    ("Reaction ~ sqrt(Days) + factor(Days) + (1 | Subject)", r"factor\(\)"),
    ("Reaction ~ Days + (factor(Days > 4) | Subject)", r"random term.*factor\(\)"),
    ("Reaction ~ scale(Days) + (1 | Subject)", r"scale\(\)"),
    ("Reaction ~ poly(Days, 2) + (1 | Subject)", r"poly\(\)"),
    ("Reaction ~ Days + (scale(Days) | Subject)", r"scale\(\)"),
    ("Reaction ~ lag(Days) + (1 | Subject)", r"lag\(\)"),
    ("scale(Reaction) ~ Days + (1 | Subject)", r"the response .*scale\(\)"),
    ("Reaction ~ Days + offset(scale(Days)) + (1 | Subject)", r"offset\(scale\(Days\)\)"),
])
def test_streamed_row_dependent_transforms_need_the_in_memory_path(formula, match):
    """Transforms whose values or levels depend on all rows are refused in pieces, with
    the way to fit in memory; above the threshold such a formula is fitted in memory."""
    df = lmmfast.datasets.load("sleepstudy")
    for build in (lambda: StreamedLinearMixedModel.from_frame(formula, df, chunk_rows=7),
                  lambda: LinearMixedModel(formula, df, streaming=True)):
        with pytest.raises(lmmfast.FormulaError, match=match) as info:
            build()
        assert "streaming=False" in str(info.value)


def test_streamed_factor_of_numeric_falls_back_to_memory_above_threshold(monkeypatch):
    df = lmmfast.datasets.load("sleepstudy")
    monkeypatch.setattr(model_module, "STREAM_MIN_ROWS", 100)
    fit = LinearMixedModel("Reaction ~ factor(Days) + (1 | Subject)", df)
    assert type(fit) is LinearMixedModel
    assert fit.fixef_names[-1] == "factor(Days)9"


@pytest.mark.parametrize("kind", ["dict", "polars", "pyarrow"])
def test_streamed_tables_convert_the_used_columns(kind):
    df = lmmfast.datasets.load("sleepstudy").assign(w=np.linspace(0.5, 2, 180))
    formula = "Reaction ~ Days + offset(Days) + (Days | Subject)"
    if kind == "dict":
        data = {c: df[c].to_numpy() for c in df}
    elif kind == "polars":
        data = pytest.importorskip("polars").from_pandas(df)
    else:
        data = pytest.importorskip("pyarrow").Table.from_pandas(df)
    ref = LinearMixedModel(formula, df, weights="w", streaming=False).fit()
    for fit in (StreamedLinearMixedModel.from_frame(formula, data, weights="w", chunk_rows=7),
                LinearMixedModel(formula, data, weights="w", streaming=True)):
        assert isinstance(fit, StreamedLinearMixedModel)
        _same_as_in_memory(fit.fit(), ref)
