"""Turning examples into token sequences, the one way tracing and scoring both use.

The sequence of an example is its prompt's tokens (with the tokenizer's special tokens) followed by
its target's tokens (without). The target is scored teacher-forced: the logits at position
``target_start - 1 + i`` predict target token ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scircuits.platform.contract.benchmarks import Example


@dataclass(frozen=True)
class EncodedSequence:
    input_ids: tuple[int, ...]
    target_start: int  # index of the first target token; len(input_ids) - target_start target tokens

    @property
    def n_target(self) -> int:
        return len(self.input_ids) - self.target_start


def encode(tokenizer: Any, prompt: str, continuation: str, max_length: int | None = None) -> EncodedSequence:
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    target_ids = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if not target_ids:
        raise ValueError(f"the continuation {continuation!r} encodes to no tokens")
    if max_length is not None and len(prompt_ids) + len(target_ids) > max_length:
        keep = max_length - len(target_ids)
        if keep < 1:
            raise ValueError(f"the continuation alone is longer than max_length={max_length}")
        prompt_ids = prompt_ids[-keep:]  # keep the end of the prompt, next to the target
    return EncodedSequence(tuple(prompt_ids + target_ids), len(prompt_ids))


def encode_example(tokenizer: Any, example: Example, max_length: int | None = None) -> EncodedSequence:
    """The gold sequence: prompt + target (for multiple choice, the gold choice)."""
    return encode(tokenizer, example.prompt, example.target, max_length)


def encode_choices(tokenizer: Any, example: Example, max_length: int | None = None) -> list[EncodedSequence]:
    """One sequence per choice (multiple choice), or the single gold sequence."""
    if example.choices is None:
        return [encode_example(tokenizer, example, max_length)]
    return [encode(tokenizer, example.prompt, c, max_length) for c in example.choices]
