"""Scale benchmarks: 1,000,000-row simulated designs (pytest-benchmark).

Not run by default (the crossed fit takes minutes); opt in with the
environment variable ``LMMFAST_SCALE=1``::

    LMMFAST_SCALE=1 pytest benchmarks/test_bench_scale.py --benchmark-only
    LMMFAST_SCALE=1 pytest benchmarks/test_bench_scale.py --benchmark-only -k longitudinal

Designs (``lmmfast.datasets.simulate``, seed 1):

* ``longitudinal``: 10,000 subjects x 100 times, correlated random intercept
  and slope: ``y ~ 1 + time + (1 + time | subject)``;
* ``crossed``: two crossed factors of 10,000 and 1,000 levels, random
  intercepts: ``y ~ 1 + (1 | g1) + (1 | g2)``.

For each design three benchmarks: ``setup`` (``LinearMixedModel(formula,
data)``: formula, matrices, cross-products, factor set-up), ``eval`` (one
evaluation of the profiled REML criterion at the true theta) and ``fit``
(``m.fit()`` from lme4's default start).  ``extra_info`` of each holds

* ``n_evals``, ``seconds_per_eval`` (fit time / evaluations) and
  ``total_s`` (setup + fit, one untraced setup timed when the design is
  made, ``setup_s``) on the fit benchmark;
* ``tracemalloc_peak_setup_mb``: peak Python-tracked memory (numpy arrays
  included) while the model is built; ``tracemalloc_model_mb``: what the
  built model keeps; ``tracemalloc_peak_fit_mb``: the peak on top of that
  during the fit (tracemalloc runs during the timed fit; its cost there was
  measured at < 2 %, the fit's work being compiled code);
* ``rss_peak_mb``: the process's peak resident set size so far
  (``resource.getrusage``, a high-water mark: run one design at a time, as
  with ``-k`` above, to attribute it to that design) and ``rss_start_mb``,
  the resident set size before the design's data was made.

Timings are reported, never asserted.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import tracemalloc

import numpy as np
import pytest

import lmmfast
from lmmfast.datasets.simulate import simulate

pytestmark = pytest.mark.skipif(
    os.environ.get("LMMFAST_SCALE", "") in ("", "0"),
    reason="scale benchmarks take minutes: set LMMFAST_SCALE=1 to run them")

N_OBS = 1_000_000
DESIGNS = {
    "longitudinal": {"groups": {"subject": 10_000}},
    "crossed": {"groups": {"g1": 10_000, "g2": 1_000}},
}
ROUNDS = {  # (setup, eval, fit)
    "longitudinal": (3, 20, 3),
    "crossed": (3, 3, 1),
}
MB = 1024 * 1024


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; the peak where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@pytest.fixture(scope="module", params=list(DESIGNS))
def design(request):
    name = request.param
    rss_start = _rss_mb()
    t0 = time.perf_counter()
    data = simulate(N_OBS, seed=1, **DESIGNS[name])
    sim_s = time.perf_counter() - t0
    truth = data.attrs["truth"]
    tracemalloc.start()
    traced = lmmfast.LinearMixedModel(truth["formula"], data)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del traced
    t0 = time.perf_counter()
    model = lmmfast.LinearMixedModel(truth["formula"], data)
    setup_s = time.perf_counter() - t0
    return {
        "name": name, "data": data, "truth": truth, "model": model,
        "theta": np.array(list(truth["theta"].values())),
        "info": {"n_obs": N_OBS, "groups": truth["groups"], "formula": truth["formula"],
                 "simulate_s": sim_s, "setup_s": setup_s,
                 "tracemalloc_peak_setup_mb": peak / MB, "tracemalloc_model_mb": kept / MB,
                 "rss_start_mb": rss_start},
    }


def _record(benchmark, design, **extra):
    benchmark.extra_info.update(design["info"])
    benchmark.extra_info.update(extra)
    benchmark.extra_info["rss_peak_mb"] = _peak_rss_mb()


def test_setup(benchmark, design):
    truth, data = design["truth"], design["data"]
    rounds = ROUNDS[design["name"]][0]
    benchmark.pedantic(lmmfast.LinearMixedModel, args=(truth["formula"], data), rounds=rounds)
    _record(benchmark, design)


def test_eval(benchmark, design):
    model, theta = design["model"], design["theta"]
    rounds = ROUNDS[design["name"]][1]
    value = benchmark.pedantic(model.criterion, args=(theta,), rounds=rounds,
                               warmup_rounds=1 if rounds > 3 else 0)
    _record(benchmark, design, criterion_at_truth=value)


def test_fit(benchmark, design):
    model = design["model"]
    rounds = ROUNDS[design["name"]][2]
    peaks, seconds = [], []

    def fit():
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            return model.fit()
        finally:
            seconds.append(time.perf_counter() - t0)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    benchmark.pedantic(fit, rounds=rounds)
    fit_s = float(np.median(seconds))
    _record(benchmark, design, n_evals=model.n_evals, seconds_per_eval=fit_s / model.n_evals,
            total_s=design["info"]["setup_s"] + fit_s, objective=model.objective,
            theta=model.theta.to_dict(), theta_true=design["truth"]["theta"],
            tracemalloc_peak_fit_mb=max(peaks) / MB)
