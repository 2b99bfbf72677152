"""`scircuits compare RUN_DIR RUN_DIR [...]`: match the features of runs' SAEs over shared text,
beside each run's ceiling and floors. The work lives in ``scircuits.platform.compare``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from scircuits.platform.compare.schema import CompareResults


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
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True)
@click.option(
    "--force/--no-force",
    default=False,
    help="Instead of refusing an --out that holds files scircuits did not write, move them aside "
    "(nothing is deleted).",
)
def compare(run_dirs: tuple[str, ...], force: bool, **flags: object) -> None:
    """Match the SAE features of two or more runs (activation correlation, one-to-one matches, decoder
    RSA, causal agreement), each number beside the run's seed-twin ceiling and untrained/random floors."""
    from scircuits.platform.compare.output import compare_folder
    from scircuits.platform.compare.report import summary_lines, write_report
    from scircuits.platform.compare.study import CompareOptions, compare_runs
    from scircuits.platform.manager.plugin_set import get_plugins

    if len(run_dirs) < 2:
        raise click.UsageError("give at least two run directories")
    from pydantic import ValidationError

    try:
        options = CompareOptions(**flags)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-")
        raise click.UsageError(f"{flag} {error.get('input')!r}: {error['msg']}") from None
    with compare_folder(options.out, run_dirs, force, lambda m: click.echo(m, err=True)):
        results = compare_runs(list(run_dirs), options, get_plugins())
        report = write_report(results, Path(options.out))
        for line in summary_lines(results):
            click.echo(line)
        click.echo(f"wrote {Path(options.out) / 'results.json'} and {report}")
        link_dashboards(results, Path(options.out))


def link_dashboards(results: CompareResults, out: Path) -> None:
    """Refresh the match data of the compared runs' existing dashboards (their generated match files
    only), so each feature page lists its matches here; a failure leaves the results in place."""
    from scircuits.platform.contract.errors import ConfigError
    from scircuits.platform.dashboard.matches import compared_sites, refresh_matches_locked

    for run_dir, site in compared_sites(results):
        try:
            n = refresh_matches_locked(site, run_dir, [out])
        except ConfigError as exc:
            click.echo(f"compare: {site} not linked ({exc})", err=True)
            continue
        click.echo(f"linked {n} comparisons into {site}")
