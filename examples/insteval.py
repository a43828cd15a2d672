"""Use case 2: crossed random effects (lme4's InstEval).

73,421 course evaluations at ETH Zurich: 2,972 students (``s``) rated 1,128
lecturers (``d``) from 14 departments (``dept``) on a scale of 1 to 5 (``y``);
``service`` says whether the lecture was a service course for another
department.  Every student rates several lecturers and every lecturer is
rated by many students, so students and lecturers are crossed, not nested.
Questions: how much of the variation in ratings is due to lecturers, to
students, to departments; which lecturers stand out, and how sure can we be?

    python examples/insteval.py [OUTDIR] [--lme4] [--repeat N]

prints the analysis and writes the plots as PNG files to OUTDIR (default
``docs/img``).  The fit is timed ``N`` times (default 3) and the times are
printed as the table of ``docs/insteval.md``, with the date, the machine and
its load; ``--lme4`` also times lme4's fit with ``Rscript`` on this machine.  The walk-through is ``docs/insteval.md``.  Needs
``pip install 'lmmfast[plot]'``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import lmmfast  # noqa: E402
from lmmfast import plot  # noqa: E402

FORMULA = "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)"
TIMINGS = Path("/work/shared/reference/lme4_timings.json")
R_SCRIPT = """
suppressMessages(library(lme4))
t <- system.time(lmer(y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept), InstEval, REML = TRUE))
cat(t[["elapsed"]], "\\n")
"""


def section(title: str) -> None:
    print(f"\n{'=' * 72}\n{title}\n{'=' * 72}")


def show(table: pd.DataFrame) -> str:
    """An emmeans table as emmeans prints it: rounded, p-values below 1e-4 as "<.0001"."""
    out = table.copy()
    out["p.value"] = [f"{p:.4f}" if p >= 1e-4 else "<.0001" for p in out["p.value"]]
    return out.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def save(fig, outdir: Path, name: str, written: list[Path]) -> None:
    path = outdir / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)


def lme4_seconds_here() -> float | None:
    """lme4's time for the same fit on this machine (None without R and lme4)."""
    if shutil.which("Rscript") is None:
        return None
    run = subprocess.run(["Rscript", "-e", R_SCRIPT], capture_output=True, text=True)
    if run.returncode != 0:
        return None
    return float(run.stdout.split()[-1])


def timing_table(seconds: list[float], n_evals: int, lme4_here: float | None) -> str:
    """The Time table of docs/insteval.md, with when and where it was measured."""
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines = [f"Measured {datetime.date.today().isoformat()} on {platform.machine()} "
             f"{platform.system()} with {os.cpu_count()} cores (load average "
             f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} at the end), Python "
             f"{platform.python_version()}, lmmfast {lmmfast.__version__}:", "",
             "| | wall time | evaluations |", "|---|---|---|",
             f"| lmmfast (BLAS threads: {threads}) | "
             f"{', '.join(f'{t:.2f} s' for t in seconds)} | {n_evals} |"]
    if lme4_here is not None:
        lines.append(f"| lme4 (`lmer()` by Rscript on this machine) | {lme4_here:.2f} s | |")
    if TIMINGS.is_file():
        ref = json.loads(TIMINGS.read_text())["timings"]["insteval/REML"]
        lines.append(f"| lme4 1.1-31, reference timings (`lme4_timings.json`, R 4.2.2, 2-core "
                     f"x86-64), OpenBLAS / reference BLAS | {ref['median_s_openblas']:.1f} s / "
                     f"{ref['median_s_reference_blas']:.1f} s | {ref['feval']} |")
    return "\n".join(lines)


def shrinkage_plot(raw: pd.Series, mode: pd.Series, counts: pd.Series):
    """Each lecturer's raw mean deviation against its conditional mode."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0), layout="constrained")
    logn = np.log10(counts.to_numpy(dtype=float))
    pts = ax.scatter(raw, mode, c=logn, s=9, cmap="viridis", alpha=0.8, lw=0,
                     vmin=logn.min(), vmax=logn.max())
    lim = [min(raw.min(), mode.min()) - 0.1, max(raw.max(), mode.max()) + 0.1]
    ax.plot(lim, lim, "-", color="0.4", lw=0.9, label="no shrinkage (y = x)")
    ax.axhline(0.0, color="0.7", lw=0.7)
    ax.axvline(0.0, color="0.7", lw=0.7)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    bar = fig.colorbar(pts, ax=ax, shrink=0.85)
    ticks = [t for t in (1, 3, 10, 30, 100, 300, 1000)
             if logn.min() <= np.log10(t) <= logn.max()]
    bar.set_ticks(np.log10(ticks), labels=[str(t) for t in ticks])
    bar.set_label("ratings of the lecturer")
    ax.set_xlabel("lecturer's mean rating minus the grand mean")
    ax.set_ylabel("conditional mode of the lecturer's effect")
    ax.set_title("Shrinkage of the lecturers' effects", fontsize=10.5)
    ax.legend(loc="upper left", fontsize=8.5, frameon=False)
    ax.grid(True, lw=0.4, alpha=0.4)
    return fig


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", default="docs/img", help="where the PNGs go")
    parser.add_argument("--lme4", action="store_true",
                        help="also time lme4's fit with Rscript on this machine")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="time the fit N times (default 3)")
    args = parser.parse_args(argv)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pd.set_option("display.width", 120)

    data = lmmfast.datasets.load("InstEval")
    section("Data")
    print(f"{len(data)} ratings; {data['s'].nunique()} students, {data['d'].nunique()} "
          f"lecturers, {data['dept'].nunique()} departments")
    per_s = data.groupby("s", observed=True).size()
    per_d = data.groupby("d", observed=True).size()
    print(f"ratings per student: median {per_s.median():.0f} (range {per_s.min()}-{per_s.max()}); "
          f"per lecturer: median {per_d.median():.0f} (range {per_d.min()}-{per_d.max()})")

    section("Fit (REML) and time")
    seconds = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        fit = lmmfast.lmer(FORMULA, data)
        seconds.append(time.perf_counter() - t0)
    here = lme4_seconds_here() if args.lme4 else None
    if args.lme4 and here is None:
        print("lme4 on this machine: not available (Rscript with lme4 needed)")
    print(timing_table(seconds, fit.n_evals, here))
    print()
    print(fit.summary(ddf="satterthwaite"))

    section("Variance decomposition")
    vc = fit.varcorr
    total = vc["vcov"].sum()
    decomposition = pd.DataFrame({
        "variance": vc["vcov"].to_numpy(),
        "std.dev": vc["sdcor"].to_numpy(),
        "share": (vc["vcov"] / total).to_numpy(),
    }, index=pd.Index(vc["grp"].to_numpy(), name="component"))
    print(decomposition.round(4).to_string())
    v = dict(zip(vc["grp"], vc["vcov"]))
    same_lecturer = (v["d"] + v["dept"]) / total
    print(f"\ncorrelation of two ratings of the same lecturer by different students: "
          f"{same_lecturer:.3f}")
    print(f"correlation of two ratings by the same student of lecturers in different "
          f"departments: {v['s'] / total:.3f}")

    section("R² (Nakagawa) and ICC")
    r2, icc = fit.r2(), fit.icc()
    print(f"R2 conditional {r2['R2_conditional']:.4f}, marginal {r2['R2_marginal']:.4f}")
    print(f"ICC adjusted {icc['ICC_adjusted']:.4f}, unadjusted {icc['ICC_unadjusted']:.4f}")
    print(f"(s + d + dept) / (s + d + dept + Residual) = "
          f"{(v['s'] + v['d'] + v['dept']) / total:.4f}")

    section("Service courses: marginal means and contrast (Satterthwaite's df)")
    means = fit.emmeans("~ service", ddf="satterthwaite")
    print(show(means.table))
    print()
    print(show(means.contrast("pairwise")))

    section("Shrinkage of the lecturers' effects")
    re = fit.ranef(condvar=True)
    lect = re["d"]["(Intercept)"]
    lect_sd = re["d"].attrs["condsd"]["(Intercept)"]
    grand = data["y"].mean()
    raw = (data.groupby("d", observed=True)["y"].mean() - grand).reindex(lect.index)
    counts = per_d.reindex(lect.index)
    table = pd.DataFrame({"ratings": counts, "raw": raw, "mode": lect, "cond.sd": lect_sd})
    table["ratio"] = table["mode"] / table["raw"]
    bins = pd.cut(table["ratings"], [0, 5, 10, 20, 50, 100, 200, 10_000])
    summary = table.groupby(bins, observed=True).agg(
        lecturers=("ratings", "size"), sd_raw=("raw", "std"), sd_mode=("mode", "std"),
        median_cond_sd=("cond.sd", "median"))
    print("by the number of ratings of the lecturer:")
    print(summary.round(3).to_string())
    print(f"\nspread of the lecturers' raw mean deviations: sd {raw.std():.3f}; "
          f"of the conditional modes: sd {lect.std():.3f}; "
          f"estimated sd of lecturer effects: {np.sqrt(v['d']):.3f}")
    print("\nthe five highest and five lowest lecturers:")
    ranked = table.sort_values("mode")
    print(pd.concat([ranked.tail(5)[::-1], ranked.head(5)]).round(3).to_string())
    z = 1.959964
    clear = ((lect - z * lect_sd > 0) | (lect + z * lect_sd < 0)).sum()
    print(f"\nlecturers whose 95% prediction interval excludes 0: {clear} of {len(lect)}")

    section("Plots")
    save(shrinkage_plot(raw, lect, counts), outdir, "insteval_shrinkage.png", written)
    save(plot.caterpillar(fit, group="d", title="All 1128 lecturers: conditional modes "
                          "with 95% prediction intervals"),
         outdir, "insteval_caterpillar_all.png", written)
    save(plot.caterpillar(fit, group="d", n=30, order="width",
                          title="The 30 lecturers with the widest 95% prediction intervals"),
         outdir, "insteval_caterpillar_widest.png", written)
    save(plot.caterpillar(fit, group="dept"), outdir, "insteval_caterpillar_dept.png", written)
    save(plot.residual_plots(fit), outdir, "insteval_residuals.png", written)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
