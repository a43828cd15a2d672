"""lmmfast's own exceptions and warnings.

Every error raised for bad input is one of these, and its message names the
column, term or value at fault.
"""

import re

__all__ = [
    "plain_message",
    "LmmError",
    "FormulaError",
    "DataError",
    "FitError",
    "LmmWarning",
    "RankDeficiencyWarning",
    "MissingValuesWarning",
    "ConvergenceWarning",
    "ConditioningWarning",
    "SINGULAR_MESSAGE",
]

#: lme4's message for a fit on the boundary (a variance 0 or a correlation +-1)
SINGULAR_MESSAGE = "boundary (singular) fit: see help('isSingular')"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_message(exc: BaseException) -> str:
    """An exception's message without terminal colour codes (formulaic marks the
    place of a parse error with them)."""
    return _ANSI.sub("", str(exc))


class LmmError(ValueError):
    """Base class of every error lmmfast raises for a model it cannot fit."""


class FormulaError(LmmError):
    """The formula cannot be parsed or refers to something that does not exist."""


class DataError(LmmError):
    """The data (a column, the weights, the offset) cannot be used as given."""


class FitError(LmmError):
    """The model is well formed but cannot be fitted (e.g. it is not identifiable)."""


class LmmWarning(UserWarning):
    """Base class of lmmfast's warnings."""


class RankDeficiencyWarning(LmmWarning):
    """Fixed-effects columns were dropped because X is rank deficient."""


class MissingValuesWarning(LmmWarning):
    """Rows with missing values were dropped before fitting."""


class ConvergenceWarning(LmmWarning):
    """The optimiser stopped for a reason other than convergence."""


class ConditioningWarning(LmmWarning):
    """The factor of A cancels more digits than the results' tolerance allows."""
