"""`scircuits circuit`: a feature circuit across several SAE sites (docs/circuits.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from scircuits.cli.causal import benchmark_data_options, merge_options, with_options
from scircuits.cli.common import config_option, echo_result, json_option, stage_config
from scircuits.platform.config import CircuitConfig
from scircuits.platform.config.options import stage_options
from scircuits.platform.manager.plugin_set import get_plugins


@click.command()
@click.option(
    "--sae",
    "saes",
    multiple=True,
    metavar="SAE",
    help="An SAE at one site, repeatable, in the model's order: a checkpoint folder, a folder of "
    "per-site checkpoints, hf:REPO/PATH or saelens:RELEASE/SAE_ID.",
)
@stage_options(CircuitConfig, leave_out={"benchmark_options", "sae"})
@with_options(benchmark_data_options)
@config_option
@json_option
def circuit(
    config_file: str | None,
    saes: tuple[str, ...],
    data: str | None,
    options: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """Find a feature circuit: nodes (SAE features and error terms at several sites) and the edges
    between them, by attribution on selection examples; faithfulness and completeness on held-out
    examples beside random circuits; exact checks of the top nodes and edges.

    Writes results.json, graph.json, circuit.graphml, report.md and circuit.png into --out.
    """
    from scircuits.api.stages import circuit as circuit_stage

    merge_options(CircuitConfig, config_file, flags, "benchmark_options", options, "--option", data)
    if saes:
        flags["sae"] = list(saes)
    config = stage_config(CircuitConfig, config_file, flags)
    results = circuit_stage(config, plugins=get_plugins())
    if as_json:
        echo_result(results)
        return
    last = results.point()
    faithful = "" if last is None or last.faithfulness is None else f", faithfulness {last.faithfulness:.2f}"
    click.echo(
        f"{Path(str(results.path)) / 'results.json'}: {len(results.nodes)} nodes, {len(results.edges)} "
        f"edges over {len(results.sites)} sites{faithful} on {results.n_evaluation} held-out examples"
    )
