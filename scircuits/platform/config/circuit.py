"""The settings of `scircuits circuit` (docs/circuits.md): SAEs at several sites, how nodes and edges
are attributed, how the circuit is chosen and how it is evaluated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, model_validator

from scircuits.platform.config.stages import (
    D,
    StageConfig,
    counts,
    distinct,
    plugin_default_help,
    refuse_empty_items,
)

GLOBAL_SIZES = (1, 2, 5, 10, 20, 50, 100)  # nodes in all
PER_SITE_SIZES = (8, 32, 128, 512)  # nodes per site


class CircuitConfig(StageConfig):
    stage: ClassVar[str] = "circuit"
    volatile: ClassVar[frozenset[str]] = frozenset(
        {"out", "device", "batch_size", "edge_batch_size", "progress", "force", "max_memory_gb"}
    )
    located: ClassVar[frozenset[str]] = frozenset({"model_path"})
    plugin_fields: ClassVar[Mapping[str, str]] = {"model": "models", "benchmark": "benchmarks"}

    model: str | None = D(None, plugin_default_help("Model adapter name", "models"))
    benchmark: str | None = D(None, plugin_default_help("Benchmark name", "benchmarks"))
    benchmark_options: dict[str, object] = D(dict, "Benchmark options (--option KEY=VALUE, --data).")
    sae: Annotated[list[str], AfterValidator(distinct)] = D(
        list,
        "An SAE at one site (repeatable): a checkpoint folder of `scircuits train`, a folder holding "
        "several (one per site), hf:REPO/PATH or saelens:RELEASE/SAE_ID. Given in the model's order.",
    )
    sites: str | None = D(
        None, "The sites the circuit spans, e.g. resid3,resid6,mlp9 (default: every SAE's site)."
    )
    metric: Literal["score", "counterfactual"] = D(
        "score",
        "What the circuit explains: score = the benchmark's own score; counterfactual = the logit "
        "difference between the clean and the counterfactual answer, where the benchmark declares pairs.",
    )
    positions: Literal["summed", "kept"] = D(
        "summed",
        "summed: a node is a feature over every position; kept: also split each node's effect and each "
        "edge's weight over positions (needs examples of one length, e.g. the synth tasks).",
    )
    method: Literal["patching", "ig"] = D(
        "patching",
        "Node attribution: patching = gradient x (baseline - activation), one backward per batch; ig = "
        "integrated gradients over --ig-steps per site.",
    )
    ig_steps: int = D(8, "Integrated-gradients steps (with --method ig).", gt=0, le=256)
    baseline: Literal["selection-mean", "zeros"] = D(
        "selection-mean", "What a node is patched to: its mean over the selection tokens, or zero."
    )
    node_selection: Literal["global", "per-site"] = D(
        "per-site",
        "global: the circuit keeps the nodes of largest |effect| over every site (--nodes); per-site: the "
        "nodes of largest |effect| of each site (--nodes-per-site), so that every site has nodes.",
    )
    nodes: int = D(
        30, "Global node budget: the circuit keeps the nodes of largest |effect|, at most this many.", gt=0
    )
    nodes_per_site: int = D(
        8, "Per-site node budget (--node-selection per-site): at most this many nodes of each site.", gt=0
    )
    node_threshold: float = D(0.0, "Keep only nodes with |effect| >= this (0: the budget alone).", ge=0)
    edge_threshold: float = D(0.0, "Report only edges with |weight| >= this (0: every edge).", ge=0)
    sizes: Annotated[list[int], counts("[1, 5, 20, 50]")] | None = D(
        None,
        "Circuit sizes of the evaluation curves: nodes in all (global selection; default "
        "1,2,5,10,20,50,100) or nodes per site (per-site; default 8,32,128,512).",
    )
    random_circuits: int = D(
        2,
        "Random circuits of the same size drawn per size (each one's value is kept beside their mean).",
        ge=0,
    )
    exact_top: int = D(10, "Top nodes and top edges re-measured by exact intervention.", ge=0)
    limit: int | None = D(160, "Examples (split into selection and evaluation).", gt=1)
    selection_fraction: float = D(
        0.5, "Share of the examples the circuit is found on; it is evaluated on the rest.", gt=0, lt=1
    )
    split: str = D("test", "Benchmark split.")
    check_split: str | None = D(
        None,
        "Also measure the circuit found on --split on as many examples of this other split (the "
        "method's held-out check: does it keep its faithfulness there?).",
    )
    check_seed: int | None = D(
        None,
        "Also measure the circuit on as many examples drawn with this seed (from --split): a second "
        "seed's examples.",
        ge=0,
    )
    seed: int = D(0, "Seed of examples, the selection split, random circuits and bootstrap.", ge=0)
    bootstrap: int = D(1000, "Bootstrap replicates.", gt=0)
    edit_from_position: int = D(
        1, "Patch nodes only at positions >= this (1 spares the first token, the attention sink).", ge=0
    )
    splice_tolerance: float = D(1e-3, "Largest |logit difference| the SAEs spliced together may cause.", gt=0)
    max_memory_gb: float = D(
        8.0, "Refuse, before any work, a circuit whose edge pass would need more memory than this.", gt=0
    )
    max_length: int | None = D(None, "Truncate longer sequences, keeping the end of the prompt.", gt=1)
    batch_size: int = D(16, "Sequences per forward pass.", gt=0)
    edge_batch_size: int = D(
        4,
        "Sequences per edge pass (at most --batch-size): its memory grows with --nodes x this, its passes "
        "with the number of such batches.",
        gt=0,
    )
    device: str = D("cpu", "cpu, cuda, ...")
    model_path: str | None = D(None, "Load the weights from this local folder.")
    out: str = D("circuit", "Output folder.")
    progress: bool = D(True, "Show progress.")
    # fields added after circuits were first keyed: left out of the hash at their defaults, so a
    # circuit made before them keeps its key
    unkeyed_defaults: ClassVar[Mapping[str, object]] = {
        "metric": "score",
        "positions": "summed",
        "check_seed": None,
    }

    @model_validator(mode="after")
    def sites_without_empty_items(self) -> CircuitConfig:
        if self.sites is not None:
            refuse_empty_items(self.sites, "--sites")  # resid0,,resid1: one line before any work
        return self

    def identity(self) -> dict[str, object]:
        values = super().identity()
        for name, default in self.unkeyed_defaults.items():
            if values.get(name) == default:
                values.pop(name, None)
        values["sizes"] = self.curve_sizes()  # the sizes measured, whether given or the default
        # the budget of the other selection plays no part; a global circuit keeps its earlier key
        values.pop("nodes" if self.node_selection == "per-site" else "nodes_per_site", None)
        if self.node_selection == "global":
            values.pop("node_selection", None)
        return values

    def curve_sizes(self) -> list[int]:
        """--sizes, or the default of the node selection (nodes in all, or nodes per site)."""
        if self.sizes is not None:
            return list(self.sizes)
        return list(PER_SITE_SIZES if self.node_selection == "per-site" else GLOBAL_SIZES)

    force: bool = D(
        False, "Move aside (never delete) a folder at --out that scircuits did not write instead of refusing."
    )
