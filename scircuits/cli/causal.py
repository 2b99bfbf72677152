"""`scircuits ablate`, `scircuits run` and `scircuits report`: the causal study, the whole pipeline,
and the report. The modules that load torch (the study, the pipeline, the report's matplotlib) are
imported inside the commands, so that `--help` stays fast."""

from __future__ import annotations

from typing import Any

import click

from scircuits.cli.common import (
    config_option,
    echo_result,
    json_option,
    parse_key_values,
    sae_option,
    sae_option_items,
    stage_config,
)
from scircuits.platform.causal.registry import analyses_of
from scircuits.platform.causal.results import results_path
from scircuits.platform.common.remote import join_path
from scircuits.platform.config import AblateConfig, RunConfig
from scircuits.platform.config.options import run_options, stage_options
from scircuits.platform.contract.study import StudyResults
from scircuits.platform.manager.plugin_set import get_plugins


def merge_options(
    config_cls: type,
    config_file: str | None,
    flags: dict[str, Any],
    key: str,
    pairs: tuple[str, ...],
    what: str,
    data: str | None = None,
) -> None:
    options = parse_key_values(pairs, what)
    if data is not None:
        options["data"] = data
    if options:
        from_file: Any = config_cls.from_sources(config_file, {}) if config_file else {}
        for part in key.split(".") if config_file else ():
            from_file = getattr(from_file, part)
        flags[key] = {**from_file, **options}


benchmark_data_options = [
    click.option("--data", type=click.Path(), help="Benchmark data file (the benchmark's 'data' option)."),
    click.option(
        "--option", "options", multiple=True, metavar="KEY=VALUE", help="A benchmark option; repeatable."
    ),
]


def with_options(options: list[Any]):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@click.command()
@stage_options(AblateConfig, leave_out={"benchmark_options", "ablation_options"})
@with_options(benchmark_data_options)
@click.option(
    "--ablation-option",
    "ablation_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An ablation option, e.g. value=0 for clamp; repeatable.",
)
@config_option
@json_option
def ablate(
    config_file: str | None,
    data: str | None,
    options: tuple[str, ...],
    ablation_options: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """Ablate SAE features inside the running model and measure the benchmark score.

    Ranks features (attribution or mean activation), ablates the top k against random controls,
    ablates the top features one at a time, measures faithfulness, and writes results.json and
    examples.jsonl into --out.
    """
    from scircuits.api.stages import ablate as ablate_stage

    merge_options(AblateConfig, config_file, flags, "benchmark_options", options, "--option", data)
    merge_options(AblateConfig, config_file, flags, "ablation_options", ablation_options, "--ablation-option")
    config = stage_config(AblateConfig, config_file, flags)
    plugins = get_plugins()
    result = ablate_stage(config, plugins=plugins)
    if as_json:
        echo_result(result)
        return
    summarise(result.path, result, plugins)


def summarise(folder: Any, results: StudyResults, plugins: Any) -> None:
    """One line per run, then each analysis's summary lines, from the typed results."""
    registry = analyses_of(plugins)
    analyses = {a.name: a for a in registry}
    done = [(analyses[n], results.result_of(analyses[n])) for n in results.analyses if n in analyses]
    head = [f"{results.n_examples} examples"] + [
        p for a, r in done for p in _lines(a, "headline", r, registry.owner(a.name))
    ]
    click.echo(f"{join_path(str(folder), results_path(folder).name)}: {'; '.join(head)}")  # a URL too
    for analysis, result in done:
        for line in _lines(analysis, "summary_lines", result, registry.owner(analysis.name)):
            click.echo(line)


def _lines(analysis: Any, method: str, result: Any, owner: str) -> list[str]:
    """What ``analysis.<method>(result)`` returns, or nothing, with one warning line, when that is
    a string instead of a list of lines."""
    lines = getattr(analysis, method)(result)
    if isinstance(lines, str):
        click.echo(
            f"warning: plugin {owner}: analysis {analysis.name!r}: {method} returned a str; "
            f"return a list of lines ([line, ...])",
            err=True,
        )
        return []
    return list(lines)


@click.command()
@run_options(leave_out={"benchmark_options", "sae_hparams"})
@with_options(benchmark_data_options)
@sae_option
@config_option
@json_option
def run(
    config_file: str | None,
    data: str | None,
    options: tuple[str, ...],
    sae_options: tuple[str, ...],
    deprecated_sae_options: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """The whole study: collect -> train -> ablate -> report into runs/<model>__<benchmark>__<site><layer>/.

    Each stage is skipped when its artifact is complete and made with the same settings; a changed
    flag redoes the stages it affects. Every stage setting can be given as a flag (e.g.
    --train-lr, --collect-batch-size, --ablate-splice-tolerance) or in the [run.collect],
    [run.train] and [run.ablate] tables of --config. README gives the default run's measured times.
    """
    from scircuits.api.stages import run as run_stages

    merge_options(RunConfig, config_file, flags, "benchmark_options", options, "--option", data)
    items = sae_option_items(deprecated_sae_options, sae_options)
    merge_options(RunConfig, config_file, flags, "train.hparams", items, "--sae-option")
    flags["sae_hparams"] = flags.pop("train.hparams", None)
    config = stage_config(RunConfig, config_file, flags)
    plugins = get_plugins()
    result = run_stages(config, plugins=plugins)
    if as_json:
        echo_result(result)
        return
    summarise(result.study.path, result.study, plugins)
    click.echo(f"report: {join_path(result.path, 'report.html')}")  # a URL too


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Where to write: default the run directory (one run) or ./report (several).",
)
@click.option(
    "--force/--no-force",
    default=False,
    help="Move aside (not delete) an --out holding other files or the report of other runs, instead of "
    "refusing.",
)
def report(run_dirs: tuple[str, ...], out: str | None, force: bool) -> None:
    """Write report.md and a self-contained report.html for one run directory, or one comparison
    table (FVU, CE loss recovered, effects) across several."""
    from scircuits.platform.report.build import write_report

    files = write_report(list(run_dirs), get_plugins(), out, force=force)
    for path in files[:2]:
        click.echo(str(path))
