"""Sweeps with matched controls: ablate the top k features for each k, against R control sets of k
features matched to the top ones on firing frequency, ablation size and the examples they fire on
(measured on the evaluation examples), no feature twice in a set, none twice within a k while matched
ones last, and none of the study's own top 2 x max(top_k). Per k and metric:
the top-k effect, the control distribution, a paired bootstrap interval of the per-example
difference top − mean(controls), the exact permutation p-value and its correction across the k
values (``top_k_significance``: Holm, or a fixed sequence from the largest k when R is too small
for Holm); "significant" needs the interval to exclude 0 and the corrected p < 0.05. Accuracy flags
are None when the model cannot do the benchmark (baseline's capability). The old comparison of two
marginal intervals is kept as ``marginal_disjoint_*``. A k whose median control / top ratio falls
outside 0.9-1.1 is warned about in the report and the CLI summary (``control_warnings``). Beside the
call, per k and metric, the covariate-adjusted contrast (``adjusted_contrast``): top − the control
effect regressed on the sets' log frequency and size ratios and read at ratio 1, with a two-way
bootstrap interval; it does not change the call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from scircuits import (
    AdjustedContrast,
    Analysis,
    AnalysisResult,
    ControlSamplingError,
    Interval,
    KTest,
    adjusted_contrast,
    set_log_ratios,
    top_k_significance,
)

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


class Effect(BaseModel):
    accuracy_delta: float
    accuracy_ci: list[float]
    logprob_delta: float
    logprob_ci: list[float]


class DrawEffect(BaseModel):
    accuracy_delta: float
    logprob_delta: float


class ControlEffect(Effect):
    draws: list[DrawEffect]


class ControlSets(BaseModel):
    """The matched control sets of one k: ids per draw, and the band each match used."""

    features: list[list[int]]
    bands: list[list[float | None]]  # per draw, per feature: ratio band used (None: unbounded)
    band: float  # the band tried first
    widened: int  # matches that needed a wider band than ``band``
    min_overlap: float
    distinct: int | None = None  # distinct control features over the R sets (R x k: none repeated)
    excluded: int | None = None  # the study's own top-ranked features kept out of the draw
    median_frequency_ratio: float | None = None  # median over every match of control / top
    median_size_ratio: float | None = None
    off_medians: list[str] | None = None  # the medians outside 0.9-1.1 ("frequency 0.62"); [] when none
    # per set: log(Σ over the set / Σ over the top set) of frequency and of ablation size (the
    # covariates of the adjusted contrast)
    log_frequency_ratio: list[float] | None = None
    log_size_ratio: list[float] | None = None


class Sweep(Effect):
    k: int
    ablation: str
    features: list[int]
    control: ControlEffect | None
    significant_logprob: bool | None  # the paired test: interval excludes 0 and corrected p < alpha
    significant_accuracy: bool | None  # None also when the model cannot do the benchmark
    control_sets: ControlSets | None = None
    test_logprob: KTest | None = None
    test_accuracy: KTest | None = None
    marginal_disjoint_logprob: bool | None = None  # old comparison: the two marginal intervals disjoint
    marginal_disjoint_accuracy: bool | None = None
    control_note: str | None = None
    # top − the control effect regressed on the sets' log ratios, read at ratio 1 (an estimate beside
    # the raw contrast; the call does not use it). None in older results.json and without controls.
    adjusted_logprob: AdjustedContrast | None = None
    adjusted_accuracy: AdjustedContrast | None = None


class SignificanceInfo(BaseModel):
    alpha: float
    alternative: str
    n_controls: int
    attainable: bool
    method: str
    controls: str
    basis: str = "permutation"  # the p-value the call rests on ("normal" in older results.json)
    procedure: str | None = None  # the correction across k: "holm" or "fixed-sequence"
    accuracy_defined: bool = True  # False: the model cannot do the benchmark, accuracy not tested


class CompanionSweep(Effect):
    """The top k features ablated another way (``sweep_also``), against the same splice, no controls."""

    k: int
    ablation: str


class SweepsResult(AnalysisResult):
    sweeps: list[Sweep]
    significance: SignificanceInfo | None = None
    companions: list[CompanionSweep] = Field(default_factory=list)


def excludes(a: list[float], b: list[float]) -> bool:
    return Interval(0, a[0], a[1]).excludes(Interval(0, b[0], b[1]))


class Sweeps(Analysis):
    name = "sweeps"
    description = "Ablation sweeps"
    order = 30
    Result = SweepsResult
    after = ("baseline", "ranking")

    def passes(self, context: StudyContext) -> int:
        return len(context.config.top_k) * (1 + context.random_controls + len(context.companion_ablations))

    def run(self, context: StudyContext) -> SweepsResult:
        config = context.config
        ranked: list[int] = context.shared["ranked"]
        spliced = context.shared["splice"]
        draws_per_k = context.random_controls
        excluded = context.excluded_from_controls(ranked)
        accuracy_defined = context.shared.get("capable", True) is not False
        entries: dict[int, dict[str, Any]] = {}
        per_example: dict[str, dict[int, tuple[Any, Any]]] = {"logprob": {}, "accuracy": {}}
        for k in config.top_k:
            if k > len(ranked):
                continue
            top = context.run_condition(
                "splice", context.ablate_edit(ranked[:k], tag=k), status=f"top {k}", record=f"top{k}"
            )
            entry: dict[str, Any] = {
                "k": k,
                "ablation": config.ablation,
                "features": ranked[:k],
                **context.effect(top, spliced),
                "control": None,
                "significant_logprob": None,
                "significant_accuracy": None,
            }
            entries[k] = entry
            if draws_per_k == 0:
                continue
            try:
                matched = context.matched_controls(ranked[:k], draws_per_k, exclude=excluded)
            except ControlSamplingError as exc:
                entry["control_note"] = str(exc)
                continue
            draws = context.run_conditions(
                [
                    context.ablate_edit(features, tag=10_000 * (r + 1) + k)
                    for r, features in enumerate(matched.ids)
                ],
                statuses=[f"control k={k} {r + 1}/{len(matched.ids)}" for r in range(len(matched.ids))],
                record_set=f"control{k}",
            )
            entry["control"] = context.control_effect(draws, spliced)
            stats = context.control_statistics()
            log_f = set_log_ratios(ranked[:k], matched.ids, stats["frequency"])
            log_s = set_log_ratios(ranked[:k], matched.ids, stats["size"])
            entry["control_sets"] = ControlSets(
                features=matched.ids,
                bands=[[m.band for m in s.matches] for s in matched.sets],
                band=matched.band,
                widened=matched.widened,
                min_overlap=matched.min_overlap,
                distinct=matched.distinct,
                excluded=matched.excluded,
                median_frequency_ratio=matched.median_ratio("frequency"),
                median_size_ratio=matched.median_ratio("size"),
                off_medians=matched.off_medians(),
                log_frequency_ratio=log_f,
                log_size_ratio=log_s,
            )
            for metric in ("logprob", "accuracy"):
                entry[f"marginal_disjoint_{metric}"] = excludes(
                    entry[f"{metric}_ci"], entry["control"][f"{metric}_ci"]
                )
            per_example["logprob"][k] = (
                top.logprob - spliced.logprob,
                np.stack([d.logprob - spliced.logprob for d in draws]),
            )
            per_example["accuracy"][k] = (
                top.correct.astype(float) - spliced.correct.astype(float),
                np.stack([d.correct.astype(float) - spliced.correct.astype(float) for d in draws]),
            )
        companions = [
            CompanionSweep(
                k=k,
                ablation=name,
                **context.effect(
                    context.run_condition(
                        "splice",
                        context.ablate_edit(ranked[:k], tag=k, ablation=name),
                        status=f"top {k} ({name})",
                        record=f"top{k}_{name}",
                    ),
                    spliced,
                ),
            )
            for name in context.companion_ablations
            for k in config.top_k
            if k <= len(ranked)
        ]
        for metric, effects in per_example.items():
            for k, (top_effect, control_effects) in effects.items():
                if metric == "accuracy" and not accuracy_defined:
                    continue
                sets = entries[k]["control_sets"]
                entries[k][f"adjusted_{metric}"] = adjusted_contrast(
                    top_effect,
                    control_effects,
                    sets.log_frequency_ratio,
                    sets.log_size_ratio,
                    context.bootstrap,
                    seed=[config.seed, 6007, k],
                )
        info = None
        for metric, effects in per_example.items():
            if not effects:
                continue
            tested = top_k_significance(effects, context.bootstrap)
            for test in tested.tests:
                if metric == "accuracy" and not accuracy_defined:
                    test.significant = None
                entries[test.k][f"test_{metric}"] = test
                entries[test.k][f"significant_{metric}"] = test.significant
            if metric == "logprob":
                info = SignificanceInfo(
                    alpha=tested.alpha,
                    alternative=tested.alternative,
                    n_controls=tested.n_controls,
                    attainable=tested.attainable,
                    method=tested.method,
                    basis=tested.basis,
                    procedure=tested.procedure,
                    accuracy_defined=accuracy_defined,
                    controls=(
                        "each control set has k features, each matched to one top feature on firing "
                        "frequency and ablation size (Σ activation × decoder-row norm) within the band, "
                        "drawn on the side of 1 that keeps the median ratios near 1, active on at least "
                        "half the evaluation examples the top feature is active on; no feature twice "
                        f"within a k, and none of the study's own top {len(excluded)} ranked features"
                    ),
                )
        return SweepsResult(
            sweeps=[Sweep(**entries[k]) for k in entries], significance=info, companions=companions
        )

    # -- report ---------------------------------------------------------------------------------

    def report(self, section: ReportDocument, result: SweepsResult, results: StudyResults) -> None:
        fmt, fmt_ci = section.fmt, section.fmt_ci
        section.heading("Ablation sweeps")
        split = results.model_dump().get("evaluation_split") or {}
        section.paragraph(
            "Effects are mean changes per example versus the unablated splice (SAE with its error term), "
            "with paired 95% bootstrap intervals over the evaluation examples"
            + (
                f" ({split['n_evaluation']} held out; features ranked on {split['n_selection']} others)"
                if split.get("method", "").startswith("held-out")
                else ""
            )
            + ". Each control set ablates k features, each matched to a top feature on firing frequency "
            "and ablation size and active on the same examples; no feature appears twice among the sets "
            "of one k, and the study's own top-ranked features are never controls. Per k: the control "
            "distribution over the R sets, the paired bootstrap interval of the per-example difference "
            "top − mean(control), the exact permutation p-value, and that p corrected across the k "
            "values. 'marginal' is the old, weaker comparison (the two marginal intervals do not overlap)."
        )
        info = result.significance
        if info is not None:
            section.paragraph(f"Significance ({info.n_controls} control sets per k): {info.method}.")
            if not info.attainable:
                section.paragraph(
                    f"With {info.n_controls} control sets per k no exact p-value can reach {info.alpha}: "
                    "nothing can be called significant."
                )
            if not info.accuracy_defined:
                section.paragraph(
                    "**The model cannot do this benchmark** (clean accuracy at or below chance, see SAE "
                    "quality): accuracy effects are undefined and not tested; log-prob effects measure "
                    "how the features move the probability of an answer the model does not give."
                )
        balance = [
            s for s in result.sweeps if s.control_sets and s.control_sets.median_size_ratio is not None
        ]
        if balance:
            section.paragraph("How the matched controls compare with the top features (control / top):")
            section.table(
                [
                    "k",
                    "median frequency ratio",
                    "median size ratio",
                    "distinct controls",
                    "excluded",
                    "widened",
                ],
                [
                    [
                        s.k,
                        fmt(s.control_sets.median_frequency_ratio),
                        fmt(s.control_sets.median_size_ratio),
                        s.control_sets.distinct,
                        s.control_sets.excluded,
                        s.control_sets.widened,
                    ]
                    for s in balance
                    if s.control_sets is not None
                ],
            )
            for warning in control_warnings(result):
                section.paragraph(f"**Warning:** {warning}.")
        self.report_adjusted(section, result)
        for metric, label in (("logprob", "Δlogprob"), ("accuracy", "Δaccuracy")):
            rows = []
            for s in result.sweeps:
                c = s.control
                test: KTest | None = getattr(s, f"test_{metric}")
                draws = [getattr(d, f"{metric}_delta") for d in c.draws] if c else []
                rows.append(
                    [
                        s.k,
                        s.ablation,
                        fmt(getattr(s, f"{metric}_delta")),
                        fmt_ci(getattr(s, f"{metric}_ci")),
                        fmt(getattr(c, f"{metric}_delta") if c else None),
                        f"{fmt(min(draws))} … {fmt(max(draws))} (R={len(draws)})" if draws else "–",
                        fmt(test.difference.mean if test else None),
                        fmt_ci([test.difference.low, test.difference.high] if test else None),
                        fmt(test.p_value if test else None, 3),
                        fmt(test.corrected_p if test else None, 3),
                        significance_text(getattr(s, f"significant_{metric}"), test),
                        fmt(getattr(s, f"marginal_disjoint_{metric}")),
                    ]
                )
            section.table(
                [
                    "k",
                    "ablation",
                    label,
                    "95% CI",
                    "control mean",
                    "control range",
                    "top − control",
                    "paired 95% CI",
                    "p (exact)",
                    "p (corrected)",
                    "significant",
                    "marginal",
                ],
                rows,
            )
        if result.companions:
            section.paragraph(
                "The same top-k sets ablated other ways, against the same splice (no controls): how much "
                "of the effect depends on the ablation's choice of replacement value."
            )
            section.table(
                ["k", "ablation", "Δlogprob", "95% CI", "Δaccuracy", "95% CI"],
                [
                    [
                        c.k,
                        c.ablation,
                        fmt(c.logprob_delta),
                        fmt_ci(c.logprob_ci),
                        fmt(c.accuracy_delta),
                        fmt_ci(c.accuracy_ci),
                    ]
                    for c in result.companions
                ],
            )
        method = results.model_dump().get("rank", {}).get("method", "")
        section.figure(
            "ablation_logprob",
            self.figure(section, result, "logprob", method),
            "Δlogprob when ablating the top k features",
        )
        section.figure(
            "ablation_accuracy",
            self.figure(section, result, "accuracy", method),
            "Δaccuracy when ablating the top k features",
        )

    @staticmethod
    def report_adjusted(section: ReportDocument, result: SweepsResult) -> None:
        """The covariate-adjusted contrast per k and metric, beside the raw one."""
        fmt, fmt_ci = section.fmt, section.fmt_ci
        rows = [
            [
                s.k,
                label,
                fmt(a.raw),
                fmt(a.adjusted_control),
                fmt(a.adjusted),
                fmt_ci(a.ci),
                ratio_range(a.log_frequency_range),
                ratio_range(a.log_size_range),
                ", ".join(a.extrapolated) or "no",
                a.note if a.note and (a.adjusted is None or a.ci is None) else "",
            ]
            for s in result.sweeps
            for label, a in (("Δlogprob", s.adjusted_logprob), ("Δaccuracy", s.adjusted_accuracy))
            if a is not None
        ]
        if not rows:
            return
        section.paragraph(
            "Adjusted for the controls' ratios (an estimate beside the raw contrast; the call above does "
            "not use it): the R control sets' effects regressed on their log frequency ratio and log size "
            "ratio to the top set (Σ over the set / Σ over the top set), read at ratio 1; interval from a "
            "bootstrap over examples (paired with the top set) and over control sets, refitting per "
            "replicate. It assumes the control effect is linear in the two log ratios; where ratio 1 lies "
            "outside the sets' ratios it extrapolates that line."
        )
        section.table(
            [
                "k",
                "metric",
                "top − control (raw)",
                "control at ratio 1",
                "top − control (adjusted)",
                "95% CI",
                "frequency ratios",
                "size ratios",
                "extrapolated",
                "note",
            ],
            rows,
        )

    @staticmethod
    def figure(section: ReportDocument, result: SweepsResult, metric: str, method: str) -> bytes | None:
        sweeps = [s.model_dump() for s in result.sweeps]
        if not sweeps:
            return None
        plt = section.pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ks = [s["k"] for s in sweeps]
        mean = [s[f"{metric}_delta"] for s in sweeps]
        low = [s[f"{metric}_delta"] - s[f"{metric}_ci"][0] for s in sweeps]
        high = [s[f"{metric}_ci"][1] - s[f"{metric}_delta"] for s in sweeps]
        ax.errorbar(ks, mean, yerr=[low, high], fmt="o-", capsize=3, label=f"top-k ({method})")
        controls = [s for s in sweeps if s.get("control")]
        if controls:
            c = [s["control"] for s in controls]
            ax.errorbar(
                [s["k"] for s in controls],
                [x[f"{metric}_delta"] for x in c],
                yerr=[
                    [x[f"{metric}_delta"] - x[f"{metric}_ci"][0] for x in c],
                    [x[f"{metric}_ci"][1] - x[f"{metric}_delta"] for x in c],
                ],
                fmt="s--",
                capsize=3,
                color="gray",
                label="matched controls (mean of R sets)",
            )
        for name in sorted({c.ablation for c in result.companions}):
            rows = [c for c in result.companions if c.ablation == name]
            ax.errorbar(
                [c.k for c in rows],
                [getattr(c, f"{metric}_delta") for c in rows],
                yerr=[
                    [getattr(c, f"{metric}_delta") - getattr(c, f"{metric}_ci")[0] for c in rows],
                    [getattr(c, f"{metric}_ci")[1] - getattr(c, f"{metric}_delta") for c in rows],
                ],
                fmt="^:",
                capsize=3,
                label=f"top-k, {name} ablation",
            )
        ax.axhline(0, color="black", linewidth=0.5)
        section.log_ticks(ax, ks)
        ax.set_xlabel("features ablated (k)")
        ax.set_ylabel(f"Δ{metric} vs splice")
        ax.set_title(f"Ablating the top k features: Δ{metric} (95% bootstrap CI)")
        ax.legend(fontsize=8)
        return section.png(fig)

    def findings(self, section: ReportDocument, result: SweepsResult, results: StudyResults) -> list[str]:
        fmt, fmt_ci = section.fmt, section.fmt_ci
        lines = []
        significant = [s for s in result.sweeps if s.significant_logprob]
        if significant:
            best = min(significant, key=lambda s: s.logprob_delta)
            assert best.control is not None
            test = best.test_logprob
            if test is None:  # an older results.json: significance was two disjoint marginal intervals
                against = (
                    f"{fmt(best.control.logprob_delta)} {fmt_ci(best.control.logprob_ci)} for {best.k} "
                    "random active features: the marginal intervals do not overlap (older, weaker test)."
                )
            else:
                against = (
                    f"{fmt(best.control.logprob_delta)} for {len(best.control.draws)} matched control sets: "
                    f"difference {fmt(test.difference.mean)} "
                    f"{fmt_ci([test.difference.low, test.difference.high])}, p = {fmt(test.p_value, 3)} "
                    f"(corrected across k {fmt(test.corrected_p, 3)})."
                )
            lines.append(
                f"Ablating the top {best.k} features ({best.ablation}) changes the gold log-prob by "
                f"{fmt(best.logprob_delta)} {fmt_ci(best.logprob_ci)} per example, against {against}"
            )
        elif result.sweeps:
            lines.append(
                "No top-k ablation moved the log-prob significantly more than matched controls "
                "(paired interval excluding 0 and corrected p < 0.05)."
            )
        if result.significance is not None and not result.significance.accuracy_defined:
            lines.append(
                "The model cannot do this benchmark (clean accuracy at or below chance): accuracy effects "
                "are undefined, and the log-prob effects are about an answer the model does not give."
            )
        acc = [s for s in result.sweeps if s.significant_accuracy]
        if acc:
            best = min(acc, key=lambda s: s.accuracy_delta)
            assert best.control is not None
            lines.append(
                f"Accuracy: top {best.k} ablated → {fmt(best.accuracy_delta)} {fmt_ci(best.accuracy_ci)} "
                f"vs matched controls {fmt(best.control.accuracy_delta)} (significant by the paired test)."
            )
        return lines

    def summary_lines(self, result: SweepsResult) -> list[str]:
        lines = []
        defined = result.significance is None or result.significance.accuracy_defined
        for s in result.sweeps:
            c = s.control
            corrected = s.test_logprob.corrected_p if s.test_logprob else None
            lines.append(
                f"  top {s.k:>4}: Δlogprob {s.logprob_delta:+.3f} {ci(s.logprob_ci)}  control "
                f"{c.logprob_delta if c else float('nan'):+.3f} {ci(c.logprob_ci if c else None)}  "
                + (f"Δacc {s.accuracy_delta:+.3f}  " if defined else "Δacc undefined  ")
                + f"p {float('nan') if corrected is None else corrected:.3f}  "
                f"significant: {s.significant_logprob}"
            )
        if not defined:
            lines.append(
                "  the model cannot do this benchmark: accuracy effects are undefined; log-prob effects "
                "measure a behaviour the model lacks"
            )
        lines.extend(f"  warning: {warning}" for warning in control_warnings(result))
        return lines

    def comparison(self, section: ReportDocument, result: SweepsResult) -> dict[str, str]:
        fmt = section.fmt
        best = min(result.sweeps, key=lambda s: s.logprob_delta) if result.sweeps else None
        return {
            "largest Δlogprob": f"top {best.k}: {fmt(best.logprob_delta)}" if best else "–",
            "control": fmt(best.control.logprob_delta) if best and best.control else "–",
            "significant": fmt(any(s.significant_logprob for s in result.sweeps)),
        }


def control_warnings(result: SweepsResult) -> list[str]:
    """One line per k whose matched controls' median ratio to the top features is outside 0.9-1.1."""
    lines = []
    for s in result.sweeps:
        off = s.control_sets.off_medians if s.control_sets is not None else None
        if not off:
            continue
        below = {float(w.split()[-1]) < 1 for w in off}
        bias = (
            "looks larger than a matched one would (the controls are smaller)"
            if below == {True}
            else "looks smaller than a matched one would (the controls are larger)"
            if below == {False}
            else "may be biased either way"
        )
        lines.append(
            f"the matched controls of top {s.k} are off target: median control / top ratio {', '.join(off)} "
            f"(aimed at 0.9-1.1; too few features like the top ones outside the exclusions), so the "
            f"contrast {bias}" + adjusted_text(s.adjusted_logprob)
        )
    return lines


def adjusted_text(adjusted: AdjustedContrast | None) -> str:
    """The adjusted log-prob contrast for a warning line; empty when there is none."""
    if adjusted is None:
        return ""
    if adjusted.adjusted is None:
        return f"; no adjusted contrast ({adjusted.note})"
    interval = f" {ci(adjusted.ci)}" if adjusted.ci else " (no interval)"
    beyond = (
        f", extrapolated ({', '.join(adjusted.extrapolated)}: ratio 1 outside the sets' ratios)"
        if adjusted.extrapolated
        else ""
    )
    return (
        f"; adjusted for the ratios (control effect read at ratio 1) top − control Δlogprob "
        f"{adjusted.adjusted:+.3f}{interval} against {adjusted.raw:+.3f} raw{beyond}"
    )


def ratio_range(log_range: list[float] | None) -> str:
    """A range of log ratios as ratios: "0.50–1.21"."""
    if not log_range:
        return "–"
    return f"{np.exp(log_range[0]):.2f}–{np.exp(log_range[1]):.2f}"


def significance_text(flag: bool | None, test: KTest | None) -> str:
    """The significant column: yes/no, or why there is no call."""
    if flag is None:
        return "undefined" if test is not None else "–"
    return "yes" if flag else "no"


def ci(interval: list[float] | None) -> str:
    return "[–]" if not interval else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
