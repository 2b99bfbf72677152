"""`scircuits compare RUN_DIR RUN_DIR [...]`: match the features of runs' SAEs over shared text,
beside each run's ceiling and floors. The work lives in ``scircuits.platform.compare``."""

from __future__ import annotations

from pathlib import Path

import click

from scircuits.cli.common import echo_result, json_option


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--out", default="compare", show_default=True, help="Folder for results.json, report.md, figures."
)
@click.option("--limit", type=int, default=200, show_default=True, help="Benchmark examples traced per pair.")
@click.option("--split", help="Benchmark split to trace (default: the first run's evaluation split).")
@click.option(
    "--source",
    type=click.Choice(["auto", "model", "store"]),
    default="auto",
    show_default=True,
    help="auto: the runs' stores when they hold the same tokens, else trace each run's model.",
)
@click.option(
    "--max-tokens", type=int, default=200_000, show_default=True, help="Store tokens per comparison."
)
@click.option(
    "--train-twins/--no-train-twins",
    default=True,
    show_default=True,
    help="Train a missing seed twin (the ceiling) with the run's own training settings.",
)
@click.option(
    "--permutations", type=int, default=999, show_default=True, help="Shuffled pairings for RSA's p."
)
@click.option(
    "--rsa-pairs", type=int, default=1000, show_default=True, help="Most correlated pairs in the RSA."
)
@click.option(
    "--model-path",
    "model_path",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Where a run's model weights are now, when the folder the run recorded (--model-path DIR or "
    "--model PREFIX:DIR at run time) moved (repeatable: each run takes the folder holding the weights it "
    "recorded).",
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True)
@click.option(
    "--force/--no-force",
    default=False,
    help="Instead of refusing an --out that holds files scircuits did not write, move them aside "
    "(nothing is deleted).",
)
@json_option
def compare(run_dirs: tuple[str, ...], force: bool, as_json: bool, **flags: object) -> None:
    """Match the SAE features of two or more runs (activation correlation, one-to-one matches, decoder
    RSA, causal agreement), each number beside the run's seed-twin ceiling and untrained/random floors."""
    from scircuits.api.stages import compare as compare_stage
    from scircuits.platform.compare.report import REPORT_FILE, summary_lines
    from scircuits.platform.compare.study import InvalidOption

    if len(run_dirs) < 2:
        raise click.UsageError("give at least two run directories")
    try:
        results = compare_stage(list(run_dirs), force=force, **flags)
    except InvalidOption as exc:  # reported as click reports a bad option
        raise click.UsageError(str(exc)) from None
    if as_json:
        echo_result(results)
        return
    for line in summary_lines(results):
        click.echo(line)
    out = Path(str(results.path))
    click.echo(f"wrote {out / 'results.json'} and {out / REPORT_FILE}")
