"""Teacher-forced scoring: padding, the argmax rule, multiple choice, next-token CE."""

from __future__ import annotations

import pytest
import torch

from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.model.scoring import (
    example_scores,
    layout_examples,
    make_batch,
    next_token_nll,
    sequence_scores,
)
from scircuits.platform.model.sequences import EncodedSequence
from scircuits.testing import tiny_loaded_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_loaded_model("smollm2-135m")


def full_logits(model, batch):
    with torch.no_grad():
        return model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits


def test_make_batch_right_pads_and_selects_target_predictions():
    seqs = [EncodedSequence((5, 6, 7, 8), 2), EncodedSequence((9, 10, 11), 2)]
    batch = make_batch(seqs, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
    # position p predicts token p + 1: sequence 0 predicts 7 and 8 from positions 1 and 2
    assert list(zip(batch.pred_rows.tolist(), batch.pred_cols.tolist(), strict=False)) == [
        (0, 1),
        (0, 2),
        (1, 1),
    ]
    assert batch.target_ids.tolist() == [7, 8, 11]


def test_padded_batch_scores_equal_one_sequence_at_a_time(tiny):
    seqs = [
        EncodedSequence(tuple(range(5, 25)), 15),
        EncodedSequence((30, 31, 32, 33, 34), 3),
        EncodedSequence((40, 41, 42, 43, 44, 45, 46, 47), 6),
    ]
    batch = make_batch(seqs, pad_id=0)
    logits = full_logits(tiny.model, batch)[batch.pred_rows, batch.pred_cols]
    together, ok_together = sequence_scores(logits, batch)
    for i, seq in enumerate(seqs):
        single = make_batch([seq])
        alone, ok_alone = sequence_scores(
            full_logits(tiny.model, single)[single.pred_rows, single.pred_cols], single
        )
        assert float(together[i]) == pytest.approx(float(alone[0]), abs=1e-4)
        assert bool(ok_together[i]) == bool(ok_alone[0])


def test_logprob_is_the_sum_of_target_token_logprobs_and_correct_needs_every_argmax():
    seqs = [EncodedSequence((1, 2, 3), 1), EncodedSequence((1, 2, 3), 1)]
    batch = make_batch(seqs)
    vocab = 5
    logits = torch.full((len(batch.target_ids), vocab), -10.0)
    # sequence 0: both targets (2 then 3) are the argmax; sequence 1: the second is not
    logits[0, 2] = logits[1, 3] = 5.0
    logits[2, 2] = 5.0
    logits[3, 4] = 5.0
    logprob, correct = sequence_scores(logits, batch)
    expected0 = 2 * float(torch.log_softmax(logits[0], -1)[2])
    assert float(logprob[0]) == pytest.approx(expected0, abs=1e-5)
    assert correct.tolist() == [True, False]


def test_multiple_choice_correct_when_gold_choice_is_strictly_most_likely():
    class Tok:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": ([0] if add_special_tokens else []) + [ord(c) % 50 for c in text]}

    examples = [
        Example("a", "Q", " x", choices=(" x", " y"), answer_index=0),
        Example("b", "Q", " y", choices=(" x", " y"), answer_index=1),
        Example("c", "Q", " z"),
    ]
    _sequences, layouts = layout_examples(Tok(), examples)
    assert [layout.sequence_indices for layout in layouts] == [(0, 1), (2, 3), (4,)]
    seq_logprob = torch.tensor([-1.0, -2.0, -1.0, -1.0, -3.0])
    seq_correct = torch.tensor([False, False, False, False, True])
    logprob, correct = example_scores(seq_logprob, seq_correct, layouts)
    assert logprob.tolist() == [-1.0, -1.0, -3.0]
    assert correct.tolist() == [True, False, True]  # a tie is not correct


def test_next_token_nll_ignores_padding(tiny):
    seqs = [EncodedSequence((5, 6, 7, 8), 2), EncodedSequence((9, 10, 11), 2)]
    batch = make_batch(seqs)
    total, count = next_token_nll(full_logits(tiny.model, batch), batch)
    assert count == 3 + 2
    single = [next_token_nll(full_logits(tiny.model, make_batch([s])), make_batch([s])) for s in seqs]
    assert total == pytest.approx(sum(s for s, _ in single), rel=1e-5)
