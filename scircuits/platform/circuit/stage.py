"""`scircuits circuit`: ``run_circuit(config, plugins) -> Path`` reads the SAEs and the examples,
splices the SAEs in together (checked exact), attributes nodes and edges on the selection examples,
evaluates circuits on the evaluation examples, re-measures the top nodes and edges exactly, and
writes results.json, graph.json, circuit.graphml and report.md (docs/circuits.md)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from scircuits.platform.causal.statistics import FEW_EXAMPLES, Bootstrap, selection_split
from scircuits.platform.circuit.attribution import (
    OUTPUT,
    Counter,
    Node,
    baseline_of,
    edge_weights,
    node_effects,
)
from scircuits.platform.circuit.evaluate import curves
from scircuits.platform.circuit.exact import agreement, exact_edge_effects, exact_node_effects
from scircuits.platform.circuit.figure import write_report
from scircuits.platform.circuit.metrics import CounterfactualMetric, counterfactual_examples
from scircuits.platform.circuit.positions import (
    aligned_length,
    edge_weights_by_position,
    node_effects_by_position,
    position_tokens,
)
from scircuits.platform.circuit.results import (
    OUTPUT_ID,
    Agreement,
    CircuitEdge,
    CircuitNode,
    CircuitResults,
    CrossSplit,
    CurvePoint,
    PositionToken,
    SiteResult,
    write_circuit,
)
from scircuits.platform.circuit.selection import select
from scircuits.platform.circuit.sites import SiteSAE, check_trained_on, choose_sites, load_site_saes
from scircuits.platform.circuit.spliced import CircuitBatch, SplicedModel
from scircuits.platform.common.artifacts import (
    ArtifactError,
    FolderLock,
    check_claim,
    check_local,
    check_out_apart,
    check_writable,
    claim,
    describe_os_error,
    remove_orphans,
)
from scircuits.platform.common.device import check_device
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.provenance import base_provenance, file_sha256
from scircuits.platform.config import CircuitConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.hf_loading import check_weights_available
from scircuits.platform.contract.models import LoadedModel
from scircuits.platform.model.scoring import layout_examples, score_name
from scircuits.platform.train.checkpoint import WEIGHTS_FILE

log = get_logger(__name__)

KIND = "circuit"
# padded tokens per forward of the held-out evaluation (``evaluation_batch_size``); the default
# circuit's time (docs/circuits.md) was measured with it
EVALUATION_TOKENS = 16_384
POSITIONS = (
    "summed: a node is one feature (or error term) over every patched position; edges sum both positions"
)
KEPT = (
    "kept: a node is one feature (or error term) over every patched position, its effect also given per "
    "position (by_position); an edge's weight also per (source position, target position)"
)


class PhaseClock:
    """Wall and CPU seconds of consecutive phases (the CPU seconds are this process's: on a shared
    machine the wall time is mostly waiting)."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}
        self._wall, self._cpu = time.monotonic(), time.process_time()

    def lap(self, phase: str) -> None:
        wall, cpu = time.monotonic(), time.process_time()
        self.seconds[phase] = {"wall": round(wall - self._wall, 2), "cpu": round(cpu - self._cpu, 2)}
        self._wall, self._cpu = wall, cpu


def node_id(saes: list[SiteSAE], node: Node) -> str:
    if node == OUTPUT:
        return OUTPUT_ID
    i, j = node
    return f"{saes[i].name}/{'error' if j == saes[i].d_sae else j}"


def edge_memory_bytes(saes: list[SiteSAE], batch_size: int, length: int, nodes: int) -> int:
    """About what one batched edge backward holds: one vector per downstream node (at most ``nodes``)
    over the batch at the downstream site, its gradients at every upstream site (features and error
    term), and the transient gradients of the blocks it passes through (taken as 24 x d_model)."""
    d_model = saes[0].d_in
    per_vector = 2 * sum(s.d_sae + d_model for s in saes) + 24 * d_model
    return 4 * nodes * batch_size * length * per_vector


def edge_batch_size(config: CircuitConfig) -> int:
    return min(config.edge_batch_size, config.batch_size)


def evaluation_batch_size(config: CircuitConfig, tokenizer: Any, examples: list[Any]) -> int:
    """Sequences per forward of the held-out evaluation (forwards only): as many as fill a budget of
    padded tokens per forward (``EVALUATION_TOKENS``), at least --batch-size. Fewer, wider
    forwards do the same arithmetic with less thread synchronisation on a shared CPU."""
    sequences, _ = layout_examples(tokenizer, examples, config.max_length)
    longest = max((len(s.input_ids) for s in sequences), default=1)
    return max(config.batch_size, EVALUATION_TOKENS // max(longest, 1))


def node_budget(config: CircuitConfig, n_sites: int) -> int:
    """The most nodes the circuit can keep."""
    return config.nodes_per_site * n_sites if config.node_selection == "per-site" else config.nodes


def check_memory(config: CircuitConfig, saes: list[SiteSAE], loaded: LoadedModel, length: int) -> None:
    nodes = node_budget(config, len(saes))
    need = edge_memory_bytes(saes, edge_batch_size(config), length, nodes)
    if need > config.max_memory_gb * 2**30:
        lower = "--nodes-per-site" if config.node_selection == "per-site" else "--nodes"
        raise ConfigError(
            f"the edge pass of a {nodes}-node circuit over batches of {edge_batch_size(config)} "
            f"sequences of up to {length} tokens needs about {need / 2**30:.1f} GiB, above --max-memory-gb "
            f"{config.max_memory_gb:g}; lower {lower} or --edge-batch-size (or raise --max-memory-gb)"
        )


def load_examples(
    config: CircuitConfig,
    plugins: Any,
    split: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
) -> list[Any]:
    benchmark = plugins.benchmarks.get(config.benchmark)
    split = split or config.split
    seed = config.seed if seed is None else seed
    benchmark.check_split(split)
    examples = list(benchmark.read_examples(split, limit or config.limit, seed, config.benchmark_options))
    if config.metric == "counterfactual":
        examples = counterfactual_examples(examples, str(config.benchmark), seed)
    if len(examples) < 2:
        raise ConfigError(
            f"benchmark {config.benchmark!r} gave {len(examples)} example(s) for split {split!r}: a "
            "circuit needs at least 2 (selection and evaluation)"
        )
    return examples


def check_examples(config: CircuitConfig, plugins: Any, n_evaluation: int) -> list[Any] | None:
    """--check-split: as many examples of that split as the evaluation has (None without it)."""
    if config.check_split is None:
        return None
    if config.check_split == config.split:
        raise ConfigError(
            f"--check-split {config.check_split} is the split the circuit is found on; give another one"
        )
    return load_examples(config, plugins, config.check_split, max(n_evaluation, 2))


def seed_examples(config: CircuitConfig, plugins: Any, n_evaluation: int) -> list[Any] | None:
    """--check-seed: as many examples of --split drawn with that seed (None without it)."""
    if config.check_seed is None:
        return None
    if config.check_seed == config.seed:
        raise ConfigError(f"--check-seed {config.check_seed} is --seed; give another seed")
    return load_examples(config, plugins, None, max(n_evaluation, 2), config.check_seed)


def weights_sha256(spec: str) -> str | None:
    """The sha256 of a local checkpoint's weights file (None for a published SAE)."""
    weights = Path(spec).expanduser() / WEIGHTS_FILE
    return file_sha256(weights) if weights.is_file() else None


def local_inputs(config: CircuitConfig, plugins: Any) -> list[Path]:
    """The local folders the command reads: SAE folders and the model's (--model-path, or the folder
    an adapter loads its weights from, e.g. --model hf:DIR)."""
    source = getattr(plugins.models.get(config.model), "hf_id", None) if config.model else None
    specs = [*config.sae, config.model_path or "", str(source or "")]
    return [Path(spec).expanduser() for spec in specs if spec and Path(spec).expanduser().is_dir()]


def run_circuit(config: CircuitConfig, plugins: Any, loaded: LoadedModel | None = None) -> Path:
    started = time.monotonic()
    config = config.with_plugin_defaults(plugins)
    check_local(config.out, "--out", "circuit")
    out = Path(config.out)
    check_device(config.device)
    check_out_apart(out, read=local_inputs(config, plugins))
    try:
        fresh = not out.exists()
    except OSError:
        fresh = False
    check_writable(out, option="--out")
    try:
        with FolderLock(out, "circuit results"):
            remove_orphans(out)
            check_claim(out, KIND, option="--out", force=config.force)  # claimed once there are
            results = find_circuit(config, plugins, loaded)  # results: a failure leaves --out as it was
            results.wall_seconds = round(time.monotonic() - started, 1)
            claimed = claim(out, KIND, config.config_hash(), option="--out", force=config.force)
            if claimed.moved_to:
                what = (
                    "files scircuits did not write"
                    if claimed.state == "forced"
                    else "a circuit of other settings"
                )
                log.info(f"[circuit] {out} held {what}; moved it to {claimed.moved_to}")
            try:
                write_circuit(out, results)
                write_report(out, results)
            except OSError as exc:
                raise ArtifactError(
                    f"{out}: cannot write the results ({describe_os_error(exc)}); free space or choose "
                    "another --out, then run again"
                ) from None
            return out
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise


def find_circuit(config: CircuitConfig, plugins: Any, loaded: LoadedModel | None = None) -> CircuitResults:
    adapter = plugins.models.get(config.model)
    if not config.sae:
        raise ConfigError(
            "circuit needs --sae once per site (checkpoint folders of `scircuits train`, a folder holding "
            "one per site, or published SAEs hf:REPO/PATH, saelens:RELEASE/SAE_ID)"
        )
    clock = PhaseClock()
    examples = load_examples(config, plugins)  # a bad line anywhere stops here, before any weights
    selection, evaluation = selection_split(len(examples), config.selection_fraction, config.seed)
    assert selection is not None and evaluation is not None  # fraction > 0 and >= 2 examples
    other_examples = check_examples(config, plugins, len(evaluation))
    seed_other = seed_examples(config, plugins, len(evaluation))
    if loaded is None:
        check_weights_available(adapter, config.model_path)
    # the model's width is known before it loads only for the named weights (as ablate checks it)
    width = adapter.d_model if loaded is None and config.model_path is None else None
    saes = choose_sites(
        load_site_saes(list(config.sae), plugins, adapter, str(config.model), width), config.sites
    )
    if loaded is None:
        loaded = adapter.load(model_path=config.model_path, dtype="float32", device=config.device)
    if saes[0].d_in != loaded.d_model:
        raise ConfigError(
            f"the SAEs read width {saes[0].d_in}, but {config.model} has width {loaded.d_model}: they were "
            "made for another model"
        )
    check_trained_on(saes, loaded.revision, str(config.model))
    for s in saes:
        if s.layer >= loaded.n_layers:
            raise ConfigError(
                f"the SAE {s.spec} reads layer {s.layer}, but {config.model} has {loaded.n_layers}"
            )
    sequences, layouts = layout_examples(loaded.tokenizer, examples, config.max_length)
    longest = max(len(s.input_ids) for s in sequences)
    if config.edit_from_position >= longest:
        raise ConfigError(
            f"--edit-from-position {config.edit_from_position} is past every sequence (the longest has "
            f"{longest} tokens): no position would be patched; give a smaller one (1 spares the sink)"
        )
    check_memory(config, saes, loaded, longest)
    if len(evaluation) < FEW_EXAMPLES:
        log.warning(
            f"warning: the circuit is evaluated on {len(evaluation)} held-out example(s): its intervals "
            f"and faithfulness mean little below {FEW_EXAMPLES}; give a larger --limit"
        )
    model = SplicedModel(loaded, saes)
    if config.metric == "counterfactual":
        every = examples + (other_examples or []) + (seed_other or [])
        model.metric = CounterfactualMetric(loaded.tokenizer, every, config.max_length)
    prepare = lambda idx, size=config.batch_size: model.prepare(  # noqa: E731
        [examples[int(k)] for k in idx], size, config.max_length, config.edit_from_position
    )
    held_out_examples = [examples[int(k)] for k in evaluation]
    # the selection in wide batches (the exact node checks' forwards), and as --batch-size views of
    # them for every pass with gradients
    wide = evaluation_batch_size(config, loaded.tokenizer, [examples[int(k)] for k in selection])
    sel_wide = prepare(selection, wide)
    sel_batches = [part for cb in sel_wide for part in cb.split(config.batch_size)]
    eval_batches = prepare(evaluation, evaluation_batch_size(config, loaded.tokenizer, held_out_examples))
    if config.positions == "kept":
        aligned_length(sel_batches + eval_batches)  # refused before any attribution
    checked = sel_batches[:2] + [p for cb in eval_batches for p in cb.split(config.batch_size)][:2]
    splice = model.check_exact(checked, config.splice_tolerance)
    clock.lap("load")
    counter = Counter()
    base = baseline_of(sel_batches, config.baseline)
    effects = node_effects(model, sel_batches, base, config.method, config.ig_steps, counter)
    per_site = config.node_selection == "per-site"
    budget = config.nodes_per_site if per_site else config.nodes
    ranking, kept = select(effects, per_site, budget, config.node_threshold)
    ranked = ranking.ranked
    rank_of = {node: r + 1 for r, node in enumerate(ranked)}
    largest = float(abs(effects[ranked[0][0]][ranked[0][1]])) if ranked else 0.0
    if not kept:
        raise ConfigError(
            f"no node passes --node-threshold {config.node_threshold:g}: the largest |effect| found is "
            f"{largest:.3g}; give a lower threshold"
        )
    circuit = [[j for (i, j) in kept if i == site] for site in range(len(saes))]
    clock.lap("attribution")
    # the edge pass holds one vector per downstream node over its batch: smaller batches bound its
    # memory; they are views of the selection batches, with the attribution's total gradients
    edge_batches = [part for cb in sel_batches for part in cb.split(edge_batch_size(config))]
    weights = edge_weights(model, edge_batches, base, circuit, counter)
    n_edge_batches, edge_batches = len(edge_batches), []
    clock.lap("edges")
    kept_edges = {k: w for k, w in weights.items() if abs(w) >= config.edge_threshold and w != 0}
    if config.edge_threshold > 0 and not kept_edges:
        biggest = max((abs(w) for w in weights.values()), default=0.0)
        raise ConfigError(
            f"no edge passes --edge-threshold {config.edge_threshold:g}: the largest |weight| found is "
            f"{biggest:.3g}; give a lower threshold"
        )
    bootstrap = Bootstrap(len(evaluation), config.bootstrap, config.seed)
    # the sizes up to the active nodes (per site: of the largest site), and the circuit's own
    pools = [int((f > 0).sum()) + 1 for f in base.frequency]
    own = budget if per_site else len(kept)
    n_pool = max(pools) if per_site else sum(pools)
    sizes = sorted({n for n in config.curve_sizes() if n <= n_pool} | {own})
    beyond = [n for n in config.curve_sizes() if n > n_pool]
    if beyond and config.sizes is not None:  # the defaults reach past small SAEs by design
        log.warning(
            f"[circuit] --sizes {', '.join(map(str, beyond))}: more nodes than the {n_pool} that fire "
            f"({'per site' if per_site else 'in all'}, error terms included); left out of the curves"
        )
    reference, points = curves(
        model, eval_batches, base, ranking, sizes, config.random_circuits, bootstrap, config.seed, counter
    )

    def held_out(others: list[Any], split: str, seed: int) -> CrossSplit:
        size = evaluation_batch_size(config, loaded.tokenizer, others)
        other_batches = model.prepare(others, size, config.max_length, config.edit_from_position)
        other_reference, (other_point,) = curves(
            model,
            other_batches,
            base,  # the selection's baseline: the circuit exactly as found
            ranking,
            [own],
            config.random_circuits,
            Bootstrap(len(others), config.bootstrap, config.seed),
            config.seed,
            counter,
        )
        return CrossSplit(
            split=split,
            seed=seed,
            n_examples=len(others),
            reference=other_reference,  # type: ignore[arg-type]
            point=CurvePoint(**other_point),  # type: ignore[arg-type]
        )

    cross_split = None
    if other_examples is not None:
        cross_split = held_out(other_examples, str(config.check_split), config.seed)
    cross_seed = None
    if seed_other is not None and config.check_seed is not None:
        cross_seed = held_out(seed_other, config.split, config.check_seed)
    clock.lap("evaluation")
    exact_nodes = kept[: config.exact_top]
    node_exact = exact_node_effects(model, sel_wide, base, exact_nodes, counter)
    top_edges = sorted(kept_edges, key=lambda k: -abs(kept_edges[k]))[: config.exact_top]
    edge_exact = exact_edge_effects(model, sel_batches, base, top_edges, counter)
    node_agreement = agreement(
        [effects[i][j] for i, j in exact_nodes], node_exact, config.seed, config.bootstrap
    )
    edge_agreement = agreement([kept_edges[e] for e in top_edges], edge_exact, config.seed, config.bootstrap)
    clock.lap("exact")
    node_positions: dict[Node, Any] = {}
    edge_positions: dict[tuple[Node, Node], Any] = {}
    tokens = None
    if config.positions == "kept":
        tokens = [PositionToken(**t) for t in position_tokens(loaded.tokenizer, sel_batches)]
        node_positions = node_effects_by_position(model, sel_batches, base, kept)
        edge_positions = edge_weights_by_position(
            model, [part for cb in sel_batches for part in cb.split(edge_batch_size(config))], base, circuit
        )
        clock.lap("positions")
    exact_of_node = dict(zip(exact_nodes, node_exact, strict=True))
    exact_of_edge = dict(zip(top_edges, edge_exact, strict=True))
    nodes = [
        CircuitNode(
            id=node_id(saes, (i, j)),
            site=saes[i].name,
            layer=saes[i].layer,
            kind="feature" if j < saes[i].d_sae else "error",
            feature=j if j < saes[i].d_sae else None,
            effect=float(effects[i][j]),
            rank=rank_of[(i, j)],
            activation=float(base.activation[i][j]) if j < saes[i].d_sae else None,
            frequency=float(base.frequency[i][j]) if j < saes[i].d_sae else None,
            exact_effect=exact_of_node.get((i, j)),
            by_position=node_positions[(i, j)].tolist() if (i, j) in node_positions else None,
        )
        for i, j in kept
    ]
    edges = []
    for (source, target), w in sorted(kept_edges.items(), key=lambda kv: -abs(kv[1])):
        exact = exact_of_edge.get((source, target))
        edges.append(
            CircuitEdge(
                source=node_id(saes, source),
                target=node_id(saes, target),
                weight=float(w),
                exact=exact,
                opposite_sign=None if exact is None else bool(np.sign(exact) * np.sign(w) < 0),
                by_position=edge_positions[(source, target)].tolist()
                if (source, target) in edge_positions
                else None,
            )
        )
    return CircuitResults(
        config=config.model_dump(mode="json"),
        config_hash=config.config_hash(),
        model=str(config.model),
        benchmark=str(config.benchmark),
        score=model.metric.name if isinstance(model.metric, CounterfactualMetric) else score_name(layouts),
        sites=[
            SiteResult(
                name=s.name,
                layer=s.layer,
                site=s.site,
                d_sae=s.d_sae,
                sae=s.spec,
                sae_sha256=weights_sha256(s.spec),
                variant=s.info.get("variant"),
                active_features=int((base.frequency[i] > 0).sum()),
            )
            for i, s in enumerate(saes)
        ],
        method=config.method if config.method == "patching" else f"ig ({config.ig_steps} steps)",
        baseline=config.baseline,
        positions=KEPT if config.positions == "kept" else POSITIONS,
        n_selection=len(selection),
        n_evaluation=len(evaluation),
        n_nodes_total=len(ranked),
        thresholds={
            "node_selection": config.node_selection,
            "nodes": config.nodes if not per_site else budget * len(saes),
            "nodes_per_site": budget if per_site else None,
            "node_threshold": config.node_threshold,
            "edge_threshold": config.edge_threshold,
        },
        largest_effect=largest,
        splice=splice,
        reference=reference,  # type: ignore[arg-type]
        nodes=nodes,
        edges=edges,
        curves=[CurvePoint(**p) for p in points],  # type: ignore[arg-type]
        exact_nodes=Agreement(
            **{
                **node_agreement,
                "opposite_sign": [node_id(saes, exact_nodes[k]) for k in node_agreement["opposite_sign"]],
            }  # type: ignore[arg-type,index]
        ),
        exact_edges=Agreement(
            **{
                **edge_agreement,
                "opposite_sign": [
                    f"{node_id(saes, top_edges[k][0])} -> {node_id(saes, top_edges[k][1])}"
                    for k in edge_agreement["opposite_sign"]  # type: ignore[attr-defined]
                ],
            }
        ),
        cross_split=cross_split,
        cross_seed=cross_seed,
        position_tokens=tokens,
        passes={
            "forwards": counter.forwards,
            "backwards": counter.backwards,
            "batched_backwards": counter.batched_backwards,
            "by_stage": counter.by_stage,
            "selection_batches": len(sel_batches),
            "edge_batches": n_edge_batches,
            "evaluation_batches": len(eval_batches),
        },
        phase_seconds=clock.seconds,
        provenance={
            **base_provenance(),
            "model": {"name": config.model, "model_id": loaded.model_id, "revision": loaded.revision},
            "saes": [
                {"spec": s.spec, "layer": s.layer, "site": s.site, "source": s.info.get("source")}
                for s in saes
            ],
        },
    )


__all__ = ["CircuitBatch", "find_circuit", "run_circuit"]
