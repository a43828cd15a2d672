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
# --glmm: binary outcomes of the same design, logit(P(y = 1)) = eta
TRUTH_GLMM = {"beta": [-0.5, 0.5, 0.3, -0.2], "sd_g1": 0.6, "sd_g2": 0.3}
MB = 2 ** 20


def generate(directory: Path, rows: int, seed: int = 20240, glmm: bool = False) -> None:
    """Write the design as Parquet files of ROWS_PER_FILE rows (vectorised, file by file);
    ``glmm``: binary outcomes."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    lecturers = np.stack([rng.choice(N_G2, PER_G1, replace=False) for _ in range(N_G1)])
    truth = TRUTH_GLMM if glmm else TRUTH
    b1 = truth["sd_g1"] * rng.standard_normal(N_G1)
    b2 = truth["sd_g2"] * rng.standard_normal(N_G2)
    beta = truth["beta"]
    directory.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        g1 = (np.arange(start, start + n) * N_G1 // rows).astype(np.int32)  # students in blocks
        g2 = lecturers[g1, rng.integers(0, PER_G1, n)].astype(np.int32)
        x = rng.standard_normal(n)
        f = rng.integers(0, 3, n)
        eta = beta[0] + beta[1] * x + np.array([0.0, beta[2], beta[3]])[f] + b1[g1] + b2[g2]
        if glmm:
            y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
        else:
            y = eta + TRUTH["sigma"] * rng.standard_normal(n)
        frame = pd.DataFrame({"y": y, "x": x,
                              "f": pd.Categorical.from_codes(f, ["a", "b", "c"]),
                              "g1": g1, "g2": g2})
        frame.to_parquet(directory / f"part-{i:04d}.parquet", index=False)
    (directory / "_ROWS").write_text(_marker(rows, glmm))


def _marker(rows: int, glmm: bool) -> str:
    return f"glmm:{rows}" if glmm else str(rows)


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


def _fit(directory: Path, glmm: bool):
    import lmmfast
    if glmm:
        return lmmfast.glmer(FORMULA, str(directory / "*.parquet"), family="binomial")
    return lmmfast.lmer(FORMULA, str(directory / "*.parquet"))


def _subset_check(directory: Path, rows: int) -> dict:
    """The binary model on the first ``rows`` rows, in memory and on the cluster."""
    import pandas as pd

    import lmmfast
    files = sorted(directory.glob("*.parquet"))[:max(1, rows // ROWS_PER_FILE)]
    sub = directory.parent / "subset"
    sub.mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, sub / f.name)
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    t0 = time.perf_counter()
    mem = lmmfast.glmer(FORMULA, frame, family="binomial")
    mem_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist = lmmfast.glmer(FORMULA, str(sub / "*.parquet"), family="binomial")
    dist_s = time.perf_counter() - t0
    shutil.rmtree(sub)
    return {"rows": len(frame), "in_memory_s": mem_s, "dask_s": dist_s,
            "dask_passes": dist.dask_stats["passes"],
            "minus2loglik": [mem.objective, dist.objective],
            "max_rel_diff": {
                "deviance": abs(dist.objective / mem.objective - 1),
                "fixef": float(np.max(np.abs(dist.beta / mem.beta - 1))),
                "theta": float(np.max(np.abs(dist.theta / mem.theta - 1))),
                "ranef": max(float(np.max(np.abs(dist.ranef()[g].to_numpy()
                                                 - mem.ranef()[g].to_numpy())))
                             for g in ("g1", "g2"))}}


def run(rows: int, workers: int, directory: Path, glmm: bool = False,
        subset: int = 0) -> dict:
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
        fit = _fit(directory, glmm)
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
        layout = fit.pirls.factor(True).layout if glmm else fit._layout
        result = {
            "rows": rows, "workers": workers, "threads_per_worker": 1,
            "partitions": fit.dask_stats["partitions"], "passes": fit.dask_stats["passes"],
            "formula": FORMULA + ("  (binomial)" if glmm else ""),
            "levels": {"g1": N_G1, "g2": N_G2},
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
            "a_entries": int(layout.n_a),
            "sparse_pairs": int(layout.pattern(1)[1].size)
            if layout.n_terms > 1 and layout.kind_a[1] == 2 else None,
            "estimates": {"fixef": fit.fixef.round(4).to_dict(),
                          "theta": np.round(np.asarray(fit.theta), 4).tolist()}
            | ({} if glmm else {"sigma": round(fit.sigma, 4)}),
            "truth": TRUTH_GLMM if glmm else TRUTH,
        }
        if glmm:
            result["stage_evals"] = list(fit.stage_evals)
            result["minus2loglik"] = fit.objective
        if subset:
            result["subset_check"] = _subset_check(directory, subset)
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
    ap.add_argument("--glmm", action="store_true",
                    help="binary outcomes of the same design, fitted by glmer (binomial)")
    ap.add_argument("--subset", type=int, default=0, metavar="ROWS",
                    help="(--glmm) also fit the first ROWS rows in memory and on the cluster")
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    directory = args.dir or Path(tempfile.mkdtemp(prefix="lmmfast-bench-")) / "data"
    if args.generate_only:
        generate(directory, args.rows, glmm=args.glmm)
        return 0
    marker = directory / "_ROWS"   # a leading "_" keeps Parquet readers away
    gen_s = 0.0
    if not (marker.exists() and marker.read_text() == _marker(args.rows, args.glmm)):
        if directory.exists():
            shutil.rmtree(directory)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--dir",
                        str(directory), "--generate-only"] + (["--glmm"] if args.glmm else []),
                       check=True)
        gen_s = time.perf_counter() - t0
    try:
        result = run(args.rows, args.workers, directory, args.glmm, args.subset)
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
