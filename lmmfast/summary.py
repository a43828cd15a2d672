"""The printed summary of a fitted model, laid out as lme4's ``summary(lmer(...))``.

lme4 users read this output at a glance, so the layout and the number
formatting follow R: numbers in a column share R's ``format()`` (a common
number of decimals giving every value ``digits`` significant digits), the
fixed-effects table follows ``printCoefmat`` and the fixed-effects
correlation labels follow ``abbreviate``.

>>> import lmmfast
>>> fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)",
...                    lmmfast.datasets.load("sleepstudy"))
>>> for line in format_summary(fit).splitlines()[1:5]:
...     print(line)
Formula: Reaction ~ 1 + Days + (1 + Days | Subject)
   Data: sleepstudy
<BLANKLINE>
REML criterion at convergence: 1743.6
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import SINGULAR_MESSAGE, FormulaError, LmmWarning
from .formula import find_bar, split_top, double_vert_terms
from .varcorr import group_labels

__all__ = ["format_summary", "format_pvalues", "coef_table_lines", "formula_lines", "format_quantiles", "lme4_formula",
           "data_name", "warn_if_singular", "CORRELATION_MAX", "SINGULAR_MESSAGE"]

CORRELATION_MAX = 12
"""Largest number of fixed effects whose correlation matrix is printed (lme4.summary.cor.max)."""

_KP_MAX = 22

"""lme4's message for a fit with a variance estimated as 0 or a correlation as +/-1."""


# --------------------------------------------------------------------------
# R's number formatting


def _is_missing(value) -> bool:
    """True for a missing var1/var2 of a VarCorr table (None, NaN or pandas' NA)."""
    return value is None or bool(pd.isna(value))


def _scientific(x: float, digits: int) -> tuple[bool, int, int, bool]:
    """R's ``scientific()``: sign, decimal exponent and significant digits of ``x``.

    Returns ``(negative, kpower, nsig, rounding_widens)`` for ``x`` rounded to
    ``digits`` significant digits, ``nsig`` without trailing zeros.
    """
    if x == 0:
        return False, 0, 1, False
    r = abs(x)
    mantissa, exponent = f"{r:.{digits - 1}e}".split("e")
    kpower = int(exponent)
    nsig = max(1, len(mantissa.replace(".", "").rstrip("0")))
    rgt = min(max(digits - kpower, 0), _KP_MAX)
    widens = 0 < kpower <= _KP_MAX and r < 10.0 ** kpower - 0.5 / 10.0 ** rgt
    return x < 0, kpower, nsig, widens


def _nonfinite(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    return "Inf" if x > 0 else "-Inf"


def format_numbers(values, digits: int = 7, nsmall: int = 0) -> list[str]:
    """R's ``format(values, digits = digits, nsmall = nsmall)``: common layout, common width.

    Fixed notation with the fewest decimals that show every value to
    ``digits`` significant digits, unless scientific notation is narrower.

    >>> format_numbers([612.1002, 35.07171, 654.94], digits=4)
    ['612.10', ' 35.07', '654.94']
    >>> format_numbers([1763.94, 174.0], digits=7)
    ['1763.94', ' 174.00']
    """
    values = [float(v) + 0.0 for v in values]   # R prints a negative zero as 0
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        neg = False
        rgt = mxl = mxsl = mxns = -(10 ** 9)
        mnl = 10 ** 9
        for v in finite:
            negative, kpower, nsig, widens = _scientific(v, digits)
            left = kpower + 1 - widens
            neg = neg or negative
            rgt = max(rgt, nsig - left)
            mxl, mnl = max(mxl, left), min(mnl, left)
            mxsl = max(mxsl, negative + max(left, 1))
            mxns = max(mxns, nsig)
        if mxl < 0:
            mxsl = 1 + neg
        rgt = max(rgt, 0)
        width_fixed = mxsl + rgt + (rgt != 0)
        exp_digits = 2 if (mxl > 100 or mnl <= -99) else 1
        sci_decimals = mxns - 1
        width_sci = neg + (sci_decimals > 0) + sci_decimals + 4 + exp_digits
        if width_fixed <= width_sci:
            decimals = max(rgt, nsmall)
            spec = f".{decimals}f"
        else:
            spec = f".{sci_decimals}e"
    texts = [format(v, spec) if math.isfinite(v) else _nonfinite(v) for v in values]
    width = max(map(len, texts), default=0)
    return [t.rjust(width) for t in texts]


def _zapsmall(values: np.ndarray, digits: int) -> np.ndarray:
    """R's ``zapsmall(values, digits)``: round so that values tiny next to the largest become 0.

    R's rule: ``round(x, max(0, digits - log10(mx)))``, ``mx`` the largest
    magnitude, where ``round`` takes the nearest whole number of decimals
    (``floor(d + 0.5)``): 5 digits keep 5 decimals for ``mx`` = 2.68, 4 for
    ``mx`` = 5.18 and 3 for ``mx`` = 132.5.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.abs(values[np.isfinite(values)])
    mx = finite.max() if finite.size else 0.0
    places = max(0.0, digits - math.log10(mx)) if mx > 0 else digits
    return np.round(values, math.floor(places + 0.5))


def _starts_word(s: list[str], i: int) -> bool:
    return s[i - 1].isspace()


def _ends_word(s: list[str], i: int) -> bool:
    return not s[i - 1].isspace() and (i + 1 == len(s) or s[i + 1].isspace())


# What R's abbreviate drops, in this order, scanning each name from its end
# (the first character is always kept): lower-case vowels ending a word, other
# lower-case vowels not starting a word, then the same for lower-case letters,
# then any character not starting a word.
_DROP_ORDER = (
    lambda s, i: s[i] in "aeiou" and _ends_word(s, i),
    lambda s, i: s[i] in "aeiou" and not _starts_word(s, i),
    lambda s, i: s[i].islower() and _ends_word(s, i),
    lambda s, i: s[i].islower() and not _starts_word(s, i),
    lambda s, i: not _starts_word(s, i) and not s[i].isspace(),
)


def _abbreviate_one(name: str, minlength: int) -> str:
    """R's abbreviation of one name without leading or trailing blanks (use.classes = TRUE)."""
    s = list(name)
    spaces = sum(c.isspace() for c in s)  # word boundaries, not counted in the length
    for drop in _DROP_ORDER:
        for i in range(len(s) - 1, 0, -1):
            if len(s) - spaces <= minlength:
                break
            if drop(s, i):
                del s[i]
    if len(s) > minlength:
        s = [c for i, c in enumerate(s) if i == 0 or not c.isspace()]
    return "".join(s)


def abbreviate(names, minlength: int) -> list[str]:
    """R's ``abbreviate(names, minlength)``: lengthen abbreviations until they are unique.

    >>> abbreviate(["(Intercept)", "recipeB", "recipeB:temp"], 6)
    ['(Intr)', 'recipB', 'rcpB:t']
    """
    names = [n.strip() for n in names]
    unique = list(dict.fromkeys(names))
    result = [""] * len(unique)
    todo = list(range(len(unique)))
    while todo:
        for i in todo:
            result[i] = _abbreviate_one(unique[i], minlength)
        clash = {a for a in result if result.count(a) > 1}
        todo = [i for i, a in enumerate(result) if a in clash]
        minlength += 1
    lookup = dict(zip(unique, result))
    return [lookup[n] for n in names]


# --------------------------------------------------------------------------
# The formula as lme4 prints it


def _double_vert_text(term: str) -> str | None:
    """lme4's ``expandDoubleVerts`` text of a term ``(e || g)``; None for another term."""
    if not (term.startswith("(") and term.endswith(")")):
        return None
    inner = term[1:-1]
    bar = find_bar(inner) if split_top(inner, "")[0][1] == inner else None
    if bar is None or not bar[2]:
        return None
    expr, group, _ = bar
    try:
        intercept, labels = double_vert_terms(expr.strip(), term)
    except FormulaError:
        return None
    exprs = (["1"] if intercept else []) + [f"0 + {lab}" for lab in labels]
    group = re.sub(r"\s*([:/])\s*", r"\1", group.strip())
    return "(" + " + ".join(f"({e} | {group})" for e in exprs) + ")"


def lme4_formula(formula: str) -> str:
    """The formula as lme4 prints it: each ``(e || g)`` expanded as lme4 expands it.

    >>> lme4_formula("Reaction ~ Days + (Days || Subject)")
    'Reaction ~ Days + ((1 | Subject) + (0 + Days | Subject))'
    """
    sides = split_top(formula, "~")
    if len(sides) != 2:
        return formula
    for _, piece in split_top(sides[1][1], "+-"):
        expanded = _double_vert_text(piece.strip())
        if expanded is not None:
            formula = formula.replace(piece.strip(), expanded)
    return formula


_DEPARSE_CUTOFF = 60
_BREAK_AFTER = re.compile(r" (?:~|\+|-|\*|\|\|?|%in%) |, ")


def formula_lines(formula: str) -> list[str]:
    """The formula as R's ``deparse`` splits it (width.cutoff = 60): a line ends
    after a binary operator or an argument's comma once it is longer than 60
    characters, and the next is indented by four spaces.

    >>> formula_lines("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | period)")
    ['cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 |', '    period)']
    """
    text = lme4_formula(formula)
    lines, start, indent = [], 0, ""
    for match in _BREAK_AFTER.finditer(text):
        if len(indent) + match.end() - start > _DEPARSE_CUTOFF:
            lines.append(indent + text[start:match.end()].rstrip())
            start, indent = match.end(), "    "
    lines.append(indent + text[start:])
    return lines


# --------------------------------------------------------------------------
# Text layout


def _render_table(header: list[str], rows: list[list[str]], rownames: list[str] | None = None,
                  right: bool = False) -> list[str]:
    """Lines of a character matrix as R's ``print(quote = FALSE)`` lays it out.

    Each column is as wide as its widest cell or header, columns are
    separated by one space and row names are left-aligned.  Cells (and
    headers) are right-aligned when ``right``, else left-aligned.
    """
    rownames = rownames if rownames is not None else [""] * len(rows)
    name_width = max(map(len, rownames), default=0)
    widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(header)]
    justify = str.rjust if right else str.ljust

    def line(name, cells):
        parts = [name.ljust(name_width)] + [justify(c, w) for c, w in zip(cells, widths)]
        return " ".join(parts).rstrip()

    return [line("", header)] + [line(n, r) for n, r in zip(rownames, rows)]


def _named_values(names: list[str], texts: list[str]) -> list[str]:
    """Lines of a named vector as R prints it: right-aligned, one common width."""
    width = max(map(len, names + texts))
    return [" ".join(t.rjust(width) for t in row) for row in (names, texts)]


# --------------------------------------------------------------------------
# Sections


_DDF_TITLES = {"satterthwaite": "Satterthwaite's", "kenward-roger": "Kenward-Roger's"}


def _title_lines(title: str, cls: str, width: int = 80) -> list[str]:
    """R's ``cat(strwrap(title, width - 2, exdent = 2), " [", cls, "]", sep = "", fill = TRUE)``."""
    if len(title) + 5 + len(cls) <= width:
        return [f"{title} ['{cls}']"]
    pieces: list[str] = []
    for word in title.split(" "):
        if pieces and len(pieces[-1]) + 1 + len(word) < width - 2:
            pieces[-1] += " " + word
        else:
            pieces.append(("  " if pieces else "") + word)
    lines = [""]
    for piece in pieces + [" [", cls, "]"]:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return lines


def _header(fit, call: dict, ddf: str | None = None) -> list[str]:
    method = "REML" if fit.reml else "maximum likelihood"
    if ddf is None:
        lines = [f"Linear mixed model fit by {method} ['lmerMod']"]
    else:
        title = f"Linear mixed model fit by {method}. t-tests use {_DDF_TITLES[ddf]} method"
        lines = _title_lines(title, "lmerModLmerTest")
    lines.append("Formula: " + "\n".join(formula_lines(fit.formula)))
    data = call.get("data") or getattr(fit, "data_name", None)
    if data:
        lines.append(f"   Data: {data}")
    for label, attribute in (("Weights", "weights"), (" Offset", "offset")):
        if getattr(fit, f"has_{attribute}"):
            lines.append(f"{label}: {call.get(attribute) or 'supplied'}")
    return lines


def _criterion(fit) -> list[str]:
    if fit.reml:
        value = format_numbers([round(fit.objective, 1)])[0]
        return [f"REML criterion at convergence: {value}"]
    names = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
    stats = [fit.aic, fit.bic, fit.loglik, fit.deviance]
    df_resid = fit.nobs - fit.df_params
    texts = format_numbers([round(v, 1) for v in stats] + [float(df_resid)])
    return _named_values(names, texts[:-1] + [str(df_resid)])


def scaled_residuals(fit) -> np.ndarray:
    """lme4's scaled Pearson residuals: residual * sqrt(prior weight) / sigma."""
    resid = np.asarray(fit.residuals, dtype=np.float64)
    if fit.weights is not None:
        resid = resid * np.sqrt(np.asarray(fit.weights, dtype=np.float64))
    return resid / fit.sigma


def format_quantiles(values, digits: int = 4) -> list[str]:
    """The two lines lme4 prints for the quantiles of residuals (``.prt.resids``).

    ``print(zapsmall(quantile(values), digits + 1), digits = digits)``: the
    five quantiles rounded by R's ``zapsmall``, then printed with a common
    number of decimals that shows each to ``digits`` significant digits.

    >>> format_quantiles([-2.4517815, -0.59687, -0.0948516, 0.6069559, 2.679714])[1]
    '-2.45178 -0.59687 -0.09485  0.60696  2.67971'
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    quantiles = _zapsmall(np.quantile(values, [0, 0.25, 0.5, 0.75, 1]), digits + 1)
    names = ["Min", "1Q", "Median", "3Q", "Max"]
    return _named_values(names, format_numbers(quantiles, digits))


def _residuals(fit, digits: int) -> list[str]:
    return ["Scaled residuals:"] + format_quantiles(fit.residual_quantiles(), digits)


@dataclass
class _VcTerm:
    """One random-effects term of a VarCorr table."""

    group: str
    names: list[str] = field(default_factory=list)
    sds: list[float] = field(default_factory=list)
    correlations: list[tuple[str, str, float]] = field(default_factory=list)

    def correlation_matrix(self) -> np.ndarray:
        k = len(self.names)
        corr = np.eye(k)
        index = {name: i for i, name in enumerate(self.names)}
        for a, b, r in self.correlations:
            corr[index[a], index[b]] = corr[index[b], index[a]] = r
        return corr


def _vc_terms(varcorr) -> tuple[list[_VcTerm], float | None]:
    """Split a VarCorr table into its terms and the residual standard deviation."""
    terms: list[_VcTerm] = []
    residual_sd = None
    for row in varcorr.itertuples(index=False):
        if row.grp == "Residual" and _is_missing(row.var1):
            residual_sd = float(row.sdcor)
        elif _is_missing(row.var2):
            last = terms[-1] if terms else None
            if last is None or last.group != row.grp or last.correlations:
                terms.append(_VcTerm(row.grp))
            terms[-1].names.append(str(row.var1))
            terms[-1].sds.append(float(row.sdcor))
        else:
            terms[-1].correlations.append((str(row.var1), str(row.var2), float(row.sdcor)))
    split = []
    for term in terms:
        if len(term.names) > 1 and not term.correlations:
            split.extend(_VcTerm(term.group, [n], [s]) for n, s in zip(term.names, term.sds))
        else:
            split.append(term)
    for term, label in zip(split, group_labels([t.group for t in split])):
        term.group = label
    return split, residual_sd


def _lower_triangle(corr: np.ndarray, decimals: int, ncols: int) -> list[list[str]]:
    """Cells of a correlation matrix's strict lower triangle, ``ncols`` per row.

    As lme4: the whole matrix is rounded and formatted together (so every
    cell has the same width), then the diagonal and upper triangle are blanked.
    """
    k = corr.shape[0]
    texts = np.array(format_numbers(np.round(corr.ravel(), decimals), nsmall=decimals))
    texts = texts.reshape(k, k)
    return [[texts[i, j] if j < i else "" for j in range(ncols)] for i in range(k)]


def _random_effects(fit, digits: int) -> list[str]:
    terms, residual_sd = _vc_terms(fit.varcorr)
    sds = [sd for term in terms for sd in term.sds]
    if residual_sd is not None:
        sds.append(residual_sd)
    variances = format_numbers([sd * sd for sd in sds], digits)
    std_devs = format_numbers(sds, digits)
    ncorr = max((len(t.names) for t in terms), default=1) - 1
    rows = []
    for term in terms:
        corr = _lower_triangle(term.correlation_matrix(), 2, ncorr)
        for i, name in enumerate(term.names):
            rows.append([term.group if i == 0 else "", name] + corr[i])
    if residual_sd is not None:
        rows.append(["Residual", ""] + [""] * ncorr)
    for row, variance, std_dev in zip(rows, variances, std_devs):
        row[2:2] = [variance, std_dev]
    header = ["Groups", "Name", "Variance", "Std.Dev."]
    if ncorr:
        header += ["Corr"] + [""] * (ncorr - 1)
    return ["Random effects:"] + _render_table(header, rows)


def _observations(fit) -> list[str]:
    groups = "; ".join(f"{name}, {n}" for name, n in fit.ngrps.items())
    lines = [f"Number of obs: {fit.nobs}, groups:  {groups}"]
    if fit.n_dropped:
        plural = "s" if fit.n_dropped > 1 else ""
        lines.append(f"  ({fit.n_dropped} observation{plural} deleted due to missingness)")
    return lines


def _coef_cells(coef_se: np.ndarray, tvalues: np.ndarray, digits: int) -> list[list[str]]:
    """Coefficient columns (Estimate, Std. Error[, df]) and t value cells as R's ``printCoefmat``.

    The coefficient columns share one rounding and format, set by the
    smallest non-zero magnitude among them.
    """
    magnitudes = np.abs(coef_se[np.isfinite(coef_se) & (coef_se != 0)])
    digmin = 1 + (math.floor(math.log10(magnitudes.min())) if magnitudes.size else 0)
    rounded = np.round(coef_se, max(1, digits - digmin))
    cells = np.array(format_numbers(rounded.ravel(), digits), dtype=object).reshape(coef_se.shape)
    shown_zero = np.vectorize(lambda text: float(text) == 0, otypes=[bool])(cells)
    hidden = (coef_se != 0) & shown_zero & np.isfinite(coef_se)
    if hidden.any():
        cells[hidden] = format_numbers(coef_se[hidden], max(1, digits - 1))
    tcells = format_numbers(np.round(tvalues, max(1, min(5, digits - 1))), digits)
    table = np.column_stack([cells, np.array(tcells, dtype=object)])
    table[np.isnan(np.column_stack([coef_se, tvalues]))] = "NA"
    return table.tolist()


_EPS = float(np.finfo(np.float64).eps)  # R's .Machine$double.eps
_STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, "."), (1.0, " "))
SIGNIF_LEGEND = ("Signif. codes:  0 \u2018***\u2019 0.001 \u2018**\u2019 0.01 \u2018*\u2019 "
                 "0.05 \u2018.\u2019 0.1 \u2018 \u2019 1")


def format_pvalues(pvalues, digits: int) -> list[str]:
    """R's ``format.pval(pvalues, digits, eps = .Machine$double.eps)``.

    >>> format_pvalues([0.687, 1.339e-07, 1e-20], 3)
    ['0.687', '1.34e-07', '< 2e-16']
    """
    pv = np.asarray(pvalues, dtype=np.float64)
    out = ["NA"] * len(pv)
    is0 = pv < _EPS
    rest = np.flatnonzero(~is0 & ~np.isnan(pv))
    expo = np.floor(np.log10(np.where(pv[rest] > 0, pv[rest], 1e-50)))
    fixed = (expo >= -3) | ((expo == -4) & (digits > 1))
    for group in (rest[fixed], rest[~fixed]):
        for i, text in zip(group, format_numbers(pv[group], digits)):
            out[i] = text
    if is0.any():
        small = max(1, digits - 2)
        if rest.size:
            width = max(len(out[i]) for i in rest)
            if small > 1 and small + 6 > width:
                small = max(1, width - 7)
            sep = "" if small == 1 and width <= 6 else " "
        else:
            sep = "" if small == 1 else " "
        eps_text = format_numbers([_EPS], small)[0]
        for i in np.flatnonzero(is0):
            out[i] = f"<{sep}{eps_text}"
    return out


def _stars(p: float) -> str:
    if np.isnan(p):
        return ""
    return next(symbol for cut, symbol in _STARS if p <= cut)


def _fixed_effects(fit, digits: int, ddf: str | None = None) -> list[str]:
    names = [str(n) for n in fit.fixef.index]
    if not names:
        return ["No fixed effect coefficients"]
    if ddf is None:
        estimates = fit.fixef.to_numpy(dtype=np.float64)
        stderrs = fit.stderr.reindex(fit.fixef.index).to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            tvalues = estimates / stderrs
        rows = _coef_cells(np.column_stack([estimates, stderrs]), tvalues, digits)
        return ["Fixed effects:"] + _render_table(["Estimate", "Std. Error", "t value"], rows,
                                                   names, right=True)
    from .fixed_tests import coef_table
    return coef_table_lines(coef_table(fit, ddf=ddf), digits)


def coef_table_lines(table: pd.DataFrame, digits: int) -> list[str]:
    """"Fixed effects:" as R's ``printCoefmat`` with significance stars: the
    coefficient columns, then the test statistic (``t value`` or ``z value``)
    and its p-value (``Pr(>|t|)`` or ``Pr(>|z|)``), the table's last two columns."""
    names = [str(n) for n in table.index]
    stat, pcol = table.columns[-2], table.columns[-1]
    coef_cols = list(table.columns[:-2])
    coef_se = table[coef_cols].to_numpy(dtype=np.float64)
    rows = _coef_cells(coef_se, table[stat].to_numpy(dtype=np.float64), digits)
    pvalues = table[pcol].to_numpy(dtype=np.float64)
    dig_tst = max(1, min(5, digits - 1))
    for row, text in zip(rows, format_pvalues(pvalues, dig_tst)):
        row.append(text)
    header = coef_cols + [stat, pcol]
    stars = bool(np.any(pvalues[~np.isnan(pvalues)] < 0.1))
    if stars:
        header.append("")
        for row, p in zip(rows, pvalues):
            row.append(_stars(p).ljust(3))
    lines = ["Fixed effects:"] + _render_table(header, rows, names, right=True)
    return lines + (["---", SIGNIF_LEGEND] if stars else [])


def _fixef_correlation(fit) -> list[str]:
    names = [str(n) for n in fit.fixef.index]
    p = len(names)
    if p < 2:
        return []
    if p > CORRELATION_MAX:
        return [f"Correlation of fixed effects not shown, as p = {p} > {CORRELATION_MAX}: "
                "see fit.vcov"]
    vcov = fit.vcov.loc[names, names].to_numpy(dtype=np.float64)
    sd = np.sqrt(np.diag(vcov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = vcov / np.outer(sd, sd)
    rows = _lower_triangle(corr, 3, p - 1)[1:]
    header = abbreviate(names, 6)[:-1]
    rownames = abbreviate(names, 11)[1:]
    return ["Correlation of Fixed Effects:"] + _render_table(header, rows, rownames)


def rank_warning_lines(fit) -> list[str]:
    """lme4's "fit warnings:" lines for the fixed-effect columns a fit dropped."""
    dropped = list(fit.dropped_columns)
    if not dropped:
        return []
    plural = "s / coefficients" if len(dropped) > 1 else " / coefficient"
    return ["fit warnings:",
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
            f"column{plural} ({', '.join(map(str, dropped))})"]


def _notes(fit) -> list[str]:
    """lme4's closing lines: "fit warnings:", the optimizer's code and lme4's messages."""
    lines = rank_warning_lines(fit)
    from .convergence import derivative_messages
    messages = derivative_messages(fit)   # lme4's checks of gradient and Hessian
    if not fit.converged:
        lines.append(f"optimizer did not converge: {fit.optimizer_message} "
                     f"after {fit.n_evals} evaluations")
    elif fit.is_singular or messages:
        optimizer = getattr(getattr(fit, "optsum", None), "optimizer", "quasi-newton")
        lines.append(f"optimizer ({optimizer}) convergence code: 0 (OK)")
    if fit.is_singular:
        lines.append(SINGULAR_MESSAGE)
    return lines + messages


def data_name(data) -> str | None:
    """The name a summary prints as lme4's ``Data:``: a frame's ``attrs["name"]``
    (a bundled dataset's, set by ``datasets.load``), else None."""
    attrs = getattr(data, "attrs", None)
    name = attrs.get("name") if isinstance(attrs, dict) else None
    return name if isinstance(name, str) else None


def warn_if_singular(fit) -> None:
    """lme4's message at the end of a singular fit, as an ``LmmWarning``."""
    if fit.is_singular:
        warnings.warn(f"{SINGULAR_MESSAGE}: a variance is estimated as 0 or a correlation "
                      "as +/-1 (see fit.varcorr)", LmmWarning, stacklevel=3)


def format_summary(fit, digits: int = 4, *, call: dict | None = None,
                   ddf: str | None = None) -> str:
    """The lme4-style summary of a fitted :class:`~lmmfast.LinearMixedModel`.

    ``digits`` is the number of significant digits of the residual, variance
    and coefficient tables (lme4's default, 4).  ``call`` optionally names the
    model's inputs as lme4 prints its call: ``{"data": ..., "weights": ...,
    "offset": ...}`` (e.g. the dataset and the column names).  Without
    ``call["data"]`` the ``Data:`` line names the data frame's
    ``attrs["name"]`` (set by ``datasets.load``), and is left out when the
    frame has no name (lme4 prints the expression given as ``data``, which a
    Python function cannot see).  The formula is printed as lme4 prints it,
    ``(1 + x || g)`` as ``((1 | g) + (0 + x | g))``; a singular fit ends with
    lme4's optimizer line and ``SINGULAR_MESSAGE``, and a fit that fails lme4's
    convergence checks (lmmfast.convergence) with its messages.  ``ddf``
    (``"satterthwaite"`` or ``"kenward-roger"``) adds the df and
    ``Pr(>|t|)`` columns of lmerTest's summary, with significance stars.
    """
    from .fixed_tests import normalize_ddf
    call = call or {}
    ddf = normalize_ddf(ddf)
    sections = [
        _header(fit, call, ddf),
        _criterion(fit),
        _residuals(fit, digits),
        _random_effects(fit, digits) + _observations(fit),
        _fixed_effects(fit, digits, ddf),
        _fixef_correlation(fit),
    ]
    text = "\n\n".join("\n".join(lines) for lines in sections if lines)
    return "\n".join([text] + _notes(fit))   # lme4: no blank line before its notes
