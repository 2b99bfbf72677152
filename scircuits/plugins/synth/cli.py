"""`scircuits synth ...`: train a small model on any registered synthetic task."""

from __future__ import annotations

import click


@click.group()
def synth() -> None:
    """Small transformers trained here on tasks with known intermediate variables."""


@synth.command()
@click.option(
    "--task", required=True, help="A registered synthetic task (`scircuits plugins` lists synth_tasks)."
)
@click.option(
    "--size", type=int, help="The task's size (addition: digits, default 4; logic: steps, default 3)."
)
@click.option("--layers", type=int, default=2, show_default=True, help="Decoder blocks.")
@click.option("--d-model", type=int, default=128, show_default=True, help="Residual width.")
@click.option("--heads", type=int, help="Attention heads (default: d_model // 32).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the weights and the data order."
)
@click.option(
    "--steps", type=click.IntRange(1), default=6000, show_default=True, help="Optimizer steps per attempt."
)
@click.option("--batch-size", type=int, default=128, show_default=True, help="Problems per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (AdamW, cosine).")
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--eval-every", type=int, default=250, show_default=True, help="Steps between evaluations.")
@click.option("--eval-examples", type=int, default=2000, show_default=True, help="Held-out problems scored.")
@click.option(
    "--stop-at",
    type=float,
    help="Stop at the first evaluation with held-out accuracy >= this (at least --target).",
)
@click.option(
    "--target", type=float, default=0.99, show_default=True, help="Held-out accuracy an attempt must reach."
)
@click.option(
    "--max-attempts",
    type=int,
    default=3,
    show_default=True,
    help="Attempts in all: one below --target restarts with twice the batch (1: no retry).",
)
@click.option(
    "--patience",
    type=int,
    default=8,
    show_default=True,
    help="Evaluations without progress (mean of the latest 3, below --target) ending an attempt (0: never).",
)
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda (not bit-reproducible).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder to write (default: $SCIRCUITS_CACHE/synth/<task>-L<layers>-d<d_model>-s<seed>, "
    "where the models `synth-addition` / `synth-logic` are found).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Instead of refusing an --out that holds files scircuits did not write, move them aside to "
    "<out>.superseded-<time> (nothing is deleted). A model of other settings is always moved aside.",
)
@click.option("--overwrite", is_flag=True, hidden=True, help="Deprecated: the same as --force.")
def train(
    task: str, size: int | None, out: str | None, force: bool, overwrite: bool, **flags: object
) -> None:
    """Train a small LlamaForCausalLM on a task; write weights, tokenizer, curve and accuracy to --out.

    An attempt is deterministic given its seed (and the thread count) on one machine. One that ends
    below --target, or stalls, is retried from the same seed with twice the batch; synth.json
    records every attempt.
    The loss is on the answer tokens; held-out accuracy is exact match on test-split problems
    training never sees.
    """
    from pydantic import ValidationError

    from scircuits import SynthTrainSettings, describe_validation_error, synth_tasks, train_synth_model

    from ._internal import UserError
    from .models import default_folder

    registry = synth_tasks()
    if task not in registry:
        raise UserError(f"unknown synthetic task {task!r}; registered tasks: {', '.join(registry.names())}")
    try:
        spec = registry.get(task).sized(size)
    except ValueError as exc:
        raise UserError(f"invalid synth train settings (--size {size}): {exc}") from None
    try:
        settings = SynthTrainSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise UserError(f"invalid synth train settings: {describe_validation_error(exc)}") from None
    folder = (
        out
        if out is not None
        else str(default_folder(task, settings.layers, settings.d_model, settings.seed))
    )

    def show(row: dict) -> None:
        loss = "" if row["loss"] is None else f" loss {row['loss']:.4f}"
        click.echo(
            f"attempt {row['attempt']} step {row['step']:>6}{loss} held-out accuracy "
            f"{row['heldout_accuracy']:.4f} ({row['wall_s']:.0f} s, {row['cpu_s']:.0f} CPU s)",
            err=True,
        )

    if overwrite:
        click.echo(
            "synth train: --overwrite is deprecated; it now means --force (moves aside, deletes nothing)",
            err=True,
        )
    record = train_synth_model(spec, settings, folder, force=force or overwrite, on_eval=show)
    tries = record["attempts"]
    click.echo(
        f"{folder}: {record['task']} ({record['size_name']} {record['size']}), {record['n_parameters']:,} "
        f"parameters, {record['steps_done']} steps in {record['train_wall_s']:.0f} s "
        f"({record['train_cpu_s']:.0f} CPU s, {len(tries)} attempt{'s' if len(tries) > 1 else ''}); "
        f"held-out exact match {record['heldout_accuracy']:.4f} on {record['heldout_examples']} problems"
    )
    if not record["reached_target"]:
        click.echo(
            f"warning: no attempt reached --target {settings.target}; kept the best (attempt "
            f"{record['attempt']}, batch {record['batch_size']}). See {folder}/synth.json.",
            err=True,
        )


@synth.command(name="tasks")
def list_tasks() -> None:
    """List the registered synthetic tasks (hook register_synth_tasks)."""
    from scircuits import synth_tasks

    registry = synth_tasks()
    for task in registry:
        click.echo(
            f"{task.name}  ({task.size_name} {task.min_size}..{task.max_size}, default {task.default_size}; "
            f"plugin {registry.owner(task.name)}): {task.description}"
        )


@synth.command()
@click.argument("model", type=click.Path(file_okay=False))
@click.option(
    "--seed", type=click.IntRange(min=0), required=True, help="Seed of the random orthogonal rotation."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New folder to write.")
def rotate(model: str, seed: int, out: str) -> None:
    """Write MODEL with its residual basis changed: the same function, no privileged coordinates.

    The RMSNorm gains are folded into the maps that read the normed stream and set to 1, then the
    residual stream is rotated by a seeded random orthogonal matrix (embedding, every write into it,
    every read of it). The largest logit difference on the task's held-out problems is measured and
    recorded with the seed in OUT/synth.json (`rotation`). MODEL is only read; OUT must not exist.
    """
    from scircuits import read_synth_info, rotate_synth_model, synth_tasks

    try:
        info = read_synth_info(model) or {}
    except (OSError, ValueError):
        info = {}
    registry = synth_tasks()
    known = info.get("task") in registry.names()
    task = registry.get(info["task"]).sized(info.get("size")) if known else None
    record = rotate_synth_model(model, out, seed, task=task)
    rotation = record["rotation"]
    click.echo(
        f"{out}: {model} with folded norm gains and residual rotated by R(seed {seed}); max |logit "
        f"difference| {rotation['max_abs_logit_diff']:.2e} (largest |logit| {rotation['max_abs_logit']:.1f}; "
        f"the source's own float32-vs-float64 difference {rotation['rounding_reference']:.2e}) on "
        f"{rotation['checked_on']}"
    )
