"""Teacher-forced scores of benchmark examples from one forward pass (docs/metrics.md, "Scores").

A sequence's continuation is its target followed by the example's delimiter (``Example.delimiter``).
Per sequence: ``logprob`` = Σ log P(continuation token | everything before it); ``correct`` = every
continuation token is the argmax, so an answer is right only when the model also ends it there.

Per example (``example_objective``, the one score conditions report and attribution differentiates):
the gold sequence's log-prob, or for multiple choice the margin log-prob(gold) − logsumexp(log-probs
of the distractors). ``correct``: the gold sequence is correct, or for multiple choice the gold
choice has the strictly highest log-prob. Sequences are right-padded, so real tokens never see
padding, and carry explicit position ids 0..len-1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.model.sequences import EncodedSequence, encode_choices


@dataclass
class SequenceBatch:
    """Right-padded sequences with the positions whose logits predict target tokens."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    position_ids: torch.Tensor  # (B, T) long, 0.. on real tokens
    lengths: torch.Tensor  # (B,)
    target_starts: torch.Tensor  # (B,)
    # flat selection of target predictions:
    # logits[pred_rows, pred_cols] predict input_ids[pred_rows, pred_cols + 1]
    pred_rows: torch.Tensor  # (M,)
    pred_cols: torch.Tensor  # (M,)
    target_ids: torch.Tensor  # (M,)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def to(self, device: str | torch.device) -> SequenceBatch:
        return SequenceBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def rows(self, keep: torch.Tensor) -> SequenceBatch:
        """The batch of the sequences ``keep`` (sorted 1-D indices), same width; predictions renumbered."""
        chosen = torch.isin(self.pred_rows, keep)
        renumber = torch.full((self.size,), -1, dtype=torch.long, device=keep.device)
        renumber[keep] = torch.arange(len(keep), device=keep.device)
        return SequenceBatch(
            input_ids=self.input_ids[keep],
            attention_mask=self.attention_mask[keep],
            position_ids=self.position_ids[keep],
            lengths=self.lengths[keep],
            target_starts=self.target_starts[keep],
            pred_rows=renumber[self.pred_rows[chosen]],
            pred_cols=self.pred_cols[chosen],
            target_ids=self.target_ids[chosen],
        )


def make_batch(sequences: Sequence[EncodedSequence], pad_id: int = 0) -> SequenceBatch:
    if not sequences:
        raise ValueError("a batch needs at least one sequence")
    width = max(len(s.input_ids) for s in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    for b, seq in enumerate(sequences):
        if seq.target_start < 1:
            raise ValueError("a scored sequence needs at least one prompt token before its target")
        input_ids[b, : len(seq.input_ids)] = torch.tensor(seq.input_ids, dtype=torch.long)
        attention_mask[b, : len(seq.input_ids)] = 1
        for pos in range(seq.target_start - 1, len(seq.input_ids) - 1):
            rows.append(b)
            cols.append(pos)
    pred_rows = torch.tensor(rows, dtype=torch.long)
    pred_cols = torch.tensor(cols, dtype=torch.long)
    position_ids = torch.arange(width, dtype=torch.long).expand(n, width).clone() * attention_mask
    return SequenceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        lengths=attention_mask.sum(1),
        target_starts=torch.tensor([s.target_start for s in sequences], dtype=torch.long),
        pred_rows=pred_rows,
        pred_cols=pred_cols,
        target_ids=input_ids[pred_rows, pred_cols + 1],
    )


def sequence_scores(target_logits: torch.Tensor, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (Σ target log-prob, all-targets-argmax) from logits at the prediction positions (M, V).

    The log-prob keeps its graph (attribution differentiates it); the argmax flags do not.
    """
    logprobs = torch.log_softmax(target_logits.float(), dim=-1)
    token_logprob = logprobs.gather(1, batch.target_ids[:, None]).squeeze(1)
    token_hit = (target_logits.argmax(dim=-1) == batch.target_ids).to(torch.float32)
    seq_logprob = torch.zeros(batch.size, dtype=token_logprob.dtype, device=token_logprob.device)
    seq_logprob = seq_logprob.index_add(0, batch.pred_rows, token_logprob)
    misses = torch.zeros(batch.size, device=token_hit.device).index_add(
        0, batch.pred_rows, 1.0 - token_hit.detach()
    )
    return seq_logprob, misses == 0


def next_token_nll(logits: torch.Tensor, batch: SequenceBatch) -> tuple[float, int]:
    """Σ next-token negative log-likelihood over every real position of the batch, and its count."""
    predicted = logits[:, :-1].float()
    following = batch.input_ids[:, 1:]
    mask = batch.attention_mask[:, 1:].bool()
    nll = torch.nn.functional.cross_entropy(predicted[mask], following[mask], reduction="sum")
    return float(nll), int(mask.sum())


@dataclass(frozen=True)
class ExampleLayout:
    """Which sequences belong to an example: its choices (or its one gold sequence) and the gold one."""

    example_id: str
    sequence_indices: tuple[int, ...]
    answer_index: int | None  # None: free-form (one sequence, scored by argmax)

    @property
    def gold_sequence(self) -> int:
        return self.sequence_indices[self.answer_index or 0]


def layout_examples(
    tokenizer, examples: Iterable[Example], max_length: int | None = None
) -> tuple[list[EncodedSequence], list[ExampleLayout]]:
    """Encode every example (one sequence per choice for multiple choice) with the shared encoder."""
    sequences: list[EncodedSequence] = []
    layouts: list[ExampleLayout] = []
    for example in examples:
        encoded = encode_choices(tokenizer, example, max_length)
        start = len(sequences)
        sequences.extend(encoded)
        layouts.append(
            ExampleLayout(
                example.id,
                tuple(range(start, start + len(encoded))),
                example.answer_index if example.choices is not None else None,
            )
        )
    return sequences, layouts


GOLD_LOGPROB = "gold log-prob: Σ log P over the target's and the delimiter's tokens"
MARGIN = "margin log-prob(gold) − logsumexp(log-prob of the distractors)"


def distractors(layout: ExampleLayout) -> list[int]:
    """The sequences of an example's wrong choices (none for a free-form example)."""
    if layout.answer_index is None:
        return []
    return [j for j in layout.sequence_indices if j != layout.gold_sequence]


def example_objective(seq_logprob: torch.Tensor, layouts: Sequence[ExampleLayout]) -> torch.Tensor:
    """Per example, the score effects are measured on and attribution differentiates (keeps the graph):
    the gold sequence's log-prob, or for multiple choice logprob(gold) − logsumexp(distractors)."""
    scores = []
    for layout in layouts:
        gold = seq_logprob[layout.gold_sequence]
        others = distractors(layout)
        if others:
            index = torch.tensor(others, device=seq_logprob.device)
            gold = gold - torch.logsumexp(seq_logprob[index], dim=0)
        scores.append(gold)
    if not scores:
        return seq_logprob.new_zeros(0)
    return torch.stack(scores)


def score_name(layouts: Iterable[ExampleLayout]) -> str:
    """What ``example_objective`` computes for these examples (results.json's ``score``)."""
    kinds = {MARGIN if distractors(layout) else GOLD_LOGPROB for layout in layouts}
    if len(kinds) == 1:
        return kinds.pop()
    return f"{MARGIN} (multiple choice); {GOLD_LOGPROB} (free-form)"


def example_scores(
    seq_logprob: torch.Tensor, seq_correct: torch.Tensor, layouts: Sequence[ExampleLayout]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (``example_objective``, correct) from per-sequence scores."""
    score = example_objective(seq_logprob.detach(), layouts).to(torch.float64).cpu()
    correct = torch.empty(len(layouts), dtype=torch.bool)
    for i, layout in enumerate(layouts):
        gold = layout.gold_sequence
        if layout.answer_index is None:
            correct[i] = bool(seq_correct[gold])
        else:
            others = [float(seq_logprob[j]) for j in distractors(layout)]
            correct[i] = all(float(seq_logprob[gold]) > o for o in others)
    return score, correct
