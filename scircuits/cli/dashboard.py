"""`scircuits dashboard RUN_DIR`: a static feature dashboard (and a Neuronpedia export) for a finished run."""

from __future__ import annotations

import click

from scircuits.cli.common import echo_result, json_option


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--features",
    type=click.IntRange(min=1),
    default=None,
    help="Pages for at most this many features: results.json's ranked ones first, then by firing count "
    "(default: every feature that fires on the store).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the site here instead of RUN_DIR/dashboard (the report then gets no link).",
)
@click.option(
    "--compare",
    "compare",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A `scircuits compare --out` folder that compared this run (repeatable): each feature page lists "
    "its matched features there, linked. Folders given before are kept.",
)
@click.option(
    "--force/--no-force",
    default=False,
    help="Instead of refusing an --out that holds files scircuits did not write, move them aside "
    "(nothing is deleted).",
)
@click.option(
    "--store",
    type=click.Path(file_okay=False),
    default=None,
    help="Scan this activation store (of the run's model, layer and site) instead of the run's own. A run "
    "of a given SAE (--sae hf:..., saelens:...) has none: without --store its evaluation examples are "
    "traced into RUN_DIR/evaluation.zarr first.",
)
@click.option(
    "--circuit",
    type=click.Path(file_okay=False),
    default=None,
    help="Draw this `scircuits circuit --out` folder on circuit.html (default: RUN_DIR/circuit when it "
    "holds one); its nodes at the run's own SAE link to their feature pages.",
)
@click.option(
    "--model-path",
    type=click.Path(file_okay=False),
    default=None,
    help="Load the run's model from this folder: where its weights are now, when the folder the run "
    "recorded (--model-path DIR or --model PREFIX:DIR at run time) moved. Its weights must be the ones the "
    "run recorded.",
)
@click.option("--progress/--no-progress", default=True, help="Show the libraries' bars (loading the model).")
@json_option
def dashboard(
    run_dir: str,
    features: int | None,
    out: str | None,
    compare: tuple[str, ...],
    force: bool,
    store: str | None,
    circuit: str | None,
    model_path: str | None,
    progress: bool,
    as_json: bool,
) -> None:
    """Write RUN_DIR/dashboard: a sortable index of features and one page per feature, opening from disk."""
    from scircuits.api.stages import dashboard as dashboard_stage

    summary = dashboard_stage(
        run_dir,
        features=features,
        out=out,
        compare=compare,
        force=force,
        store=store,
        circuit=circuit,
        model_path=model_path,
        progress=progress,
    )
    if as_json:
        echo_result(summary)
        return
    click.echo(
        f"dashboard: {summary.index}  ({summary.n_pages} feature pages of {summary.n_active} "
        f"active / {summary.d_sae} latents; {summary.size_bytes / 2**20:.1f} MiB in {summary.n_files} files; "
        f"{summary.seconds:.1f} s)"
        + (f"; matches from {summary.n_comparisons} comparisons" if summary.n_comparisons else "")
        + (f"; circuit: {summary.circuit}" if summary.circuit else "")
    )
