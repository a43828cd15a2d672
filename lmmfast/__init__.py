"""lmmfast: linear and generalized linear mixed-effects models with lme4's numbers, fast.

>>> import lmmfast
>>> fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days | Subject)",
...                    lmmfast.datasets.load("sleepstudy"))
>>> fit.fixef.round(3).tolist()
[251.405, 10.467]
"""


def _require_compiled_core() -> None:
    """ImportError saying how to build the compiled core when its modules are missing."""
    from importlib.util import find_spec
    from pathlib import Path
    compiled = ("_factor", "_gradient", "_hessian", "_cholesky", "_crossprod", "_pirls",
                "_trust_region")
    missing = [f"{__name__}.{name}" for name in compiled
               if find_spec(f"{__name__}.{name}") is None]
    if missing:
        raise ImportError(
            f"lmmfast's compiled core is not built: {', '.join(missing)} not found in "
            f"{Path(__file__).parent}. This looks like the source tree, not an installed "
            "lmmfast: build and install it with `pip install .` (for development: "
            "`pip install meson-python meson ninja cython numpy scipy` then "
            "`pip install --no-build-isolation -e .`), and import lmmfast from outside "
            "the source directory.", name=missing[0])


_require_compiled_core()

from . import datasets, errors  # noqa: E402
from .errors import DataError, FitError, FormulaError, LmmError  # noqa: E402
from .anova import anova  # noqa: E402
from .model import LinearMixedModel, lmer  # noqa: E402
from .glmm import GeneralizedLinearMixedModel, glmer  # noqa: E402
from .threads import get_num_threads, set_num_threads  # noqa: E402

__all__ = ["lmer", "LinearMixedModel", "glmer", "GeneralizedLinearMixedModel", "anova", "datasets", "errors", "LmmError", "FormulaError",
           "DataError", "FitError", "set_num_threads", "get_num_threads"]
__version__ = "0.1.0"
