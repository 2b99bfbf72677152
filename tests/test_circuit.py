"""Feature circuits on a tiny random model with tiny random SAEs at three sites: the splice is exact,
node gradients match finite differences, batched edges equal one backward per node and cost one
batched backward per downstream site, faithfulness is 1 for every node and 0 for none, the command
writes typed results and graphs, and bad inputs are refused in one line."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from scircuits.platform.causal.statistics import spearman
from scircuits.platform.circuit import attribution as A
from scircuits.platform.circuit.evaluate import ratio, scores_keeping
from scircuits.platform.circuit.exact import exact_edge_effects, exact_node_effects
from scircuits.platform.circuit.results import read_circuit
from scircuits.platform.circuit.sites import SiteSAE
from scircuits.platform.circuit.spliced import CircuitSpliceError, SplicedModel
from scircuits.platform.circuit.stage import find_circuit, run_circuit
from scircuits.platform.config import CircuitConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.checkpoint import save_sae
from scircuits.testing import tiny_loaded_model
from scircuits.testing.published import random_sae

SITES = [(0, "resid"), (1, "mlp"), (2, "resid")]


@pytest.fixture(scope="module")
def tiny():
    return tiny_loaded_model("smollm2-135m")


@pytest.fixture(scope="module")
def examples():
    return list(get_plugins().benchmarks.get("arithmetic").examples("test", 8, 0, {}))


def site_saes(d_in: int, scale: float = 1.0) -> list[SiteSAE]:
    saes = []
    for k, (layer, site) in enumerate(SITES):
        sae = random_sae(get_plugins(), "relu", d_in, 2 * d_in, seed=k, noise=0.3)
        with torch.no_grad():
            sae.W_dec.mul_(scale)
        saes.append(SiteSAE(layer, site, sae, f"sae{k}"))
    return saes


@pytest.fixture(scope="module")
def spliced(tiny, examples):
    model = SplicedModel(tiny, site_saes(tiny.d_model))
    batches = model.prepare(examples, 4, None, 1)
    return model, batches, A.baseline_of(batches, "selection-mean")


def test_the_sites_spliced_together_are_exact_and_a_tighter_tolerance_refuses(spliced):
    model, batches, _ = spliced
    assert model.check_exact(batches, 1e-4)["max_abs_logit_diff"] < 1e-4
    with pytest.raises(CircuitSpliceError, match="--splice-tolerance"):
        model.check_exact(batches, 1e-12)


def test_node_gradients_match_finite_differences(spliced):
    model, batches, base = spliced
    cb = batches[0]
    _, grads_f, grads_e = A.total_gradients(model, cb)
    d_sae = model.sites[0].d_sae
    active = int(np.argmax(base.frequency[0]))
    for i, j in [(0, active), (0, d_sae), (1, d_sae), (2, d_sae)]:
        d_f, d_e = A.deltas(cb, base, i)
        linear = (
            float((grads_f[i][..., j] * d_f[..., j]).sum()) if j < d_sae else float((grads_e[i] * d_e).sum())
        )

        def nudged(k, x, eps, i=i, j=j, d_f=d_f, d_e=d_e):
            if k != i:
                return None
            f, e = model.encode(k, x)
            if j < d_sae:
                f = f.clone()
                f[..., j] += eps * d_f[..., j]
            else:
                e = e + eps * d_e
            return model.decode(k, f, e, x)

        eps = 1e-2  # central differences in float32: large enough to rise above the rounding
        up = model.scores(cb, lambda k, x, eps=eps: nudged(k, x, eps))[0]
        down = model.scores(cb, lambda k, x, eps=eps: nudged(k, x, -eps))[0]
        numeric = float((up - down).sum()) / (2 * eps)
        assert abs(linear) > 1e-3, (i, j)
        assert numeric == pytest.approx(linear, rel=0.05, abs=2e-3), (i, j)


def unbatched_edges(model, cb, base, circuit):
    """The edges of one batch with one backward per downstream node (the reference)."""
    _, grads_f, grads_e = A.total_gradients(model, cb)
    leaves_f = [f.clone().requires_grad_(True) for f in cb.features]
    leaves_e = [e.clone().requires_grad_(True) for e in cb.errors]
    out = {}
    with torch.enable_grad():
        _, recomputed = A.frozen_forward(model, cb, leaves_f, leaves_e)
        for down, nodes in enumerate(circuit):
            for j in nodes:
                f, e = recomputed[down]
                if j < model.sites[down].d_sae:
                    scalar = (grads_f[down][..., j] * f[..., j]).sum()
                else:
                    scalar = (grads_e[down] * e).sum()
                for up in range(down):
                    if not circuit[up]:
                        continue
                    g_f, g_e = torch.autograd.grad(scalar, [leaves_f[up], leaves_e[up]], retain_graph=True)
                    d_f, d_e = A.deltas(cb, base, up)
                    for uj in circuit[up]:
                        w = (
                            (g_f[..., uj] * d_f[..., uj]).sum()
                            if uj < model.sites[up].d_sae
                            else (g_e * d_e).sum()
                        )
                        out[((up, uj), (down, j))] = float(w) / len(cb.layouts)
    return out


def test_batched_edges_equal_one_backward_per_node_and_cost_one_per_downstream_site(spliced):
    model, batches, base = spliced
    effects = A.node_effects(model, batches[:1], base)
    circuit = [[*np.argsort(-np.abs(e))[:4], model.sites[i].d_sae] for i, e in enumerate(effects)]
    circuit = [sorted(set(int(j) for j in c)) for c in circuit]
    counter = A.Counter()
    batched = A.edge_weights(model, batches[:1], base, circuit, counter)
    reference = unbatched_edges(model, batches[0], base, circuit)
    for key, value in reference.items():
        assert batched[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert counter.batched_backwards == len(SITES) - 1  # one per downstream site, whatever the nodes
    bigger = [sorted(set(c) | set(range(12))) for c in circuit]
    counter2 = A.Counter()
    A.edge_weights(model, batches[:1], base, bigger, counter2)
    assert counter2.batched_backwards == counter.batched_backwards
    assert counter2.backwards == counter.backwards


def test_edges_over_smaller_batches_are_the_same_edges(spliced, examples):
    """--edge-batch-size bounds the edge pass's memory; the weights (means over the examples) do not
    depend on it."""
    model, batches, base = spliced
    effects = A.node_effects(model, batches, base)
    circuit = [
        sorted({*map(int, np.argsort(-np.abs(e))[:3]), model.sites[i].d_sae}) for i, e in enumerate(effects)
    ]
    whole = A.edge_weights(model, batches, base, circuit)
    counter = A.Counter()
    halves = A.edge_weights(model, model.prepare(examples, 2, None, 1), base, circuit, counter)
    assert whole.keys() == halves.keys()
    for key, value in whole.items():
        assert halves[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert counter.batched_backwards == 4 * (len(SITES) - 1)  # 4 batches of 2, one per downstream site


def test_in_the_linear_regime_attribution_ranks_nodes_and_edges_as_exact_patching_does(tiny, examples):
    model = SplicedModel(tiny, site_saes(tiny.d_model, scale=0.05))  # small features: near linear
    batches = model.prepare(examples, 4, None, 1)
    base = A.baseline_of(batches, "selection-mean")
    effects = A.node_effects(model, batches, base)
    # features only: a random SAE's error term is most of the activation, and patching it is far
    # from linear
    nodes = [(i, int(j)) for i, e in enumerate(effects) for j in np.argsort(-np.abs(e[:-1]))[:4]]
    exact = exact_node_effects(model, batches, base, nodes)
    attributed = [effects[i][j] for i, j in nodes]
    assert np.array_equal(np.sign(attributed), np.sign(exact))
    assert spearman(np.array(attributed), np.array(exact)) > 0.9
    circuit = [[j for (s, j) in nodes if s == i] for i in range(len(SITES))]
    weights = A.edge_weights(model, batches, base, circuit)
    top = sorted(weights, key=lambda k: -abs(weights[k]))[:10]
    exact_edges = exact_edge_effects(model, batches, base, top)
    assert np.array_equal(np.sign([weights[k] for k in top]), np.sign(exact_edges))
    assert spearman(np.array([weights[k] for k in top]), np.array(exact_edges)) > 0.9
    ig = A.node_effects(model, batches, base, method="ig", ig_steps=4)
    assert spearman(np.array([ig[i][j] for i, j in nodes]), np.array(exact)) > 0.9


def test_every_node_is_faithful_and_no_node_is_the_empty_circuit(spliced):
    model, batches, base = spliced
    everything = [(i, j) for i, s in enumerate(model.sites) for j in range(s.d_sae + 1)]
    full = scores_keeping(model, batches, base, None)
    empty = scores_keeping(model, batches, base, [])
    assert abs(full.mean() - empty.mean()) > 1e-3
    np.testing.assert_allclose(scores_keeping(model, batches, base, everything), full, atol=1e-4)
    np.testing.assert_allclose(
        scores_keeping(model, batches, base, everything, complement=True), empty, atol=1e-4
    )
    assert ratio(full, empty, full) == pytest.approx(1.0)
    assert ratio(empty, empty, full) == pytest.approx(0.0)


def saved_saes(folder: Path, d_in: int, models=("tiny", "tiny", "tiny"), sites=SITES) -> list[str]:
    specs = []
    for k, ((layer, site), model) in enumerate(zip(sites, models, strict=True)):
        sae = random_sae(get_plugins(), "relu", d_in, 2 * d_in, seed=k, noise=0.3)
        meta = {"store": {"attrs": {"model": model, "layer": layer, "site": site}}}
        specs.append(str(save_sae(folder / f"sae{k}", sae, cfg={}, scircuits_meta=meta)))
    return specs


def config(tmp_path: Path, specs: list[str], **kw) -> CircuitConfig:
    values = dict(
        model="smollm2-135m",
        benchmark="arithmetic",
        sae=specs,
        limit=10,
        node_selection="global",
        nodes=8,
        sizes=[1, 4],
        random_circuits=2,
        exact_top=4,
        bootstrap=100,
        out=str(tmp_path / "out"),
        progress=False,
    )
    return CircuitConfig(**{**values, **kw})


def test_the_command_writes_typed_results_a_graph_and_a_report(tiny, tmp_path):
    specs = saved_saes(tmp_path, tiny.d_model)
    out = run_circuit(config(tmp_path, specs), get_plugins(), loaded=tiny)
    results = read_circuit(out)
    assert [s.name for s in results.sites] == ["resid0", "mlp1", "resid2"]
    assert results.n_selection + results.n_evaluation == 10
    assert 0 < len(results.nodes) <= 8 and results.edges
    assert results.splice["max_abs_logit_diff"] < 1e-3
    assert [p.size for p in results.curves] == sorted({1, 4, len(results.nodes)})
    assert all(p.random_draws == 2 for p in results.curves)
    assert results.exact_nodes is not None and results.exact_nodes.n == min(4, len(results.nodes))
    assert sum(e.exact is not None for e in results.edges) == min(4, len(results.edges))
    # one batched backward per downstream site and edge batch (--edge-batch-size sequences each)
    assert results.passes["edge_batches"] == -(-results.n_selection // 4)
    assert results.passes["batched_backwards"] <= results.passes["edge_batches"] * (len(SITES) - 1)
    phases = results.phase_seconds
    assert list(phases) == ["load", "attribution", "edges", "evaluation", "exact"]
    assert all(t["wall"] >= 0 and t["cpu"] >= 0 for t in phases.values())
    assert sum(t["wall"] for t in phases.values()) <= (results.wall_seconds or 0) + 0.1
    ids = {n.id for n in results.nodes} | {"metric"}
    assert all(e.source in ids and e.target in ids for e in results.edges)
    graph = json.loads((out / "graph.json").read_text())
    assert {"metadata", "qParams", "nodes", "links"} <= graph.keys()
    assert {n["node_id"] for n in graph["nodes"]} == ids
    assert len(graph["links"]) == len(results.edges)
    root = ET.parse(out / "circuit.graphml").getroot()
    ns = "{http://graphml.graphdrawing.org/xmlns}"
    assert len(root.findall(f".//{ns}edge")) == len(results.edges)
    report = (out / "report.md").read_text()
    assert "## Circuit" in report and "circuit.png" in report
    assert (out / "circuit.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "change,needle",
    [
        (dict(models=("tiny", "other", "tiny")), "different models"),
        (dict(sites=[(2, "resid"), (1, "mlp"), (0, "resid")]), "out of the model's order"),
        (dict(sites=[(0, "resid"), (0, "resid"), (2, "resid")]), "same site"),
    ],
)
def test_sae_sets_that_do_not_go_together_are_refused(tiny, tmp_path, change, needle):
    specs = saved_saes(tmp_path, tiny.d_model, **change)
    with pytest.raises(ConfigError, match=needle):
        find_circuit(config(tmp_path, specs), get_plugins(), loaded=tiny)


def test_a_site_without_an_sae_lists_the_sites_that_have_one(tiny, tmp_path):
    specs = saved_saes(tmp_path, tiny.d_model)
    with pytest.raises(
        ConfigError, match="no SAE for resid3; the sites with an SAE are resid0, mlp1, resid2"
    ):
        find_circuit(config(tmp_path, specs, sites="resid0,resid3"), get_plugins(), loaded=tiny)


def test_a_threshold_that_keeps_nothing_gives_the_largest_effect(tiny, tmp_path):
    specs = saved_saes(tmp_path, tiny.d_model)
    with pytest.raises(ConfigError, match=r"largest \|effect\| found is \d"):
        find_circuit(config(tmp_path, specs, node_threshold=1e6), get_plugins(), loaded=tiny)


def test_a_circuit_too_large_for_memory_is_refused_up_front_with_an_estimate(tiny, tmp_path, monkeypatch):
    specs = saved_saes(tmp_path, tiny.d_model)
    called = []
    monkeypatch.setattr(SplicedModel, "prepare", lambda *a, **k: called.append(1))
    with pytest.raises(ConfigError, match=r"needs about [\d.]+ GiB, above --max-memory-gb"):
        find_circuit(config(tmp_path, specs, max_memory_gb=1e-4), get_plugins(), loaded=tiny)
    assert not called  # refused before any forward pass


def test_the_command_refuses_bad_saes_in_one_line_with_exit_2_and_writes_nothing(tmp_path, capsys):
    from scircuits.cli import main

    specs = saved_saes(tmp_path, 576, sites=[(6, "resid"), (3, "resid"), (9, "resid")])
    out = tmp_path / "out"
    for args, needle in [
        ([f"--sae={s}" for s in specs], "out of the model's order (resid6, resid3, resid9)"),
        ([f"--sae={specs[0]}"], "needs SAEs at two sites or more"),
        ([f"--sae={specs[0]}/cfg.json"], "is not a folder"),
        ([], "circuit needs --sae once per site"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["circuit", *args, "--limit", "4", "--out", str(out), "--no-progress"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
        assert not out.exists()


def test_an_out_that_is_or_holds_an_input_is_refused_and_nothing_moves(tmp_path, capsys):
    """`--out` equal to an --sae folder (with --force it moved the input aside), or holding one, or the
    model's folder: one line, no lock file left, nothing moved."""
    from scircuits.cli import main

    specs = saved_saes(tmp_path / "saes", 576, sites=[(3, "resid"), (6, "resid"), (9, "resid")])
    before = sorted(p.name for p in (tmp_path / "saes").iterdir())
    for out in (specs[0], str(tmp_path / "saes"), str(Path(specs[1]) / "circuit")):
        with pytest.raises(SystemExit) as exc:
            main(["circuit", *[f"--sae={s}" for s in specs], "--limit", "4", "--out", out, "--force"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "which this command reads" in err, err
    assert sorted(p.name for p in (tmp_path / "saes").iterdir()) == before
    assert not list((tmp_path / "saes").rglob(".scircuits-lock"))


def test_a_folder_of_per_site_checkpoints_is_read_in_the_models_order(tiny, tmp_path):
    from scircuits.platform.circuit.sites import load_site_saes

    folder = tmp_path / "saes"
    specs = saved_saes(folder, tiny.d_model)
    for spec, name in zip(specs, ["z_resid0", "a_mlp1", "m_resid2"], strict=True):
        Path(spec).rename(folder / name)
    adapter = get_plugins().models.get("smollm2-135m")
    saes = load_site_saes([str(folder)], get_plugins(), adapter, "smollm2-135m")
    assert [s.name for s in saes] == ["resid0", "mlp1", "resid2"]


@pytest.mark.slow
def test_a_circuit_on_the_real_smollm2_is_exact_and_complete(smollm2, tmp_path):
    """Bounded: random SAEs at three resid sites of the real model, 8 examples (4 + 4)."""
    sites = [(3, "resid"), (9, "resid"), (15, "resid")]
    specs = saved_saes(tmp_path, smollm2.d_model, models=("smollm2-135m",) * 3, sites=sites)
    cfg = config(
        tmp_path, specs, limit=8, batch_size=8, nodes=6, sizes=[1, 3], random_circuits=1, exact_top=3
    )
    results = read_circuit(run_circuit(cfg, get_plugins(), loaded=smollm2))
    assert results.splice["max_abs_logit_diff"] < 1e-3
    assert [s.name for s in results.sites] == ["resid3", "resid9", "resid15"]
    assert results.nodes and results.edges and results.exact_nodes is not None
    assert results.reference["full"]["mean"] > results.reference["empty"]["mean"]  # patching everything hurts
    assert results.passes["batched_backwards"] <= results.passes["edge_batches"] * 2


def test_graph_json_loads_in_circuit_tracers_frontend_models(tiny, tmp_path):
    """graph.json validates against circuit-tracer's own frontend pydantic models (the peers install it
    without its dependencies: circuit_tracer.frontend needs pydantic only), and every link joins two
    of its nodes."""
    from tests.test_published_reference import peer

    models = peer("circuit_tracer.frontend.graph_models")
    specs = saved_saes(tmp_path, tiny.d_model)
    out = run_circuit(config(tmp_path, specs), get_plugins(), loaded=tiny)
    graph = models.Model.model_validate(json.loads((out / "graph.json").read_text()))
    ids = {n.node_id for n in graph.nodes}
    assert len(ids) == len(graph.nodes) and graph.links
    assert all(link["source"] in ids and link["target"] in ids for link in graph.links)
    assert sum(n.is_target_logit for n in graph.nodes) == 1


def test_the_cross_split_check_measures_the_same_circuit_on_the_other_split(tiny, tmp_path):
    specs = saved_saes(tmp_path, tiny.d_model)
    out = run_circuit(config(tmp_path, specs, check_split="train"), get_plugins(), loaded=tiny)
    results = read_circuit(out)
    check = results.cross_split
    assert check is not None and check.split == "train" and check.n_examples == results.n_evaluation
    assert check.point.size == len(results.nodes) and check.point.random_draws == 2
    assert check.point.faithfulness is not None and check.point.faithfulness == check.point.faithfulness
    held_out = next(p for p in results.curves if p.size == len(results.nodes))
    assert check.reference["full"]["mean"] != results.reference["full"]["mean"]  # other examples
    assert check.point.faithfulness != held_out.faithfulness
    assert "Cross-split check" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "split,needle", [("test", "is the split the circuit is found on"), ("nope", "has no split 'nope'")]
)
def test_a_bad_check_split_is_refused_before_the_model_loads(tmp_path, split, needle):
    specs = saved_saes(tmp_path, 64)
    with pytest.raises(ConfigError, match=needle):
        find_circuit(config(tmp_path, specs, check_split=split), get_plugins())


def test_saes_trained_on_other_weights_are_refused_and_another_commit_is_said(caplog):
    """The circuit's SAEs must come from the weights it loads: two content hashes that differ are
    refused in one line; two hub commits that differ are only logged (a commit may keep the weights)."""
    import logging

    from scircuits.platform.circuit.sites import SiteSAE, check_trained_on

    def sae(revision):
        info = {"meta": {"store": {"attrs": {"model": "m", "model_revision": revision}}}}
        return SiteSAE(3, "resid", None, f"saes/{revision}", info)

    check_trained_on([sae("sha256:" + "a" * 64), sae(None)], "sha256:" + "a" * 64, "m")
    with pytest.raises(
        ConfigError, match=r"the SAE saes/sha256:b+ was trained on activations of other weights"
    ):
        check_trained_on([sae("sha256:" + "b" * 64)], "sha256:" + "a" * 64, "m")
    with caplog.at_level(logging.WARNING, logger="scircuits"):
        check_trained_on([sae("1" * 40)], "2" * 40, "m")
    assert f"trained on revision {'1' * 40} of its model; m is at {'2' * 40}" in caplog.text


def test_an_edit_position_past_every_sequence_says_so(tiny, tmp_path):
    specs = saved_saes(tmp_path, tiny.d_model)
    with pytest.raises(
        ConfigError, match=r"--edit-from-position 1000 is past every sequence \(the longest has"
    ):
        find_circuit(config(tmp_path, specs, edit_from_position=1000), get_plugins(), loaded=tiny)


def test_sizes_past_the_nodes_that_fire_are_said_and_left_out(tiny, tmp_path, caplog):
    import logging

    specs = saved_saes(tmp_path, tiny.d_model)
    with caplog.at_level(logging.WARNING, logger="scircuits"):
        results = find_circuit(config(tmp_path, specs, sizes=[1, 100_000]), get_plugins(), loaded=tiny)
    assert "--sizes 100000: more nodes than the" in caplog.text and "left out of the curves" in caplog.text
    assert 100_000 not in {p.size for p in results.curves} and 1 in {p.size for p in results.curves}
