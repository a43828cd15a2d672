"""Time lmmfast against lme4 (R) and statsmodels' MixedLM on the reference suite.

Usage::

    python benchmarks/compare.py                        # every model, REML and ML
    python benchmarks/compare.py --models sleep_slope,penicillin --reps 20
    python benchmarks/compare.py --markdown --json results.json

What is timed, for each tool, is one call from a pandas/R data frame and a
formula to the fitted model, as a user makes it:

* lmmfast: ``lmmfast.lmer(formula, data, reml=...)``;
* lme4: ``lmer(formula, data, REML = ...)``, timed inside R with
  ``Sys.time()`` (microsecond resolution; ``proc.time()``'s elapsed counter
  only has 1 ms), so R's start-up and package loading are not counted.  One
  R process per model reads the data once, then answers one request per
  line on its standard input ("fit REML", "refit ML", ...) with a JSON line;
  the Python driver interleaves these requests with the Python fits;
* statsmodels: ``MixedLM.from_formula(...).fit(reml=...)``: random
  intercept/slope by one group through ``groups=`` and ``re_formula``
  (``||`` as ``re_formula="1"`` plus a ``vc_formula`` slope); crossed and
  nested factors through one all-ones group and ``vc_formula``
  (``use_sparse=True`` for InstEval); ``(1 | recipe:replicate)`` as a
  ``recipe:replicate`` group column built inside the timed call.

Rounds are interleaved: in every round each tool fits the model once, in an
order that rotates from round to round, after ``--warmup`` untimed rounds.
The table shows the median seconds of each tool, the ratios peer / lmmfast
(> 1: lmmfast is faster), the objective evaluations (lmmfast ``n_evals``,
lme4 ``fit@optinfo$feval``) and the objective differences lmmfast - lme4 and
lmmfast - statsmodels (REML criterion or deviance; statsmodels' ``-2 llf``);
a negative difference means lmmfast reached a lower criterion.

The refit rows time ``boot.refit(y_new, start=theta0)`` for sleep_slope, as
``lmmfast.bootstrap`` refits: ``boot = fit.copy()`` is made once, untimed, and
refitted in place in every round, each time from the original fit's theta
``theta0``; against lme4's ``refit(fit, newresp = y_new)`` (one new response:
the observed ``Reaction`` plus N(0, 25^2) noise, seeded; lme4's refit also
starts from the original fit's theta).

``--json FILE`` keeps every timing, the process CPU seconds of each call
(Python ``time.process_time``; R ``proc.time()`` user + system, 1 ms
resolution), the load average before and after, and the versions and BLAS.

``--blas-threads N`` runs every tool with its BLAS limited to N threads.  On
a machine whose cores are busy with other work, multi-threaded OpenBLAS can
make a fit several times slower than one thread (presumably its waiting
threads spin and compete with the other work), so compare with
``--blas-threads 1`` when the load average is high.

Peers that are not installed are skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import lmmfast

sys.path.insert(0, str(Path(__file__).parent))
from models import MODELS  # noqa: E402

LARGE = {"insteval"}
FITS = ("REML", "ML")
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
REFIT_MODEL = "sleep_slope"
SM_INSTEVAL_REASON = ("statsmodels MixedLM on insteval (3 crossed variance components, "
                      "4,114 random effects, 73,421 rows) takes > 300 s per fit "
                      "(shared/reference/python_peers.md)")

# --------------------------------------------------------------------- statsmodels


def _sm_model(name: str, data: pd.DataFrame):
    """statsmodels' MixedLM for reference model ``name`` (built inside the timed call)."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    ones = np.ones(len(data))
    if name == "sleep_slope":
        return MixedLM.from_formula("Reaction ~ 1 + Days", data, groups=data["Subject"],
                                    re_formula="1 + Days")
    if name == "sleep_zerocorr":
        return MixedLM.from_formula("Reaction ~ 1 + Days", data, groups=data["Subject"],
                                    re_formula="1", vc_formula={"Days": "0 + Days"})
    if name == "sleep_int":
        return MixedLM.from_formula("Reaction ~ 1 + Days", data, groups=data["Subject"],
                                    re_formula="1")
    if name in ("dyestuff", "dyestuff2"):
        return MixedLM.from_formula("Yield ~ 1", data, groups=data["Batch"], re_formula="1")
    if name == "penicillin":
        return MixedLM.from_formula("diameter ~ 1", data, groups=ones, re_formula="0",
                                    vc_formula={"plate": "0 + C(plate)",
                                                "sample": "0 + C(sample)"})
    if name == "pastes":
        return MixedLM.from_formula("strength ~ 1", data, groups=ones, re_formula="0",
                                    vc_formula={"batch": "0 + C(batch)",
                                                "cask": "0 + C(batch):C(cask)"})
    if name == "cake":
        group = data["recipe"].astype(str) + ":" + data["replicate"].astype(str)
        return MixedLM.from_formula("angle ~ recipe * temp", data, groups=group,
                                    re_formula="1")
    if name == "insteval":
        return MixedLM.from_formula("y ~ 1 + service", data, groups=ones, re_formula="0",
                                    vc_formula={"s": "0 + C(s)", "d": "0 + C(d)",
                                                "dept": "0 + C(dept)"},
                                    use_sparse=True)
    raise KeyError(name)


def sm_fit(name: str, data: pd.DataFrame, reml: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _sm_model(name, data).fit(reml=reml)


# ------------------------------------------------------------------------ lme4 / R

R_DRIVER = r"""
args <- commandArgs(trailingOnly = TRUE)
data_file <- args[1]; levels_file <- args[2]; formula_txt <- args[3]
refit_col <- if (length(args) >= 4) args[4] else ""
suppressPackageStartupMessages(library(lme4))
lv <- read.csv(levels_file, colClasses = "character", na.strings = character(0))
fcols <- unique(lv$column)
d <- read.csv(data_file, colClasses = setNames(rep("character", length(fcols)), fcols),
              na.strings = character(0))
for (nm in fcols) d[[nm]] <- factor(d[[nm]], levels = lv$level[lv$column == nm])
form <- as.formula(formula_txt)
esc <- function(s) gsub("[\r\n\t]", " ", gsub('"', '\\\\"', gsub("\\\\", "\\\\\\\\", s)))
num <- function(x) paste0("[", paste(sprintf("%.17g", x), collapse = ","), "]")
out <- function(s) { cat(s, "\n", sep = ""); flush(stdout()) }
info <- sessionInfo()
out(sprintf('{"ready":true,"R":"%s","lme4":"%s","Matrix":"%s","blas":"%s","lapack":"%s","nrow":%d}',
            esc(R.version.string), packageVersion("lme4"), packageVersion("Matrix"),
            esc(if (is.null(info$BLAS)) "" else info$BLAS), esc(La_library()), nrow(d)))
report <- function(fit, el, cpu) sprintf(
  '{"seconds":%.9g,"cpu_seconds":%.9g,"objective":%.17g,"feval":%d,"theta":%s}',
  el, sum(cpu[c("user.self", "sys.self")]), -2 * as.numeric(logLik(fit)),
  as.integer(fit@optinfo$feval), num(getME(fit, "theta")))
fits <- list()
con <- file("stdin"); open(con)
repeat {
  line <- readLines(con, n = 1)
  if (length(line) == 0 || line == "quit") break
  parts <- strsplit(line, " ", fixed = TRUE)[[1]]
  kind <- parts[2]
  res <- tryCatch({
    if (parts[1] == "fit") {
      c0 <- proc.time(); t0 <- Sys.time()
      fit <- suppressMessages(suppressWarnings(lmer(form, d, REML = (kind == "REML"))))
      el <- as.numeric(difftime(Sys.time(), t0, units = "secs")); c1 <- proc.time()
      fits[[kind]] <- fit
      report(fit, el, c1 - c0)
    } else if (parts[1] == "refit") {
      y_new <- d[[refit_col]]
      base <- fits[[kind]]
      c0 <- proc.time(); t0 <- Sys.time()
      fit <- suppressMessages(suppressWarnings(refit(base, newresp = y_new)))
      el <- as.numeric(difftime(Sys.time(), t0, units = "secs")); c1 <- proc.time()
      # untimed: the criterion of a freshly built model at the refit's theta
      d_new <- d
      d_new[[all.vars(form[[2]])[1]]] <- y_new
      devf <- lmer(form, d_new, REML = (kind == "REML"), devFunOnly = TRUE)
      sub("}$", sprintf(',"objective_fresh":%.17g,"dims_REML":%d,"p":%d}',
                        devf(getME(fit, "theta")), as.integer(fit@devcomp$dims[["REML"]]),
                        as.integer(fit@devcomp$dims[["p"]])), report(fit, el, c1 - c0))
    } else stop("unknown request: ", line)
  }, error = function(e) sprintf('{"error":"%s"}', esc(conditionMessage(e))))
  out(res)
}
"""


def r_status() -> tuple[bool, str]:
    """(available, reason): is ``Rscript`` on PATH with lme4 installed?"""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return False, "Rscript not found on PATH"
    proc = subprocess.run([rscript, "--vanilla", "-e",
                           "suppressPackageStartupMessages(library(lme4))"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return False, "R package lme4 not installed: " + proc.stderr.strip().splitlines()[-1]
    return True, rscript


class RSession:
    """One R process holding one data set and formula; fits on request."""

    def __init__(self, rscript: str, workdir: Path, model: str, data: pd.DataFrame,
                 formula: str, refit_col: str | None = None):
        data_file = workdir / f"{model}.csv"
        levels_file = workdir / f"{model}.levels.csv"
        driver = workdir / "driver.R"
        if not driver.exists():
            driver.write_text(R_DRIVER)
        data.to_csv(data_file, index=False)
        levels = [(col, str(level)) for col in data.columns
                  if isinstance(data[col].dtype, pd.CategoricalDtype)
                  for level in data[col].cat.categories]
        pd.DataFrame(levels, columns=["column", "level"]).to_csv(levels_file, index=False)
        self._stderr = open(workdir / f"{model}.stderr", "w+")
        argv = [rscript, "--vanilla", str(driver), str(data_file), str(levels_file), formula]
        if refit_col:
            argv.append(refit_col)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1)
        self.info = self._read()
        if not self.info.get("ready") or self.info.get("nrow") != len(data):
            raise RuntimeError(f"R did not load {model}: {self.info}")

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self._stderr.seek(0)
                raise RuntimeError("R exited: " + self._stderr.read()[-2000:])
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def request(self, what: str) -> dict:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"lme4 {what}: {out['error']}")
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()
        self._stderr.close()


# ----------------------------------------------------------------------- driving


def _time(fn):
    """(wall seconds, process CPU seconds, result) of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return t1 - t0, c1 - c0, out


def _r_time(session: "RSession", what: str):
    """(wall seconds, CPU seconds, reply) of one request, as timed inside R."""
    out = session.request(what)
    return out["seconds"], out["cpu_seconds"], out


def sm_insteval_capped(fit: str, cap: float) -> dict:
    """One statsmodels insteval fit in a child process, stopped after ``cap`` seconds."""
    try:
        proc = subprocess.run([sys.executable, __file__, "--sm-one", "insteval", fit],
                              capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"capped": True}
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sm_one(model: str, fit: str) -> None:
    """Child-process entry point of ``sm_insteval_capped``: time one fit, print JSON."""
    data = lmmfast.datasets.load(MODELS[model][0])
    seconds, _, res = _time(lambda: sm_fit(model, data, fit == "REML"))
    print(json.dumps({"seconds": seconds, "objective": -2.0 * float(res.llf)}))


def run_row(model: str, fit: str, tools: dict, reps: int, warmup: int) -> dict:
    """Interleaved rounds of every tool on one model and fit; returns the row."""
    times: dict[str, list[float]] = {t: [] for t in tools}
    cpu: dict[str, list[float]] = {t: [] for t in tools}
    last: dict[str, object] = {}
    order = list(tools)
    for rnd in range(warmup + reps):
        k = rnd % len(order)
        for tool in order[k:] + order[:k]:
            seconds, cpu_seconds, out = tools[tool]()
            last[tool] = out
            if rnd >= warmup:
                times[tool].append(seconds)
                cpu[tool].append(cpu_seconds)
    row = {"model": model, "fit": fit, "reps": reps, "times": times, "cpu_times": cpu,
           "median": {t: statistics.median(v) for t, v in times.items()},
           "median_cpu": {t: statistics.median(v) for t, v in cpu.items()}}
    ours = last["lmmfast"]
    row["n_evals"] = {"lmmfast": int(ours.n_evals)}
    row["objective"] = {"lmmfast": float(ours.objective)}
    if "lme4" in last:
        theirs = last["lme4"]
        row["n_evals"]["lme4"] = int(theirs["feval"])
        row["objective"]["lme4"] = float(theirs.get("objective_fresh", theirs["objective"]))
        if "objective_fresh" in theirs:
            row["lme4_refit"] = {k: theirs[k] for k in ("objective", "objective_fresh",
                                                         "dims_REML", "p")}
    if "statsmodels" in last:
        row["objective"]["statsmodels"] = -2.0 * float(last["statsmodels"].llf)
    return row


def run_model(model: str, fits: list[str], args, rscript: str | None, sm_ok: bool,
              workdir: Path, meta: dict, footnotes: list[str]) -> list[dict]:
    """The rows of one model: each fit, and the refit rows for ``REFIT_MODEL``."""
    dataset, formula = MODELS[model]
    data = lmmfast.datasets.load(dataset)
    reps = args.large_reps if model in LARGE else args.reps
    do_refit = model == REFIT_MODEL and not args.no_refit
    y_new, r_data = None, data
    if do_refit:
        # a new response independent of any fit: the observed one plus N(0, 25^2)
        rng = np.random.default_rng(20240601)
        response = formula.split("~")[0].strip()
        y_new = data[response].to_numpy(np.float64) + rng.normal(0.0, 25.0, len(data))
        r_data = data.assign(y_new=y_new)
    session = None
    if rscript is not None:
        session = RSession(rscript, workdir, model, r_data, formula,
                           "y_new" if do_refit else None)
        meta.setdefault("R", {k: v for k, v in session.info.items()
                              if k not in ("ready", "nrow")})
    rows = []
    try:
        for fit in fits:
            reml = fit == "REML"
            tools = {"lmmfast": lambda: _time(lambda: lmmfast.lmer(formula, data, reml=reml))}
            if session is not None:
                tools["lme4"] = lambda: _r_time(session, f"fit {fit}")
            if sm_ok and model not in LARGE:
                tools["statsmodels"] = lambda: _time(lambda: sm_fit(model, data, reml))
            print(f"{model} {fit} ...", file=sys.stderr, flush=True)
            row = run_row(model, fit, tools, reps, args.warmup)
            if sm_ok and model in LARGE:
                if args.sm_insteval_cap is None:
                    row["sm_note"] = "skipped (> 300 s)"
                else:
                    res = sm_insteval_capped(fit, args.sm_insteval_cap)
                    if res.get("capped"):
                        row["sm_note"] = f"> {args.sm_insteval_cap:g} s"
                    else:
                        row["median"]["statsmodels"] = res["seconds"]
                        row["times"]["statsmodels"] = [res["seconds"]]
                        row["objective"]["statsmodels"] = res["objective"]
            rows.append(row)
            if not do_refit:
                continue
            base = lmmfast.lmer(formula, data, reml=reml)
            # as lmmfast.bootstrap refits: one copy (made once, untimed), refitted in
            # place in every round, each time from the original fit's theta
            boot, theta0 = base.copy(), base.theta.to_numpy()
            rtools = {"lmmfast": lambda: _time(lambda: boot.refit(y_new, start=theta0))}
            if session is not None:
                rtools["lme4"] = lambda: _r_time(session, f"refit {fit}")
            print(f"{model} {fit} refit ...", file=sys.stderr, flush=True)
            rrow = run_row(f"{model} refit", fit, rtools, reps, args.warmup)
            rrow["sm_note"] = "n/a" if sm_ok else None
            rows.append(rrow)
            lr = rrow.get("lme4_refit")
            if reml and lr and lr["dims_REML"] != lr["p"]:
                footnotes.append(
                    f"{model} refit REML: lme4's refit() reports a REML criterion of "
                    f"{lr['objective']:.4f}; it optimises with REML degrees of freedom "
                    f"n - {lr['dims_REML']} instead of n - {lr['p']} "
                    f"(devcomp$dims['REML'] = {lr['dims_REML']}); its Δobj uses the "
                    "criterion of a freshly built lmer() at lme4's refit θ instead")
    finally:
        if session is not None:
            session.close()
    return rows


def machine_info() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"nproc": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "lmmfast": lmmfast.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}
    with contextlib.suppress(Exception):
        repo = Path(__file__).resolve().parents[1]
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=10).stdout.strip()
    with contextlib.suppress(Exception):
        from lmmfast import _cholesky
        core = Path(_cholesky.__file__)
        info["core_module"] = str(core)
        info["core_module_mtime"] = time.strftime("%Y-%m-%d %H:%M:%S",
                                                  time.localtime(core.stat().st_mtime))
    with contextlib.suppress(Exception):
        import threadpoolctl
        info["python_blas"] = [f"{p['internal_api']} {p.get('version')} "
                               f"({p['num_threads']} threads)"
                               for p in threadpoolctl.threadpool_info()
                               if p["user_api"] == "blas"]
    return info


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 0.01:
        return f"{x * 1e3:.1f} ms"
    return f"{x * 1e3:.2f} ms"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.1f}x"


def fmt_diff(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.1e}"


COLUMNS = ["model", "fit", "lmmfast", "lme4", "statsmodels", "lme4/lmmfast",
           "sm/lmmfast", "evals lmmfast", "evals lme4", "Δobj lme4", "Δobj sm"]


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        med, obj, ev = r["median"], r["objective"], r["n_evals"]
        out.append([r["model"], r["fit"], fmt_s(med.get("lmmfast")), fmt_s(med.get("lme4")),
                    r.get("sm_note") or fmt_s(med.get("statsmodels")),
                    fmt_ratio(med.get("lme4"), med.get("lmmfast")),
                    fmt_ratio(med.get("statsmodels"), med.get("lmmfast")),
                    str(ev.get("lmmfast", "-")), str(ev.get("lme4", "-")),
                    fmt_diff(obj.get("lmmfast"), obj.get("lme4")),
                    fmt_diff(obj.get("lmmfast"), obj.get("statsmodels"))])
    return out


def render(rows: list[dict], markdown: bool) -> str:
    body = table_rows(rows)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(b) for b in body])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated model names (default: all): " + ", ".join(MODELS))
    ap.add_argument("--fits", default="REML,ML", help="REML, ML or both (default)")
    ap.add_argument("--reps", type=int, default=10, help="timed rounds per small model (10)")
    ap.add_argument("--large-reps", type=int, default=3, help="timed rounds for insteval (3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    ap.add_argument("--no-refit", action="store_true", help="skip the refit rows")
    ap.add_argument("--blas-threads", type=int, default=None, metavar="N",
                    help="limit BLAS threads of every tool to N (OPENBLAS_NUM_THREADS, "
                         "OMP_NUM_THREADS, MKL_NUM_THREADS; R inherits them); default: "
                         "leave the environment as it is")
    ap.add_argument("--sm-insteval-cap", type=float, default=None, metavar="SECONDS",
                    help="run statsmodels on insteval once per fit, stopped after SECONDS "
                         "(default: skip it)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--json", metavar="FILE", help="write every timing and result to FILE")
    ap.add_argument("--sm-one", nargs=2, metavar=("MODEL", "FIT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sm_one:
        sm_one(*args.sm_one)
        return 0
    if args.blas_threads is not None:
        wanted = {v: str(args.blas_threads) for v in BLAS_THREAD_VARS}
        if any(os.environ.get(k) != v for k, v in wanted.items()):
            # BLAS reads these when it is loaded: start again with them set
            os.environ.update(wanted)
            os.execv(sys.executable, [sys.executable, os.path.abspath(__file__),
                                      *(sys.argv[1:] if argv is None else argv)])

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    fits = [f.strip().upper() for f in args.fits.split(",") if f.strip()]
    if any(f not in FITS for f in fits):
        ap.error("--fits takes REML, ML or REML,ML")

    notes: list[str] = []
    r_ok, r_what = r_status()
    if not r_ok:
        notes.append(f"lme4 skipped: {r_what}")
    try:
        import statsmodels
        sm_ok, sm_version = True, statsmodels.__version__
    except ImportError:
        sm_ok, sm_version = False, None
        notes.append("statsmodels skipped: not installed (pip install statsmodels)")
    if sm_ok and "insteval" in models:
        if args.sm_insteval_cap is None:
            notes.append(f"statsmodels skipped on insteval: {SM_INSTEVAL_REASON}; "
                         "--sm-insteval-cap SECONDS runs it once per fit with a time cap")
        else:
            notes.append(f"statsmodels on insteval: one fit per fit type, in a child "
                         f"process stopped after {args.sm_insteval_cap:g} s")
    for n in notes:
        print(n, flush=True)

    meta = {"machine": machine_info(), "loadavg_start": os.getloadavg(),
            "blas_threads_env": {k: os.environ.get(k) for k in BLAS_THREAD_VARS},
            "statsmodels": sm_version, "reps": args.reps, "large_reps": args.large_reps,
            "warmup": args.warmup, "notes": notes}
    rows: list[dict] = []
    footnotes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lmmfast-compare-") as tmp:
        for model in models:
            rows += run_model(model, fits, args, r_what if r_ok else None, sm_ok,
                              Path(tmp), meta, footnotes)

    meta["loadavg_end"] = os.getloadavg()
    m = meta["machine"]
    print(f"\nmachine: {m['nproc']} cores, {m['cpu']}; Python {m['python']}, "
          f"lmmfast {m['lmmfast']}, numpy {m['numpy']}"
          + (f", statsmodels {sm_version}" if sm_version else ""))
    if "R" in meta:
        r = meta["R"]
        print(f"R: {r['R']}, lme4 {r['lme4']}, Matrix {r['Matrix']}, BLAS {r['blas']}")
    env = {k: v for k, v in meta["blas_threads_env"].items() if v is not None}
    print("BLAS threads: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env
                              else "library defaults (no *_NUM_THREADS set)"))
    print("load average (1, 5, 15 min): start "
          + ", ".join(f"{x:.2f}" for x in meta["loadavg_start"]) + "; end "
          + ", ".join(f"{x:.2f}" for x in meta["loadavg_end"]))
    print(f"median of {args.reps} interleaved rounds ({args.large_reps} for insteval) after "
          f"{args.warmup} warm-up round(s); peer/lmmfast > 1: lmmfast faster; "
          "Δobj = lmmfast - peer (REML criterion or deviance; < 0: lmmfast lower)\n")
    print(render(rows, args.markdown))
    for note in footnotes:
        print(("\n" if args.markdown else "") + "note: " + note)
    meta["footnotes"] = footnotes
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
