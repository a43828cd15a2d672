"""Bad input: each gives an lmmfast error or warning that names what is wrong.

Every error case also checks that the caller's DataFrame is unchanged.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from lmmfast.errors import (DataError, FormulaError, LmmWarning, MissingValuesWarning,
                            RankDeficiencyWarning)

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture
def small() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 24
    return pd.DataFrame({
        "y": rng.normal(size=n) + np.repeat(rng.normal(size=6), 4),
        "x": rng.normal(size=n),
        "f": pd.Categorical(np.tile(["lo", "mid", "hi"], 8), categories=["lo", "mid", "hi"]),
        "g": np.repeat([f"g{i}" for i in range(6)], 4),
        "w": rng.uniform(0.5, 2.0, size=n),
    })


def raises_unchanged(exc, match, formula, data, **kw):
    """lmer(formula, data, **kw) raises ``exc`` matching ``match``; data is unchanged."""
    before = data.copy(deep=True) if isinstance(data, pd.DataFrame) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        with pytest.raises(exc, match=match) as info:
            lmmfast.lmer(formula, data, **kw)
    assert isinstance(info.value, lmmfast.LmmError)
    if before is not None:
        pd.testing.assert_frame_equal(data, before)
    return info.value


def fit_unchanged(formula, data, **kw):
    """lmer's fit and the warnings it gave; data is unchanged."""
    before = data.copy(deep=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = lmmfast.lmer(formula, data, **kw)
    pd.testing.assert_frame_equal(data, before)
    return fit, caught


# ------------------------------------------------------------ missing columns
@pytest.mark.parametrize("formula,column,where", [
    ("Reaction ~ Dayz + (1 | Subject)", "Dayz", "fixed-effects"),
    ("Reaction ~ Days + log(Dayz) + (1 | Subject)", "Dayz", "fixed-effects"),
    ("Reaction ~ Days + (Dayz | Subject)", "Dayz", "random term"),
    ("Reaction ~ Days + (1 + Days || Subject) + (0 + Dayz | Subject)", "Dayz", "random term"),
    ("Reaction ~ Days + (1 | Subj)", "Subj", "grouping"),
    ("Reaction ~ Days + (1 | Subject/Foo)", "Foo", "grouping"),
    ("Reaction ~ Days + (1 | Subject:Foo)", "Foo", "grouping"),
    ("React ~ Days + (1 | Subject)", "React", "response"),
])
def test_missing_column_in_formula(sleepstudy, formula, column, where):
    raises_unchanged(FormulaError, rf"column '{column}' used in .*{where}.* is not in the data",
                     formula, sleepstudy)


@pytest.mark.parametrize("what", ["weights", "offset"])
def test_missing_weights_or_offset_column(sleepstudy, what):
    raises_unchanged(DataError, rf"{what} column 'nosuch' is not in the data",
                     FORMULA, sleepstudy, **{what: "nosuch"})


# -------------------------------------------------------------- formula syntax
@pytest.mark.parametrize("formula,match", [
    ("Reaction Days + (1 | Subject)", "needs exactly one '~'"),
    ("Reaction ~ Days ~ (1 | Subject)", "needs exactly one '~'"),
    ("~ Days + (1 | Subject)", "no response left of '~'"),
    ("Reaction ~ ", "nothing right of '~'"),
    ("Reaction ~ Days + ((1 | Subject)", r"unbalanced '\('"),
    ("Reaction ~ Days + (1 | Subject))", r"unbalanced '\)'"),
    ("Reaction ~ Days + log(Days + (1 | Subject)", r"unbalanced '\('"),
    ("Reaction ~ Days + 1 | Subject", r"'1 \| Subject'.*must be wrapped in parentheses"),
    ("Reaction ~ Days + 1|Subject", r"'1\|Subject'.*must be wrapped in parentheses"),
    ("Reaction ~ Days + (1 | )", "no grouping factor right of '|'"),
    ("Reaction ~ Days + (1 || )", "no grouping factor right of '|'"),
    ("Reaction ~ Days + (1 | Subject/)", "empty grouping factor"),
    ("Reaction ~ Days + ( | Subject)", "nothing left of '|'"),
    ("Reaction ~ Days + (1 | Subject | Days)", "more than one '|'"),
    ("Reaction ~ Days + (1 | Subject + Days)", "'Subject \\+ Days'.*must be a column name"),
    ("Reaction ~ Days + (0 | Subject)", r"random term \(0 \| Subject\) has no columns"),
    ("Reaction ~ Days + + (1 | Subject)", "empty term"),
    ("Reaction ~ Days", "no random-effects term"),
    ("Reaction ~ 1", "no random-effects term"),
])
def test_formula_syntax(sleepstudy, formula, match):
    raises_unchanged(FormulaError, match, formula, sleepstudy)


def test_formula_not_a_string(sleepstudy):
    raises_unchanged(FormulaError, "formula must be a string, got int", 3, sleepstudy)


# ------------------------------------------------------------------ response
@pytest.mark.parametrize("values", [
    lambda d: d["Reaction"].astype(str),
    lambda d: pd.Categorical(d["Reaction"].round()),
    lambda d: d["Reaction"] > 300,
], ids=["strings", "categorical", "boolean"])
def test_non_numeric_response(sleepstudy, values):
    data = sleepstudy.assign(R=values(sleepstudy))
    raises_unchanged(DataError, "response 'R' must be numeric", "R ~ Days + (1 | Subject)", data)


def test_factor_as_response(sleepstudy):
    raises_unchanged(DataError, "response 'Subject' must be numeric",
                     "Subject ~ Days + (1 | Days)", sleepstudy)


@pytest.mark.parametrize("formula", ["Reaction ~ Days + (1 | Subject)",
                                     "Reaction ~ 1 + (Days | Subject)"])
def test_constant_response(sleepstudy, formula):
    data = sleepstudy.assign(Reaction=250.0)
    raises_unchanged(DataError, "response 'Reaction' is fitted exactly.*constant", formula, data)


def test_constant_response_without_fixed_intercept(sleepstudy):
    data = sleepstudy.assign(Reaction=250.0)
    raises_unchanged(lmmfast.LmmError, "response 'Reaction'.*constant",
                     "Reaction ~ 0 + (1 | Subject)", data)


def test_response_constant_within_groups(sleepstudy):
    data = sleepstudy.assign(Reaction=sleepstudy.Subject.cat.codes.astype(float) * 10.0)
    raises_unchanged(lmmfast.LmmError, "response 'Reaction'.*constant within groups",
                     "Reaction ~ 1 + (1 | Subject)", data)


def test_infinite_response(sleepstudy):
    data = sleepstudy.assign(Reaction=np.r_[sleepstudy.Reaction[:5], np.inf,
                                            sleepstudy.Reaction[6:]])
    raises_unchanged(DataError, r"response 'Reaction' has a non-finite value \(inf\) at row 5",
                     FORMULA, data)


@pytest.mark.parametrize("factor", [1e-200, 1e200])
def test_extreme_response_not_reported_as_constant(sleepstudy, factor):
    data = sleepstudy.assign(Reaction=sleepstudy.Reaction * factor)
    before = data.copy(deep=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lmmfast.lmer(FORMULA, data)
    except lmmfast.LmmError as exc:
        assert "fitted exactly" not in str(exc), str(exc)
    pd.testing.assert_frame_equal(data, before)


# ----------------------------------------------------------- grouping factors
def test_grouping_factor_with_a_level_per_observation(sleepstudy):
    data = sleepstudy.assign(obs=np.arange(len(sleepstudy)))
    raises_unchanged(DataError, r"grouping factor 'obs' .* has 180 levels for 180 observations",
                     "Reaction ~ Days + (1 | obs)", data)


def test_grouping_factor_with_a_level_per_observation_after_dropping(sleepstudy):
    data = sleepstudy.assign(obs=np.arange(len(sleepstudy)))
    data.loc[:9, "Reaction"] = np.nan
    raises_unchanged(DataError, r"grouping factor 'obs' .* has 170 levels for 170 observations",
                     "Reaction ~ Days + (1 | Subject) + (1 | obs)", data)


def test_random_term_with_too_many_effects(small):
    raises_unchanged(DataError, r"random term \(1 \+ x \+ f \| g\) has 24 random effects for 24",
                     "y ~ 1 + (1 + x + f | g)", small)


def test_grouping_factor_with_one_level(sleepstudy):
    data = sleepstudy.assign(one="a")
    raises_unchanged(DataError, r"grouping factor 'one' .* has 1 level: grouping factors must "
                     "have > 1 sampled level", "Reaction ~ Days + (1 | one)", data)


def test_grouping_factor_with_one_level_left(sleepstudy):
    data = sleepstudy.assign(Reaction=sleepstudy.Reaction.where(sleepstudy.Subject == "308"))
    raises_unchanged(DataError, r"grouping factor 'Subject' .* has 1 level",
                     "Reaction ~ Days + (1 | Subject)", data)


# ----------------------------------------------------------- missing values
def test_missing_values_dropped_with_count(sleepstudy):
    data = sleepstudy.copy()
    data.loc[[3, 10, 20], "Reaction"] = np.nan
    data.loc[[20, 30], "Days"] = np.nan
    fit, caught = fit_unchanged(FORMULA, data)
    msgs = [str(w.message) for w in caught if issubclass(w.category, MissingValuesWarning)]
    assert len(msgs) == 1
    assert msgs[0].startswith("4 rows with missing values dropped")
    assert "'Reaction'" in msgs[0] and "'Days'" in msgs[0] and "176 rows remain" in msgs[0]
    assert fit.n_dropped == 4
    assert fit.nobs == 176 == len(fit.y) == len(fit.fitted)
    assert list(fit.row_index) == [i for i in range(180) if i not in (3, 10, 20, 30)]
    ref = lmmfast.lmer(FORMULA, sleepstudy.drop(index=[3, 10, 20, 30]).reset_index(drop=True))
    assert fit.objective == pytest.approx(ref.objective, rel=1e-10)


def test_missing_values_in_grouping_factor_and_weights(sleepstudy):
    data = sleepstudy.assign(Subject=sleepstudy.Subject.astype(object), w=1.0)
    data.loc[7, "Subject"] = None
    data.loc[8, "w"] = np.nan
    fit, caught = fit_unchanged(FORMULA, data, weights="w")
    assert [str(w.message) for w in caught if w.category is MissingValuesWarning] == [
        "2 rows with missing values dropped (in 'Subject', 'weights'); 178 rows remain"]
    assert (fit.n_dropped, fit.nobs) == (2, 178)
    assert len(fit.weights) == 178


def test_one_missing_value_singular_message(sleepstudy):
    data = sleepstudy.copy()
    data.loc[0, "Days"] = np.nan
    fit, caught = fit_unchanged(FORMULA, data)
    assert [str(w.message) for w in caught if w.category is MissingValuesWarning] == [
        "1 row with missing values dropped (in 'Days'); 179 rows remain"]
    assert (fit.n_dropped, fit.nobs) == (1, 179)


def test_all_rows_missing(sleepstudy):
    raises_unchanged(DataError, r"every row has a missing value \(in 'Reaction'\)",
                     FORMULA, sleepstudy.assign(Reaction=np.nan))


def test_all_rows_missing_across_columns(sleepstudy):
    data = sleepstudy.copy()
    data.loc[data.index % 2 == 0, "Reaction"] = np.nan
    data.loc[data.index % 2 == 1, "Days"] = np.nan
    raises_unchanged(DataError, r"every row has a missing value \(in 'Reaction', 'Days'\)",
                     FORMULA, data)


def test_too_few_rows_left(sleepstudy):
    data = sleepstudy.assign(Reaction=np.r_[1.0, 2.0, [np.nan] * (len(sleepstudy) - 2)])
    raises_unchanged(DataError, "2 observations cannot identify 2 fixed effects",
                     FORMULA, data)


# --------------------------------------------------------------- rank deficiency
def test_rank_deficient_numeric_column(sleepstudy):
    data = sleepstudy.assign(D2=2.0 * sleepstudy.Days)
    fit, caught = fit_unchanged("Reaction ~ Days + D2 + (Days | Subject)", data)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RankDeficiencyWarning)]
    assert msgs == ["fixed-effect model matrix is rank deficient so dropping 1 column: D2"]
    assert fit.dropped_columns == ["D2"]
    assert list(fit.fixef.index) == ["(Intercept)", "Days"]
    ref = lmmfast.lmer(FORMULA, sleepstudy)
    assert fit.objective == pytest.approx(ref.objective, rel=1e-10)


def test_rank_deficient_confounded_factor(small):
    data = small.assign(f2=small.f.map({"lo": "a", "mid": "b", "hi": "c"}).astype(object))
    fit, caught = fit_unchanged("y ~ f + f2 + (1 | g)", data)
    assert [str(w.message) for w in caught if w.category is RankDeficiencyWarning] == [
        "fixed-effect model matrix is rank deficient so dropping 2 columns: f2b, f2c"]
    assert fit.dropped_columns == ["f2b", "f2c"]
    assert list(fit.fixef.index) == ["(Intercept)", "fmid", "fhi"]


# --------------------------------------------------------------------- data
def test_empty_data_frame(sleepstudy):
    raises_unchanged(DataError, "the data frame has no rows", FORMULA, sleepstudy.iloc[:0])


@pytest.mark.parametrize("data,kind", [
    ([1, 2, 3], "list"),
    (None, "NoneType"),
    (np.zeros((180, 3)), "ndarray"),
])
def test_data_not_a_data_frame(data, kind):
    raises_unchanged(DataError, f"data must be a pandas DataFrame, got {kind}", FORMULA, data)


def test_data_path_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "no_such_file.parquet")
    raises_unchanged(DataError, "no_such_file.parquet", FORMULA, missing)


def test_duplicated_column(sleepstudy):
    data = pd.concat([sleepstudy, sleepstudy[["Days"]]], axis=1)
    raises_unchanged(DataError, "column 'Days' appears more than once", FORMULA, data)


@pytest.mark.parametrize("column,formula,match", [
    ("Days", FORMULA, "fixed-effects column 'Days' has non-finite values"),
    ("x", "Reaction ~ x + (1 | Subject)", "fixed-effects column 'x' has non-finite values"),
    ("x", "Reaction ~ 1 + (x | Subject)", r"random term \(x \| Subject\) has non-finite values"),
])
@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_predictor(sleepstudy, column, formula, match, value):
    data = sleepstudy.assign(x=sleepstudy.Days.astype(float))
    data.loc[17, column] = value
    raises_unchanged(DataError, match, formula, data)


# -------------------------------------------------------------- weights, offset
def test_weights_wrong_length(sleepstudy):
    raises_unchanged(DataError, "weights has length 10, the data has 180 rows",
                     FORMULA, sleepstudy, weights=np.ones(10))


def test_offset_wrong_length(sleepstudy):
    raises_unchanged(DataError, "offset has length 179, the data has 180 rows",
                     FORMULA, sleepstudy, offset=np.zeros(179))


def test_negative_weight(sleepstudy):
    w = np.ones(len(sleepstudy))
    w[12] = -0.5
    raises_unchanged(DataError, r"weights must be positive; row 12 has weight -0.5",
                     FORMULA, sleepstudy, weights=w)


def test_zero_weights(sleepstudy):
    data = sleepstudy.assign(w=1.0)
    data.loc[[4, 9], "w"] = 0.0
    raises_unchanged(DataError, "weights must be positive; 2 rows have weight 0",
                     FORMULA, data, weights="w")


@pytest.mark.parametrize("what", ["weights", "offset"])
@pytest.mark.parametrize("values,dtype", [
    (lambda d: np.where(d.Days > 4, "a", "b"), "(str|object)"),
    (lambda d: d.Days > 4, "bool"),
], ids=["strings", "boolean"])
def test_non_numeric_weights_or_offset(sleepstudy, what, values, dtype):
    data = sleepstudy.assign(v=values(sleepstudy))
    raises_unchanged(DataError, rf"{what} must be numeric, got dtype {dtype}",
                     FORMULA, data, **{what: "v"})


def test_non_numeric_weights_array(sleepstudy):
    raises_unchanged(DataError, "weights must be numeric",
                     FORMULA, sleepstudy, weights=["heavy"] * len(sleepstudy))


@pytest.mark.parametrize("what", ["weights", "offset"])
def test_infinite_weights_or_offset(sleepstudy, what):
    v = np.ones(len(sleepstudy))
    v[33] = np.inf
    raises_unchanged(DataError, rf"{what} has infinite values \(first at row 33\)",
                     FORMULA, sleepstudy, **{what: v})


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("as_column", [False, True], ids=["array", "column"])
def test_complex_weights(sleepstudy, as_column):
    w = np.ones(len(sleepstudy)) + 0.5j
    data = sleepstudy.assign(w=w)
    raises_unchanged(DataError, "weights must be (numeric|real)", FORMULA, data,
                     weights="w" if as_column else w)


def test_the_columns_a_formula_reads_are_looked_up_per_data_frame():
    """What a formula reads is remembered per columns object: a fit on a frame
    whose columns are renamed, or a new frame with the same names, is checked again."""
    from lmmfast.design.frame import used_columns
    from lmmfast.formula import parse_formula
    data = lmmfast.datasets.load("sleepstudy")
    formula = "Reaction ~ 1 + Days + (1 + Days | Subject)"
    lmmfast.lmer(formula, data)
    with pytest.raises(FormulaError, match="column 'Days' used in .* is not in the data"):
        lmmfast.lmer(formula, data.rename(columns={"Days": "D"}))
    parsed = parse_formula(formula)
    first = used_columns(parsed, data.columns)
    assert used_columns(parsed, data.columns) is first
    again = used_columns(parsed, pd.Index(list(data.columns)))
    assert again == first and again is not first
    with pytest.raises(DataError, match="appears more than once"):
        used_columns(parsed, pd.Index(["Reaction", "Days", "Subject", "Days"]))


def test_category_labels_are_remembered_per_dtype():
    """A categorical column's labels are read once per dtype; a column with other
    categories gets its own, and the list handed out is a copy."""
    from lmmfast.design.factors import _category_labels
    data = lmmfast.datasets.load("sleepstudy")
    cat = data["Subject"].array
    first, strings = _category_labels(cat)
    assert strings and first == [str(c) for c in cat.categories]
    first.append("changed")
    assert _category_labels(cat)[0] == [str(c) for c in cat.categories]
    other = cat.rename_categories({cat.categories[0]: "renamed"})
    assert _category_labels(other)[0][0] == "renamed"
    numeric = pd.Categorical([3, 1, 3])
    assert _category_labels(numeric) == (["1", "3"], False)
    fit = lmmfast.lmer("Reaction ~ 1 + (1 | Subject)",
                       data.assign(Subject=data["Subject"].cat.rename_categories(
                           lambda c: "s" + str(c))))
    assert fit.ranef()["Subject"].index[0].startswith("s")


# -------------------------------------------------- arguments of the methods
@pytest.mark.parametrize("reml,shown", [
    (np.array([True, False]), r"an array of shape \(2,\)"),
    ("yes", "'yes'"),
    (2, "2"),
    (None, "None"),
    (0.5, "0.5"),
], ids=["array", "string", "two", "none", "fraction"])
def test_reml_must_be_a_bool(sleepstudy, reml, shown):
    raises_unchanged(DataError, rf"reml must be True or False, got {shown}",
                     FORMULA, sleepstudy, reml=reml)


@pytest.mark.parametrize("reml", [True, False, 1, 0, np.bool_(True), np.array(False)])
def test_reml_accepts_bools_and_zero_one(sleepstudy, reml):
    assert lmmfast.lmer("Reaction ~ Days + (1 | Subject)", sleepstudy, reml=reml).reml \
        is bool(reml)


@pytest.fixture(scope="module")
def fit():
    return lmmfast.lmer(FORMULA, lmmfast.datasets.load("sleepstudy"))


BAD_ARGUMENTS = [
    # simulate
    ("simulate-seed-string", lambda f: f.simulate(2, seed="abc"), r"seed must be .* got 'abc'"),
    ("simulate-seed-negative", lambda f: f.simulate(2, seed=-1), r"seed must be .* got -1"),
    ("simulate-seed-float", lambda f: f.simulate(2, seed=1.5), r"seed must be .* got 1.5"),
    ("simulate-n-fraction", lambda f: f.simulate(2.5), r"n must be an integer >= 0, got 2.5"),
    ("simulate-n-negative", lambda f: f.simulate(-1), r"n must be an integer >= 0, got -1"),
    ("simulate-n-string", lambda f: f.simulate("3"), r"n must be an integer >= 0, got '3'"),
    ("simulate-use_re", lambda f: f.simulate(1, use_re="no"), r"use_re must be True or False"),
    # bootstrap
    ("bootstrap-n-fraction", lambda f: f.bootstrap(2.5, seed=1),
     r"n must be an integer >= 0, got 2.5"),
    ("bootstrap-n-negative", lambda f: f.bootstrap(-3), r"n must be an integer >= 0, got -3"),
    ("bootstrap-n-bool", lambda f: f.bootstrap(True), r"n must be an integer >= 0, got True"),
    ("bootstrap-seed", lambda f: f.bootstrap(2, seed="abc"), r"seed must be .* got 'abc'"),
    ("bootstrap-n_jobs-zero", lambda f: f.bootstrap(2, n_jobs=0),
     r"n_jobs must be a positive integer, or None or -1 .* got 0"),
    ("bootstrap-n_jobs-fraction", lambda f: f.bootstrap(2, n_jobs=1.5), r"n_jobs .* got 1.5"),
    ("bootstrap-backend", lambda f: f.bootstrap(2, backend="gpu"),
     r"backend must be one of 'process', 'thread', got 'gpu'"),
    ("bootstrap-progress", lambda f: f.bootstrap(2, progress="yes"),
     r"progress must be True or False"),
    # confint
    ("confint-method", lambda f: f.confint(method="exact"),
     r"method must be one of 'profile', 'wald', 'bootstrap', got 'exact'"),
    ("confint-method-type", lambda f: f.confint(method=3), r"method must be one of .* got 3"),
    ("confint-level-above-one", lambda f: f.confint(level=95, method="wald"),
     r"level must be a number between 0 and 1 .* got 95"),
    ("confint-level-string", lambda f: f.confint(level="0.95", method="wald"),
     r"level must be a number between 0 and 1 .* got '0.95'"),
    ("confint-parm-name", lambda f: f.confint(parm="Dayz", method="wald"),
     r"parm: unknown parameter 'Dayz'; parameters are"),
    ("confint-parm-index", lambda f: f.confint(parm=[0, 17], method="wald"),
     r"parm: parameter index 17 out of range 0..5"),
    ("confint-parm-type", lambda f: f.confint(parm=2.5, method="wald"),
     r"parm must be a parameter name, an index or a list of them, got 2.5"),
    ("confint-boot-n", lambda f: f.confint(method="bootstrap", n=2.5),
     r"n must be an integer >= 0, got 2.5"),
    ("confint-boot-frame", lambda f: f.confint(method="bootstrap", boot=[1, 2]),
     r"boot must be the DataFrame returned by lmmfast.bootstrap"),
    ("confint-prof-frame", lambda f: f.confint(prof="profile"),
     r"prof must be the DataFrame returned by lmmfast.profile"),
    ("confint-alphamax", lambda f: f.confint(alphamax=2), r"alphamax must be a number between"),
    # profile
    ("profile-which", lambda f: f.profile(which=".sig09"),
     r"which: unknown parameter '.sig09'"),
    ("profile-alphamax", lambda f: f.profile(alphamax=0), r"alphamax must be a number between"),
    ("profile-maxpts", lambda f: f.profile(maxpts=2.5), r"maxpts must be a positive integer"),
    ("profile-delta", lambda f: f.profile(delta=-1), r"delta must be a finite number > 0"),
    ("profile-devtol", lambda f: f.profile(devtol="small"),
     r"devtol must be a finite number >= 0"),
    # F tests, likelihood-ratio tests
    ("anova-ddf", lambda f: f.anova(ddf="bonferroni"), r"unknown ddf 'bonferroni'"),
    ("anova-ddf-none", lambda f: f.anova(ddf=None), r"use ddf='satterthwaite'"),
    ("coef_table-ddf", lambda f: f.coef_table(ddf=1), r"unknown ddf 1"),
    ("lrt-one-model", lambda f: lmmfast.anova(f), r"two or more models"),
    ("lrt-names", lambda f: lmmfast.anova(f, f, names=["a"]),
     r"names has 1 label for 2 models"),
    ("lrt-names-string", lambda f: lmmfast.anova(f, f, names="ab"),
     r"names must be a list of 2 row labels"),
    ("lrt-names-distinct", lambda f: lmmfast.anova(f, f, names=["a", "a"]),
     r"names: the model names must be distinct"),
    ("lrt-refit", lambda f: lmmfast.anova(f, f, refit="no"), r"refit must be True or False"),
    # predict
    ("predict-allow_new_levels", lambda f: f.predict(allow_new_levels="yes"),
     r"allow_new_levels must be True or False, got 'yes'"),
]


@pytest.mark.parametrize("call,match", [(c, m) for _, c, m in BAD_ARGUMENTS],
                         ids=[name for name, _, _ in BAD_ARGUMENTS])
def test_bad_method_argument(fit, call, match):
    """Each bad argument gives a DataError (also a ValueError) naming it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LmmWarning)
        with pytest.raises(lmmfast.LmmError, match=match) as info:
            call(fit)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("seed", [None, 3, [1, 2], np.random.SeedSequence(4),
                                  np.random.default_rng(5), np.int64(6)],
                         ids=["none", "int", "list", "seedsequence", "generator", "numpy-int"])
def test_simulate_accepts_every_kind_of_seed(fit, seed):
    assert fit.simulate(2, seed=seed).shape == (fit.nobs, 2)


def test_bootstrap_count_may_be_an_integral_float(fit):
    assert fit.bootstrap(2.0, seed=1, n_jobs=1).shape[0] == 2


BAD_PLOT_ARGUMENTS = [
    ("caterpillar-order", lambda p, f: p.caterpillar(f, order="size"),
     r"order must be one of 'value', 'width', got 'size'"),
    ("caterpillar-n", lambda p, f: p.caterpillar(f, n=0), r"n must be a positive integer"),
    ("caterpillar-level", lambda p, f: p.caterpillar(f, level=1.5),
     r"level must be a number between 0 and 1"),
    ("caterpillar-group", lambda p, f: p.caterpillar(f, group="Subj"),
     r"group: no grouping factor 'Subj'"),
    ("subject_panels-order", lambda p, f: p.subject_panels(f, order="size"),
     r"order must be one of 'slope', 'intercept', 'mean', 'level', got 'size'"),
    ("subject_panels-ncols", lambda p, f: p.subject_panels(f, ncols=0),
     r"ncols must be a positive integer"),
    ("subject_panels-x", lambda p, f: p.subject_panels(f, x="Dayz"),
     r"x: 'Dayz' is neither a column"),
    ("residual_plots-max_points", lambda p, f: p.residual_plots(f, max_points=0),
     r"max_points must be a positive integer"),
    ("residual_plots-seed", lambda p, f: p.residual_plots(f, seed="abc"),
     r"seed must be .* got 'abc'"),
    ("profile_zeta-levels", lambda p, f: p.profile_zeta(f, levels=(0.5, 95)),
     r"levels must be a number between 0 and 1 .* got 95"),
    ("profile_zeta-input", lambda p, f: p.profile_zeta("fit"),
     r"fit_or_profile must be a fitted model or the DataFrame of its profile"),
    ("save_diagnostics-dpi", lambda p, f: p.save_diagnostics(f, "unused", dpi=-10),
     r"dpi must be a finite number > 0"),
    ("save_diagnostics-max_levels", lambda p, f: p.save_diagnostics(f, "unused", max_levels=0),
     r"max_levels must be a positive integer"),
]


@pytest.mark.parametrize("call,match", [(c, m) for _, c, m in BAD_PLOT_ARGUMENTS],
                         ids=[name for name, _, _ in BAD_PLOT_ARGUMENTS])
def test_bad_plot_argument(fit, call, match):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from lmmfast import plot
    with pytest.raises(DataError, match=match):
        call(plot, fit)


# ------------------------------------------------------ an unbuilt source tree
def test_import_from_an_unbuilt_source_tree(tmp_path):
    """Without the compiled modules the import says the core is not built and how to
    build it (not Python's 'partially initialized module ... circular import')."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    source = Path(lmmfast.__file__).parent
    shutil.copytree(source, tmp_path / "lmmfast",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    assert not list((tmp_path / "lmmfast").glob("_cholesky*"))
    code = ("import sys\n"
            # the editable install's finder would import the built package instead
            "sys.meta_path[:] = [f for f in sys.meta_path\n"
            "                    if 'lmmfast' not in repr(f).lower()]\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "import lmmfast\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: lmmfast's compiled core is not built"), done.stderr
    assert "lmmfast._cholesky" in last and "pip install ." in last
    assert "--no-build-isolation -e ." in last and "circular import" not in done.stderr
