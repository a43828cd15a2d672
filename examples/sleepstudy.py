"""Use case 1: a longitudinal study (lme4's sleepstudy).

Eighteen subjects were restricted to three hours of sleep a night for nine
nights; their average reaction time in a vigilance test was measured each
day (Days 0 to 9).  Questions: how fast does reaction time grow with sleep
deprivation, and how much do subjects differ in their baseline and in their
rate of growth?

    python examples/sleepstudy.py [OUTDIR] [--boot N] [--seed S]

prints the analysis and writes the plots as PNG files to OUTDIR (default
``docs/img``).  The walk-through is ``docs/sleepstudy.md``.  Needs
``pip install 'lmmfast[plot]'``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import lmmfast  # noqa: E402
from lmmfast import plot  # noqa: E402
from lmmfast.anova import anova  # noqa: E402

FORMULAS = {
    "intercept": "Reaction ~ 1 + Days + (1 | Subject)",
    "uncorrelated": "Reaction ~ 1 + Days + (1 + Days || Subject)",
    "correlated": "Reaction ~ 1 + Days + (1 + Days | Subject)",
}


def section(title: str) -> None:
    print(f"\n{'=' * 72}\n{title}\n{'=' * 72}")


def show(table: pd.DataFrame) -> str:
    """An emmeans table as emmeans prints it: rounded, p-values below 1e-4 as "<.0001"."""
    out = table.copy()
    for column in out.columns[:list(out.columns).index("SE") - 1]:
        out[column] = [f"{v:g}" if isinstance(v, float) else v for v in out[column]]
    out["p.value"] = [f"{p:.4f}" if p >= 1e-4 else "<.0001" for p in out["p.value"]]
    return out.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def save(fig, outdir: Path, name: str, written: list[Path]) -> None:
    path = outdir / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", default="docs/img", help="where the PNGs go")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=20240601, help="bootstrap seed")
    args = parser.parse_args(argv)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pd.set_option("display.width", 120)

    data = lmmfast.datasets.load("sleepstudy")
    section("Data")
    print(f"{len(data)} observations, {data['Subject'].nunique()} subjects, "
          f"Days {data['Days'].min():g} to {data['Days'].max():g}")

    # Three models for the subjects: different baselines only; different
    # baselines and slopes, independent; different baselines and slopes,
    # correlated.  All are fitted by REML; anova() refits them by ML for
    # the likelihood-ratio tests, as lme4 does.
    fits = {name: lmmfast.lmer(f, data) for name, f in FORMULAS.items()}

    section("Model choice: likelihood-ratio tests and AIC (ML refits)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = anova(*fits.values(), names=list(fits))
    print(table.round(4).to_string())
    best = table["AIC"].idxmin()
    print(f"\nlowest AIC: {best}  ({FORMULAS[best]})")

    fit = fits[best]
    section(f"The chosen model ({best}), REML, t tests with Satterthwaite's df")
    print(fit.summary(ddf="satterthwaite"))

    section("Variance components")
    vc = fit.varcorr
    print(vc.round(4).to_string(index=False))

    section("Convergence (lme4's checks at the fitted theta)")
    conv = fit.convergence
    print(f"checks passed: {conv.ok}; singular fit: {conv.singular}; "
          f"derivative checks run: {conv.checked}")
    print(f"scaled gradient {conv.scaled_grad:.2e} (lme4's tolerance 2e-03), "
          f"max |gradient| {conv.max_grad:.2e}")
    print(f"Hessian eigenvalues {conv.hessian_min_eigen:.1f} to {conv.hessian_max_eigen:.1f}, "
          f"positive definite: {conv.hessian_pd}")
    print(f"messages: {'; '.join(conv.messages) or 'none'}")

    section("R² (Nakagawa) and ICC")
    r2, icc = fit.r2(), fit.icc()
    print(f"R2 conditional {r2['R2_conditional']:.4f}, marginal {r2['R2_marginal']:.4f}")
    print(f"ICC adjusted {icc['ICC_adjusted']:.4f}, unadjusted {icc['ICC_unadjusted']:.4f}")

    section("Tidy table of the estimates (95% t intervals, Satterthwaite's df)")
    tidy = fit.tidy(conf_int=True).to_string(index=False, na_rep="",
                                             float_format=lambda v: f"{v:.4g}")
    print("\n".join(line.rstrip() for line in tidy.splitlines()))

    section("Reaction time after 3, 6 and 9 days against baseline (Kenward-Roger df)")
    means = fit.emmeans("~ Days", at={"Days": [0, 3, 6, 9]})
    print(show(means.table))
    print()
    print(show(means.contrast("trt.vs.ctrl", adjust="holm")))

    section("95% confidence intervals: Wald, profile and parametric bootstrap")
    wald = fit.confint(method="wald")
    t0 = time.perf_counter()
    prof = fit.profile()
    prof_ci = fit.confint(method="profile", prof=prof)
    t_prof = time.perf_counter() - t0
    t0 = time.perf_counter()
    boot = fit.bootstrap(args.boot, seed=args.seed)
    boot_ci = fit.confint(method="bootstrap", boot=boot)
    t_boot = time.perf_counter() - t0
    ci = pd.DataFrame({
        "parameter": prof_ci["description"],
        "estimate": [prof.attrs["estimates"].get(p) for p in prof_ci.index],
        "wald": [f"[{lo:8.3f}, {hi:8.3f}]" if pd.notna(lo) else "" for lo, hi in
                 zip(wald["lower"].reindex(prof_ci.index), wald["upper"].reindex(prof_ci.index))],
        "profile": [f"[{lo:8.3f}, {hi:8.3f}]"
                    for lo, hi in zip(prof_ci["lower"], prof_ci["upper"])],
        "bootstrap": [f"[{lo:8.3f}, {hi:8.3f}]" for lo, hi in
                      zip(boot_ci["lower"].reindex(prof_ci.index),
                          boot_ci["upper"].reindex(prof_ci.index))],
    }, index=prof_ci.index)
    print("estimate: the ML estimates (the profile is of the ML refit, as in lme4)")
    print(ci.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nprofile: {t_prof:.2f} s; bootstrap: {args.boot} replicates "
          f"({boot.attrs.get('n_failed', 0)} failed) in {t_boot:.2f} s")

    section("Conditional modes of the subjects' effects (first 6, with conditional sd)")
    re = fit.ranef(condvar=True)["Subject"]
    both = re.join(re.attrs["condsd"].add_suffix(" sd"))
    print(both.head(6).round(3).to_string())
    coef = re.add(fit.fixef.reindex(re.columns).to_numpy(), axis=1)
    print(f"\nsubjects' own slopes (fixed + random): from {coef['Days'].min():.2f} to "
          f"{coef['Days'].max():.2f} ms/day; "
          f"{(coef['Days'] > 0).sum()} of {len(coef)} positive")

    section("Plots")
    save(plot.subject_panels(fit, group="Subject", x="Days",
                             ylabel="Average reaction time (ms)",
                             xlabel="Days of sleep deprivation"),
         outdir, "sleepstudy_panels.png", written)
    save(plot.caterpillar(fit, group="Subject"), outdir, "sleepstudy_caterpillar.png", written)
    save(plot.residual_plots(fit), outdir, "sleepstudy_residuals.png", written)
    save(plot.profile_zeta(prof), outdir, "sleepstudy_profile.png", written)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
