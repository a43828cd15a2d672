"""Model matrices from formula expressions: formulaic, with a cached fast path.

formulaic interprets the Wilkinson formula (terms, their order, which factors
get treatment contrasts and which full indicator coding).  For expressions
whose factors are all plain columns, the column *recipe* formulaic produced
is remembered: each output column is a product of numeric columns and level
indicators.  Later calls with the same expression and the same column types
and levels rebuild the matrix from the recipe with numpy, which costs
microseconds instead of milliseconds; the recipe is checked against
formulaic's own matrix when it is first made.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix

from .errors import FormulaError

__all__ = ["design_matrix", "required_variables", "identifiers", "lme4_column_name", "split_column_name"]

_RECIPES: dict = {}
_MAX_RECIPES = 256


def lme4_column_name(name: str) -> str:
    """formulaic's column names in R's spelling: ``recipe[T.B]:temp`` -> ``recipeB:temp``."""
    if name == "Intercept":
        return "(Intercept)"
    parts = []
    for part in split_column_name(name):
        if part.endswith("]") and "[" in part:
            var, level = part[:-1].split("[", 1)
            if level.startswith("T."):
                level = level[2:]
            if var.startswith("C(") and var.endswith(")"):
                var = var[2:-1]
            part = var + level
        parts.append(part.replace(" ** ", "^").replace(" / ", "/").replace(" * ", "*"))
    return ":".join(parts)


def split_column_name(name: str) -> list[str]:
    """Split a column name at ':' outside brackets and parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(name):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == ":" and depth == 0:
            parts.append(name[start:i])
            start = i + 1
    parts.append(name[start:])
    return parts


@lru_cache(maxsize=512)
def _parsed(expr: str):
    try:
        return Formula(expr)
    except Exception as exc:  # formulaic's parse errors share no base class
        raise FormulaError(f"cannot parse {expr!r}: {exc}") from None


@lru_cache(maxsize=512)
def required_variables(expr: str) -> frozenset[str]:
    """The data columns an expression reads (functions and literals excluded).

    formulaic does not report the arguments of stateful transforms such as
    ``center(x)``; ``identifiers`` finds those among a frame's columns.
    """
    return frozenset(str(v) for v in _parsed(expr).required_variables)


_IDENT = re.compile(r"`([^`]+)`|([A-Za-z_.][A-Za-z0-9_.]*)")


@lru_cache(maxsize=512)
def identifiers(expr: str) -> frozenset[str]:
    """Every name-like token of an expression (columns, functions, modules)."""
    return frozenset(a or b for a, b in _IDENT.findall(expr))


def _levels(frame, var: str) -> list[str] | None:
    """The levels of a factor column of ``frame``, None for a numeric column."""
    col = frame[var]
    if hasattr(col, "levels"):            # a model frame's Factor
        return col.levels
    if isinstance(col.dtype, pd.CategoricalDtype):
        return list(col.cat.categories)
    return None


def _numeric(frame, var: str) -> np.ndarray:
    col = frame[var]
    return col if isinstance(col, np.ndarray) else col.to_numpy(dtype=np.float64)


def _codes(frame, var: str) -> np.ndarray:
    col = frame[var]
    return col.codes if hasattr(col, "levels") else col.cat.codes.to_numpy()


def _schema(expr: str, frame):
    cols = []
    for v in sorted(required_variables(expr)):
        if v not in frame.columns:
            return None
        levels = _levels(frame, v)
        if levels is not None:
            cols.append((v, tuple(levels)))
            continue
        dtype = frame[v].dtype   # (numpy's str(dtype) runs several Python functions)
        cols.append((v, dtype.str if isinstance(dtype, np.dtype) else str(dtype)))
    return expr, tuple(cols)


def _recipe_from(spec, frame):
    """Per output column: a tuple of (column, level or None) factors; None if not plain."""
    recipe = []
    for structure in spec.structure:
        factors = list(structure.term.factors)
        if any(f.eval_method.value not in ("lookup", "literal") for f in factors):
            return None
        lookups = [f.expr for f in factors if f.eval_method.value == "lookup"]
        for colname in structure.columns:
            if colname == "Intercept":
                recipe.append(())
                continue
            parts = split_column_name(colname)
            if len(parts) != len(lookups):
                return None
            col_recipe = []
            for part, var in zip(parts, lookups):
                cats = _levels(frame, var)
                if part == var and cats is None:
                    col_recipe.append((var, None))
                elif part.startswith(var + "[") and part.endswith("]"):
                    level = part[len(var) + 1:-1]
                    if level.startswith("T."):
                        level = level[2:]
                    if cats is None or level not in cats:
                        return None
                    col_recipe.append((var, cats.index(level)))
                else:
                    return None
            recipe.append(tuple(col_recipe))
    return recipe


def _apply(recipe, frame) -> np.ndarray:
    n = len(frame)
    out = np.empty((n, len(recipe)))
    cache: dict = {}
    for j, factors in enumerate(recipe):
        col = out[:, j]
        col.fill(1.0)
        for var, level in factors:
            if level is None:
                if var not in cache:
                    cache[var] = _numeric(frame, var)
                col *= cache[var]
            else:
                key = (var, "codes")
                if key not in cache:
                    cache[key] = _codes(frame, var)
                col *= cache[key] == level
    return out


def design_matrix(expr: str, frame, what: str, with_spec: bool = False):
    """The model matrix of ``expr`` on ``frame`` and its lme4 column names.

    ``frame`` is a pandas DataFrame or a model frame's ``Columns``.

    ``what`` names the formula part in error messages.  With ``with_spec`` also
    formulaic's ModelSpec when formulaic built the matrix (None on the fast path,
    whose columns are plain columns and level indicators).
    """
    key = _schema(expr, frame)
    hit = _RECIPES.get(key) if key is not None else None
    if hit is not None and hit[0] is not None:
        recipe, names = hit
        x = _apply(recipe, frame)
        return (x, names, None) if with_spec else (x, names)
    pdframe = frame if isinstance(frame, pd.DataFrame) else frame.frame
    try:
        mm = model_matrix(_parsed(expr), pdframe, na_action="ignore")
    except FormulaError:
        raise
    except Exception as exc:
        raise FormulaError(f"cannot build the columns of {what}: {exc}") from None
    x = np.asarray(mm, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(frame):
        x = np.broadcast_to(x.reshape(-1, x.shape[-1] if x.ndim == 2 else 1)[:1],
                            (len(frame), x.shape[-1] if x.ndim == 2 else 1)).copy()
    names = [lme4_column_name(c) for c in mm.columns]
    if key is not None and hit is None:
        recipe = _recipe_from(mm.model_spec, frame)
        if recipe is not None and not np.array_equal(_apply(recipe, frame), x):
            recipe = None
        if len(_RECIPES) >= _MAX_RECIPES:
            _RECIPES.clear()
        _RECIPES[key] = (recipe, names)
    return (x, names, mm.model_spec) if with_spec else (x, names)
