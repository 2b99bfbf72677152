"""Turning examples into token sequences, the one way tracing and scoring both use.

The sequence of an example is its prompt's tokens (with the tokenizer's special tokens) followed by
its continuation's tokens (without). Tracing uses prompt + target (``encode_example``); scoring uses
prompt + target + the example's delimiter (``encode_choices``), the continuation tokenised as one
text, so "}" after "\\frac{1}{2}" becomes the "}}" the model would write. The continuation is
scored teacher-forced: the logits at position ``target_start - 1 + i`` predict its token ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.contract.errors import ConfigError


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
        raise ConfigError(
            f"the answer {continuation!r} encodes to no tokens; give an answer the model can write"
        )
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None and unknown in target_ids and str(tokenizer.unk_token) not in continuation:
        raise ConfigError(
            f"the answer {continuation!r} encodes to the tokenizer's unknown token {tokenizer.unk_token!r}: "
            "the model cannot write it, so it cannot be scored; give answers in the model's vocabulary"
        )
    if max_length is not None and len(prompt_ids) + len(target_ids) > max_length:
        keep = max_length - len(target_ids)
        if keep < 1:
            raise ConfigError(
                f"--max-length {max_length} leaves no room for the prompt: the answer {continuation!r} alone "
                f"is {len(target_ids)} tokens; give a larger --max-length (or none)"
            )
        prompt_ids = prompt_ids[-keep:]  # keep the end of the prompt, next to the target
    return EncodedSequence(tuple(prompt_ids + target_ids), len(prompt_ids))


def encode_example(tokenizer: Any, example: Example, max_length: int | None = None) -> EncodedSequence:
    """The traced sequence: prompt + target (for multiple choice, the gold choice), no delimiter."""
    return _with_id(example, lambda: encode(tokenizer, example.prompt, example.target, max_length))


def encode_choices(tokenizer: Any, example: Example, max_length: int | None = None) -> list[EncodedSequence]:
    """The scored sequences: one per choice (multiple choice), or the single gold one; each
    continuation is followed by the example's delimiter."""
    return _with_id(
        example, lambda: [encode(tokenizer, example.prompt, c, max_length) for c in example.continuations]
    )


def _with_id(example: Example, encoded: Any) -> Any:
    try:
        return encoded()
    except ConfigError as exc:
        if str(exc).startswith("the answer"):
            raise ConfigError(f"example {example.id!r}: {exc}") from None
        raise
