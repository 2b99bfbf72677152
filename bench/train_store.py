"""Training from a store against training on the same activations held in memory: does the reader's
prefetch hide the reads?

    python bench/train_store.py --store runs/x/activations.zarr        # a real store (d_model 576)
    python bench/train_store.py --d-model 4096 --rows 131072           # a GENERATED float16 store
    python bench/train_store.py --d-model 576 --rows 65536 --steps 8 --rounds 1   # a quick check

Both runs are the project's trainer (``scircuits.platform.train.training.train``: the training loop
of `scircuits train`, TopK, expansion --expansion, k --k, batch --batch-size, --steps steps, seed 0),
on the same store and settings. They differ only in where the batches come from:

- store    the store's shuffling reader as `scircuits train` opens it (a background thread reads
           the next blocks while the trainer steps: ``ActivationStore(prefetch=PREFETCH_BLOCKS)``);
- memory   the very same batches (the first --steps of the epoch), read from the store before the
           clock starts and held in memory as float32 tensors (the reader is replaced by a list of
           them: zero input cost).

Rounds alternate store and memory. The figure is tokens/s of the training loop (the ``seconds`` the
trainer records in scircuits.json: every step, the reads inside it; the set-up, the initial sample and
the final evaluation are outside it), median over rounds. The store runs also time how long the
trainer waits for each batch (the reads the prefetch did not hide): a share of the loop that the
machine's load moves less than the ratio of two runs. Both runs must end with identical weights
(same batches, same seed): the bench stops if they do not. A generated store (no --store) is
labelled as such: sparse sums of random unit atoms, not activations (fine for speed, nothing else).
Not a test: figures depend on whatever else runs on the machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import scircuits.platform.train.training as training
from scircuits.platform.config import TrainConfig
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.store import ActivationStore, ActivationStoreWriter


class HeldStore:
    """A store whose training batches (``split="train", drop_last=True``) come from memory; every other
    read goes to the store. ``hold`` reads them first, with the arguments the trainer will pass."""

    def __init__(self, store: ActivationStore) -> None:
        self._store = store
        self._held: dict[str, list[torch.Tensor]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @staticmethod
    def _key(batch_size: int, kwargs: dict[str, Any]) -> str:
        return json.dumps([batch_size, sorted(kwargs.items())], default=str)

    def hold(self, batch_size: int, n_batches: int, **kwargs: Any) -> int:
        batches = list(itertools.islice(self._store.iter_batches(batch_size, **kwargs), n_batches))
        self._held[self._key(batch_size, kwargs)] = batches
        return sum(b.shape[0] for b in batches)

    def iter_batches(self, batch_size: int, **kwargs: Any):
        key = self._key(batch_size, kwargs)
        if kwargs.get("split") == "train" and kwargs.get("drop_last"):
            if key not in self._held:
                raise RuntimeError(f"the bench did not hold these batches: {key}")
            return iter(self._held[key])
        return self._store.iter_batches(batch_size, **kwargs)


class TimedStore:
    """The store as the trainer reads it, timing how long each training batch takes to arrive (the
    time the trainer waits on the reader: near zero when the prefetch hides the reads)."""

    def __init__(self, store: ActivationStore) -> None:
        self._store = store
        self.waited = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def iter_batches(self, batch_size: int, **kwargs: Any):
        batches = self._store.iter_batches(batch_size, **kwargs)
        if not (kwargs.get("split") == "train" and kwargs.get("drop_last")):
            return batches
        return self._timed(batches)

    def _timed(self, batches):
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - start
            yield batch


def generate_store(path: Path, rows: int, d_model: int, dtype: str, seed: int = 0) -> None:
    """Activation-like rows: about 24 non-negative multiples of 8,192 random unit atoms, a shared
    offset and four dimensions of large variance, plus noise; examples of 128 rows."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(8192, d_model, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = torch.randn(d_model, generator=g) * 0.5
    scales = torch.ones(d_model)
    scales[:4] = 6.0
    popularity = torch.rand(8192, generator=g).pow(3) + 1e-3
    attrs = {
        "source": "imported",
        "model": "generated",
        "model_id": "generated",
        "model_revision": "generated",
        "layer": 0,
        "site": "resid",
        "data_source": {"kind": "benchmark", "benchmark": "generated", "split": "generated"},
    }
    with ActivationStoreWriter.open(path, attrs, d_model=d_model, dtype=dtype) as writer:
        for start in range(0, rows, 128):
            idx = torch.multinomial(popularity, 128 * 24, replacement=True, generator=g).view(128, 24)
            mags = torch.rand(128, 24, generator=g) * 2
            x = torch.nn.functional.embedding_bag(idx, atoms, per_sample_weights=mags, mode="sum")
            x = (x + offset) * scales + 0.05 * torch.randn(128, d_model, generator=g)
            writer.append_example(start // 128, np.zeros(128, dtype=np.int32), x.numpy())


def run_once(config: TrainConfig, held: bool) -> dict[str, Any]:
    """One training run; returns its loop seconds, tokens and final weights."""
    original = training.open_store
    timed = None
    if not held:
        timed = TimedStore(ActivationStore(config.store))
        training.open_store = lambda _path: timed  # type: ignore[assignment]
    else:
        store = HeldStore(ActivationStore(config.store))
        seed = training.derived_seeds(config.seed).data
        kwargs = dict(
            seed=seed,
            split="train",
            rank=0,
            world_size=1,
            drop_last=True,
            epoch=0,
            start_batch=0,
            eval_fraction=config.eval_fraction,
            split_seed=0,
        )
        rows = store.hold(config.batch_size, config.tokens // config.batch_size, **kwargs)
        if rows < config.tokens:
            raise SystemExit(
                f"the store's training split has {rows} rows in whole batches, fewer than --steps needs"
            )
        training.open_store = lambda _path: store  # type: ignore[assignment]
    try:
        out = Path(training.train(config, get_plugins()))
    finally:
        training.open_store = original
    meta = json.loads((out / "scircuits.json").read_text())
    from safetensors.torch import load_file

    weights = load_file(str(out / "sae_weights.safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    waited = timed.waited if timed is not None else 0.0
    return {"seconds": meta["seconds"], "tokens": meta["tokens"], "weights": weights, "waited": waited}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", help="a real store (default: generate one)")
    parser.add_argument("--d-model", type=int, default=576, help="generated store: width")
    parser.add_argument("--rows", type=int, default=131072, help="generated store: rows")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--eval-tokens", type=int, default=8192, help="final evaluation (untimed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # The final evaluation is outside the timed loop; keep it short.
    training.USAGE_TOKENS = args.eval_tokens
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-store-", dir=args.workdir))
    try:
        if args.store:
            store_path, label = args.store, f"store {args.store}"
        else:
            store_path = str(workdir / "generated.zarr")
            generate_store(Path(store_path), args.rows, args.d_model, args.dtype)
            label = f"GENERATED store ({args.rows:,} x {args.d_model}, {args.dtype}; not activations)"
        store = ActivationStore(store_path)
        config = TrainConfig(
            store=store_path,
            sae="topk",
            hparams={"k": args.k},
            expansion=args.expansion,
            batch_size=args.batch_size,
            tokens=args.steps * args.batch_size,
            eval_every=10**6,
            log_every=10**6,
            checkpoint_every=10**6,
            eval_tokens=args.eval_tokens,
            exclude_tokens="none",
            progress=False,
            seed=0,
        )
        times: dict[str, list[float]] = {"store": [], "memory": []}
        waits: list[float] = []  # share of the store run's loop spent waiting for a batch
        weights: dict[str, dict[str, torch.Tensor]] = {}
        load_before = os.getloadavg()
        for round_index in range(args.rounds):
            for kind in ("store", "memory"):
                out = workdir / f"{kind}{round_index}"
                result = run_once(config.model_copy(update={"out": str(out)}), held=kind == "memory")
                times[kind].append(result["tokens"] / result["seconds"])
                weights.setdefault(kind, result["weights"])
                if kind == "store":
                    waits.append(result["waited"] / result["seconds"])
                print(
                    f"round {round_index} {kind:<6} {result['tokens']:,} tokens "
                    f"in {result['seconds']:.2f} s: "
                    f"{times[kind][-1]:.0f} tokens/s"
                    + (f", {result['waited']:.2f} s waiting for batches" if kind == "store" else "")
                    + f"; load {os.getloadavg()}",
                    flush=True,
                )
        same = all(torch.equal(weights["store"][k], weights["memory"][k]) for k in weights["store"])
        if not same:
            raise SystemExit("the store and memory runs ended with different weights: not the same training")
        rate = {kind: statistics.median(ts) for kind, ts in times.items()}
        ratio = rate["store"] / rate["memory"]
        print(
            f"{label}: d_model {store.d_model}, d_sae {args.expansion * store.d_model}, k {args.k}, "
            f"batch {args.batch_size}, {args.steps} steps, {args.rounds} rounds, "
            f"{torch.get_num_threads()} threads, prefetch {store.prefetch} blocks"
        )
        print(
            f"store {rate['store']:.0f} tokens/s, memory {rate['memory']:.0f} tokens/s "
            "(medians); same weights"
        )
        print(f"store / memory {ratio:.3f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
        print(
            "share of the store runs' training loop spent waiting for a batch: "
            + ", ".join(f"{w:.4f}" for w in waits)
        )
        print(f"load average before {load_before}, after {os.getloadavg()}")
        if args.json_out:
            args.json_out.write_text(
                json.dumps(
                    {
                        "label": label,
                        "d_model": store.d_model,
                        "d_sae": args.expansion * store.d_model,
                        "k": args.k,
                        "batch_size": args.batch_size,
                        "steps": args.steps,
                        "tokens_per_s": times,
                        "median": rate,
                        "store_over_memory": ratio,
                        "store_wait_share": waits,
                        "threads": torch.get_num_threads(),
                        "loadavg_before": load_before,
                        "loadavg_after": os.getloadavg(),
                    },
                    indent=2,
                )
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
