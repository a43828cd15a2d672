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
    from lmmfast.modelframe import used_columns
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
    from lmmfast.modelframe import _category_labels
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
