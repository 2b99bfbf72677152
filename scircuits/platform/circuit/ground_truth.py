"""A circuit scored against a synthetic task's known mechanism (docs/ground_truth.md
"Circuits against ground truth").

``score_circuit_ground_truth`` takes a circuit's feature nodes with their activations at every token
of labelled examples, the examples' per-token variables (``SynthProblem.variables``), and the circuit's
edges with positions kept, and answers:

- **Alignment**: a feature node is *aligned* when its activation separates one declared label
  (``key=value``, ``variable_labels``) with AUROC >= ``threshold`` (0.9, the project's
  ``AUROC_RECOVERED``) on the tokens where that key is defined. Precision: the share of the circuit's
  feature nodes that are aligned (error terms are not features and are not counted). Recall: the
  share of the task's labels that some circuit feature is aligned with; and, where the whole
  dictionary is given, the same over the labels some feature of the dictionary is aligned with
  (what the SAEs could offer at all). Percentile bootstrap intervals over nodes (precision) and labels
  (recall).
- **Routes**: the share of the |weight| of the circuit's node-to-node edges that runs from prompt
  (operand) positions to answer positions, and within answer positions; the same for the edges into
  aligned features; and the share of the aligned features' |effect| that sits at answer positions.
  Answer positions are the positions that predict an answer token (``answer_start − 1`` .. end − 1);
  prompt positions are 1 .. answer_start − 2 (position 0, ``<bos>``, is never patched).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scircuits.platform.causal.statistics import Bootstrap
from scircuits.platform.circuit.results import read_circuit
from scircuits.platform.circuit.sites import choose_sites, load_site_saes
from scircuits.platform.circuit.spliced import SplicedModel
from scircuits.platform.config import CircuitConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.models import LoadedModel
from scircuits.platform.groundtruth.scoring import AUROC_RECOVERED, auroc, variable_labels
from scircuits.platform.manager.plugin_set import get_plugins


@dataclass(frozen=True)
class NodeAlignment:
    node: str
    label: str | None  # the label it separates best
    auroc: float  # its AUROC there
    aligned: bool


@dataclass(frozen=True)
class Share:
    value: float | None  # None: nothing to share (no edges, no aligned node)
    total: float  # the |weight| (or |effect|) it is a share of


@dataclass
class GroundTruthScore:
    threshold: float
    n_feature_nodes: int
    n_error_nodes: int
    labels: list[str]  # the task's labels scored (key=value)
    recoverable: list[str] | None  # labels some dictionary feature is aligned with (None: not given)
    nodes: list[NodeAlignment]
    covered: list[str]  # labels some circuit feature is aligned with
    precision: float | None
    precision_ci: list[float] | None
    recall: float | None
    recall_ci: list[float] | None
    recall_recoverable: float | None
    recall_recoverable_ci: list[float] | None
    routes: dict[str, Share] = field(default_factory=dict)
    # per variable (carry_in, sum_digit, ...): the circuit feature and label with the highest AUROC
    best_by_variable: dict[str, NodeAlignment] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def answer_positions(answer_start: int, length: int) -> list[int]:
    """The positions that predict an answer token."""
    return list(range(answer_start - 1, length - 1))


def prompt_positions(answer_start: int) -> list[int]:
    """The prompt's positions after ``<bos>`` that precede the first answer prediction."""
    return list(range(1, answer_start - 1))


def _interval(values: np.ndarray, replicates: int, seed: int) -> tuple[float | None, list[float] | None]:
    if len(values) == 0:
        return None, None
    interval = Bootstrap(len(values), replicates, seed).interval(values.astype(np.float64))
    return interval.mean, interval.as_list()


def _label_aurocs(x: np.ndarray, labels: Sequence) -> np.ndarray:
    """AUROC of ``x`` (one value per flattened token) at each label, high values meaning the label."""
    return np.array([float(auroc(x[label.rows], label.y)) for label in labels])


def score_circuit_ground_truth(
    feature_activations: Mapping[str, np.ndarray],
    error_nodes: Sequence[str],
    token_variables: Sequence[Sequence[Mapping[str, int]]],
    index_keys: Sequence[str],
    answer_start: int,
    edges: Mapping[tuple[str, str], np.ndarray] | None = None,
    node_effects: Mapping[str, np.ndarray] | None = None,
    dictionary: Mapping[str, np.ndarray] | None = None,
    threshold: float = AUROC_RECOVERED,
    replicates: int = 1000,
    seed: int = 0,
) -> GroundTruthScore:
    """Score a circuit against the task's declared variables (module docstring).

    ``feature_activations``: circuit feature node id -> (examples, positions) activation.
    ``token_variables``: per example, per position, the declared variables (examples aligned).
    ``edges``: (source id, target id) -> (T, T) weight by [source position, target position] (the
    metric's edges are skipped). ``node_effects``: node id -> (T,) effect by position.
    ``dictionary``: site -> (examples, positions, d_sae) every feature of that site's SAE.
    """
    cells = [cell for example in token_variables for cell in example]
    labels = variable_labels(cells, exclude=index_keys)
    names = [label.name for label in labels]
    nodes = []
    table = {}
    for node, acts in feature_activations.items():
        table[node] = values = _label_aurocs(np.asarray(acts, dtype=np.float64).reshape(-1), labels)
        k = int(np.argmax(values)) if len(values) else -1
        best = float(values[k]) if k >= 0 else 0.0
        nodes.append(NodeAlignment(node, names[k] if k >= 0 else None, best, best >= threshold))
    by_variable: dict[str, NodeAlignment] = {}
    for node, values in table.items():
        for name, value in zip(names, values, strict=True):
            key = name.split("=")[0]
            if key not in by_variable or value > by_variable[key].auroc:
                by_variable[key] = NodeAlignment(node, name, float(value), bool(value >= threshold))
    covered = sorted({n.label for n in nodes if n.aligned and n.label is not None})
    recoverable = None
    if dictionary is not None:
        found: set[str] = set()
        for acts in dictionary.values():
            flat = np.asarray(acts, dtype=np.float64).reshape(len(cells), -1)
            for label in labels:
                if float(np.max(auroc(flat[label.rows], label.y))) >= threshold:
                    found.add(label.name)
        recoverable = sorted(found)
    precision, precision_ci = _interval(np.array([n.aligned for n in nodes]), replicates, seed)
    recall, recall_ci = _interval(np.array([name in covered for name in names]), replicates, seed)
    rec_r, rec_r_ci = (None, None)
    if recoverable is not None:
        rec_r, rec_r_ci = _interval(np.array([name in covered for name in recoverable]), replicates, seed)
    length = len(token_variables[0])
    answer = np.zeros(length, dtype=bool)
    answer[answer_positions(answer_start, length)] = True
    prompt = np.zeros(length, dtype=bool)
    prompt[prompt_positions(answer_start)] = True
    aligned = {n.node for n in nodes if n.aligned}
    routes: dict[str, Share] = {}
    if edges is not None:
        between = {k: np.abs(w) for k, w in edges.items() if np.ndim(w) == 2 and w.shape[1] == length}
        routes["prompt_to_answer"] = _share(between.values(), prompt, answer)
        routes["answer_to_answer"] = _share(between.values(), answer, answer)
        into_aligned = [w for (s, t), w in between.items() if t in aligned]
        routes["into_aligned_prompt_to_answer"] = _share(into_aligned, prompt, answer)
        routes["into_aligned_answer_to_answer"] = _share(into_aligned, answer, answer)
    if node_effects is not None:
        mass = [np.abs(node_effects[n]) for n in aligned if n in node_effects]
        total = float(sum(m.sum() for m in mass))
        at_answer = float(sum(m[answer].sum() for m in mass))
        routes["aligned_effect_at_answer"] = Share(at_answer / total if total > 0 else None, total)
    return GroundTruthScore(
        threshold=threshold,
        n_feature_nodes=len(nodes),
        n_error_nodes=len(error_nodes),
        labels=names,
        recoverable=recoverable,
        nodes=nodes,
        covered=covered,
        precision=precision,
        precision_ci=precision_ci,
        recall=recall,
        recall_ci=recall_ci,
        recall_recoverable=rec_r,
        recall_recoverable_ci=rec_r_ci,
        routes=routes,
        best_by_variable=dict(sorted(by_variable.items())),
    )


def _share(matrices: Iterable[np.ndarray], source: np.ndarray, target: np.ndarray) -> Share:
    """The share of the total |weight| of ``matrices`` on (source position, target position) pairs."""
    mats = list(matrices)
    total = float(sum(m.sum() for m in mats))
    part = float(sum(m[np.ix_(source, target)].sum() for m in mats))
    return Share(part / total if total > 0 else None, total)


def circuit_ground_truth(
    folder: str | Path,
    plugins: Any = None,
    n_examples: int = 600,
    threshold: float = AUROC_RECOVERED,
    replicates: int = 1000,
    loaded: LoadedModel | None = None,
) -> GroundTruthScore:
    """Score the circuit in ``folder`` (written by ``scircuits circuit`` on a synth benchmark, ideally
    with ``--positions kept``) against its task's variables, on the first ``n_examples`` examples of
    the circuit's split and seed: its features' and every dictionary feature's activations there."""
    if plugins is None:
        plugins = get_plugins()
    results = read_circuit(folder)
    config = CircuitConfig.model_validate(results.config)
    benchmark = plugins.benchmarks.get(config.benchmark)
    examples = list(benchmark.read_examples(config.split, n_examples, config.seed, config.benchmark_options))
    if not all("variables" in e.meta for e in examples):
        raise ConfigError(
            f"benchmark {config.benchmark!r} declares no per-token variables (Example.meta['variables']): "
            "a circuit can be scored against ground truth only on a synth benchmark"
        )
    starts = {int(e.meta["answer_start"]) for e in examples}
    if len(starts) != 1:
        raise ConfigError("the examples' answers start at different positions: positions are not aligned")
    adapter = plugins.models.get(config.model)
    saes = choose_sites(load_site_saes(list(config.sae), plugins, adapter, str(config.model)), config.sites)
    if loaded is None:
        loaded = adapter.load(model_path=config.model_path, dtype="float32", device=config.device)
    model = SplicedModel(loaded, saes)
    batches = model.prepare(examples, config.batch_size, config.max_length, config.edit_from_position)
    dictionary = {s.name: torch.cat([cb.features[i] for cb in batches]).numpy() for i, s in enumerate(saes)}
    length = len(examples[0].meta["variables"])
    if next(iter(dictionary.values())).shape[1] != length:
        raise ConfigError(
            f"the tokenizer gives {next(iter(dictionary.values())).shape[1]} tokens per example, the task "
            f"declares {length}: the model's tokenizer does not split the task's symbols one per token"
        )
    features = {n.id: dictionary[n.site][:, :, n.feature] for n in results.nodes if n.kind == "feature"}
    errors = [n.id for n in results.nodes if n.kind == "error"]
    edges = {
        (e.source, e.target): np.array(e.by_position) for e in results.edges if e.by_position is not None
    }
    effects = {n.id: np.array(n.by_position) for n in results.nodes if n.by_position is not None}
    return score_circuit_ground_truth(
        features,
        errors,
        [e.meta["variables"] for e in examples],
        examples[0].meta.get("index_keys", ()),
        starts.pop(),
        edges=edges or None,
        node_effects=effects or None,
        dictionary=dictionary,
        threshold=threshold,
        replicates=replicates,
        seed=config.seed,
    )
