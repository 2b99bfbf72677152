"""The floors of a pair of runs in the pair's own spaces.

A run's reference floors (``study.reference``) encode its own store twice: its SAE against an
untrained SAE or a random basis of the same activations. That is the right floor for two SAEs of
one model at one site, not for two models or two layers: there B's latents read B's activations.
For such a pair the floors here replace one side's SAE by what learned nothing, on that side's own
activations and the pair's own tokens:

- ``a_vs_untrained_b`` / ``a_vs_basis_b``: A's SAE on A's activations against an untrained SAE of
  B's variant and size (or a random orthonormal basis of B's space) on B's activations: the floor
  of the pair's A → B figures (``max_a_to_b``, one-to-one);
- ``untrained_a_vs_b`` / ``basis_a_vs_b``: the same with the sides' roles swapped, A's side
  untrained: the floor of the pair's B → A figures (``max_b_to_a``).

This module plans those comparisons (``floor_jobs``); ``study`` measures them like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scircuits.platform.compare import internals
from scircuits.platform.compare.geometry import random_rotation
from scircuits.platform.compare.runs import Run
from scircuits.platform.compare.sources import Chunk, Encoder, basis_encoder, sae_encoder

UNTRAINED_SEED = 12345
ROTATION_SEED = 54321

ChunksFor = Callable[[Encoder, Encoder], Iterable[Chunk]]  # the pair's tokens under two encoders


def same_space(run_a: Run, run_b: Run) -> bool:
    """Both runs read the same activations: one model (and weights folder), layer and site."""
    key = lambda r: (r.model, r.config.get("model_path"), r.layer, r.site)  # noqa: E731
    return key(run_a) == key(run_b)


def untrained_like(run: Run, sae: Any, core: internals.Core) -> Any:
    """An SAE of the run's variant, size and hyperparameters with its initial weights."""
    variant = run.sae_meta.get("variant") or run.results.get("provenance", {}).get("sae", {}).get("variant")
    hparams = run.sae_meta.get("hparams") or getattr(sae, "hparams", {})
    return core.untrained_sae(variant or sae.variant, int(sae.d_in), int(sae.d_sae), hparams, UNTRAINED_SEED)


def decoder(sae: Any) -> np.ndarray:
    return sae.W_dec.detach().float().numpy()


@dataclass
class FloorJob:
    field: str  # the PairFloors field it fills
    kind: str
    labels: tuple[str, str]
    chunks: Iterable[Chunk]
    dims: tuple[int, int]
    decoders: tuple[np.ndarray, np.ndarray]


@dataclass
class Null:
    """What learned nothing on one side: an encoder, its width, its decoder rows and its name."""

    encode: Encoder
    width: int
    decoder: np.ndarray
    what: str


def nulls_of(run: Run, sae: Any, core: internals.Core) -> tuple[Null, Null]:
    """(an untrained SAE like the run's, a random orthonormal basis of its activation space)."""
    untrained = untrained_like(run, sae, core)
    basis = random_rotation(int(sae.d_in), ROTATION_SEED)
    return (
        Null(sae_encoder(untrained), int(untrained.d_sae), decoder(untrained), "untrained SAE"),
        Null(basis_encoder(basis), int(sae.d_in), basis, "random basis"),
    )


def floor_jobs(
    runs: tuple[Run, Run], saes: tuple[Any, Any], chunks_for: ChunksFor, core: internals.Core
) -> list[FloorJob]:
    """The four comparisons of a pair's floors, each over the pair's tokens (read when measured)."""
    (run_a, run_b), (sae_a, sae_b) = runs, saes
    dims = (int(sae_a.d_sae), int(sae_b.d_sae))
    jobs = []
    for tag, kind, null_a, null_b in zip(
        ("untrained", "basis"),
        ("pair-floor-untrained", "pair-floor-rotation"),
        nulls_of(run_a, sae_a, core),
        nulls_of(run_b, sae_b, core),
        strict=True,
    ):
        jobs.append(
            FloorJob(
                f"a_vs_{tag}_b",
                kind,
                (run_a.label, f"{null_b.what} on {run_b.label}"),
                chunks_for(sae_encoder(sae_a), null_b.encode),
                (dims[0], null_b.width),
                (decoder(sae_a), null_b.decoder),
            )
        )
        jobs.append(
            FloorJob(
                f"{tag}_a_vs_b",
                kind,
                (f"{null_a.what} on {run_a.label}", run_b.label),
                chunks_for(null_a.encode, sae_encoder(sae_b)),
                (null_a.width, dims[1]),
                (null_a.decoder, decoder(sae_b)),
            )
        )
    return jobs
