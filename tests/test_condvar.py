"""Conditional covariances of the random effects (lme4's ``ranef(fit, condVar = TRUE)``).

* lme4's conditional standard deviations (``condsd`` of every fit with ranef
  in the reference suite and the extra fixtures) agree to 1e-3 relative;
* the blocks equal those of a dense Var(b | y) = sigma^2 Lambda (Lambda^T Z^T W Z
  Lambda + I)^{-1} Lambda^T (eq. 25), formed with ``dense_reference``, to 1e-8,
  on the reference models and on small synthetic models that exercise every
  block kind (sparse and dense blocks next to the first term, several trailing
  terms, terms sharing a grouping factor in either position);
* InstEval (q = 4114) is checked against sparse solves for a sample of levels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import scipy.sparse.linalg

import lmmfast
from lmmfast.condvar import condvar_blocks
from conftest import (assert_rel, extra_fit, extra_reference, reference, reference_fit)
from dense_reference import dense_Lambda, dense_Z

REF_CASES = [(m, k) for m, spec in reference()["models"].items()
             for k in ("REML", "ML") if spec["fits"][k]["ranef"]]
# sleep_zero_weight is not fitted (zero weights); (1 + phase || Subject) is not identifiable
EXTRA_CASES = [(m, k) for m in extra_reference()["models"]
               if m not in ("sleep_zero_weight", "sleep_zerocorr_factor")
               for k in ("REML", "ML")]


def _dense_condvar(fit) -> np.ndarray:
    """sigma^2 Lambda (Lambda^T Z^T W Z Lambda + I)^{-1} Lambda^T, lme4 term order (eq. 25)."""
    terms = [(r.refs, r.z, r.nlevels) for r in fit.remats]
    z = dense_Z(terms, fit.nobs)
    lam = dense_Lambda(terms, fit._theta)
    w = fit.weights if fit.weights is not None else np.ones(fit.nobs)
    zl = z @ lam
    a = zl.T @ (zl * w[:, None]) + np.eye(z.shape[1])
    return fit.sigma ** 2 * lam @ np.linalg.solve(a, lam.T)


def _level_blocks(fit, v: np.ndarray) -> dict[str, np.ndarray]:
    starts = np.cumsum([0] + [r.q for r in fit.remats])
    out = {}
    for g in dict.fromkeys(r.group for r in fit.remats):
        idx = [i for i, r in enumerate(fit.remats) if r.group == g]
        nl = fit.remats[idx[0]].nlevels
        blocks = []
        for lev in range(nl):
            cols = [starts[i] + lev * fit.remats[i].k + a
                    for i in idx for a in range(fit.remats[i].k)]
            blocks.append(v[np.ix_(cols, cols)])
        out[g] = np.array(blocks)
    return out


def _assert_dense(fit, rtol=1e-8):
    want = _level_blocks(fit, _dense_condvar(fit))
    got = condvar_blocks(fit)
    assert list(got) == list(want)
    for g in want:
        scale = max(np.max(np.abs(want[g])), 1e-300)
        err = np.max(np.abs(got[g] - want[g])) / scale
        assert err <= rtol, f"{g}: {err:.3g}"


def _assert_condsd(fit, ref_ranef, rtol=1e-3):
    re = fit.ranef(condvar=True)
    assert set(re) == set(ref_ranef)
    for g, spec in ref_ranef.items():
        sd = re[g].attrs["condsd"]
        assert list(sd.columns) == spec["columns"]
        assert list(sd.index) == spec["levels"]
        theirs = np.array([spec["condsd"][lev] for lev in spec["levels"]], dtype=float)
        floor = max(1e-6 * np.max(np.abs(theirs)), 1e-10 * fit.sigma)
        assert_rel(sd.to_numpy(), theirs, rtol, f"condsd {g}", floor=floor)


# ------------------------------------------------------------ against lme4
@pytest.mark.parametrize("model,kind", REF_CASES, ids=[f"{m}-{k}" for m, k in REF_CASES])
def test_condsd_reference(model, kind):
    fit = reference_fit(model, kind)
    _assert_condsd(fit, reference()["models"][model]["fits"][kind]["ranef"])


@pytest.mark.parametrize("model,kind", EXTRA_CASES, ids=[f"{m}-{k}" for m, k in EXTRA_CASES])
def test_condsd_extra(model, kind):
    fit = extra_fit(model, kind)
    _assert_condsd(fit, extra_reference()["models"][model]["fits"][kind]["ranef"])


# ------------------------------------------------------- dense brute force
@pytest.mark.parametrize("model,kind", REF_CASES, ids=[f"{m}-{k}" for m, k in REF_CASES])
def test_dense_reference_models(model, kind):
    _assert_dense(reference_fit(model, kind))


@pytest.mark.parametrize("model", ["sleep_weights", "penicillin_weights",
                                   "pastes_nested_explicit", "sleep_zerocorr_factor",
                                   "dyestuff_offset_weights_ml", "cake_nointercept"])
def test_dense_extra_models(model):
    _assert_dense(extra_fit(model, "REML"))


def _synthetic(seed=0, n=900, n1=150, n2=80, n3=12):
    rng = np.random.default_rng(seed)
    g1 = rng.integers(0, n1, n)
    g2 = rng.integers(0, n2, n)
    g3 = rng.integers(0, n3, n)
    x = rng.normal(size=n)
    u = rng.normal(size=n)
    y = (1 + 0.5 * x + rng.normal(size=n1)[g1] * 0.8 + rng.normal(size=n1)[g1] * 0.4 * x
         + rng.normal(size=n2)[g2] * 0.7 + rng.normal(size=n2)[g2] * 0.3 * u
         + rng.normal(size=n3)[g3] * 0.5 + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "u": u, "g1": [f"a{i}" for i in g1],
                         "g2": [f"b{i}" for i in g2], "g3": [f"c{i}" for i in g3]})


SYNTHETIC = [
    "y ~ x + (1 + x | g1) + (1 + u | g2) + (1 | g3)",   # sparse (g2, g1), k = 2 trailing
    "y ~ x + (1 + x || g1) + (1 | g2)",                  # shared factor: first term + trailing
    "y ~ x + (1 + u || g2) + (1 | g1) + (1 | g3)",       # shared factor: two trailing terms
    "y ~ x + (1 + x + u | g3) + (1 + x | g1)",           # k = 3 trailing, first term k = 2
    "y ~ x + (1 + x + u | g1) + (x | g3)",               # k = 3 first term, dense neighbour
]


@pytest.mark.parametrize("formula", SYNTHETIC)
def test_dense_synthetic(formula):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmmfast.errors.LmmWarning)
        fit = lmmfast.lmer(formula, _synthetic())
    _assert_dense(fit)


def test_sparse_neighbour_block_is_exercised():
    from lmmfast._cholesky import BLOCK_SPARSE
    fit = lmmfast.lmer(SYNTHETIC[0], _synthetic())
    assert (fit._layout.kind_l == BLOCK_SPARSE).any()


@pytest.mark.parametrize("formula", SYNTHETIC[:2])
def test_weights_and_small_chunks(formula, monkeypatch):
    data = _synthetic(seed=3)
    w = 0.5 + (np.arange(len(data)) % 5) / 4
    fit = lmmfast.lmer(formula, data, weights=w)
    _assert_dense(fit)
    want = condvar_blocks(fit)
    import lmmfast.condvar as cv
    monkeypatch.setattr(cv, "CHUNK_DOUBLES", 1000)
    got = condvar_blocks(fit)
    for g in want:
        np.testing.assert_allclose(got[g], want[g], rtol=1e-12, atol=0)


# --------------------------------------------------------------- structure
def test_frames_and_attributes():
    fit = reference_fit("sleep_zerocorr", "REML")
    plain = fit.ranef()
    re = fit.ranef(condvar=True)
    assert list(re) == list(plain)
    for g, df in re.items():
        pd.testing.assert_frame_equal(df, plain[g])
        v = df.attrs["condvar"]
        k = df.shape[1]
        assert v.shape == (df.shape[0], k, k)
        np.testing.assert_array_equal(v, v.transpose(0, 2, 1))
        assert (np.linalg.eigvalsh(v) > 0).all()
        sd = df.attrs["condsd"]
        assert list(sd.columns) == list(df.columns) and list(sd.index) == list(df.index)
        np.testing.assert_allclose(sd.to_numpy(), np.sqrt(np.diagonal(v, axis1=1, axis2=2)))
        # terms of one factor from ||: conditionally correlated, although independent a priori
        assert np.all(np.abs(v[:, 0, 1]) > 0)


def test_singular_fit_has_zero_condvar():
    fit = reference_fit("dyestuff2", "REML")
    v = fit.ranef(condvar=True)["Batch"].attrs["condvar"]
    assert np.all(v == 0)


def test_factor_restored_after_criterion():
    fit = reference_fit("penicillin", "ML")
    want = condvar_blocks(fit)
    fit.criterion(fit._theta * 1.5)
    got = condvar_blocks(fit)
    for g in want:
        np.testing.assert_array_equal(got[g], want[g])


# ----------------------------------------------------------------- InstEval
def test_insteval_against_sparse_solves():
    fit = reference_fit("insteval", "REML")
    re = fit.ranef(condvar=True)
    for g, df in re.items():
        sd = df.attrs["condsd"].to_numpy()
        assert np.isfinite(sd).all() and (sd > 0).all(), g
    # Var(b_j | y) = sigma^2 lambda^2 e_j^T (Lambda Z^T Z Lambda + I)^{-1} e_j, by sparse LU
    blocks = []
    lams = []
    pos = 0
    for r in fit.remats:
        th = fit._theta[pos:pos + r.n_theta]
        pos += r.n_theta
        lam = r.lambda_(th)[0, 0]
        blocks.append(scipy.sparse.csr_matrix(
            (r.z[:, 0] * lam, (np.arange(fit.nobs), r.refs)), shape=(fit.nobs, r.nlevels)))
        lams.append(lam)
    zl = scipy.sparse.hstack(blocks).tocsc()
    a = (zl.T @ zl + scipy.sparse.identity(zl.shape[1])).tocsc()
    lu = scipy.sparse.linalg.splu(a)
    starts = np.cumsum([0] + [r.q for r in fit.remats])
    rng = np.random.default_rng(0)
    for i, r in enumerate(fit.remats):
        levels = rng.choice(r.nlevels, size=min(8, r.nlevels), replace=False)
        e = np.zeros((a.shape[0], len(levels)))
        e[starts[i] + levels, np.arange(len(levels))] = 1.0
        sol = lu.solve(e)
        want = fit.sigma ** 2 * lams[i] ** 2 * sol[starts[i] + levels, np.arange(len(levels))]
        got = re[r.group].attrs["condvar"][levels, 0, 0]
        assert_rel(got, want, 1e-8, f"InstEval {r.group}")
