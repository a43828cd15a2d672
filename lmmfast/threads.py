"""The number of BLAS threads the compiled core uses for a piece of work.

The core's dense steps (Cholesky factors, rank and gemm updates, triangular
solves of L's dense blocks) call the BLAS/LAPACK that scipy links.  A
multi-threaded BLAS pays only for large calls on cores that are free: on a
busy machine its threads wait for one another and a fit can take many times
longer than on one thread.  So the count is chosen here, per piece of work:

* 1 where L's largest dense block has fewer than ``BLAS_MIN_ENTRIES``
  entries (most models: their BLAS calls are small); below
  ``BLAS_SERIAL_ENTRIES`` (64 x 64) the BLAS runs its calls on one thread
  by itself and nothing is changed;
* else the least of the cores this process may use (affinity and cgroup
  quota), the cores free (those less the 1-minute load average and the
  runnable tasks of other processes now, whichever is larger), and the
  override: ``n_threads=`` of a fit, else ``set_num_threads``.

The BLAS is limited through threadpoolctl (its BLAS API only), with one
``ThreadpoolController`` made on first need, and only where the count
differs from the current one; the previous count is restored afterwards.
Work below the threshold runs on one thread whatever the load or the
override, so its results are the same to the bit; OpenBLAS's threaded dpotrf
and dtrsm round differently, so a larger fit on 2 threads agrees with one on
1 thread only to rounding.  The timings behind the threshold (2 cores,
idle, InstEval's dense block 1128 x 1128 and a 2500-level crossed term:
two threads did not shorten the fit): benchmarks/README.md, "Threads".

A GLMM's passes over rows in several chunks run on threads of their own
(``row_workers``, ``glmm.rows.LocalRows``) by the same rule, with one chunk
as the least work, and on one thread in a bootstrap's workers.
"""

from __future__ import annotations

import math
import os
import threading
import time

from ._factor import BLOCK_DENSE
from .arguments import as_count, describe
from .errors import DataError

__all__ = ["set_num_threads", "get_num_threads", "as_n_threads", "dense_entries", "choose",
           "blas_threads", "limit_blas", "set_blas_threads", "allowed_cores", "free_cores",
           "row_workers"]

BLAS_SERIAL_ENTRIES = 64 * 64
BLAS_MIN_ENTRIES = 4096 * 4096   # below, two threads did not shorten a fit (benchmarks/README.md)
LOAD_WINDOW = 60.0   # seconds: the kernel's 1-minute load average

_override: int | None = None
_controller = None
_own = {"load": None, "wall": 0.0, "cpu": 0.0}


# ------------------------------------------------------------------ override
def as_n_threads(value, name: str = "n_threads") -> int | None:
    """``value`` as a thread count: None (automatic) or a positive integer."""
    if value is None:
        return None
    try:
        return as_count(value, name, minimum=1)
    except DataError:
        raise DataError(f"{name} must be a positive integer, or None to let lmmfast choose "
                        f"from the work and the free cores, got {describe(value)}") from None


def set_num_threads(n: int | None = None) -> None:
    """Most BLAS threads a fit uses, for the whole process; None: chosen automatically.

    A fit's own ``n_threads=`` takes precedence.
    """
    global _override
    _override = as_n_threads(n)


def get_num_threads() -> int | None:
    """The process-wide setting of ``set_num_threads`` (None: automatic)."""
    return _override


# ------------------------------------------------------------------ work
def dense_entries(layout) -> int:
    """Entries of L's largest dense block (kept on the layout once computed)."""
    if layout.n_l < BLAS_SERIAL_ENTRIES:   # all of L is smaller
        return layout.n_l
    cached = layout.__dict__.get("_dense_entries")
    if cached is not None:
        return cached
    kinds = layout.kind_l.tolist()
    rows = (layout.nlev * layout.k).tolist() + [int(layout.p1)]
    largest = 0
    b = 0
    for s in range(len(rows)):
        for t in range(s + 1):
            if kinds[b] == BLOCK_DENSE:
                largest = max(largest, rows[s] * rows[t])
            b += 1
    layout.__dict__["_dense_entries"] = largest
    return largest


# ------------------------------------------------------------------ cores
def allowed_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _own_running() -> int:
    """Threads of this process that are runnable now (this one included)."""
    running = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            running += state == b"R"
    except OSError:
        pass
    return max(1, running)


def _own_load() -> float:
    """This process's share of the 1-minute load average: its CPU use (threads
    that ran) averaged as the kernel averages the load."""
    wall, cpu = time.monotonic(), time.process_time()
    own = _own
    if own["load"] is None:   # the time before: as if it all ran in the last seconds
        own["load"] = 1.0 - math.exp(-cpu / LOAD_WINDOW)
    else:
        dt = wall - own["wall"]
        if dt > 0:
            decay = math.exp(-dt / LOAD_WINDOW)
            own["load"] = own["load"] * decay + (cpu - own["cpu"]) / dt * (1.0 - decay)
    own["wall"], own["cpu"] = wall, cpu
    return own["load"]


def free_cores(allowed: int) -> int:
    """Cores of ``allowed`` that other processes leave free (at least 1)."""
    try:
        load1 = os.getloadavg()[0]
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError, AttributeError):
        return 1
    others = max(load1 - _own_load(), runnable - _own_running(), 0.0)
    return max(1, min(allowed, int(allowed - others + 0.5)))


def choose(layout, n_threads: int | None = None) -> int:
    """BLAS threads for work on ``layout``: 1 for small work, else the least of
    the allowed cores, the free cores and the override (``n_threads``, else
    ``set_num_threads``)."""
    if dense_entries(layout) < BLAS_MIN_ENTRIES:
        return 1
    cap = n_threads if n_threads is not None else _override
    n = allowed_cores()
    if cap is not None:
        n = min(n, cap)
    return free_cores(n) if n > 1 else 1


def row_workers(n_chunks: int, n_threads: int | None = None) -> int:
    """Threads for a pass over rows in ``n_chunks`` chunks: 1 for one chunk or off
    the main thread (a bootstrap's threads), else the least of the chunks, the
    allowed cores, the free cores and the override (``n_threads``, else
    ``set_num_threads``, which a bootstrap's worker processes set to 1)."""
    if n_chunks < 2 or threading.current_thread() is not threading.main_thread():
        return 1
    cap = n_threads if n_threads is not None else _override
    n = min(allowed_cores(), n_chunks)
    if cap is not None:
        n = min(n, cap)
    return free_cores(n) if n > 1 else 1


# ------------------------------------------------------------------ limits
def _blas_libraries() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries (scanned once)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController().select(user_api="blas").lib_controllers
    return _controller


class limit_blas:
    """Context: every loaded BLAS runs ``n`` threads; the previous counts are restored."""

    __slots__ = ("n", "_saved")

    def __init__(self, n: int):
        self.n = n
        self._saved = []

    def __enter__(self):
        for lib in _blas_libraries():
            current = lib.get_num_threads()
            if current != self.n:
                self._saved.append((lib, current))
                lib.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        while self._saved:
            lib, n = self._saved.pop()
            lib.set_num_threads(n)
        return False


def set_blas_threads(n: int) -> None:
    """Every loaded BLAS runs ``n`` threads from now on (in a worker process)."""
    for lib in _blas_libraries():
        if lib.get_num_threads() != n:
            lib.set_num_threads(n)


class _Unchanged:
    """Context that leaves the BLAS as it is (small work)."""

    __slots__ = ()
    n = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_UNCHANGED = _Unchanged()


def blas_threads(layout, n_threads: int | None = None):
    """Context for compiled work on ``layout``: the BLAS limited to ``choose``'s
    count; nothing changed where every BLAS call is small enough to run on one
    thread by itself."""
    if layout.n_l < BLAS_SERIAL_ENTRIES or dense_entries(layout) < BLAS_SERIAL_ENTRIES:
        return _UNCHANGED
    return limit_blas(choose(layout, n_threads))
