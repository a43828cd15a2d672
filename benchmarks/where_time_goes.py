"""Where the time of a fit goes: setup, evaluations, flops, BLAS threads, memory.

Usage::

    python benchmarks/where_time_goes.py                      # all three designs
    python benchmarks/where_time_goes.py --designs insteval --markdown
    python benchmarks/where_time_goes.py --threads 1          # BLAS limited to one thread
    python benchmarks/where_time_goes.py --check              # flop-count self-test, seconds

Options: ``--threads N`` limits the BLAS (``threadpoolctl``, else the
``*_NUM_THREADS`` variables) for everything but the 1 / 2 thread comparison;
``--fit-option KEY=VALUE`` is passed to ``m.fit()``; ``--timeout S`` stops a
design's child process after S seconds and keeps its numbers up to the fit;
``--json FILE`` keeps every timing.

Designs:

* ``insteval``: ``y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)`` on lme4's
  InstEval (73,421 rows), loaded as ``benchmarks/compare.py`` loads it, with
  ``lmmfast.datasets.load("InstEval")`` (the same rows and labels as
  ``shared/reference/data/InstEval.csv``);
* ``longitudinal`` and ``crossed``: the 1,000,000-row simulated designs of
  ``benchmarks/test_bench_scale.py`` (its ``DESIGNS`` and ``N_OBS``,
  ``lmmfast.datasets.simulate`` with seed 1): 10,000 subjects with a
  correlated random intercept and slope; two crossed factors of 10,000 and
  1,000 levels.

For each design, in a child process of its own (so that the peak resident set
size is that design's), one table row with:

* ``setup``: median seconds of ``LinearMixedModel(formula, data)``
  (``--setup-reps``, after one untimed build);
* ``s/eval``: median seconds of ``m.criterion(theta)`` (``--eval-reps``) on a
  model not yet fitted (after a fit, ``criterion`` refactors twice), at a
  theta away from the start: the true theta of the simulated designs, half
  the default start for InstEval;
* ``evals``, ``fit`` and ``setup+fit``: one ``lmmfast.lmer``-equivalent call,
  ``LinearMixedModel(formula, data).fit()``, timed in its two parts; below
  the table, how many of the evaluations had derivatives, and the median
  seconds of the gradient (eq. 66) and of the Hessian (eq. 70) at the optimum;
* ``flop/eval``: the floating-point operations of one evaluation of the
  blocked factorisation, counted from the model's ``BlockLayout`` by
  ``factorization_flops`` (see its docstring), and ``GFLOP/s`` =
  flop/eval / s/eval;
* ``1 thr``, ``2 thr``, ``1/2``: s/eval with the BLAS limited to one and to two
  threads (``threadpoolctl.threadpool_limits``), rounds interleaved with the
  default; the ratio > 1 means two threads are faster;
* memory: the size of the input columns (``data[c].to_numpy().nbytes`` summed
  over the columns the formula reads; categoricals count as object arrays,
  8 bytes a row), the tracemalloc peak while the model is built, and the
  process's peak RSS (``resource.getrusage``) with the increase the build
  caused over the RSS just before it; both as multiples of the input
  (target <= 3x).  Before it, the library builds and fits Dyestuff once, so
  that what it sets up on first use (formula machinery, compiled modules'
  work arrays: about 7 MB of RSS) is not counted as the design's memory.

Below the table, for each design, where one evaluation's flops are (by step
of ``BlockedFactor._update``: scaled copy, rank updates, gemm updates,
diagonal Cholesky, triangular solves), and how long the dense BLAS/LAPACK
calls of one evaluation take when replayed alone with scipy's BLAS (the one
the core links, through ``scipy.linalg.cython_blas``) on matrices of the
same shapes; the remainder of s/eval is the scaled copy, the sparse and
small-block loops of the core, and the call overhead.

All timings are wall-clock and noisy on a shared machine: the header shows
the load average before and after.  Nothing is asserted except by ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import lmmfast
from lmmfast._factor import BLOCK_BLOCKDIAG, BLOCK_DENSE, BLOCK_SPARSE
from lmmfast.design.layout import BlockLayout

try:
    import threadpoolctl
except ImportError:   # optional: without it there is no 1 vs 2 thread comparison
    threadpoolctl = None

sys.path.insert(0, str(Path(__file__).parent))
from models import MODELS  # noqa: E402

try:   # the scale designs, from the scale benchmark itself (it imports pytest)
    from test_bench_scale import DESIGNS as SCALE_DESIGNS, N_OBS  # noqa: E402
    SCALE_SOURCE = "benchmarks/test_bench_scale.py"
except ImportError:   # the same definitions, copied
    N_OBS = 1_000_000
    SCALE_DESIGNS = {
        "longitudinal": {"groups": {"subject": 10_000}},
        "crossed": {"groups": {"g1": 10_000, "g2": 1_000}},
    }
    SCALE_SOURCE = "a copy of benchmarks/test_bench_scale.py's designs (pytest missing)"

DESIGN_NAMES = ("insteval", "longitudinal", "crossed")
SEED = 1
MB = 1024 * 1024
MEMORY_TARGET = 3.0
REPLAY_MIN_FLOPS = 1e5   # dense BLAS calls of fewer flops are not replayed (noise)


# ----------------------------------------------------------------- flop count
def _potrf(n: int) -> int:
    """LAPACK dpotrf of an n x n matrix: n^3/3 + n^2/2 + n/6 = n(n+1)(2n+1)/6."""
    return n * (n + 1) * (2 * n + 1) // 6


def factorization_flops(layout: BlockLayout) -> dict:
    """Floating-point operations of one evaluation ``BlockedFactor._update``.

    Counted from the layout alone (sizes, kinds, sparsity patterns), step by
    step as ``src/lmmfast/_factor.pyx`` performs them, a multiply-add counting 2, a
    division or square root 1.  Notation: T terms (internal order), g_t levels
    (``nlev``), k_t effects per level, q_t = g_t k_t, p1 = p + 1 columns of
    [X y]; rows(t) = q_t (t < T) or p1 (t = T); kk(t) = k_t or p1; for a sparse
    block (s, 0): c_j = entries in column j (level j of term 0, from
    ``colptr``), nnz = sum_j c_j.

    Step 1, the scaled copy L <- Lambda^T A Lambda (+ I), per block (s, t):

    * (T, T): a copy of p1^2 entries, 0 flops;
    * (T, t): g_t p1 k_t (k_t + 1)  (each p1 x k_t slice times lambda_t);
    * (t, t): g_t (2 k_t^2 (k_t + 1) + k_t)  (lambda^T a lambda + I per level;
      5 per level for k = 1); a dense L_tt is also zeroed first (q_t^2
      entries written, no flops);
    * sparse (s, 0): nnz flops for k_s = k_0 = 1 (one product an entry),
      else nnz k_s k_0 (k_s + k_0 + 2);
    * dense (s, t): g_s g_t k_s k_t (k_s + k_t + 2).

    Step 2, for t = 0..T: for r < t, the rank update of L_tt and the gemm
    updates of L_st (s > t); then the Cholesky factor of L_tt and the
    triangular solves of L_st (s > t):

    * rank update L_tt -= L_tr L_tr^T: dense L_tr: dsyrk, rows(r) rows(t)
      (rows(t) + 1) (~ n^2 k); sparse L_t0: every pair e2 <= e1 of entries in
      a column, sum_j c_j (c_j + 1) k_t^2 k_0 (scattered into the dense L_tt);
    * gemm update L_st -= L_sr L_tr^T: both dense: dgemm, 2 rows(s) rows(t)
      rows(r); both sparse: 2 kk(s) kk(t) k_r sum_j ca_j cb_j; only L_tr
      sparse: 2 rows(s) kk(t) k_r nnz(L_tr); only L_sr sparse:
      2 kk(s) rows(t) k_r nnz(L_sr);
    * Cholesky of L_tt: block diagonal, k = 1: g_t square roots; k > 1: g_t
      dpotrf(k_t); dense: dpotrf(rows(t)), n(n+1)(2n+1)/6 (~ n^3/3);
    * L_st <- L_st L_tt^{-T}: L_tt dense: dtrsm, rows(s) q_t^2; L_tt block
      diagonal and L_s0 sparse: nnz (kk(s) k_0^2 + k_0); L_s0 dense:
      g_0 (rows(s) k_0^2 + k_0).

    The small-block kernels skip multiplications by exact zeros of L_tt or
    L_tr (``small_sub_abt``, ``rdiv_lt_small``); the count does not, so it is
    an upper bound when theta has zeros.  Not counted: building lambda from
    theta and the criterion (q + p1 logarithms), both O(q).

    Checked by hand (``check``, ``--check``): Penicillin, ``diameter ~ 1 +
    (1 | plate) + (1 | sample)`` (plate 24, sample 6, p1 = 2, all blocks
    dense): scaled copy 120 + 576 + 30 + 96 + 24 = 846; factorisation 24 (sqrt)
    + 168 + 72 (block-diagonal solves) + 1008 (syrk 6 x 24) + 576 (gemm
    2 x 6 x 24) + 91 (potrf 6) + 72 (trsm 2 x 6) + 144 + 36 (syrk 2 x 24,
    2 x 6) + 5 (potrf 2) = 2196; 3042 in all; plus a one-term k = 2 layout and
    a tiny crossed layout with a sparse block (numbers in ``check``).

    Returns ``{"total": int, "steps": [...], "pattern": {...}}``, each step a
    dict: ``step`` (scaled copy / rank update / gemm update / cholesky /
    solve), ``block`` (s, t[, r]), ``kernel`` (e.g. ``dpotrf``, ``dsyrk``,
    ``sparse loop``, ``small blocks``), ``blas`` (a dense BLAS/LAPACK call),
    ``dims`` (of that call), ``flops``; ``pattern`` gives, for each sparse
    block, nnz, its density and the mean and max c_j.
    """
    T = int(layout.n_terms)
    nlev = [int(x) for x in layout.nlev]
    k = [int(x) for x in layout.k]
    p1 = int(layout.p1)
    q = [g * kk for g, kk in zip(nlev, k)]

    def rows(s):
        return q[s] if s < T else p1

    def kk_(s):
        return k[s] if s < T else p1

    def b(s, t):
        return s * (s + 1) // 2 + t

    kind_a = [int(x) for x in layout.kind_a]
    kind_l = [int(x) for x in layout.kind_l]
    counts: dict[int, np.ndarray] = {}
    pattern = {}
    for s in range(1, T):
        if kind_l[b(s, 0)] == BLOCK_SPARSE:
            colptr, _ = layout.pattern(s)
            c = np.diff(np.asarray(colptr, dtype=np.int64))
            counts[s] = c
            pattern[f"({s},0)"] = {"nnz": int(c.sum()),
                                   "density": float(c.sum()) / (nlev[s] * nlev[0]),
                                   "mean_c": float(c.mean()), "max_c": int(c.max())}
    steps: list[dict] = []

    def add(step, block, kernel, flops, blas=False, dims=()):
        steps.append({"step": step, "block": block, "kernel": kernel, "blas": blas,
                      "dims": tuple(int(d) for d in dims), "flops": int(flops)})

    # step 1: the scaled copy
    for s in range(T + 1):
        for t in range(s + 1):
            blk = (s, t)
            if s == T and t == T:
                add("scaled copy", blk, "copy", 0)
            elif s == T:
                add("scaled copy", blk, "small blocks", nlev[t] * p1 * k[t] * (k[t] + 1))
            elif s == t:
                add("scaled copy", blk, "small blocks",
                    nlev[t] * (2 * k[t] ** 2 * (k[t] + 1) + k[t]))
            elif kind_a[b(s, t)] == BLOCK_SPARSE:
                nnz = int(counts[s].sum())
                per = 1 if k[s] == 1 and k[t] == 1 else k[s] * k[t] * (k[s] + k[t] + 2)
                add("scaled copy", blk, "sparse loop", nnz * per)
            else:
                add("scaled copy", blk, "small blocks",
                    nlev[s] * nlev[t] * k[s] * k[t] * (k[s] + k[t] + 2))

    # step 2: the left-looking blocked factorisation
    for t in range(T + 1):
        for r in range(t):
            # rank update of L_tt by L_tr
            if kind_l[b(t, r)] == BLOCK_SPARSE:
                c = counts[t]
                add("rank update", (t, t, r), "sparse loop",
                    int((c * (c + 1)).sum()) * k[t] ** 2 * k[r])
            else:
                n_, kk = rows(t), rows(r)
                add("rank update", (t, t, r), "dsyrk", kk * n_ * (n_ + 1), True, (n_, kk))
            # gemm updates of L_st, s > t
            for s in range(t + 1, T + 1):
                sa = kind_l[b(s, r)] == BLOCK_SPARSE
                sb = kind_l[b(t, r)] == BLOCK_SPARSE
                ks, kt, kr = kk_(s), kk_(t), k[r]
                if not sa and not sb:
                    m_, n_, kk = rows(s), rows(t), rows(r)
                    add("gemm update", (s, t, r), "dgemm", 2 * m_ * n_ * kk, True,
                        (m_, n_, kk))
                elif sa and sb:
                    add("gemm update", (s, t, r), "sparse loop",
                        2 * ks * kt * kr * int((counts[s] * counts[t]).sum()))
                elif sb:
                    add("gemm update", (s, t, r), "sparse loop",
                        2 * rows(s) * kt * kr * int(counts[t].sum()))
                else:
                    add("gemm update", (s, t, r), "sparse loop",
                        2 * ks * rows(t) * kr * int(counts[s].sum()))
        # Cholesky factor of L_tt
        if kind_l[b(t, t)] == BLOCK_BLOCKDIAG:
            if k[t] == 1:
                add("cholesky", (t, t), "sqrt", nlev[t])
            else:
                add("cholesky", (t, t), "small blocks", nlev[t] * _potrf(k[t]))
        else:
            n_ = rows(t)
            add("cholesky", (t, t), "dpotrf", _potrf(n_), True, (n_,))
        # L_st <- L_st L_tt^{-T}
        for s in range(t + 1, T + 1):
            if kind_l[b(t, t)] == BLOCK_DENSE:
                add("solve", (s, t), "dtrsm", rows(s) * q[t] ** 2, True, (rows(s), q[t]))
            elif kind_l[b(s, t)] == BLOCK_SPARSE:
                add("solve", (s, t), "sparse loop",
                    int(counts[s].sum()) * (kk_(s) * k[t] ** 2 + k[t]))
            else:
                add("solve", (s, t), "small blocks", nlev[t] * (rows(s) * k[t] ** 2 + k[t]))
    return {"total": sum(st["flops"] for st in steps), "steps": steps, "pattern": pattern}


def _flops_by(flops: dict, key) -> dict:
    out: dict = {}
    for st in flops["steps"]:
        out[key(st)] = out.get(key(st), 0) + st["flops"]
    return out


# ------------------------------------------------------------------ self-test
def check() -> None:
    """Assert the flop counts of three tiny layouts, counted by hand."""
    # one term, k = 2, 3 levels, p1 = 3: copy 3 x 26 (diag) + 3 x 18 (last row);
    # cholesky 3 x potrf(2) = 15, solve 3 x (3 x 4 + 2) = 42, syrk 6 x 3 x 4 = 72,
    # potrf(3) = 14
    lay = BlockLayout.build([np.array([0, 1, 2])], [3], [2], 3)
    f = factorization_flops(lay)
    assert _flops_by(f, lambda s: s["step"]) == {
        "scaled copy": 78 + 54, "cholesky": 15 + 14, "solve": 42, "rank update": 72}, f
    assert f["total"] == 275, f["total"]

    # Penicillin: plate 24, sample 6 (dense L_10, 144 pairs < 10000), p1 = 2
    # (the hand count is in factorization_flops's docstring)
    m = lmmfast.LinearMixedModel("diameter ~ 1 + (1 | plate) + (1 | sample)",
                                 lmmfast.datasets.load("Penicillin"))
    f = factorization_flops(m._layout)
    assert [int(x) for x in m._layout.nlev] == [24, 6]
    assert BLOCK_SPARSE not in set(int(x) for x in m._layout.kind_l)
    assert _flops_by(f, lambda s: s["kernel"]) == {
        "copy": 0, "small blocks": 120 + 576 + 30 + 96 + 24 + 168 + 72, "sqrt": 24,
        "dsyrk": 1008 + 144 + 36, "dgemm": 576, "dpotrf": 91 + 5, "dtrsm": 72}, f
    assert f["total"] == 846 + 2196 == 3042, f["total"]

    # tiny crossed with a sparse block: term 0 has 120 levels, term 1 100
    # (120 x 100 = 12000 > 10000 pairs), level j of term 0 meets levels j and
    # j + 1 (mod 100) of term 1: 240 entries, c_j = 2, p1 = 2.
    # copy: 120 x 5 + 240 + 100 x 5 + 120 x 4 + 100 x 4 = 2220
    # t = 0: 120 sqrt, sparse solve 240 x 2 = 480, dense solve 120 x 3 = 360
    # t = 1: sparse rank update 120 x 2 x 3 = 720, gemm (2, 1, 0) 2 x 2 x 240
    #        = 960, potrf(100) = 338350, trsm 2 x 100^2 = 20000
    # t = 2: syrk 120 x 2 x 3 + 100 x 2 x 3 = 1320, potrf(2) = 5
    j = np.arange(120)
    refs0 = np.repeat(j, 2)
    refs1 = np.stack([j % 100, (j + 1) % 100], axis=1).ravel()
    lay = BlockLayout.build([refs0, refs1], [120, 100], [1, 1], 2)
    assert int(lay.kind_l[1]) == BLOCK_SPARSE, lay.kind_l
    f = factorization_flops(lay)
    assert _flops_by(f, lambda s: s["step"]) == {
        "scaled copy": 2220, "cholesky": 120 + 338350 + 5,
        "solve": 480 + 360 + 20000, "rank update": 720 + 1320, "gemm update": 960}, f
    assert f["total"] == 364535, f["total"]
    assert f["pattern"]["(1,0)"]["nnz"] == 240
    print("factorization_flops: the hand counts of 3 layouts agree "
          "(one term k = 2: 275; Penicillin: 3042; tiny sparse crossed: 364535)")


# ------------------------------------------------------------------- machine
def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def machine_info() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "nproc": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "lmmfast": lmmfast.__version__}
    with contextlib.suppress(Exception):
        info["affinity"] = len(os.sched_getaffinity(0))
    import scipy
    info["scipy"] = scipy.__version__
    for name, mod in (("numpy", np), ("scipy", scipy)):
        with contextlib.suppress(Exception):
            dep = mod.show_config(mode="dicts")["Build Dependencies"]["blas"]
            info[f"{name}_blas_build"] = f"{dep.get('name')} {dep.get('version', '')}".strip()
    if threadpoolctl is None:
        info["threadpoolctl"] = "missing: no BLAS thread information or limits"
    else:
        info["blas_runtime"] = [
            f"{Path(p['filepath']).name.split('-')[0]}: {p['internal_api']} "
            f"{p.get('version')} {p.get('architecture', '')} {p['num_threads']} threads"
            for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    return info


def machine_line(info: dict, load_start, load_end) -> str:
    parts = [f"CPU {info['cpu'] or '?'}", f"nproc {info['nproc']}"]
    if info.get("affinity") not in (None, info["nproc"]):
        parts.append(f"affinity {info['affinity']}")
    parts.append(f"Python {info['python']}")
    parts.append(f"numpy {info['numpy']} (BLAS {info.get('numpy_blas_build', '?')})")
    parts.append(f"scipy {info['scipy']} (BLAS {info.get('scipy_blas_build', '?')})")
    if "blas_runtime" in info:
        parts.append("threadpoolctl: " + "; ".join(info["blas_runtime"]))
    else:
        parts.append(f"threadpoolctl {info['threadpoolctl']}")
    parts.append("load average " + " / ".join(f"{x:.2f}" for x in load_start)
                 + " at start, " + " / ".join(f"{x:.2f}" for x in load_end) + " at end")
    return "machine: " + ", ".join(parts)


# ------------------------------------------------------------------- designs
def load_design(name: str):
    """(formula, data, theta to evaluate at or None) of a design."""
    if name == "insteval":
        dataset, formula = MODELS["insteval"]
        return formula, lmmfast.datasets.load(dataset), None
    from lmmfast.datasets.simulate import simulate
    data = simulate(N_OBS, seed=SEED, **SCALE_DESIGNS[name])
    truth = data.attrs["truth"]
    return truth["formula"], data, dict(truth["theta"])


def input_bytes(formula: str, data) -> tuple[int, list[str]]:
    """Sum of ``data[c].to_numpy().nbytes`` over the columns the formula reads."""
    try:
        from lmmfast.formula import parse_formula
        from lmmfast.design.frame import used_columns
        cols = list(used_columns(parse_formula(formula), data.columns))
    except Exception:   # noqa: BLE001 - an internal helper; fall back to every column
        cols = list(data.columns)
    return sum(int(data[c].to_numpy().nbytes) for c in cols), cols


def _limits(n):
    if n is None or threadpoolctl is None:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(limits=n, user_api="blas")


def _spd(n: int, rng) -> np.ndarray:
    g = rng.standard_normal((n, n))
    return np.asfortranarray(g @ g.T / n + np.eye(n))


def blas_replay(flops: dict) -> list:
    """The dense BLAS/LAPACK calls of one evaluation, ready to replay alone.

    Each call of at least ``REPLAY_MIN_FLOPS`` flops, with scipy's BLAS (the
    library the core calls through scipy.linalg.cython_blas) on Fortran arrays
    of the same shapes; ``(step, reset, call)``: ``reset`` restores the inputs
    (not timed), ``call`` is timed.
    """
    from scipy.linalg import blas, lapack
    rng = np.random.default_rng(0)
    calls = [s for s in flops["steps"] if s["blas"] and s["flops"] >= REPLAY_MIN_FLOPS]
    prepared = []
    for st in calls:
        d = st["dims"]
        if st["kernel"] == "dpotrf":
            base = _spd(d[0], rng)
            work = base.copy(order="F")
            prepared.append((st, lambda w=work, b_=base: np.copyto(w, b_),
                             lambda w=work: lapack.dpotrf(w, lower=1, clean=0, overwrite_a=1)))
        elif st["kernel"] == "dsyrk":
            a = np.asfortranarray(rng.standard_normal((d[0], d[1])) * 1e-3)
            c = np.asfortranarray(np.eye(d[0]))
            prepared.append((st, lambda: None,
                             lambda a=a, c=c: blas.dsyrk(-1.0, a, beta=1.0, c=c, lower=1,
                                                         overwrite_c=1)))
        elif st["kernel"] == "dgemm":
            a = np.asfortranarray(rng.standard_normal((d[0], d[2])) * 1e-3)
            bm = np.asfortranarray(rng.standard_normal((d[1], d[2])) * 1e-3)
            c = np.asfortranarray(np.zeros((d[0], d[1])))
            prepared.append((st, lambda: None,
                             lambda a=a, bm=bm, c=c: blas.dgemm(-1.0, a, bm, beta=1.0, c=c,
                                                                trans_b=1, overwrite_c=1)))
        elif st["kernel"] == "dtrsm":
            lower = np.asfortranarray(np.linalg.cholesky(_spd(d[1], rng)))
            base = np.asfortranarray(rng.standard_normal((d[0], d[1])))
            work = base.copy(order="F")
            prepared.append((st, lambda w=work, b_=base: np.copyto(w, b_),
                             lambda lo=lower, w=work: blas.dtrsm(1.0, lo, w, side=1, lower=1,
                                                                 trans_a=1, overwrite_b=1)))
    return prepared


def replay_once(prepared: list) -> list[float]:
    """Seconds of each prepared call, run once in turn."""
    out = []
    for _, reset, call in prepared:
        reset()
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def replay_summary(prepared: list, times: list[list[float]]) -> dict:
    """Median seconds of each replayed call over rounds, and their sum."""
    out = {"seconds": 0.0, "flops": 0, "calls": []}
    for i, (st, _, _) in enumerate(prepared):
        sec = statistics.median(t[i] for t in times)
        out["seconds"] += sec
        out["flops"] += st["flops"]
        out["calls"].append({"kernel": st["kernel"], "dims": st["dims"],
                             "block": st["block"], "flops": st["flops"], "seconds": sec})
    return out


def measure(name: str, setup_reps: int, eval_reps: int, fit_options: dict,
            threads: int | None = None) -> dict:
    """Every number of one design's row (run in a child process of its own).

    ``threads``: the BLAS threads of everything but the 1 / 2 thread
    comparison (None: the library's default).
    """
    res: dict = {"design": name, "threads": threads}
    if threadpoolctl is not None:
        res["blas_threads_now"] = sorted({p["num_threads"] for p in
                                          threadpoolctl.threadpool_info()
                                          if p["user_api"] == "blas"})
    t0 = time.perf_counter()
    formula, data, theta_truth = load_design(name)
    res["load_s"] = time.perf_counter() - t0
    res["formula"] = formula
    res["rows"] = len(data)
    res["input_bytes"], res["input_columns"] = input_bytes(formula, data)
    res["frame_bytes"] = int(data[res["input_columns"]].memory_usage(index=False).sum())
    gc.collect()

    # 1. memory: the first build of this design, untraced, against the RSS just
    # before it, after the library's first use on a small model
    small_dataset, small_formula = MODELS["dyestuff"]
    lmmfast.lmer(small_formula, lmmfast.datasets.load(small_dataset))
    gc.collect()
    rss_before, peak_before = _rss_mb(), _peak_rss_mb()
    t0 = time.perf_counter()
    m = lmmfast.LinearMixedModel(formula, data)
    res["first_setup_s"] = time.perf_counter() - t0
    peak_after = _peak_rss_mb()
    res.update(rss_before_mb=rss_before, rss_peak_before_mb=peak_before,
               rss_peak_mb=peak_after, rss_build_mb=peak_after - rss_before,
               rss_build_exact=peak_after > peak_before, rss_model_mb=_rss_mb() - rss_before)
    del m
    gc.collect()
    tracemalloc.start()
    m = lmmfast.LinearMixedModel(formula, data)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    res.update(tracemalloc_peak_mb=peak / MB, tracemalloc_kept_mb=kept / MB)
    del m
    gc.collect()

    # 2. setup
    times = []
    for _ in range(setup_reps):
        t0 = time.perf_counter()
        m = lmmfast.LinearMixedModel(formula, data)
        times.append(time.perf_counter() - t0)
        if len(times) < setup_reps:
            del m
    res["setup_s"] = statistics.median(times)
    res["setup_all_s"] = times

    # 3. flops of one evaluation
    lay = m._layout
    flops = factorization_flops(lay)
    res["flops"] = flops["total"]
    res["pattern"] = flops["pattern"]
    res["layout"] = {"nlev": [int(x) for x in lay.nlev], "k": [int(x) for x in lay.k],
                     "p1": int(lay.p1), "kind_l": [int(x) for x in lay.kind_l],
                     "n_a": int(lay.n_a), "n_l": int(lay.n_l)}
    res["flops_by_step"] = _flops_by(flops, lambda s: f"{s['step']}: {s['kernel']}")
    res["flops_blas"] = sum(s["flops"] for s in flops["steps"] if s["blas"])

    # 4. seconds per evaluation, away from the start, main / 1 / 2 BLAS threads
    start = np.concatenate([r.theta_init() for r in m.remats]) * m._scale
    if theta_truth is not None and set(theta_truth) == set(m.theta_names):
        theta = np.array([theta_truth[n] for n in m.theta_names])
        res["theta_eval"] = "true theta"
    elif theta_truth is not None and len(theta_truth) == len(m.theta_names):
        theta = np.array(list(theta_truth.values()))
        res["theta_eval"] = "true theta (by position)"
    else:
        theta = 0.5 * start
        res["theta_eval"] = "0.5 x start"
    res["theta"] = theta.tolist()
    #    each round: every thread setting in turn (rotating), each one evaluation
    #    then the dense BLAS calls of an evaluation replayed alone (step 5), so
    #    that both see the same load on a shared machine
    configs = [threads] + ([c for c in (1, 2) if c != threads]
                           if threadpoolctl is not None else [])
    prepared = blas_replay(flops)
    evals: dict = {str(c): [] for c in configs}
    replays: dict = {str(c): [] for c in configs}
    for c in configs:   # one untimed round each
        with _limits(c):
            res["criterion"] = m.criterion(theta)
            replay_once(prepared)
    for rnd in range(eval_reps):
        order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
        for c in order:
            with _limits(c):
                t0 = time.perf_counter()
                m.criterion(theta)
                evals[str(c)].append(time.perf_counter() - t0)
                replays[str(c)].append(replay_once(prepared))
    res["eval_by"] = {c: statistics.median(v) for c, v in evals.items()}
    res["eval_s"] = res["eval_by"][str(threads)]
    res["eval_all_s"] = evals
    if threadpoolctl is not None:
        res["eval_1thr_s"] = statistics.median(evals["1"])
        res["eval_2thr_s"] = statistics.median(evals["2"])
    res["replay"] = {c: replay_summary(prepared, t) for c, t in replays.items()}
    del m, prepared
    gc.collect()
    print(json.dumps(res), flush=True)   # the numbers so far, should the fit not end

    # 6. lmmfast.lmer, end to end: setup, then one fit (default BLAS threads)
    t0 = time.perf_counter()
    m = lmmfast.LinearMixedModel(formula, data)
    t1 = time.perf_counter()
    m.fit(**fit_options)
    t2 = time.perf_counter()
    opt = m.optsum
    # the derivatives at the optimum: the gradient (eq. 66), then the Hessian (eq. 70) with it
    core, theta_in, n_th = m._core, m._to_internal(m._theta), len(m._theta)
    grad, hess, t_grad, t_hess = np.empty(n_th), np.empty((n_th, n_th)), [], []
    for _ in range(3):
        core.objective(theta_in, m.reml)
        ta = time.perf_counter()
        core.derivatives(m.reml, grad)
        tb = time.perf_counter()
        core.derivatives(m.reml, grad, hess)   # the gradient's K_t are reused
        t_grad.append(tb - ta)
        t_hess.append(time.perf_counter() - tb)
    res.update(gradient_s=statistics.median(t_grad), hessian_s=statistics.median(t_hess),
               n_derivatives=int(getattr(opt, "n_gradients", 0)))
    res.update(lmer_setup_s=t1 - t0, fit_s=t2 - t1, total_s=t2 - t0, n_evals=int(m.n_evals),
               objective=float(m.objective), theta_fit=[float(x) for x in m.theta],
               optimizer=str(getattr(opt, "optimizer", "bobyqa")),
               return_code=str(getattr(opt, "return_code", "")),
               fit_options=fit_options)
    res["rss_peak_end_mb"] = _peak_rss_mb()
    return res


# ------------------------------------------------------------------- output
def fmt_s(x) -> str:
    if x is None:
        return "-"
    if x < 0:
        return "-" + fmt_s(-x)
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f} ms" if x >= 0.01 else f"{x * 1e3:.2f} ms"
    return f"{x * 1e6:.0f} us"


def fmt_flops(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f}"


def render(header: list[str], rows: list[list[str]], markdown: bool, right=None) -> str:
    right = right or [i > 0 for i in range(len(header))]
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main_table(results: list[dict], markdown: bool) -> str:
    header = ["design", "rows", "setup", "s/eval", "evals", "fit", "setup+fit", "flop/eval",
              "GFLOP/s", "s/eval 1 thr", "s/eval 2 thr", "1 thr / 2 thr", "input",
              "tracemalloc peak", "peak RSS (build +)", "peak / input"]
    rows = []
    for r in results:
        if "eval_s" not in r:
            rows.append([r["design"], "error: " + r.get("error", "?")] + [""] * (len(header) - 2))
            continue
        inp = r["input_bytes"] / MB
        ratio_tm = r["tracemalloc_peak_mb"] / inp
        ratio_rss = r["rss_build_mb"] / inp
        over = max(ratio_tm, ratio_rss) > MEMORY_TARGET
        fitted = "fit_s" in r
        rows.append([
            r["design"], f"{r['rows']:,}", fmt_s(r["setup_s"]), fmt_s(r["eval_s"]),
            str(r["n_evals"]) if fitted else "-",
            fmt_s(r["fit_s"]) if fitted else r.get("error", "-"),
            fmt_s(r["total_s"]) if fitted else "-", fmt_flops(r["flops"]),
            f"{r['flops'] / r['eval_s'] / 1e9:.2f}",
            fmt_s(r.get("eval_1thr_s")), fmt_s(r.get("eval_2thr_s")),
            f"{r['eval_1thr_s'] / r['eval_2thr_s']:.2f}" if "eval_1thr_s" in r else "-",
            f"{inp:.1f} MB", f"{r['tracemalloc_peak_mb']:.1f} MB",
            f"{r['rss_peak_mb']:.0f} MB (+{r['rss_build_mb']:.0f} MB"
            + ("" if r["rss_build_exact"] else ", upper bound") + ")",
            f"{ratio_tm:.1f}x / {ratio_rss:.1f}x" + (" > 3x" if over else "")])
    return render(header, rows, markdown, [False] + [True] * (len(header) - 1))


def breakdown(r: dict, markdown: bool) -> str:
    """Where one evaluation's flops are, and the replayed BLAS time."""
    total = r["flops"]
    header = ["step: kernel", "flops", "share"]
    rows = [[k, fmt_flops(v), f"{100 * v / total:.1f} %"]
            for k, v in sorted(r["flops_by_step"].items(), key=lambda kv: -kv[1]) if v]
    out = [f"{r['design']}: one evaluation = {fmt_flops(total)}flop; layout nlev "
           f"{r['layout']['nlev']}, k {r['layout']['k']}, p1 {r['layout']['p1']}; "
           f"criterion() at {r['theta_eval']}",
           render(header, rows, markdown, [False, True, True])]
    for key, rep in r["replay"].items():
        label = _thread_label(key)
        ev = r["eval_by"][key]
        calls = ", ".join(f"{c['kernel']} {'x'.join(map(str, c['dims']))}: "
                          f"{fmt_s(c['seconds'])}"
                          for c in sorted(rep["calls"], key=lambda c: -c["seconds"])[:3])
        out.append(f"  {label}: {fmt_s(ev)} per evaluation, {total / ev / 1e9:.2f} GFLOP/s; "
                   f"its dense BLAS calls replayed alone {fmt_s(rep['seconds'])} "
                   f"({100 * rep['seconds'] / ev:.0f} %"
                   + (f", {rep['flops'] / rep['seconds'] / 1e9:.1f} GFLOP/s"
                      if rep["seconds"] else "")
                   + f"), the rest {fmt_s(ev - rep['seconds'])}"
                   + (f" [{calls}]" if calls else ""))
    return "\n".join(out)


def _thread_label(key: str) -> str:
    return "default threads" if key == "None" else f"{key} thread" + ("s" if key != "1" else "")


def notes(r: dict) -> list[str]:
    """Plain observations drawn from the numbers of one design."""
    out = []
    inp = r["input_bytes"] / MB
    if r["rss_build_mb"] / inp > MEMORY_TARGET or r["tracemalloc_peak_mb"] / inp > MEMORY_TARGET:
        out.append(f"building the model peaks at {r['tracemalloc_peak_mb']:.0f} MB traced / "
                   f"+{r['rss_build_mb']:.0f} MB RSS against {inp:.1f} MB of input columns "
                   f"({r['tracemalloc_peak_mb'] / inp:.1f}x / {r['rss_build_mb'] / inp:.1f}x, "
                   f"target <= {MEMORY_TARGET:g}x); the model keeps "
                   f"{r['tracemalloc_kept_mb']:.0f} MB, of which L and A are "
                   f"{8 * (r['layout']['n_l'] + r['layout']['n_a']) / MB:.0f} MB")
    if r["frame_bytes"] != r["input_bytes"]:
        out.append(f"the input columns hold {r['frame_bytes'] / MB:.1f} MB in the frame (pandas "
                   f"memory_usage: categorical codes) against {inp:.1f} MB as to_numpy() "
                   f"(object arrays for categoricals)")
    if not r["rss_build_exact"]:
        out.append("the build did not raise the process's RSS high-water mark: its RSS "
                   "increase is only bounded above")
    sparse_share = sum(v for k, v in r["flops_by_step"].items() if "sparse loop" in k) / r["flops"]
    for blk, p in r["pattern"].items():
        out.append(f"sparse block {blk}: {p['nnz']:,} level pairs ({100 * p['density']:.1f} % "
                   f"of all), {p['mean_c']:.1f} per level of term 0 on average (max "
                   f"{p['max_c']}); the rank update it drives costs sum_j c_j(c_j + 1), "
                   f"which grows like (rows per level)^2 until the block turns dense; sparse "
                   f"loops are {100 * sparse_share:.1f} % of the flops")
    rest = {c: r["eval_by"][c] - rep["seconds"] for c, rep in r["replay"].items()}
    out.append(f"{100 * r['flops_blas'] / r['flops']:.1f} % of the flops are in dense BLAS calls; "
               f"outside them an evaluation spends "
               + ", ".join(f"{fmt_s(v)} ({_thread_label(c)})" for c, v in rest.items()))
    if "eval_1thr_s" in r and r["eval_1thr_s"] < r["eval_2thr_s"]:
        out.append(f"two BLAS threads are slower than one ({fmt_s(r['eval_2thr_s'])} against "
                   f"{fmt_s(r['eval_1thr_s'])} per evaluation)")
    if "fit_s" in r:
        per_eval_fit = r["fit_s"] / max(r["n_evals"], 1)
        out.append(f"fit: optimizer {r['optimizer']} ({r['return_code']}), {r['n_evals']} "
                   f"evaluations ({r.get('n_derivatives', '?')} with derivatives: gradient "
                   f"{fmt_s(r.get('gradient_s', float('nan')))}, Hessian "
                   f"{fmt_s(r.get('hessian_s', float('nan')))} at the optimum), fit / evaluations = {fmt_s(per_eval_fit)} against "
                   f"{fmt_s(r['eval_s'])} for one criterion() call; setup is "
                   f"{100 * r['lmer_setup_s'] / r['total_s']:.0f} % of setup + fit; objective "
                   f"{r['objective']:.4f}, theta " + ", ".join(f"{x:.4g}" for x in r["theta_fit"]))
    return out


def _last_json(text) -> dict | None:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    for line in reversed((text or "").strip().splitlines()):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    return None


def run_child(name: str, args) -> dict:
    """One design in a child process of its own; the last JSON line it printed."""
    cmd = [sys.executable, __file__, "--one", name, "--setup-reps", str(args.setup_reps),
           "--eval-reps", str(args.eval_reps)]
    for opt in args.fit_option or []:
        cmd += ["--fit-option", opt]
    env = None
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
        if threadpoolctl is None:   # no limits inside the child: set them at BLAS load
            env = {**os.environ, **{v: str(args.threads) for v in
                                    ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                     "MKL_NUM_THREADS")}}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env=env)
    except subprocess.TimeoutExpired as exc:   # subprocess.run has killed the child
        res = _last_json(exc.stdout) or {"design": name}
        res["error"] = f"stopped after {args.timeout:g} s"
        return res
    res = _last_json(proc.stdout)
    if proc.returncode != 0 or res is None or "fit_s" not in res:
        res = res or {"design": name}
        res["error"] = f"exit {proc.returncode}: " + \
            (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return res


def _option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            return key, conv(value)
    return key, value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", nargs="+", choices=DESIGN_NAMES, default=list(DESIGN_NAMES),
                    help="designs to run (default: all three)")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--setup-reps", type=int, default=3, help="timed setups (3)")
    ap.add_argument("--eval-reps", type=int, default=7,
                    help="timed criterion calls per BLAS thread setting (7)")
    ap.add_argument("--fit-option", action="append", metavar="KEY=VALUE",
                    help="passed to m.fit(), e.g. maxeval=500 (repeatable)")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="BLAS threads for setup, s/eval, GFLOP/s and the fit (default: the "
                         "library's); 1 avoids OpenBLAS's slowdown on a busy machine")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds after which a design's child process is stopped (1800); "
                         "its numbers up to the fit are kept")
    ap.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    ap.add_argument("--check", action="store_true",
                    help="assert the flop counts of tiny layouts (seconds) and stop")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.check:
        check()
        return 0
    if args.one:
        fit_options = dict(_option(o) for o in args.fit_option or [])
        with _limits(args.threads):
            res = measure(args.one, args.setup_reps, args.eval_reps, fit_options, args.threads)
        print(json.dumps(res))
        return 0
    load_start = os.getloadavg()
    results = [run_child(name, args) for name in args.designs]
    load_end = os.getloadavg()
    info = machine_info()
    print(machine_line(info, load_start, load_end))
    print(f"designs: insteval {MODELS['insteval'][1]!r} (lmmfast.datasets.load('InstEval')); "
          f"longitudinal and crossed from {SCALE_SOURCE}, simulate({N_OBS:,} rows, seed "
          f"{SEED}); one child process per design; setup, s/eval, GFLOP/s and the fit with "
          + ("the library's default BLAS threads" if args.threads is None
             else f"{args.threads} BLAS thread" + ("s" if args.threads != 1 else ""))
          + (f"; fit options {args.fit_option}" if args.fit_option else ""))
    if threadpoolctl is None:
        print("threadpoolctl is missing: no 1 vs 2 BLAS thread comparison "
              "(pip install threadpoolctl)")
    print()
    print(main_table(results, args.markdown))
    print()
    print("s/eval: median of m.criterion(theta); evals, fit: one m.fit() after a fresh "
          "LinearMixedModel (setup+fit: both, as lmmfast.lmer); flop/eval: "
          "factorization_flops; 1 thr / 2 thr > 1: two threads faster; input: the formula's "
          "columns as to_numpy(); peak / input: tracemalloc peak and the build's RSS increase "
          f"over the input (target <= {MEMORY_TARGET:g}x)")
    for r in results:
        if "eval_s" not in r:
            continue
        print()
        print(breakdown(r, args.markdown))
        for line in notes(r):
            print(f"  - {line}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "load_start": load_start,
                                               "load_end": load_end, "results": results},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
