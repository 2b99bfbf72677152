"""Pairing the token positions of two tokenizations of the same text.

An example's text is its prompt followed by its target, tokenised the way tracing does it (the
prompt with the tokenizer's special tokens, the target without; ``platform.sequences``). Each token
gets its character span in that text from the fast tokenizer's offset mapping.

Rule: two positions are paired when their tokens' spans END at the same character. A causal model's
state at a position has read the text up to the end of that token, so a pair compares the two models
after both have read exactly the same prefix. When several tokens end at one character (byte-level
pieces of one multi-byte character), the last of them is used: it is the one that has read the
whole character. Special tokens (empty spans: ``<bos>``, chat markers) are never paired. When both
tokenizers split the text the same way this is the identity pairing (token alignment), minus
special tokens; ``pair_positions`` reports which case held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scircuits.platform.contract.errors import ConfigError


@dataclass(frozen=True)
class SpannedSequence:
    """Token ids (as tracing feeds them) and each token's (start, end) in ``text``; special tokens
    have ``end == -1``."""

    text: str
    input_ids: tuple[int, ...]
    ends: np.ndarray  # (len,) int64, -1 for special tokens
    starts: np.ndarray


def _offsets(tokenizer: Any, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} gives no character offsets; comparing runs with "
            "different tokenizers needs fast (tokenizers-backed) tokenizers"
        )
    enc = tokenizer(
        text, add_special_tokens=special, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], list(enc["special_tokens_mask"])


def spanned_sequence(tokenizer: Any, prompt: str, target: str) -> SpannedSequence:
    """The sequence ``platform.sequences.encode`` builds for (prompt, target), with character spans."""
    p_ids, p_off, p_special = _offsets(tokenizer, prompt, True)
    t_ids, t_off, t_special = _offsets(tokenizer, target, False)
    shift = len(prompt)
    starts, ends = [], []
    for (start, end), special in zip(p_off, p_special, strict=True):
        empty = special or end <= start
        starts.append(-1 if empty else start)
        ends.append(-1 if empty else end)
    for (start, end), special in zip(t_off, t_special, strict=True):
        empty = special or end <= start
        starts.append(-1 if empty else start + shift)
        ends.append(-1 if empty else end + shift)
    return SpannedSequence(
        prompt + target,
        tuple(p_ids + t_ids),
        np.asarray(ends, dtype=np.int64),
        np.asarray(starts, dtype=np.int64),
    )


@dataclass(frozen=True)
class PositionPairs:
    a: np.ndarray  # positions in sequence A
    b: np.ndarray  # positions in sequence B
    ends: np.ndarray  # the shared character end of each pair
    same_tokens: bool  # both tokenizations have the same spans (token alignment)


def _last_position_per_end(ends: np.ndarray) -> dict[int, int]:
    last: dict[int, int] = {}
    for position, end in enumerate(ends.tolist()):
        if end >= 0:
            last[end] = position  # later positions overwrite: the last token ending there
    return last


def pair_positions(a: SpannedSequence, b: SpannedSequence) -> PositionPairs:
    """Positions of A and B whose tokens end at the same character of the shared text."""
    if a.text != b.text:
        raise ValueError("the two sequences are not over the same text")
    last_a, last_b = _last_position_per_end(a.ends), _last_position_per_end(b.ends)
    shared = sorted(set(last_a) & set(last_b))
    pos_a = np.asarray([last_a[e] for e in shared], dtype=np.int64)
    pos_b = np.asarray([last_b[e] for e in shared], dtype=np.int64)
    keep_a, keep_b = a.ends >= 0, b.ends >= 0
    same = bool(
        np.array_equal(a.ends[keep_a], b.ends[keep_b]) and np.array_equal(a.starts[keep_a], b.starts[keep_b])
    )
    return PositionPairs(pos_a, pos_b, np.asarray(shared, dtype=np.int64), same)
