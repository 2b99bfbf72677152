"""The circuit's counterfactual metric (``--metric counterfactual``, docs/circuits.md "Metric").

Where a benchmark declares counterfactual pairs (``Example.meta["counterfactuals"]``: the synth
tasks), each example is paired with one of its counterfactuals whose answer differs, and the metric
of the example is the logit difference between the clean and the counterfactual answers on the clean
prompt, teacher-forced with the clean answer:

    m = Σ over the answer tokens where the two answers differ of  logit(clean token) − logit(cf token)

One pair per example (a seeded choice among those whose answer changes), so an example's pairs never
sit on both sides of the selection/evaluation split.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.model.scoring import layout_examples

COUNTERFACTUAL = (
    "counterfactual logit difference: Σ over the answer tokens where the counterfactual answer differs of "
    "logit(clean) − logit(counterfactual), on the clean prompt"
)


def counterfactual_examples(examples: Sequence[Example], benchmark: str, seed: int) -> list[Example]:
    """Each example with one of its declared counterfactuals whose answer differs, in
    ``meta["counterfactual"]`` (a seeded choice); examples without one are left out."""
    declared = [e for e in examples if e.meta.get("counterfactuals")]
    if not declared:
        raise ConfigError(
            f"benchmark {benchmark!r} declares no counterfactual pairs (Example.meta['counterfactuals']): "
            "--metric counterfactual needs a benchmark that has them (synth-addition, synth-logic); use "
            "--metric score"
        )
    out = []
    for example in declared:
        changing = [r for r in example.meta["counterfactuals"] if r["target"] != example.target]
        if changing:
            record = random.Random(f"{seed}/{example.id}").choice(changing)
            out.append(replace(example, meta={**example.meta, "counterfactual": record}))
    if len(out) < 2:
        raise ConfigError(
            f"benchmark {benchmark!r}: only {len(out)} example(s) have a counterfactual whose answer "
            "differs; --metric counterfactual needs at least 2 (raise --limit)"
        )
    return out


class CounterfactualMetric:
    """Per example, the clean-minus-counterfactual logit difference (``COUNTERFACTUAL``) from the logits
    at the target predictions; differentiable (attribution takes its gradient)."""

    name = COUNTERFACTUAL

    def __init__(self, tokenizer: Any, examples: Sequence[Example], max_length: int | None = None) -> None:
        clean_seqs, _ = layout_examples(tokenizer, examples, max_length)
        counter = [replace(e, target=e.meta["counterfactual"]["target"]) for e in examples]
        cf_seqs, _ = layout_examples(tokenizer, counter, max_length)
        self.counter_ids: dict[str, torch.Tensor] = {}
        for example, clean, cf in zip(examples, clean_seqs, cf_seqs, strict=True):
            a, b = _target_ids(clean), _target_ids(cf)
            if len(a) != len(b):
                raise ConfigError(
                    f"example {example.id}: its counterfactual answer has {len(b)} tokens and its answer "
                    f"{len(a)}; --metric counterfactual needs answers of equal length"
                )
            self.counter_ids[example.id] = b

    def __call__(self, logits: torch.Tensor, batch: Any, layouts: Sequence[Any]) -> torch.Tensor:
        out = []
        for layout in layouts:
            rows = torch.nonzero(batch.pred_rows == layout.gold_sequence).squeeze(1)
            clean = batch.target_ids[rows]
            counter = self.counter_ids[layout.example_id].to(clean.device)
            differ = clean != counter
            picked = logits[rows].float()
            diff = picked.gather(1, clean[:, None]).squeeze(1) - picked.gather(1, counter[:, None]).squeeze(1)
            out.append((diff * differ).sum())
        return torch.stack(out) if out else logits.new_zeros(0)


def _target_ids(sequence: Any) -> torch.Tensor:
    ids = list(sequence.input_ids)
    return torch.tensor(ids[sequence.target_start :], dtype=torch.long)
