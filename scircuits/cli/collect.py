"""`scircuits collect`: trace a layer's activations on a benchmark into a resumable store."""

from __future__ import annotations

from typing import Any

import click

from scircuits.cli.common import config_option, echo_result, json_option, parse_key_values, stage_config
from scircuits.platform.common.remote import is_url
from scircuits.platform.config import CollectConfig
from scircuits.platform.config.options import stage_options


@click.command()
@stage_options(CollectConfig, leave_out={"benchmark_options"})
@click.option(
    "--data", type=click.Path(), help="Benchmark data file or dataset id (the benchmark's 'data' option)."
)
@click.option(
    "--option", "options", multiple=True, metavar="KEY=VALUE", help="A benchmark option; repeatable."
)
@config_option
@json_option
def collect(
    config_file: str | None, data: str | None, options: tuple[str, ...], as_json: bool, **flags: Any
) -> None:
    """Trace sites of a model on a benchmark's prompts, or on a text corpus, into activation stores.

    Each example is traced as prompt + target tokens; a corpus (--corpus FILE, FOLDER or hub:ID) is
    packed into BOS-first contexts of --context-size tokens, up to --tokens. --layers/--sites read
    several sites in one forward and --nproc N splits the sequences over N processes: both write a
    collection (one store per site and process, joined by a manifest). Rerunning a killed command
    resumes where it stopped; a different command into an existing store is refused with the
    difference named.
    """
    from scircuits.api.stages import collect as collect_stage

    benchmark_options = parse_key_values(options, "--option")
    if data is not None:
        benchmark_options["data"] = data
    if benchmark_options:
        from_file = CollectConfig.from_sources(config_file, {}).benchmark_options if config_file else {}
        flags["benchmark_options"] = {**from_file, **benchmark_options}
    config = stage_config(CollectConfig, config_file, flags)
    summary = collect_stage(config)
    if as_json:
        echo_result(summary)
        return
    where = config.out if is_url(config.out) else summary.path  # Path() would fold the // of s3://
    if summary.already_complete:
        click.echo(
            f"{where}: already complete ({summary.n_examples} examples, "
            f"{summary.n_tokens} tokens); nothing to do"
        )
        return
    rate = summary.new_tokens / summary.seconds if summary.seconds > 0 else 0.0
    click.echo(
        f"{where}: {summary.n_examples} examples, {summary.n_tokens} tokens "
        f"({summary.new_examples} examples traced now in {summary.seconds:.1f} s, {rate:.0f} tokens/s)"
    )
