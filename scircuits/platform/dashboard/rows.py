"""The index table's rows and the short token labels pages show."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from scircuits.platform.dashboard.schema import Ablation, FeaturePage, IndexRow


def visible(token: str) -> str:
    """A token as a short label: spaces and line breaks made visible."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def index_rows(pages: Sequence[FeaturePage], examples: dict[int, list[str]]) -> list[IndexRow]:
    rows = []
    for page in pages:
        focus = Counter(visible(examples[c.run][c.start + c.focus]) for c in page.top)
        ablation = page.ablation or Ablation()
        rows.append(
            IndexRow(
                id=page.id,
                frequency=page.frequency,
                max_activation=page.max_activation,
                rank=ablation.rank,
                attribution=ablation.attribution,
                exact_logprob_delta=ablation.exact_logprob_delta,
                exact_logprob_ci=ablation.exact_logprob_ci,
                summary=" ".join(token for token, _ in focus.most_common(3)),
            )
        )
    return rows
