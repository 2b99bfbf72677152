"""`scircuits synth ...`: train the synthetic models."""

from __future__ import annotations

import click


@click.group()
def synth() -> None:
    """Small transformers trained here on tasks with known intermediate variables."""


@synth.command()
@click.option("--task", type=click.Choice(["addition", "logic"]), required=True, help="The task to learn.")
@click.option("--size", type=int, help="Digits (addition, default 4) or chain steps (logic, default 3).")
@click.option("--layers", type=int, default=2, show_default=True, help="Decoder blocks.")
@click.option("--d-model", type=int, default=128, show_default=True, help="Residual width.")
@click.option("--heads", type=int, help="Attention heads (default: d_model // 32).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the weights and the data order."
)
@click.option(
    "--steps",
    type=int,
    default=6000,
    show_default=True,
    help="Optimizer steps (the cosine schedule's length).",
)
@click.option("--batch-size", type=int, default=128, show_default=True, help="Problems per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (AdamW, cosine).")
@click.option("--eval-every", type=int, default=250, show_default=True, help="Steps between evaluations.")
@click.option("--eval-examples", type=int, default=2000, show_default=True, help="Held-out problems scored.")
@click.option("--stop-at", type=float, help="Stop at the first evaluation with held-out accuracy >= this.")
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
def train(out: str | None, force: bool, overwrite: bool, **flags: object) -> None:
    """Train a small LlamaForCausalLM on a task; write weights, tokenizer, curve and accuracy to --out.

    Deterministic given the seed (and the thread count). The loss is on the answer tokens; held-out
    accuracy is exact match on test-split problems training never sees.
    """
    from pydantic import ValidationError

    from ._internal import UserError, check_device
    from .models import default_folder
    from .training import TrainSettings, train_model

    try:
        settings = TrainSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise UserError(f"invalid synth train settings: {problems}") from None
    check_device(settings.device)
    folder = (
        out
        if out is not None
        else str(default_folder(settings.task, settings.layers, settings.d_model, settings.seed))
    )

    def show(row: dict) -> None:
        loss = "" if row["loss"] is None else f" loss {row['loss']:.4f}"
        click.echo(
            f"step {row['step']:>6}{loss} held-out accuracy {row['heldout_accuracy']:.4f} "
            f"({row['wall_s']:.0f} s, {row['cpu_s']:.0f} CPU s)",
            err=True,
        )

    if overwrite:
        click.echo(
            "synth train: --overwrite is deprecated; it now means --force (moves aside, deletes nothing)",
            err=True,
        )
    record = train_model(settings, folder, force=force or overwrite, on_eval=show)
    click.echo(
        f"{folder}: {record['task']} (size {record['size']}), {record['n_parameters']:,} parameters, "
        f"{record['steps_done']} steps in {record['train_wall_s']:.0f} s "
        f"({record['train_cpu_s']:.0f} CPU s); "
        f"held-out exact match {record['heldout_accuracy']:.4f} on {record['heldout_examples']} problems"
    )
