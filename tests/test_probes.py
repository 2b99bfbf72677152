"""The `probes` analysis: held-out probes with a control task (Hewitt & Liang) and a random baseline.

On constructed data: a variable linearly present in the activations (and unrelated to token
identity) is read with high accuracy and high selectivity; a variable that is a function of token
identity, in activations that encode token identity, is read with high accuracy but low
selectivity; the control task gives each token type one value, drawn from the variable's values.
End to end: `scircuits run` on a tiny trained synth model writes the typed result and its section.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from scircuits import DataFormatError
from scircuits.cli import cli
from scircuits.plugins.analyses.probes import (
    LabelledTokens,
    ProbesResult,
    declares_variables,
    labelled_tokens,
    probe_study,
)
from scircuits.plugins.analyses.probing import (
    auroc,
    control_values,
    example_split,
    identity_accuracy,
    probe_scores,
)

N_EXAMPLES, PER_EXAMPLE, WIDTH = 200, 4, 32


def _tokens(activations, token_ids, values, baseline=None):
    n = len(values)
    return LabelledTokens(
        activations=activations,
        baseline=baseline
        if baseline is not None
        else np.random.default_rng(9).standard_normal(activations.shape),
        token_ids=np.asarray(token_ids),
        positions=np.tile(np.arange(PER_EXAMPLE), n // PER_EXAMPLE),
        example=np.repeat(np.arange(n // PER_EXAMPLE), PER_EXAMPLE),
        variables=[{"v": int(v)} for v in values],
    )


def test_a_linearly_present_variable_is_read_with_high_selectivity():
    rng = np.random.default_rng(0)
    n = N_EXAMPLES * PER_EXAMPLE
    values = rng.integers(0, 3, n)
    token_ids = rng.integers(0, 40, n)  # token identity unrelated to the variable, and not in x
    directions = rng.standard_normal((3, WIDTH)) * 3.0
    x = rng.standard_normal((n, WIDTH)) + directions[values]
    study = probe_study(_tokens(x, token_ids, values), seed=0, kind="random projection", note="test")
    (v,) = study.variables
    assert v.accuracy > 0.95
    assert v.control_accuracy is not None and v.control_accuracy < 0.7  # the probe cannot memorise types
    assert v.selectivity is not None and v.selectivity > 0.3
    assert v.identity_accuracy < 0.5  # token identity alone does not give it
    assert v.baseline_accuracy < 0.5  # a random baseline with no variable in it: about chance
    assert all(pv.auroc > 0.95 for pv in v.per_value)
    assert all(pv.selectivity_auroc is not None and pv.selectivity_auroc > 0.2 for pv in v.per_value)


def test_a_variable_of_token_identity_is_read_with_low_selectivity():
    rng = np.random.default_rng(1)
    n = N_EXAMPLES * PER_EXAMPLE
    n_types = 24
    token_ids = rng.integers(0, n_types, n)
    mapping = rng.integers(0, 2, n_types)
    values = mapping[token_ids]  # a function of the token
    embeddings = rng.standard_normal((n_types, WIDTH)) * 3.0  # activations that encode the token
    x = embeddings[token_ids] + 0.3 * rng.standard_normal((n, WIDTH))
    study = probe_study(_tokens(x, token_ids, values), seed=0, kind="random projection", note="test")
    (v,) = study.variables
    assert v.accuracy > 0.95
    assert v.identity_accuracy > 0.95
    assert v.control_accuracy is not None and v.control_accuracy > 0.9  # memorising types is enough
    assert v.selectivity is not None and abs(v.selectivity) < 0.1


def test_the_control_task_gives_each_token_type_one_value_from_the_variable():
    rng = np.random.default_rng(2)
    token_ids = rng.integers(0, 300, 6000)
    values = rng.choice([2, 5, 7], size=6000, p=[0.6, 0.3, 0.1])
    control = control_values(values, token_ids, seed=3)
    assert control is not None and control.shape == values.shape
    for t in np.unique(token_ids):
        assert len(np.unique(control[token_ids == t])) == 1  # one value per type
    assert set(np.unique(control)) <= {2, 5, 7}
    per_type = np.array([control[token_ids == t][0] for t in np.unique(token_ids)])
    shares = [(per_type == v).mean() for v in (2, 5, 7)]
    assert abs(shares[0] - 0.6) < 0.1 and abs(shares[1] - 0.3) < 0.1  # drawn from the empirical law
    assert np.array_equal(control, control_values(values, token_ids, seed=3))  # seeded
    assert not np.array_equal(control, control_values(values, token_ids, seed=4))
    # independent of the real labels: about as often equal as the law's own collision rate
    assert abs((control == values).mean() - (0.6**2 + 0.3**2 + 0.1**2)) < 0.05
    assert control_values(values, np.zeros(6000, dtype=int), seed=3) is None  # one type: no control


def test_one_token_type_leaves_selectivity_undefined_and_says_why():
    rng = np.random.default_rng(5)
    n = N_EXAMPLES * PER_EXAMPLE
    values = rng.integers(0, 2, n)
    x = rng.standard_normal((n, WIDTH)) + 3.0 * np.outer(values, rng.standard_normal(WIDTH))
    study = probe_study(_tokens(x, np.zeros(n, dtype=int), values), seed=0, kind="random projection", note="")
    (v,) = study.variables
    assert v.accuracy > 0.95 and v.n_token_types == 1
    assert v.control_accuracy is None and v.selectivity is None and "one token type" in v.control_note


def test_the_split_is_by_example():
    groups = np.repeat(np.arange(50), 7)
    test = example_split(groups, 0.3, seed=1)
    for g in range(50):
        assert len(set(test[groups == g])) == 1
    assert len(np.unique(groups[test])) == 15
    with pytest.raises(ValueError, match="two examples"):
        example_split(np.zeros(5), 0.3, seed=1)


def test_scores_and_baselines_on_small_cases():
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    assert auroc(np.array([1.0, 2.0]), np.array([1, 1])) is None
    ids, values = np.array([1, 1, 2, 2, 1, 2]), np.array([0, 0, 1, 1, 0, 0])
    test = np.array([False, False, False, False, True, True])
    assert identity_accuracy(ids, values, test) == 0.5  # type 1 -> 0 (right), type 2 -> 1 (wrong)
    x = np.array([[0.0], [0.1], [1.0], [1.1], [0.05], [1.05]])
    score = probe_scores(x, np.array([0, 0, 1, 1, 0, 1]), test)
    assert score.accuracy == 1.0 and score.auroc == {0: 1.0, 1: 1.0}


def test_a_variable_with_one_value_is_skipped_with_the_reason():
    rng = np.random.default_rng(6)
    n = N_EXAMPLES * PER_EXAMPLE
    tokens = _tokens(rng.standard_normal((n, WIDTH)), rng.integers(0, 9, n), np.zeros(n))
    study = probe_study(tokens, seed=0, kind="random projection", note="")
    assert study.variables == [] and study.skipped == ["v: one value only"]


def test_a_run_on_a_benchmark_with_variables_writes_the_probes(tmp_path):
    """`scircuits run` on a tiny trained logic model: probes beside a random-init model of its config."""
    from scircuits import SynthTrainSettings, synth_tasks, train_synth_model

    model = tmp_path / "logic-1x32"
    settings = SynthTrainSettings(
        layers=1,
        d_model=32,
        batch_size=64,
        eval_examples=200,
        steps=150,
        lr=3e-3,
        eval_every=150,
        max_attempts=1,
    )
    train_synth_model(synth_tasks().get("logic").sized(3), settings, model)
    args = ["run", "--model", f"hf:{model}", "--benchmark", "synth-logic", "--option", "size=3"]
    args += ["--layer", "0", "--sae", "topk", "--expansion", "2", "--limit", "60", "--collect-limit", "100"]
    args += ["--train-tokens", "2000", "--train-batch-size", "256", "--top-k", "1"]
    args += ["--random-controls", "1", "--exact-top", "1", "--no-progress", "--out", str(tmp_path / "runs")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    results = json.loads((run / "causal" / "results.json").read_text())
    assert "probes" in results["analyses"]
    probes = ProbesResult.model_validate({"probes": results["probes"]}).probes
    assert probes is not None and probes.baseline == "random-init model"
    assert probes.examples == 60 and probes.labelled_tokens == 60 * 4
    assert 10 <= probes.test_examples <= 25
    names = {v.variable for v in probes.variables}
    assert {"value", "negated", "answer", "query_step", "step"} <= names
    for v in probes.variables:
        assert 0.0 <= v.accuracy <= 1.0 and 0.0 <= v.baseline_accuracy <= 1.0
    value = next(v for v in probes.variables if v.variable == "value")
    assert value.n_token_types == 1 and value.selectivity is None  # every step closes on `;`
    answer = next(v for v in probes.variables if v.variable == "answer")
    assert answer.n_token_types >= 2 and answer.selectivity is not None  # the query's name token varies
    report = (run / "report.md").read_text()
    assert "Linear probes of the declared variables" in report
    assert "probes:" in result.output


def _fake_context(variables_per_example, n_tokens=5, width=4):
    """A study context of the shape `labelled_tokens` reads, over a model that has no config."""
    import torch

    batches = []
    for i, _ in enumerate(variables_per_example):
        batch = SimpleNamespace(
            input_ids=torch.arange(n_tokens)[None] + 10 * (i % 3),
            attention_mask=torch.ones(1, n_tokens, dtype=torch.long),
            position_ids=torch.arange(n_tokens)[None],
        )
        batches.append(
            SimpleNamespace(
                batch=batch,
                example_indices=[i],
                layouts=[SimpleNamespace(sequence_indices=(0,))],
                cache=SimpleNamespace(site_output=torch.randn(1, n_tokens, width)),
            )
        )
    examples = [
        SimpleNamespace(id=f"ex{i}", meta={"variables": v}) for i, v in enumerate(variables_per_example)
    ]
    study = SimpleNamespace(data=SimpleNamespace(examples=examples, batches=batches))
    return SimpleNamespace(study=study, loaded=SimpleNamespace(model=object()), layer=0, config=None)


def test_without_a_rebuildable_model_the_baseline_is_a_random_projection_and_says_why():
    variables = [[{}, {"v": i % 2}, {}, {"v": (i // 2) % 2}, {}] for i in range(12)]
    tokens, kind, note = labelled_tokens(_fake_context(variables), seed=1)
    assert kind == "random projection" and "no config" in note
    assert tokens.activations.shape == tokens.baseline.shape == (24, 4)
    assert list(tokens.positions[:2]) == [1, 3] and tokens.variables[:2] == [{"v": 0}, {"v": 0}]
    # the projection of one token id at one position is the same vector wherever it occurs
    same = (tokens.token_ids == tokens.token_ids[0]) & (tokens.positions == tokens.positions[0])
    assert np.allclose(tokens.baseline[same], tokens.baseline[0])


def test_variables_that_do_not_fit_the_tokens_stop_with_one_line():
    with pytest.raises(
        DataFormatError, match=r"ex0: the model's tokenizer gives 5 tokens but .* describes 3"
    ):
        labelled_tokens(_fake_context([[{}, {"v": 1}, {}]]), seed=1)
    assert not declares_variables([SimpleNamespace(meta={"tokens": []})])
