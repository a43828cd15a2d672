"""The ``lmmfast`` command line.

::

    lmmfast fit DATA FORMULA [--ml] [--json] [--weights COL] [--offset COL] [--plot DIR]
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


def fit_to_dict(fit) -> dict:
    """The numbers of a fitted model as a JSON-ready dict."""
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
        "varcorr": [{col: _json_value(row[col]) for col in fit.varcorr.columns}
                    for row in fit.varcorr.to_dict("records")],
        "is_singular": bool(fit.is_singular),
        "converged": bool(fit.converged),
        "n_evals": int(fit.n_evals),
        "n_dropped": int(fit.n_dropped),
        "dropped_columns": [str(c) for c in fit.dropped_columns],
    }


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _cmd_fit(args) -> int:
    import lmmfast
    from .summary import format_summary

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = load_data(args.data)
            fit = lmmfast.lmer(args.formula, data, reml=not args.ml,
                               weights=args.weights, offset=args.offset)
        finally:   # a failed fit's warnings explain it: shown before its error
            for warning in caught:
                print(f"{PROG}: warning: {_one_line(warning.message)}", file=sys.stderr)
    if args.plot is not None:
        _write_plots(fit, args.plot)
    if args.json:
        print(json.dumps(fit_to_dict(fit), indent=2, allow_nan=False))
    else:
        call = {"data": args.data, "weights": args.weights, "offset": args.offset}
        print(format_summary(fit, call=call))
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
        description="Fit a linear mixed model (REML unless --ml) and print lme4's summary.")
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
