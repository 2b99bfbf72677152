"""Issue 11's acceptance check as one table: `scircuits train` with default settings (and a few
alternatives) on an independently written planted-dictionary store.

    python bench/planted_defaults.py [--store PATH] [--out DIR] [--only default,old,...] [--seed N]

The store is written by ``bench/planted_store.py`` (numpy's own generator, seed 1234, independent of
scircuits' ground-truth code and of the training seed): 512 unit atoms in 128 dimensions, Zipf-like
firing frequencies (mean 8 active atoms per token), exponential magnitudes, noise 0.05, 131,072
tokens. Each row of the table is one `scircuits train --store STORE --k 8 --tokens 1500000 ...` in a
subprocess (so the command line is what is measured), scored against the atoms: the share of atoms
whose best decoder row has cosine > 0.9, MMCS, one-to-one (Hungarian) MCC, and the checkpoint's own
held-out FVU; with the wall and CPU seconds of the training process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BASE = ["--k", "8", "--tokens", "1500000"]
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "old default (lr 1e-4, warm-up 100)": ["--lr", "1e-4", "--warmup-steps", "100"],
    "width rule only (lr 8e-4)": ["--lr", "8e-4"],
    "default, batch 1024": ["--batch-size", "1024"],
    "default, expansion 4": ["--expansion", "4"],
}
SHORT = {
    "default": "default",
    "old": "old default (lr 1e-4, warm-up 100)",
    "width": "width rule only (lr 8e-4)",
    "b1024": "default, batch 1024",
    "x4": "default, expansion 4",
}


def train_and_score(store: Path, out: Path, extra: list[str], seed: int) -> dict:
    import numpy as np

    from scircuits import load_sae
    from scircuits.platform.train.planted import dictionary_scores

    command = [sys.executable, "-m", "scircuits", "train", "--store", str(store), *BASE, *extra]
    command += ["--seed", str(seed), "--out", str(out), "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    sae, meta = load_sae(out)
    atoms = np.load(f"{store}.atoms.npy")
    scores = dictionary_scores(sae.W_dec.detach().double().numpy(), atoms)
    info = meta["meta"]
    return {
        "lr": info["train_config"]["lr"],
        "lr_rule": info["lr_rule"],
        "batch_size": info["train_config"]["batch_size"],
        "d_sae": sae.d_sae,
        "steps": info["steps"],
        "recovered": scores.recovered,
        "mmcs": scores.mmcs,
        "mcc": scores.mcc,
        "fvu": info["metrics"]["fvu"],
        "wall_s": wall,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="/tmp/planted-defaults/planted.zarr")
    parser.add_argument("--out", default="/tmp/planted-defaults")
    parser.add_argument("--only", help=f"comma list of {', '.join(SHORT)} (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the store's is 1234)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = [SHORT[n.strip()] for n in args.only.split(",")] if args.only else list(SETTINGS)
    store = Path(args.store)
    if not store.exists():
        import planted_store

        store.parent.mkdir(parents=True, exist_ok=True)
        planted_store.write(str(store), 1234)
    rows = {}
    for index, name in enumerate(names):
        out = Path(args.out) / f"sae-{index}-seed{args.seed}"
        rows[name] = train_and_score(store, out, SETTINGS[name], args.seed)
        print(f"[{name}] {json.dumps(rows[name])}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"`scircuits train --store STORE {' '.join(BASE)}` + the setting; seed {args.seed}")
    print()
    print("| setting | lr | batch | d_sae | steps | atoms cos > 0.9 | MMCS | MCC | FVU | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['lr']:.3g} | {r['batch_size']} | {r['d_sae']} | {r['steps']} | "
            f"{r['recovered']:.1%} | {r['mmcs']:.3f} | {r['mcc']:.3f} | {r['fvu']:.3f} | "
            f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
