"""Tidy tables of a fit, with broom.mixed's column names (``tidy`` and ``glance``).

``tidy`` stacks, in this order, the fixed effects (the t tests of
``coef_table`` and their intervals, eq. 89), the variance parameters (standard
deviations and correlations of VarCorr, eq. 8) and the conditional modes
with their conditional standard deviations (eqs. 22, 25).  Columns are those
of the requested parts, in broom.mixed's order; a column a part lacks is
missing (NaN) in its rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .arguments import as_choice, as_flag, as_probability, describe
from .errors import DataError
from .fixed_tests import coef_table, normalize_ddf

__all__ = ["tidy", "glance", "EFFECTS"]

EFFECTS = ("fixed", "ran_pars", "ran_vals")
COLUMN_ORDER = ("effect", "group", "level", "term", "estimate", "std.error", "statistic", "df",
                "p.value", "conf.low", "conf.high")


def _effects(effects) -> list[str]:
    """The requested parts, in tidy's order."""
    if isinstance(effects, str):
        effects = (effects,)
    try:
        wanted = {as_choice(e, "effects", EFFECTS) for e in effects}
    except TypeError:
        raise DataError(f"effects must be a list of 'fixed', 'ran_pars', 'ran_vals', "
                        f"got {describe(effects)}") from None
    if not wanted:
        raise DataError("effects is empty: give one or more of 'fixed', 'ran_pars', 'ran_vals'")
    return [e for e in EFFECTS if e in wanted]


def _fixed(fit, conf_int: bool, conf_level: float, ddf) -> pd.DataFrame:
    """Fixed effects: estimate, SE, t (or z), df and p of coef_table; t (or z) intervals (eq. 89)."""
    table = coef_table(fit, ddf=ddf)
    out = pd.DataFrame({"effect": "fixed", "term": list(table.index),
                        "estimate": table["Estimate"].to_numpy(),
                        "std.error": table["Std. Error"].to_numpy()})
    if "df" in table.columns:
        out["statistic"] = table["t value"].to_numpy()
        out["df"] = table["df"].to_numpy()
        out["p.value"] = table["Pr(>|t|)"].to_numpy()
        quantile = stats.t.ppf(0.5 + conf_level / 2.0, out["df"].to_numpy())
    else:
        out["statistic"] = table["z value"].to_numpy()
        quantile = stats.norm.ppf(0.5 + conf_level / 2.0)
    if conf_int:
        out["conf.low"] = out["estimate"] - quantile * out["std.error"]
        out["conf.high"] = out["estimate"] + quantile * out["std.error"]
    return out


def _ran_pars(fit, conf_int: bool) -> pd.DataFrame:
    """SDs and correlations, per term in lme4's lower-triangle order, then the residual SD."""
    vc = fit.varcorr
    rows = []
    for grp in pd.unique(vc["grp"]):
        part = vc[vc["grp"] == grp]
        if grp == "Residual":
            rows.append((grp, "sd__Observation", float(part["sdcor"].iloc[0])))
            continue
        names = list(part.loc[part["var2"].isna(), "var1"])
        sd = dict(zip(names, part.loc[part["var2"].isna(), "sdcor"]))
        cor = {(a, b): v for a, b, v in zip(part["var1"], part["var2"], part["sdcor"])
               if isinstance(b, str)}
        for i, a in enumerate(names):
            rows.append((grp, f"sd__{a}", float(sd[a])))
            for b in names[i + 1:]:
                rows.append((grp, f"cor__{a}.{b}", float(cor[(a, b)])))
    group, term, estimate = zip(*rows)
    out = pd.DataFrame({"effect": "ran_pars", "group": list(group), "term": list(term),
                        "estimate": np.array(estimate, dtype=np.float64)})
    if conf_int:
        out["conf.low"] = np.nan
        out["conf.high"] = np.nan
    return out


def _ran_vals(fit, conf_int: bool, conf_level: float) -> pd.DataFrame:
    """Conditional modes and SDs, per grouping factor, column and level (eqs. 22, 25)."""
    parts = []
    for group, modes in fit.ranef(condvar=True).items():
        sd = modes.attrs["condsd"]
        for term in modes.columns:
            parts.append(pd.DataFrame({"effect": "ran_vals", "group": group,
                                       "level": [str(v) for v in modes.index], "term": term,
                                       "estimate": modes[term].to_numpy(dtype=np.float64),
                                       "std.error": sd[term].to_numpy(dtype=np.float64)}))
    out = pd.concat(parts, ignore_index=True)
    if conf_int:
        z = stats.norm.ppf(0.5 + conf_level / 2.0)
        out["conf.low"] = out["estimate"] - z * out["std.error"]
        out["conf.high"] = out["estimate"] + z * out["std.error"]
    return out


def tidy(fit, effects=("fixed", "ran_pars"), conf_int: bool = False,
         conf_level: float = 0.95, ddf="satterthwaite") -> pd.DataFrame:
    """broom.mixed's ``tidy(fit, effects, conf.int, conf.level)`` for an lmer fit.

    ``effects``: any of ``"fixed"``, ``"ran_pars"``, ``"ran_vals"``.  Fixed
    effects get ``coef_table(ddf)``'s tests: with ``"satterthwaite"`` (lmerTest
    loaded, broom.mixed's default) or ``"kenward-roger"`` the columns
    ``statistic, df, p.value`` and t intervals; with ``ddf=None`` (lme4 alone)
    ``statistic`` is a Wald z and the intervals are normal, with no df and
    p-value, as broom.mixed.  Variance parameters have no standard error or
    interval (NaN).  Conditional modes get Wald intervals from their
    conditional SDs.
    """
    parts = _effects(effects)
    conf_int = as_flag(conf_int, "conf_int")
    conf_level = as_probability(conf_level, "conf_level")
    ddf = normalize_ddf(ddf)
    fit._require_fit()
    frames = []
    if "fixed" in parts:
        frames.append(_fixed(fit, conf_int, conf_level, ddf))
    if "ran_pars" in parts:
        frames.append(_ran_pars(fit, conf_int))
    if "ran_vals" in parts:
        frames.append(_ran_vals(fit, conf_int, conf_level))
    columns = [c for c in COLUMN_ORDER if any(c in f.columns for f in frames)]
    text = pd.Series(["fixed"]).dtype   # pandas' dtype for strings: object, or str
    out = pd.concat(frames, ignore_index=True).reindex(columns=columns)
    for c in ("effect", "group", "level", "term"):
        if c in out.columns:
            out[c] = out[c].astype(text)
    return out


def glance(fit) -> pd.DataFrame:
    """broom.mixed's ``glance``: one row of nobs, sigma, logLik, AIC, BIC, REMLcrit (REML fits)
    or deviance (ML fits), and df.residual = nobs - number of parameters."""
    fit._require_fit()
    criterion = "REMLcrit" if fit.reml else "deviance"
    return pd.DataFrame({"nobs": [int(fit.nobs)], "sigma": [fit.sigma], "logLik": [fit.loglik],
                         "AIC": [fit.aic], "BIC": [fit.bic], criterion: [fit.deviance],
                         "df.residual": [int(fit.nobs - fit.df_params)]})
