"""`scircuits ablate`, `scircuits run` and `scircuits report`: the causal study, the whole pipeline,
and the report. Heavy modules are imported inside the commands."""

from __future__ import annotations

from typing import Any

import click

from scircuits.cli.common import config_option, parse_key_values, stage_config
from scircuits.platform.config import AblateConfig, RunConfig


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers, e.g. 1,5,10,50"
        ) from None
    if not numbers or any(n <= 0 for n in numbers):
        raise click.BadParameter(f"{value!r}: give positive integers, e.g. 1,5,10,50")
    return numbers


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
        from_file = getattr(config_cls.from_sources(config_file, {}), key) if config_file else {}
        flags[key] = {**from_file, **options}


common_study_options = [
    click.option("--model", help="Model adapter name (see `scircuits models`).  [smollm2-135m]"),
    click.option("--benchmark", help="Benchmark name (see `scircuits benchmarks`).  [arithmetic]"),
    click.option(
        "--layer", type=int, help="Block of the site; default: the SAE's (ablate) or the adapter's default."
    ),
    click.option("--site", type=click.Choice(["resid", "mlp", "attn"]), help="Site of the SAE.  [resid]"),
    click.option("--split", help="Benchmark split to evaluate on.  [test]"),
    click.option("--seed", type=int, help="Seed of examples, controls and bootstrap.  [0]"),
    click.option("--device", help="cpu, cuda, ...  [cpu]"),
    click.option("--model-path", type=click.Path(), help="Load the weights from this local folder."),
    click.option("--data", type=click.Path(), help="Benchmark data file (the benchmark's 'data' option)."),
    click.option(
        "--option", "options", multiple=True, metavar="KEY=VALUE", help="A benchmark option; repeatable."
    ),
    click.option("--progress/--no-progress", default=None, help="Show progress.  [on]"),
]


def with_options(options: list[Any]):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@click.command()
@with_options(common_study_options)
@click.option("--sae", "sae", type=click.Path(), help="SAE checkpoint folder (from `scircuits train`).")
@click.option(
    "--store", type=click.Path(), help="Activation store, for the features' top-activating contexts."
)
@click.option("--ablation", help="zero, mean, resample or clamp (see `scircuits ablations`).  [zero]")
@click.option(
    "--ablation-option",
    "ablation_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An ablation option, e.g. value=0 for clamp; repeatable.",
)
@click.option(
    "--rank", type=click.Choice(["attribution", "activation"]), help="How features are ranked.  [attribution]"
)
@click.option("--top-k", callback=int_list, help="Numbers of top features to ablate.  [1,5,10,50]")
@click.option("--random-controls", type=int, help="Random draws of k active features per k.  [5]")
@click.option("--exact-top", type=int, help="Top features ablated one at a time.  [20]")
@click.option(
    "--faithfulness-n", callback=int_list, help="Numbers of top features kept.  [1,2,5,10,20,50,100,200]"
)
@click.option("--limit", type=int, help="Number of evaluation examples (default: all).")
@click.option("--bootstrap", type=int, help="Bootstrap replicates.  [1000]")
@click.option(
    "--edit-from-position",
    type=int,
    help="Edit features only at positions >= this (1 spares the first token, the attention sink).  [1]",
)
@click.option(
    "--splice-tolerance", type=float, help="Largest |logit difference| the splice may cause.  [1e-3]"
)
@click.option("--batch-size", type=int, help="Sequences per forward pass.  [16]")
@click.option("--out", help="Output folder.  [causal]")
@config_option
def ablate(
    config_file: str | None,
    data: str | None,
    options: tuple[str, ...],
    ablation_options: tuple[str, ...],
    **flags: Any,
) -> None:
    """Ablate SAE features inside the running model and measure the benchmark score.

    Ranks features (attribution or mean activation), ablates the top k against random controls,
    ablates the top features one at a time, measures faithfulness, and writes results.json and
    examples.jsonl into --out.
    """
    from scircuits.platform.causal.stage import run_ablate
    from scircuits.platform.plugins import get_plugins

    merge_options(AblateConfig, config_file, flags, "benchmark_options", options, "--option", data)
    merge_options(AblateConfig, config_file, flags, "ablation_options", ablation_options, "--ablation-option")
    config = stage_config(AblateConfig, config_file, flags)
    plugins = get_plugins()
    out = run_ablate(config, plugins)
    summarise(out, plugins)


def summarise(folder: Any, plugins: Any) -> None:
    """One line per run, then each analysis's summary lines, from the typed results."""
    from scircuits.platform.causal.registry import analyses_of
    from scircuits.platform.causal.results import read_results, results_path

    analyses = {a.name: a for a in analyses_of(plugins)}
    results = read_results(folder, analyses.values())
    done = [(analyses[n], results.result_of(analyses[n])) for n in results.analyses if n in analyses]
    head = [f"{results.n_examples} examples"] + [p for a, r in done for p in a.headline(r)]
    click.echo(f"{results_path(folder)}: {'; '.join(head)}")
    for analysis, result in done:
        for line in analysis.summary_lines(result):
            click.echo(line)


@click.command()
@with_options(common_study_options)
@click.option("--sae", "sae", help="SAE variant to train (see `scircuits saes`).  [topk]")
@click.option(
    "--sae-option",
    "sae_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An SAE hyperparameter, e.g. k=32; repeatable.",
)
@click.option("--ablation", help="zero, mean, resample or clamp.  [zero]")
@click.option(
    "--rank", type=click.Choice(["attribution", "activation"]), help="How features are ranked.  [attribution]"
)
@click.option("--limit", type=int, help="Evaluation examples for the causal stage.  [160]")
@click.option("--collect-limit", type=int, help="Examples traced for SAE training.  [2000]")
@click.option(
    "--collect-split", help="Split traced for SAE training; default: train if the benchmark has it."
)
@click.option("--train-tokens", type=int, help="SAE training tokens.  [1200000]")
@click.option("--expansion", type=int, help="SAE width / model width.  [4]")
@click.option("--train-batch-size", type=int, help="SAE training batch, in tokens.  [4096]")
@click.option("--top-k", callback=int_list, help="Numbers of top features to ablate.  [1,5,20,50]")
@click.option("--random-controls", type=int, help="Random draws per k.  [3]")
@click.option("--exact-top", type=int, help="Top features ablated one at a time.  [10]")
@click.option(
    "--edit-from-position",
    type=int,
    help="Edit features only at positions >= this (1 spares the first token, the attention sink).  [1]",
)
@click.option(
    "--remote/--no-remote", default=None, help="Collect on NDIF (the causal stage needs local weights)."
)
@click.option("--out", help="Parent folder of the run directory.  [runs]")
@config_option
def run(
    config_file: str | None,
    data: str | None,
    options: tuple[str, ...],
    sae_options: tuple[str, ...],
    **flags: Any,
) -> None:
    """The whole study: collect -> train -> ablate -> report into runs/<model>__<benchmark>__<site><layer>/.

    Each stage is skipped when its artifact is complete and made with the same settings; a changed
    flag redoes the stages it affects. The defaults (SmolLM2-135M on arithmetic) finish in about
    ten minutes on a 2-core CPU.
    """
    from scircuits.platform.pipeline.run import run_pipeline
    from scircuits.platform.plugins import get_plugins

    merge_options(RunConfig, config_file, flags, "benchmark_options", options, "--option", data)
    merge_options(RunConfig, config_file, flags, "sae_hparams", sae_options, "--sae-option")
    config = stage_config(RunConfig, config_file, flags)
    plugins = get_plugins()
    run_dir = run_pipeline(config, plugins)
    summarise(run_dir / "causal", plugins)
    click.echo(f"report: {run_dir / 'report.html'}")


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Where to write: default the run directory (one run) or ./report (several).",
)
def report(run_dirs: tuple[str, ...], out: str | None) -> None:
    """Write report.md and a self-contained report.html for one run directory, or one comparison
    table (FVU, CE loss recovered, effects) across several."""
    from scircuits.platform.plugins import get_plugins
    from scircuits.platform.report.build import write_report

    files = write_report(list(run_dirs), get_plugins(), out)
    for path in files[:2]:
        click.echo(str(path))
