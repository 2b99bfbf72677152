"""`scircuits collect`: trace a layer's activations on a benchmark into a resumable store."""

from __future__ import annotations

from typing import Any

import click

from scircuits.cli.common import config_option, parse_key_values, stage_config
from scircuits.platform.config import CollectConfig


@click.command()
@click.option("--model", help="Model adapter name (see `scircuits models`), or hf:ORG/NAME.  [smollm2-135m]")
@click.option("--benchmark", help="Benchmark name (see `scircuits benchmarks`).  [arithmetic]")
@click.option("--layer", type=int, help="Block to read; default: the adapter's default (the middle block).")
@click.option(
    "--site",
    type=click.Choice(["resid", "mlp", "attn"]),
    help="resid = the block's output; mlp / attn = those sub-modules' outputs.  [resid]",
)
@click.option("--split", help="Benchmark split.  [test]")
@click.option("--limit", type=int, help="Number of benchmark examples to trace (default: all).")
@click.option("--seed", type=int, help="Seed of the benchmark's example order.  [0]")
@click.option("--batch-size", type=int, help="Examples per forward pass.  [16]")
@click.option("--max-length", type=int, help="Truncate longer sequences, keeping the end of the prompt.")
@click.option(
    "--dtype", type=click.Choice(["float16", "float32"]), help="Stored activation dtype.  [float16]"
)
@click.option(
    "--model-dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    help="Compute dtype of the model; auto = float32 on CPU, bfloat16 on a GPU.  [auto]",
)
@click.option("--device", help="cpu, cuda, cuda:0, ...  [cpu]")
@click.option("--model-path", type=click.Path(), help="Load the weights from this local folder.")
@click.option("--remote/--no-remote", default=None, help="Run the model on NDIF (needs NDIF_API_KEY).")
@click.option(
    "--data", type=click.Path(), help="Benchmark data file or dataset id (the benchmark's 'data' option)."
)
@click.option(
    "--option", "options", multiple=True, metavar="KEY=VALUE", help="A benchmark option; repeatable."
)
@click.option("--out", help="Store path (a folder, or an fsspec URL).  [activations.zarr]")
@click.option("--chunk-rows", type=int, help="Rows per store chunk of a new store (default: ~4 MiB of rows).")
@click.option("--progress/--no-progress", default=None, help="Show progress.  [on]")
@config_option
def collect(config_file: str | None, data: str | None, options: tuple[str, ...], **flags: Any) -> None:
    """Trace one site of one layer on a benchmark's prompts into an activation store.

    Each example is traced as prompt + target tokens. Rerunning a killed command resumes where it
    stopped; a different command into an existing store is refused with the difference named.
    """
    from scircuits.platform.collect.collection import run_collect

    benchmark_options = parse_key_values(options, "--option")
    if data is not None:
        benchmark_options["data"] = data
    if benchmark_options:
        from_file = CollectConfig.from_sources(config_file, {}).benchmark_options if config_file else {}
        flags["benchmark_options"] = {**from_file, **benchmark_options}
    config = stage_config(CollectConfig, config_file, flags)
    summary = run_collect(config)
    if summary.already_complete:
        click.echo(
            f"{summary.path}: already complete ({summary.n_examples} examples, "
            f"{summary.n_tokens} tokens); nothing to do"
        )
        return
    rate = summary.new_tokens / summary.seconds if summary.seconds > 0 else 0.0
    click.echo(
        f"{summary.path}: {summary.n_examples} examples, {summary.n_tokens} tokens "
        f"({summary.new_examples} examples traced now in {summary.seconds:.1f} s, {rate:.0f} tokens/s)"
    )
