"""`scircuits train` and `scircuits validate sae`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from scircuits.cli.common import (
    config_option,
    echo_json,
    echo_result,
    echo_table,
    json_option,
    parse_key_values,
    sae_option,
    sae_option_items,
    stage_config,
)
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.remote import is_url, join_path, remote_out, shown
from scircuits.platform.config import TrainConfig
from scircuits.platform.config.options import stage_options
from scircuits.platform.config.stages import looks_like_path, refuse_empty_items
from scircuits.platform.contract.errors import ConfigError, ScircuitsError

log = get_logger(__name__)


@click.command()
@config_option
@click.option(
    "--store", "stores", multiple=True, help="Activation store (repeat to train one SAE per store)."
)
@click.option(
    "--sites",
    help="With a collection as --store: the sites to train, as collect names them (resid,mlp or resid6); "
    "default every site.",
)
@click.option("--layers", help="With a collection as --store: the blocks to train, e.g. 3,6; default all.")
@click.option("--sae", help="SAE variant (scircuits saes); a comma list trains one SAE per variant.")
@click.option("--k", type=int, help="Active latents per token (topk, batchtopk).")
@click.option("--l1", type=float, help="L1 coefficient (relu, gated).")
@click.option("--decorrelation", type=float, help="Decorrelation coefficient (relu).")
@sae_option
@stage_options(TrainConfig, leave_out={"store", "sae", "hparams"})
@json_option
def train(
    config_file: str | None,
    stores: tuple[str, ...],
    sites: str | None,
    layers: str | None,
    sae: str | None,
    k: int | None,
    l1: float | None,
    decorrelation: float | None,
    sae_options: tuple[str, ...],
    deprecated_sae_options: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """Train a sparse autoencoder on an activation store.

    Writes OUT/cfg.json + sae_weights.safetensors (SAELens format), scircuits.json and
    train_log.jsonl. Skips when OUT already holds a complete checkpoint of the same config.
    A collection of several sites (`collect --layers/--sites`) trains one SAE per site in one pass
    over the data, into OUT/<hook name>/ with OUT/index.json listing them.
    --json prints the checkpoint's result (a list of them when several SAEs are trained).
    """
    with _ranks_stop_together(str(flags.get("device") or "cpu")):
        _train(
            config_file,
            stores,
            (sites, layers),
            sae,
            {"k": k, "l1": l1, "decorrelation": decorrelation},
            sae_option_items(deprecated_sae_options, sae_options),
            flags,
            as_json,
        )


@contextmanager
def _ranks_stop_together(device: str) -> Iterator[None]:
    """Under torchrun, a refusal raised before this rank joined the others is sent to them (they
    would otherwise wait for it); rank 0 prints it."""
    from scircuits.platform.train.distributed import under_launcher
    from scircuits.platform.train.training import refuse_as_rank

    try:
        yield
    except ScircuitsError as exc:
        if under_launcher() and not getattr(exc, "reported_elsewhere", False):
            refuse_as_rank(device, exc)
        raise


def refused_rank_line(argv: list[str], message: str) -> str:
    """The line to print for a `train` command line that could not be read: as it is, or under
    torchrun the line rank 0 prints for every rank ("" on the others), after this rank has told the
    others, which would otherwise wait for it."""
    from scircuits.platform.train.distributed import under_launcher
    from scircuits.platform.train.training import refuse_as_rank

    if not under_launcher():
        return message
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--device=")]
    given += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--device"]
    try:
        refuse_as_rank(given[-1] if given else "cpu", ConfigError(message))
    except ScircuitsError as exc:
        return "" if getattr(exc, "reported_elsewhere", False) else str(exc)
    return message


def _train(
    config_file: str | None,
    stores: tuple[str, ...],
    chosen_sites: tuple[str | None, str | None],
    sae: str | None,
    variant_flags: dict[str, Any],
    hparams: tuple[str, ...],
    flags: dict[str, Any],
    as_json: bool = False,
) -> None:
    from scircuits.api.stages import check_hparams, read_checkpoint
    from scircuits.api.stages import train as train_stage
    from scircuits.platform.config.stages import file_url_as_path
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.distributed import parse_devices, under_launcher
    from scircuits.platform.train.joint import one_collection, site_stores
    from scircuits.platform.train.size import check_sae_memory
    from scircuits.platform.train.training import train as train_one
    from scircuits.platform.train.training import train_many
    from scircuits.store import ActivationStore

    extra = {key: value for key, value in variant_flags.items() if value is not None}
    extra.update(parse_key_values(hparams, "--sae-option"))
    base = stage_config(TrainConfig, config_file, {**flags, "sae": None, "store": None})
    merged_hparams = {**base.hparams, **extra}
    sae_given = sae or ("sae" in base.model_fields_set and base.sae)
    sae_list: list[str | None] = [*variant_names(sae_given, "train")] if sae_given else [None]
    plugins = get_plugins()
    if not under_launcher():  # the SAE options first: a bad number is refused before any store is read
        for name in sae_list:
            settings = {**base.model_dump(exclude_unset=True), "store": "-", "hparams": merged_hparams}
            check_hparams(TrainConfig.validated({**settings, **({"sae": name} if name else {})}), plugins)
    given = [file_url_as_path(s) for s in stores] or ([base.store] if base.store else [])
    store_list = site_stores(given, *chosen_sites)
    if not store_list:
        raise ConfigError("train: give the activation store with --store PATH (or store = ... in --config)")
    sites = None if under_launcher() else one_collection(store_list)
    jobs: list[TrainConfig] = []
    several = len(store_list) * len(sae_list) > 1
    for index, store in enumerate(store_list):
        for name in sae_list:
            folder = sites[index].hook_name if sites else Path(store.rstrip("/")).stem
            if name is not None and (len(sae_list) > 1 or not sites):
                folder = f"{folder}__{name}"
            out = join_path(base.out, folder) if several else base.out
            values = {
                **base.model_dump(exclude_unset=True),
                "store": store,
                "hparams": merged_hparams,
                "out": str(out),
            }
            if name is not None:
                values["sae"] = name
            jobs.append(TrainConfig.validated(values))
    if under_launcher():  # a torchrun rank: the ranks check together in train(), one line if refused
        if len(jobs) > 1:
            raise ConfigError("under torchrun train one SAE: give one --store and one --sae")
        out_dir = train_one(jobs[0], plugins)
        if os.environ.get("RANK") == "0":
            click.echo(str(out_dir))
        return
    widths = {store: ActivationStore(store).d_model for store in store_list}  # each readable, before any job
    for job in jobs:
        check_sae_memory(widths[job.store], job.expansion, job.batch_size, job.device)
    devices = parse_devices(base.device)
    if sites and is_url(base.out):  # the sites' SAEs and index.json staged as one folder, published whole
        with remote_out(base.out, "SAE set", publish_interrupted=True) as local:
            staged = [
                job.model_copy(update={"out": str(local / job.out.rstrip("/").rsplit("/", 1)[-1])})
                for job in jobs
            ]
            outs = _train_sites(staged, sites, sae_list, local, devices, base, plugins)
            results = [read_checkpoint(out_dir) for out_dir in outs]
    elif sites:
        outs = _train_sites(jobs, sites, sae_list, Path(base.out), devices, base, plugins)
        results = [read_checkpoint(out_dir) for out_dir in outs]
    if sites:  # one SAE trained by its own processes is shown as one
        one = (
            len(jobs) == 1
            and not (len(devices) == 1 and base.nproc == 1)
            and (len(devices) == 1 or base.nproc > 1)
        )
        if one and as_json:
            echo_result(results[0].model_copy(update={"path": shown(results[0].path)}))
        else:
            _echo_results(results, as_json)
        return
    if len(jobs) == 1 and (len(devices) == 1 or base.nproc > 1):
        result = train_stage(jobs[0], plugins=plugins)
        if as_json:
            echo_result(result)
        else:
            click.echo(result.path)  # a URL: the URL, not the local copy (a cache)
        return
    _echo_results([read_checkpoint(out_dir) for out_dir in train_many(jobs, devices, plugins)], as_json)


def _train_sites(
    jobs: list[TrainConfig],
    sites: list[Any],
    sae_list: list[str | None],
    out: Path,
    devices: list[str],
    base: TrainConfig,
    plugins: Any,
) -> list[Path]:
    """The SAEs of a collection's sites into the local folder ``out`` with its index.json: in one pass
    on one device, else one job per SAE; returns their folders."""
    from scircuits.platform.train.joint import check_set_folder, train_joint, write_index
    from scircuits.platform.train.training import train, train_many

    check_set_folder(out, [job.store for job in jobs])
    write_index(out, [s for s in sites for _ in sae_list], jobs, plugins)
    if len(devices) == 1 and base.nproc == 1:
        return train_joint(jobs, plugins, show_progress=base.progress)
    if len(jobs) == 1 and (len(devices) == 1 or base.nproc > 1):
        return [train(jobs[0], plugins)]  # (the job's checks were made above; the local path, not a URL)
    return train_many(jobs, devices, plugins)


def variant_names(text: str, command: str) -> list[str]:
    """The SAE variants of a comma list given to --sae: one at least, and names, not folders."""
    refuse_empty_items(text, "--sae")
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(
            f"--sae {text!r}: give one or more SAE variant names, e.g. topk or topk,relu "
            "(see `scircuits saes`)"
        )
    for name in names:
        if looks_like_path(name):
            raise ConfigError(
                f"--sae {name}: a path, but `scircuits {command}` takes SAE variant names (see `scircuits "
                "saes`); a checkpoint folder is studied with `scircuits ablate --sae FOLDER`"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--sae {text}: {', '.join(repeated)} given twice; give each variant once")
    return names


def _echo_results(results: list[Any], as_json: bool) -> None:
    results = [r.model_copy(update={"path": shown(r.path)}) for r in results]  # URLs, not the cache
    if as_json:
        echo_result(results)
        return
    for result in results:
        click.echo(shown(result.path))


@click.group()
def validate() -> None:
    """Checks of the platform against known ground truth."""


@validate.command("sae")
@click.option(
    "--problem",
    type=click.Choice(["hard", "easy"]),
    default="hard",
    show_default=True,
    help="hard: Zipf, correlated and hierarchical atoms, 4x more atoms than dimensions, k != true L0, "
    "the defaults users get, with random-decoder and spherical k-means baselines; easy: the older "
    "equal-frequency problem with per-variant validation settings.",
)
@click.option("--sae", "names", help="Comma list of variants (default: every registered variant).")
@click.option("--tokens", type=click.IntRange(min=1), help="Training tokens of the planted dataset.")
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the data (easy problem only).")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Data seed (hard: init seed + 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def validate_sae(
    ctx: click.Context,
    problem: str,
    names: str | None,
    tokens: int | None,
    epochs: int | None,
    seed: int,
    as_json: bool,
) -> None:
    """Train each variant on a planted sparse dictionary and score how well it recovers the atoms.

    hard (default): scored by one-to-one (Hungarian) MCC and MMCS beside a random decoder and
    spherical k-means; exits 1 when a variant's MCC is below 0.9, naming the likely cause.
    easy: MMCS (mean over true atoms of the best cosine with a learned decoder row) and atoms
    recovered above 0.9; exits 1 when a variant's MMCS is below 0.9.
    """
    from scircuits.platform.manager.plugin_set import get_plugins

    if problem == "hard" and epochs is not None:
        raise ConfigError(
            f"--epochs {epochs}: the hard problem trains for --tokens (one pass); --epochs applies to "
            "--problem easy"
        )
    registry = get_plugins().saes
    selected = variant_names(names, "validate sae") if names is not None else registry.names()
    for name in selected:
        registry.get(name)
    if problem == "hard":
        validate_hard_problem(ctx, [registry.get(n) for n in selected], tokens, seed, as_json)
        return
    from scircuits.platform.train.validation import MMCS_THRESHOLD, PlantedSetup, validate_variant

    setup = PlantedSetup(seed=seed)
    if tokens:
        setup.n_tokens = tokens
    if epochs:
        setup.epochs = epochs
    results = []
    for name in selected:
        result = validate_variant(registry.get(name), setup)
        results.append(result)
        if not as_json:
            click.echo(f"{name}: MMCS {result.mmcs:.3f} ({result.seconds:.1f} s)", err=True)
    if as_json:
        echo_json(
            {"setup": setup.__dict__, "threshold": MMCS_THRESHOLD, "results": [r.to_dict() for r in results]}
        )
    else:
        click.echo(
            f"planted dictionary: d_in {setup.d_in}, {setup.n_atoms} atoms, d_sae {setup.d_sae}, "
            f"mean L0 {setup.sparsity:g}, noise {setup.noise:g}, "
            f"{setup.n_tokens} tokens x {setup.epochs} epochs"
        )
        echo_table(
            [
                {
                    "sae": r.sae,
                    "mmcs": f"{r.mmcs:.3f}",
                    "recovered": f"{r.recovered:.3f}",
                    "fvu": f"{r.fvu:.3f}",
                    "l0": f"{r.l0:.2f}",
                    "dead": f"{r.dead_fraction:.3f}",
                    "seconds": f"{r.seconds:.1f}",
                    "pass": "yes" if r.passed else "NO",
                }
                for r in results
            ],
            ["sae", "mmcs", "recovered", "fvu", "l0", "dead", "seconds", "pass"],
        )
    failed = [r.sae for r in results if not r.passed]
    if failed:
        click.echo(f"MMCS below {MMCS_THRESHOLD} for: {', '.join(failed)}", err=True)
        ctx.exit(1)


def validate_hard_problem(
    ctx: click.Context, variants: list[Any], tokens: int | None, seed: int, as_json: bool
) -> None:
    """The hard planted problem: baselines and every variant with its defaults, as a table."""
    from scircuits.platform.train.planted import HardPlantedSetup, format_table, validate_hard

    values: dict[str, Any] = {"data_seed": seed, "init_seed": seed + 1}
    if tokens:
        values["n_tokens"] = tokens
    table = validate_hard(variants, HardPlantedSetup(**values))
    if as_json:
        echo_json(table.model_dump(mode="json"))
    else:
        click.echo(format_table(table))
    failed = table.failed()
    if failed:
        click.echo(f"MCC below {table.mcc_threshold} for: {', '.join(failed)}", err=True)
        ctx.exit(1)
