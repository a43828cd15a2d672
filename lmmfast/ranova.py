"""Likelihood-ratio tests of the random-effects terms, as lmerTest's ``ranova`` (theory.md, eqs. 83-84).

Each random-effects term is reduced by one step and the reduced model refitted
by the criterion of the original (REML or ML):

* ``(1 | g)`` is removed;
* ``(1 + x + w | g)`` loses one of the term labels of its left-hand side that
  no other label contains (R's ``drop.scope``): ``(w | g)`` and ``(x | g)``;
  the row is named ``x in (1 + x + w | g)``;
* ``(0 + x | g)``, whose only label is ``x``, becomes ``(1 | g)``.

Terms are taken in the order of lme4's ``findbars`` (``(1 | a/b)`` gives
``(1 | b:a)`` then ``(1 | a)``).  When the last random term is removed the
model is the linear model of the fixed effects, whose (restricted)
log-likelihood is R's ``logLik.lm`` (eq. 84).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import stats

from .arguments import as_flag
from .errors import DataError, FitError
from .formula import find_bar, split_top, double_vert_terms, parse_formula

__all__ = ["lm_loglik", "ranova", "reduced_formulas"]

COLUMNS = ["npar", "logLik", "AIC", "LRT", "Df", "Pr(>Chisq)"]

_QUOTED = re.compile(r"`((?:[A-Za-z]|\.(?!\d))[\w.]*)`")


def _deparse(expr: str) -> str:
    """A left-hand side as R's ``deparse`` prints it: ``1 + Days``, ``my.x``, ``x^2``."""
    pieces = split_top(expr, "+-")
    text = ""
    for sep, piece in pieces:
        piece = " * ".join(" ".join(f.split()) for _, f in split_top(piece, "*"))
        if not piece and not sep:
            continue
        text = f"{text} {sep} {piece}" if text else (f"{sep}{piece}" if sep == "-" else piece)
    return _QUOTED.sub(r"\1", text.replace("**", "^"))


def _findbars_order(random) -> list:
    """The random terms in lme4's ``findbars`` order: a nested ``a/b`` gives the
    innermost grouping first."""
    out, run = [], []
    for term in list(random) + [None]:
        if run and (term is None or term.source != run[0].source):
            bar = find_bar(run[0].source.strip()[1:-1])
            nested = bar is not None and "/" in bar[1] and not bar[2]
            out.extend(reversed(run) if nested else run)
            run = []
        if term is not None:
            run.append(term)
    return out


def _drop_scope(labels: list[str]) -> list[str]:
    """The labels no other label contains (R's ``drop.scope``): ``a*b`` gives ``a:b``."""
    factors = [frozenset(p.strip() for _, p in split_top(lab, ":")) for lab in labels]
    return [lab for lab, f in zip(labels, factors)
            if not any(f < other for other in factors)]


def reduced_formulas(formula: str, reduce_terms: bool = True) -> dict[str, str | None]:
    """Row label -> the formula with that term reduced, or removed whole when not
    ``reduce_terms`` (None: no random term is left)."""
    parsed = parse_formula(formula)
    terms = _findbars_order(parsed.random)
    fixed = [parsed.fixed] + [f"offset({o})" for o in parsed.offsets]
    written = [f"({t.expr} | {':'.join(t.factors)})" for t in terms]
    out: dict[str, str | None] = {}
    for i, term in enumerate(terms):
        form = f"{_deparse(term.expr)} | {term.group}"
        intercept, labels = double_vert_terms(term.expr, term.source)
        scope = _drop_scope(labels) if reduce_terms else []
        others = written[:i] + written[i + 1:]
        if not scope:
            reductions = {f"({form})": None}
        else:
            reductions = {}
            for lab in scope:
                rest = [x for x in labels if x != lab]
                lhs = "1" if not rest else " + ".join(rest) + ("" if intercept else " - 1")
                reductions[f"{_deparse(lab)} in ({form})"] = f"({lhs} | {':'.join(term.factors)})"
        for label, new in reductions.items():
            if label in out:
                raise DataError(f"random terms of formula {formula!r} reduce to the same "
                                f"row {label!r}: write each term once")
            rhs = fixed + others + ([new] if new else [])
            out[label] = (f"{parsed.response} ~ {' + '.join(rhs)}"
                          if len(rhs) > len(fixed) else None)
    return out


def lm_loglik(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None,
              reml: bool) -> float:
    """Log-likelihood of the (weighted) linear model y = X beta + e (eq. 84):
    restricted for ``reml``, as R's ``logLik.lm(fit, REML = reml)``."""
    n, p = x.shape
    sw = np.ones(n) if weights is None else np.sqrt(weights)
    xw, yw = x * sw[:, None], y * sw
    q, r = np.linalg.qr(xw)
    resid = yw - q @ (q.T @ yw)
    rss = float(resid @ resid)
    m = n - p if reml else n
    value = 0.5 * (2.0 * float(np.sum(np.log(sw)))
                   - m * (np.log(2 * np.pi) + 1.0 - np.log(m) + np.log(rss)))
    if reml:
        value -= float(np.sum(np.log(np.abs(np.diag(r)))))
    return value


def _same_rows(fit, new, formula: str) -> None:
    """The reduced model was fitted to the original's rows, response, weights and offset."""
    def differ(a, b):
        if a is None or b is None:
            return (a is None) != (b is None)
        return a.shape != b.shape or not np.array_equal(a, b)
    if new.nobs != fit.nobs or differ(new.y, fit.y) or differ(new.weights, fit.weights) \
            or differ(new.offset, fit.offset):
        raise DataError(
            f"the reduced model {formula!r} was not fitted to the same rows, response, "
            "weights and offset as the model: pass ranova() the data, weights and offset "
            "the model was fitted with")


def ranova(fit, data, weights=None, offset=None, reduce_terms: bool = True) -> pd.DataFrame:
    """lmerTest's ``ranova`` table: one LRT per random-effects term (eq. 83).

    ``data`` (and ``weights``, ``offset`` as given to ``lmer``; the offset column
    by default) are the model's data, for refitting the reduced models.  With
    ``reduce_terms=False`` every term is removed whole.  Rows ``<none>`` (the
    model) and one per reduction; columns ``npar``, ``logLik``, ``AIC``,
    ``LRT``, ``Df``, ``Pr(>Chisq)``; ``attrs["formulas"]``: row -> formula.
    """
    fit._require_fit()
    reduce_terms = as_flag(reduce_terms, "reduce_terms")
    if fit.x is None:
        raise FitError("ranova() needs the model's rows: fit it in memory, "
                        "LinearMixedModel(formula, data, streaming=False).fit()")
    if offset is None:
        offset = fit.offset_column
    forms = reduced_formulas(fit.formula, reduce_terms)
    npar, loglik = [fit.df_params], [fit.loglik]
    for formula in forms.values():
        if formula is None:
            npar.append(fit.p + 1)
            loglik.append(lm_loglik(fit.x, fit._y_eff, fit.weights, fit.reml))
            continue
        new = type(fit)(formula, data, reml=fit.reml, weights=weights, offset=offset)
        _same_rows(fit, new, formula)
        new.fit()
        npar.append(new.df_params)
        loglik.append(new.loglik)
    npar_a = np.array(npar, dtype=np.int64)
    ll = np.array(loglik)
    lrt = np.concatenate([[np.nan], 2.0 * (ll[0] - ll[1:])])
    df = np.concatenate([[np.nan], (npar_a[0] - npar_a[1:]).astype(np.float64)])
    with np.errstate(invalid="ignore"):
        pval = stats.chi2.sf(lrt, np.where(df > 0, df, np.nan))
    table = pd.DataFrame({"npar": npar_a, "logLik": ll, "AIC": -2.0 * ll + 2.0 * npar_a,
                          "LRT": lrt, "Df": df, "Pr(>Chisq)": pval},
                         index=["<none>"] + list(forms), columns=COLUMNS)
    table.attrs["formulas"] = dict(forms)
    return table

