"""Conformance suites: every registered plugin, built-in or third-party, checked against the contract.

Run them on the plugins installed with scircuits (a plugin author runs them on their own package):

    python -m pytest --pyargs scircuits.testing.conformance
    SCIRCUITS_CONFORMANCE_PLUGINS=example python -m pytest --pyargs scircuits.testing.conformance

The second form checks only the plugins named (as ``scircuits plugins`` lists them). The tests are
parametrised from the registries, so a newly registered plugin is checked without any edit here.
A benchmark that reads data files gets ``data=DIR/<its name>`` when ``SCIRCUITS_CONFORMANCE_DATA=DIR``
holds that folder; one whose data cannot be found here is skipped, with its own message as reason.

- SAE variants: build; a few training steps lower the loss; a checkpoint's save/load round trip is
  bit-exact; the SAELens architecture is declared (and is the module's).
- Model adapters: a tiny random model of the architecture splices exactly (SAE output plus error
  term gives the clean logits) at every site, through nnsight and through the fast split path.
- Benchmarks: ids are unique and the same for the same seed; an unknown split or option is refused
  with a ConfigError.
- Ablations: the output equals the input outside the indices, and the input is never modified.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import torch

from scircuits.errors import ConfigError, ScircuitsError
from scircuits.platform.contract.ablations import FeatureStats
from scircuits.platform.contract.sae_module import SparseAutoencoder
from scircuits.platform.manager.plugin_set import PluginSet, load_plugins
from scircuits.platform.model.scoring import make_batch
from scircuits.platform.model.sequences import EncodedSequence
from scircuits.platform.model.splice import SplitModel, clean_logits, nnsight_site_logits, spliced_output
from scircuits.platform.train.checkpoint import load_sae, save_sae
from scircuits.platform.train.training import SAETrainer
from scircuits.testing import tiny_loaded_model

PLUGINS_ENV = "SCIRCUITS_CONFORMANCE_PLUGINS"
DATA_ENV = "SCIRCUITS_CONFORMANCE_DATA"
SPLICE_TOLERANCE = 1e-5


@lru_cache(maxsize=1)
def plugin_set() -> PluginSet:
    return load_plugins()


def selected_plugins() -> set[str] | None:
    raw = os.environ.get(PLUGINS_ENV)
    return None if raw is None else {name.strip() for name in raw.split(",") if name.strip()}


def registered(family: str) -> list[Any]:
    """pytest params of every object of ``family`` registered by the selected plugins."""
    plugins = plugin_set()
    registry = plugins.registries[family]
    wanted = selected_plugins()
    return [
        pytest.param(obj, id=f"{registry.owner(obj.name)}:{obj.name}")
        for obj in registry
        if wanted is None or registry.owner(obj.name) in wanted
    ]


def test_the_selected_plugins_loaded():
    plugins = plugin_set()
    wanted = selected_plugins()
    failed = [p for p in plugins.failed() if wanted is None or p.name in wanted]
    assert not failed, "; ".join(f"{p.name}: {p.error}" for p in failed)
    if wanted is not None:
        assert wanted <= set(plugins.plugins), f"not installed: {sorted(wanted - set(plugins.plugins))}"


# -- SAE variants --------------------------------------------------------------------------------

D_IN, D_SAE = 16, 64


def planted_activations(n: int = 512, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative combinations of random unit atoms: data an SAE can learn quickly."""
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(32, D_IN, generator=generator)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, 32, generator=generator) < 0.1) * (0.5 + torch.rand(n, 32, generator=generator))
    return codes @ atoms + 0.01 * torch.randn(n, D_IN, generator=generator)


def trained(variant: Any, steps: int) -> tuple[SAETrainer, torch.Tensor, float, float]:
    """(trainer, data, loss before, loss after ``steps`` steps) on one planted batch."""
    torch.manual_seed(0)
    sae = variant.build(D_IN, D_SAE, dict(variant.validation_hparams))
    trainer = SAETrainer(sae, lr=1e-3, total_steps=max(steps, 1), warmup_steps=0, decay_fraction=0.0)
    x = planted_activations()
    trainer.initialize_from_sample(x)

    def loss() -> float:
        with torch.no_grad():
            return float(sae.train_forward(x.float() * trainer.scale).terms["loss"])

    before = loss()
    for _ in range(steps):
        trainer.train_step(x)
    return trainer, x, before, loss()


@pytest.mark.parametrize("variant", registered("saes"))
def test_sae_variant_builds_a_module_of_the_declared_architecture(variant):
    assert variant.saelens_architecture, f"{variant.name} declares no saelens_architecture"
    variant.parse_hparams(None)  # the defaults are valid
    variant.parse_hparams(dict(variant.validation_hparams))
    sae = variant.build(D_IN, D_SAE)
    assert isinstance(sae, SparseAutoencoder)
    assert (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
    assert sae.variant == variant.name, "the module's `variant` names the registered variant (checkpoints)"
    assert sae.saelens_architecture == variant.saelens_architecture
    x = planted_activations(8)
    features = sae.encode(x)
    assert features.shape == (8, D_SAE) and sae.decode(features).shape == (8, D_IN)
    out = sae.train_forward(x)
    assert "loss" in out.terms and out.terms["loss"].ndim == 0
    assert out.x_hat.shape == x.shape and out.fired.shape == (D_SAE,)


@pytest.mark.parametrize("variant", registered("saes"))
def test_sae_training_steps_lower_the_loss(variant):
    _, _, before, after = trained(variant, steps=20)
    assert after < before, f"{variant.name}: loss {before:.4g} -> {after:.4g} after 20 steps"


@pytest.mark.parametrize("variant", registered("saes"))
def test_sae_checkpoint_round_trip_is_bit_exact(variant, tmp_path):
    trainer, x, _, _ = trained(variant, steps=5)
    sae = trainer.folded_copy()
    save_sae(tmp_path, sae, cfg={}, scircuits_meta={})
    loaded, info = load_sae(tmp_path, plugin_set())
    assert info["variant"] == variant.name and type(loaded) is type(sae)
    saved = sae.saelens_tensors()
    again = loaded.saelens_tensors()
    assert saved.keys() == again.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, again[name]), name
    with torch.no_grad():
        assert torch.equal(sae.encode(x), loaded.encode(x))
        assert torch.equal(sae(x), loaded(x))


# -- model adapters ------------------------------------------------------------------------------


class _ReluSAE(SparseAutoencoder):
    variant = "conformance-relu"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activation(x))


def _random_sae(d_in: int) -> _ReluSAE:
    torch.manual_seed(0)
    sae = _ReluSAE(d_in, 4 * d_in)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def _padded_batch():
    sequences = [
        EncodedSequence(tuple(range(5, 19)), 9),
        EncodedSequence(tuple(range(30, 37)), 4),
        EncodedSequence(tuple(range(60, 71)), 7),
    ]
    return make_batch(sequences, pad_id=0)


@pytest.mark.parametrize("adapter", registered("models"))
def test_model_adapter_splices_exactly_at_every_site(adapter):
    try:
        loaded = tiny_loaded_model(adapter)
    except ConfigError as exc:  # e.g. a prefix handler (hf:) that needs a repository first
        pytest.skip(f"{adapter.name} has no tiny model: {exc}")
    sae = _random_sae(loaded.d_model)
    batch = _padded_batch()
    mask = batch.attention_mask.bool()
    clean = clean_logits(loaded, batch)
    for site in loaded.adapter.site_paths:
        for layer in (0, loaded.n_layers - 2):
            traced = nnsight_site_logits(loaded, layer, site, batch, lambda x: spliced_output(sae, x))
            assert float((traced - clean)[mask].abs().max()) < SPLICE_TOLERANCE, (site, layer)
            split = SplitModel(loaded, layer, site)
            cache = split.lower(batch)
            with torch.no_grad():
                fast = split.upper(batch, cache, spliced_output(sae, cache.site_output), all_positions=True)
            assert float((fast - traced)[mask].abs().max()) < SPLICE_TOLERANCE, (site, layer)
            zeroed = nnsight_site_logits(loaded, layer, site, batch, torch.zeros_like)
            assert float((zeroed - clean)[mask].abs().max()) > 1e-3, f"editing {site}{layer} changes nothing"


# -- benchmarks ----------------------------------------------------------------------------------


def _data_options(benchmark: Any) -> dict[str, str] | None:
    root = os.environ.get(DATA_ENV)
    if not root or "data" not in benchmark.Options.model_fields:
        return None
    folder = Path(root) / benchmark.name
    return {"data": str(folder)} if folder.exists() else None


@pytest.mark.parametrize("benchmark", registered("benchmarks"))
def test_benchmark_ids_are_unique_and_deterministic(benchmark):
    assert benchmark.splits, f"{benchmark.name} declares no split"
    options = _data_options(benchmark)
    checked, unavailable = [], []
    for split in benchmark.splits:
        try:
            first = list(benchmark.examples(split, 20, 0, options))
        except ScircuitsError as exc:  # its data is not here: the benchmark's message says where to get it
            unavailable.append(f"{split}: {exc}")
            continue
        assert first, f"{benchmark.name}: no examples in split {split!r}"
        ids = [e.id for e in first]
        assert len(set(ids)) == len(ids), f"{benchmark.name}/{split}: duplicate ids"
        again = list(benchmark.examples(split, 20, 0, options))
        assert first == again, f"{benchmark.name}/{split}: not deterministic"
        checked.append(split)
    if not checked:
        pytest.skip(f"{benchmark.name}: no split's data found here ({'; '.join(unavailable)})")


@pytest.mark.parametrize("benchmark", registered("benchmarks"))
def test_benchmark_refuses_an_unknown_split_and_option(benchmark):
    with pytest.raises(ConfigError):
        benchmark.check_split("no-such-split")
    with pytest.raises(ConfigError):
        benchmark.parse_options({"no_such_option": 1})


# -- ablations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", registered("ablations"))
def test_ablation_is_identity_outside_the_indices_and_never_in_place(ablation):
    generator = torch.Generator().manual_seed(0)
    d_sae = 12
    acts = torch.rand(2, 5, d_sae, generator=generator) * (torch.rand(2, 5, d_sae, generator=generator) > 0.5)
    stats = FeatureStats(mean=acts.mean(dim=(0, 1)), samples=acts.reshape(-1, d_sae))
    indices = torch.tensor([1, 4, 7])
    before = acts.clone()
    out = ablation.apply(acts, indices, stats, ablation.parse_options(None), torch.Generator().manual_seed(1))
    assert torch.equal(acts, before), f"{ablation.name} modified its input in place"
    assert out.shape == acts.shape and out.dtype == acts.dtype
    others = torch.ones(d_sae, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(out[..., others], acts[..., others]), f"{ablation.name} changed other features"
