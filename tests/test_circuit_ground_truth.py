"""The circuit's counterfactual metric (against a hand computation), positions kept (their sum is the
summed effect and weight), the held-out check on another seed, and the ground-truth scorer (a
hand-built circuit whose answer is known, and one that must fail), on a tiny synth addition model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scircuits import SynthTrainSettings as TrainSettings
from scircuits import circuit_ground_truth, score_circuit_ground_truth
from scircuits import train_synth_model as train_model
from scircuits.platform.circuit import attribution as A
from scircuits.platform.circuit.metrics import COUNTERFACTUAL, CounterfactualMetric, counterfactual_examples
from scircuits.platform.circuit.positions import edge_weights_by_position, node_effects_by_position
from scircuits.platform.circuit.results import read_circuit
from scircuits.platform.circuit.sites import SiteSAE
from scircuits.platform.circuit.spliced import SplicedModel
from scircuits.platform.circuit.stage import find_circuit, run_circuit
from scircuits.platform.config import CircuitConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.checkpoint import save_sae
from scircuits.plugins.synth.tasks import AdditionTask
from scircuits.testing.published import random_sae

OPTIONS = {"size": 2}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A tiny 2-digit addition model (a few training steps: the checks here are exact identities)."""
    out = tmp_path_factory.mktemp("synth") / "add2"
    settings = TrainSettings(layers=2, d_model=32, steps=30, batch_size=32, eval_every=30, eval_examples=50)
    train_model(AdditionTask(2), settings.model_copy(update={"max_attempts": 1}), out)
    loaded = get_plugins().models.get(f"hf:{out}").load(dtype="float32")
    return out, loaded


def pairs(n: int = 12, seed: int = 0):
    bench = get_plugins().benchmarks.get("synth-addition")
    return counterfactual_examples(list(bench.examples("test", n, seed, OPTIONS)), "synth-addition", seed)


def saes(d_in: int) -> list[SiteSAE]:
    out = []
    for k in range(2):
        sae = random_sae(get_plugins(), "relu", d_in, 4 * d_in, seed=k, noise=0.3)
        out.append(SiteSAE(k, "resid", sae, f"sae{k}"))
    return out


def test_the_counterfactual_metric_is_the_logit_difference_computed_by_hand(synth):
    _, loaded = synth
    examples = pairs()
    assert examples and all(e.meta["counterfactual"]["target"] != e.target for e in examples)
    model = SplicedModel(loaded, saes(loaded.d_model))
    model.metric = CounterfactualMetric(loaded.tokenizer, examples)
    got = np.concatenate([model.scores(cb, None)[0].numpy() for cb in model.prepare(examples, 5, None, 1)])
    tok = loaded.tokenizer
    for value, example in zip(got, examples, strict=True):
        prompt = tok(example.prompt)["input_ids"]
        clean = tok(example.target, add_special_tokens=False)["input_ids"]
        counter = tok(example.meta["counterfactual"]["target"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([prompt + clean])).logits[0]
        hand = sum(
            float(logits[len(prompt) - 1 + k, c] - logits[len(prompt) - 1 + k, f])
            for k, (c, f) in enumerate(zip(clean, counter, strict=True))
            if c != f
        )
        assert value == pytest.approx(hand, abs=1e-4)
        assert hand != 0  # the answers differ somewhere, so the metric reads something


def test_kept_positions_sum_to_the_summed_node_effects_and_edge_weights(synth):
    _, loaded = synth
    examples = pairs()
    model = SplicedModel(loaded, saes(loaded.d_model))
    model.metric = CounterfactualMetric(loaded.tokenizer, examples)
    batches = model.prepare(examples, 4, None, 1)
    base = A.baseline_of(batches, "selection-mean")
    effects = A.node_effects(model, batches, base)
    ranked = sorted(
        ((i, j) for i in range(2) for j in range(len(effects[i]))), key=lambda n: -abs(effects[n[0]][n[1]])
    )
    nodes = list(dict.fromkeys([*ranked[:6], (0, model.sites[0].d_sae), (1, model.sites[1].d_sae)]))
    kept = node_effects_by_position(model, batches, base, nodes)
    length = int(batches[0].batch.lengths[0])
    for i, j in nodes:
        assert kept[(i, j)].shape == (length,) and kept[(i, j)][0] == 0  # <bos> is never patched
        assert kept[(i, j)].sum() == pytest.approx(effects[i][j], rel=1e-4, abs=1e-6)
    circuit = [[j for i, j in nodes if i == s] for s in range(2)]
    summed = A.edge_weights(model, batches, base, circuit)
    by_position = edge_weights_by_position(model, batches, base, circuit)
    assert set(by_position) == set(summed)
    for key, w in summed.items():
        matrix = by_position[key]
        assert matrix.shape == ((length, 1) if key[1] == A.OUTPUT else (length, length))
        assert matrix.sum() == pytest.approx(w, rel=1e-4, abs=1e-6)
        if key[1] != A.OUTPUT:  # causal: a later position never drives an earlier one
            assert np.abs(np.tril(matrix, -1)).max() <= 1e-6 * max(1.0, np.abs(matrix).max())
    assert any(np.abs(m).max() > 0 for k, m in by_position.items() if k[1] != A.OUTPUT)


def test_the_scorer_finds_a_planted_aligned_feature_and_fails_a_circuit_without_one():
    rng = np.random.default_rng(0)
    n, length, answer_start = 200, 6, 4  # positions 1, 2 prompt; 3, 4 answer predictions
    variables = []
    for _ in range(n):
        cells = [{} for _ in range(length)]
        for p in (3, 4):
            cells[p] = {"column": p, "carry_in": int(rng.integers(2))}
        variables.append(cells)
    carry = np.array([[cell.get("carry_in", 0) for cell in ex] for ex in variables], dtype=float)
    planted = carry + 0.1 * rng.random((n, length))  # fires where carry_in = 1
    noise = rng.random((n, length))
    route = np.zeros((length, length))
    route[1, 3] = 2.0  # prompt -> answer
    route[3, 4] = 1.0  # answer -> answer
    good = score_circuit_ground_truth(
        {"resid1/7": planted, "resid0/3": noise},
        ["resid1/error"],
        variables,
        ["column"],
        answer_start,
        edges={("resid0/3", "resid1/7"): route, ("resid1/7", "metric"): np.ones((length, 1))},
        node_effects={"resid1/7": np.array([0, 0, 0, 1.0, 3.0, 0])},
        dictionary={"resid1": np.stack([planted, 1 - carry], axis=-1)},
        replicates=200,
    )
    assert good.labels == ["carry_in=0", "carry_in=1"]
    assert [(a.node, a.label, a.aligned) for a in good.nodes] == [
        ("resid1/7", "carry_in=1", True),
        ("resid0/3", good.nodes[1].label, False),
    ]
    assert good.precision == 0.5 and good.recall == 0.5 and good.covered == ["carry_in=1"]
    best = good.best_by_variable["carry_in"]
    assert (best.node, best.label, best.aligned) == ("resid1/7", "carry_in=1", True)
    assert good.recoverable == ["carry_in=0", "carry_in=1"] and good.recall_recoverable == 0.5
    assert good.precision_ci[0] <= 0.5 <= good.precision_ci[1]
    assert good.routes["prompt_to_answer"].value == pytest.approx(2 / 3)
    assert good.routes["answer_to_answer"].value == pytest.approx(1 / 3)
    assert good.routes["into_aligned_prompt_to_answer"].value == pytest.approx(2 / 3)
    assert good.routes["aligned_effect_at_answer"].value == pytest.approx(1.0)
    bad = score_circuit_ground_truth(
        {"resid1/7": noise, "resid0/3": rng.random((n, length))},
        [],
        variables,
        ["column"],
        answer_start,
        replicates=200,
    )
    assert bad.precision == 0 and bad.recall == 0 and bad.covered == []
    assert all(a.auroc < 0.9 for a in bad.nodes) and not bad.best_by_variable["carry_in"].aligned


def saved(folder, d_in: int) -> list[str]:
    specs = []
    for k in range(2):
        sae = random_sae(get_plugins(), "relu", d_in, 4 * d_in, seed=k, noise=0.3)
        meta = {"store": {"attrs": {"model": "synth", "layer": k, "site": "resid"}}}
        specs.append(str(save_sae(folder / f"sae{k}", sae, cfg={}, scircuits_meta=meta)))
    return specs


def config(synth, tmp_path, **kw) -> CircuitConfig:
    folder, loaded = synth
    values = dict(
        model=f"hf:{folder}",
        benchmark="synth-addition",
        benchmark_options=OPTIONS,
        sae=saved(tmp_path, loaded.d_model),
        limit=16,
        node_selection="global",
        nodes=6,
        sizes=[2],
        random_circuits=1,
        exact_top=2,
        bootstrap=50,
        out=str(tmp_path / "out"),
        progress=False,
    )
    return CircuitConfig(**{**values, **kw})


def test_a_counterfactual_circuit_with_positions_kept_is_checked_on_another_seed_and_scored(synth, tmp_path):
    _, loaded = synth
    cfg = config(synth, tmp_path, metric="counterfactual", positions="kept", check_seed=3)
    out = run_circuit(cfg, get_plugins(), loaded=loaded)
    results = read_circuit(out)
    assert results.score == COUNTERFACTUAL and results.positions.startswith("kept")
    assert all(len(n.by_position) == 10 for n in results.nodes)  # <bos> + "a0 a1 + b0 b1 =" + 3 digits
    for node in results.nodes:
        assert sum(node.by_position) == pytest.approx(node.effect, rel=1e-4, abs=1e-6)
    assert all(e.by_position is not None for e in results.edges)
    assert results.cross_seed is not None and results.cross_seed.seed == 3
    assert results.cross_seed.n_examples == results.n_evaluation
    assert (
        "Second-seed check" in (out / "report.md").read_text() and "seed 3" in (out / "report.md").read_text()
    )
    score = circuit_ground_truth(out, get_plugins(), n_examples=60, replicates=50, loaded=loaded)
    assert score.n_feature_nodes + score.n_error_nodes == len(results.nodes)
    assert "carry_in=1" in score.labels and "sum_digit=0" in score.labels
    assert score.routes["prompt_to_answer"].total > 0


@pytest.mark.parametrize(
    "change,needle",
    [
        (
            {"benchmark": "arithmetic", "benchmark_options": {}, "metric": "counterfactual"},
            "declares no counterfactual",
        ),
        ({"check_seed": 0}, "--check-seed 0 is --seed"),
    ],
)
def test_bad_metric_and_seed_settings_are_refused_before_the_model_loads(synth, tmp_path, change, needle):
    with pytest.raises(ConfigError, match=needle):
        find_circuit(config(synth, tmp_path, **change), get_plugins(), loaded=None)


def test_kept_positions_on_examples_of_several_lengths_are_refused(synth, tmp_path):
    from scircuits.testing import tiny_loaded_model

    tiny = tiny_loaded_model("smollm2-135m")
    cfg = config(synth, tmp_path, model="smollm2-135m", benchmark="arithmetic", benchmark_options={})
    cfg = cfg.model_copy(update={"sae": saved(tmp_path / "t", tiny.d_model), "positions": "kept"})
    with pytest.raises(ConfigError, match="one length"):
        find_circuit(cfg, get_plugins(), loaded=tiny)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--benchmark", "arithmetic", "--metric", "counterfactual"], "declares no counterfactual pairs"),
        (["--benchmark", "synth-addition", "--option", "size=2", "--check-seed", "0"], "--check-seed 0 is"),
        (["--benchmark", "synth-addition", "--positions", "diagonal"], "diagonal"),
    ],
)
def test_the_command_refuses_bad_metric_seed_and_positions_in_one_line(synth, tmp_path, capsys, args, needle):
    from scircuits.cli import main

    folder, loaded = synth
    out = tmp_path / "out"
    specs = [f"--sae={s}" for s in saved(tmp_path, loaded.d_model)]
    with pytest.raises(SystemExit) as exc:
        main(["circuit", "--model", f"hf:{folder}", *specs, *args, "--out", str(out), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_the_new_settings_leave_a_default_circuits_key_alone_and_key_a_circuit_that_uses_them():
    plain = CircuitConfig(sae=["a", "b"])
    assert not {"metric", "positions", "check_seed"} & set(plain.identity())
    for change in ({"metric": "counterfactual"}, {"positions": "kept"}, {"check_seed": 1}):
        assert CircuitConfig(sae=["a", "b"], **change).config_hash() != plain.config_hash()
