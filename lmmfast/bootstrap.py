"""Parametric bootstrap, as lme4's ``bootMer`` and MixedModels.jl's ``parametricbootstrap`` (theory.md, eq. 49).

Each replicate simulates a response from the fit (eq. 48: new random effects
and new noise at the estimates) and refits the model to it by the same
criterion (REML or ML).  The refit re-uses the design: only the response
parts of the cross-products change (eq. 26), and the optimiser starts from
the fit's theta, so nothing is re-parsed and the only per-replicate
allocation is the response.

Reproducibility: replicate i draws its response from its own generator,
seeded by the i-th child of ``numpy.random.SeedSequence(seed)``, and every
refit starts from the same theta, so the result does not depend on
``n_jobs``, on the backend or on the order in which workers finish.

Parallelism: the compiled criterion releases the GIL, but for models of the
size of sleepstudy an evaluation takes microseconds and most of the time is
spent in the optimiser's Python callback, which holds it.  Threads then run
one at a time (measured on 2 cores, sleepstudy, 1,000 replicates: threads
gave no speed-up), while forked worker processes each run their own refits.
``backend="process"`` (the default where ``fork`` is available) forks
``n_jobs`` workers that inherit the fit; ``backend="thread"`` uses threads.
Each worker runs its BLAS on one thread, and ``n_jobs`` defaults to the
cores this process may use, so workers x BLAS threads never exceed them; a
serial run (``n_jobs=1``) uses the BLAS threads a fit of the model would
(lmmfast.threads).
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from .arguments import as_choice, as_count, as_flag, as_n_jobs
from .errors import LmmError, LmmWarning
from .profile import parameter_names, theta_to_sdcor
from .simulate import Simulator, seed_sequence, spawn_seeds
from .threads import allowed_cores, blas_threads, limit_blas, set_blas_threads, set_num_threads

__all__ = ["bootstrap", "run_replicates"]


# ------------------------------------------------------------------ progress
class _Progress:
    """A progress bar on stderr: tqdm when installed, else one self-rewriting line."""

    def __init__(self, total: int, enabled: bool, desc: str = "bootstrap"):
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.perf_counter()
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="fit")
            except ImportError:
                self._desc = desc
                self._draw()

    def _draw(self):
        width = 30
        frac = self.done / self.total if self.total else 1.0
        fill = int(round(width * frac))
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r{self._desc} [{'#' * fill}{'.' * (width - fill)}] "
                         f"{self.done}/{self.total} {elapsed:5.1f}s")
        sys.stderr.flush()

    def update(self, k: int):
        if not self.enabled:
            return
        self.done += k
        if self._bar is not None:
            self._bar.update(k)
        else:
            self._draw()

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ------------------------------------------------------------------ replicates
class _Job:
    """Everything a worker needs: the fit, the seeds and the layout of a result row.

    The interface of a job, shared with the GLMM's (``lmmfast.glmm.bootstrap``):
    ``width`` (values per replicate), ``new_model()`` (a private copy of the
    fit to refit), ``serial_threads()`` (the BLAS threads of a serial run) and
    ``run(model, indices)``.
    """

    def __init__(self, fit, seeds):
        self.fit = fit
        self.seeds = seeds
        self.theta0 = fit.theta.to_numpy().copy()
        self.p = fit.p
        self.n_theta = len(self.theta0)
        self.width = 2 + self.p + 2 * self.n_theta
        self.simulator = Simulator(fit, use_re=True, what="bootstrap()")

    def new_model(self):
        return self.fit.copy()

    def serial_threads(self):
        return blas_threads(self.fit._layout, self.fit.n_threads)

    def run(self, model, indices) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Refit ``model`` (a private copy of the fit) to the responses of ``indices``."""
        out = np.full((len(indices), self.width), np.nan)
        n_warn = n_fail = 0
        p, nt = self.p, self.n_theta
        for row, i in enumerate(indices):
            y = self.simulator.draw(np.random.default_rng(self.seeds[i]))
            try:
                model.refit(y, start=self.theta0)
            except LmmError:
                n_fail += 1
                continue
            n_warn += not model.converged
            theta = model._theta
            sigma = model.sigma
            res = out[row]
            res[0] = model.objective
            res[1] = sigma
            res[2:2 + p] = model._solution["beta"]
            res[2 + p:2 + p + nt] = theta
            res[2 + p + nt:] = theta_to_sdcor(model, theta, sigma)
        return np.asarray(indices), out, n_warn, n_fail


_FORK_JOB: dict = {}


def _process_block(indices):
    job = _FORK_JOB["job"]
    model = _FORK_JOB.get("model")
    if model is None:
        model = _FORK_JOB["model"] = job.new_model()
    return job.run(model, indices)


def _worker_init() -> None:
    """A forked worker: its BLAS and a GLMM's passes over rows on one thread (the
    workers share the cores)."""
    set_blas_threads(1)
    set_num_threads(1)


def _blocks(n: int, n_jobs: int) -> list[np.ndarray]:
    size = max(1, min(100, math.ceil(n / (8 * n_jobs))))
    return [np.arange(s, min(n, s + size)) for s in range(0, n, size)]


def run_replicates(make_job, n: int, seed=None, n_jobs: int | None = None, progress=None,
                   backend: str | None = None) -> tuple[np.ndarray, dict]:
    """Run ``n`` replicates of the job ``make_job(seeds)`` on ``n_jobs`` workers.

    Replicate i uses the i-th child of ``SeedSequence(seed)``.  Returns the
    ``n x job.width`` results (rows of NaN for failed refits) and the
    attributes ``seed``, ``n_jobs``, ``backend``, ``seconds``, ``n_failed``
    and ``n_not_converged``.
    """
    n = as_count(n, "n")
    n_jobs = min(as_n_jobs(n_jobs, allowed_cores()), max(n, 1))
    if backend is None:
        backend = "process" if "fork" in multiprocessing.get_all_start_methods() else "thread"
    backend = as_choice(backend, "backend", ("process", "thread"))
    if backend == "process" and "fork" not in multiprocessing.get_all_start_methods():
        backend = "thread"
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    progress = as_flag(progress, "progress")

    base = seed_sequence(seed)
    job = make_job(spawn_seeds(base, n))
    result = np.full((n, job.width), np.nan)
    bar = _Progress(n, bool(progress))
    start = time.perf_counter()
    blocks = _blocks(n, n_jobs)
    with warnings.catch_warnings():
        # replicates that do not converge are counted, not reported one by one
        warnings.simplefilter("ignore", LmmWarning)
        n_warn, n_fail = _run(job, blocks, n, n_jobs, backend, result, bar)
    seconds = time.perf_counter() - start
    attrs = dict(seed=base.entropy, n_jobs=n_jobs, backend=backend if n_jobs > 1 else "serial",
                 seconds=seconds, n_failed=n_fail, n_not_converged=n_warn)
    return result, attrs


def bootstrap(fit, n: int, seed=None, n_jobs: int | None = None, progress=None, *,
              backend: str | None = None) -> pd.DataFrame:
    """Parametric bootstrap of a fit: ``n`` simulated responses (eq. 48), each refitted (eq. 49).

    Parameters
    ----------
    fit : LinearMixedModel
        A fitted model; replicates are refitted by its criterion (REML or ML).
    n : int
        Number of replicates (a non-negative integer).
    seed : int, SeedSequence, Generator or None
        Replicate i uses the i-th child of ``SeedSequence(seed)``; the result
        is the same for every ``n_jobs`` and backend.
    n_jobs : int, optional
        Workers; default (None or -1) all the cores this process may use.
        Each runs its BLAS on one thread.
    progress : bool, optional
        Progress bar on stderr; default: when stderr is a terminal.  Uses
        tqdm if it is installed.
    backend : {"process", "thread"}, optional
        Default ``"process"`` (forked workers) where ``fork`` exists, else threads.

    Returns
    -------
    pandas.DataFrame
        One row per replicate: ``objective`` (REML criterion or deviance),
        ``sigma``, the fixed effects, theta (lme4's names, e.g.
        ``Subject.(Intercept)``) and the standard deviations/correlations of
        the random effects (lme4's descriptive names, e.g.
        ``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``).  A
        replicate whose refit failed is a row of NaN.  ``attrs``: ``seed``
        (the SeedSequence entropy), ``n_jobs``, ``backend``, ``seconds``,
        ``n_failed``, ``n_not_converged`` (refits whose optimiser stopped for
        another reason than convergence; their warnings are not shown one by
        one) and ``estimates`` (the same columns for the fit itself).
    """
    fit._require_fit()
    result, attrs = run_replicates(lambda seeds: _Job(fit, seeds), n, seed, n_jobs, progress,
                                   backend)
    columns = _columns(fit)
    df = pd.DataFrame(result, columns=columns)
    df.index.name = "replicate"
    theta = fit.theta.to_numpy()
    est = np.concatenate([[fit.objective, fit.sigma], fit.fixef.to_numpy(), theta,
                          theta_to_sdcor(fit, theta, fit.sigma)])
    df.attrs.update(attrs, estimates=dict(zip(columns, est.tolist())), reml=bool(fit.reml))
    return df


def _run(job, blocks, n, n_jobs, backend, result, bar) -> tuple[int, int]:
    """Run the blocks of replicates serially, on threads or on forked processes; fill ``result``."""
    n_warn = n_fail = 0
    try:
        if n_jobs == 1 or n == 0:
            model = job.new_model()
            with job.serial_threads():
                for blk in blocks:
                    idx, rows, w, f = job.run(model, blk)
                    result[idx] = rows
                    n_warn, n_fail = n_warn + w, n_fail + f
                    bar.update(len(idx))
        elif backend == "thread":
            local = threading.local()

            def work(blk):
                if not hasattr(local, "model"):
                    local.model = job.new_model()
                return job.run(local.model, blk)

            with limit_blas(1), ThreadPoolExecutor(max_workers=n_jobs) as pool:
                for idx, rows, w, f in pool.map(work, blocks):
                    result[idx] = rows
                    n_warn, n_fail = n_warn + w, n_fail + f
                    bar.update(len(idx))
        else:
            _FORK_JOB.clear()
            _FORK_JOB["job"] = job
            try:
                ctx = multiprocessing.get_context("fork")
                warnings.simplefilter("ignore", DeprecationWarning)
                pool = ctx.Pool(processes=n_jobs, initializer=_worker_init)
                try:
                    for idx, rows, w, f in pool.imap_unordered(_process_block, blocks):
                        result[idx] = rows
                        n_warn, n_fail = n_warn + w, n_fail + f
                        bar.update(len(idx))
                finally:
                    pool.terminate()
                    pool.join()
            finally:
                _FORK_JOB.clear()
    finally:
        bar.close()
    return n_warn, n_fail


def _columns(fit) -> list[str]:
    _, desc = parameter_names(fit)
    n_theta = len(fit.theta_names)
    return (["objective", "sigma"] + list(fit.fixef_names) + list(fit.theta_names)
            + desc[:n_theta])
