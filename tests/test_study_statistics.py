"""The study's statistics wired in: matched controls and the paired test in results.json, the
selection / evaluation split, the attribution position mask and exact-valued CE loss recovered and
faithfulness on constructed SAEs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scircuits import adjusted_contrast
from scircuits.platform.causal.evaluation import group_batches, prepare_eval
from scircuits.platform.causal.stage import AblateInputs, run_ablate
from scircuits.platform.causal.statistics import Bootstrap, selection_split
from scircuits.platform.causal.study import Study, feature_statistics
from scircuits.platform.config import AblateConfig
from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.contract.sae_module import SparseAutoencoder
from scircuits.platform.manager.plugin_set import get_plugins, load_plugins
from scircuits.platform.model.scoring import layout_examples
from scircuits.platform.model.splice import SplitModel
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


def config(tmp_path, **overrides) -> AblateConfig:
    values = dict(
        sae="",
        out=str(tmp_path / "causal"),
        top_k=[1, 3],
        random_controls=4,
        exact_top=4,
        faithfulness_n=[1, 2],
        bootstrap=200,
        progress=False,
        layer=2,
        reconstruction_gate=False,  # random and constructed SAEs on a tiny model, on purpose
    )
    values.update(overrides)
    return AblateConfig(**values)


def run(tiny, examples, tmp_path, sae, **overrides) -> dict:
    builtins_only = load_plugins(entry_points_too=False)
    out = run_ablate(
        config(tmp_path, **overrides), builtins_only, inputs=AblateInputs(tiny, sae, {}, examples, 2)
    )
    return json.loads((out / "results.json").read_text()), out


def random_sae(d: int, seed: int = 0) -> ReluSAE:
    torch.manual_seed(seed)
    return ReluSAE(d, 4 * d).eval()


def test_results_hold_control_ids_paired_intervals_p_values_and_the_split(tiny, examples, tmp_path):
    results, out = run(tiny, examples, tmp_path, random_sae(tiny.d_model))
    split = results["evaluation_split"]
    assert split["n_selection"] + split["n_evaluation"] == len(examples) == results["n_examples"]
    assert split["n_selection"] == 6 and split["method"].startswith("held-out")
    info = results["significance"]
    # R = 4: the exact p is at least 1/5, so no call is possible at all
    assert info["n_controls"] == 4 and info["attainable"] is False
    assert info["basis"] == "permutation" and info["procedure"] == "fixed-sequence"
    # the tiny random model never answers: accuracy is undefined, and says so
    capability = results["capability"]
    assert capability["clean_accuracy"] == 0.0 and capability["capable"] is False
    assert "cannot do this benchmark" in capability["note"] and info["accuracy_defined"] is False
    excluded = results["rank"]["top"][: 2 * 3]  # the study's own top 2 x max(top_k)
    for sweep in results["sweeps"]:
        k, sets = sweep["k"], sweep["control_sets"]
        assert len(sets["features"]) == 4 and len(sets["bands"]) == 4
        members = [f for ids in sets["features"] for f in ids]
        assert len(members) == len(set(members)) == 4 * k == sets["distinct"]  # none twice within a k
        assert not set(members) & set(excluded) and sets["excluded"] == 6 - k
        assert sets["median_frequency_ratio"] > 0 and sets["median_size_ratio"] > 0
        for ids in sets["features"]:
            assert len(ids) == len(set(ids)) == k and not set(ids) & set(sweep["features"])
        assert sweep["significant_accuracy"] is None and sweep["test_accuracy"]["significant"] is None
        for metric in ("logprob", "accuracy"):
            test = sweep[f"test_{metric}"]
            d = test["difference"]
            assert d["low"] <= d["mean"] <= d["high"] and d["n_examples"] == split["n_evaluation"]
            assert test["p_value"] in {j / 5 for j in range(1, 6)}
            assert test["basis"] == "permutation" and test["p_value"] <= test["p_adjusted"] <= 1
            assert test["p_normal"] is None and test["p_holm"] is None
            assert len(test["control_effects"]) == 4
            assert isinstance(sweep[f"marginal_disjoint_{metric}"], bool)
            # the top effect is the mean of the held-out per-example deltas
            assert test["top_effect"] == pytest.approx(sweep[f"{metric}_delta"])
        assert sweep["significant_logprob"] is False
        # 4 sets are too few for the ratio-adjusted contrast: recorded as not adjusted, and why
        adjusted = sweep["adjusted_logprob"]
        assert adjusted["method"] == "none" and "too few" in adjusted["note"] and adjusted["adjusted"] is None
        assert adjusted["raw"] == pytest.approx(sweep["test_logprob"]["difference"]["mean"])
        assert sweep["adjusted_accuracy"] is None  # accuracy undefined here
        assert len(sets["log_frequency_ratio"]) == len(sets["log_size_ratio"]) == 4
    lines = summary(out)
    assert any("cannot do this benchmark" in line for line in lines)
    assert any("Δacc undefined" in line for line in lines) and not any("Δacc +" in line for line in lines)
    assert results["attribution_vs_exact_n"] == 4
    # the mean-ablation sweep beside the zero one by default, over the same top-k sets
    companions = results["companions"]
    assert [(c["k"], c["ablation"]) for c in companions] == [(1, "mean"), (3, "mean")]
    assert all(c["logprob_ci"][0] <= c["logprob_delta"] <= c["logprob_ci"][1] for c in companions)
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(rows) == len(examples)
    assert all("clean" in row["scores"] for row in rows[split["n_selection"] :])  # held-out rows scored


def test_the_default_number_of_controls_makes_significance_attainable(tiny, examples, tmp_path):
    assert AblateConfig().random_controls == 20
    results, out = run(tiny, examples, tmp_path, random_sae(tiny.d_model), top_k=[1, 2], random_controls=20)
    significance = results["significance"]
    assert significance["n_controls"] == 20 and significance["attainable"] is True
    # 2 k values need R >= 39 for Holm; at 20 they are tested in sequence, the larger k first
    assert significance["procedure"] == "fixed-sequence" and "fixed sequence" in significance["method"]
    by_k = {s["k"]: s["test_logprob"] for s in results["sweeps"]}
    assert by_k[2]["p_adjusted"] == by_k[2]["p_value"]
    assert by_k[1]["p_adjusted"] == max(by_k[1]["p_value"], by_k[2]["p_value"])
    for sweep in results["sweeps"]:
        members = [f for ids in sweep["control_sets"]["features"] for f in ids]
        assert len(set(members)) == 20 * sweep["k"]
        # the ratio-adjusted contrast refits from what results.json holds: the sets' effects and ratios
        adjusted, test = sweep["adjusted_logprob"], sweep["test_logprob"]
        sets = sweep["control_sets"]
        design = np.column_stack([np.ones(20), sets["log_frequency_ratio"], sets["log_size_ratio"]])
        if adjusted["method"] == "ols":
            beta = np.linalg.pinv(design) @ np.array(test["control_effects"])
            assert adjusted["adjusted_control"] == pytest.approx(beta[0], abs=1e-9)
            assert adjusted["adjusted"] == pytest.approx(test["top_effect"] - beta[0], abs=1e-9)
            assert adjusted["replicates"] >= 0.9 * 200 and adjusted["ci"][0] <= adjusted["ci"][1]
        else:
            assert adjusted["note"]
        assert adjusted["raw"] == pytest.approx(test["difference"]["mean"])
    recomputed_from_files(out, results)


def recomputed_from_files(out, results: dict) -> None:
    """The adjusted contrast and its two-way interval, recomputed from examples.jsonl (per-example
    top and control-set scores) and results.json (ratios, bootstrap settings) alone, equal the study's."""
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if row["evaluation"]]  # the held-out rows, in evaluation order
    assert len(evaluated) == results["evaluation_split"]["n_evaluation"] < len(rows)
    assert all(("sets" in row) == row["evaluation"] for row in rows)
    assert all(f"top{s['k']}" in row["scores"] for row in evaluated for s in results["sweeps"])
    settings = results["statistics"]
    bootstrap = Bootstrap(
        len(evaluated), settings["bootstrap_replicates"], seed=settings["seed"], level=settings["level"]
    )
    fitted = 0
    for sweep in results["sweeps"]:
        k, test = sweep["k"], sweep["test_logprob"]
        splice = np.array([row["scores"]["splice"]["logprob"] for row in evaluated])
        top = np.array([row["scores"][f"top{k}"]["logprob"] for row in evaluated]) - splice
        controls = np.array([row["sets"][f"control{k}"]["logprob"] for row in evaluated]).T - splice
        assert controls.shape == (20, len(evaluated))
        assert controls.mean(axis=1) == pytest.approx(test["control_effects"], abs=1e-12)
        sets = sweep["control_sets"]
        again = adjusted_contrast(
            top, controls, sets["log_frequency_ratio"], sets["log_size_ratio"], bootstrap,
            seed=[results["config"]["seed"], 6007, k],
        )  # fmt: skip
        recorded = sweep["adjusted_logprob"]
        assert again.method == recorded["method"] and again.replicates == recorded["replicates"]
        for key in ("raw", "adjusted", "adjusted_control", "ci"):
            assert getattr(again, key) == pytest.approx(recorded[key], abs=1e-12), (k, key)
        fitted += again.method == "ols" and again.ci is not None
    assert fitted, "no k had an adjusted contrast with an interval: the check compared nothing"


def summary(out) -> list[str]:
    """The CLI summary's analysis lines for the study in ``out``."""
    from scircuits.platform.causal.registry import analyses_of
    from scircuits.platform.causal.results import read_results

    analyses = analyses_of(load_plugins(entry_points_too=False))
    results = read_results(out, analyses)
    return [
        line for a in analyses if a.name in results.analyses for line in a.summary_lines(results.result_of(a))
    ]


def test_the_split_is_seeded_disjoint_and_can_be_turned_off():
    sel, ev = selection_split(10, 0.5, seed=3)
    assert len(sel) == 5 and not set(sel) & set(ev) and sorted([*sel, *ev]) == list(range(10))
    assert np.array_equal(sel, selection_split(10, 0.5, seed=3)[0])
    assert not np.array_equal(sel, selection_split(10, 0.5, seed=4)[0])
    assert selection_split(10, 0.0, seed=3) == (None, None)


def constant_sae(d: int, n: int) -> ReluSAE:
    torch.manual_seed(0)
    sae = ReluSAE(d, n)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(1.0)
        sae.b_dec.zero_()
        directions = torch.randn(n, d)
        sae.W_dec.copy_(0.02 * directions / directions.norm(dim=1, keepdim=True))
    return sae.eval()


def study_of(tiny, examples, sae, first_position=0, batch_size=4) -> Study:
    split = SplitModel(tiny, 2, "resid")
    data = prepare_eval(split, sae, tiny.tokenizer, examples, batch_size=batch_size, max_length=None)
    stats, _, _, _ = feature_statistics(data, first_position=first_position)
    zero = get_plugins().ablations.get("zero")
    return Study(split, sae, data, zero, None, stats, seed=0, first_position=first_position)


def test_attribution_on_a_subset_counts_only_its_examples(tiny, examples):
    study = study_of(tiny, examples[:8], constant_sae(tiny.d_model, 6), batch_size=8)
    whole = study.attribution()
    part, rest = np.array([0, 3, 5]), np.array([1, 2, 4, 6, 7])
    combined = (3 * study.attribution(part) + 5 * study.attribution(rest)) / 8
    np.testing.assert_allclose(combined, whole, rtol=1e-5, atol=1e-9)
    assert not np.allclose(study.attribution(part), whole, rtol=1e-3)


def test_the_attribution_position_mask(tiny, examples):
    sae = constant_sae(tiny.d_model, 6)  # every feature fires at every position
    everywhere = study_of(tiny, examples[:4], sae, first_position=0).attribution()
    spared = study_of(tiny, examples[:4], sae, first_position=1).attribution()
    beyond = study_of(tiny, examples[:4], sae, first_position=10_000).attribution()
    assert np.all(beyond == 0)  # no position edited: no estimated effect
    assert np.all(everywhere != 0) and not np.allclose(everywhere, spared, rtol=1e-4)


def identity_sae(d: int) -> ReluSAE:
    """relu(x) − relu(−x) = x: reconstruction without error."""
    sae = ReluSAE(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_ce_loss_recovered_and_faithfulness_have_their_exact_values(tiny, examples, tmp_path):
    d = tiny.d_model
    results, _ = run(
        tiny, examples, tmp_path, identity_sae(d), top_k=[1], random_controls=0, faithfulness_n=[1, 2 * d]
    )
    assert results["reconstruction"]["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    keep_all = next(p for p in results["faithfulness"] if p["n"] == 2 * d)
    assert keep_all["value"] == pytest.approx(1.0, abs=1e-9)  # keeping every feature is the splice

    null = identity_sae(d)
    with torch.no_grad():
        null.W_dec.zero_()  # the reconstruction is the zeroed site
    results, _ = run(tiny, examples, tmp_path / "null", null, top_k=[1], random_controls=0)
    assert results["reconstruction"]["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)


def test_faithfulness_intervals_and_the_fvu_variants(tiny, examples, tmp_path):
    results, _ = run(tiny, examples, tmp_path, random_sae(tiny.d_model), random_controls=0)
    assert results["faithfulness_reference"]["label"] == "features only, error term kept"
    for point in results["faithfulness"]:
        low, high = point["ci"]
        assert low <= point["value"] <= high
    metrics = results["sae_metrics_eval"]
    assert metrics["massive_dimensions"] >= 0
    assert metrics["fvu_standardised"] > 0 and metrics["fvu_without_massive_dimensions"] > 0


def test_the_ratio_interval_of_a_constructed_case():
    from scircuits.platform.causal.statistics import Bootstrap

    bootstrap = Bootstrap(4, 200, seed=0)
    empty, full = np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0])
    assert bootstrap.ratio_interval(full, empty, full) == pytest.approx([1.0, 1.0])  # keep all
    assert bootstrap.ratio_interval(empty, empty, full) == pytest.approx([0.0, 0.0])  # keep none
    assert bootstrap.ratio_interval(full, empty, empty) is None  # undefined: full == empty


def helpful_direction(tiny, examples) -> torch.Tensor:
    """The direction along which the site's output raises the gold log-probs (summed gradient), read
    from the attribution of unit features that are 1 everywhere (attribution_j = −0.01 · grad_j)."""
    d = tiny.d_model
    probe = ReluSAE(d, d)
    with torch.no_grad():
        probe.W_enc.zero_()
        probe.b_enc.fill_(1.0)
        probe.b_dec.zero_()
        probe.W_dec.copy_(0.01 * torch.eye(d))
    gradient = -torch.from_numpy(study_of(tiny, examples, probe.eval(), first_position=1).attribution())
    return (gradient / gradient.norm()).float()


def twins_and_rare_sae(d: int, direction: torch.Tensor, n_rare: int = 2000) -> ReluSAE:
    """Features 0-9 fire on every token and write the same vector (exchangeable twins); the others
    fire on some tokens and write almost nothing. A top feature among the twins does no more than a
    matched control (another twin), but far more than a random active feature."""
    torch.manual_seed(0)
    sae = ReluSAE(d, 10 + n_rare)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc.zero_()
        sae.b_enc.fill_(1.0)
        sae.W_dec[:10] = 0.05 * direction
        sae.W_enc[:, 10:] = 4.0 * torch.randn(d, n_rare)  # the tiny model's residual norm is about 0.27
        sae.b_enc[10:] = -1.5  # fires where the random projection is large: a few % of tokens
        sae.W_dec[10:] = 1e-5 * torch.randn(n_rare, d)
    return sae.eval()


def test_matched_controls_do_not_call_an_effect_significant_that_unmatched_ones_would(
    tiny, examples, tmp_path
):
    from scircuits.platform.causal.controls import sample_unmatched_controls
    from scircuits.platform.causal.significance import top_k_significance
    from scircuits.platform.causal.statistics import Bootstrap

    sae = twins_and_rare_sae(tiny.d_model, helpful_direction(tiny, examples))
    results, _ = run(
        tiny, examples, tmp_path, sae, top_k=[1], random_controls=20, selection_fraction=0.0, exact_top=0
    )
    sweep = results["sweeps"][0]
    assert sweep["features"][0] < 10  # a twin ranks first
    # matched: the other twins (each before any repeats; the excluded top-ranked ones never)
    twins = [ids[0] for ids in sweep["control_sets"]["features"] if ids[0] < 10]
    assert len(set(twins[:7])) == 7 and not set(twins) & set(results["rank"]["top"][:2])
    assert sweep["test_logprob"]["p_value"] >= 8 / 21 and sweep["significant_logprob"] is False

    # the same effect against controls drawn uniformly among active features (the old method)
    study = study_of(tiny, examples, sae, first_position=1, batch_size=16)
    spliced = study.run("splice")
    top = study.run("splice", study.ablate_edit(sweep["features"], tag=1)).logprob - spliced.logprob
    _, _, frequency, _ = feature_statistics(study.data, first_position=1)
    unmatched = sample_unmatched_controls(sweep["features"], frequency > 0, draws=20, rng=0)
    assert (frequency[10:] > 0).sum() > 1000 and not any(ids[0] < 10 for ids in unmatched)
    controls = np.stack(
        [study.run("splice", study.ablate_edit(ids, tag=2)).logprob - spliced.logprob for ids in unmatched]
    )
    old = top_k_significance({1: (top, controls)}, Bootstrap(len(top), 200, seed=0))
    assert old.tests[0].significant, old.tests[0].difference
    assert old.tests[0].top_effect == pytest.approx(sweep["logprob_delta"])


def test_resample_values_come_from_other_examples_only(tiny, examples):
    """Every pool row is traced back to its example; a batch is edited from the rows of the other
    batches' examples only, and a resample edit writes only values found in those rows."""
    sae = random_sae(tiny.d_model)
    split = SplitModel(tiny, 2, "resid")
    data = prepare_eval(split, sae, tiny.tokenizer, examples[:8], batch_size=4, max_length=None)
    stats, _, _, owners = feature_statistics(data, n_samples=10_000, first_position=1)
    for eb in data.batches:  # each row is one of its example's own feature rows
        for example, layout in zip(eb.example_indices, eb.layouts, strict=True):
            own = eb.features[list(layout.sequence_indices)][eb.edit_mask(1)[list(layout.sequence_indices)]]
            rows = stats.samples[torch.from_numpy(owners == example)]
            assert len(rows) == len(own) and torch.equal(rows, own)
    resample = get_plugins().ablations.get("resample")
    study = Study(split, sae, data, resample, resample.parse_options(None), stats, seed=0, first_position=1)
    study.pool_examples = owners
    for b, eb in enumerate(data.batches):
        pool = study.batch_stats(b).samples
        others = stats.samples[torch.from_numpy(~np.isin(owners, eb.example_indices))]
        assert torch.equal(pool, others) and len(pool) < len(stats.samples)
        edited = study.ablate_edit(range(study.d_sae), tag=3)(b)(eb.features)
        values = {tuple(row.tolist()) for row in others}
        assert all(tuple(row.tolist()) in values for row in edited[eb.edit_mask(1)])


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_skipping_unchanged_sequences_equals_the_eager_path(tiny, examples, ablation):
    """Edited conditions run only the sequences whose features change; every score equals the
    eager path's (all sequences through the upper blocks), and sequences were in fact skipped."""
    sae = random_sae(tiny.d_model, seed=3)
    split = SplitModel(tiny, 2, "resid")
    data = prepare_eval(split, sae, tiny.tokenizer, examples, batch_size=4, max_length=None)
    stats, _, frequency, owners = feature_statistics(data, first_position=1)
    how = get_plugins().ablations.get(ablation)
    rare = [int(i) for i in np.argsort(frequency) if frequency[i] > 0][:3]  # fire in few sequences
    fast = Study(split, sae, data, how, how.parse_options(None), stats, seed=0, first_position=1)
    eager = Study(split, sae, data, how, how.parse_options(None), stats, seed=0, first_position=1)
    eager.skip_unchanged = False
    for study in (fast, eager):
        study.pool_examples = owners
    for features in (rare, list(range(sae.d_sae))):
        a = fast.run("splice", fast.ablate_edit(features, tag=5))
        b = eager.run("splice", eager.ablate_edit(features, tag=5))
        np.testing.assert_allclose(a.logprob, b.logprob, rtol=1e-5, atol=1e-5)
        assert np.array_equal(a.correct, b.correct)
    assert eager.sequences_skipped == 0
    if ablation == "zero":
        assert fast.sequences_skipped > 0  # rare features leave most sequences as they were


@pytest.mark.parametrize(
    ("correct", "choices", "capable"),
    [
        ([1] * 8 + [0] * 32, None, True),  # free-form 0.2: capable
        ([1] * 1 + [0] * 79, None, False),  # free-form 0.0125 <= 0.02
        ([0] * 40, None, False),  # never answers
        ([1] * 10 + [0] * 30, 4, False),  # multiple choice at chance (0.25 <= 1/4)
        ([1] * 30 + [0] * 10, 4, True),  # multiple choice well above chance
    ],
)
def test_the_capability_rule(correct, choices, capable):
    from types import SimpleNamespace

    from scircuits.platform.causal.statistics import Bootstrap
    from scircuits.plugins.analyses.baseline import capability

    n = len(correct)
    example = SimpleNamespace(choices=None if choices is None else tuple("abcd"[:choices]))
    context = SimpleNamespace(
        study=SimpleNamespace(data=SimpleNamespace(examples=[example] * n)),
        evaluation_indices=np.arange(n),
        bootstrap=Bootstrap(n, 200, seed=0),
    )
    clean = SimpleNamespace(correct=np.array(correct, dtype=bool), accuracy=float(np.mean(correct)))
    able = capability(context, clean)
    assert able.capable is capable
    assert able.chance == (0.0 if choices is None else 1 / choices)
    assert able.floor == max(able.chance, 0.02)
    assert (able.note is None) is capable


def test_feature_statistics_are_over_the_evaluation_tokens_and_ranking_over_the_selection(tiny, examples):
    """mean_activation, frequency, the mean-ablation values and the resample pool come from the
    evaluation examples' edited tokens only; the ranking's activations from the selection ones."""
    from scircuits.platform.causal.runner import prepare_study

    sae = random_sae(tiny.d_model)
    config = AblateConfig(
        sae="", layer=2, progress=False, reconstruction_gate=False, edit_from_position=1, ablation="zero"
    )
    context = prepare_study(config, tiny, sae, examples, 2, load_plugins(entry_points_too=False))
    data, evaluation, selection = context.study.data, context.evaluation, context.selection
    assert evaluation is not None and selection is not None

    def by_hand(which: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        rows = []
        for eb in data.batches:
            mask = eb.edit_mask(1)
            for example, layout in zip(eb.example_indices, eb.layouts, strict=True):
                if example in set(which.tolist()):
                    seqs = list(layout.sequence_indices)
                    rows.append(eb.features[seqs][mask[seqs]].double())
        f = torch.cat(rows)
        return f.mean(0).numpy(), (f > 0).double().mean(0).numpy(), len(f)

    mean, frequency, n_tokens = by_hand(evaluation)
    assert context.mean_activation == pytest.approx(mean, abs=1e-6)
    assert context.frequency == pytest.approx(frequency)
    assert context.stats.mean.numpy() == pytest.approx(mean, abs=1e-6)
    assert set(context.study.pool_examples.tolist()) <= set(evaluation.tolist())
    assert len(context.stats.samples) == min(n_tokens, 4096)
    selection_mean, _, _ = by_hand(selection)
    assert context.ranking_activation == pytest.approx(selection_mean, abs=1e-6)
    everything, _, _ = by_hand(np.arange(data.n_examples))
    assert np.abs(everything - mean).max() > 1e-4  # the old statistics differ


def test_an_examples_line_written_before_sets_and_evaluation_still_loads(tmp_path):
    from scircuits.platform.causal.results import read_examples

    old = {"id": "a/1", "target": " 3", "scores": {"splice": {"logprob": -1.5, "correct": False}}}
    (tmp_path / "examples.jsonl").write_text(json.dumps(old) + "\n")
    (row,) = read_examples(tmp_path)
    assert row.evaluation is None and row.sets is None and row.scores["splice"].logprob == -1.5


def mixed_length_examples(examples):
    """The arithmetic examples with 0-5 extra shots each, so that consecutive ones differ in length."""
    out = []
    for i, e in enumerate(examples):
        extra = "".join(f"{i + j} + {j} = {i + 2 * j}\n" for j in range(i % 6))
        out.append(Example(e.id, extra + e.prompt, e.target, e.choices, e.answer_index, e.meta, e.delimiter))
    return out


def test_batches_are_in_length_order_and_score_as_one_example_per_batch(tiny, examples):
    """Examples of similar length share a batch (less padding than consecutive ones), every example
    in exactly one batch; padding never changes an example's scores; the splice check's batches are
    those of the first examples."""
    mixed = mixed_length_examples(examples[:12])
    sae = constant_sae(tiny.d_model, 6)
    split = SplitModel(tiny, 2, "resid")
    data = prepare_eval(split, sae, tiny.tokenizer, mixed, batch_size=4, max_length=None)
    held = sorted(i for eb in data.batches for i in eb.example_indices)
    assert held == list(range(len(mixed)))
    widths = [int(eb.batch.input_ids.shape[1]) for eb in data.batches]
    assert widths == sorted(widths, reverse=True)
    padded = sum(eb.batch.input_ids.numel() for eb in data.batches)
    sequences, layouts = layout_examples(tiny.tokenizer, mixed)
    consecutive = sum(
        len(group) * max(len(sequences[i].input_ids) for i in group) for group in group_batches(layouts, 4)
    )
    assert padded < consecutive
    assert min(data.by_first_example()[0].example_indices) == 0
    halves = [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]  # as the selection and evaluation splits
    parted = prepare_eval(split, sae, tiny.tokenizer, mixed, batch_size=4, max_length=None, parts=halves)
    held = [set(eb.example_indices) for eb in parted.batches]
    assert all(h <= set(halves[0]) for h in held[:2]) and all(h <= set(halves[1]) for h in held[2:])

    one_each = prepare_eval(split, sae, tiny.tokenizer, mixed, batch_size=1, max_length=None)
    zero = get_plugins().ablations.get("zero")
    stats, _, _, _ = feature_statistics(data)
    scores = []
    for eval_data in (data, one_each):
        study = Study(split, sae, eval_data, zero, None, stats, seed=0)
        scores.append(study.run("splice", study.ablate_edit([1, 3], tag=7)))
    batched, alone = scores
    np.testing.assert_allclose(batched.logprob, alone.logprob, rtol=1e-5, atol=1e-5)
    assert np.array_equal(batched.correct, alone.correct)
