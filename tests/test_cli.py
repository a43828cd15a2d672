"""The ``lmmfast`` command line: ``fit`` (summary and JSON) and ``datasets``."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import lmmfast
from lmmfast.cli import main

REFERENCE = Path("/work/shared/reference/lme4_results.json")

needs_reference = pytest.mark.skipif(not REFERENCE.is_file(),
                                     reason="lme4 reference results not available")

SLEEP = "Reaction ~ Days + (Days | Subject)"


@lru_cache(maxsize=None)
def lme4(model: str, kind: str) -> dict:
    return json.loads(REFERENCE.read_text())["models"][model]["fits"][kind]


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_rel(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert np.all(np.abs(actual - expected) <= rtol * np.abs(expected)), \
        f"{what}: {actual} vs lme4 {expected}"


def assert_matches_lme4(result: dict, ref: dict) -> None:
    """A JSON result against lme4's fit (the tolerances of lmmfast vs lme4's default fit)."""
    assert result["nobs"] == ref["nobs"]
    assert result["reml"] == ref["REML"]
    assert_rel(result["objective"], ref["objective"], 1e-6, "objective")
    for key, ref_key in (("loglik", "logLik"), ("aic", "AIC"), ("bic", "BIC")):
        assert_rel(result[key], ref[ref_key], 1e-6, key)
    assert list(result["theta"]) == ref["theta_names"]
    np.testing.assert_allclose(list(result["theta"].values()), ref["theta"], atol=1e-4)
    assert list(result["fixef"]) == ref["fixef"]["names"]
    assert_rel([v["estimate"] for v in result["fixef"].values()], ref["fixef"]["estimate"],
               1e-6, "fixef")
    assert_rel([v["se"] for v in result["fixef"].values()], ref["fixef"]["se"], 1e-4, "se")
    assert_rel(result["sigma"], ref["sigma"], 1e-4, "sigma")
    assert [(r["grp"], r["var1"], r["var2"]) for r in result["varcorr"]] == \
        [(r["grp"], r["var1"], r["var2"]) for r in ref["varcorr"]]
    assert_rel([r["vcov"] for r in result["varcorr"]], [r["vcov"] for r in ref["varcorr"]],
               1e-3, "varcorr")
    assert result["is_singular"] == ref["is_singular"]
    assert result["n_dropped"] == 0 and result["dropped_columns"] == []
    assert result["n_evals"] > 0


def sleepstudy_frame():
    data = lmmfast.datasets.load("sleepstudy")
    data["Subject"] = data["Subject"].astype(int)   # as a CSV reader sees it
    return data


# --------------------------------------------------------------------------
# fit


@needs_reference
def test_json_subprocess_matches_lme4(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lmmfast", "fit", "sleepstudy", SLEEP, "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    assert result["formula"] == SLEEP
    assert_matches_lme4(result, lme4("sleep_slope", "REML"))


def test_summary_is_the_default(capsys):
    status, out, err = run(capsys, "fit", "sleepstudy", SLEEP)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[:3] == ["Linear mixed model fit by REML ['lmerMod']", f"Formula: {SLEEP}",
                         "   Data: sleepstudy"]
    assert "REML criterion at convergence: 1743.6" in lines
    assert "Number of obs: 180, groups:  Subject, 18" in lines


@needs_reference
def test_ml(capsys):
    status, out, err = run(capsys, "fit", "sleepstudy", SLEEP, "--ml", "--json")
    assert status == 0 and err == ""
    assert_matches_lme4(json.loads(out), lme4("sleep_slope", "ML"))

    status, out, _ = run(capsys, "fit", "sleepstudy", SLEEP, "--ml")
    assert status == 0
    assert out.startswith("Linear mixed model fit by maximum likelihood ['lmerMod']\n")
    assert out.splitlines()[4:6] == ["     AIC      BIC   logLik deviance df.resid",
                                     "  1763.9   1783.1   -876.0   1751.9      174"]


@needs_reference
def test_json_has_null_for_missing(capsys):
    status, out, _ = run(capsys, "fit", "Dyestuff2", "Yield ~ 1 + (1 | Batch)", "--json")
    assert status == 0
    result = json.loads(out)
    assert result["varcorr"][-1] == {"grp": "Residual", "var1": None, "var2": None,
                                     "vcov": pytest.approx(lme4("dyestuff2", "REML")["sigma"] ** 2),
                                     "sdcor": pytest.approx(lme4("dyestuff2", "REML")["sigma"])}
    assert result["is_singular"] is True


@needs_reference
def test_csv_path(tmp_path, capsys):
    path = tmp_path / "sleep.csv"
    sleepstudy_frame().to_csv(path, index=False)
    status, out, err = run(capsys, "fit", str(path), SLEEP, "--json")
    assert status == 0 and err == ""
    assert_matches_lme4(json.loads(out), lme4("sleep_slope", "REML"))


@needs_reference
def test_parquet_path(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    path = tmp_path / "sleep.parquet"
    sleepstudy_frame().to_parquet(path)
    status, out, err = run(capsys, "fit", str(path), SLEEP, "--json")
    assert status == 0 and err == ""
    assert_matches_lme4(json.loads(out), lme4("sleep_slope", "REML"))


def test_parquet_without_pyarrow(tmp_path, capsys, monkeypatch):
    path = tmp_path / "sleep.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    status, out, err = run(capsys, "fit", str(path), SLEEP)
    assert status == 2 and out == ""
    assert err.startswith("lmmfast: error: ") and "pip install pyarrow" in err


def test_weights_offset_and_warnings(tmp_path, capsys):
    data = sleepstudy_frame()
    data["w"] = np.linspace(0.5, 2.0, len(data))
    data["off"] = np.linspace(0.0, 3.0, len(data))
    data["Days2"] = 2 * data["Days"]
    data.loc[3, "Reaction"] = np.nan
    path = tmp_path / "sleep.csv"
    data.to_csv(path, index=False)
    status, out, err = run(capsys, "fit", str(path), "Reaction ~ Days + Days2 + (Days | Subject)",
                           "--weights", "w", "--offset", "off")
    assert status == 0
    warnings = err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("lmmfast: warning: ") for w in warnings)
    assert "missing" in warnings[0] and "Days2" in warnings[1]
    assert "Weights: w\n Offset: off\n" in out
    assert "Number of obs: 179, groups:  Subject, 18\n" \
           "  (1 observation deleted due to missingness)\n" in out
    assert "rank deficient so dropping 1 column / coefficient (Days2)" in out

    status, out, _ = run(capsys, "fit", str(path), "Reaction ~ Days + (Days | Subject)",
                         "--weights", "w", "--json")
    result = json.loads(out)
    assert result["n_dropped"] == 1 and result["nobs"] == 179


# --------------------------------------------------------------------------
# errors


def assert_error(status: int, out: str, err: str, *fragments: str) -> None:
    assert status == 2 and out == ""
    assert err.startswith("lmmfast: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_missing_column(capsys):
    assert_error(*run(capsys, "fit", "sleepstudy", "Reaction ~ Dayz + (1 | Subject)"), "'Dayz'")
    assert_error(*run(capsys, "fit", "sleepstudy", SLEEP, "--weights", "wt"), "'wt'")


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.csv"
    assert_error(*run(capsys, "fit", str(path), SLEEP), "not found", str(path))


def test_unknown_dataset(capsys):
    assert_error(*run(capsys, "fit", "sleepstudies", SLEEP), "unknown dataset 'sleepstudies'",
                 "sleepstudy")


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "data.txt"
    path.write_text("a,b\n1,2\n")
    assert_error(*run(capsys, "fit", str(path), SLEEP), ".csv or .parquet")


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["fit", "sleepstudy"]) == 2
    assert "usage: lmmfast" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "fit" in capsys.readouterr().out


# --------------------------------------------------------------------------
# datasets


def test_datasets_command(capsys):
    status, out, err = run(capsys, "datasets")
    assert status == 0 and err == ""
    assert out.splitlines() == lmmfast.datasets.names()


# --------------------------------------------------------------------------
# version, closed pipes, warnings of a failed fit


def test_version(capsys):
    from importlib.metadata import version
    status, out, err = run(capsys, "--version")
    assert status == 0 and err == ""
    assert out == f"lmmfast {version('lmmfast')}\n"
    assert out == f"lmmfast {lmmfast.__version__}\n"


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "summary"])
def test_closed_pipe_ends_quietly(tmp_path, json_output):
    """``lmmfast fit ... | head``: the reader goes away before the output is written;
    no traceback or error message, and the status of a process ended by SIGPIPE."""
    argv = [sys.executable, "-m", "lmmfast", "fit", "sleepstudy", SLEEP]
    proc = subprocess.Popen(argv + (["--json"] if json_output else []), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()          # before the child (still importing) writes anything
    _, err = proc.communicate(timeout=600)
    err = err.decode()
    assert "Traceback" not in err and "Broken pipe" not in err and "Exception" not in err, err
    assert err == ""
    assert proc.returncode == 141


def test_warnings_of_a_failed_fit_are_shown(tmp_path, capsys):
    """The warnings raised before a fit fails (here: rows dropped, leaving a constant
    response) explain the error; they come first, then the error, status 2."""
    data = sleepstudy_frame().assign(Reaction=250.0)
    data.loc[[3, 5], "Days"] = np.nan
    path = tmp_path / "constant.csv"
    data.to_csv(path, index=False)
    status, out, err = run(capsys, "fit", str(path), "Reaction ~ Days + (1 | Subject)")
    assert status == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0] == ("lmmfast: warning: 2 rows with missing values dropped (in 'Days'); "
                        "178 rows remain")
    assert lines[1].startswith("lmmfast: error: the response 'Reaction' is fitted exactly")


# --------------------------------------------------------------------------
# post-fit tables: --emmeans, --contrast, --adjust, --r2

CAKE = "angle ~ recipe * temperature + (1 | recipe:replicate)"


def posthoc_reference(model: str) -> dict:
    path = Path(__file__).parent / "fixtures" / "posthoc_results.json"
    return json.loads(path.read_text())["models"][model]


def assert_records_equal(records: list[dict], table) -> None:
    """JSON rows against a DataFrame: same columns in order, same values (NaN as null)."""
    assert [list(r) for r in records] == [list(table.columns)] * len(table)
    for record, row in zip(records, table.to_dict("records")):
        for col, value in row.items():
            if isinstance(value, float):
                assert record[col] == (None if not np.isfinite(value) else value), col
            else:
                assert record[col] == str(value), col


@pytest.mark.parametrize("formula", [CAKE, "angle ~ recipe * temp + (1 | recipe:replicate)"],
                         ids=["factor", "numeric"])
def test_emmeans_and_contrasts_json(capsys, formula):
    status, out, err = run(capsys, "fit", "cake", formula, "--emmeans", "~ recipe",
                           "--contrast", "pairwise", "--adjust", "tukey", "--json")
    assert status == 0 and err == ""
    result = json.loads(out)
    fit = lmmfast.lmer(formula, lmmfast.datasets.load("cake"))
    means = fit.emmeans("~ recipe")
    assert_records_equal(result["emmeans"], means.table)
    assert_records_equal(result["contrasts"], means.contrast("pairwise", adjust="tukey"))
    assert "r2" not in result and "icc" not in result
    if formula != CAKE:
        return
    # and R's emmeans (kenward-roger df, Tukey's p), at this library's optimum
    ref = posthoc_reference("cake")["emmeans"][0]
    assert ref["spec"] == {"specs": "~ recipe", "df": "kenward-roger",
                           "contrast": "pairwise", "adjust": "tukey"}
    for key in ("emmeans", "contrasts"):
        rows = result[key]
        for col, expected in ref[key].items():
            got = [r[col] for r in rows]
            if isinstance(expected[0], str):
                assert got == expected
            else:
                assert_rel(got, expected, 1e-3 if col == "p.value" else 1e-4, f"{key} {col}")


def test_emmeans_default_adjust_and_ddf(capsys):
    status, out, _ = run(capsys, "fit", "cake", CAKE, "--emmeans", "~ recipe",
                         "--ddf", "asymptotic", "--contrast", "pairwise", "--json")
    assert status == 0
    result = json.loads(out)
    means = lmmfast.lmer(CAKE, lmmfast.datasets.load("cake")).emmeans(
        "~ recipe", ddf="asymptotic")
    assert_records_equal(result["emmeans"], means.table)
    assert_records_equal(result["contrasts"], means.contrast("pairwise"))   # tukey
    assert result["emmeans"][0]["df"] is None       # infinite df: null, as NaN
    assert "z.ratio" in result["contrasts"][0]


def test_emmeans_printed_after_summary(capsys):
    status, out, err = run(capsys, "fit", "cake", CAKE, "--emmeans", "~ recipe",
                           "--contrast", "pairwise", "--adjust", "tukey")
    assert status == 0 and err == ""
    assert out.startswith("Linear mixed model fit by REML ['lmerMod']\n")
    summary, tables = out.split("\n$emmeans\n")
    assert "Random effects:" in summary and "$" not in summary
    lines = tables.splitlines()
    assert lines[0].split() == ["recipe", "emmean", "SE", "df", "lower.CL", "upper.CL",
                                "t.ratio", "p.value"]
    assert lines[1].split() == ["A", "33.12", "1.737", "42", "29.62", "36.63", "19.07", "<.0001"]
    assert "Degrees-of-freedom method: kenward-roger" in lines
    start = lines.index("$contrasts")
    assert lines[start + 1].split()[:2] == ["contrast", "estimate"]
    assert lines[start + 2].split()[:3] == ["A", "-", "B"]
    assert lines[start + 2].split()[-1] == "0.8200"
    assert "P value adjustment: tukey" in lines
    widths = {len(line) for line in lines[start + 1:start + 5]}
    assert len(widths) == 1          # aligned columns


def test_r2(capsys):
    status, out, err = run(capsys, "fit", "sleepstudy", SLEEP, "--r2", "--json")
    assert status == 0 and err == ""
    result = json.loads(out)
    fit = lmmfast.lmer(SLEEP, lmmfast.datasets.load("sleepstudy"))
    assert result["r2"] == fit.r2() and result["icc"] == fit.icc()
    ref = posthoc_reference("sleep_slope")
    assert_rel(result["r2"]["R2_conditional"], ref["r2_nakagawa"]["conditional"], 1e-4, "R2")
    assert_rel(result["icc"]["ICC_adjusted"], ref["icc"]["adjusted"], 1e-4, "ICC")
    assert "emmeans" not in result and "contrasts" not in result

    status, out, _ = run(capsys, "fit", "sleepstudy", SLEEP, "--r2")
    assert status == 0
    assert "# R2 for Mixed Models\n\n  Conditional R2: 0.799\n     Marginal R2: 0.279\n" in out
    assert "    Adjusted ICC: 0.722\n  Unadjusted ICC: 0.521\n" in out


@pytest.mark.parametrize("argv, fragments", [
    (["--contrast", "pairwise"], ["--contrast needs --emmeans"]),
    (["--ddf", "satterthwaite"], ["--ddf needs --emmeans"]),
    (["--emmeans", "~ recipe", "--adjust", "holm"], ["--adjust needs --contrast"]),
    (["--emmeans", "~ recipe", "--contrast", "pairs"], ["--contrast", "'pairs'", "'pairwise'"]),
    (["--emmeans", "~ recipe", "--contrast", "pairwise", "--adjust", "scheffe"],
     ["--adjust", "'scheffe'", "'holm'"]),
    (["--emmeans", "~ recipe", "--ddf", "kr2"], ["--ddf", "'kr2'"]),
    (["--emmeans", "~ flavour"], ["'flavour'", "recipe"]),
    (["--emmeans", "~ recipe", "--contrast", "consec", "--adjust", "tukey"], ["tukey"]),
], ids=["contrast-alone", "ddf-alone", "adjust-alone", "method", "adjust", "ddf",
        "column", "tukey-consec"])
def test_post_fit_errors(capsys, argv, fragments):
    assert_error(*run(capsys, "fit", "cake", CAKE, *argv), *fragments)
