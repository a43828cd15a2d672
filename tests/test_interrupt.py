"""Ctrl-C (SIGINT) stops the compiled core's long loops within a second: the
cross-products of a large X while a model is built, and the optimiser's loop;
the model stays usable afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import sys
import textwrap
import threading
import time

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child is POSIX")

BUILD = """
    import numpy as np
    from lmmfast.design import crossprod as blocks
    rng = np.random.default_rng(0)
    n, p = 20000, 600          # [X y]^T [X y] of dense columns: a minute of work
    x = rng.normal(size=(n, p))
    y = rng.normal(size=n)
    refs = [rng.integers(0, 50, n)]
    layout = blocks.BlockLayout.build(refs, [50], [1], p + 1)
    print("ready", flush=True)
    try:
        blocks.crossproducts(layout, refs, [np.ones((n, 1))], x, y, workers=WORKERS,
                             chunk_rows=CHUNK_ROWS)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    print("finished", flush=True)
"""

FIT = """
    import numpy as np
    import lmmfast
    from lmmfast.model import LinearMixedModel
    from lmmfast._trust_region import CoreObjective, Optimum
    from lmmfast.optimize import lambda_columns
    m = LinearMixedModel("Reaction ~ Days + (Days | Subject)",
                         lmmfast.datasets.load("sleepstudy"))
    fg = CoreObjective(m._core, True, m._theta_perm)
    n = len(m.theta_names)
    plan = Optimum(fg, np.ones(n), *lambda_columns(m.remats), 0.0, 0.0, 0.0, 10**7, 0.0, 1e3)
    print("ready", flush=True)
    try:   # no tolerance: ten million evaluations, minutes of the compiled loop
        plan.run(np.ones(n))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        print(f"{m.fit().objective:.10f}", flush=True)   # the model is still usable
        raise
    print("finished", flush=True)
"""


def _interrupt_after(code: str, delay: float = 1.0) -> tuple[float, list[str], str, int]:
    """Run ``code`` in a child, send SIGINT ``delay`` s after it prints "ready";
    returns the seconds until it printed "interrupted", its output, stderr, code."""
    # (run outside the checkout: its lmmfast/ would shadow the installed package)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=tempfile.gettempdir())
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        sent = time.perf_counter()
        first = child.stdout.readline().strip()
        waited = time.perf_counter() - sent
        # the rest through the same buffered stream: ``communicate`` reads the
        # raw pipe and would miss lines ``readline`` has already buffered
        watchdog = threading.Timer(30, child.kill)
        watchdog.start()
        rest, err = child.stdout.read(), child.stderr.read()
        child.wait()
        watchdog.cancel()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return waited, [first] + rest.split(), err, child.returncode


@pytest.mark.parametrize("workers,chunk_rows", [(1, 20000), (2, 250)])
def test_ctrl_c_stops_the_crossproducts_of_a_large_x(workers, chunk_rows):
    """In the calling thread, the kernel stops; with two threads, the calling
    thread raises and the threads stop after their chunk."""
    script = BUILD.replace("WORKERS", str(workers)).replace("CHUNK_ROWS", str(chunk_rows))
    waited, out, err, code = _interrupt_after(script)
    assert out[0] == "interrupted", (out, err)
    assert waited < 2.0
    assert "KeyboardInterrupt" in err
    assert code != 0


def test_ctrl_c_stops_the_optimiser_loop_and_the_model_still_fits():
    waited, out, err, code = _interrupt_after(FIT)
    assert out[0] == "interrupted", (out, err)
    assert waited < 2.0
    assert len(out) > 1, err
    assert float(out[1]) == pytest.approx(1743.6282719599, rel=1e-9)   # lme4's REML
    assert "KeyboardInterrupt" in err
    assert code != 0


class _Alarm(Exception):
    pass


def test_a_signal_between_the_factor_steps_propagates_and_the_core_recovers():
    """A signal handler that raises while a large factor is updated (here
    SIGALRM's, in this process) stops the update between two of its steps with
    that exception; the next update gives the criterion it gave before."""
    import numpy as np
    import pandas as pd

    from lmmfast.model import LinearMixedModel

    rng = np.random.default_rng(0)
    n = 2000
    data = pd.DataFrame({"y": rng.normal(size=n),
                         "f": pd.Categorical(rng.integers(0, 300, n)),
                         "g": pd.Categorical(rng.integers(0, 100, n)),
                         "h": pd.Categorical(rng.integers(0, 60, n))})
    formula = "y ~ f + (1 | g) + (1 | h)"
    core = LinearMixedModel(formula, data)._core
    theta = np.ones(2)
    want = core.objective(theta, True)
    armed = [False]

    def alarm(signum, frame):
        if armed[0]:
            armed[0] = False
            raise _Alarm

    previous = signal.signal(signal.SIGALRM, alarm)
    stopped = 0
    deadline = time.perf_counter() + 5.0
    try:
        signal.setitimer(signal.ITIMER_REAL, 1e-4, 1e-4)   # an alarm every 0.1 ms
        while stopped < 3 and time.perf_counter() < deadline:
            try:
                armed[0] = True
                core.update(theta)
                armed[0] = False
            except _Alarm:
                stopped += core.last_info == -(1 << 30)   # stopped inside the update
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
    assert stopped >= 3
    assert core.update(theta) == 0
    assert core.objective(theta, True) == want
