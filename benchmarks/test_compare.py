"""``compare.py``'s machinery: busy processes, one-thread timing, peers, the tables.

Runs in seconds: lme4 is hidden, and so are the Python peers except where a
test is about one of them (skipped when it is not installed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import compare  # noqa: E402

PEER_MODULES = ("statsmodels", "mixedlm", "lme_python")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def no_r(monkeypatch):
    monkeypatch.setattr(compare, "r_status", lambda: (False, "Rscript not found on PATH"))


def _hide(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)   # import raises ImportError


def _run(tmp_path, capsys, *argv):
    out_file = tmp_path / "out.json"
    assert compare.main([*argv, "--json", str(out_file)]) == 0
    return capsys.readouterr().out, json.loads(out_file.read_text())


def test_busy_processes_spin_and_stop():
    with compare.busy_processes(2) as pids:
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        time.sleep(0.5)
        # CPU-bound: each has used CPU time (utime, field 14 of /proc/PID/stat)
        if Path("/proc").is_dir():
            ticks = [int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11])
                     for p in pids]
            assert all(t > 0 for t in ticks)
    assert not any(_alive(p) for p in pids)


def test_busy_processes_stopped_on_ctrl_c():
    with pytest.raises(KeyboardInterrupt):
        with compare.busy_processes(1) as pids:
            raise KeyboardInterrupt
    assert not _alive(pids[0])


def test_one_thread_uses_n_threads_when_offered():
    seen = []

    def fit(x, n_threads=None):
        seen.append(n_threads)
        return {"objective": x}

    assert compare.one_thread_how(fit) == "n_threads=1"
    seconds, _, info = compare.one_thread_tool(fit, lambda r: r, 3.0)()
    assert seen == [1] and info == {"objective": 3.0} and seconds >= 0


def test_one_thread_limits_blas_otherwise():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def threads():
        return {"objective": max(p["num_threads"] for p in threadpoolctl.threadpool_info()
                                 if p["user_api"] == "blas")}

    assert compare.one_thread_how(threads) == "threadpoolctl BLAS limit 1"
    assert compare.one_thread_tool(threads, lambda r: r)()[2]["objective"] == 1


def test_one_thread_never_right_after_lmmfast():
    tools = ["lmmfast", compare.ONE_THREAD, "lme4", "statsmodels", "mixedlm", "lme-python"]
    even, odd = compare.round_orders(tools)
    assert sorted(even) == sorted(odd) == sorted(tools)
    before = {}
    for cycle in (even, odd):
        for i, tool in enumerate(cycle):
            before.setdefault(tool, set()).add(cycle[i - 1])
    # neither lmmfast run follows the other; each follows the same two tools
    assert compare.ONE_THREAD not in before["lmmfast"]
    assert "lmmfast" not in before[compare.ONE_THREAD]
    assert before["lmmfast"] == before[compare.ONE_THREAD] and len(before["lmmfast"]) == 2
    assert compare.round_orders(["lmmfast", "lme4"]) == (["lmmfast", "lme4"],) * 2
    # three tools: each lmmfast run follows the other in one of the two orders
    even, odd = compare.round_orders(["lmmfast", compare.ONE_THREAD, "lme4"])
    assert even.index(compare.ONE_THREAD) == (even.index("lmmfast") - 1) % 3
    assert odd.index("lmmfast") == (odd.index(compare.ONE_THREAD) - 1) % 3


def test_runs_without_any_peer(monkeypatch, tmp_path, capsys, no_r):
    _hide(monkeypatch, *PEER_MODULES)
    out, res = _run(tmp_path, capsys, "--models", "dyestuff", "--fits", "ML", "--reps", "1",
                    "--warmup", "0")
    for line in ("statsmodels skipped: not installed (pip install statsmodels)",
                 "mixedlm skipped: not installed (pip install mixedlm)",
                 "lme-python skipped: not installed (pip install lme-python)",
                 "lme4 skipped: Rscript not found on PATH"):
        assert line in out
    [row] = res["rows"]
    assert list(row["median"]) == ["lmmfast"]
    # without R, Δobj is taken to lme4's stored ML deviance of Dyestuff
    assert row["lme4_objective_from"] == "stored"
    assert row["lme4_objective"] == pytest.approx(327.3270598811, abs=1e-6)
    assert abs(row["objective"]["lmmfast"] - row["lme4_objective"]) < 1e-6
    header = next(line for line in out.splitlines() if line.startswith("model"))
    assert header.split() == ["model", "fit", "lmmfast", "evals", "lmmfast", "Δobj", "lmmfast"]


@pytest.mark.parametrize("module, peer, model", [("mixedlm", "mixedlm", "pastes"),
                                                  ("lme_python", "lme-python", "sleep_zerocorr")])
def test_peer_objective_matches_lme4(monkeypatch, tmp_path, capsys, no_r, module, peer, model):
    pytest.importorskip(module)
    _hide(monkeypatch, *(m for m in PEER_MODULES if m != module))
    out, res = _run(tmp_path, capsys, "--models", model, "--reps", "1", "--warmup", "0")
    for row in res["rows"]:
        # -2 log-likelihood: the REML criterion (REML) or the deviance (ML) lme4 reaches
        assert abs(row["objective"][peer] - row["lme4_objective"]) < 1e-5
        assert row["median"][peer] > 0
    header = next(line for line in out.splitlines() if line.startswith("model"))
    assert f"{peer}/lmmfast" in header and f"Δobj {peer}" in header


def test_lme_python_skipped_on_insteval():
    [peer] = [p for p in compare.PEERS if p.name == "lme-python"]
    assert "insteval" in peer.skip


def test_busy_run_tables(monkeypatch, tmp_path, capsys, no_r):
    _hide(monkeypatch, *PEER_MODULES)
    out, res = _run(tmp_path, capsys, "--models", "dyestuff", "--fits", "REML", "--reps", "1",
                    "--warmup", "0", "--busy", "1", "--markdown")
    assert [r["phase"] for r in res["rows"]] == ["idle", "busy"]
    assert all(compare.ONE_THREAD in r["median"] for r in res["rows"])
    assert res["meta"]["busy"] == 1 and len(res["meta"]["phases"]["busy"]["busy_pids"]) == 1
    assert not _alive(res["meta"]["phases"]["busy"]["busy_pids"][0])
    assert "### idle: no busy processes" in out and "### busy: 1 CPU-bound" in out
    summary = out.split("### lmmfast idle and busy")[1]
    assert "| idle lmmfast | idle lmmfast 1 thread | idle lmmfast/1 thread |" in summary
    assert "| dyestuff | REML |" in summary
