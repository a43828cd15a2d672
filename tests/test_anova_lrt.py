"""Likelihood-ratio tests (``lmmfast.anova.anova``) against lme4's ``anova()``.

References: ``extras.lrt_sleep_int_vs_sleep_slope_ML`` of the shared reference
(two ML fits) and ``fixtures/lme4_profile.json`` (``make_lme4_profile.R``):
REML fits that lme4 refits by ML, three nested models, models given out of
``npar`` order.  Tolerance 1e-6 relative (p-values: 1e-5, since a p-value of
1e-10 moves by ~1e-5 relative per 1e-9 change in Chisq).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import lmmfast
from conftest import FIXTURES, assert_rel, reference, reference_fit
from lmmfast.anova import COLUMNS, RefitWarning, anova

PROFILE_REF = json.loads((FIXTURES / "lme4_profile.json").read_text())


def _check_table(table: pd.DataFrame, ref_table: dict, row_names: list[str]):
    assert list(table.columns) == COLUMNS
    assert list(table.index) == row_names
    for col in COLUMNS:
        theirs = np.array(ref_table[col], dtype=np.float64)
        ours = table[col].to_numpy(dtype=np.float64)
        assert (np.isnan(ours) == np.isnan(theirs)).all(), col
        ok = ~np.isnan(theirs)
        assert_rel(ours[ok], theirs[ok], 1e-5 if col == "Pr(>Chisq)" else 1e-6, col)


def test_lrt_sleep_int_vs_slope_ml():
    ref = reference()["extras"]["lrt_sleep_int_vs_sleep_slope_ML"]
    a, b = reference_fit("sleep_int", "ML"), reference_fit("sleep_slope", "ML")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # ML fits: no refit, no warning
        table = anova(a, b, names=["sleep_int_ML", "sleep_slope_ML"])
    assert ref["columns"] == COLUMNS
    _check_table(table, ref["table"], ref["models"])
    assert table["Chisq"].iloc[1] == pytest.approx(ref["Chisq"], rel=1e-6)
    assert table["Df"].iloc[1] == ref["Df"]
    assert table["Pr(>Chisq)"].iloc[1] == pytest.approx(ref["p_value"], rel=1e-5)
    assert table["npar"].dtype.kind == "i"


@pytest.mark.parametrize("label", sorted(PROFILE_REF["anova"]))
def test_lrt_matches_lme4(label):
    case = PROFILE_REF["anova"][label]
    data = lmmfast.datasets.load(case["dataset"])
    names = list(case["models"])
    fits = [lmmfast.lmer(f, data, reml=case["REML"]) for f in case["models"].values()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = anova(*fits, names=names)
    refit_msgs = [str(w.message) for w in caught if issubclass(w.category, RefitWarning)]
    assert refit_msgs == case["messages"]      # "refitting model(s) with ML (instead of REML)"
    _check_table(table, case["table"], case["row_names"])
    if case["REML"]:
        assert sorted(table.attrs["refitted"]) == sorted(names)
        assert all(f.reml for f in fits)     # the fits given are left as they were
    assert table.attrs["formulas"][names[0]] == case["models"][names[0]]


def test_errors_and_options(sleepstudy):
    full = reference_fit("sleep_slope", "ML")
    small = lmmfast.lmer("Reaction ~ 1 + Days + (1 | Subject)", sleepstudy.iloc[:170], reml=False)
    with pytest.raises(ValueError, match="same size of dataset"):
        anova(full, small)
    logy = lmmfast.lmer("np.log(Reaction) ~ 1 + Days + (1 | Subject)", sleepstudy, reml=False)
    with pytest.raises(ValueError, match="different responses"):
        anova(full, logy)
    with pytest.raises(ValueError, match="two or more"):
        anova(full)
    with pytest.raises(ValueError, match="names"):
        anova(full, full, names=["a"])
    with pytest.raises(TypeError):
        anova(full, "model")


def test_no_refit_and_equal_npar():
    reml = reference_fit("sleep_int", "REML")
    ml = reference_fit("sleep_int", "ML")
    with pytest.warns(lmmfast.errors.LmmWarning, match="some models fit with REML"):
        table = anova(reml, ml, refit=False)
    # same number of parameters: Df 0 and no p-value
    assert table["Df"].iloc[1] == 0 and np.isnan(table["Pr(>Chisq)"].iloc[1])
    assert list(table.index) == ["MODEL1", "MODEL2"]           # stable order
    assert table["logLik"].iloc[0] == pytest.approx(reml.loglik)
