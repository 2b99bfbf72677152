"""A corpus-trained SAE against a benchmark-trained SAE, both evaluated on the same evaluation store.

    python bench/corpus_vs_benchmark.py --eval test.zarr sae_corpus sae_bench [...]

For each SAE: FVU over every evaluation token, FVU with the massive dimensions excluded (the
dimensions whose variance exceeds --massive times the median dimension's; SmolLM2's 507 at layer 15),
FVU from position 1 on (position 0 leaves out the first token), relative error, L0 and the fraction
of latents that never fire on the evaluation tokens. Not a test: the figures depend on the budgets.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.checkpoint import load_sae
from scircuits.platform.train.metrics import ReconstructionStats
from scircuits.store import ActivationStore


def fvu_masked(x: np.ndarray, x_hat: np.ndarray, keep: np.ndarray) -> float:
    x, x_hat = x[:, keep].astype(np.float64), x_hat[:, keep].astype(np.float64)
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("saes", nargs="+")
    parser.add_argument("--eval", required=True, help="the evaluation store")
    parser.add_argument("--massive", type=float, default=50.0)
    parser.add_argument(
        "--split",
        default="all",
        choices=["all", "eval"],
        help="eval: only the examples training holds out (eval_fraction 0.05, split seed 0)",
    )
    args = parser.parse_args()
    store = ActivationStore(args.eval)
    x = store.read_rows(0, store.n_tokens)
    rows = np.ones(store.n_tokens, dtype=bool)
    if args.split == "eval":
        rows = np.isin(store.example_ids, store.split_examples(0.05, 0)[1])
    x = x[rows]
    variance = x.astype(np.float64).var(axis=0)
    keep = variance <= args.massive * np.median(variance)
    late = store.positions[rows] >= 1
    results = {}
    for path in args.saes:
        sae, info = load_sae(path, get_plugins())
        stats = ReconstructionStats(d_sae=info["cfg"]["d_sae"])
        hats = []
        with torch.no_grad():
            for start in range(0, x.shape[0], 4096):
                batch = torch.from_numpy(x[start : start + 4096])
                acts = sae.encode(batch)
                x_hat = sae.decode(acts)
                stats.update(batch, x_hat, acts)
                hats.append(x_hat.numpy())
        x_hat = np.concatenate(hats)
        result = stats.result()
        result["fvu_massive_excluded"] = fvu_masked(x, x_hat, keep)
        result["fvu_from_position_1"] = fvu_masked(x[late], x_hat[late], np.ones(x.shape[1], bool))
        result["massive_dims"] = np.flatnonzero(~keep).tolist()
        result["trained_on"] = (info["meta"].get("store") or {}).get("attrs", {}).get("data_source")
        result["train_tokens"] = info["meta"].get("tokens")
        results[path] = result
    summary = {
        "eval_store": args.eval,
        "split": args.split,
        "eval_tokens": int(x.shape[0]),
        "results": results,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
