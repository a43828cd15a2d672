"""lmmfast: linear mixed-effects models with lme4's numbers, fast.

>>> import lmmfast
>>> fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)",
...                    lmmfast.datasets.load("sleepstudy"))
>>> fit.fixef.round(3).tolist()
[251.405, 10.467]
"""

from . import datasets, errors
from .errors import DataError, FitError, FormulaError, LmmError
from .anova import anova
from .model import LinearMixedModel, lmer

__all__ = ["lmer", "LinearMixedModel", "anova", "datasets", "errors", "LmmError", "FormulaError",
           "DataError", "FitError"]
__version__ = "0.1.0"
