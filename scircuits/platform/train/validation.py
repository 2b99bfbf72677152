"""Ground truth for SAE training (``scircuits validate sae``).

Activations are generated from a planted sparse dictionary: ``n_atoms`` random unit atoms in
``d_in`` dimensions, each token a sparse non-negative combination of them (each atom active with
probability ``sparsity / n_atoms``, magnitude uniform in [0.5, 1.5]) plus Gaussian noise. Each SAE
variant is trained on it with the same optimiser loop as ``scircuits train``; the score is the
mean max cosine similarity (MMCS) between the true atoms and the learned decoder rows, and the
fraction of atoms recovered (best cosine > 0.9).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from scircuits.platform.contract.saes import SAEVariant
from scircuits.platform.train.metrics import ReconstructionStats, mean_max_cosine
from scircuits.platform.train.training import SAETrainer

MMCS_THRESHOLD = 0.9


@dataclass
class PlantedSetup:
    d_in: int = 32
    n_atoms: int = 64
    expansion: int = 2  # d_sae = expansion * n_atoms
    sparsity: float = 3.0  # mean active atoms per token
    noise: float = 0.01
    n_tokens: int = 32768
    batch_size: int = 128
    epochs: int = 3
    lr: float = 3e-3
    seed: int = 0  # the planted data
    init_seed: int = 1  # the SAE initialisation, independent of the data

    @property
    def d_sae(self) -> int:
        return self.expansion * self.n_atoms


class PlantedDictionary:
    def __init__(self, setup: PlantedSetup) -> None:
        self.setup = setup
        self.generator = torch.Generator().manual_seed(setup.seed)
        atoms = torch.randn(setup.n_atoms, setup.d_in, generator=self.generator)
        self.atoms = atoms / atoms.norm(dim=1, keepdim=True)

    def sample(self, n: int) -> torch.Tensor:
        s = self.setup
        active = torch.rand(n, s.n_atoms, generator=self.generator) < s.sparsity / s.n_atoms
        magnitudes = 0.5 + torch.rand(n, s.n_atoms, generator=self.generator)
        codes = active * magnitudes
        noise = s.noise * torch.randn(n, s.d_in, generator=self.generator)
        return codes @ self.atoms + noise


@dataclass
class VariantResult:
    sae: str
    mmcs: float
    recovered: float
    fvu: float
    l0: float
    dead_fraction: float
    seconds: float
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.mmcs >= MMCS_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Small matrices run fastest (and are not starved on a shared machine) on one thread."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def validate_variant(
    variant: SAEVariant,
    setup: PlantedSetup | None = None,
    hparams: dict[str, Any] | None = None,
    threads: int | None = 1,
) -> VariantResult:
    """Train ``variant`` on a planted dictionary with its ``validation_hparams`` (then ``hparams``)."""
    name = variant.name
    setup = setup or PlantedSetup()
    chosen = {**variant.validation_hparams, **(hparams or {})}
    started = time.monotonic()
    with torch_threads(threads):
        data = PlantedDictionary(setup)
        torch.manual_seed(setup.init_seed)
        train_x = data.sample(setup.n_tokens)
        eval_x = data.sample(4096)
        sae = variant.make(setup.d_in, setup.d_sae, chosen)
        steps_per_epoch = setup.n_tokens // setup.batch_size
        trainer = SAETrainer(
            sae,
            lr=setup.lr,
            total_steps=steps_per_epoch * setup.epochs,
            warmup_steps=min(50, steps_per_epoch),
            decay_fraction=0.2,
            grad_clip=1.0,
        )
        trainer.initialize_from_sample(train_x[:4096])
        order = torch.Generator().manual_seed(setup.seed + 1)
        for _ in range(setup.epochs):
            permutation = torch.randperm(setup.n_tokens, generator=order)
            for i in range(steps_per_epoch):
                trainer.train_step(train_x[permutation[i * setup.batch_size : (i + 1) * setup.batch_size]])
        metrics = trainer.evaluate(iter(eval_x.split(1024)), eval_x.shape[0])
        folded = trainer.folded_copy()
        scores = mean_max_cosine(folded.W_dec.detach(), data.atoms, threshold=MMCS_THRESHOLD)
    return VariantResult(
        sae=name,
        mmcs=scores["mmcs"],
        recovered=scores["recovered"],
        fvu=metrics["fvu"],
        l0=metrics["l0"],
        dead_fraction=metrics["dead_fraction"],
        seconds=time.monotonic() - started,
        hparams=chosen,
    )


__all__ = [
    "MMCS_THRESHOLD",
    "PlantedDictionary",
    "PlantedSetup",
    "ReconstructionStats",
    "VariantResult",
    "validate_variant",
]
