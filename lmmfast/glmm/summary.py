"""The printed summary of a fitted GLMM, laid out as lme4's ``summary(glmer(...))``.

The sections the LMM's summary shares with it (criteria table, scaled
residuals, random effects, numbers of groups, the coefficient table,
correlation of fixed effects) come from ``lmmfast.summary``; this module adds
the title (the approximation: Laplace or adaptive Gauss-Hermite quadrature),
the family line, and the z tests (docs/theory.md, eq. 104).
"""

from __future__ import annotations

from ..summary import (_criterion, _fixef_correlation, _observations, rank_warning_lines,
                       _random_effects, _residuals, _title_lines, coef_table_lines,
                       formula_lines)

__all__ = ["format_glmer_summary"]


def _title(fit) -> list[str]:
    if fit.n_agq != 1:   # lme4's title for nAGQ = 0 too
        approx = f"Adaptive Gauss-Hermite Quadrature, nAGQ = {fit.n_agq}"
    else:
        approx = "Laplace Approximation"
    return _title_lines(f"Generalized linear mixed model fit by maximum likelihood ({approx})",
                        "glmerMod")


def _header(fit, call: dict) -> list[str]:
    lines = _title(fit)
    lines.append(f" Family: {fit.family.name}  ( {fit.family.link.name} )")
    lines.append("Formula: " + "\n".join(formula_lines(fit.formula)))
    data = call.get("data") or fit.data_name
    if data:
        lines.append(f"   Data: {data}")
    for label, given, column in (("Weights", fit.has_weights, fit.weights_column),
                                 (" Offset", fit.offset_given, fit.offset_column)):
        if given:
            lines.append(f"{label}: {call.get(label.strip().lower()) or column or 'supplied'}")
    return lines


def _notes(fit) -> list[str]:
    lines = rank_warning_lines(fit)
    messages = list(fit.convergence.messages)   # the singular fit's first, as lme4's
    if messages:
        lines += ["optimizer (bobyqa) convergence code: 0 (OK)"] + messages
    return lines


def format_glmer_summary(fit, digits: int = 4, *, call: dict | None = None) -> str:
    """lme4's ``print(summary(fit))`` of a fitted GLMM.

    ``digits``: significant digits of the residual, variance and coefficient
    tables (lme4's default 4).  ``call`` optionally names the inputs as lme4
    prints its call (``{"data": ..., "weights": ..., "offset": ...}``);
    otherwise ``Data:`` names the frame's ``attrs["name"]`` (bundled datasets).
    The fixed-effects table has Wald z tests, Pr(>|z|) = 2 Phi(-|z|).
    """
    call = call or {}
    sections = [
        _header(fit, call),
        _criterion(fit),
        _residuals(fit, digits),
        _random_effects(fit, digits) + _observations(fit),
        coef_table_lines(fit.coef_table(), digits),
        _fixef_correlation(fit),
    ]
    text = "\n\n".join("\n".join(lines) for lines in sections if lines)
    return "\n".join([text] + _notes(fit))
