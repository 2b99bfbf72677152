"""The splice check that can fail: on the real SmolLM2, an SAE fitted to layer L reconstructs layer L
and is refused at L - 1 and L + 1 (its error grows far beyond what it had where it was fitted), a
random SAE is refused everywhere, and the fast path is compared with nnsight under a real edit.

The SAE is fitted in seconds without training: b_dec is the mean of the layer's activations and the
latents are ± the top principal directions (relu(p·x) − relu(−p·x) = p·x), so it reconstructs the
mean and the top of the layer's spectrum, and nothing of the other layers that it was not fitted to.
"""

from __future__ import annotations

import json

import pytest
import torch

from scircuits.platform.causal.stage import AblateInputs, run_ablate
from scircuits.platform.config import AblateConfig
from scircuits.platform.contract.sae_module import SparseAutoencoder
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.platform.model.scoring import layout_examples, make_batch
from scircuits.platform.model.splice import SplitModel
from scircuits.platform.train.metrics import ReconstructionStats

LAYER = 15


class PlusMinusSAE(SparseAutoencoder):
    variant = "plus-minus-test"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activation(x))


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points_too=False)


@pytest.fixture(scope="module")
def examples(plugins):
    return list(plugins.benchmarks.get("arithmetic").examples("test", 12, 0, {}))


def activations(loaded, examples, layer: int) -> torch.Tensor:
    sequences, _ = layout_examples(loaded.tokenizer, examples, None)
    batch = make_batch(sequences, loaded.tokenizer.pad_token_id or 0)
    x = SplitModel(loaded, layer, "resid").lower(batch).site_output
    return x[batch.attention_mask.bool()].float()


def fitted_sae(x: torch.Tensor, directions: int = 96) -> PlusMinusSAE:
    mean = x.mean(dim=0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    p = v[:directions]  # (m, d)
    sae = PlusMinusSAE(x.shape[1], 2 * directions)
    with torch.no_grad():
        sae.b_dec.copy_(mean)
        sae.b_enc.zero_()
        sae.W_enc.copy_(torch.cat([p, -p]).T)
        sae.W_dec.copy_(torch.cat([p, -p]))
    return sae.eval()


def relative_error(sae, x: torch.Tensor) -> float:
    stats = ReconstructionStats(d_sae=sae.d_sae)
    with torch.no_grad():
        f = sae.encode(x)
        stats.update(x, sae.decode(f), f)
    return stats.result()["relative_error"]


def ablate(loaded, sae, examples, plugins, tmp_path, layer: int, training_error: float | None, **meta):
    config = AblateConfig(
        sae="fitted",
        model="smollm2-135m",
        out=str(tmp_path / f"causal-{layer}"),
        top_k=[1],
        random_controls=0,
        exact_top=0,
        faithfulness_n=[1],
        sweep_also=[],
        bootstrap=100,
        splice_check_examples=2,
        progress=False,
        layer=layer,
    )
    # as load_sae gives it: scircuits.json under "meta"
    info = {} if training_error is None else {"meta": {"metrics": {"relative_error": training_error}, **meta}}
    return run_ablate(config, plugins, inputs=AblateInputs(loaded, sae, info, examples, layer))


def test_an_sae_fitted_to_one_layer_is_refused_at_the_next_and_the_previous(
    smollm2, examples, plugins, tmp_path
):
    from scircuits.plugins.analyses.baseline import ReconstructionGateError

    x = activations(smollm2, examples, LAYER)
    sae = fitted_sae(x)
    own = relative_error(sae, x)
    assert own < 0.05  # it does reconstruct its own layer

    out = ablate(smollm2, sae, examples, plugins, tmp_path, LAYER, own)

    result = json.loads((out / "results.json").read_text())
    gate, splice = result["gate"], result["splice"]
    assert gate["passed"] and gate["error_growth"] < 3
    # the fast path agrees with nnsight when features are edited, not only for the identity
    assert splice["edited_fast_path_max_abs_diff"] <= splice["tolerance"]
    # the behaviour change is the reconstruction against the clean model on the same examples
    behaviour, recon, clean = result["behaviour"], result["reconstruction"], result["baseline"]
    assert behaviour["accuracy_delta"] == pytest.approx(recon["accuracy"] - clean["accuracy"])
    assert behaviour["logprob_delta"] == pytest.approx(recon["logprob"] - clean["logprob"])

    for layer in (LAYER - 1, LAYER + 1):
        with pytest.raises(ReconstructionGateError, match=r"(?s)x the .* training store.*--layer"):
            ablate(smollm2, sae, examples, plugins, tmp_path, layer, own)
        assert not (tmp_path / f"causal-{layer}").exists()  # nothing half-written


def test_a_random_sae_is_refused(smollm2, examples, plugins, tmp_path):
    from scircuits.plugins.analyses.baseline import ReconstructionGateError

    torch.manual_seed(0)
    sae = PlusMinusSAE(smollm2.d_model, 4 * smollm2.d_model).eval()
    with pytest.raises(ReconstructionGateError, match=r"relative error .* --max-relative-error"):
        ablate(smollm2, sae, examples, plugins, tmp_path, LAYER, None)


def test_the_study_scores_the_tokens_the_training_kept(smollm2, examples, plugins, tmp_path):
    """A checkpoint that recorded a token exclusion (position 0 a sink, a norm cut) is scored on the
    same tokens by the study; every token is still spliced, and the all-token figures are kept beside."""
    from scircuits.platform.train.exclusion import TokenExclusion

    sequences, _ = layout_examples(smollm2.tokenizer, examples, None)
    batch = make_batch(sequences, smollm2.tokenizer.pad_token_id or 0)
    x_all = SplitModel(smollm2, LAYER, "resid").lower(batch).site_output
    real = batch.attention_mask.bool()
    first = real & (batch.position_ids == 0)
    norms = x_all.float().norm(dim=-1)
    median = float(norms[real & ~first].median())
    rule = TokenExclusion(
        rule="outliers", factor=10, median_norm=median, norm_cutoff=10 * median, position0=True, rows=0
    )
    kept = real & rule.kept(x_all, batch.position_ids)
    assert int(first.sum()) == len(examples) and not (kept & first).any()
    x, x_kept = x_all[real].float(), x_all[kept].float()
    sae = fitted_sae(x_kept)
    own = relative_error(sae, x_kept)
    out = ablate(smollm2, sae, examples, plugins, tmp_path, LAYER, own, token_exclusion=rule.model_dump())
    result = json.loads((out / "results.json").read_text())
    metrics = result["sae_metrics_eval"]
    assert metrics["tokens"] == int(kept.sum()) and metrics["tokens_excluded"] == int((real & ~kept).sum())
    assert metrics["relative_error"] == pytest.approx(own, rel=1e-3)
    assert metrics["relative_error_all_tokens"] == pytest.approx(relative_error(sae, x), rel=1e-3)
    assert result["gate"]["passed"] and result["gate"]["error_growth"] == pytest.approx(1.0, rel=1e-2)
    assert result["splice"]["max_abs_logit_diff"] <= result["splice"]["tolerance"]  # every token spliced
    # reconstruction alone replaces only the kept tokens: the sinks it was not fitted to stay clean
    assert result["reconstruction"]["ce_loss_recovered"] > 0.9
