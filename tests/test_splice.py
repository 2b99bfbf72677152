"""The SAE splice: exact with its error term (nnsight), and the fast split path equal to nnsight."""

from __future__ import annotations

import pytest
import torch

from scircuits.platform.contract.sae_module import SparseAutoencoder
from scircuits.platform.model.scoring import make_batch
from scircuits.platform.model.sequences import EncodedSequence
from scircuits.platform.model.splice import SplitModel, clean_logits, nnsight_site_logits, spliced_output
from scircuits.testing import tiny_loaded_model

ARCHITECTURES = [
    "smollm2-135m",
    "gpt2-medium",
    "pythia-1.4b",
    "gemma-2b",
    "phi-2",
    "llama-3-8b",
    "mistral-7b",
]


class ReluSAE(SparseAutoencoder):
    variant = "relu-test"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activation(x))


def random_sae(d_in: int, seed: int = 0, expansion: int = 4) -> ReluSAE:
    torch.manual_seed(seed)
    sae = ReluSAE(d_in, expansion * d_in)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def padded_batch():
    seqs = [
        EncodedSequence(tuple(range(5, 19)), 9),
        EncodedSequence(tuple(range(30, 37)), 4),
        EncodedSequence(tuple(range(60, 71)), 7),
    ]
    return make_batch(seqs, pad_id=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_splice_with_error_term_reproduces_clean_logits_and_fast_path_matches_nnsight(architecture):
    loaded = tiny_loaded_model(architecture)
    sae = random_sae(loaded.d_model)
    batch = padded_batch()
    mask = batch.attention_mask.bool()
    clean = clean_logits(loaded, batch)
    for site in ("resid", "mlp", "attn"):
        for layer in (0, loaded.n_layers - 2):
            traced = nnsight_site_logits(loaded, layer, site, batch, lambda x: spliced_output(sae, x))
            assert float((traced - clean)[mask].abs().max()) < 1e-5, (site, layer)
            split = SplitModel(loaded, layer, site)
            cache = split.lower(batch)
            with torch.no_grad():
                fast = split.upper(batch, cache, spliced_output(sae, cache.site_output), all_positions=True)
                fast_zero = split.upper(batch, cache, torch.zeros_like(cache.site_output), all_positions=True)
            assert float((fast - traced)[mask].abs().max()) < 1e-5, (site, layer)
            # an edit that really changes the model: zeroing the site, both ways
            traced_zero = nnsight_site_logits(loaded, layer, site, batch, torch.zeros_like)
            assert float((fast_zero - traced_zero)[mask].abs().max()) < 1e-5, (site, layer)
            assert float((traced_zero - clean)[mask].abs().max()) > 1e-3


def test_reconstruction_without_error_term_differs_and_model_is_restored():
    loaded = tiny_loaded_model("smollm2-135m")
    sae = random_sae(loaded.d_model)
    batch = padded_batch()
    mask = batch.attention_mask.bool()
    clean = clean_logits(loaded, batch)
    split = SplitModel(loaded, 2, "resid")
    cache = split.lower(batch)
    with torch.no_grad():
        recon = split.upper(
            batch, cache, spliced_output(sae, cache.site_output, error_term=False), all_positions=True
        )
    traced = nnsight_site_logits(
        loaded, 2, "resid", batch, lambda x: spliced_output(sae, x, error_term=False)
    )
    assert float((recon - traced)[mask].abs().max()) < 1e-5
    assert float((recon - clean)[mask].abs().max()) > 1e-3
    # the blocks swapped out for the fast path are back: the plain model is untouched
    assert float((clean_logits(loaded, batch) - clean).abs().max()) == 0.0
    assert all(type(b).__name__ != "_PassThrough" for b in split.blocks)


def test_upper_at_target_positions_equals_full_logits_there():
    loaded = tiny_loaded_model("gpt2-medium")
    batch = padded_batch()
    split = SplitModel(loaded, 1, "resid")
    cache = split.lower(batch)
    with torch.no_grad():
        full = split.upper(batch, cache, cache.site_output, all_positions=True)
        targets = split.upper(batch, cache, cache.site_output)
    assert torch.allclose(full[batch.pred_rows, batch.pred_cols], targets, atol=1e-6)


def test_gradient_flows_to_the_site_value():
    loaded = tiny_loaded_model("smollm2-135m")
    batch = padded_batch()
    split = SplitModel(loaded, 1, "mlp")
    cache = split.lower(batch)
    value = cache.site_output.clone().requires_grad_(True)
    split.upper(batch, cache, value).logsumexp(-1).sum().backward()
    assert value.grad is not None and float(value.grad.abs().sum()) > 0


@pytest.mark.slow
def test_splice_is_exact_on_smollm2(smollm2):
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.model.scoring import layout_examples

    examples = list(get_plugins().benchmarks.get("arithmetic").examples("test", 4, 0, {}))
    sequences, _ = layout_examples(smollm2.tokenizer, examples)
    batch = make_batch(sequences, pad_id=smollm2.tokenizer.pad_token_id or 0)
    mask = batch.attention_mask.bool()
    sae = random_sae(smollm2.d_model, expansion=2)
    layer = 15
    clean = clean_logits(smollm2, batch)
    traced = nnsight_site_logits(smollm2, layer, "resid", batch, lambda x: spliced_output(sae, x))
    assert float((traced - clean)[mask].abs().max()) < 1e-3
    split = SplitModel(smollm2, layer, "resid")
    cache = split.lower(batch)
    with torch.no_grad():
        fast = split.upper(batch, cache, spliced_output(sae, cache.site_output), all_positions=True)
    assert float((fast - traced)[mask].abs().max()) < 1e-3


def test_model_specific_behaviour_comes_from_the_adapter():
    """The split model asks the adapter (not the model class) for the softcap and the final norm."""
    import dataclasses

    loaded = tiny_loaded_model("smollm2-135m")

    @dataclasses.dataclass(eq=False)
    class Capped(type(loaded.adapter)):
        def logit_softcap(self, model):
            return 0.5

        def final_norm(self, model):
            return None

    loaded.adapter = Capped(
        **{f.name: getattr(loaded.adapter, f.name) for f in dataclasses.fields(loaded.adapter)}
    )
    split = SplitModel(loaded, 1, "resid")
    batch = padded_batch()
    cache = split.lower(batch)
    with torch.no_grad():
        logits = split.upper(batch, cache, cache.site_output, all_positions=True)
    assert float(logits.abs().max()) <= 0.5
    assert split.final_norm() is None
    directions = torch.randn(3, loaded.d_model)
    assert torch.equal(split.through_final_norm(directions), directions)


def test_unembedding_extremes_of_a_vocabulary_smaller_than_asked():
    """A synthetic task's model may have fewer tokens than the report's top 10 logit effects."""
    loaded = tiny_loaded_model("gpt2-medium")
    split = SplitModel(loaded, 1, "resid")
    split.unembed = torch.nn.Linear(loaded.d_model, 7, bias=False)
    top, top_ids, bottom, _ = split.unembedding_extremes(torch.randn(3, loaded.d_model), 10)
    assert top.shape == bottom.shape == (3, 7)
    assert sorted(top_ids[0].tolist()) == list(range(7))


def test_an_answer_the_tokenizer_cannot_write_is_refused_naming_the_example():
    from scircuits import ConfigError, Example
    from scircuits.platform.model.sequences import encode_choices, encode_example

    class WordTokenizer:
        unk_token, unk_token_id = "<unk>", 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [{"a": 1, "b": 2, "=": 3}.get(w, 0) for w in text.split()]}

    tokenizer = WordTokenizer()
    assert encode_example(tokenizer, Example(id="ok", prompt="a =", target=" b")).input_ids == (1, 3, 2)
    with pytest.raises(ConfigError, match=r"example 'x': the answer ' é中' encodes to the tokenizer's unk"):
        encode_example(tokenizer, Example(id="x", prompt="a =", target=" é中"))
    with pytest.raises(ConfigError, match=r"example 'y': the answer ' ' encodes to no tokens"):
        encode_choices(tokenizer, Example(id="y", prompt="a =", target=" "))
