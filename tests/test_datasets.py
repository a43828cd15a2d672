"""Tests for lmmfast.datasets, the bundled lme4 datasets."""

import doctest
import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from conftest import reference, shared_reference
from lmmfast import datasets
from lmmfast.errors import DataError

SCHEMA = json.loads(
    (resources.files("lmmfast.datasets") / "data" / "schema.json").read_text(encoding="utf-8")
)
NAMES = sorted(SCHEMA)
NUMERIC_DTYPES = {"numeric": np.float64, "integer": np.int64}

@pytest.fixture(scope="module")
def frames():
    """Load every dataset once for the read-only tests."""
    return {name: datasets.load(name) for name in NAMES}


def test_names():
    assert datasets.names() == [
        "Dyestuff", "Dyestuff2", "InstEval", "Pastes",
        "Penicillin", "VerbAgg", "cake", "cbpp", "epil", "sleepstudy",
    ]
    assert NAMES == datasets.names()


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_columns(frames, name):
    spec = SCHEMA[name]
    frame = frames[name]
    assert frame.shape == (spec["nrow"], len(spec["columns"]))
    assert list(frame.columns) == [column["name"] for column in spec["columns"]]
    assert isinstance(frame.index, pd.RangeIndex)


@pytest.mark.parametrize("name", NAMES)
def test_column_types(frames, name):
    frame = frames[name]
    for column in SCHEMA[name]["columns"]:
        values = frame[column["name"]]
        assert values.notna().all(), column["name"]
        if column["type"] == "factor":
            assert isinstance(values.dtype, pd.CategoricalDtype), column["name"]
            # ordered only where R's is and lmmfast keeps it so (cake$temperature)
            assert values.cat.ordered == ((name, column["name"]) == ("cake", "temperature"))
            assert all(type(label) is str for label in values.cat.categories)
        else:
            assert values.dtype == NUMERIC_DTYPES[column["type"]], column["name"]


@pytest.mark.parametrize("name", NAMES)
def test_factor_levels(frames, name):
    frame = frames[name]
    for column in SCHEMA[name]["columns"]:
        if column["type"] != "factor":
            continue
        categories = list(frame[column["name"]].cat.categories)
        assert len(categories) == column["nlevels"], column["name"]
        if "levels" in column:
            assert categories == column["levels"], column["name"]


def test_insteval_level_orders(frames):
    frame = frames["InstEval"]
    assert list(frame["dept"].cat.categories) == [
        "15", "5", "10", "12", "6", "7", "4", "8", "9", "14", "1", "3", "11", "2",
    ]
    for column in ("s", "d"):
        categories = list(frame[column].cat.categories)
        assert categories == sorted(categories, key=int)
        assert set(categories) == set(frame[column].astype(str))
    assert list(frame["d"].cat.categories[:5]) == ["1", "6", "7", "8", "12"]
    assert frame["s"].cat.categories[-1] == "2972"


def test_numeric_looking_labels_stay_strings(frames):
    subject = frames["sleepstudy"]["Subject"]
    assert subject.iloc[0] == "308"
    assert (subject == "308").sum() == 10
    assert frames["cake"]["temperature"].iloc[0] == "175"


@pytest.mark.parametrize("name", NAMES)
def test_values_match_reference_csv(frames, name):
    """The bundled data equal R's export of it in ../shared/reference/data
    (glmm/data for the GLMM datasets)."""
    where = ("glmm", "data") if name in GLMM_DATASETS else ("data",)
    reference = pd.read_csv(shared_reference(*where, f"{name}.csv"), dtype=str)
    frame = frames[name]
    assert list(frame.columns) == list(reference.columns)
    for column in SCHEMA[name]["columns"]:
        label = column["name"]
        if column["type"] == "factor":
            assert frame[label].astype(str).tolist() == reference[label].tolist(), label
        else:
            parse = float if column["type"] == "numeric" else int
            expected = np.array([parse(text) for text in reference[label]])
            assert np.array_equal(frame[label].to_numpy(), expected), label
            assert frame[label].to_numpy().tobytes() == expected.tobytes(), label


GLMM_DATASETS = ("VerbAgg", "epil")   # from lme4's glmer fixture


def test_schema_matches_lme4_results():
    results = reference()
    assert set(SCHEMA) == set(results["datasets"]) | set(GLMM_DATASETS)
    for name, dataset in results["datasets"].items():
        assert SCHEMA[name]["nrow"] == dataset["nrow"], name
        assert SCHEMA[name]["columns"] == dataset["columns"], name


@pytest.mark.parametrize("name", GLMM_DATASETS)
def test_glmm_datasets_as_r(frames, name):
    """VerbAgg (lme4) and epil (MASS) as the glmer fixture's R data: R's factor
    levels (VerbAgg's ``mode`` is want, do) and the same values."""
    from pathlib import Path
    fixture = Path(__file__).parent / "fixtures" / "glmm"
    info = json.loads((fixture / "lme4_glmer_results.json").read_text())["datasets"][name]
    assert SCHEMA[name]["nrow"] == info["rows"]
    assert SCHEMA[name]["columns"] == info["columns"]
    raw = pd.read_csv(fixture / f"{name}.csv")
    frame = frames[name]
    for column in info["columns"]:
        got = frame[column["name"]]
        if column["type"] == "factor":
            assert list(got.cat.categories) == column["levels"]
            assert got.astype(str).tolist() == raw[column["name"]].astype(str).tolist()
        else:
            np.testing.assert_array_equal(got.to_numpy(), raw[column["name"]].to_numpy())
    assert list(datasets.load("VerbAgg")["mode"].cat.categories) == ["want", "do"]


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("sleepstudy", "sleepstudy"),
        ("SleepStudy", "sleepstudy"),
        ("dyestuff", "Dyestuff"),
        ("DYESTUFF2", "Dyestuff2"),
        ("penicillin", "Penicillin"),
        ("CBPP", "cbpp"),
        ("verbagg", "VerbAgg"),
        ("EPIL", "epil"),
        ("InstEval", "InstEval"),
        ("insteval", "InstEval"),
        ("INSTEVAL", "InstEval"),
    ],
)
def test_name_lookup_ignores_case(frames, alias, name):
    frame = datasets.load(alias)
    assert frame.dtypes.equals(frames[name].dtypes)
    assert frame.equals(frames[name])


def test_load_returns_fresh_copy():
    first = datasets.load("sleepstudy")
    original = first.copy(deep=True)
    first.iloc[0, 0] = -1.0
    first["Subject"] = first["Subject"].cat.rename_categories(lambda label: "S" + label)
    first["extra"] = 1
    first.loc[5, "Days"] = 100.0
    second = datasets.load("sleepstudy")
    assert second is not first
    pd.testing.assert_frame_equal(second, original)


@pytest.mark.parametrize("bad", ["sleepstudy2", "", "sleep study", "Dyestuff3", None])
def test_unknown_name_raises(bad):
    with pytest.raises(DataError) as info:
        datasets.load(bad)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert repr(bad) in message
    for name in NAMES:
        assert name in message


def test_docstring_examples():
    result = doctest.testmod(datasets)
    assert result.attempted > 0
    assert result.failed == 0


def test_load_names_the_frame():
    """``attrs["name"]`` is the canonical name, which summaries print as lme4's Data line."""
    assert datasets.load("SLEEPSTUDY").attrs == {"name": "sleepstudy"}
    first = datasets.load("Dyestuff")
    first.attrs["name"] = "changed"
    assert datasets.load("Dyestuff").attrs["name"] == "Dyestuff", "each load is a new frame"


def test_shared_reference_skip_says_what_is_missing():
    with pytest.raises(pytest.skip.Exception, match=r"shared/reference, beside this checkout"):
        shared_reference("no-such-file.csv")
