"""The evaluation data of a causal study: the benchmark's examples encoded, batched, and run once
through the blocks below the site and the SAE (``SplitModel.lower``); every condition then runs only
the blocks above (``SplitModel.upper``) on these batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scircuits.platform.common.progress import Progress
from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.model.remote_split import RemoteSplitModel
from scircuits.platform.model.scoring import ExampleLayout, SequenceBatch, layout_examples, make_batch
from scircuits.platform.model.sequences import EncodedSequence
from scircuits.platform.model.splice import LowerCache, SplitModel


@dataclass
class EvalBatch:
    batch: SequenceBatch
    example_indices: list[int]  # examples (global indices) whose sequences this batch holds
    layouts: list[ExampleLayout]  # their layouts, sequence indices local to the batch
    cache: LowerCache
    features: torch.Tensor  # (B, T, d_sae) SAE features of the clean site output
    error: torch.Tensor  # (B, T, d) site output minus the SAE reconstruction

    def edit_mask(self, first_position: int) -> torch.Tensor:
        """(B, T) True where features are edited: real tokens at positions >= ``first_position``."""
        return edit_mask(self.batch, first_position)


@dataclass
class EvalData:
    examples: list[Example]
    batches: list[EvalBatch]
    n_tokens: int

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def by_first_example(self) -> list[EvalBatch]:
        """The batches in the order of their first example (the lowest index they hold): the
        batches are in length order, and checks that look at a few batches look at these."""
        return sorted(self.batches, key=lambda eb: min(eb.example_indices))


def group_batches(layouts: Sequence[ExampleLayout], batch_size: int) -> list[list[int]]:
    """Consecutive examples grouped so that a batch holds about ``batch_size`` sequences, examples whole."""
    groups: list[list[int]] = []
    current: list[int] = []
    count = 0
    for i, layout in enumerate(layouts):
        n = len(layout.sequence_indices)
        if current and count + n > batch_size:
            groups.append(current)
            current, count = [], 0
        current.append(i)
        count += n
    if current:
        groups.append(current)
    return groups


def length_order(sequences: Sequence[EncodedSequence], layouts: Sequence[ExampleLayout]) -> list[int]:
    """The examples' indices, longest first (by their longest sequence in tokens; ties in the given
    order), so that batches of consecutive examples in this order hold little padding."""
    longest = [max(len(sequences[j].input_ids) for j in layout.sequence_indices) for layout in layouts]
    return sorted(range(len(layouts)), key=lambda i: (-longest[i], i))


def encoded_batches(
    tokenizer: Any,
    examples: list[Example],
    batch_size: int,
    max_length: int | None,
    device: Any,
    parts: Sequence[Sequence[int]] | None = None,
) -> Iterator[tuple[list[int], list[ExampleLayout], SequenceBatch]]:
    """The examples encoded, put in ``length_order`` and grouped into batches of about ``batch_size``
    sequences (examples whole): per batch, its examples' indices (into ``examples``), their layouts
    (sequence indices local to the batch) and the padded batch on ``device``. ``parts``: disjoint
    lists of example indices covering them all, batched apart (no batch holds two parts), in order."""
    sequences, layouts = layout_examples(tokenizer, examples, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for part in [range(len(layouts))] if parts is None else parts:
        members = [int(i) for i in part]
        order = [members[k] for k in length_order(sequences, [layouts[i] for i in members])]
        for local_group in group_batches([layouts[i] for i in order], batch_size):
            group = [order[k] for k in local_group]
            yield group, *_batch_of(group, sequences, layouts, pad_id, device)


def _batch_of(
    group: list[int],
    sequences: Sequence[EncodedSequence],
    layouts: Sequence[ExampleLayout],
    pad_id: int,
    device: Any,
) -> tuple[list[ExampleLayout], SequenceBatch]:
    seq_ids = [j for i in group for j in layouts[i].sequence_indices]
    local = {g: i for i, g in enumerate(seq_ids)}
    local_layouts = [
        ExampleLayout(
            layouts[i].example_id,
            tuple(local[j] for j in layouts[i].sequence_indices),
            layouts[i].answer_index,
        )
        for i in group
    ]
    return local_layouts, make_batch([sequences[j] for j in seq_ids], pad_id).to(device)


def prepare_eval(
    split: SplitModel | RemoteSplitModel,
    sae: torch.nn.Module,
    tokenizer: Any,
    examples: list[Example],
    batch_size: int,
    max_length: int | None,
    show: Progress | None = None,
    parts: Sequence[Sequence[int]] | None = None,
) -> EvalData:
    """Encode the examples, batch them (``encoded_batches``: in length order, ``parts`` apart), and
    run the lower blocks and the SAE once per batch."""
    remote = bool(getattr(split, "remote", False))  # the weights are on NDIF, the SAE is here
    device = sae.W_dec.device if remote else next(split.model.parameters()).device
    planned = list(encoded_batches(tokenizer, examples, batch_size, max_length, device, parts))
    # on NDIF every batch's site output comes back in one request
    caches = split.lower_all([batch for _, _, batch in planned]) if remote else None
    batches: list[EvalBatch] = []
    n_tokens = 0
    for i, (group, local_layouts, batch) in enumerate(planned):
        if caches is not None:
            cache = LowerCache(caches[i].site_output.to(device), None, None)
        else:
            cache = split.lower(batch)
        with torch.no_grad():
            x = cache.site_output.to(sae.W_dec.dtype)
            features = sae.encode(x)
            error = x - sae.decode(features)
        batches.append(EvalBatch(batch, list(group), local_layouts, cache, features, error))
        n_tokens += batch.n_tokens
        if show is not None:
            show.advance(len(group))
    return EvalData(examples, batches, n_tokens)


def token_mask(batch: SequenceBatch) -> torch.Tensor:
    return batch.attention_mask.bool()


def edit_mask(batch: SequenceBatch, first_position: int) -> torch.Tensor:
    """(B, T) True where features are edited: real tokens at positions >= ``first_position``."""
    return token_mask(batch) & (batch.position_ids >= first_position)
