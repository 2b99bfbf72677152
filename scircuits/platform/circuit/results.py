"""The circuit's results.json (typed, ``CircuitResults``) and its graph exports: graph.json in the
node/link shape of circuit-tracer's frontend models, and circuit.graphml (docs/circuits.md, "Files")."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape, quoteattr

from pydantic import BaseModel, ConfigDict

from scircuits.files import write_atomic
from scircuits.platform.contract import jsonvalues

RESULTS_FILE = "results.json"
GRAPH_FILE = "graph.json"
GRAPHML_FILE = "circuit.graphml"
OUTPUT_ID = "metric"


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteResult(Frozen):
    name: str  # resid6, mlp3, ...
    layer: int
    site: str
    d_sae: int
    sae: str  # what --sae named
    sae_sha256: str | None = None  # of its weights file when local, at the time of the circuit
    variant: str | None = None
    active_features: int  # fire on the patched selection tokens


class CircuitNode(Frozen):
    id: str  # resid6/123, resid6/error
    site: str
    layer: int
    kind: Literal["feature", "error"]
    feature: int | None
    effect: float  # attribution: mean change of the score when patched, per selection example
    rank: int  # 1 = largest |effect| among every node
    activation: float | None = None  # mean over the patched selection tokens (features)
    frequency: float | None = None  # share of those tokens where it fires
    exact_effect: float | None = None  # when among the exact checks
    by_position: list[float] | None = None  # --positions kept: the effect at each position


class PositionToken(Frozen):
    """One aligned position (--positions kept): what the examples hold there."""

    index: int
    token: str | None  # the token every selection example has there; None where they differ
    tokens: list[str]  # the distinct tokens there, most frequent first (at most 5)
    distinct: int  # how many distinct tokens

    @property
    def label(self) -> str:
        """``'+'``, or ``'7'|'9'|… (10)`` where the examples differ."""
        if self.token is not None:
            return repr(self.token)
        more = "|…" if self.distinct > len(self.tokens) else ""
        return "|".join(map(repr, self.tokens)) + more + f" ({self.distinct})"


class CircuitEdge(Frozen):
    source: str
    target: str  # a node id, or "metric"
    weight: float  # attribution: direct effect, per selection example
    exact: float | None = None
    opposite_sign: bool | None = None
    # --positions kept: [source position][target position] (to the metric: [source position][0])
    by_position: list[list[float]] | None = None


class CurvePoint(Frozen):
    size: int  # nodes in the circuit
    nodes_per_site: int | None = None  # --node-selection per-site: the top this many of each site
    faithfulness: float | None
    faithfulness_ci: list[float] | None
    completeness: float | None
    completeness_ci: list[float] | None
    random_draws: int
    random_faithfulness: float | None = None
    random_faithfulness_ci: list[float] | None = None
    random_completeness: float | None = None
    random_completeness_ci: list[float] | None = None
    score: dict[str, float] | None = None  # m(C): mean, low, high over the held-out examples
    complement_score: dict[str, float] | None = None  # m(M \ C)
    random_faithfulness_draws: list[float | None] | None = None  # per random circuit
    random_completeness_draws: list[float | None] | None = None


class CrossSplit(Frozen):
    """The circuit found on the run's split, measured on another split's examples."""

    split: str
    seed: int | None = None  # the examples' seed (None in results written before it was recorded)
    n_examples: int
    reference: dict[str, dict[str, float]]  # m(M) and m(∅) on those examples
    point: CurvePoint  # faithfulness and completeness at the circuit's size, beside random circuits


class Agreement(Frozen):
    n: int
    spearman: float | None
    spearman_ci: list[float] | None
    opposite_sign: list[str]  # the nodes or edges whose exact effect has the other sign


class CircuitResults(Frozen):
    format: Literal["scircuits.circuit"] = "scircuits.circuit"
    schema_version: int = 1
    config: dict[str, Any]
    config_hash: str
    model: str
    benchmark: str
    score: str  # what the metric m is (scoring.score_name)
    sites: list[SiteResult]
    method: str
    baseline: str
    positions: str
    n_selection: int
    n_evaluation: int
    n_nodes_total: int
    thresholds: dict[str, float | int | str | None]
    largest_effect: float
    splice: dict[str, float]
    reference: dict[str, dict[str, float]]  # m(M) and m(∅) on the evaluation examples
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    curves: list[CurvePoint]
    exact_nodes: Agreement | None = None
    exact_edges: Agreement | None = None
    cross_split: CrossSplit | None = None  # --check-split
    cross_seed: CrossSplit | None = None  # --check-seed: the same check on another seed's examples
    # --positions kept: the aligned positions by_position counts (index, token), else None
    position_tokens: list[PositionToken] | None = None
    passes: dict[str, Any]
    provenance: dict[str, Any]
    wall_seconds: float | None = None
    # per phase (load, attribution, edges, evaluation, exact): {"wall": s, "cpu": s} of this process
    phase_seconds: dict[str, dict[str, float]] = {}

    def to_json(self) -> str:
        return jsonvalues.dumps(self.model_dump(mode="python"), indent=2)


def read_circuit(folder: str | Path) -> CircuitResults:
    data = jsonvalues.load_file(Path(folder) / RESULTS_FILE, "circuit results")
    return jsonvalues.validate_nulls_as_nan(CircuitResults, data)


def node_positions(results: CircuitResults, node: CircuitNode) -> list[dict[str, Any]] | None:
    """--positions kept: the node's effect at each aligned position with its token."""
    if node.by_position is None or results.position_tokens is None:
        return None
    return [
        {"ctx_idx": p.index, "token": p.label, "influence": v}
        for p, v in zip(results.position_tokens, node.by_position, strict=True)
    ]


def edge_positions(edge: CircuitEdge) -> list[dict[str, Any]] | None:
    """--positions kept: the edge's nonzero weights per (source position, target position); an edge
    to the metric has no target position (None)."""
    if edge.by_position is None:
        return None
    to_metric = edge.target == OUTPUT_ID
    return [
        {"source_ctx_idx": s, "target_ctx_idx": None if to_metric else t, "weight": w}
        for s, row in enumerate(edge.by_position)
        for t, w in enumerate(row)
        if w != 0
    ]


def graph_json(results: CircuitResults) -> dict[str, Any]:
    """The circuit as circuit-tracer's frontend models spell a graph (metadata, qParams, nodes, links).
    A node is a feature over every position, so it sits at ctx_idx 0 and the metric is one logit node;
    with positions kept, ``metadata.prompt_tokens`` holds each position's token and every node and link
    carries ``by_position`` (fields circuit-tracer's models ignore)."""
    n_layers_shown = max((s.layer for s in results.sites), default=0) + 1
    kept = results.position_tokens is not None
    nodes: list[dict[str, Any]] = []
    for node in results.nodes:
        by_position = node_positions(results, node)
        nodes.append(
            {
                **({"by_position": by_position} if by_position is not None else {}),
                "node_id": node.id,
                "jsNodeId": node.id,
                "feature": node.feature if node.feature is not None else -1,
                "layer": str(node.layer),
                "ctx_idx": 0,
                "feature_type": "cross layer transcoder"
                if node.kind == "feature"
                else "mlp reconstruction error",
                "clerp": f"{node.site} feature {node.feature}"
                if node.kind == "feature"
                else f"{node.site} error",
                "influence": node.effect,
                "activation": node.activation,
                "site": node.site,
            }
        )
    nodes.append(
        {
            "node_id": OUTPUT_ID,
            "jsNodeId": OUTPUT_ID,
            "feature": 0,
            "layer": str(n_layers_shown),
            "ctx_idx": 0,
            "feature_type": "logit",
            "is_target_logit": True,
            "clerp": results.score,
        }
    )
    return {
        "metadata": {
            "slug": f"{results.model}__{results.benchmark}",
            "scan": results.model,
            "transcoder_list": [s.sae for s in results.sites],
            "prompt_tokens": [p.label for p in results.position_tokens or []],
            "prompt": f"{results.benchmark}: {results.n_selection} selection examples, positions "
            + ("kept" if kept else "summed"),
            "node_threshold": float(results.thresholds.get("node_threshold", 0.0)),
            "schema_version": 1,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [
            {
                "source": e.source,
                "target": e.target,
                "weight": e.weight,
                **({"by_position": edge_positions(e)} if e.by_position is not None else {}),
            }
            for e in results.edges
        ],
    }


def graphml(results: CircuitResults) -> str:
    """The circuit in GraphML. With positions kept, the graph's keys ``token_pos<t>`` name each
    position's token and every node has ``effect_pos<t>``, its effect at position t."""
    positions = results.position_tokens or []
    keys = [
        ("site", "node", "string"),
        ("layer", "node", "int"),
        ("kind", "node", "string"),
        ("feature", "node", "int"),
        ("effect", "node", "double"),
        ("weight", "edge", "double"),
        *((f"token_pos{p.index}", "graph", "string") for p in positions),
        *((f"effect_pos{p.index}", "node", "double") for p in positions),
    ]
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">',
        *(f'  <key id="{k}" for="{f}" attr.name="{k}" attr.type="{t}"/>' for k, f, t in keys),
        '  <graph id="circuit" edgedefault="directed">',
        *(f'    <data key="token_pos{p.index}">{escape(p.label)}</data>' for p in positions),
    ]
    for node in results.nodes:
        data: dict[str, object] = {
            "site": node.site,
            "layer": node.layer,
            "kind": node.kind,
            "effect": node.effect,
        }
        if node.feature is not None:
            data["feature"] = node.feature
        if positions and node.by_position is not None:
            data.update(
                {f"effect_pos{p.index}": repr(v) for p, v in zip(positions, node.by_position, strict=True)}
            )
        lines.append(f"    <node id={quoteattr(node.id)}>")
        lines.extend(f'      <data key="{k}">{v}</data>' for k, v in data.items())
        lines.append("    </node>")
    lines.append(f'    <node id="{OUTPUT_ID}"><data key="kind">metric</data></node>')
    for k, edge in enumerate(results.edges):
        lines.append(
            f'    <edge id="e{k}" source={quoteattr(edge.source)} target={quoteattr(edge.target)}>'
            f'<data key="weight">{edge.weight!r}</data></edge>'
        )
    lines += ["  </graph>", "</graphml>", ""]
    return "\n".join(lines)


def write_circuit(folder: Path, results: CircuitResults) -> Path:
    """graph.json and circuit.graphml, then results.json last (its presence marks completion)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / GRAPH_FILE, jsonvalues.dumps(graph_json(results), indent=1))
    write_atomic(folder / GRAPHML_FILE, graphml(results))
    write_atomic(folder / RESULTS_FILE, results.to_json())
    return folder
