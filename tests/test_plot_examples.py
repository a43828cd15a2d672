"""The plots (``lmmfast.plot``), the worked examples and ``lmmfast fit --plot``."""

from __future__ import annotations

import importlib.util
import math
import re
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


def printed_section(out: str, title: str) -> str:
    """The text an example prints under a section title (up to the next section)."""
    parts = [part.strip("\n") for part in out.split("=" * 72)]
    assert title in parts, f"no section {title!r} in the output"
    return parts[parts.index(title) + 1]


def printed_numbers(text: str, start: str) -> list[float]:
    """The numbers on the printed line that starts with ``start``."""
    lines = [line for line in text.splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"expected one line starting {start!r} in\n{text}"
    values = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", lines[0])]
    assert values and all(math.isfinite(v) for v in values), lines[0]
    return values


def printed_table(text: str, header: str) -> list[list[str]]:
    """The rows of a printed table whose header line starts with ``header``."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith(header))
    rows = []
    for line in lines[first + 1:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


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

    fit = lmmfast.lmer("Reaction ~ 1 + Days + (1 + Days || Subject)",
                       lmmfast.datasets.load("sleepstudy"))
    conv = printed_section(out, "Convergence (lme4's checks at the fitted theta)")
    assert "checks passed: True; singular fit: False; derivative checks run: True" in conv
    assert "messages: none" in conv
    assert printed_numbers(conv, "scaled gradient")[0] < 2e-3

    r2 = printed_section(out, "R² (Nakagawa) and ICC")
    conditional, marginal = printed_numbers(r2, "R2 conditional")
    adjusted, unadjusted = printed_numbers(r2, "ICC adjusted")
    assert 0 < marginal < conditional < 1 and 0 < unadjusted < adjusted < 1
    expected = list(fit.r2().values()) + list(fit.icc().values())
    assert [conditional, marginal, adjusted, unadjusted] == pytest.approx(expected, abs=1e-4)

    tidy = printed_table(printed_section(
        out, "Tidy table of the estimates (95% t intervals, Satterthwaite's df)"), "effect")
    assert [row[:2] for row in tidy] == [["fixed", "(Intercept)"], ["fixed", "Days"],
                                        ["ran_pars", "Subject"], ["ran_pars", "Subject.1"],
                                        ["ran_pars", "Residual"]]
    low, high = float(tidy[1][-2]), float(tidy[1][-1])
    assert low < 10.467 < high                     # lme4: Days 10.467

    days = printed_section(
        out, "Reaction time after 3, 6 and 9 days against baseline (Kenward-Roger df)")
    means = printed_table(days, "Days  emmean")
    assert [row[0] for row in means] == ["0", "3", "6", "9"]
    assert float(means[0][1]) == pytest.approx(251.405, abs=1e-3)   # lme4: (Intercept)
    contrasts = printed_table(days, "contrast")
    assert [" ".join(row[:3]) for row in contrasts] == [
        "Days3 - Days0", "Days6 - Days0", "Days9 - Days0"]
    slope = 10.467286                              # lme4: Days
    assert [float(row[3]) for row in contrasts] == pytest.approx(
        [3 * slope, 6 * slope, 9 * slope], abs=1e-3)
    assert {row[8] for row in contrasts} == {"6.712"}   # each a multiple of the slope


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

    r2 = printed_section(out, "R² (Nakagawa) and ICC")
    conditional, marginal = printed_numbers(r2, "R2 conditional")
    adjusted, unadjusted = printed_numbers(r2, "ICC adjusted")
    assert 0 < marginal < 0.01 < unadjusted < adjusted < conditional < 1
    # the ICC's random variance is the sum over the three crossed terms; lme4's
    # variances s 0.105998, d 0.265221, dept 0.006912, residual 1.3865
    random = 0.105998 + 0.265221 + 0.006912
    assert adjusted == pytest.approx(random / (random + 1.3865), abs=1e-4)
    assert printed_numbers(r2, "(s + d + dept)") == pytest.approx([adjusted], abs=1e-4)

    service = printed_section(
        out, "Service courses: marginal means and contrast (Satterthwaite's df)")
    means = printed_table(service, "service  emmean")
    assert [row[0] for row in means] == ["0", "1"]
    assert float(means[0][1]) == pytest.approx(3.2826, abs=1e-4)     # lme4: (Intercept)
    assert float(means[1][1]) == pytest.approx(3.2826 - 0.0926, abs=2e-4)
    contrasts = printed_table(service, "contrast")
    assert len(contrasts) == 1 and contrasts[0][:3] == ["0", "-", "1"]
    estimate, se, df = (float(v) for v in contrasts[0][3:6])
    assert estimate == pytest.approx(0.09264, abs=1e-4)   # lme4: service1 -9.264e-02
    assert se == pytest.approx(0.01339, abs=1e-4)
    assert df == pytest.approx(37614, rel=1e-3)            # lmerTest: 3.761e+04
    assert contrasts[0][-1] == "<.0001"
