"""The BLAS thread policy (lmmfast.threads): the count chosen, applied inside a
fit and restored after it, its overrides, and one thread per bootstrap worker."""

import os

import numpy as np
import pytest
import threadpoolctl

import lmmfast
from lmmfast import bootstrap as bootstrap_module
from lmmfast import threads
from lmmfast.datasets.simulate import simulate
from lmmfast.model import LinearMixedModel

SLEEP = "Reaction ~ 1 + Days + (1 + Days | Subject)"


def scipy_blas_threads() -> int:
    """Threads of the BLAS the compiled core calls (scipy's)."""
    counts = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
              if lib["user_api"] == "blas" and "scipy.libs" in lib["filepath"]]
    return counts[0] if counts else max(lib["num_threads"] for lib in
                                        threadpoolctl.threadpool_info()
                                        if lib["user_api"] == "blas")


@pytest.fixture(scope="module")
def crossed():
    """Crossed factors of 400 and 300 levels: L's dense block is 300 x 300, so the
    fit calls dpotrf, dsyrk and dtrsm on it (sizes OpenBLAS runs on several threads)."""
    df = simulate(20_000, groups=(400, 300), seed=1)
    return df.attrs["truth"]["formula"], df


@pytest.fixture
def record_fit_threads(monkeypatch):
    """The BLAS threads seen inside each fit, as threadpoolctl reports them."""
    seen = []
    inner = LinearMixedModel._fit

    def spy(self, **kwargs):
        seen.append(scipy_blas_threads())
        return inner(self, **kwargs)

    monkeypatch.setattr(LinearMixedModel, "_fit", spy)
    return seen


@pytest.fixture(autouse=True)
def automatic():
    threads.set_num_threads(None)
    yield
    threads.set_num_threads(None)


def test_dense_entries_of_layouts(crossed):
    formula, df = crossed
    m = LinearMixedModel(formula, df)
    assert threads.dense_entries(m._layout) == 300 * 300
    sleep = LinearMixedModel(SLEEP, lmmfast.datasets.load("sleepstudy"))
    assert threads.dense_entries(sleep._layout) < threads.BLAS_SERIAL_ENTRIES


def test_chosen_count_applied_inside_fit_and_restored(crossed, record_fit_threads):
    formula, df = crossed
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        lmmfast.lmer(formula, df)
        assert scipy_blas_threads() == 2   # restored after the fit
    assert record_fit_threads == [1]   # mid-size work: one thread


def test_large_work_uses_free_cores_capped_by_override(crossed, record_fit_threads,
                                                        monkeypatch):
    formula, df = crossed
    m = LinearMixedModel(formula, df)
    monkeypatch.setattr(threads, "BLAS_MIN_ENTRIES", 100)   # this model counts as large
    monkeypatch.setattr(threads, "allowed_cores", lambda: 2)
    free = {"n": 2}
    monkeypatch.setattr(threads, "free_cores", lambda allowed: min(allowed, free["n"]))
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        m.fit()                      # idle: both cores
        free["n"] = 1
        m.fit()                      # busy: one
        free["n"] = 2
        m.fit(n_threads=1)           # the fit's override
        threads.set_num_threads(1)
        m.fit()                      # the process-wide override
        m.fit(n_threads=2)           # the fit's own takes precedence
        assert scipy_blas_threads() == 1
    assert record_fit_threads == [2, 1, 1, 1, 2]


def test_small_fit_leaves_blas_untouched(monkeypatch, record_fit_threads):
    def fail(*args):
        raise AssertionError("the BLAS was limited for a small fit")

    monkeypatch.setattr(threads, "_blas_libraries", fail)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        fit = lmmfast.lmer(SLEEP, lmmfast.datasets.load("sleepstudy"), n_threads=1)
    assert record_fit_threads == [2]
    assert fit.objective == pytest.approx(1743.6283, abs=1e-4)


@pytest.fixture
def record_glmer_threads(monkeypatch):
    """The BLAS threads seen inside each glmer fit."""
    from lmmfast.glmm.model import GeneralizedLinearMixedModel
    seen = []
    inner = GeneralizedLinearMixedModel._fit

    def spy(self, start):
        seen.append(scipy_blas_threads())
        return inner(self, start)

    monkeypatch.setattr(GeneralizedLinearMixedModel, "_fit", spy)
    return seen


def test_small_glmer_leaves_blas_untouched(monkeypatch, record_glmer_threads):
    def fail(*args):
        raise AssertionError("the BLAS was limited for a small fit")

    monkeypatch.setattr(threads, "_blas_libraries", fail)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        fit = lmmfast.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                            lmmfast.datasets.load("cbpp"), family="binomial")
    assert record_glmer_threads == [2]
    assert fit.objective == pytest.approx(184.0526, abs=1e-4)


def test_glmer_on_many_rows_runs_one_blas_thread_and_restores(record_glmer_threads):
    """VerbAgg's chunk of rows, 7584 x 9 for [X z], is past what the BLAS keeps on
    one thread by itself: one thread inside the fit, the count restored after."""
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        lmmfast.glmer("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
                      lmmfast.datasets.load("VerbAgg"), family="binomial")
        assert scipy_blas_threads() == 2
    assert record_glmer_threads == [1]


def test_n_threads_results_bit_identical(crossed):
    formula, df = crossed
    with threadpoolctl.threadpool_limits(1, user_api="blas"):   # OPENBLAS_NUM_THREADS=1
        ref = LinearMixedModel(formula, df)._fit()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):   # the BLAS's own default
        fits = [lmmfast.lmer(formula, df, n_threads=n) for n in (1, 2, None)]
        fits.append(LinearMixedModel(formula, df, n_threads=2).fit(n_threads=1))
    for fit in fits:
        assert fit.objective == ref.objective
        assert np.array_equal(fit.theta.to_numpy(), ref.theta.to_numpy())
        assert np.array_equal(fit.fixef.to_numpy(), ref.fixef.to_numpy())


def test_set_num_threads_round_trips_and_validates():
    assert lmmfast.get_num_threads() is None
    lmmfast.set_num_threads(3)
    assert lmmfast.get_num_threads() == 3
    lmmfast.set_num_threads(2.0)
    assert lmmfast.get_num_threads() == 2
    lmmfast.set_num_threads(None)
    assert lmmfast.get_num_threads() is None
    for bad in (0, -1, 2.5, "two", True):
        with pytest.raises(lmmfast.DataError, match="n_threads must be a positive integer"):
            lmmfast.set_num_threads(bad)
    assert lmmfast.get_num_threads() is None


def test_bad_n_threads_of_a_fit():
    df = lmmfast.datasets.load("sleepstudy")
    with pytest.raises(lmmfast.DataError, match="n_threads .* got 0"):
        lmmfast.lmer(SLEEP, df, n_threads=0)
    m = LinearMixedModel(SLEEP, df)
    with pytest.raises(lmmfast.DataError, match="n_threads .* got 'four'"):
        m.fit(n_threads="four")


def test_free_cores_counts_other_load(monkeypatch):
    allowed = threads.allowed_cores()
    assert 1 <= allowed <= (os.cpu_count() or 1)
    assert 1 <= threads.free_cores(2) <= 2
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))
    assert threads.free_cores(2) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "_own_running", lambda: 10_000)
    assert threads.free_cores(2) == 2


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_bootstrap_workers_run_one_blas_thread(backend, tmp_path, monkeypatch):
    if backend == "process" and "fork" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("no fork")
    fit = lmmfast.lmer(SLEEP, lmmfast.datasets.load("sleepstudy"))
    run = bootstrap_module._Job.run
    log = tmp_path / "threads.txt"

    def spy(self, model, indices):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {scipy_blas_threads()}\n")
        return run(self, model, indices)

    monkeypatch.setattr(bootstrap_module._Job, "run", spy)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        boot = fit.bootstrap(20, seed=1, n_jobs=2, backend=backend, progress=False)
        assert scipy_blas_threads() == 2
    counts = [int(line.split()[1]) for line in log.read_text().splitlines()]
    assert counts and set(counts) == {1}
    assert boot.attrs["n_jobs"] == 2


def test_bootstrap_default_n_jobs_is_allowed_cores():
    fit = lmmfast.lmer(SLEEP, lmmfast.datasets.load("sleepstudy"))
    boot = fit.bootstrap(10, seed=1, progress=False)
    assert boot.attrs["n_jobs"] == min(10, threads.allowed_cores())
