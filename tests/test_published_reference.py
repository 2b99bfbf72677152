"""Our readers against the reference implementations: each published layout, written in a fake hub
cache, is loaded by us and by its own tool (SAELens' ``SAE.from_pretrained`` / ``load_from_disk``
offline on that cache, sparsify's ``SparseCoder.load_from_disk``); encode and decode must agree to
1e-5 on random inputs. Our own checkpoints go the other way: SAELens loads them and reproduces our
encode and decode.

These need the peers extra (sae-lens, eai-sparsify): scripts/setup installs it under CI and with
SCIRCUITS_PEERS=1. Without it they skip with the reason, and fail under CI.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch

from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.platform.train.checkpoint import load_sae, save_sae
from scircuits.testing import published as P

PLUGINS = load_plugins(entry_points_too=False)
D_IN, D_SAE = 96, 192
TOL = 1e-5


def peer(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = (
            f"{module} is not installed ({exc}): the reference comparisons need the peers extra "
            "(SCIRCUITS_PEERS=1 bash scripts/setup, or pip install -e '.[peers]')"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; under CI they must run")
        pytest.skip(reason)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache, offline, for us (environment) and for the peers (huggingface_hub's
    constants, read when it was imported)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def random_sae(variant: str, seed: int = 0, **hparams):
    return P.random_sae(PLUGINS, variant, D_IN, D_SAE, seed, noise=0.1, log_threshold=-1.5, **hparams)


def inputs() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randn(512, D_IN) * 2


def assert_agree(ours, encode_ref, decode_ref) -> None:
    x = inputs()
    with torch.no_grad():
        f = ours.encode(x)
        f_ref = encode_ref(x)
        assert (f > 0).sum() > 0.01 * f.numel()  # enough latents fire for the comparison to mean something
        assert (f - f_ref).abs().max().item() <= TOL
        assert (ours.decode(f) - decode_ref(f_ref)).abs().max().item() <= TOL


def saelens_model(sae_lens_sae) -> tuple:
    sae_lens_sae.eval()
    return sae_lens_sae.encode, sae_lens_sae.decode


@pytest.mark.parametrize("variant", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_saelens_loads_our_checkpoints_and_reproduces_encode_and_decode(tmp_path, variant):
    sae_lens = peer("sae_lens")
    hparams = {"k": 8} if "topk" in variant else {}
    ours = random_sae(variant, **hparams)
    folder = save_sae(
        tmp_path / variant,
        ours,
        cfg={"metadata": {"hook_name": "blocks.3.hook_resid_post"}},
        scircuits_meta={},
    )
    reference = sae_lens.SAE.load_from_disk(str(folder))
    assert_agree(ours, *saelens_model(reference))
    assert reference.cfg.metadata.hook_name == "blocks.3.hook_resid_post"


def test_a_saelens_release_in_the_hub_cache(hub):
    """``saelens:gpt2-small-res-jb/blocks.3.hook_resid_pre``: a release of SAELens' default layout."""
    sae_lens = peer("sae_lens")
    original = random_sae("topk", k=8)
    hook = "blocks.3.hook_resid_pre"
    P.hub_repo(hub, "jbloom/GPT2-Small-SAEs-Reformatted", P.saelens_files(original, hook, hook))
    ours, info = load_sae(f"saelens:gpt2-small-res-jb/{hook}", PLUGINS)
    reference = sae_lens.SAE.from_pretrained("gpt2-small-res-jb", hook)
    assert_agree(ours, *saelens_model(reference))
    assert info["hook_name"] == hook and info["published_metrics"]["variance_explained"] == 0.999


def test_gemma_scope_npz_agrees_with_saelens_gemma_2_loader(hub):
    """SAELens' own gemma_2 loader on the release's real repository and folder; only d_in and d_sae
    are overridden (it takes them from the model and the folder name: the fixture is small)."""
    sae_lens = peer("sae_lens")
    from sae_lens.loading.pretrained_sae_loaders import gemma_2_sae_huggingface_loader

    release, sae_id = "gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical"
    location = PLUGINS.sae_sources.get("saelens").resolve(f"{release}/{sae_id}")
    original = random_sae("jumprelu")
    P.hub_repo(hub, location.repo_id, P.gemma_scope_files(original, location.path))

    def small(**kwargs):
        kwargs["cfg_overrides"] = {**(kwargs.get("cfg_overrides") or {}), "d_in": D_IN, "d_sae": D_SAE}
        return gemma_2_sae_huggingface_loader(**kwargs)

    ours, info = load_sae(f"saelens:{release}/{sae_id}", PLUGINS)
    reference = sae_lens.SAE.from_pretrained(release, sae_id, converter=small)
    assert_agree(ours, *saelens_model(reference))
    assert info["hook_name"] == reference.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert info["source"]["format"] == "gemma-scope"


def test_llama_scope_agrees_with_saelens_from_pretrained(hub):
    sae_lens = peer("sae_lens")
    release, sae_id = "llama_scope_lxr_8x", "l3r_8x"
    location = PLUGINS.sae_sources.get("saelens").resolve(f"{release}/{sae_id}")
    factor = 20.177339901477833  # the release table's norm_scaling_factor for l3r_8x
    original = random_sae("jumprelu")
    threshold = float(original.threshold[0].detach())
    files = P.llama_scope_files(
        original, location.path, "blocks.3.hook_resid_post", D_IN**0.5 / factor, threshold
    )
    P.hub_repo(hub, location.repo_id, files)
    ours, info = load_sae(f"saelens:{release}/{sae_id}", PLUGINS)
    reference = sae_lens.SAE.from_pretrained(release, sae_id)
    assert_agree(ours, *saelens_model(reference))
    assert info["source"]["format"] == "llama-scope"


def test_sparsify_agrees_with_sparsify_load_from_disk(hub):
    sparsify = peer("sparsify")
    original = random_sae("topk", k=8)
    P.hub_repo(hub, "EleutherAI/sae-fixture", P.sparsify_files(original, "layers.3"))
    ours, info = load_sae("hf:EleutherAI/sae-fixture/layers.3", PLUGINS)
    folder = Path(info["path"])
    reference = sparsify.SparseCoder.load_from_disk(folder)

    def encode(x):
        out = reference.encode(x)
        return torch.zeros(x.shape[0], D_SAE).scatter(-1, out.top_indices, out.top_acts)

    def decode(f):
        values, indices = f.topk(reference.cfg.k, dim=-1)
        return reference.decode(values, indices)

    assert_agree(ours, encode, decode)
    assert info["hook_name"] == "layers.3"
