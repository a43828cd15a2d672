"""The plots (``lmmfast.plot``), the worked examples and ``lmmfast fit --plot``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import lmmfast  # noqa: E402
from lmmfast import plot  # noqa: E402
from lmmfast.cli import main as cli_main  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLEEP = "Reaction ~ 1 + Days + (1 + Days | Subject)"


def load_example(name: str):
    path = EXAMPLES / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"{path} not available (examples are in the source tree)")
    spec = importlib.util.spec_from_file_location(f"lmmfast_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_pngs(paths, expected_names):
    assert sorted(p.name for p in paths) == sorted(expected_names)
    for p in paths:
        assert p.is_file(), p
        data = p.read_bytes()
        assert len(data) > 1000, p
        assert data.startswith(PNG_MAGIC), p


@pytest.fixture(scope="module")
def sleep_fit():
    return lmmfast.lmer(SLEEP, lmmfast.datasets.load("sleepstudy"))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------ library
def test_subject_panels(sleep_fit):
    fig = plot.subject_panels(sleep_fit)
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 18
    assert all(a.get_title().startswith("Subject ") for a in visible)
    for order in ("intercept", "mean", "level"):
        plot.subject_panels(sleep_fit, group="Subject", x="Days", order=order, ols=False)
    with pytest.raises(ValueError, match="grouping factor"):
        plot.subject_panels(sleep_fit, group="nope")
    with pytest.raises(ValueError, match="order"):
        plot.subject_panels(sleep_fit, order="sideways")


def test_caterpillar(sleep_fit):
    fig = plot.caterpillar(sleep_fit, group="Subject")
    assert len(fig.axes) == 2                       # intercept and Days
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 18
    re = sleep_fit.ranef()["Subject"]["(Intercept)"]
    assert labels[0] == str(re.idxmin()) and labels[-1] == str(re.idxmax())

    fig = plot.caterpillar(sleep_fit, n=5, order="value")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert set(labels) == {str(s) for s in re.abs().sort_values().index[-5:]}
    fig = plot.caterpillar(sleep_fit, n=4, order="width")
    assert len(fig.axes[0].get_yticklabels()) == 4
    with pytest.raises(ValueError, match="ax="):
        _, ax = plt.subplots()
        plot.caterpillar(sleep_fit, ax=ax)


def test_caterpillar_on_given_axes():
    fit = lmmfast.lmer("Yield ~ 1 + (1 | Batch)", lmmfast.datasets.load("Dyestuff"))
    fig, ax = plt.subplots()
    assert plot.caterpillar(fit, ax=ax) is fig
    assert len(ax.get_yticklabels()) == 6


def test_residual_plots(sleep_fit):
    fig = plot.residual_plots(sleep_fit)
    assert len(fig.axes) == 2
    fig, axes = plt.subplots(1, 2)
    assert plot.residual_plots(sleep_fit, axes=axes) is fig


def test_profile_zeta(sleep_fit):
    prof = sleep_fit.profile()
    fig = plot.profile_zeta(prof)
    assert sum(a.get_visible() for a in fig.axes) == 6
    fig = plot.profile_zeta(prof, parameters=["Days"], absolute=True)
    assert sum(a.get_visible() for a in fig.axes) == 1
    with pytest.raises(ValueError, match="no profile"):
        plot.profile_zeta(prof, parameters=["nope"])


def test_missing_matplotlib_names_the_extra(sleep_fit, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"lmmfast\[plot\]"):
        plot.residual_plots(sleep_fit)


# --------------------------------------------------------------------- CLI
def test_cli_plot_writes_diagnostics(tmp_path, capsys):
    out = tmp_path / "plots"
    status = cli_main(["fit", "sleepstudy", SLEEP, "--plot", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "Random effects:" in captured.out
    assert_pngs(list(out.iterdir()), ["residuals.png", "ranef_Subject.png"])
    assert f"wrote {out / 'residuals.png'}" in captured.err


def test_cli_plot_with_json_and_many_levels(tmp_path, capsys):
    out = tmp_path / "pen"
    status = cli_main(["fit", "Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)",
                       "--json", "--plot", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.lstrip().startswith("{")
    assert_pngs(list(out.iterdir()), ["residuals.png", "ranef_plate.png", "ranef_sample.png"])


def test_cli_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = cli_main(["fit", "sleepstudy", SLEEP, "--plot", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "lmmfast[plot]" in err


# ---------------------------------------------------------------- examples
def test_sleepstudy_example(tmp_path, capsys):
    example = load_example("sleepstudy")
    written = example.main([str(tmp_path), "--boot", "200", "--seed", "1"])
    out = capsys.readouterr().out
    assert_pngs(written, ["sleepstudy_panels.png", "sleepstudy_caterpillar.png",
                          "sleepstudy_residuals.png", "sleepstudy_profile.png"])
    assert "lowest AIC: uncorrelated" in out
    assert "Satterthwaite" in out


def test_insteval_example(tmp_path, capsys):
    example = load_example("insteval")
    written = example.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert_pngs(written, ["insteval_shrinkage.png", "insteval_caterpillar_all.png",
                          "insteval_caterpillar_widest.png", "insteval_caterpillar_dept.png",
                          "insteval_residuals.png"])
    assert "Variance decomposition" in out
    assert "0.2652" in out                         # lme4: d (Intercept) variance 0.2652
    assert "| lmmfast (BLAS threads: " in out      # the timing table of docs/insteval.md
