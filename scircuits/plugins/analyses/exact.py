"""Exact per-feature ablation: the top features ablated one at a time, each an effect with its
interval, and the Spearman correlation of the attribution estimates with these exact effects."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scircuits import Analysis, AnalysisResult, spearman, spearman_interval

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


class ExactResult(AnalysisResult):
    attribution_vs_exact_spearman: float | None
    attribution_vs_exact_spearman_ci: list[float] | None = None  # bootstrap over the features
    attribution_vs_exact_n: int | None = None  # features the correlation is over


class ExactAblation(Analysis):
    name = "exact"
    description = "Feature importance (exact single-feature ablations)"
    order = 40
    Result = ExactResult
    after = ("baseline", "ranking")

    def passes(self, context: StudyContext) -> int:
        return context.config.exact_top

    def run(self, context: StudyContext) -> ExactResult:
        ranked: list[int] = context.shared["ranked"]
        spliced = context.shared["splice"]
        features = ranked[: min(context.config.exact_top, len(ranked))]
        runs = context.run_conditions(
            [context.ablate_edit([feature], tag=-(feature + 1)) for feature in features],
            statuses=[f"feature {feature}" for feature in features],
            records=[f"feature{feature}" for feature in features],
        )
        exact = {
            feature: context.effect(scores, spliced) for feature, scores in zip(features, runs, strict=True)
        }
        context.shared["exact"] = exact
        rho, interval = None, None
        if len(features) >= 2:
            attribution = context.shared["attribution"][features]
            measured = np.array([exact[f]["logprob_delta"] for f in features])
            rho = spearman(attribution, measured)
            interval = spearman_interval(
                attribution, measured, replicates=context.config.bootstrap, seed=context.seed
            )
        return ExactResult(
            attribution_vs_exact_spearman=rho,
            attribution_vs_exact_spearman_ci=interval,
            attribution_vs_exact_n=len(features),
        )

    def report(self, section: ReportDocument, result: ExactResult, results: StudyResults) -> None:
        fmt, fmt_ci = section.fmt, section.fmt_ci
        feats = [
            f for f in results.model_dump().get("features") or [] if f.get("exact_logprob_delta") is not None
        ]
        section.heading(self.description)
        section.paragraph(
            f"Spearman ρ between attribution and exact ablation over the top "
            f"{result.attribution_vs_exact_n} features: {fmt(result.attribution_vs_exact_spearman, 2)} "
            f"{fmt_ci(result.attribution_vs_exact_spearman_ci)} (95% bootstrap over features)."
        )
        section.table(
            [
                "rank",
                "feature",
                "exact Δlogprob",
                "95% CI",
                "exact Δaccuracy",
                "attribution",
                "mean activation",
                "firing frequency",
            ],
            [
                [
                    i + 1,
                    f["id"],
                    fmt(f["exact_logprob_delta"]),
                    fmt_ci(f["exact_logprob_ci"]),
                    fmt(f["exact_accuracy_delta"]),
                    fmt(f["attribution"]),
                    fmt(f.get("mean_activation")),
                    fmt(f.get("frequency")),
                ]
                for i, f in enumerate(sorted(feats, key=lambda f: f["exact_logprob_delta"]))
            ],
        )
        section.figure("importance", self.figure(section, feats, result), "exact vs attribution, per feature")

    @staticmethod
    def figure(section: ReportDocument, feats: list[dict], result: ExactResult) -> bytes | None:
        if not feats:
            return None
        plt = section.pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.4))
        x = list(range(len(feats)))
        exact = [f["exact_logprob_delta"] for f in feats]
        err = [
            [f["exact_logprob_delta"] - f["exact_logprob_ci"][0] for f in feats],
            [f["exact_logprob_ci"][1] - f["exact_logprob_delta"] for f in feats],
        ]
        ax.bar([i - 0.2 for i in x], exact, width=0.4, yerr=err, capsize=2, label="exact ablation")
        ax.bar(
            [i + 0.2 for i in x], [f["attribution"] for f in feats], width=0.4, label="attribution estimate"
        )
        ax.set_xticks(x, [str(f["id"]) for f in feats], rotation=60, fontsize=7)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel("feature")
        ax.set_ylabel("Δlogprob per example")
        ax.set_title(
            f"Single-feature ablations (Spearman ρ = {section.fmt(result.attribution_vs_exact_spearman, 2)})"
        )
        ax.legend(fontsize=8)
        return section.png(fig)

    def findings(self, section: ReportDocument, result: ExactResult, results: StudyResults) -> list[str]:
        rho = result.attribution_vs_exact_spearman
        if rho is None:
            return []
        return [
            f"Attribution estimates (selection examples) vs exact single-feature ablations (evaluation "
            f"examples) over the top {result.attribution_vs_exact_n} features: Spearman ρ = "
            f"{section.fmt(rho, 2)} {section.fmt_ci(result.attribution_vs_exact_spearman_ci)}."
        ]

    def comparison(self, section: ReportDocument, result: ExactResult) -> dict[str, str]:
        return {"Spearman ρ": section.fmt(result.attribution_vs_exact_spearman, 2)}
