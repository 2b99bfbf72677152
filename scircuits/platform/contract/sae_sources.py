"""Published SAEs: the plugin family that reads checkpoints other tools wrote (Gemma Scope's npz,
Llama Scope, sparsify, ...) and names them (SAELens' release table).

An ``SAESource`` does one or both of two jobs:

- **read a layout**: ``matches(folder, where)`` says whether a folder holds a checkpoint in its
  layout, and ``read(folder, where)`` returns it as a ``PublishedSAE``: SAELens' cfg.json fields and
  tensors (SAELens names and shapes, weights applying to raw activations), so every published SAE is
  built by the SAE variant that reads that SAELens architecture;
- **resolve a scheme**: with ``scheme = "NAME"``, ``--sae NAME:REF`` is handed to ``resolve(ref)``,
  which returns the hub repository, folder and revision to download (a ``HubLocation``).

The core itself handles local folders, ``hf:REPO[/PATH][@REVISION]`` and the SAELens layout of its
own checkpoints. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HubLocation:
    """A folder of a Hugging Face hub repository, at a revision (None: the default branch)."""

    repo_id: str
    path: str = ""
    revision: str | None = None
    # what the scheme knows about the SAE that the files may not say (SAELens' release table)
    facts: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = f"{self.repo_id}/{self.path}" if self.path else self.repo_id
        return where + (f"@{self.revision}" if self.revision else "")


@dataclass
class PublishedSAE:
    """A published checkpoint as SAELens describes one.

    ``cfg`` holds SAELens' cfg.json fields (``architecture``, ``d_in``, ``d_sae``, ``k`` for topk,
    ``apply_b_dec_to_input``, ``normalize_activations``); ``tensors`` SAELens' names (``W_enc`` d_in
    x d_sae, ``W_dec`` d_sae x d_in, ``b_enc``, ``b_dec``, ``threshold``...). ``hook_name`` is where
    the tool read the model (a TransformerLens hook name or a module path); ``metrics`` what the
    publisher measured (``relative_error``, ``l0``, ...) and ``files`` the files read.
    """

    cfg: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    hook_name: str | None
    files: list[Path]
    metrics: dict[str, Any] = field(default_factory=dict)


class SAESource:
    """Base of every published-SAE source plugin (``register_sae_sources``)."""

    default: ClassVar[bool] = False  # no family default: a layout is recognised, never assumed
    name: str = ""
    description: str = ""
    scheme: str = ""  # "saelens" → ``--sae saelens:REF``; "" for a reader of layouts only

    def resolve(self, ref: str) -> HubLocation:
        """The hub folder of ``ref`` (the text after ``scheme:``); ConfigError naming close matches."""
        raise NotImplementedError

    def matches(self, folder: Path, where: HubLocation | None = None) -> bool:
        """Whether ``folder`` holds a checkpoint in this source's layout (cheap: file names only)."""
        return False

    def read(self, folder: Path, where: HubLocation | None = None) -> PublishedSAE:
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        return {"scheme": self.scheme or None}
