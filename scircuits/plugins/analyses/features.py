"""Logit effects and feature contexts of the top features: the tokens each decoder direction
promotes and suppresses through the unembedding (direct path), and each feature's top-activating
contexts; joined with the ranking and exact effects into the ``features`` table."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


FEATURE_TEMPLATE = files(__package__).joinpath("templates", "feature.html").read_text(encoding="utf-8")


class TokenLogit(BaseModel):
    token: str
    logit: float


class TokenContext(BaseModel):
    token: str
    activation: float
    example: int
    position: int
    context: list[tuple[str, float]]  # every context token and the feature's activation on it
    focus: int  # index of the top token in ``context``


class Feature(BaseModel):
    id: int
    rank: int
    attribution: float
    mean_activation: float
    frequency: float
    exact_logprob_delta: float | None
    exact_logprob_ci: list[float] | None
    exact_accuracy_delta: float | None
    exact_accuracy_ci: list[float] | None
    top_tokens: list[TokenContext]
    promoted: list[TokenLogit]
    suppressed: list[TokenLogit]


def described(context: StudyContext) -> list[int]:
    """The features described: the exactly ablated ones, at least the top 10."""
    ranked: list[int] = context.shared["ranked"]
    exact = min(context.config.exact_top, len(ranked))
    return ranked[: max(exact, min(10, len(ranked)))]


class LogitEffectsResult(AnalysisResult):
    unembedding: str  # how the promoted / suppressed tokens are computed


class LogitEffects(Analysis):
    name = "logit_effects"
    description = "Logit effects"
    order = 60
    Result = LogitEffectsResult
    after = ("ranking",)

    def run(self, context: StudyContext) -> LogitEffectsResult:
        context.shared["logit_effects"] = context.logit_effects(described(context))
        return LogitEffectsResult(
            unembedding=(
                "decoder direction x final-norm weight (centred for LayerNorm) @ W_U; direct path only"
            )
        )

    def report(self, section: ReportDocument, result: LogitEffectsResult, results: StudyResults) -> None:
        """Shown per feature in the features section."""


class FeaturesResult(AnalysisResult):
    features: list[Feature]
    contexts_source: str


class FeatureContexts(Analysis):
    name = "features"
    description = "Top features"
    order = 70
    Result = FeaturesResult
    after = ("ranking", "exact", "logit_effects")

    def run(self, context: StudyContext) -> FeaturesResult:
        chosen = described(context)
        contexts, source = context.top_contexts(chosen)
        attribution = context.shared["attribution"]
        exact: dict[int, dict[str, Any]] = context.shared.get("exact", {})
        lens: dict[int, dict[str, Any]] = context.shared.get("logit_effects", {})
        features = []
        for rank, feature in enumerate(chosen):
            ex = exact.get(feature)
            features.append(
                Feature(
                    id=feature,
                    rank=rank + 1,
                    attribution=float(attribution[feature]),
                    mean_activation=float(context.mean_activation[feature]),
                    frequency=float(context.frequency[feature]),
                    exact_logprob_delta=ex["logprob_delta"] if ex else None,
                    exact_logprob_ci=ex["logprob_ci"] if ex else None,
                    exact_accuracy_delta=ex["accuracy_delta"] if ex else None,
                    exact_accuracy_ci=ex["accuracy_ci"] if ex else None,
                    top_tokens=contexts.get(feature, []),
                    promoted=lens.get(feature, {}).get("promoted", []),
                    suppressed=lens.get(feature, {}).get("suppressed", []),
                )
            )
        return FeaturesResult(features=features, contexts_source=source)

    def report(self, section: ReportDocument, result: FeaturesResult, results: StudyResults) -> None:
        section.heading("Top features")
        unembedding = results.model_dump().get("unembedding", "")
        section.paragraph(
            f"Contexts from the {result.contexts_source} (tokens shaded by the feature's "
            f"activation, the top token underlined). Promoted/suppressed tokens: {unembedding}."
        )
        for feature in result.features:
            section.raw(feature_md(section, feature), feature_html(section, feature))


def feature_md(section: ReportDocument, feature: Feature) -> str:
    fmt, fmt_ci, show = section.fmt, section.fmt_ci, section.show_token
    lines = [
        f"#### Feature {feature.id} (rank {feature.rank})",
        f"attribution {fmt(feature.attribution)}, exact Δlogprob {fmt(feature.exact_logprob_delta)} "
        f"{fmt_ci(feature.exact_logprob_ci)}, firing frequency {fmt(feature.frequency)}",
        "",
    ]
    for ctx in feature.top_tokens[:5]:
        parts = [f"**[{show(t)}]**" if i == ctx.focus else show(t) for i, (t, _) in enumerate(ctx.context)]
        lines.append(f"- {fmt(ctx.activation)}: `" + "".join(parts).replace("`", "'") + "`")
    promoted = ", ".join(f"`{show(p.token)}`" for p in feature.promoted[:8])
    suppressed = ", ".join(f"`{show(p.token)}`" for p in feature.suppressed[:8])
    lines += ["", f"promotes: {promoted or '–'}", "", f"suppresses: {suppressed or '–'}", ""]
    return "\n".join(lines)


def feature_html(section: ReportDocument, feature: Feature) -> str:
    """Each context's tokens shaded by the feature's activation (relative to the context's top), the
    top token underlined: ``templates/feature.html``."""
    contexts = []
    for ctx in feature.top_tokens[:5]:
        top = max((a for _, a in ctx.context), default=0.0) or 1.0
        tokens = [
            (token, act, max(0.0, min(1.0, act / top)), i == ctx.focus)
            for i, (token, act) in enumerate(ctx.context)
        ]
        contexts.append({"activation": ctx.activation, "tokens": tokens})
    return section.render_html(
        FEATURE_TEMPLATE,
        feature=feature,
        contexts=contexts,
        promoted=feature.promoted[:8],
        suppressed=feature.suppressed[:8],
        fmt=section.fmt,
        fmt_ci=section.fmt_ci,
        show=section.show_token,
    )
