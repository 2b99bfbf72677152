"""Tiny models for tests: any adapter's architecture, random weights, a working offline tokenizer.

    from scircuits.testing import tiny_loaded_model
    loaded = tiny_loaded_model("gpt2-medium")        # or an adapter object; seed=0 by default
    loaded.model, loaded.tokenizer, loaded.site_module(1, "mlp")

The model is built from ``tiny_config(adapter)`` (4 blocks, width 64, vocabulary 128) in float32
on CPU and is deterministic for a seed. The tokenizer is character level: every printable ASCII
character, newline and tab is one token, unknown characters map to ``<unk>``; it adds ``<bos>`` in
front of a text encoded with ``add_special_tokens=True`` (as many real tokenizers do), pads with
``<pad>`` and decodes back to the text. It needs no file and no network.

``save_tiny_model(loaded, folder)`` writes the model and tokenizer with ``save_pretrained`` so that
``AutoModelForCausalLM.from_pretrained(folder)`` (and ``--model-path folder``) loads them.
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path
from typing import Any

from scircuits.platform.contract.models import LoadedModel, ModelAdapter
from scircuits.platform.manager.plugin_set import get_plugins

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
TINY_CHARACTERS = "".join(c for c in string.printable if c not in "\r\x0b\x0c")


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in TINY_CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return tok.to_str()


def tiny_tokenizer() -> Any:
    """A fresh character-level fast tokenizer (see the module docstring)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=512,
    )


def _adapter(adapter: str | ModelAdapter) -> ModelAdapter:
    if isinstance(adapter, ModelAdapter):
        return adapter
    return get_plugins().models.get(adapter)


def tiny_model(adapter: str | ModelAdapter, seed: int = 0, **config_overrides: Any) -> Any:
    """A randomly initialised transformers causal LM of ``adapter``'s architecture (float32, eval)."""
    import torch
    from transformers import AutoModelForCausalLM

    adapter = _adapter(adapter)
    tokenizer = tiny_tokenizer()
    special_ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = adapter.tiny_config(**{**special_ids, **config_overrides})
    if config.vocab_size < len(tokenizer):
        raise ValueError(
            f"tiny vocab_size {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def tiny_loaded_model(adapter: str | ModelAdapter, seed: int = 0, **config_overrides: Any) -> LoadedModel:
    """A LoadedModel over a tiny random model of ``adapter``'s architecture (a name or an adapter).

    For the generic ``hf:`` adapter pass a specialised adapter with a ``model_type``; its block
    path is discovered as when loading real weights.
    """
    adapter = _adapter(adapter)
    model = tiny_model(adapter, seed, **config_overrides)
    adapter = adapter.resolved_for(model)  # the generic adapter finds its blocks
    return adapter.wrap(
        model,
        tiny_tokenizer(),
        model_id=f"tiny-random:{adapter.name}",
        revision=f"tiny-random-seed{seed}",
        dtype="float32",
        device="cpu",
    )


def save_tiny_model(loaded: LoadedModel, folder: str | Path) -> Path:
    """Write a tiny model + its tokenizer with save_pretrained; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder
