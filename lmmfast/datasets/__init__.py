"""Example datasets from the R packages lme4 and MASS.

The ten datasets ship with lmmfast, so fits can be checked against lme4's
published results without R:

============  =====  ====================================================
name           rows  columns
============  =====  ====================================================
sleepstudy      180  Reaction, Days, Subject (18 levels)
Dyestuff         30  Batch (6 levels), Yield
Dyestuff2        30  Batch (6 levels), Yield
Penicillin      144  diameter, plate (24 levels), sample (6 levels)
Pastes           60  strength, batch (10), cask (3), sample (30, batch:cask)
cake            270  replicate (15), recipe (3), temperature (6), angle, temp
InstEval      73421  s (2972), d (1128), studage, lectage, service, dept, y
cbpp             56  herd (15), incidence, size, period (4)
VerbAgg        7584  r2 (N/Y), Anger, Gender, btype, situ, mode, id (316), item (24)
epil            236  y, trt (2), base, age, V4, subject (59), period, lbase, lage
============  =====  ====================================================

Factors are pandas Categoricals with R's level order; their categories are
strings, also where the labels look like numbers ("308").  ``cake$temperature``
is ordered, as in R (so a model codes it by polynomial contrasts,
``temperature.L``, ...); the other factors are unordered (``InstEval$studage``
and ``InstEval$lectage``, ordered in R, included, as lme4's reference fits use
them unordered).

>>> from lmmfast import datasets
>>> datasets.load("sleepstudy").shape
(180, 3)
>>> list(datasets.load("InstEval")["dept"].cat.categories[:4])
['15', '5', '10', '12']
"""

import json
from functools import cache
from importlib import resources

import pandas as pd

from ..errors import DataError
from .simulate import simulate

__all__ = ["load", "names", "simulate"]

_DATA = resources.files(__name__) / "data"
_NUMERIC_DTYPES = {"numeric": "float64", "integer": "int64"}
_ORDERED = {("cake", "temperature")}   # ordered factors of R's data that load ordered


@cache
def _schema():
    """Return the packaged schema: ``{name: {file, nrow, columns}}``."""
    return json.loads((_DATA / "schema.json").read_text(encoding="utf-8"))


def names():
    """Return the sorted names of the bundled datasets.

    >>> from lmmfast import datasets
    >>> datasets.names()[:3]
    ['Dyestuff', 'Dyestuff2', 'InstEval']
    """
    return sorted(_schema())


def _r_level_order(labels):
    """Order factor labels as R does: numerically if all are integers, else sorted."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _column_dtype(column, dataset):
    """Return the dtype to read a schema column of ``dataset`` with."""
    if column["type"] != "factor":
        return _NUMERIC_DTYPES[column["type"]]
    if "levels" in column:
        return pd.CategoricalDtype(column["levels"],
                                   ordered=(dataset, column["name"]) in _ORDERED)
    return "str"


def load(name):
    """Return the dataset ``name`` as a new DataFrame.

    The lookup ignores case. Factor columns are Categoricals with R's level
    order and string categories (``cake$temperature`` ordered), ``numeric`` columns float64 and
    ``integer`` columns int64; rows are in the R package's order.
    ``attrs["name"]`` is the dataset's name, which a fit's summary prints as
    lme4's ``Data:`` line.

    >>> from lmmfast import datasets
    >>> df = datasets.load("Dyestuff")
    >>> df.dtypes.astype(str).tolist()
    ['category', 'float64']
    >>> list(df["Batch"].cat.categories)
    ['A', 'B', 'C', 'D', 'E', 'F']

    Raises :class:`lmmfast.errors.DataError` (a ``ValueError``) for a name
    that is not a bundled dataset.
    """
    schema = _schema()
    by_key = {key.lower(): key for key in schema}
    canonical = by_key.get(name.lower()) if isinstance(name, str) else None
    if canonical is None:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(names())}")
    spec = schema[canonical]
    dtypes = {column["name"]: _column_dtype(column, canonical) for column in spec["columns"]}
    compression = "gzip" if spec["file"].endswith(".gz") else None
    with (_DATA / spec["file"]).open("rb") as handle:
        frame = pd.read_csv(handle, dtype=dtypes, compression=compression)
    for column, dtype in dtypes.items():
        if dtype == "str":
            factor = frame[column].astype("category")
            labels = _r_level_order(factor.cat.categories)
            frame[column] = factor.cat.reorder_categories(labels)
    frame.attrs["name"] = canonical   # printed by summaries as lme4's "Data: sleepstudy"
    return frame
