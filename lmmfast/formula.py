"""lme4 formula syntax: split a formula into its response, fixed part and random terms.

``"y ~ 1 + x + (1 + x | g) + (1 | a/b)"`` becomes the response ``y``, the
fixed part ``1 + x`` (handed to formulaic, a Wilkinson-formula library) and
the random-effects terms ``(1 + x | g)``, ``(1 | a)``, ``(1 | b:a)``.

Expansions follow lme4 (``findbars``/``expandSlash``/``expandDoubleVerts``):

* ``(e | a/b)`` is ``(e | a) + (e | b:a)``; ``(e | a/b/c)`` adds ``(e | c:b:a)``;
* ``(1 + x || g)`` is ``(1 | g) + (0 + x | g)``: one term per *term label*
  of the left-hand side, each with its own covariance, so ``(1 + a*b || g)``
  is ``(1 | g) + (0 + a | g) + (0 + b | g) + (0 + a:b | g)`` and a factor's
  indicator columns stay together in one term (``double_vert_terms``);
* ``(e | a:b)`` groups by the combinations of ``a`` and ``b`` present.

R's spelling is translated to formulaic's before the parts are split: names
with dots (``my.x``) and ``Q("...")`` become backquoted names, R functions
with dots in their names (``as.numeric``) their aliases in
``materialize.R_FUNCTIONS``, and ``^`` inside a function call is arithmetic
power (``**``).  ``offset(expr)`` terms of the fixed part are taken out of it
into ``ParsedFormula.offsets``.  The response is kept as written; it is an
arithmetic expression (``response_code`` gives its Python form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import FormulaError, plain_message

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula", "response_code", "R_ALIASES",
           "double_vert_terms"]

_NAME = re.compile(r"^(?:[^\W\d]|\.)[\w.]*$|^`[^`]+`$")

#: R functions whose names are not Python names, and the names they are evaluated by
R_ALIASES = {"as.numeric": "as_numeric", "as.double": "as_double",
             "as.integer": "as_integer", "as.factor": "as_factor"}
#: names formulaic evaluates as modules (``np.log``, ``contr.poly``): dots kept
_MODULES = ("np", "numpy", "contr")

_TOKEN = re.compile(r"""`[^`]*`|\bQ\s*\(\s*(?:'([^']*)'|"([^"]*)")\s*\)|'[^']*'|"[^"]*"|"""
                    r"(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|"
                    r"((?:[^\W\d]|\.(?!\d))[\w.]*)")
_CALL = re.compile(r"\s*\(")
_EXPONENT = re.compile(r"(?<![\w.])(?:\d+\.?\d*|\.\d+)[eE]$")


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
    response: str                    # as written, e.g. "Reaction - 200"
    fixed: str
    random: tuple[RandomTerm, ...]
    offsets: tuple[str, ...] = ()    # the expressions of offset(...) terms


def split_top(text: str, seps: str) -> list[tuple[str, str]]:
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
            if ch == "-" and _EXPONENT.search(text, 0, i):
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


def find_bar(inner: str) -> tuple[str, str, bool] | None:
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
    """R's ``^`` inside a function call (``I(x^2)``, ``log(x^2)``) is arithmetic
    power: write it as ``**``.  Elsewhere it is the formula operator."""
    out = []
    calls: list[bool] = []   # per open parenthesis: whether it opens a call
    quoted = False
    for i, ch in enumerate(expr):
        if ch == "`":
            quoted = not quoted
        elif quoted:
            pass
        elif ch == "(":
            before = expr[:i].rstrip()
            calls.append(bool(before) and (before[-1].isalnum() or before[-1] in "._`"))
        elif ch == ")":
            if calls:
                calls.pop()
        elif ch == "^" and any(calls):
            out.append("**")
            continue
        out.append(ch)
    return "".join(out)


def _r_names(expr: str) -> str:
    """R's names in formulaic's spelling: ``my.x`` and ``Q("a b")`` backquoted,
    ``as.numeric(`` as its alias; strings, numbers and quoted names unchanged."""
    def repl(m: re.Match) -> str:
        q1, q2, number, name = m.group(1), m.group(2), m.group(3), m.group(4)
        if q1 is not None or q2 is not None:
            return f"`{q1 if q1 is not None else q2}`"
        if number is not None or name is None or "." not in name:
            return m.group(0)
        if _CALL.match(expr, m.end()):
            return R_ALIASES.get(name, name)
        if name.split(".", 1)[0] in _MODULES:
            return name
        return f"`{name}`"
    return _TOKEN.sub(repl, expr)


@lru_cache(maxsize=256)
def response_code(response: str) -> str:
    """The response as a Python expression for formulaic's ``I()``: the left-hand
    side is arithmetic (``Reaction - 200``, ``incidence/size``, ``y^2``)."""
    code = _translate_power(f"I({_r_names(response)})")
    return code[2:-1]


_OFFSET = re.compile(r"^offset\s*\(")


def _offset_term(text: str) -> str | None:
    """The argument of a term ``offset(expr)``, None for another term."""
    m = _OFFSET.match(text)
    if not m or not text.endswith(")"):
        return None
    inner = text[m.end():-1]
    depth = 0
    for ch in inner:   # the call's parenthesis must close at the end of the term
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return None
    return inner.strip()


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


def double_vert_terms(expr: str, source: str) -> tuple[bool, list[str]]:
    """The left-hand side ``expr`` of ``(expr || g)`` as lme4's ``expandDoubleVerts``
    splits it: whether it has an intercept, and its term labels (R's
    ``attr(terms(~expr), "term.labels")``: ``a*b`` gives ``a``, ``b``, ``a:b``).

    A label that is one of the pieces of ``expr`` as written keeps its spelling.
    """
    from formulaic import Formula
    from formulaic.parser.types import Factor

    def parse(text: str):
        try:
            return list(Formula(text))
        except Exception as exc:  # formulaic's parse errors share no base class
            raise FormulaError(f"cannot parse the left-hand side of random term {source!r}: "
                               f"{plain_message(exc)}") from None

    def label(term) -> str:
        return ":".join(f"`{f.expr}`" if f.eval_method is Factor.EvalMethod.LOOKUP
                        and not f.expr.isidentifier() else str(f.expr) for f in term.factors)

    written = {}
    for _, piece in split_top(expr, "+-"):
        p = piece.strip()
        if p not in ("", "0", "1"):
            terms = parse(f"0 + {p}")
            if len(terms) == 1:
                written.setdefault(str(terms[0]), p)
    terms = parse(expr)
    intercept = any(str(t) == "1" for t in terms)
    return intercept, [written.get(str(t), label(t)) for t in terms if str(t) != "1"]


def _expand_random(inner: str, source: str) -> list[RandomTerm]:
    bar = find_bar(inner)
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
        intercept, labels = double_vert_terms(expr, source)
        if intercept:
            terms.append(RandomTerm("1", factors, source))
        terms.extend(RandomTerm(f"0 + {lab}", factors, source) for lab in labels)
        if not terms:
            raise FormulaError(f"random term {source!r} has no columns")
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
    sides = split_top(formula, "~")
    if len(sides) != 2:
        raise FormulaError(
            f"formula {formula!r} needs exactly one '~' with the response on its left")
    lhs, rhs = sides[0][1].strip(), _r_names(sides[1][1]).strip()
    if not lhs:
        raise FormulaError(f"formula {formula!r} has no response left of '~'")
    if not rhs:
        raise FormulaError(f"formula {formula!r} has nothing right of '~'")
    fixed_pieces: list[str] = []
    offsets: list[str] = []
    random: list[RandomTerm] = []
    for sign, piece in split_top(rhs, "+-"):
        text = piece.strip()
        if not text:
            if sign == "" and len(rhs) and rhs.lstrip().startswith("-"):
                continue
            raise FormulaError(f"empty term in formula {formula!r}")
        inner = text[1:-1] if text.startswith("(") and text.endswith(")") else None
        if inner is not None and split_top(inner, "")[0][1] == inner and find_bar(inner):
            if sign == "-":
                raise FormulaError(f"random term {text!r} cannot be subtracted")
            random.extend(_expand_random(inner, text))
            continue
        off = _offset_term(text)
        if off is not None:
            if sign == "-" or not off:
                raise FormulaError(f"term {sign}{text!r} in formula {formula!r}: an offset "
                                   "is added, write + offset(expr)")
            offsets.append(_translate_power(f"I({off})")[2:-1])
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
    return ParsedFormula(formula, lhs, _translate_power(fixed), tuple(random),
                         tuple(offsets))
