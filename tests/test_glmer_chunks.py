"""PIRLS over chunks of rows: the same model whatever the chunks.

A GLMM's passes over rows (``lmmfast.glmm.rows``: eta, mu, unit deviances,
working weights and response, and the cross-products they re-form) go one
chunk at a time.  Splitting the fixture models' rows into many small chunks
must leave the Laplace and quadrature deviances, the conditional modes and the
analytic gradient as they are, at the optimum and off it, and the fit at
lme4's optimum; the design keeps one copy of the columns a term shares with
X, and none of unit weights or a zero offset.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_glmer import dataset, fit, spec

from lmmfast.glmm import glmer
from lmmfast.glmm import rows as glmm_rows
from lmmfast.glmm.laplace import gradient_available, laplace_deviance, laplace_gradient

# (model, rows per chunk): every model split into at least five chunks, the last shorter
CASES = [("cbpp_laplace", 11), ("cbpp_prop_weights", 9), ("cbpp_agq25", 10),
         ("cbpp_probit", 12), ("cbpp_nagq0", 10), ("verbagg_main", 1500),
         ("verbagg_slope", 1700), ("epil_int", 50), ("epil_slope", 45), ("epil_agq9", 40),
         ("epil_offset", 37)]


def _chunked(name: str, rows: int, monkeypatch):
    m = spec(name)
    monkeypatch.setattr(glmm_rows, "PASS_ROWS", rows)
    return glmer(m["formula"], dataset(m["dataset"]), family=(m["family"], m["link"]),
                 nAGQ=m["nAGQ"], weights=m["weights"])


@pytest.mark.parametrize("name,rows", CASES)
def test_chunks_leave_the_deviance_modes_and_gradient_unchanged(name, rows, monkeypatch):
    whole = fit(name)
    chunked = _chunked(name, rows, monkeypatch)
    assert len(whole.pirls.chunks) == 1 and len(chunked.pirls.chunks) >= 5
    assert chunked.pirls.chunks[-1].size < rows
    x_hat = np.concatenate([whole.theta, whole.beta])
    nt = whole.n_theta
    for x in (x_hat, x_hat * 1.05 + 0.01):
        theta, beta = x[:nt], x[nt:]
        if whole.n_agq:
            assert chunked.deviance_at(theta, beta) == pytest.approx(
                whole.deviance_at(theta, beta), rel=1e-12)
        else:
            assert chunked.deviance_theta(theta) == pytest.approx(
                whole.deviance_theta(theta), rel=1e-12)
        modes = [f.pirls.mode(theta, beta, np.zeros_like(f.pirls.last_u))
                 for f in (whole, chunked)]
        np.testing.assert_allclose(modes[1].u, modes[0].u, rtol=1e-9, atol=1e-10)
        assert modes[1].dev_sum == pytest.approx(modes[0].dev_sum, rel=1e-13)
        assert laplace_deviance(chunked.pirls, modes[1], exact=True) == pytest.approx(
            laplace_deviance(whole.pirls, modes[0], exact=True), rel=1e-12)
        if gradient_available(whole.pirls):
            g = [laplace_gradient(f.pirls, md) for f, md in zip((whole, chunked), modes)]
            np.testing.assert_allclose(g[1], g[0], rtol=1e-8, atol=1e-11 * whole.objective)


@pytest.mark.parametrize("name,rows", [("cbpp_laplace", 11), ("verbagg_main", 1500),
                                       ("epil_slope", 45), ("epil_agq9", 40)])
def test_a_chunked_fit_is_the_fit(name, rows, monkeypatch):
    """The whole fit on chunks: the same optimum to 1e-8 (sums over other chunks
    round differently; the optimiser takes the same steps)."""
    whole = fit(name)
    chunked = _chunked(name, rows, monkeypatch)
    assert chunked.objective == pytest.approx(whole.objective, rel=1e-12)
    assert chunked.stage_evals == whole.stage_evals
    np.testing.assert_allclose(chunked.theta, whole.theta, rtol=1e-8)
    np.testing.assert_allclose(chunked.beta, whole.beta, rtol=1e-8)
    # (the quadrature's standard errors are second differences of the deviance: their
    # rounding is ~1e-7 of them)
    np.testing.assert_allclose(chunked.stderr, whole.stderr, rtol=1e-6)
    np.testing.assert_allclose(chunked.fitted, whole.fitted, rtol=1e-8)
    np.testing.assert_allclose(chunked.residuals("pearson"), whole.residuals("pearson"),
                               rtol=1e-7, atol=1e-10)


def test_the_design_keeps_no_column_twice():
    """(1 + V4 | subject) with V4 in X's columns but not X's only: its own z; a
    term whose columns are X's shares X; unit prior weights, unit trials and a
    zero offset are constants that take no memory per row."""
    epil = dataset("epil")
    f = glmer("y ~ V4 + (1 + V4 | subject)", epil, family="poisson")
    d = f.design
    assert d.remats[0].z is d.x
    for col in (d.prior_weights, d.trials, d.offset):
        assert col.strides == (0,) and len(col) == d.nobs
    assert (d.prior_weights == 1).all() and (d.offset == 0).all()
    g = fit("epil_slope").design
    assert g.remats[0].z is not g.x and g.remats[0].z.shape[1] == 2
    w = fit("cbpp_prop_weights").design
    assert w.prior_weights.strides != (0,) and w.offset.strides == (0,)


def test_pirls_from_the_last_mode_starts_with_the_factor_it_has():
    """At a new theta with beta unchanged, PIRLS starts at the last mode's
    b = Lambda u: the same eta, so the factor's A is already the start's and the
    first step needs no pass over the rows; the mode is the one PIRLS finds from
    the last u with a pass at the start."""
    from lmmfast.glmm.laplace import laplace_deviance
    f = fit("verbagg_main")
    p = f.pirls
    prev = p.mode_joint(f.theta * 0.9)
    loop = p.factor(True).loop
    before = loop.n_passes
    reused = p.mode_joint(f.theta)
    assert loop.n_passes - before == reused.iterations
    before = loop.n_passes
    fresh = p.mode_joint(f.theta, beta0=prev.beta, u0=prev.u)
    assert loop.n_passes - before == fresh.iterations + 1
    assert laplace_deviance(p, reused) == pytest.approx(laplace_deviance(p, fresh), rel=1e-12)
    np.testing.assert_allclose(reused.beta, fresh.beta, rtol=1e-9)
    # no start from b where a Lambda's diagonal is at the boundary
    boundary = p.mode_joint(np.array([f.theta[0], 0.0]))
    assert np.isfinite(boundary.u).all()


@pytest.mark.parametrize("name,rows", [("cbpp_probit", 11), ("verbagg_main", 1500),
                                       ("epil_slope", 45), ("epil_agq9", 40)])
def test_threaded_partitions_give_the_one_partition_fit(name, rows, monkeypatch):
    """Rows in several chunks passed over on threads (``LocalRows.set_workers``,
    chosen by ``threads.row_workers`` where cores are free and the rows outweigh
    the further threads' buffers): each partition's
    double-double A merged exactly, the deviance, gradient and fit those of one
    partition (sums of other partitions round differently before the mode)."""
    from lmmfast import threads
    from lmmfast.glmm import pirls
    monkeypatch.setattr(threads, "allowed_cores", lambda: 3)
    monkeypatch.setattr(threads, "free_cores", lambda n: n)   # an idle machine
    # small rows: a further thread's buffers outweigh them (ROW_WORKER_MEMORY)
    assert _chunked(name, rows, monkeypatch).pirls.rows.workers == 1
    monkeypatch.setattr(pirls, "ROW_WORKER_MEMORY", 1e9)
    several = _chunked(name, rows, monkeypatch)
    monkeypatch.setattr(threads, "free_cores", lambda n: 1)   # a busy one
    one = _chunked(name, rows, monkeypatch)
    assert one.pirls.rows.workers == 1 and several.pirls.rows.workers == 3
    assert several.objective == pytest.approx(one.objective, rel=1e-12)
    np.testing.assert_allclose(several.theta, one.theta, rtol=1e-7)
    np.testing.assert_allclose(several.beta, one.beta, rtol=1e-7)
    np.testing.assert_allclose(several.stderr, one.stderr, rtol=1e-5)
    x = np.concatenate([one.theta, one.beta]) * 1.05 + 0.01
    nt = one.n_theta
    modes = [f.pirls.mode(x[:nt], x[nt:], np.zeros_like(f.pirls.last_u)) for f in (one, several)]
    assert modes[1].dev_sum == pytest.approx(modes[0].dev_sum, rel=1e-13)
    factors = [f.pirls.factor(False) for f in (one, several)]
    np.testing.assert_allclose(factors[1].a, factors[0].a, rtol=1e-13, atol=1e-13)
    if gradient_available(one.pirls) and one.n_agq == 1:
        g = [laplace_gradient(f.pirls, md) for f, md in zip((one, several), modes)]
        np.testing.assert_allclose(g[1], g[0], rtol=1e-8, atol=1e-11 * one.objective)


def test_row_workers_follow_the_cores_and_the_caller(monkeypatch):
    """One thread for one chunk, off the main thread (a bootstrap's threads) and
    under ``set_num_threads(1)`` (a bootstrap's worker processes); else the least
    of the chunks and the free cores."""
    import threading

    from lmmfast import threads
    monkeypatch.setattr(threads, "allowed_cores", lambda: 4)
    monkeypatch.setattr(threads, "free_cores", lambda n: min(n, 3))
    assert threads.row_workers(1) == 1
    assert threads.row_workers(2) == 2
    assert threads.row_workers(10) == 3
    assert threads.row_workers(10, n_threads=2) == 2
    out = []
    t = threading.Thread(target=lambda: out.append(threads.row_workers(10)))
    t.start()
    t.join()
    assert out == [1]
    threads.set_num_threads(1)
    try:
        assert threads.row_workers(10) == 1
    finally:
        threads.set_num_threads(None)


def test_a_forked_process_passes_over_threaded_partitions(monkeypatch):
    """A model whose rows are on threads, used in a forked process (a bootstrap's
    worker before its refit): the child makes its own threads."""
    import multiprocessing

    from lmmfast import threads
    from lmmfast.glmm import pirls
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork")
    monkeypatch.setattr(threads, "free_cores", lambda n: n)
    monkeypatch.setattr(threads, "allowed_cores", lambda: 2)
    monkeypatch.setattr(pirls, "ROW_WORKER_MEMORY", 1e9)
    f = _chunked("epil_int", 50, monkeypatch)
    assert f.pirls.rows.workers == 2
    expected = f.deviance_at(f.theta * 1.1, f.beta)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put(f.deviance_at(f.theta * 1.1, f.beta)))
    child.start()
    try:
        got = queue.get(timeout=60)   # (a child waiting on its parent's threads: Empty)
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
    assert got == pytest.approx(expected, rel=1e-12)
