"""Time lmmfast against lme4 (R) and the Python peers on the reference suite.

Usage::

    python benchmarks/compare.py                        # every model, REML and ML
    python benchmarks/compare.py --models sleep_slope,penicillin --reps 20
    python benchmarks/compare.py --markdown --json results.json
    python benchmarks/compare.py --busy 2               # idle, then with 2 busy processes

What is timed, for each tool, is one call from a pandas/R data frame and a
formula to the fitted model, as a user makes it:

* lmmfast: ``lmmfast.lmer(formula, data, reml=...)``;
* lme4: ``lmer(formula, data, REML = ...)``, timed inside R with
  ``Sys.time()`` (microsecond resolution; ``proc.time()``'s elapsed counter
  only has 1 ms), so R's start-up and package loading are not counted.  One
  R process per model reads the data once, then answers one request per
  line on its standard input ("fit REML", "refit ML", ...) with a JSON line;
  the Python driver interleaves these requests with the Python fits;
* mixedlm (PyPI, Rust backend): ``mixedlm.lmer(formula, data, REML=...)``
  with lme4's formula;
* lme-python (PyPI, Rust): ``lme_python.lmer(formula, data, reml=...)`` with
  lme4's formula, except that ``(1 + Days || Subject)``, which it does not
  parse, is written as lme4 expands it, ``(1 | Subject) + (0 + Days |
  Subject)``; skipped on insteval, where one fit takes > 300 s;
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
lme4 ``fit@optinfo$feval``) and, for every tool, its objective minus lme4's
(REML criterion or deviance; -2 log-likelihood of each Python tool), so that
a fast fit that stops short of lme4's optimum shows: > 0 means the tool
stopped at a higher criterion than lme4.  Without R, the differences are
taken to lme4's stored fits (``tests/fixtures/lme4_results.json``).

The refit rows time ``boot.refit(y_new, start=theta0)`` for sleep_slope, as
``lmmfast.bootstrap`` refits: ``boot = fit.copy()`` is made once, untimed, and
refitted in place in every round, each time from the original fit's theta
``theta0``; against lme4's ``refit(fit, newresp = y_new)`` (one new response:
the observed ``Reaction`` plus N(0, 25^2) noise, seeded; lme4's refit also
starts from the original fit's theta).

``--busy N`` runs the suite twice in one run: first idle, then with N
CPU-bound child processes of its own spinning (stopped when the run ends,
also on Ctrl-C or SIGTERM).  In both phases every round also times lmmfast on
one thread (``lmmfast.lmer(..., n_threads=1)`` when ``lmer`` takes that
argument, else the call inside ``threadpoolctl``'s one-thread BLAS limit),
and a last table sets lmmfast's idle and busy times side by side, each with
its ratio to the one-thread time of the same phase.

``--json FILE`` keeps every timing, the process CPU seconds of each call
(Python ``time.process_time``; R ``proc.time()`` user + system, 1 ms
resolution), the load average before and after, and the versions and BLAS.

``--blas-threads N`` runs every tool with its BLAS limited to N threads.  On
a machine whose cores are busy with other work, multi-threaded OpenBLAS can
make a fit several times slower than one thread (presumably its waiting
threads spin and compete with the other work), so compare with
``--blas-threads 1`` when the load average is high.

Peers that are not installed are skipped with a line saying so.

``--suite glmm`` times ``lmmfast.glmer`` instead, on the 10 models of
``tests/fixtures/glmm/lme4_glmer_results.json`` (cbpp, VerbAgg and epil:
Laplace, nAGQ = 0, 9 and 25, probit, a proportion with weights, random
slopes), against lme4's ``glmer`` (same R session protocol, request
``glmer FAMILY LINK NAGQ WEIGHTS``), mixedlm's ``glmer`` (a cbind response
as the proportion with ``weights=`` trials, which it takes instead) and,
for a 0/1 response (VerbAgg), statsmodels' ``BinomialBayesMixedGLM``
(``fit_vb``: a variational Bayes approximation, no -2 log L, so no Δobj).
Its column "fit" names the approximation (Laplace, nAGQ = k); Δobj is -2
log L minus lme4's; for nAGQ > 1 mixedlm's -2 log L is on another constant
than lme4's (the binomial's log choose(n, k) terms), so its Δobj there is
that constant, not a worse fit.  Without R, Δobj is taken to the fixture's
stored lme4 fits.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

import lmmfast

sys.path.insert(0, str(Path(__file__).parent))
from models import MODELS  # noqa: E402

LARGE = {"insteval"}
FITS = ("REML", "ML")
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
REFIT_MODEL = "sleep_slope"
LME4_STORED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lme4_results.json"
ONE_THREAD = "lmmfast 1 thread"
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
    } else if (parts[1] == "glmer") {
      fam <- get(parts[2])(link = parts[3])
      w <- if (length(parts) >= 5 && parts[5] != "-") d[[parts[5]]] else NULL
      c0 <- proc.time(); t0 <- Sys.time()
      fit <- suppressMessages(suppressWarnings(
        glmer(form, d, family = fam, nAGQ = as.integer(parts[4]), weights = w)))
      el <- as.numeric(difftime(Sys.time(), t0, units = "secs")); c1 <- proc.time()
      report(fit, el, c1 - c0)
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


# ---------------------------------------------------------------- Python peers

# lme-python does not parse ``||``: the model written as lme4 expands it
LMEPY_FORMULA = {"sleep_zerocorr": "Reaction ~ 1 + Days + (1 | Subject) + (0 + Days | Subject)"}


def mixedlm_fit(model: str, formula: str, data: pd.DataFrame, reml: bool):
    import mixedlm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mixedlm.lmer(formula, data, REML=reml)


def lmepy_fit(model: str, formula: str, data: pd.DataFrame, reml: bool):
    import lme_python

    return lme_python.lmer(LMEPY_FORMULA.get(model, formula), data, reml=reml)


@dataclass(frozen=True)
class Peer:
    """A Python package fitting the reference models: how to call it and read its criterion."""

    name: str                      # column header
    short: str                     # in the ratio and difference headers
    module: str                    # what is imported
    pip: str                       # what is installed
    fit: Callable                  # (model, formula, data, reml) -> result
    objective: Callable            # result -> -2 log-likelihood (REML: REML criterion)
    skip: dict = field(default_factory=dict)   # model -> why it is not run

    def available(self) -> tuple[bool, str]:
        """(importable, version or the reason it is skipped)."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            return False, f"not installed (pip install {self.pip})"
        except Exception as exc:  # a broken install: say so, run the rest
            return False, f"import {self.module} failed: {type(exc).__name__}: {exc}"
        version = getattr(mod, "__version__", None)
        if version is None:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                version = importlib.metadata.version(self.pip)
        return True, str(version)

    def summary(self, res) -> dict:
        return {"objective": self.objective(res)}


PEERS = (
    Peer("statsmodels", "sm", "statsmodels", "statsmodels",
         lambda model, formula, data, reml: sm_fit(model, data, reml),
         lambda res: -2.0 * float(res.llf), {"insteval": SM_INSTEVAL_REASON}),
    Peer("mixedlm", "mixedlm", "mixedlm", "mixedlm", mixedlm_fit,
         lambda res: -2.0 * float(res.logLik().value)),
    Peer("lme-python", "lme-python", "lme_python", "lme-python", lmepy_fit,
         lambda res: -2.0 * float(res.log_likelihood),
         {"insteval": "lme-python on insteval takes > 300 s per fit "
                      "(shared/reference/python_peers.md)"}),
)


def available_peers(notes: list[str]) -> tuple[list[Peer], dict[str, str]]:
    """The installed peers and their versions; a note for each one skipped."""
    found, versions = [], {}
    for peer in PEERS:
        ok, what = peer.available()
        if ok:
            found.append(peer)
            versions[peer.name] = what
        else:
            notes.append(f"{peer.name} skipped: {what}")
    return found, versions


# ------------------------------------------------------------------ busy machine

# spins until stopped, or until its parent is gone (so it cannot outlive a killed run)
BUSY_LOOP = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
             "    for _ in range(1000000):\n        pass\n")


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` CPU-bound child processes spinning while the block runs; yields their pids."""
    procs: list[subprocess.Popen] = []

    def stop() -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)

    atexit.register(stop)
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        yield [proc.pid for proc in procs]
    finally:
        stop()
        atexit.unregister(stop)


_BLAS_CONTROLLER = None


def one_thread_how(func: Callable) -> str | None:
    """How ``func`` is run on one thread, or None when it cannot be."""
    if "n_threads" in inspect.signature(func).parameters:
        return "n_threads=1"
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return None
    return "threadpoolctl BLAS limit 1"


def one_thread_tool(func: Callable, summarise: Callable, *args, **kwargs) -> Callable:
    """A tool timing ``func(*args, **kwargs)`` on one thread (see ``one_thread_how``).

    With threadpoolctl, the limit is set before the clock starts and lifted
    after it stops."""
    if one_thread_how(func) == "n_threads=1":
        return tool_of(lambda: func(*args, n_threads=1, **kwargs), summarise)
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController
        _BLAS_CONTROLLER = ThreadpoolController()
    timed = tool_of(lambda: func(*args, **kwargs), summarise)

    def tool():
        with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
            return timed()
    return tool


# ----------------------------------------------------------------------- driving


def _time(fn):
    """(wall seconds, process CPU seconds, result) of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return t1 - t0, c1 - c0, out


def tool_of(call: Callable, summarise: Callable) -> Callable:
    """A tool: () -> (wall seconds, CPU seconds, summary) of one timed ``call()``;
    ``summarise`` (untimed) turns its result into {"objective": ..., ...}."""
    def tool():
        seconds, cpu_seconds, out = _time(call)
        return seconds, cpu_seconds, summarise(out)
    return tool


def lmmfast_summary(fit) -> dict:
    return {"objective": float(fit.objective), "n_evals": int(fit.n_evals)}


def r_tool(session: "RSession", what: str) -> Callable:
    """A tool sending one request to R: its wall and CPU seconds as timed inside R."""
    def tool():
        out = session.request(what)
        info = {"objective": float(out.get("objective_fresh", out["objective"])),
                "n_evals": int(out["feval"])}
        if "objective_fresh" in out:
            info["refit"] = {k: out[k] for k in ("objective", "objective_fresh",
                                                 "dims_REML", "p")}
        return out["seconds"], out["cpu_seconds"], info
    return tool


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


def stored_lme4_objective(model: str, fit: str) -> float | None:
    """lme4's objective of ``model``/``fit`` from the stored reference fits, if any."""
    with contextlib.suppress(OSError, KeyError, ValueError):
        models = json.loads(LME4_STORED.read_text())["models"]
        return float(models[model]["fits"][fit]["objective"])
    return None


def round_orders(tools: list[str]) -> tuple[list[str], list[str]]:
    """The cyclic order of the tools in even rounds and in odd rounds.

    A fit right after the same fit runs with warm caches (about twice as fast
    on the small models), so lmmfast on one thread is not put next to lmmfast:
    it goes half-way round the cycle, each follows another tool, and the two
    swap places every other round so that each follows both of those tools.
    With three tools (the refit rows) they cannot be kept apart: each then
    follows the other in every other round."""
    if ONE_THREAD not in tools or len(tools) < 3:
        return tools, tools
    order = [t for t in tools if t != ONE_THREAD]
    order.insert(len(order) // 2 + 1, ONE_THREAD)
    i, j = order.index("lmmfast"), order.index(ONE_THREAD)
    swapped = list(order)
    swapped[i], swapped[j] = order[j], order[i]
    return order, swapped


def run_row(model: str, fit: str, tools: dict, reps: int, warmup: int) -> dict:
    """Interleaved rounds of every tool on one model and fit; returns the row."""
    times: dict[str, list[float]] = {t: [] for t in tools}
    cpu: dict[str, list[float]] = {t: [] for t in tools}
    last: dict[str, dict] = {}
    order, swapped = round_orders(list(tools))
    for rnd in range(warmup + reps):
        k = rnd % len(order)
        cycle = order if rnd % 2 == 0 else swapped
        for tool in cycle[k:] + cycle[:k]:
            seconds, cpu_seconds, last[tool] = tools[tool]()
            if rnd >= warmup:
                times[tool].append(seconds)
                cpu[tool].append(cpu_seconds)
    row = {"model": model, "fit": fit, "reps": reps, "times": times, "cpu_times": cpu,
           "median": {t: statistics.median(v) for t, v in times.items()},
           "median_cpu": {t: statistics.median(v) for t, v in cpu.items()},
           "objective": {t: out["objective"] for t, out in last.items()},
           "n_evals": {t: out["n_evals"] for t, out in last.items() if "n_evals" in out},
           "notes": {}}
    if "lme4" in last:
        row["lme4_objective"], row["lme4_objective_from"] = row["objective"]["lme4"], "lme4"
        if "refit" in last["lme4"]:
            row["lme4_refit"] = last["lme4"]["refit"]
    return row


def run_model(model: str, fits: list[str], args, rscript: str | None, peers: list[Peer],
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
    sm_capped = args.sm_insteval_cap is not None and model in LARGE
    rows = []
    try:
        for fit in fits:
            reml = fit == "REML"
            tools = {"lmmfast": tool_of(lambda: lmmfast.lmer(formula, data, reml=reml),
                                        lmmfast_summary)}
            if args.one_thread:
                tools[ONE_THREAD] = one_thread_tool(lmmfast.lmer, lmmfast_summary,
                                                    formula, data, reml=reml)
            if session is not None:
                tools["lme4"] = r_tool(session, f"fit {fit}")
            skipped = {}
            for peer in peers:
                if model in peer.skip:
                    skipped[peer.name] = "skipped (> 300 s)"
                    continue
                tools[peer.name] = tool_of(
                    lambda peer=peer: peer.fit(model, formula, data, reml), peer.summary)
            print(f"{model} {fit} ...", file=sys.stderr, flush=True)
            row = run_row(model, fit, tools, reps, args.warmup)
            row["notes"].update(skipped)
            if "lme4_objective" not in row:
                stored = stored_lme4_objective(model, fit)
                if stored is not None:
                    row["lme4_objective"], row["lme4_objective_from"] = stored, "stored"
            if sm_capped and "statsmodels" in skipped:
                res = sm_insteval_capped(fit, args.sm_insteval_cap)
                if res.get("capped"):
                    row["notes"]["statsmodels"] = f"> {args.sm_insteval_cap:g} s"
                else:
                    del row["notes"]["statsmodels"]
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
            rtools = {"lmmfast": tool_of(lambda: boot.refit(y_new, start=theta0),
                                         lmmfast_summary)}
            if args.one_thread:
                # a model made with n_threads=1 where lmer takes it keeps it in its refits
                one = ({"n_threads": 1} if one_thread_how(lmmfast.lmer) == "n_threads=1"
                       else {})
                boot1 = lmmfast.lmer(formula, data, reml=reml, **one).copy()
                rtools[ONE_THREAD] = (
                    tool_of(lambda: boot1.refit(y_new, start=theta0), lmmfast_summary) if one
                    else one_thread_tool(boot1.refit, lmmfast_summary, y_new, start=theta0))
            if session is not None:
                rtools["lme4"] = r_tool(session, f"refit {fit}")
            print(f"{model} {fit} refit ...", file=sys.stderr, flush=True)
            rrow = run_row(f"{model} refit", fit, rtools, reps, args.warmup)
            rrow["notes"].update({peer.name: "n/a" for peer in peers})
            rows.append(rrow)
            lr = rrow.get("lme4_refit")
            if reml and lr and lr["dims_REML"] != lr["p"]:
                note = (f"{model} refit REML: lme4's refit() reports a REML criterion of "
                        f"{lr['objective']:.4f}; it optimises with REML degrees of freedom "
                        f"n - {lr['dims_REML']} instead of n - {lr['p']} "
                        f"(devcomp$dims['REML'] = {lr['dims_REML']}); its Δobj uses the "
                        "criterion of a freshly built lmer() at lme4's refit θ instead")
                if note not in footnotes:
                    footnotes.append(note)
    finally:
        if session is not None:
            session.close()
    return rows


# ---------------------------------------------------------------------- GLMM suite

GLMM_FIXTURE = (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "glmm"
                / "lme4_glmer_results.json")


def glmm_models() -> dict:
    """The fixture's glmer models: formula, family, link, nAGQ, weights, lme4's fit."""
    return json.loads(GLMM_FIXTURE.read_text())["models"]


def glmm_data(name: str) -> pd.DataFrame:
    """A fixture dataset, its factors with the fixture's level order."""
    info = json.loads(GLMM_FIXTURE.read_text())["datasets"][name]
    factors = {c["name"]: c["levels"] for c in info["columns"] if c["type"] == "factor"}
    df = pd.read_csv(GLMM_FIXTURE.parent / Path(info["file"]).name,
                     dtype={n: str for n in factors})
    for n, levels in factors.items():
        df[n] = pd.Categorical(df[n], categories=levels)
    return df


def glmm_fit_name(spec: dict) -> str:
    return "Laplace" if spec["nAGQ"] == 1 else f"nAGQ={spec['nAGQ']}"


def mixedlm_glmer(spec: dict, data: pd.DataFrame):
    """mixedlm's glmer; cbind(s, n - s) as the proportion s / n with weights n."""
    import mixedlm
    from mixedlm import families

    formula, weights = spec["formula"], spec["weights"]
    lhs, rhs = formula.split("~", 1)
    if lhs.strip().startswith("cbind("):
        succ, rest = lhs.strip()[len("cbind("):-1].split(",", 1)
        data = data.assign(_trials=data.eval(f"{succ} + ({rest})"))
        data = data.assign(_prop=data.eval(succ) / data["_trials"])
        formula, weights = "_prop ~" + rhs, "_trials"
    elif "/" in lhs:
        data = data.assign(_prop=data.eval(lhs))
        formula = "_prop ~" + rhs
    fam = (families.Binomial if spec["family"] == "binomial" else families.Poisson)(
        link=spec["link"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mixedlm.glmer(formula, data, family=fam, nAGQ=spec["nAGQ"],
                             weights=None if weights is None
                             else data[weights].to_numpy(np.float64))


def sm_binary_glmm(spec: dict, data: pd.DataFrame):
    """statsmodels' BinomialBayesMixedGLM (variational Bayes) with the model's
    random intercepts as variance components."""
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    lhs, rhs = spec["formula"].split("~", 1)
    fixed = [t.strip() for t in rhs.split("+") if "|" not in t and t.strip()]
    groups = [t.split("|")[1].strip(" )") for t in rhs.split("+") if "|" in t]
    y = data[lhs.strip()]
    frame = data.assign(_y=(y == y.cat.categories[1]).astype(float)
                        if isinstance(y.dtype, pd.CategoricalDtype) else y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BinomialBayesMixedGLM.from_formula(
            "_y ~ " + " + ".join(fixed), {g: f"0 + C({g})" for g in groups}, frame)
        return model.fit_vb()


def sm_binary_applies(spec: dict) -> str | None:
    """Why statsmodels' BinomialBayesMixedGLM is not run on ``spec`` (None: it is)."""
    if spec["family"] != "binomial" or spec["link"] != "logit":
        return "n/a (binomial logit only)"
    if spec["weights"] is not None or spec["formula"].lstrip().startswith("cbind("):
        return "n/a (0/1 response only)"
    if spec["nAGQ"] != 1 or any(
            t.split("|")[0].strip(" (") not in ("1",) for t in spec["formula"].split("+")
            if "|" in t):
        return "n/a (random intercepts, Laplace only)"
    return None


def run_glmm_model(name: str, args, rscript: str | None, peer_names: list[str],
                   workdir: Path, meta: dict) -> dict:
    """One row of the GLMM suite: lmmfast, lme4 and the peers on fixture model ``name``."""
    spec = glmm_models()[name]
    data = glmm_data(spec["dataset"])
    family = (spec["family"], spec["link"])
    tools = {"lmmfast": tool_of(
        lambda: lmmfast.glmer(spec["formula"], data, family=family, nAGQ=spec["nAGQ"],
                              weights=spec["weights"]), lmmfast_summary)}
    session = None
    if rscript is not None:
        session = RSession(rscript, workdir, name, data, spec["formula"])
        meta.setdefault("R", {k: v for k, v in session.info.items()
                              if k not in ("ready", "nrow")})
        tools["lme4"] = r_tool(session, f"glmer {spec['family']} {spec['link']} "
                                        f"{spec['nAGQ']} {spec['weights'] or '-'}")
    notes = {}
    if "mixedlm" in peer_names:
        tools["mixedlm"] = tool_of(lambda: mixedlm_glmer(spec, data),
                                   lambda res: {"objective": -2.0 * float(res.logLik().value)})
    if "statsmodels" in peer_names:
        why = sm_binary_applies(spec)
        if why is None:
            tools["statsmodels"] = tool_of(lambda: sm_binary_glmm(spec, data),
                                           lambda res: {"objective": None})
        else:
            notes["statsmodels"] = why
    print(f"{name} ...", file=sys.stderr, flush=True)
    try:
        row = run_row(name, glmm_fit_name(spec), tools, args.reps, args.warmup)
    finally:
        if session is not None:
            session.close()
    row["notes"].update(notes)
    if "lme4_objective" not in row:
        row["lme4_objective"], row["lme4_objective_from"] = spec["minus2loglik"], "stored"
    return row


def run_glmm_suite(args, models: list[str]) -> int:
    """``--suite glmm``: the table of the fixture's glmer models."""
    notes: list[str] = []
    r_ok, r_what = r_status()
    if not r_ok:
        notes.append(f"lme4 skipped: {r_what}; Δobj is taken to lme4's stored fits "
                     f"({GLMM_FIXTURE.relative_to(GLMM_FIXTURE.parents[3])})")
    peers, versions = available_peers(notes)
    peer_names = [p.name for p in peers if p.name in ("mixedlm", "statsmodels")]
    for n in notes:
        print(n, flush=True)
    meta = {"machine": machine_info(), "loadavg_start": os.getloadavg(), "suite": "glmm",
            "peers": versions, "reps": args.reps, "warmup": args.warmup, "notes": notes}
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmmfast-compare-") as tmp:
        for name in models:
            rows.append(run_glmm_model(name, args, r_what if r_ok else None, peer_names,
                                       Path(tmp), meta))
    meta["loadavg_end"] = os.getloadavg()
    m = meta["machine"]
    print(f"\nmachine: {m['nproc']} cores, {m['cpu']}; Python {m['python']}, "
          f"lmmfast {m['lmmfast']}, numpy {m['numpy']}"
          + "".join(f", {name} {v}" for name, v in versions.items()))
    if "R" in meta:
        r = meta["R"]
        print(f"R: {r['R']}, lme4 {r['lme4']}, Matrix {r['Matrix']}, BLAS {r['blas']}")
    print("load average (1, 5, 15 min): start "
          + ", ".join(f"{x:.2f}" for x in meta["loadavg_start"]) + "; end "
          + ", ".join(f"{x:.2f}" for x in meta["loadavg_end"]))
    print(f"median of {args.reps} interleaved rounds after {args.warmup} warm-up round(s); "
          "peer/lmmfast > 1: lmmfast faster; Δobj = -2 log L of the tool - lme4's (> 0: "
          "the tool stopped at a higher -2 log L than lme4)")
    print("\n" + render(*table_rows(rows), args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


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


SHORT = {"lmmfast": "lmmfast", "lme4": "lme4", **{p.name: p.short for p in PEERS}}


def tools_in(rows: list[dict], candidates) -> list[str]:
    """The tools of ``candidates`` that were run, or skipped with a note, in ``rows``."""
    return [t for t in candidates if any(t in r["median"] or t in r["notes"] for r in rows)]


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the table of one phase."""
    peers = tools_in(rows, ["lme4", *(p.name for p in PEERS)])
    timed = tools_in(rows, ["lmmfast", ONE_THREAD]) + peers
    differenced = ["lmmfast"] + [p for p in peers if p != "lme4"]
    header = (["model", "fit"] + timed + [f"{SHORT[p]}/lmmfast" for p in peers]
              + ["evals lmmfast"] + (["evals lme4"] if "lme4" in peers else [])
              + [f"Δobj {SHORT[t]}" for t in differenced])
    body = []
    for r in rows:
        med, obj, ev = r["median"], r["objective"], r["n_evals"]
        ref = r.get("lme4_objective")
        cells = [r["model"], r["fit"]]
        cells += [r["notes"].get(t) or fmt_s(med.get(t)) for t in timed]
        cells += [fmt_ratio(med.get(p), med.get("lmmfast")) for p in peers]
        cells += [str(ev.get("lmmfast", "-"))]
        cells += [str(ev.get("lme4", "-"))] if "lme4" in peers else []
        cells += [fmt_diff(obj.get(t), ref) for t in differenced]
        body.append(cells)
    return header, body


def busy_rows(idle: list[dict], busy: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of lmmfast's idle and busy times, each against one thread."""
    header = ["model", "fit", "idle lmmfast", f"idle {ONE_THREAD}", "idle lmmfast/1 thread",
              "busy lmmfast", f"busy {ONE_THREAD}", "busy lmmfast/1 thread",
              "lmmfast busy/idle"]
    busy_of = {(r["model"], r["fit"]): r["median"] for r in busy}
    body = []
    for r in idle:
        i, b = r["median"], busy_of.get((r["model"], r["fit"]), {})
        body.append([r["model"], r["fit"], fmt_s(i.get("lmmfast")), fmt_s(i.get(ONE_THREAD)),
                     fmt_ratio(i.get("lmmfast"), i.get(ONE_THREAD)),
                     fmt_s(b.get("lmmfast")), fmt_s(b.get(ONE_THREAD)),
                     fmt_ratio(b.get("lmmfast"), b.get(ONE_THREAD)),
                     fmt_ratio(b.get("lmmfast"), i.get("lmmfast"))])
    return header, body


def render(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=("lmm", "glmm"), default="lmm",
                    help="lmm: lmmfast.lmer on the reference suite (default); glmm: "
                         "lmmfast.glmer on the glmer fixture's 10 models")
    ap.add_argument("--models", default=None,
                    help="comma-separated model names (default: all of the suite): "
                         + ", ".join(MODELS) + "; glmm: " + ", ".join(glmm_models()))
    ap.add_argument("--fits", default="REML,ML", help="REML, ML or both (default)")
    ap.add_argument("--reps", type=int, default=10, help="timed rounds per small model (10)")
    ap.add_argument("--large-reps", type=int, default=3, help="timed rounds for insteval (3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    ap.add_argument("--no-refit", action="store_true", help="skip the refit rows")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="run every model idle, then again with N CPU-bound processes of "
                         "this script's own spinning; both phases also time lmmfast on one "
                         "thread (default: 0, one idle phase)")
    ap.add_argument("--blas-threads", type=int, default=None, metavar="N",
                    help="limit BLAS threads of every tool to N (OPENBLAS_NUM_THREADS, "
                         "OMP_NUM_THREADS, MKL_NUM_THREADS; R inherits them); default: "
                         "leave the environment as it is")
    ap.add_argument("--sm-insteval-cap", type=float, default=None, metavar="SECONDS",
                    help="run statsmodels on insteval once per fit, stopped after SECONDS "
                         "(default: skip it)")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    ap.add_argument("--json", metavar="FILE", help="write every timing and result to FILE")
    ap.add_argument("--sm-one", nargs=2, metavar=("MODEL", "FIT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sm_one:
        sm_one(*args.sm_one)
        return 0
    if args.busy < 0:
        ap.error("--busy takes a number of processes >= 0")
    if args.blas_threads is not None:
        wanted = {v: str(args.blas_threads) for v in BLAS_THREAD_VARS}
        if any(os.environ.get(k) != v for k, v in wanted.items()):
            # BLAS reads these when it is loaded: start again with them set
            os.environ.update(wanted)
            os.execv(sys.executable, [sys.executable, os.path.abspath(__file__),
                                      *(sys.argv[1:] if argv is None else argv)])

    known = MODELS if args.suite == "lmm" else glmm_models()
    models = [m.strip() for m in (args.models or ",".join(known)).split(",") if m.strip()]
    unknown = [m for m in models if m not in known]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.suite == "glmm":
        return run_glmm_suite(args, models)
    fits = [f.strip().upper() for f in args.fits.split(",") if f.strip()]
    if any(f not in FITS for f in fits):
        ap.error("--fits takes REML, ML or REML,ML")

    notes: list[str] = []
    r_ok, r_what = r_status()
    if not r_ok:
        notes.append(f"lme4 skipped: {r_what}; Δobj is taken to lme4's stored fits "
                     f"({LME4_STORED.relative_to(LME4_STORED.parents[2])})")
    peers, versions = available_peers(notes)
    for peer in peers:
        for model, reason in peer.skip.items():
            if model not in models:
                continue
            if peer.name == "statsmodels" and args.sm_insteval_cap is not None:
                notes.append(f"statsmodels on insteval: one fit per fit type, in a child "
                             f"process stopped after {args.sm_insteval_cap:g} s")
            else:
                notes.append(f"{peer.name} skipped on {model}: {reason}"
                             + ("; --sm-insteval-cap SECONDS runs it once per fit with a "
                                "time cap" if peer.name == "statsmodels" else ""))
    args.one_thread = args.busy > 0
    one_thread = one_thread_how(lmmfast.lmer) if args.one_thread else None
    if args.one_thread and one_thread is None:
        args.one_thread = False
        notes.append("lmmfast on one thread skipped: lmmfast.lmer has no n_threads= "
                     "argument and threadpoolctl is not installed (pip install threadpoolctl)")
    elif args.one_thread:
        notes.append(f"{ONE_THREAD}: {one_thread}")
    for n in notes:
        print(n, flush=True)

    meta = {"machine": machine_info(), "loadavg_start": os.getloadavg(),
            "blas_threads_env": {k: os.environ.get(k) for k in BLAS_THREAD_VARS},
            "statsmodels": versions.get("statsmodels"), "peers": versions,
            "reps": args.reps, "large_reps": args.large_reps, "warmup": args.warmup,
            "busy": args.busy, "one_thread": one_thread, "notes": notes, "phases": {}}
    phases = ["idle", "busy"] if args.busy else ["idle"]
    rows: list[dict] = []
    footnotes: list[str] = []
    # a SIGTERM unwinds like Ctrl-C, so that the busy processes are stopped
    on_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        with tempfile.TemporaryDirectory(prefix="lmmfast-compare-") as tmp:
            for phase in phases:
                n_busy = args.busy if phase == "busy" else 0
                if args.busy:
                    print(f"phase {phase}: {n_busy} busy process(es)", file=sys.stderr,
                          flush=True)
                with busy_processes(n_busy) as pids:
                    info = {"busy_pids": pids, "loadavg_start": os.getloadavg()}
                    for model in models:
                        for row in run_model(model, fits, args, r_what if r_ok else None,
                                             peers, Path(tmp), meta, footnotes):
                            row["phase"] = phase
                            rows.append(row)
                    info["loadavg_end"] = os.getloadavg()
                meta["phases"][phase] = info
    finally:
        signal.signal(signal.SIGTERM, on_term)

    meta["loadavg_end"] = os.getloadavg()
    m = meta["machine"]
    print(f"\nmachine: {m['nproc']} cores, {m['cpu']}; Python {m['python']}, "
          f"lmmfast {m['lmmfast']}, numpy {m['numpy']}"
          + "".join(f", {name} {v}" for name, v in versions.items()))
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
          "Δobj = tool - lme4 (REML criterion or deviance; > 0: the tool stopped at a "
          "higher criterion than lme4)")
    for phase in phases:
        if args.busy:
            title = ("idle: no busy processes" if phase == "idle"
                     else f"busy: {args.busy} CPU-bound process(es) spinning")
            print(("\n### " if args.markdown else "\n") + title)
        print("\n" + render(*table_rows([r for r in rows if r["phase"] == phase]),
                            args.markdown))
    if args.busy:
        print(("\n### " if args.markdown else "\n") + "lmmfast idle and busy, against one "
              "thread (default/1 thread > 1: one thread is faster)")
        print("\n" + render(*busy_rows([r for r in rows if r["phase"] == "idle"],
                                       [r for r in rows if r["phase"] == "busy"]),
                            args.markdown))
    for note in footnotes:
        print(("\n" if args.markdown else "") + "note: " + note)
    meta["footnotes"] = footnotes
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
