"""A large GLMM: 200,000 rows of Poisson counts over 5,000 groups with a
correlated random intercept and slope, ``y ~ 1 + x + (1 + x | g)``.

Usage::

    python benchmarks/bench_glmm_scale.py                 # n = 200,000, 5,000 groups
    python benchmarks/bench_glmm_scale.py --rows 50000 --groups 1000 --json out.json

The data (seed 1): x ~ N(0, 1), group g uniform over the groups,
eta = 0.5 + 0.3 x + b_0g + b_1g x with (b_0, b_1) ~ N(0, [[0.25, 0.05],
[0.05, 0.09]]), y ~ Poisson(exp(eta)).  Reported, never asserted: the
seconds of ``lmmfast.glmer`` end to end (build and fit), with the threads
it chooses for its passes over the rows and on one thread, the evaluations
of each stage, -2 log L and theta, and the peak memory of the fit
(tracemalloc: numpy arrays included) against the bytes of the input
columns (y, x and g: 24 bytes a row).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd

import lmmfast


def simulate(n_rows: int, n_groups: int, seed: int = 1) -> pd.DataFrame:
    """The Poisson design of the module docstring."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_groups, n_rows)
    x = rng.normal(size=n_rows)
    b = rng.multivariate_normal([0.0, 0.0], [[0.25, 0.05], [0.05, 0.09]], n_groups)
    eta = 0.5 + 0.3 * x + b[g, 0] + b[g, 1] * x
    y = rng.poisson(np.exp(eta)).astype(np.float64)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})


def run(n_rows: int, n_groups: int) -> dict:
    data = simulate(n_rows, n_groups)
    input_bytes = int(data["y"].nbytes + data["x"].nbytes + 8 * n_rows)   # g as 8-byte codes
    formula = "y ~ 1 + x + (1 + x | g)"
    lmmfast.glmer(formula, data.iloc[:2000], family="poisson")   # compile / import warm-up
    tracemalloc.start()
    t0 = time.perf_counter()
    fit = lmmfast.glmer(formula, data, family="poisson")
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t0 = time.perf_counter()
    untraced = lmmfast.glmer(formula, data, family="poisson")
    seconds_untraced = time.perf_counter() - t0
    lmmfast.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        lmmfast.glmer(formula, data, family="poisson")
        seconds_one = time.perf_counter() - t0
    finally:
        lmmfast.set_num_threads(None)
    return {"rows": n_rows, "groups": n_groups, "formula": formula,
            "seconds": seconds_untraced, "seconds_traced": seconds,
            "row_threads": untraced.pirls.rows.workers, "row_threads_traced": fit.pirls.rows.workers,
            "seconds_one_thread": seconds_one, "load_average": os.getloadavg()[0],
            "n_evals": int(fit.n_evals), "stage_evals": list(fit.stage_evals),
            "minus2loglik": float(fit.objective), "theta": fit.theta.tolist(),
            "fixef": fit.fixef.to_dict(),
            "peak_mb": peak / 2 ** 20, "input_mb": input_bytes / 2 ** 20,
            "peak_over_input": peak / input_bytes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--groups", type=int, default=5_000)
    ap.add_argument("--json", metavar="FILE", help="write the result to FILE")
    args = ap.parse_args(argv)
    res = run(args.rows, args.groups)
    print(f"{res['formula']}: {res['rows']:,} rows, {res['groups']:,} groups")
    print(f"  {res['seconds']:.2f} s end to end on {res['row_threads']} thread(s) for the "
          f"rows ({res['seconds_one_thread']:.2f} s on one; {res['seconds_traced']:.2f} s on "
          f"{res['row_threads_traced']} under tracemalloc), {res['n_evals']} evaluations "
          f"(stages {res['stage_evals']}), load average {res['load_average']:.2f}")
    print(f"  -2 log L = {res['minus2loglik']:.4f}, theta = "
          f"{np.round(res['theta'], 5).tolist()}")
    print(f"  peak memory {res['peak_mb']:.1f} MB = {res['peak_over_input']:.2f} x the "
          f"input columns ({res['input_mb']:.1f} MB)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
