"""The fused upper blocks (model/fused_blocks.py) against transformers' eager blocks."""

from __future__ import annotations

import pytest
import torch

from scircuits import HFModelAdapter
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.model.fused_blocks import FusedDecoderStack
from scircuits.platform.model.scoring import make_batch
from scircuits.platform.model.sequences import EncodedSequence
from scircuits.platform.model.splice import SplitModel
from scircuits.testing import tiny_loaded_model

QWEN2 = HFModelAdapter(name="qwen2-tiny", model_type="qwen2")  # q, k and v with biases
LLAMA_GQA = {"num_attention_heads": 4, "num_key_value_heads": 2}


def ragged_batch():
    """Right-padded sequences of different lengths (the study's batches)."""
    seqs = [
        EncodedSequence(tuple(range(5, 31)), 20),
        EncodedSequence(tuple(range(30, 37)), 4),
        EncodedSequence(tuple(range(60, 79)), 12),
        EncodedSequence((1, 2), 1),
    ]
    return make_batch(seqs, pad_id=0)


def both_paths(split: SplitModel, value_of=lambda cache: cache.site_output):
    batch = ragged_batch()
    cache = split.lower(batch)
    value = value_of(cache)
    with torch.no_grad():
        fused = split.upper(batch, cache, value, all_positions=True)
        stack, split.fused_upper = split.fused_upper, None
        try:
            eager = split.upper(batch, cache, value, all_positions=True)
        finally:
            split.fused_upper = stack
    mask = batch.attention_mask.bool()
    return fused[mask], eager[mask]


@pytest.mark.parametrize(
    ("adapter", "overrides"),
    [("smollm2-135m", {}), ("llama-3-8b", LLAMA_GQA), ("mistral-7b", {}), (QWEN2, {})],
    ids=["smollm2", "llama-gqa", "mistral", "qwen2-bias"],
)
@pytest.mark.parametrize("layer", [0, 2])
def test_fused_stack_gives_the_eager_blocks_logits(adapter, overrides, layer):
    loaded = tiny_loaded_model(adapter, **overrides)
    split = SplitModel(loaded, layer, "resid")
    assert split.fused_upper is not None and split.fused_upper.concatenated
    assert len(split.fused_upper.blocks) == loaded.n_layers - 1 - layer
    fused, eager = both_paths(split)
    assert float((fused - eager).abs().max()) < 1e-5
    # an edit that moves the model moves both paths alike
    fused, eager = both_paths(split, lambda cache: cache.site_output * 0.5 + 0.3)
    assert float((fused - eager).abs().max()) < 1e-5


@pytest.mark.parametrize("adapter", ["smollm2-135m", QWEN2], ids=["llama", "qwen2-bias"])
def test_a_stack_too_large_to_copy_runs_its_products_apart_on_the_models_weights(adapter, monkeypatch):
    loaded = tiny_loaded_model(adapter)
    monkeypatch.setattr(FusedDecoderStack, "CONCATENATE_BYTES", 0)
    split = SplitModel(loaded, 0, "resid")
    stack = split.fused_upper
    assert stack is not None and not stack.concatenated
    mlp = loaded.model.model.layers[1].mlp
    assert stack.blocks[0].gate_up[0].data_ptr() == mlp.gate_proj.weight.data_ptr()  # no copy
    fused, eager = both_paths(split, lambda cache: cache.site_output * 0.5 + 0.3)
    assert float((fused - eager).abs().max()) < 1e-5


def test_fused_stack_reproduces_the_real_model_on_its_prompts():
    adapter = get_plugins().models.get("smollm2-135m")
    loaded = adapter.load()
    tok = loaded.tokenizer
    texts = ["12 + 35 = 47\n", "What is 7 times 8? The answer is 56.", "Hello"]
    seqs = [EncodedSequence(tuple(tok(t)["input_ids"]), 2) for t in texts]
    batch = make_batch(seqs, pad_id=tok.pad_token_id or 0)
    split = SplitModel(loaded, 15, "resid")
    assert split.fused_upper is not None and len(split.fused_upper.blocks) == 14
    cache = split.lower(batch)
    with torch.no_grad():
        fused = split.upper(batch, cache, cache.site_output, all_positions=True)
        split.fused_upper = None
        eager = split.upper(batch, cache, cache.site_output, all_positions=True)
    mask = batch.attention_mask.bool()
    assert float((fused - eager)[mask].abs().max()) < 1e-3
    assert torch.equal(fused[mask].argmax(-1), eager[mask].argmax(-1))


@pytest.mark.parametrize(
    ("adapter", "overrides"),
    [
        ("gpt2-medium", {}),
        ("gemma-2b", {}),
        ("phi-2", {}),
        ("smollm2-135m", {"hidden_act": "gelu"}),
        ("smollm2-135m", {"mlp_bias": True}),
    ],
    ids=["gpt2", "gemma", "phi", "llama-gelu", "llama-mlp-bias"],
)
def test_blocks_it_does_not_reproduce_run_eagerly(adapter, overrides):
    loaded = tiny_loaded_model(adapter, **overrides)
    assert SplitModel(loaded, 1, "resid").fused_upper is None


def test_other_sites_and_the_last_block_run_eagerly():
    loaded = tiny_loaded_model("smollm2-135m")
    assert SplitModel(loaded, 1, "mlp").fused_upper is None
    assert SplitModel(loaded, 1, "attn").fused_upper is None
    assert SplitModel(loaded, loaded.n_layers - 1, "resid").fused_upper is None


def test_gradients_autocast_and_long_windows_take_the_eager_blocks():
    loaded = tiny_loaded_model("mistral-7b", sliding_window=8)
    split = SplitModel(loaded, 0, "resid")
    stack = split.fused_upper
    assert stack is not None and stack.sliding_window == 8
    short, long = torch.zeros(2, 8, loaded.d_model), torch.zeros(2, 9, loaded.d_model)
    with torch.no_grad():
        assert stack.takes(short)
        assert not stack.takes(long)
        assert not stack.takes(short.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not stack.takes(short)
    assert not stack.takes(short)  # gradients on
    # and an attribution's gradient still reaches the site value through the eager blocks
    batch = ragged_batch()
    cache = split.lower(batch)
    value = cache.site_output.clone().requires_grad_(True)
    split.upper(batch, cache, value).sum().backward()
    assert value.grad is not None and float(value.grad.abs().sum()) > 0


def test_recognise_refuses_an_empty_or_mixed_stack():
    loaded = tiny_loaded_model("smollm2-135m")
    base = loaded.model.model
    assert FusedDecoderStack.recognise(base, []) is None
    other = tiny_loaded_model("gpt2-medium").model.transformer.h[0]
    assert FusedDecoderStack.recognise(base, [*base.layers[1:], other]) is None


def test_a_hook_on_any_block_above_takes_the_eager_blocks():
    """A circuit reads and edits its later sites through hooks, which the fused forward would skip."""
    loaded = tiny_loaded_model("smollm2-135m")
    split = SplitModel(loaded, 0, "resid")
    batch = ragged_batch()
    cache = split.lower(batch)
    with torch.no_grad():
        plain = split.upper(batch, cache, cache.site_output, all_positions=True)
    mlp = loaded.model.model.layers[2].mlp
    handle = mlp.register_forward_hook(lambda module, args, output: output * 0)
    try:
        assert not split.fused_upper.takes(cache.site_output)
        with torch.no_grad():
            hooked = split.upper(batch, cache, cache.site_output, all_positions=True)
    finally:
        handle.remove()
    mask = batch.attention_mask.bool()
    assert float((hooked - plain)[mask].abs().max()) > 1e-3  # the hook acted
    with torch.no_grad():
        assert split.fused_upper.takes(cache.site_output)  # and the fused path is back without it
