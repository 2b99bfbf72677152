"""Issue 11's acceptance check: `scircuits train` with default settings on a planted-dictionary store.

    python bench/planted_store.py write /tmp/planted.zarr      # the store + /tmp/planted.zarr.atoms.npy
    scircuits train --store /tmp/planted.zarr --sae topk --k 8 --tokens 1500000 --out /tmp/planted-sae
    python bench/planted_store.py score /tmp/planted.zarr /tmp/planted-sae

The data are written with numpy's own generator, independently of scircuits' ground-truth code:
512 unit atoms in 128 dimensions; atom i fires with probability proportional to 1 / (i + 1) (Zipf,
mean 8 active atoms per token); magnitudes exponential with mean 1; Gaussian noise of standard
deviation 0.05 per dimension; 131,072 tokens in 1,024 examples of 128 tokens. The store is labelled
``source="synthetic"``. ``score`` compares the checkpoint's decoder rows with the atoms: MMCS, the
share of atoms whose best cosine exceeds 0.9, and one-to-one (Hungarian) MCC.

bench/planted_defaults.py runs the acceptance check as one table (the defaults and alternatives).
Measured 2026-11-26 before the batch factor of the default rule (seed 1234, topk k 8, expansion 8,
1.5M tokens, lr by the width rule alone, 8e-4 at d_sae 1024), on a shared 2-core CPU:
- `--batch-size 1024` (1,465 steps): 85.0% of atoms at cosine > 0.9, MMCS 0.954, MCC 0.951, FVU 0.07;
- the default batch 4,096 (367 steps): 29.1%, MMCS 0.763, MCC 0.752, FVU 0.13;
- `--batch-size 1024 --lr 1.6e-3` (twice the rule): 96.1%, MMCS 0.977, MCC 0.974, FVU 0.063.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

D_IN = 128
N_ATOMS = 512
MEAN_L0 = 8.0
NOISE = 0.05
N_EXAMPLES = 1024
TOKENS_PER_EXAMPLE = 128


def atom_frequencies() -> np.ndarray:
    weights = 1.0 / np.arange(1, N_ATOMS + 1)
    return np.minimum(1.0, MEAN_L0 * weights / weights.sum())


def write(path: str, seed: int) -> None:
    from scircuits.store.writer import ActivationStoreWriter

    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((N_ATOMS, D_IN))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    freq = atom_frequencies()
    attrs = {
        "source": "synthetic",
        "model": "planted-dictionary",
        "benchmark": "planted-dictionary",
        "seed": seed,
        "planted": {
            "d_in": D_IN,
            "n_atoms": N_ATOMS,
            "mean_l0": MEAN_L0,
            "frequencies": "zipf 1/(i+1)",
            "magnitudes": "exponential(1)",
            "noise": NOISE,
        },
    }
    with ActivationStoreWriter.open(path, attrs, d_model=D_IN, dtype="float32") as writer:
        for index in range(N_EXAMPLES):
            active = rng.random((TOKENS_PER_EXAMPLE, N_ATOMS)) < freq
            codes = active * rng.exponential(1.0, size=(TOKENS_PER_EXAMPLE, N_ATOMS))
            acts = codes @ atoms + NOISE * rng.standard_normal((TOKENS_PER_EXAMPLE, D_IN))
            token_ids = np.zeros(TOKENS_PER_EXAMPLE, dtype=np.int32)
            writer.append_example(index, token_ids, acts.astype(np.float32))
    np.save(f"{path}.atoms.npy", atoms)
    print(f"wrote {path} ({N_EXAMPLES * TOKENS_PER_EXAMPLE} tokens) and {path}.atoms.npy")


def score(store: str, checkpoint: str) -> None:
    from scircuits import load_sae  # the process-wide plugin set
    from scircuits.platform.train.planted import dictionary_scores

    atoms = np.load(f"{store}.atoms.npy")
    sae, meta = load_sae(checkpoint)
    scores = dictionary_scores(sae.W_dec.detach().double().numpy(), atoms)
    train_config = meta["meta"].get("train_config", {})
    print(json.dumps({"checkpoint": checkpoint, "lr": train_config.get("lr"), **scores.model_dump()}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("store")
    w.add_argument("--seed", type=int, default=1234)
    s = sub.add_parser("score")
    s.add_argument("store")
    s.add_argument("checkpoint")
    args = parser.parse_args(argv)
    if args.command == "write":
        if Path(args.store).exists():
            print(f"{args.store} exists; give a new path", file=sys.stderr)
            return 2
        write(args.store, args.seed)
    else:
        score(args.store, args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
