"""Fit a 20-million-row crossed design from partitioned Parquet on a Dask LocalCluster.

The design mimics lme4's InstEval at scale: 50,000 students (``g1``) each rate
40 of 2,000 lecturers (``g2``, drawn at random per student), 400 ratings per
student, with a continuous covariate and a three-level fixed factor::

    y ~ 1 + x + f + (1 | g1) + (1 | g2)

It is written as Parquet files of 500,000 rows each (by a separate process, so
the client's memory figures are those of the fit alone), then fitted with
``lmmfast.lmer(formula, "DIR/*.parquet")`` through a ``LocalCluster`` of
``--workers`` processes with one thread each.  Reported:

* wall time of the fit (reading, the passes over the data, the reduction and
  the optimisation), and of ``summary()`` (two more passes for the exact
  quantiles of the scaled residuals);
* peak resident memory of the client process (which also runs the
  scheduler) and of each worker process (``getrusage`` high-water marks;
  each worker's resident memory before the fit as well);
* the bytes moved to the client: the sizes of the reduced results as lmmfast
  measures them (``fit.dask_stats``) and as the workers logged their
  transfers to anything that is not a worker (distributed's
  ``transfer_outgoing_log``), with the bytes of the data itself for scale.

Usage::

    python benchmarks/bench_dask.py                  # 20,000,000 rows, 2 workers
    python benchmarks/bench_dask.py --rows 2000000   # a quicker run
    python benchmarks/bench_dask.py --json out.json  # also write the figures

BLAS runs one thread per process (``OPENBLAS_NUM_THREADS=1`` etc. unless set),
as the workers have one thread each; set ``OPENBLAS_NUM_THREADS=2`` to let the
client's optimisation use both cores of an otherwise idle machine.  The load
average before and after the fit is reported, since other work on the
machine slows everything down.
The Parquet data is kept in ``--dir`` (default: a temporary directory,
removed afterwards) and reused when it already holds the requested rows.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

N_G1, N_G2, PER_G1 = 50_000, 2_000, 40
ROWS_PER_FILE = 500_000
FORMULA = "y ~ 1 + x + f + (1 | g1) + (1 | g2)"
TRUTH = {"beta": [2.0, 0.5, 0.3, -0.2], "sd_g1": 0.6, "sd_g2": 0.3, "sigma": 1.0}
MB = 2 ** 20


def generate(directory: Path, rows: int, seed: int = 20240) -> None:
    """Write the design as Parquet files of ROWS_PER_FILE rows (vectorised, file by file)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    lecturers = np.stack([rng.choice(N_G2, PER_G1, replace=False) for _ in range(N_G1)])
    b1 = TRUTH["sd_g1"] * rng.standard_normal(N_G1)
    b2 = TRUTH["sd_g2"] * rng.standard_normal(N_G2)
    beta = TRUTH["beta"]
    directory.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        g1 = (np.arange(start, start + n) * N_G1 // rows).astype(np.int32)  # students in blocks
        g2 = lecturers[g1, rng.integers(0, PER_G1, n)].astype(np.int32)
        x = rng.standard_normal(n)
        f = rng.integers(0, 3, n)
        y = beta[0] + beta[1] * x + np.array([0.0, beta[2], beta[3]])[f] + b1[g1] + b2[g2] \
            + TRUTH["sigma"] * rng.standard_normal(n)
        frame = pd.DataFrame({"y": y, "x": x,
                              "f": pd.Categorical.from_codes(f, ["a", "b", "c"]),
                              "g1": g1, "g2": g2})
        frame.to_parquet(directory / f"part-{i:04d}.parquet", index=False)
    (directory / "_ROWS").write_text(str(rows))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / MB


class _Sampler(threading.Thread):
    """Samples the client's resident memory while the fit runs."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, 0.0, threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.interval)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, _rss_mb())


def _worker_memory(dask_worker=None) -> dict:
    import psutil
    return {"rss_mb": psutil.Process().memory_info().rss / MB, "peak_rss_mb": _peak_rss_mb()}


def _outgoing(dask_worker=None) -> list:
    return [(e["who"], e["total"], e.get("compressed")) for e in dask_worker.transfer_outgoing_log]


def run(rows: int, workers: int, directory: Path) -> dict:
    import dask
    from distributed import Client, LocalCluster

    import lmmfast

    dask.config.set({"distributed.admin.low-level-log-length": 100_000})
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, memory_limit=None)
    client = Client(cluster)
    try:
        client.run(lambda: __import__("lmmfast"))          # import the package everywhere
        before = client.run(_worker_memory)
        worker_addresses = set(client.scheduler_info()["workers"])
        data_bytes = sum(p.stat().st_size for p in directory.glob("*.parquet"))
        rss_client_before = _rss_mb()
        load_before = os.getloadavg()
        sampler = _Sampler()
        sampler.start()
        t0 = time.perf_counter()
        fit = lmmfast.lmer(FORMULA, str(directory / "*.parquet"))
        fit_s = time.perf_counter() - t0
        peak_client_fit = sampler.stop()
        after_fit = client.run(_worker_memory)
        t0 = time.perf_counter()
        summary = fit.summary()
        summary_s = time.perf_counter() - t0
        after_summary = client.run(_worker_memory)
        logs = client.run(_outgoing)
        to_client = sum(total for log in logs.values() for who, total, _ in log
                        if who not in worker_addresses)
        between_workers = sum(total for log in logs.values() for who, total, _ in log
                              if who in worker_addresses)
        result = {
            "rows": rows, "workers": workers, "threads_per_worker": 1,
            "partitions": fit.dask_stats["partitions"], "passes": fit.dask_stats["passes"],
            "formula": FORMULA, "levels": {"g1": N_G1, "g2": N_G2},
            "parquet_bytes": data_bytes,
            "data_in_memory_bytes": rows * (8 + 8 + 1 + 4 + 4),   # y, x, f, g1, g2
            "fit_wall_s": fit_s, "n_evals": fit.n_evals,
            "load_average_before_after": [round(load_before[0], 2),
                                          round(os.getloadavg()[0], 2)],
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "summary_wall_s": summary_s,
            "client_rss_before_mb": rss_client_before,
            "client_peak_rss_fit_mb": peak_client_fit,
            "client_peak_rss_mb": _peak_rss_mb(),
            "workers_rss_before_mb": [m["rss_mb"] for m in before.values()],
            "workers_peak_rss_fit_mb": [m["peak_rss_mb"] for m in after_fit.values()],
            "workers_peak_rss_mb": [m["peak_rss_mb"] for m in after_summary.values()],
            "bytes_to_client_reduced_results": fit.dask_stats["bytes_to_client"],
            "bytes_to_client_transfer_log": to_client,
            "bytes_between_workers": between_workers,
            "a_entries": int(fit._layout.n_a),
            "sparse_pairs": int(fit._layout.pattern(1)[1].size)
            if fit._layout.n_terms > 1 and fit._layout.kind_a[1] == 2 else None,
            "estimates": {"fixef": fit.fixef.round(4).to_dict(),
                          "theta": fit.theta.round(4).to_dict(), "sigma": round(fit.sigma, 4)},
            "truth": TRUTH,
        }
        result["summary"] = summary
        return result
    finally:
        client.close()
        cluster.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="where the Parquet files go")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    directory = args.dir or Path(tempfile.mkdtemp(prefix="lmmfast-bench-")) / "data"
    if args.generate_only:
        generate(directory, args.rows)
        return 0
    marker = directory / "_ROWS"   # a leading "_" keeps Parquet readers away
    gen_s = 0.0
    if not (marker.exists() and marker.read_text() == str(args.rows)):
        if directory.exists():
            shutil.rmtree(directory)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--dir",
                        str(directory), "--generate-only"], check=True)
        gen_s = time.perf_counter() - t0
    try:
        result = run(args.rows, args.workers, directory)
    finally:
        if args.dir is None:
            shutil.rmtree(directory.parent, ignore_errors=True)
    result["generate_s"] = gen_s
    summary = result.pop("summary")
    for key, value in result.items():
        print(f"{key:34s} {value}")
    print()
    print(summary)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
