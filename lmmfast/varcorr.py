"""Variance components: lme4's ``as.data.frame(VarCorr(fit))`` (theory.md, eq. 8).

For a term with relative covariance factor lambda, the covariance of its k
random effects per level is sigma^2 lambda lambda^T; the table lists, per term,
the variances, then the covariances/correlations of each pair (i < j, in
lme4's order), and last the residual variance.  Where R has ``NA`` (var2 of a
variance, var1 and var2 of the residual) the table has NaN, pandas' missing
value of a string column, in a column of the same dtype as ``grp``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["varcorr_table", "group_labels"]


def group_labels(groups: list[str]) -> list[str]:
    """lme4's VarCorr names: a grouping factor that recurs gets ``.1``, ``.2``, ..."""
    seen: dict[str, int] = {}
    out = []
    for g in groups:
        n = seen.get(g, 0)
        out.append(g if n == 0 else f"{g}.{n}")
        seen[g] = n + 1
    return out


def varcorr_table(groups: list[str], cnames: list[list[str]],
                  lambdas: list[np.ndarray], sigma: float) -> pd.DataFrame:
    """The VarCorr table for terms in lme4 order with their lambda blocks."""
    rows = []
    for grp, names, lam in zip(group_labels(groups), cnames, lambdas):
        cov = sigma ** 2 * lam @ lam.T
        sd = np.sqrt(np.diag(cov))
        for i, name in enumerate(names):
            rows.append((grp, name, np.nan, cov[i, i], sd[i]))
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                denom = sd[i] * sd[j]
                corr = cov[i, j] / denom if denom > 0 else np.nan
                rows.append((grp, names[i], names[j], cov[i, j], corr))
    rows.append(("Residual", np.nan, np.nan, sigma ** 2, sigma))
    grp, var1, var2, vcov, sdcor = zip(*rows)
    text = pd.Series(["Residual"]).dtype   # pandas' dtype for strings: object, or str
    return pd.DataFrame({"grp": pd.Series(grp, dtype=text),
                         "var1": pd.Series(var1, dtype=text),
                         "var2": pd.Series(var2, dtype=text),
                         "vcov": np.array(vcov, dtype=np.float64),
                         "sdcor": np.array(sdcor, dtype=np.float64)})
