"""Tracing: padding exactness, early stop, the remote path in nnsight's local mode, SmolLM2 rows."""

from __future__ import annotations

import pytest
import torch

from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.model.tracing import SiteTracer, load_remote, nnsight_model, pad_right, traced_model
from scircuits.testing import save_tiny_model, tiny_loaded_model

SEQUENCES = [[1, 20, 21, 22, 23, 24, 25, 26, 27, 28], [1, 40, 41], [1, 50, 51, 52, 53, 54], [1, 60]]


def relative_error(actual, expected):
    return float(((actual - expected).norm(dim=-1) / expected.norm(dim=-1).clamp_min(1e-12)).max())


def reference_rows(loaded, layer, site, sequence):
    """The site's output for one sequence run alone through the plain model (no nnsight, no padding)."""
    captured = []
    handle = loaded.site_module(layer, site).register_forward_hook(
        lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor([sequence]))
    finally:
        handle.remove()
    return captured[0][0].float()


def test_pad_right_masks_and_positions():
    ids, mask, positions = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert positions.tolist() == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("name", ["gpt2-medium", "smollm2-135m", "phi-2"])
def test_batched_rows_equal_each_example_traced_alone(name):
    loaded = tiny_loaded_model(name)
    tracer = SiteTracer(loaded, 3, "resid")
    batched = tracer.trace(SEQUENCES)
    for sequence, rows in zip(SEQUENCES, batched, strict=False):
        assert rows.shape == (len(sequence), loaded.d_model)  # pad positions dropped
        alone = tracer.trace([sequence])[0]
        assert relative_error(rows, alone) < 1e-5
        assert relative_error(rows, reference_rows(loaded, 3, "resid", sequence)) < 1e-5


def test_left_padding_would_be_wrong_for_absolute_positions():
    """The control for the test above: GPT-2 rows shifted by left padding differ, so the check can fail."""
    loaded = tiny_loaded_model("gpt2-medium")
    sequence = SEQUENCES[1]
    shifted = torch.tensor([[0, 0, *sequence]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    captured = []
    handle = loaded.site_module(3, "resid").register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        loaded.model(input_ids=shifted, attention_mask=mask)
    handle.remove()
    assert relative_error(captured[0][0, 2:], reference_rows(loaded, 3, "resid", sequence)) > 1e-3


def test_forward_stops_after_the_traced_layer():
    loaded = tiny_loaded_model("llama-3-8b")
    fired: list[str] = []
    handles = [
        loaded.site_module(layer, "resid").register_forward_hook(
            lambda *_a, layer=layer: fired.append(f"block{layer}")
        )
        for layer in range(loaded.n_layers)
    ]
    handles.append(loaded.model.lm_head.register_forward_hook(lambda *_a: fired.append("lm_head")))
    try:
        SiteTracer(loaded, 1, "mlp").trace(SEQUENCES)
        assert fired == ["block0"]  # block 1 stopped inside, after its mlp; blocks 2, 3 and lm_head never ran
        fired.clear()
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor([SEQUENCES[0]]))
        assert fired == ["block0", "block1", "block2", "block3", "lm_head"]
    finally:
        for handle in handles:
            handle.remove()


def test_wrapping_leaves_the_loaded_tokenizer_alone():
    loaded = tiny_loaded_model("gpt2-medium")
    side, pad = loaded.tokenizer.padding_side, loaded.tokenizer.pad_token
    assert nnsight_model(loaded) is traced_model(loaded).nn  # one wrapper per model
    assert (loaded.tokenizer.padding_side, loaded.tokenizer.pad_token) == (side, pad)


@pytest.mark.parametrize("name,site", [("gpt2-medium", "attn"), ("smollm2-135m", "resid")])
def test_remote_path_in_nnsight_local_mode_equals_local_tracing(tmp_path, name, site):
    loaded = tiny_loaded_model(name, seed=7)
    save_tiny_model(loaded, tmp_path)
    adapter = get_plugins().models.get(name)
    remote = load_remote(adapter, model_path=str(tmp_path), backend="local")
    assert traced_model(remote).remote == "local"
    assert remote.model.device.type == "meta"  # no weights were loaded to build it
    local_rows = SiteTracer(loaded, 2, site).trace(SEQUENCES)
    remote_rows = SiteTracer(remote, 2, site).trace(SEQUENCES)
    for local, far in zip(local_rows, remote_rows, strict=False):
        assert relative_error(far, local) < 1e-6


def test_remote_without_an_ndif_key_is_a_clear_error(monkeypatch):
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(ConfigError, match=r"NDIF_API_KEY"):
        load_remote(get_plugins().models.get("llama-3-8b"), backend=True)


def test_remote_without_the_hub_is_a_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from scircuits.platform.contract.errors import WeightsUnavailableError

    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"meta-llama/Meta-Llama-3-8B.*offline"):
        load_remote(get_plugins().models.get("llama-3-8b"), backend=True)


@pytest.mark.slow
def test_smollm2_traced_rows_equal_a_per_example_forward(smollm2):
    from scircuits.platform.model.sequences import encode_example

    benchmark = get_plugins().benchmarks.get("arithmetic")
    examples = list(benchmark.examples("test", limit=4, seed=0))
    sequences = [encode_example(smollm2.tokenizer, e).input_ids for e in examples]
    assert len({len(s) for s in sequences}) > 1  # the batch is padded
    rows = SiteTracer(smollm2, 15, "resid").trace(sequences)
    for sequence, traced in zip(sequences, rows, strict=False):
        assert relative_error(traced, reference_rows(smollm2, 15, "resid", list(sequence))) < 1e-4
