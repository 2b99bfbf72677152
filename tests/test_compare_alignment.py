"""Character-span alignment on a constructed pair of tokenizers (character level vs word level)."""

from __future__ import annotations

import numpy as np
import pytest

from scircuits.platform.compare.alignment import SpannedSequence, pair_positions, spanned_sequence
from scircuits.testing import tiny_tokenizer


def word_tokenizer():
    """Words and single non-space characters; a space is glued to the FOLLOWING word (GPT-2 style),
    digits in runs of up to two; <s> in front. Its spans differ from the character tokenizer's."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [" ?[A-Za-z]+", " ?[0-9]{1,2}", " ?[^A-Za-z0-9 ]", " "]
    vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(pieces)), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    # WordLevel needs a vocabulary: add every piece of the texts used below
    words = set()
    for text in ("What is 12 + 345?", " 357", "Answer: 357", "Hi there!"):
        words.update(p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text))
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(pieces)), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", unk_token="<unk>"
    )


def test_spans_cover_the_text_and_the_ids_are_those_tracing_uses():
    tok = word_tokenizer()
    seq = spanned_sequence(tok, "What is 12 + 345?", " 357")
    assert seq.text == "What is 12 + 345? 357"
    assert seq.input_ids[0] == tok.bos_token_id and seq.ends[0] == -1  # special: never paired
    expected = list(tok("What is 12 + 345?")["input_ids"]) + list(
        tok(" 357", add_special_tokens=False)["input_ids"]
    )
    assert list(seq.input_ids) == expected
    pieces = [seq.text[s:e] for s, e in zip(seq.starts[1:], seq.ends[1:], strict=True)]
    assert pieces == ["What", " is", " 12", " +", " 34", "5", "?", " 35", "7"]


def test_positions_pair_where_spans_end_at_the_same_character():
    chars, words = tiny_tokenizer(), word_tokenizer()
    a = spanned_sequence(chars, "What is 12 + 345?", " 357")
    b = spanned_sequence(words, "What is 12 + 345?", " 357")
    pairs = pair_positions(a, b)
    assert not pairs.same_tokens
    # every word-level token has a character token ending at the same place
    assert len(pairs.a) == len(b.input_ids) - 1
    for pa, pb, end in zip(pairs.a, pairs.b, pairs.ends, strict=True):
        assert a.ends[pa] == b.ends[pb] == end
        assert a.text[:end].endswith(a.text[a.starts[pa] : a.ends[pa]])
    # the pairs follow the text: "What" ends at 4 -> char position of "t" (bos at 0, W=1 ... t=4)
    assert (pairs.a[0], pairs.b[0], pairs.ends[0]) == (4, 1, 4)
    # the target's tokens are shifted by the prompt: " 35" ends at character 20, "7" at 21
    assert list(pairs.ends[-2:]) == [20, 21]


def test_identical_tokenizers_give_the_identity_pairing_without_special_tokens():
    chars = tiny_tokenizer()
    a = spanned_sequence(chars, "Answer: 357", "!")
    pairs = pair_positions(a, spanned_sequence(tiny_tokenizer(), "Answer: 357", "!"))
    assert pairs.same_tokens
    assert np.array_equal(pairs.a, pairs.b) and list(pairs.a) == list(range(1, len(a.input_ids)))


def test_several_tokens_ending_at_one_character_pair_through_the_last():
    # byte pieces of one character share its span: positions 2 and 3 both end at 2
    a = SpannedSequence("xé", (1, 2, 3, 4), np.array([-1, 1, 2, 2]), np.array([-1, 0, 1, 1]))
    b = SpannedSequence("xé", (1, 2), np.array([-1, 2]), np.array([-1, 0]))
    pairs = pair_positions(a, b)
    assert list(pairs.a) == [3] and list(pairs.b) == [1]


def test_different_texts_are_refused():
    a = spanned_sequence(tiny_tokenizer(), "1 + 1 =", " 2")
    b = spanned_sequence(tiny_tokenizer(), "1 + 1 =", " 3")
    with pytest.raises(ValueError, match="same text"):
        pair_positions(a, b)
