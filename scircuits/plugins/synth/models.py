"""``synth-addition`` and ``synth-logic``: the trained synthetic models, by name.

A name loads the folder ``$SCIRCUITS_CACHE/synth/<task>-L<layers>-d<d_model>-s<seed>`` of the
default size and seed 0 (where ``scircuits synth train`` writes when given no ``--out``);
``--model-path`` loads any other trained folder (so does ``hf:FOLDER`` through the generic adapter).
When the folder is missing, the error says how to train it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scircuits import HFModelAdapter, LoadedModel

DEFAULT_LAYERS = 2
DEFAULT_D_MODEL = 128
DEFAULT_SEED = 0


def folder_name(task: str, layers: int, d_model: int, seed: int) -> str:
    return f"{task}-L{layers}-d{d_model}-s{seed}"


def default_folder(
    task: str, layers: int = DEFAULT_LAYERS, d_model: int = DEFAULT_D_MODEL, seed: int = 0
) -> Path:
    from ._internal import cache_root

    return cache_root() / "synth" / folder_name(task, layers, d_model, seed)


@dataclass(eq=False)
class SynthModelAdapter(HFModelAdapter):
    task: str = ""
    model_type: str = "llama"
    n_layers: int = DEFAULT_LAYERS
    d_model: int = DEFAULT_D_MODEL
    # after block 0 of 2: an edit there reaches the answer through block 1's attention; the last
    # block's output at a non-answer position reaches no answer at all
    default_layer: int | None = (DEFAULT_LAYERS - 1) // 2
    site_paths: dict[str, str] = field(
        default_factory=lambda: {"resid": "", "mlp": "mlp", "attn": "self_attn"}
    )

    @classmethod
    def for_task(cls, task: str) -> SynthModelAdapter:
        return cls(
            name=f"synth-{task}",
            task=task,
            hf_id="",  # resolved from $SCIRCUITS_CACHE when used
            description=(
                f"small Llama trained on synth-{task} ({DEFAULT_LAYERS} layers, d_model {DEFAULT_D_MODEL}, "
                f"seed 0) by `scircuits synth train`; other ones: --model-path FOLDER"
            ),
        )

    def folder(self) -> Path:
        return default_folder(self.task)

    def train_hint(self) -> str:
        return (
            f"scircuits synth train --task {self.task} --layers {DEFAULT_LAYERS} --d-model {DEFAULT_D_MODEL} "
            f"--seed {DEFAULT_SEED}"
        )

    def check_weights(self, model_path: str | None = None) -> Any:
        from ._internal import UserError, check_local_folder

        if model_path is not None:
            return check_local_folder(self, model_path)
        folder = self.folder()
        if not (folder / "config.json").is_file():
            raise UserError(
                f"model {self.name!r} is not trained yet: {folder} holds no trained model. Train it with "
                f"`{self.train_hint()}` (writes there; a few minutes on a CPU), or pass --model-path FOLDER "
                "with a folder `scircuits synth train --out FOLDER` wrote."
            )
        return check_local_folder(self, folder)

    def load(
        self, *, model_path: str | None = None, dtype: str = "float32", device: str = "cpu"
    ) -> LoadedModel:
        import dataclasses

        source = self.check_weights(model_path)
        resolved = dataclasses.replace(self, hf_id=source.location)
        loaded = HFModelAdapter.load(resolved, model_path=source.location, dtype=dtype, device=device)
        loaded.adapter = dataclasses.replace(resolved, n_layers=loaded.n_layers, d_model=loaded.d_model)
        return loaded

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "task": self.task, "folder": str(self.folder())}
