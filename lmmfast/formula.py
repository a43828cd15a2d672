"""lme4 formula syntax: split a formula into its response, fixed part and random terms.

``"y ~ 1 + x + (1 + x | g) + (1 | a/b)"`` becomes the response ``y``, the
fixed part ``1 + x`` (handed to formulaic, a Wilkinson-formula library) and
the random-effects terms ``(1 + x | g)``, ``(1 | a)``, ``(1 | b:a)``.

Expansions follow lme4 (``findbars``/``expandSlash``/``expandDoubleVerts``):

* ``(e | a/b)`` is ``(e | a) + (e | b:a)``; ``(e | a/b/c)`` adds ``(e | c:b:a)``;
* ``(1 + x || g)`` is ``(1 | g) + (0 + x | g)``: one term per column group,
  each with its own covariance (a factor's indicator columns stay together);
* ``(e | a:b)`` groups by the combinations of ``a`` and ``b`` present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import FormulaError

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula"]

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$|^`[^`]+`$")


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | f1:f2:...)`` after expansion.

    ``expr`` is the model formula of the term's columns (formulaic syntax),
    ``factors`` the names of the grouping variables whose interaction defines
    the groups, in lme4's naming order (``b:a`` for the inner term of ``a/b``).
    """

    expr: str
    factors: tuple[str, ...]
    source: str

    @property
    def group(self) -> str:
        """The grouping factor's name as lme4 prints it, e.g. ``cask:batch``."""
        return ":".join(f.strip("`") for f in self.factors)


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed part and expanded random terms."""

    formula: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]


def _split_top(text: str, seps: str) -> list[tuple[str, str]]:
    """Split ``text`` at top-level characters in ``seps``; returns (sep, piece) pairs.

    The first piece has separator ``""``.  Parentheses and backquotes nest.
    """
    out: list[tuple[str, str]] = []
    depth = 0
    quoted = False
    start = 0
    sep = ""
    for i, ch in enumerate(text):
        if ch == "`":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced ')' in formula part {text!r}")
        elif depth == 0 and ch in seps:
            if ch == "-" and i > 0 and text[i - 1] in "eE" and text[:i].rstrip()[-1:].isdigit():
                continue  # a number like 1e-3
            out.append((sep, text[start:i]))
            sep = ch
            start = i + 1
    if depth != 0:
        raise FormulaError(f"unbalanced '(' in formula part {text!r}")
    if quoted:
        raise FormulaError(f"unbalanced backquote in formula part {text!r}")
    out.append((sep, text[start:]))
    return out


def _find_bar(inner: str) -> tuple[str, str, bool] | None:
    """Split ``expr | group`` or ``expr || group`` at the top level, if present."""
    depth = 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            if inner[i + 1:i + 2] == "|":
                return inner[:i], inner[i + 2:], True
            return inner[:i], inner[i + 1:], False
    return None


def _translate_power(expr: str) -> str:
    """R's ``^`` inside ``I(...)`` is arithmetic power: write it as ``**``."""
    out = []
    i = 0
    while i < len(expr):
        m = re.compile(r"\bI\s*\(").match(expr, i)
        if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "._")):
            depth = 0
            j = m.end() - 1
            for j in range(m.end() - 1, len(expr)):
                if expr[j] == "(":
                    depth += 1
                elif expr[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
            out.append(expr[i:j + 1].replace("^", "**"))
            i = j + 1
        else:
            out.append(expr[i])
            i += 1
    return "".join(out)


def _group_factors(group: str, source: str) -> list[tuple[str, ...]]:
    """Grouping factors of ``a``, ``a:b`` or ``a/b``: one tuple per expanded term."""
    parts = [p.strip() for p in group.split("/")]
    terms: list[tuple[str, ...]] = []
    previous: tuple[str, ...] = ()
    for part in parts:
        names = tuple(n.strip() for n in part.split(":"))
        for name in names:
            if not name:
                raise FormulaError(f"empty grouping factor in random term {source!r}")
            if not _NAME.match(name):
                raise FormulaError(
                    f"grouping factor {name!r} in random term {source!r} must be a "
                    "column name (or an interaction a:b, or nesting a/b)")
        previous = names + previous
        terms.append(previous)
    return terms


def _has_intercept(pieces: list[tuple[str, str]]) -> bool:
    """Whether a random term's expression keeps the implicit intercept."""
    has = True
    for sign, piece in pieces:
        p = piece.strip()
        if p in ("0", "-1") and sign in ("", "+"):
            has = False
        elif p == "1":
            has = sign != "-"
    return has


def _expand_random(inner: str, source: str) -> list[RandomTerm]:
    bar = _find_bar(inner)
    assert bar is not None
    expr, group, double = bar
    expr = _translate_power(expr.strip())
    if not expr:
        raise FormulaError(f"random term {source!r} has nothing left of '|'")
    if not group.strip():
        raise FormulaError(f"random term {source!r} has no grouping factor right of '|'")
    if "|" in group:
        raise FormulaError(f"random term {source!r} has more than one '|'")
    terms: list[RandomTerm] = []
    for factors in _group_factors(group.strip(), source):
        if not double:
            terms.append(RandomTerm(expr, factors, source))
            continue
        pieces = _split_top(expr, "+-")
        if _has_intercept(pieces):
            terms.append(RandomTerm("1", factors, source))
        for sign, piece in pieces:
            p = piece.strip()
            if p in ("0", "1", "-1", ""):
                continue
            if sign == "-":
                raise FormulaError(f"cannot remove {p!r} in uncorrelated term {source!r}")
            terms.append(RandomTerm(f"0 + {p}", factors, source))
    return terms


@lru_cache(maxsize=256)
def _parse_cached(formula: str) -> ParsedFormula:
    return _parse(formula)


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and random terms.

    >>> f = parse_formula("Reaction ~ Days + (Days || Subject)")
    >>> f.response, f.fixed, [(t.expr, t.group) for t in f.random]
    ('Reaction', 'Days', [('1', 'Subject'), ('0 + Days', 'Subject')])
    """
    if not isinstance(formula, str):
        raise FormulaError(f"the formula must be a string, got {type(formula).__name__}")
    return _parse_cached(formula)


def _parse(formula: str) -> ParsedFormula:
    sides = _split_top(formula, "~")
    if len(sides) != 2:
        raise FormulaError(
            f"formula {formula!r} needs exactly one '~' with the response on its left")
    lhs, rhs = sides[0][1].strip(), sides[1][1].strip()
    if not lhs:
        raise FormulaError(f"formula {formula!r} has no response left of '~'")
    if not rhs:
        raise FormulaError(f"formula {formula!r} has nothing right of '~'")
    fixed_pieces: list[str] = []
    random: list[RandomTerm] = []
    for sign, piece in _split_top(rhs, "+-"):
        text = piece.strip()
        if not text:
            if sign == "" and len(rhs) and rhs.lstrip().startswith("-"):
                continue
            raise FormulaError(f"empty term in formula {formula!r}")
        inner = text[1:-1] if text.startswith("(") and text.endswith(")") else None
        if inner is not None and _split_top(inner, "")[0][1] == inner and _find_bar(inner):
            if sign == "-":
                raise FormulaError(f"random term {text!r} cannot be subtracted")
            random.extend(_expand_random(inner, text))
            continue
        if "|" in text:
            raise FormulaError(
                f"term {text!r} in formula {formula!r}: a random-effects term must "
                "be wrapped in parentheses, e.g. (1 | g)")
        fixed_pieces.append(f"{sign} {text}" if sign else text)
    fixed = " ".join(fixed_pieces).strip()
    if fixed.startswith("+"):
        fixed = fixed[1:].strip()
    if not fixed:
        fixed = "1"
    elif fixed.startswith("-"):
        fixed = "1 " + fixed
    if not random:
        raise FormulaError(
            f"formula {formula!r} has no random-effects term such as (1 | g); "
            "for a model without random effects use ordinary least squares")
    return ParsedFormula(formula, _translate_power(lhs), _translate_power(fixed),
                         tuple(random))
