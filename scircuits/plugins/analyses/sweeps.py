"""Sweeps with controls: ablate the top k features for each k, against the same number of random
features active on the benchmark (the mean over several seeded draws, per example)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult, Interval

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


class Sweep(Effect):
    k: int
    ablation: str
    features: list[int]
    control: ControlEffect | None
    significant_logprob: bool | None
    significant_accuracy: bool | None


class SweepsResult(AnalysisResult):
    sweeps: list[Sweep]


def excludes(a: list[float], b: list[float]) -> bool:
    return Interval(0, a[0], a[1]).excludes(Interval(0, b[0], b[1]))


class Sweeps(Analysis):
    name = "sweeps"
    description = "Ablation sweeps"
    order = 30
    Result = SweepsResult
    after = ("baseline", "ranking")

    def passes(self, context: StudyContext) -> int:
        return len(context.config.top_k) * (1 + context.config.random_controls)

    def run(self, context: StudyContext) -> SweepsResult:
        config = context.config
        ranked: list[int] = context.shared["ranked"]
        spliced = context.shared["splice"]
        sweeps = []
        for k in config.top_k:
            if k > len(ranked):
                continue
            top = context.run_condition(
                "splice", context.ablate_edit(ranked[:k], tag=k), status=f"top {k}", record=f"top{k}"
            )
            draws = [
                context.run_condition(
                    "splice",
                    context.ablate_edit(features, tag=10_000 * (r + 1) + k),
                    status=f"control {k}.{r}",
                    record=f"control{k}_{r}",
                )
                for r, features in enumerate(context.control_draws(k, ranked, config.random_controls))
            ]
            entry: dict[str, Any] = {
                "k": k,
                "ablation": config.ablation,
                "features": ranked[:k],
                **context.effect(top, spliced),
            }
            if draws:
                entry["control"] = context.control_effect(draws, spliced)
                entry["significant_logprob"] = excludes(entry["logprob_ci"], entry["control"]["logprob_ci"])
                entry["significant_accuracy"] = excludes(
                    entry["accuracy_ci"], entry["control"]["accuracy_ci"]
                )
            else:
                entry["control"] = None
                entry["significant_logprob"] = entry["significant_accuracy"] = None
            sweeps.append(Sweep(**entry))
        return SweepsResult(sweeps=sweeps)

    # -- report ---------------------------------------------------------------------------------

    def report(self, section: ReportDocument, result: SweepsResult, results: StudyResults) -> None:
        fmt, fmt_ci = section.fmt, section.fmt_ci
        section.heading("Ablation sweeps")
        section.paragraph(
            "Effects are mean changes per example versus the unablated splice (SAE with its error term), "
            "with paired 95% bootstrap intervals over examples; the control ablates the same number of "
            "features drawn at random among those active on the benchmark. Significant: the intervals "
            "do not overlap."
        )
        rows = []
        for s in result.sweeps:
            c = s.control
            rows.append(
                [
                    s.k,
                    s.ablation,
                    fmt(s.logprob_delta),
                    fmt_ci(s.logprob_ci),
                    fmt(c.logprob_delta if c else None),
                    fmt_ci(c.logprob_ci if c else None),
                    fmt(s.significant_logprob),
                    fmt(s.accuracy_delta),
                    fmt_ci(s.accuracy_ci),
                    fmt(c.accuracy_delta if c else None),
                    fmt_ci(c.accuracy_ci if c else None),
                    fmt(s.significant_accuracy),
                ]
            )
        section.table(
            [
                "k",
                "ablation",
                "Δlogprob",
                "95% CI",
                "control Δlogprob",
                "control CI",
                "significant",
                "Δaccuracy",
                "95% CI",
                "control Δacc",
                "control CI",
                "significant",
            ],
            rows,
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
                label="random active features (control)",
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
            lines.append(
                f"Ablating the top {best.k} features ({best.ablation}) changes the gold log-prob by "
                f"{fmt(best.logprob_delta)} {fmt_ci(best.logprob_ci)} per example, against "
                f"{fmt(best.control.logprob_delta)} {fmt_ci(best.control.logprob_ci)} for "
                f"{best.k} random active features: the intervals do not overlap."
            )
        elif result.sweeps:
            lines.append("No top-k ablation moved the log-prob with an interval that excludes the control's.")
        acc = [s for s in result.sweeps if s.significant_accuracy]
        if acc:
            best = min(acc, key=lambda s: s.accuracy_delta)
            assert best.control is not None
            lines.append(
                f"Accuracy: top {best.k} ablated → {fmt(best.accuracy_delta)} {fmt_ci(best.accuracy_ci)} "
                f"vs control {fmt(best.control.accuracy_delta)} {fmt_ci(best.control.accuracy_ci)}."
            )
        return lines

    def summary_lines(self, result: SweepsResult) -> list[str]:
        lines = []
        for s in result.sweeps:
            c = s.control
            lines.append(
                f"  top {s.k:>4}: Δlogprob {s.logprob_delta:+.3f} {ci(s.logprob_ci)}  control "
                f"{c.logprob_delta if c else float('nan'):+.3f} {ci(c.logprob_ci if c else None)}  "
                f"Δacc {s.accuracy_delta:+.3f}  significant: {s.significant_logprob}"
            )
        return lines

    def comparison(self, section: ReportDocument, result: SweepsResult) -> dict[str, str]:
        fmt = section.fmt
        best = min(result.sweeps, key=lambda s: s.logprob_delta) if result.sweeps else None
        return {
            "largest Δlogprob": f"top {best.k}: {fmt(best.logprob_delta)}" if best else "–",
            "control": fmt(best.control.logprob_delta) if best and best.control else "–",
            "significant": fmt(any(s.significant_logprob for s in result.sweeps)),
        }


def ci(interval: list[float] | None) -> str:
    return "[–]" if not interval else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
