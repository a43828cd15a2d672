"""The ``lmmfast`` command line.

::

    lmmfast fit DATA FORMULA [--ml] [--json] [--weights COL] [--offset COL] [--plot DIR]
                [--emmeans SPEC [--ddf DDF] [--contrast METHOD [--adjust ADJ]]] [--r2]
    lmmfast fit DATA FORMULA --family FAMILY [--link LINK] [--nagq N] [--json]
                [--weights COL] [--offset COL]
    lmmfast datasets
    lmmfast --version

``DATA`` is a bundled dataset (``lmmfast datasets`` lists them) or the path
of a ``.csv`` or ``.parquet`` file.  ``fit`` prints lme4's summary of the
fit, or with ``--json`` its numbers as one JSON object.  Errors in the
model or the data are reported as ``lmmfast: error: ...`` with exit
status 2; warnings (rows dropped for missing values, rank-deficient fixed
effects) go to standard error, one line each, also when the fit then fails.
Output cut short by a closed pipe (``lmmfast fit ... | head``) ends the
command quietly.  ``--plot DIR`` also writes
the standard diagnostic plots of the fit (residuals vs fitted and normal
QQ, a caterpillar plot of each grouping factor's conditional modes) as PNG
files in ``DIR``; it needs matplotlib (``pip install 'lmmfast[plot]'``).
``--emmeans SPEC`` (e.g. ``"~ recipe"``) adds emmeans' marginal means, and
``--contrast METHOD`` their contrasts (``--adjust`` the multiplicity
adjustment); ``--r2`` adds Nakagawa's R² and the ICC.  They are printed after
the summary, or held by the JSON object's ``emmeans``, ``contrasts``, ``r2``
and ``icc`` keys.  ``--family binomial`` or ``--family poisson`` (with
``--link`` and ``--nagq``, lme4's ``nAGQ``) fits a generalized linear mixed
model as lme4's ``glmer`` and prints its summary (JSON: ``fit_to_dict``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import datasets
from .arguments import as_choice
from .errors import DataError, LmmError

__all__ = ["main", "load_data", "fit_to_dict"]

PROG = "lmmfast"
EXIT_CLOSED_PIPE = 128 + 13   # as a shell reports a process ended by SIGPIPE
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst", ".csv.zip")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow, which is not installed: "
                        "pip install pyarrow") from None
    return pd.read_parquet(path)


def _reader(path: Path):
    """The reader for a data file, chosen by its suffix (None for other files)."""
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return _read_csv
    if name.endswith(_PARQUET_SUFFIXES):
        return _read_parquet
    return None


def load_data(spec: str) -> pd.DataFrame:
    """The DataFrame named by ``spec``: a data file's path or a bundled dataset's name."""
    path = Path(spec)
    reader = _reader(path)
    if path.is_dir():
        raise DataError(f"{spec} is a directory, not a .csv or .parquet file")
    if path.exists():
        if reader is None:
            raise DataError(f"cannot read {spec}: the data file must be a .csv or .parquet file")
        try:
            return reader(path)
        except (ValueError, OSError) as exc:
            raise DataError(f"cannot read {spec}: {exc}") from None
    if reader is not None or len(path.parts) > 1:
        raise DataError(f"data file not found: {spec}")
    try:
        return datasets.load(spec)
    except DataError as exc:
        raise DataError(f"{exc} (or give the path of a .csv or .parquet file)") from None


def _json_value(value):
    """A JSON-ready Python value: numpy scalars unwrapped, NaN and missing as None."""
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return str(value)


def _json_records(table: pd.DataFrame) -> list[dict]:
    """A table as JSON-ready row dicts keyed by its column names."""
    return [{str(col): _json_value(row[col]) for col in table.columns}
            for row in table.to_dict("records")]


def fit_to_dict(fit) -> dict:
    """The numbers of a fitted model (lmer or glmer) as a JSON-ready dict."""
    if hasattr(fit, "family"):
        return _glmer_to_dict(fit)
    stderr = fit.stderr.reindex(fit.fixef.index)
    return {
        "formula": fit.formula,
        "reml": bool(fit.reml),
        "nobs": int(fit.nobs),
        "objective": _json_value(fit.objective),
        "loglik": _json_value(fit.loglik),
        "aic": _json_value(fit.aic),
        "bic": _json_value(fit.bic),
        "theta": {str(k): _json_value(v) for k, v in fit.theta.items()},
        "fixef": {str(k): {"estimate": _json_value(v), "se": _json_value(stderr[k])}
                  for k, v in fit.fixef.items()},
        "sigma": _json_value(fit.sigma),
        "varcorr": _json_records(fit.varcorr),
        "is_singular": bool(fit.is_singular),
        "converged": bool(fit.converged),
        "n_evals": int(fit.n_evals),
        "n_dropped": int(fit.n_dropped),
        "dropped_columns": [str(c) for c in fit.dropped_columns],
    }


def _glmer_to_dict(fit) -> dict:
    """A glmer fit's numbers: criteria on lme4's scale, theta, the z table, VarCorr,
    and the overdispersion check."""
    table = fit.coef_table()
    return {
        "formula": fit.formula,
        "family": fit.family.name,
        "link": fit.family.link.name,
        "nAGQ": int(fit.n_agq),
        "nobs": int(fit.nobs),
        "objective": _json_value(fit.objective),
        "loglik": _json_value(fit.loglik),
        "aic": _json_value(fit.aic),
        "bic": _json_value(fit.bic),
        "df_resid": int(fit.df_residual),
        "theta": {str(k): _json_value(v) for k, v in zip(fit.theta_names, fit.theta)},
        "fixef": {str(k): {"estimate": _json_value(row["Estimate"]),
                           "se": _json_value(row["Std. Error"]),
                           "z": _json_value(row["z value"]),
                           "p": _json_value(row["Pr(>|z|)"])} for k, row in table.iterrows()},
        "varcorr": _json_records(fit.varcorr),
        "overdispersion": {str(k): _json_value(v) for k, v in fit.overdispersion().items()},
        "is_singular": bool(fit.is_singular),
        "n_evals": int(fit.n_evals),
        "n_dropped": int(fit.n_dropped),
        "dropped_columns": [str(c) for c in fit.dropped_columns],
    }


def _one_line(text) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------ post-fit tables
def _check_post_fit(args) -> None:
    """Reject --ddf/--contrast/--adjust without what they refine, and unknown choices."""
    from .emmeans import ADJUSTMENTS, CONTRAST_METHODS, DDF_METHODS
    if args.emmeans is None:
        for flag, value in (("--contrast", args.contrast), ("--ddf", args.ddf)):
            if value is not None:
                raise DataError(f"{flag} needs --emmeans SPEC, e.g. --emmeans '~ recipe'")
    if args.adjust is not None and args.contrast is None:
        raise DataError("--adjust needs --contrast METHOD, e.g. --contrast pairwise")
    if args.ddf is not None:
        as_choice(args.ddf, "--ddf", DDF_METHODS, {"kr": "kenward-roger"})
    if args.contrast is not None:
        as_choice(args.contrast, "--contrast", CONTRAST_METHODS)
    if args.adjust is not None:
        as_choice(args.adjust, "--adjust", ADJUSTMENTS)


def _post_fit(fit, args) -> dict:
    """The tables asked for by --emmeans/--contrast and --r2, by their JSON key."""
    out = {}
    if args.emmeans is not None:
        ddf = {} if args.ddf is None else {"ddf": args.ddf}
        means = fit.emmeans(args.emmeans, **ddf)
        out["emmeans"] = means
        if args.contrast is not None:
            from .emmeans import _DEFAULT_ADJUST
            out["contrasts"] = means.contrast(args.contrast, adjust=args.adjust)
            method = args.contrast.strip().lower()
            out["adjust"] = (args.adjust or _DEFAULT_ADJUST[method]).strip().lower()
    if args.r2:
        out["r2"], out["icc"] = fit.r2(), fit.icc()
    return out


def _r_digits(values: np.ndarray, digits: int = 4, most: int = 7) -> int:
    """Decimals R's ``format(x, digits=)`` shows: the fewest that give every value
    ``digits`` significant digits (at most ``most``)."""
    finite = np.abs(values[np.isfinite(values) & (values != 0)])
    decimals = 0
    for v in finite:
        d = int(min(most, max(0, digits - 1 - math.floor(math.log10(v)))))
        while d > 0 and round(v, d - 1) == round(v, d):
            d -= 1
        decimals = max(decimals, d)
    return decimals


def _format_p(p: float) -> str:
    """A p-value as emmeans prints it."""
    if not np.isfinite(p):
        return "NaN"
    return "<.0001" if p < 1e-4 else f"{p:.4f}"


def _format_table(table: pd.DataFrame) -> str:
    """A table with R's number formatting: four significant digits per column, p-values
    as emmeans shows them."""
    formatters = {}
    for col in table.columns:
        if col == "p.value":
            formatters[col] = _format_p
        elif pd.api.types.is_float_dtype(table[col]):
            decimals = _r_digits(table[col].to_numpy(dtype=float))
            formatters[col] = lambda v, d=decimals: "Inf" if v == np.inf else f"{v:.{d}f}"
    return table.to_string(index=False, formatters=formatters)


def _format_post_fit(tables: dict) -> str:
    """The --emmeans/--contrast and --r2 results as R prints them."""
    blocks = []
    if "emmeans" in tables:
        means = tables["emmeans"]
        blocks.append(f"$emmeans\n{_format_table(means.table)}\n\n"
                      f"Degrees-of-freedom method: {means.ddf}\n"
                      f"Confidence level used: {means.level:g}")
    if "contrasts" in tables:
        contrasts = tables["contrasts"]
        blocks.append(f"$contrasts\n{_format_table(contrasts)}\n\n"
                      f"P value adjustment: {tables['adjust']}")
    if "r2" in tables:
        r2, icc = tables["r2"], tables["icc"]
        blocks.append("# R2 for Mixed Models\n\n"
                      f"  Conditional R2: {r2['R2_conditional']:.3f}\n"
                      f"     Marginal R2: {r2['R2_marginal']:.3f}\n\n"
                      "# Intraclass Correlation Coefficient\n\n"
                      f"    Adjusted ICC: {icc['ICC_adjusted']:.3f}\n"
                      f"  Unadjusted ICC: {icc['ICC_unadjusted']:.3f}")
    return "\n\n".join(blocks)


def _post_fit_json(tables: dict) -> dict:
    """The --emmeans/--contrast and --r2 results as JSON-ready values."""
    out = {}
    if "emmeans" in tables:
        out["emmeans"] = _json_records(tables["emmeans"].table)
    if "contrasts" in tables:
        out["contrasts"] = _json_records(tables["contrasts"])
    for key in ("r2", "icc"):
        if key in tables:
            out[key] = {k: _json_value(v) for k, v in tables[key].items()}
    return out


def _cmd_fit(args) -> int:
    import lmmfast
    from .summary import format_summary

    _check_post_fit(args)
    _check_family(args)
    if args.family is not None:
        return _cmd_glmer(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = load_data(args.data)
            fit = lmmfast.lmer(args.formula, data, reml=not args.ml,
                               weights=args.weights, offset=args.offset)
        finally:   # a failed fit's warnings explain it: shown before its error
            for warning in caught:
                print(f"{PROG}: warning: {_one_line(warning.message)}", file=sys.stderr)
    tables = _post_fit(fit, args)
    if args.plot is not None:
        _write_plots(fit, args.plot)
    if args.json:
        result = fit_to_dict(fit) | _post_fit_json(tables)
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        call = {"data": args.data, "weights": args.weights, "offset": args.offset}
        print(format_summary(fit, call=call))
        if tables:
            print()
            print(_format_post_fit(tables))
    return 0


_LMM_ONLY = (("--ml", "ml"), ("--plot", "plot"), ("--emmeans", "emmeans"), ("--r2", "r2"))


def _check_family(args) -> None:
    """--link and --nagq need --family; the LMM's options do not apply to a glmer fit."""
    if args.family is None:
        for flag, value in (("--link", args.link), ("--nagq", args.nagq)):
            if value is not None:
                raise DataError(f"{flag} needs --family (binomial or poisson)")
        return
    for flag, attr in _LMM_ONLY:
        if getattr(args, attr) not in (None, False):
            raise DataError(f"{flag} applies to linear mixed models, not to a --family "
                            f"{args.family} fit (glmer fits are maximum likelihood)")


def _cmd_glmer(args) -> int:
    """``fit --family``: lme4's glmer fit and summary."""
    import lmmfast
    from .glmm.summary import format_glmer_summary

    family = args.family if args.link is None else (args.family, args.link)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = load_data(args.data)
            fit = lmmfast.glmer(args.formula, data, family=family,
                                nAGQ=1 if args.nagq is None else args.nagq,
                                weights=args.weights, offset=args.offset)
        finally:
            for warning in caught:
                print(f"{PROG}: warning: {_one_line(warning.message)}", file=sys.stderr)
    if args.json:
        print(json.dumps(fit_to_dict(fit), indent=2, allow_nan=False))
    else:
        call = {"data": args.data, "weights": args.weights, "offset": args.offset}
        print(format_glmer_summary(fit, call=call))
    return 0


def _write_plots(fit, directory: str) -> None:
    """The diagnostic plots of ``fit`` as PNG files in ``directory`` (paths to stderr)."""
    try:
        import matplotlib
    except ImportError:
        raise LmmError("--plot needs matplotlib, which is not installed: "
                       "pip install 'lmmfast[plot]'") from None
    matplotlib.use("Agg")
    from .plot import save_diagnostics
    for path in save_diagnostics(fit, directory):
        print(f"{PROG}: wrote {path}", file=sys.stderr)


def _cmd_datasets(args) -> int:
    for name in datasets.names():
        print(name)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Linear mixed-effects models with lme4's numbers.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fit = commands.add_parser(
        "fit", help="fit a model and print its summary",
        description="Fit a linear mixed model (REML unless --ml), or with --family a "
                    "generalized linear mixed model, and print lme4's summary.")
    fit.add_argument("data", metavar="DATA",
                     help="a bundled dataset name or the path of a .csv or .parquet file")
    fit.add_argument("formula", metavar="FORMULA",
                     help='lme4 formula, e.g. "Reaction ~ Days + (Days | Subject)"')
    fit.add_argument("--ml", action="store_true", help="fit by maximum likelihood")
    fit.add_argument("--json", action="store_true", help="print the results as JSON")
    fit.add_argument("--weights", metavar="COL", help="column of prior weights")
    fit.add_argument("--offset", metavar="COL", help="column of the offset")
    fit.add_argument("--plot", metavar="DIR",
                     help="write diagnostic plots (PNG) of the fit to DIR (needs matplotlib)")
    fit.add_argument("--emmeans", metavar="SPEC",
                     help='estimated marginal means (R\'s emmeans), e.g. "~ recipe" or '
                          '"~ temperature | recipe"')
    fit.add_argument("--ddf", metavar="DDF",
                     help="df of --emmeans: kenward-roger (default), satterthwaite or asymptotic")
    fit.add_argument("--contrast", metavar="METHOD",
                     help="contrasts of the --emmeans means: pairwise, revpairwise, "
                          "trt.vs.ctrl, consec or poly")
    fit.add_argument("--adjust", metavar="ADJ",
                     help="p-value adjustment of --contrast: tukey, holm, bonferroni, sidak "
                          "or none (default: tukey for pairwise methods, none for poly)")
    fit.add_argument("--r2", action="store_true",
                     help="Nakagawa's conditional and marginal R² and the ICC")
    fit.add_argument("--family", metavar="FAMILY",
                     help="fit a generalized linear mixed model (lme4's glmer): binomial "
                          "or poisson")
    fit.add_argument("--link", metavar="LINK",
                     help="link of --family: logit (default), probit, cloglog, cauchit "
                          "(binomial); log (default), identity, sqrt (poisson)")
    fit.add_argument("--nagq", metavar="N", type=int,
                     help="lme4's nAGQ for --family: 1 Laplace (default), 0, or > 1 "
                          "adaptive Gauss-Hermite quadrature (one scalar random term)")
    fit.set_defaults(run=_cmd_fit)

    listing = commands.add_parser("datasets", help="list the bundled datasets",
                                  description="List the bundled lme4 datasets.")
    listing.set_defaults(run=_cmd_datasets)
    return parser


def _version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("lmmfast")
    except PackageNotFoundError:
        from . import __version__
        return __version__


def _closed_pipe() -> int:
    """Exit status after a reader closed standard output: Python's recommended handling
    (stdout pointed at devnull, so the flush at exit does not fail again)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):   # a stdout without a file descriptor
        pass
    return EXIT_CLOSED_PIPE


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            sys.stdout.flush()
            return exc.code if isinstance(exc.code, int) else 2
        try:
            status = args.run(args)
            sys.stdout.flush()
            return status
        except BrokenPipeError:
            raise
        except (LmmError, OSError) as exc:
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
    except BrokenPipeError:
        return _closed_pipe()
