"""The causal study on tiny models: attribution against exact ablation, results.json, the guards."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scircuits.platform.causal.evaluation import prepare_eval
from scircuits.platform.causal.stage import AblateInputs, resolve_layer, run_ablate
from scircuits.platform.causal.statistics import control_draws, spearman
from scircuits.platform.causal.study import Study, feature_statistics
from scircuits.platform.config import AblateConfig
from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.sae_module import SparseAutoencoder
from scircuits.platform.manager.plugin_set import get_plugins, load_plugins
from scircuits.platform.model.scoring import GOLD_LOGPROB
from scircuits.platform.model.splice import SpliceError, SplitModel
from scircuits.testing import tiny_loaded_model


class ReluSAE(SparseAutoencoder):
    variant = "relu-test"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activation(x))


@pytest.fixture(scope="module")
def tiny():
    return tiny_loaded_model("smollm2-135m")


@pytest.fixture(scope="module")
def examples():
    return list(get_plugins().benchmarks.get("arithmetic").examples("test", 12, 0, {}))


def constant_feature_sae(d_in: int, norms: list[float], seed: int = 0) -> ReluSAE:
    """Every feature is 1 on every token (no encoder weights, bias 1); feature i writes a random
    direction of norm ``norms[i]``: zero-ablating it moves the residual by exactly that vector."""
    torch.manual_seed(seed)
    sae = ReluSAE(d_in, len(norms))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(1.0)
        sae.b_dec.zero_()
        directions = torch.randn(len(norms), d_in)
        directions /= directions.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(directions * torch.tensor(norms)[:, None])
    return sae.eval()


def test_attribution_agrees_with_exact_ablation_in_sign_and_rank(tiny, examples):
    norms = [0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05]  # small: the linear regime
    sae = constant_feature_sae(tiny.d_model, norms)
    split = SplitModel(tiny, tiny.n_layers - 2, "resid")
    data = prepare_eval(split, sae, tiny.tokenizer, examples, batch_size=6, max_length=None)
    stats, _, _, _ = feature_statistics(data)
    zero = get_plugins().ablations.get("zero")
    study = Study(split, sae, data, zero, None, stats, seed=0)
    attribution = study.attribution()
    spliced = study.run("splice")
    exact = np.array(
        [
            study.run("splice", study.ablate_edit([i], tag=i)).mean_logprob - spliced.mean_logprob
            for i in range(len(norms))
        ]
    )
    assert np.all(np.abs(exact) > 1e-6)  # every feature matters a little
    assert np.array_equal(np.sign(attribution), np.sign(exact))
    assert spearman(attribution, exact) >= 0.9
    assert int(np.argmin(attribution)) == int(np.argmin(exact))  # the same most harmful feature
    np.testing.assert_allclose(attribution, exact, rtol=0.3, atol=1e-3)  # first order: close, not equal


def test_attribution_predicts_the_effect_of_a_feature_along_the_target_direction(tiny, examples):
    """At the last block, a feature writing along +W_U[t] - mean raises the target's log-prob where t is
    the target, so ablating it must lower the log-prob: attribution and exact both negative."""
    split = SplitModel(tiny, tiny.n_layers - 1, "resid")
    tokens = [tiny.tokenizer(e.target, add_special_tokens=False)["input_ids"][0] for e in examples]
    target = max(set(tokens), key=tokens.count)
    chosen = [e for e, t in zip(examples, tokens, strict=False) if t == target]
    unembed = split.unembed.weight.detach()
    direction = unembed[target] - unembed.mean(0)
    sae = constant_feature_sae(tiny.d_model, [0.1, 0.1])
    with torch.no_grad():
        sae.W_dec[0] = 0.05 * direction / direction.norm()
        sae.W_dec[1] = -0.05 * direction / direction.norm()
    data = prepare_eval(split, sae, tiny.tokenizer, chosen, batch_size=8, max_length=None)
    stats, _, _, _ = feature_statistics(data)
    study = Study(split, sae, data, get_plugins().ablations.get("zero"), None, stats, seed=0)
    attribution = study.attribution()
    base = study.run("splice")
    exact = [
        study.run("splice", study.ablate_edit([i], tag=i)).mean_logprob - base.mean_logprob for i in (0, 1)
    ]
    assert attribution[0] < 0 < attribution[1]
    assert exact[0] < 0 < exact[1]


def multiple_choice(examples, distractor):
    """The arithmetic examples as two-way multiple choice: the gold answer first, then ``distractor(e)``."""
    return [
        Example(e.id, e.prompt, e.target, (e.target, distractor(e)), 0, e.meta, e.delimiter) for e in examples
    ]


def mc_study(tiny, examples, norms):
    sae = constant_feature_sae(tiny.d_model, norms)
    split = SplitModel(tiny, tiny.n_layers - 2, "resid")
    data = prepare_eval(split, sae, tiny.tokenizer, examples, batch_size=6, max_length=None)
    stats, _, _, _ = feature_statistics(data)
    return Study(split, sae, data, get_plugins().ablations.get("zero"), None, stats, seed=0)


def test_multiple_choice_attribution_differentiates_the_margin_not_the_gold_log_prob(tiny, examples):
    """With the distractor equal to the gold choice the margin is 0 whatever the features do: its
    attribution is 0, though the gold log-prob alone moves when a feature is ablated."""
    norms = [0.01, 0.03, 0.05]
    same = mc_study(tiny, multiple_choice(examples, lambda e: e.target), norms)
    spliced = same.run("splice")
    assert np.all(spliced.logprob == 0.0) and not spliced.correct.any()  # a tie is not correct
    np.testing.assert_allclose(same.attribution(), 0.0, atol=1e-7)  # float32 noise only
    gold_only = mc_study(tiny, examples, norms)  # free-form: the gold log-prob, which does move
    assert np.all(np.abs(gold_only.attribution()) > 1e-4)


def test_multiple_choice_attribution_agrees_with_the_exact_margin_change(tiny, examples):
    norms = [0.001, 0.002, 0.005, 0.01, 0.015, 0.02]  # small: the linear regime
    study = mc_study(tiny, multiple_choice(examples, lambda e: f" {int(e.target) + 1}"), norms)
    attribution = study.attribution()
    spliced = study.run("splice")
    exact = np.array(
        [
            study.run("splice", study.ablate_edit([i], tag=i)).mean_logprob - spliced.mean_logprob
            for i in range(len(norms))
        ]
    )
    assert np.all(np.abs(exact) > 1e-7)
    assert np.array_equal(np.sign(attribution), np.sign(exact))
    np.testing.assert_allclose(attribution, exact, rtol=0.3, atol=1e-4)


def test_control_draws_are_seeded_active_and_outside_the_top_k():
    active = np.zeros(100, dtype=bool)
    active[::2] = True
    ranked = list(range(0, 100, 2))
    draws = control_draws(5, ranked, active, draws=4, seed=3)
    assert draws == control_draws(5, ranked, active, draws=4, seed=3)
    assert draws != control_draws(5, ranked, active, draws=4, seed=4)
    for features in draws:
        assert len(features) == 5 and len(set(features)) == 5
        assert all(active[f] and f not in ranked[:5] for f in features)


def small_config(tmp_path, **overrides) -> AblateConfig:
    values = dict(
        sae="",
        out=str(tmp_path / "causal"),
        top_k=[1, 3],
        random_controls=2,
        exact_top=4,
        faithfulness_n=[1, 2, 4],
        bootstrap=200,
        progress=False,
        layer=2,
        reconstruction_gate=False,  # random SAEs on a tiny model, on purpose
    )
    values.update(overrides)
    return AblateConfig(**values)


def test_run_ablate_writes_results_with_the_documented_keys(tiny, examples, tmp_path):
    torch.manual_seed(0)
    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    builtins_only = load_plugins(entry_points_too=False)  # installed plugins may add analyses
    out = run_ablate(small_config(tmp_path), builtins_only, inputs=AblateInputs(tiny, sae, {}, examples, 2))
    results = json.loads((out / "results.json").read_text())
    assert results["splice"]["max_abs_logit_diff"] < 1e-4
    for key in ("accuracy", "logprob"):
        assert key in results["baseline"] and key in results["reconstruction"]
    assert "ce_loss_recovered" in results["reconstruction"]
    assert [s["k"] for s in results["sweeps"]] == [1, 3]
    for sweep in results["sweeps"]:
        for key in ("ablation", "accuracy_delta", "accuracy_ci", "logprob_delta", "logprob_ci"):
            assert key in sweep and key in (sweep["control"] if "delta" in key or "ci" in key else sweep)
        assert sweep["logprob_ci"][0] <= sweep["logprob_delta"] <= sweep["logprob_ci"][1]
        assert len(sweep["control"]["draws"]) == 2
    features = results["features"]
    assert len(features) >= 4
    for feature in features:
        for key in (
            "id",
            "attribution",
            "exact_logprob_delta",
            "exact_accuracy_delta",
            "top_tokens",
            "promoted",
            "suppressed",
        ):
            assert key in feature
    assert all(f["exact_logprob_delta"] is not None for f in features[:4])
    assert len(features[0]["promoted"]) == 10 and features[0]["top_tokens"]
    assert results["attribution_vs_exact_spearman"] is not None
    assert [p["n"] for p in results["faithfulness"]] == [1, 2, 4]
    for section in ("model", "sae", "benchmark"):
        assert section in results["provenance"]
    assert results["provenance"]["model"]["revision"] == "tiny-random-seed0"
    assert results["schema_version"] == 2
    assert results["analyses"] == [
        "baseline",
        "ranking",
        "sweeps",
        "exact",
        "faithfulness",
        "logit_effects",
        "features",
        "ground-truth",
        "probes",
    ]
    assert results["ground_truth"] is None  # a benchmark without per-token variables
    assert results["probes"] is None
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(rows) == len(examples) and {
        "clean",
        "splice",
        "top1",
        "feature" + str(features[0]["id"]),
    } <= set(next(row for row in rows if row["evaluation"])["scores"])
    assert results["score"] == GOLD_LOGPROB  # free-form examples: the gold log-prob
    # accuracy apart for examples whose answer is in the prompt, as examples.jsonl gives it for the
    # evaluation examples (its last n_evaluation rows: the study puts the selection split first)
    marked = {e.id: e.meta["answer_in_prompt"] for e in examples}
    evaluated = rows[-results["evaluation_split"]["n_evaluation"] :]
    split = results["accuracy_by_answer_in_prompt"]
    for inside, key in ((True, "in_prompt"), (False, "not_in_prompt")):
        group = [r for r in evaluated if marked[r["id"]] is inside]
        assert split[f"n_{key}"] == len(group) > 0
        for condition in ("clean", "splice"):
            expected = np.mean([r["scores"][condition]["correct"] for r in group])
            assert split[f"{condition}_{key}"] == pytest.approx(expected)


def test_a_splice_that_changes_the_logits_stops_the_stage(tiny, examples, tmp_path, monkeypatch):
    import scircuits.platform.causal.study as causal

    def without_error_term(sae, x, edit=None, error_term=True):
        return sae.decode(sae.encode(x))

    monkeypatch.setattr(causal, "spliced_output", without_error_term)
    torch.manual_seed(0)
    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    with pytest.raises(SpliceError, match="does not reproduce the clean model"):
        run_ablate(small_config(tmp_path), get_plugins(), inputs=AblateInputs(tiny, sae, {}, examples[:4], 2))
    assert not (tmp_path / "causal" / "results.json").exists()


def test_a_nan_splice_fails_the_check(tiny, examples, tmp_path):
    from scircuits.platform.causal.study import worst_of

    assert math.isnan(worst_of(0.0, float("nan"))) and math.isnan(worst_of(float("nan"), 1.0))
    torch.manual_seed(0)
    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    with torch.no_grad():
        sae.W_dec[0].fill_(float("nan"))
        sae.b_enc.fill_(1.0)  # every latent fires, so the NaN row reaches the output
    with pytest.raises(SpliceError, match="nan"):
        run_ablate(small_config(tmp_path), get_plugins(), inputs=AblateInputs(tiny, sae, {}, examples[:4], 2))
    assert not (tmp_path / "causal" / "results.json").exists()


def test_layer_must_match_the_layer_the_sae_was_trained_on(tiny):
    info = {"meta": {"store": {"attrs": {"layer": 1, "site": "resid"}}}}
    assert resolve_layer(AblateConfig(), tiny, info) == 1
    with pytest.raises(ConfigError, match="trained on layer 1"):
        resolve_layer(AblateConfig(layer=2), tiny, info)
    assert resolve_layer(AblateConfig(), tiny, {}) == tiny.n_layers // 2


def test_positions_before_edit_from_position_are_left_unedited(tiny, examples):
    torch.manual_seed(0)
    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    split = SplitModel(tiny, 2, "resid")
    data = prepare_eval(split, sae, tiny.tokenizer, examples[:4], batch_size=4, max_length=None)
    stats, _, _, _ = feature_statistics(data, first_position=1)
    study = Study(
        split, sae, data, get_plugins().ablations.get("zero"), None, stats, seed=0, first_position=1
    )
    eb = data.batches[0]
    with torch.no_grad():
        spliced = study.site_value(eb, "splice", None)
        ablated = study.site_value(eb, "splice", study.ablate_edit(range(sae.d_sae), tag=0)(0))
    assert torch.equal(ablated[:, 0], spliced[:, 0])
    assert not torch.allclose(ablated[:, 1:], spliced[:, 1:])


def test_the_final_norm_gain_is_read_from_the_norm_itself_exactly():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from scircuits.platform.contract.models import norm_gain

    torch.manual_seed(0)
    llama, gemma = LlamaRMSNorm(16, eps=1e-5), GemmaRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        llama.weight.normal_()
        gemma.weight.normal_()
    assert torch.equal(norm_gain(llama, 16), llama.weight.float())
    assert torch.equal(norm_gain(gemma, 16), 1.0 + gemma.weight.float())  # Gemma scales by 1 + weight


def test_an_edit_from_position_past_every_evaluation_example_is_refused_before_any_work(tiny, examples):
    from scircuits.platform.causal.runner import prepare_study

    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    config = AblateConfig(layer=2, progress=False, reconstruction_gate=False, edit_from_position=1000)
    with pytest.raises(
        ConfigError,
        match=r"--edit-from-position 1000 is beyond the longest evaluation example \(\d+ tokens\)",
    ):
        prepare_study(config, tiny, sae, examples[:8], 2, get_plugins())
