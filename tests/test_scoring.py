"""Teacher-forced scoring: padding, the argmax rule, the answer delimiter, the multiple-choice margin,
next-token CE."""

from __future__ import annotations

import math

import pytest
import torch

from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.model.scoring import (
    GOLD_LOGPROB,
    MARGIN,
    example_objective,
    example_scores,
    layout_examples,
    make_batch,
    next_token_nll,
    score_name,
    sequence_scores,
)
from scircuits.platform.model.sequences import EncodedSequence, encode_example
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


class CharTok:
    """One token per character (id = code point), a 0 first when special tokens are asked for."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([0] if add_special_tokens else []) + [ord(c) for c in text]}


def test_multiple_choice_correct_when_gold_choice_is_strictly_most_likely():
    examples = [
        Example("a", "Q", " x", choices=(" x", " y"), answer_index=0),
        Example("b", "Q", " y", choices=(" x", " y"), answer_index=1),
        Example("c", "Q", " z"),
    ]
    _sequences, layouts = layout_examples(CharTok(), examples)
    assert [layout.sequence_indices for layout in layouts] == [(0, 1), (2, 3), (4,)]
    seq_logprob = torch.tensor([-1.0, -2.0, -1.0, -1.0, -3.0])
    seq_correct = torch.tensor([False, False, False, False, True])
    score, correct = example_scores(seq_logprob, seq_correct, layouts)
    # multiple choice: the margin logprob(gold) - logsumexp(distractors); free-form: the gold log-prob
    assert score.tolist() == pytest.approx([1.0, 0.0, -3.0], abs=1e-6)
    assert correct.tolist() == [True, False, True]  # a tie is not correct


def test_the_multiple_choice_margin_is_gold_minus_the_logsumexp_of_the_distractors():
    examples = [Example("a", "Q", " b", choices=(" a", " b", " c"), answer_index=1), Example("f", "Q", " z")]
    _sequences, layouts = layout_examples(CharTok(), examples)
    seq_logprob = torch.tensor([-2.0, -1.0, -3.0, -4.0], requires_grad=True)
    objective = example_objective(seq_logprob, layouts)
    # -1 - log(e^-2 + e^-3) = 1 - log(1 + e^-1)
    assert objective.tolist() == pytest.approx([1.0 - math.log(1.0 + math.exp(-1.0)), -4.0], abs=1e-6)
    objective.sum().backward()
    # d/d gold = 1; d/d distractor j = -softmax(distractors)_j; the free-form example's own log-prob: 1
    shares = torch.softmax(torch.tensor([-2.0, -3.0]), 0)
    expected = [-float(shares[0]), 1.0, -float(shares[1]), 1.0]
    assert seq_logprob.grad.tolist() == pytest.approx(expected, abs=1e-6)
    assert score_name(layouts[:1]) == MARGIN and score_name(layouts[1:]) == GOLD_LOGPROB
    assert MARGIN in score_name(layouts) and GOLD_LOGPROB in score_name(layouts)


def delimited_logits(batch, vocab: int, last_argmax: int) -> torch.Tensor:
    """Logits at the prediction positions: every continuation token the argmax, except that the last
    prediction's argmax is ``last_argmax``."""
    logits = torch.zeros((len(batch.target_ids), vocab))
    logits[torch.arange(len(batch.target_ids)), batch.target_ids] = 4.0
    logits[-1, last_argmax] = 6.0
    return logits


def test_an_answer_is_correct_only_when_the_model_ends_it_with_the_delimiter():
    example = Example("e", "45 + 38 =", " 83", delimiter="\n")
    sequences, _layouts = layout_examples(CharTok(), [example])
    # the scored continuation is the target and the delimiter; the traced sequence has no delimiter
    assert sequences[0].input_ids[sequences[0].target_start :] == tuple(ord(c) for c in " 83\n")
    assert encode_example(CharTok(), example).input_ids == sequences[0].input_ids[:-1]
    batch = make_batch(sequences)
    vocab = 128
    # " 83" then "0": every target token is the argmax, but the answer goes on (" 830"): wrong
    goes_on = delimited_logits(batch, vocab, last_argmax=ord("0"))
    logprob, correct = sequence_scores(goes_on, batch)
    assert correct.tolist() == [False]
    # " 83" then "\n": right
    ends = delimited_logits(batch, vocab, last_argmax=ord("\n"))
    logprob_ends, correct_ends = sequence_scores(ends, batch)
    assert correct_ends.tolist() == [True]
    # the log-prob sums over the delimiter's token too: four tokens, " ", "8", "3", "\n"
    per_token = torch.log_softmax(ends, -1)[torch.arange(4), batch.target_ids]
    assert len(batch.target_ids) == 4
    assert float(logprob_ends[0]) == pytest.approx(float(per_token.sum()), abs=1e-5)
    assert float(logprob[0]) < float(logprob_ends[0])


def test_without_a_delimiter_the_answer_end_is_not_checked():
    sequences, _ = layout_examples(CharTok(), [Example("e", "45 + 38 =", " 83")])
    batch = make_batch(sequences)
    assert len(batch.target_ids) == 3
    _, correct = sequence_scores(delimited_logits(batch, 128, last_argmax=ord("3")), batch)
    assert correct.tolist() == [True]


def test_a_delimiter_follows_every_choice_of_a_multiple_choice_example():
    example = Example("m", "Q:", " A", choices=(" A", " B"), answer_index=0, delimiter=".")
    sequences, _ = layout_examples(CharTok(), [example])
    assert [s.input_ids[s.target_start :] for s in sequences] == [(32, 65, 46), (32, 66, 46)]
    with pytest.raises(ValueError, match="delimiter"):
        Example("x", "Q", " A", delimiter=None)  # type: ignore[arg-type]


def test_next_token_nll_ignores_padding(tiny):
    seqs = [EncodedSequence((5, 6, 7, 8), 2), EncodedSequence((9, 10, 11), 2)]
    batch = make_batch(seqs)
    total, count = next_token_nll(full_logits(tiny.model, batch), batch)
    assert count == 3 + 2
    single = [next_token_nll(full_logits(tiny.model, make_batch([s])), make_batch([s])) for s in seqs]
    assert total == pytest.approx(sum(s for s, _ in single), rel=1e-5)


def test_a_max_length_shorter_than_the_answer_is_one_line_naming_the_flag(tiny):
    from scircuits.platform.contract.errors import ConfigError

    example = Example(id="e", prompt="1 + 2 =", target=" 3 and then some more words")
    assert len(encode_example(tiny.tokenizer, example, max_length=40).input_ids) <= 40
    with pytest.raises(ConfigError, match=r"--max-length 3 leaves no room for the prompt: the answer"):
        encode_example(tiny.tokenizer, example, max_length=3)
