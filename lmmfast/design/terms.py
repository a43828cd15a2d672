"""A random-effects term: level codes, the small per-row matrix z, and its lambda.

For a term ``(expr | g)`` with k columns and a grouping factor of nl levels,
the term's part of Z (n x nl*k) has row i equal to z[i] placed in the columns
of level refs[i] (theory.md, eq. 2).  Z is never formed: ``refs`` and ``z``
are all the compiled core needs.  The relative covariance factor of the term
is block-diagonal with nl copies of one k x k lower-triangular ``lambda_``
filled column by column from the term's theta (eq. 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError, FormulaError
from ..formula import RandomTerm
from .materialize import design_matrix
from .frame import Columns, Factor, as_factor

__all__ = ["ReMat", "build_remat", "checked_z", "combination_codes", "group_codes",
           "interaction_labels"]


@dataclass
class ReMat:
    """One random-effects term of a model (lme4's ``cnms`` entry with its data)."""

    group: str                  # grouping factor name, e.g. "Subject", "cask:batch"
    cnames: list[str]           # column names, e.g. ["(Intercept)", "Days"]
    refs: np.ndarray            # int64 level code per row
    levels: list[str]           # level labels, in order
    z: np.ndarray               # n x k float64, C-contiguous
    source: str                 # the formula term it came from
    spec: object = None         # formulaic's ModelSpec of z (its transforms' state), if built so

    @property
    def k(self) -> int:
        """Random effects per level."""
        return self.z.shape[1]

    @property
    def nlevels(self) -> int:
        return len(self.levels)

    @property
    def q(self) -> int:
        """Number of random effects of the term, nl * k."""
        return self.nlevels * self.k

    @property
    def n_theta(self) -> int:
        """Entries of theta for this term: the lower triangle of lambda (k(k+1)/2)."""
        return self.k * (self.k + 1) // 2

    def theta_names(self) -> list[str]:
        """lme4's names of the term's theta: ``g.a`` on the diagonal, ``g.b.a`` below."""
        out = []
        for j in range(self.k):
            for i in range(j, self.k):
                if i == j:
                    out.append(f"{self.group}.{self.cnames[i]}")
                else:
                    out.append(f"{self.group}.{self.cnames[i]}.{self.cnames[j]}")
        return out

    def theta_lower(self) -> np.ndarray:
        """Lower bounds of theta: 0 on lambda's diagonal, -inf below it (eq. 24)."""
        return np.array([0.0 if i == j else -np.inf
                         for j in range(self.k) for i in range(j, self.k)])

    def theta_init(self) -> np.ndarray:
        """lme4's starting value: lambda = I."""
        return np.array([1.0 if i == j else 0.0
                         for j in range(self.k) for i in range(j, self.k)])

    def lambda_(self, theta: np.ndarray) -> np.ndarray:
        """The k x k lower-triangular relative covariance factor for this term's theta."""
        lam = np.zeros((self.k, self.k))
        pos = 0
        for j in range(self.k):
            for i in range(j, self.k):
                lam[i, j] = theta[pos]
                pos += 1
        return lam


def _factor(frame, name: str) -> Factor:
    if isinstance(frame, Columns):
        return frame.factor(name)
    cat = as_factor(frame[name])
    return Factor(np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories],
                  bool(cat.ordered))


def group_codes(frame, term: RandomTerm, present: np.ndarray | None = None) -> tuple:
    """Level codes of the (interaction of the) term's grouping factors, the
    factors, and for an interaction the combination codes (``combination_codes``)
    that are its levels (None for one factor).

    An interaction's levels are the combinations present in ``frame``, ordered
    with the first factor varying slowest (R's ``factor(a:b)``), or those of
    ``present`` (the whole data's, sorted): a combination not among them is a
    DataError.
    """
    facs = [_factor(frame, f.strip("`")) for f in term.factors]
    if len(facs) == 1:
        return facs[0].codes, facs, None
    sizes = [len(fac.levels) for fac in facs]
    codes = combination_codes([fac.codes for fac in facs], sizes)
    if present is not None:
        refs = np.searchsorted(present, codes)
        if len(refs) and (refs.max() >= len(present) or (present[refs] != codes).any()):
            raise DataError(f"random term {term.source} has a combination of levels that "
                            "was not present when the data were first read: did the data change?")
        return refs.astype(np.int64), facs, present
    n_combos = int(np.prod(sizes))
    if n_combos <= max(8 * len(codes), 1024):   # the combinations present, by counting
        present = np.flatnonzero(np.bincount(codes, minlength=n_combos))
        remap = np.zeros(n_combos, dtype=np.int64)
        remap[present] = np.arange(len(present))
        refs = remap[codes]
    else:
        present, refs = np.unique(codes, return_inverse=True)
    return refs.astype(np.int64, copy=False), facs, present


def combination_codes(codes: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """The code of each row's combination of levels, the first factor varying slowest."""
    combo = codes[0]
    for c, size in zip(codes[1:], sizes[1:]):
        combo = combo * size + c
    return combo


def interaction_labels(present: np.ndarray, levels: list[list[str]]) -> list[str]:
    """R's labels ``a:b`` of the combination codes ``present`` (``combination_codes``)."""
    labels = []
    for combo in present.tolist():
        parts = []
        for lab in reversed(levels):
            combo, r = divmod(combo, len(lab))
            parts.append(lab[r])
        labels.append(":".join(reversed(parts)))
    return labels


def build_remat(frame, term: RandomTerm, present: np.ndarray | None = None,
                levels: list[str] | None = None) -> ReMat:
    """The random-effects term ``term`` evaluated on the model frame (``Columns`` or a
    DataFrame); the levels of an interaction are those present in ``frame`` or
    ``present`` (``group_codes``).  ``levels``: the term's level labels, if known."""
    refs, facs, present = group_codes(frame, term, present)
    if levels is None:
        levels = list(facs[0].levels) if present is None \
            else interaction_labels(present, [f.levels for f in facs])
    z, cnames, spec = design_matrix(term.expr, frame, f"random term {term.source}",
                                    with_spec=True)
    if cnames == ["(Intercept)"] and isinstance(frame, Columns):
        return ReMat(term.group, cnames, refs, levels, frame.ones, term.source)
    return ReMat(term.group, cnames, refs, levels, checked_z(z, term), term.source, spec)


def checked_z(z: np.ndarray, term: RandomTerm) -> np.ndarray:
    """The term's z, C-contiguous; a FormulaError without columns, a DataError
    with non-finite values."""
    z = np.ascontiguousarray(z)
    if z.shape[1] == 0:
        raise FormulaError(f"random term {term.source} has no columns")
    if not np.isfinite(z).all():
        raise DataError(f"random term {term.source} has non-finite values in its columns")
    return z
