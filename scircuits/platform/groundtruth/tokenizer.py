"""A task's tokenizer: one token per whitespace-separated symbol (WordLevel), ``<bos>`` prepended."""

from __future__ import annotations

from typing import Any

from scircuits.platform.contract.synth_tasks import BOS, EOS, PAD, UNK, SynthTask


def build_tokenizer(task: SynthTask) -> Any:
    """A transformers PreTrainedTokenizerFast over the task's vocabulary (save it with save_pretrained)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(task.vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def encode_problem_ids(tokenizer: Any, tokens: tuple[str, ...]) -> list[int]:
    """Ids of a problem's full token sequence (``<bos>`` included), refusing unknown symbols."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = tokenizer.convert_tokens_to_ids(UNK)
    if unk in ids:
        raise ValueError(f"symbols outside the task's vocabulary in {' '.join(tokens)!r}")
    return ids
