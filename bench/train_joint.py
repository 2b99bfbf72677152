"""Several SAEs from one collection: the joint pass against training them one after another.

    python bench/train_joint.py                      # 4 sites (layers 0 and 1, resid and mlp) of a
                                                     # random SmolLM2-shaped model of width 576
    python bench/train_joint.py --collection DIR     # an existing collection (every site)
    python bench/train_joint.py --tokens 65536 --context-tokens 65536

Collects (once, into --work) a corpus collection of a random SmolLM2-architecture model with
SmolLM2's width (576; 2 blocks: the bench times training, not the model), then trains one topk SAE
per site (expansion 8, batch 4,096) twice from scratch: all sites in one pass (`train_joint`, what
`scircuits train --store COLLECTION` runs), and each site alone, one after another (`train`, what
`scircuits train --store COLLECTION/<site>` runs). Each arm runs in this process with the same
thread count; reported: wall seconds and CPU seconds (user + system of this process) of the whole
training (token exclusion pass, initialisation, steps, evaluations, latent usage, saving) and its
rate in training tokens per second summed over the SAEs; and whether the two arms' weights are
equal (they must be, bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOCS = [f"doc {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(40 + i % 30)) for i in range(400)]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def collect(work: Path, context_tokens: int) -> Path:
    from scircuits.platform.collect.collection import run_collect
    from scircuits.platform.config import CollectConfig
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.testing import save_tiny_model, tiny_loaded_model

    out = work / "collection"
    if (out / "manifest.json").is_file():
        return out
    model = tiny_loaded_model("smollm2-135m", hidden_size=576, intermediate_size=1536, num_hidden_layers=2)
    folder = save_tiny_model(model, work / "model")
    text = work / "corpus.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 20))
    values = dict(model="smollm2-135m", model_path=str(folder), corpus=str(text), context_size=128)
    values.update(tokens=context_tokens, batch_size=16, out=str(out), progress=False, dtype="float32")
    run_collect(CollectConfig(**values, layers="0,1", sites="resid,mlp"), get_plugins())
    return out


def configs(collection: Path, out: Path, tokens: int) -> list:
    from scircuits.platform.config import TrainConfig
    from scircuits.store.collection import read_manifest

    return [
        TrainConfig(
            store=str(collection / site),
            sae="topk",
            hparams={"k": 32},
            expansion=8,
            batch_size=4096,
            tokens=tokens,
            out=str(out / site),
            progress=False,
        )
        for site in read_manifest(collection).sites
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".scircuits-cache" / "bench-train-joint")
    parser.add_argument("--collection", type=Path, help="an existing collection (default: collect one)")
    parser.add_argument("--context-tokens", type=int, default=65536, help="tokens to collect")
    parser.add_argument("--tokens", type=int, default=65536, help="training tokens per SAE")
    args = parser.parse_args()

    from safetensors.torch import load_file

    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.joint import train_joint
    from scircuits.platform.train.training import train

    args.work.mkdir(parents=True, exist_ok=True)
    collection = args.collection or collect(args.work, args.context_tokens)
    plugins = get_plugins()
    rows = {}
    for arm in ("joint", "one after another"):
        out = args.work / arm.replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        jobs = configs(collection, out, args.tokens)
        wall, cpu = time.perf_counter(), cpu_seconds()
        if arm == "joint":
            train_joint(jobs, plugins, show_progress=False)
        else:
            for job in jobs:
                train(job, plugins)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        trained = sum(json.loads((Path(j.out) / "scircuits.json").read_text())["tokens"] for j in jobs)
        rows[arm] = (len(jobs), trained, wall, cpu, [Path(j.out) for j in jobs])
    joint_dirs, alone_dirs = rows["joint"][4], rows["one after another"][4]
    equal = all(
        all(bool((a[k] == b[k]).all()) for k in a)
        for a, b in (
            (load_file(str(x / "sae_weights.safetensors")), load_file(str(y / "sae_weights.safetensors")))
            for x, y in zip(joint_dirs, alone_dirs, strict=True)
        )
    )
    print(f"collection {collection}; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print("| arm | SAEs | training tokens | wall s | CPU s | tokens/s (wall) | tokens/s (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for arm, (n, trained, wall, cpu, _) in rows.items():
        rates = f"{trained / wall:,.0f} | {trained / cpu:,.0f}"
        print(f"| {arm} | {n} | {trained} | {wall:.1f} | {cpu:.1f} | {rates} |")
    joint_wall, alone_wall = rows["joint"][2], rows["one after another"][2]
    print(f"joint / one after another, wall time: {joint_wall / alone_wall:.3f}; weights equal: {equal}")


if __name__ == "__main__":
    main()
