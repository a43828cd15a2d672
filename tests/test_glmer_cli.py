"""``lmmfast fit ... --family``: glmer from the command line, against lme4.

R's numbers: tests/fixtures/glmm/glmer_results.json (make_lme4_glmer_results.R).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmmfast.cli import main

REF = json.loads((Path(__file__).parent / "fixtures" / "glmm" / "glmer_results.json")
                 .read_text(encoding="utf-8"))
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def lines(text):
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def test_cli_process_prints_lme4_summary(tmp_path):
    """The installed command, run as a process (outside the source tree, whose
    lmmfast/ has no compiled core), prints R's summary of cbpp's fit."""
    proc = subprocess.run([sys.executable, "-m", "lmmfast", "fit", "cbpp", CBPP,
                           "--family", "binomial"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == lines(REF["models"]["cbpp_laplace"]["summary"])


@pytest.mark.parametrize("model,extra", [("cbpp_probit", ["--link", "probit"]),
                                         ("cbpp_agq25", ["--nagq", "25"])])
def test_cli_link_and_nagq(capsys, model, extra):
    status, out, err = run(capsys, "fit", "cbpp", CBPP, "--family", "binomial", *extra)
    assert status == 0, err
    assert lines(out) == lines(REF["models"][model]["summary"])


def test_cli_proportion_with_weights(capsys):
    """--weights COL: a proportion response with trials as weights, "Weights: size"."""
    m = REF["models"]["cbpp_prop"]
    status, out, err = run(capsys, "fit", "cbpp", m["formula"], "--family", "binomial",
                           "--weights", "size")
    assert status == 0, err
    assert lines(out) == lines(m["summary"])


def test_cli_json(capsys):
    m = REF["models"]["cbpp_agq25"]
    status, out, err = run(capsys, "fit", "cbpp", CBPP, "--family", "binomial",
                           "--nagq", "25", "--json")
    assert status == 0, err
    got = json.loads(out)
    assert (got["family"], got["link"], got["nAGQ"], got["nobs"]) == ("binomial", "logit", 25, 56)
    assert got["objective"] == pytest.approx(m["minus2loglik"], rel=1e-8)
    assert got["loglik"] == pytest.approx(-m["minus2loglik"] / 2, rel=1e-8)
    assert got["theta"]["herd.(Intercept)"] == pytest.approx(m["theta"], rel=1e-4)
    for name, value in m["fixef"].items():
        assert got["fixef"][name]["estimate"] == pytest.approx(value, rel=1e-4)
    assert set(got["fixef"]["period2"]) == {"estimate", "se", "z", "p"}
    assert got["overdispersion"]["chisq"] == pytest.approx(m["overdispersion"]["chisq"],
                                                           rel=1e-5)
    assert got["df_resid"] == 51 and got["is_singular"] is False


def test_cli_poisson_file(capsys, tmp_path):
    """A CSV file as DATA: its path is the summary's Data line."""
    from lmmfast import datasets
    path = tmp_path / "epil.csv"
    datasets.load("epil").to_csv(path, index=False)
    m = REF["models"]["epil_int"]
    status, out, err = run(capsys, "fit", str(path), m["formula"], "--family", "poisson",
                           "--json")
    assert status == 0, err
    assert json.loads(out)["objective"] == pytest.approx(m["minus2loglik"], rel=1e-8)


@pytest.mark.parametrize("argv,message", [
    (["--family", "gamma"], "family 'gamma'"),
    (["--family", "binomial", "--link", "log"], "link"),
    (["--link", "probit"], "--link needs --family"),
    (["--nagq", "9"], "--nagq needs --family"),
    (["--family", "binomial", "--ml"], "--ml applies to linear"),
    (["--family", "binomial", "--r2"], "--r2 applies to linear"),
    (["--family", "poisson"], "cbind"),
])
def test_cli_bad_input(capsys, argv, message):
    status, out, err = run(capsys, "fit", "cbpp", CBPP, *argv)
    assert status == 2
    assert out == ""
    assert message in err and err.startswith("lmmfast: error:")
