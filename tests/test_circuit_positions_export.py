"""With positions kept, the circuit's exports carry each node's effect per position with the position's
token: results.json (position_tokens), graph.json (metadata.prompt_tokens, by_position on nodes and
links), circuit.graphml (token_pos<t> graph keys, effect_pos<t> node keys) and the dashboard page's
data; read back here on a tiny synth addition circuit. With positions summed none of them appear."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from scircuits.platform.circuit.results import OUTPUT_ID, read_circuit
from scircuits.platform.circuit.stage import run_circuit
from scircuits.platform.dashboard.circuit_page import circuit_page
from scircuits.platform.manager.plugin_set import get_plugins
from tests import test_circuit_ground_truth as gt
from tests.test_circuit_ground_truth import config

synth = gt.synth  # the module's tiny synth addition model (fixture)

# <bos> a0 a1 + b0 b1 = s0 s1 s2 (2-digit addition): the tokens every example shares
SHARED = {0: "<bos>", 3: "+", 6: "="}


@pytest.fixture(scope="module")
def kept(synth, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kept")
    _, loaded = synth
    cfg = config(synth, tmp, metric="counterfactual", positions="kept")
    return run_circuit(cfg, get_plugins(), loaded=loaded)


def test_results_name_every_aligned_position_and_its_tokens(kept):
    results = read_circuit(kept)
    tokens = results.position_tokens
    assert tokens is not None and [p.index for p in tokens] == list(range(10))
    for t, token in SHARED.items():
        assert tokens[t].token == token and tokens[t].distinct == 1 and tokens[t].label == repr(token)
    digits = [p for t, p in enumerate(tokens) if t not in SHARED]
    assert all(p.token is None and p.distinct > 1 and p.tokens[0].strip().isdigit() for p in digits)
    assert all(len(p.tokens) == min(p.distinct, 5) for p in digits)
    assert all(len(n.by_position) == len(tokens) for n in results.nodes)


def test_graph_json_carries_each_nodes_and_links_effects_per_position(kept):
    results = read_circuit(kept)
    graph = json.loads((kept / "graph.json").read_text())
    labels = [p.label for p in results.position_tokens]
    assert graph["metadata"]["prompt_tokens"] == labels and "positions kept" in graph["metadata"]["prompt"]
    by_id = {n.id: n for n in results.nodes}
    for node in graph["nodes"]:
        if node["node_id"] == OUTPUT_ID:
            assert "by_position" not in node
            continue
        entries = node["by_position"]
        assert [e["ctx_idx"] for e in entries] == list(range(len(labels)))
        assert [e["token"] for e in entries] == labels
        assert [e["influence"] for e in entries] == by_id[node["node_id"]].by_position
        assert sum(e["influence"] for e in entries) == pytest.approx(node["influence"], rel=1e-4, abs=1e-6)
    assert graph["links"]
    for link in graph["links"]:
        entries = link["by_position"]
        assert sum(e["weight"] for e in entries) == pytest.approx(link["weight"], rel=1e-4, abs=1e-6)
        for e in entries:
            if link["target"] == OUTPUT_ID:
                assert e["target_ctx_idx"] is None
            else:  # attention reads earlier positions only
                assert e["target_ctx_idx"] >= e["source_ctx_idx"]


def test_graphml_carries_each_nodes_effect_per_position_and_each_positions_token(kept):
    results = read_circuit(kept)
    graph = nx.read_graphml(kept / "circuit.graphml")
    labels = [p.label for p in results.position_tokens]
    assert [graph.graph[f"token_pos{t}"] for t in range(len(labels))] == labels
    for node in results.nodes:
        data = graph.nodes[node.id]
        assert [data[f"effect_pos{t}"] for t in range(len(labels))] == node.by_position
        assert data["effect"] == pytest.approx(node.effect)


def test_the_dashboard_page_data_holds_the_positions_and_each_nodes_effects(kept):
    results = read_circuit(kept)
    page = circuit_page(kept, results, None, set(), "resid1")
    assert [p["label"] for p in page.data["positions"]] == [p.label for p in results.position_tokens]
    by_id = {n.id: n for n in results.nodes}
    for node in page.data["nodes"]:
        if node["kind"] != "metric":
            assert node["by_position"] == by_id[node["id"]].by_position


def test_with_positions_summed_no_export_has_positions(synth, tmp_path):
    _, loaded = synth
    out = run_circuit(config(synth, tmp_path, metric="counterfactual"), get_plugins(), loaded=loaded)
    results = read_circuit(out)
    assert results.position_tokens is None and all(n.by_position is None for n in results.nodes)
    graph = json.loads((out / "graph.json").read_text())
    assert graph["metadata"]["prompt_tokens"] == []
    assert not any("by_position" in n for n in graph["nodes"] + graph["links"])
    graphml = nx.read_graphml(out / "circuit.graphml")
    assert not any(k.startswith("token_pos") for k in graphml.graph)
    assert not any(k.startswith("effect_pos") for _, d in graphml.nodes(data=True) for k in d)
    assert circuit_page(out, results, None, set(), "resid1").data["positions"] is None
