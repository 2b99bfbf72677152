"""Can any SAE from the project's trainer read a variable that the random-decoder floor cannot?
(issue 20's bar; docs/ground_truth.md, "A site that discriminates").

    python bench/synth_sae_search.py search --model-dir M-rot0 --layer 1 --out search.json [--grid full]
    python bench/synth_sae_search.py table search-s0.json search-s1.json search-s2.json

(a search may be split over processes with ``--only``; ``table`` merges the files of one model;
``--only 26 --init-seeds 1,2`` retrains one configuration from other SAE init seeds).

``search`` traces a trained synth model once: the block output ``--layer`` of ``--train-problems``
train-split problems (the SAEs' training tokens; position 0, the BOS sink, left out as the training
stage's ``outliers`` rule does) and of ``--problems`` test-split problems drawn with ``--seed`` (the
scored tokens: the very problems ``synth_recovery.py discriminate`` scores with the same flags).
Then for each configuration of the grid it trains one SAE with the project's trainer
(``train_in_memory``: ``SAETrainer`` on a registered variant, the training stage's batch, default
learning rate, warm-up, decay and clipping, as ``scircuits train`` runs it, on rows in memory) and
scores its best single feature per value of ``--variable`` (AUROC over the tokens where the variable
is defined, ``scircuits.feature_recovery``), beside the floors on the same tokens: the best raw
dimension (signed), random-decoder TopK SAEs (``scircuits.random_decoder_features``) of the
discriminate bench's size (4 x d_model, k 16; seeds 0-2) and of the trained SAE's own width and k,
and the held-out logistic probe (``scircuits.probe_recovery``, problems kept whole). It also fits
that probe on the SAE's codes: whether the information is kept, even when no single feature holds it.

A configuration is a variant, its width (expansion x d_model), its k (TopK variants) or penalty, the
training tokens, the input (``raw``, or ``standardised``: per-dimension z-scores fitted on the
training tokens) and the training rows (``all`` positions >= 1, or ``variable``: only the tokens
where ``--variable`` is defined). ``--grid quick`` is a handful; ``full`` the search of the
issue (topk k 4-64, ``variable`` rows, standardised inputs, every registered variant, expansion
2-16, 5x the tokens, AuxK windows, the pinned rate 1e-3, init seeds), in that order. Every row is written to
``--out`` as it finishes (JSON), so an interrupted search keeps its rows.

``table`` prints one line per configuration and model, and the configurations whose best feature
reaches ``--bar`` (0.8) on a value whose floors (raw and both random decoders) stay below it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BAR = 0.8  # issue 20: raw dimension and random decoder below it, the trained SAE at or above it


def grid(name: str) -> list[dict[str, Any]]:
    """The configurations of ``name``: dicts with variant, expansion, hparams, tokens, inputs, rows, seed."""
    base = {"variant": "topk", "expansion": 4, "hparams": {"k": 32}, "tokens": 1_200_000}
    base |= {"inputs": "raw", "rows": "all", "seed": 0, "lr": None}  # lr None: the training stage's rule
    out: list[dict[str, Any]] = []

    def add(**change: Any) -> None:
        row = {**base, **change}
        if row not in out:
            out.append(row)

    if name == "quick":
        for k in (8, 32):
            add(hparams={"k": k})
        add(hparams={"k": 8}, rows="variable")
        return out
    for k in (4, 8, 16, 32, 64):  # topk's k at 4 x d_model
        add(hparams={"k": k})
    for k in (4, 8, 16, 32):  # only the tokens where the variable is defined
        add(hparams={"k": k}, rows="variable")
    for k in (8, 32):  # standardised inputs, all rows and variable rows
        add(hparams={"k": k}, inputs="standardised")
        add(hparams={"k": k}, inputs="standardised", rows="variable")
    for k in (4, 8, 16):  # batchtopk
        add(variant="batchtopk", hparams={"k": k})
    for l1 in (1e-3, 3e-3, 1e-2, 3e-2):  # relu (the default decorrelation)
        add(variant="relu", hparams={"l1": l1})
    for l0 in (2e-3, 1e-2, 5e-2):  # jumprelu
        add(variant="jumprelu", hparams={"l0": l0})
    for l1 in (3e-3, 1e-2, 3e-2):  # gated
        add(variant="gated", hparams={"l1": l1})
    for expansion, k in ((2, 8), (2, 32), (8, 8), (8, 32), (16, 8)):  # width
        add(expansion=expansion, hparams={"k": k})
    add(hparams={"k": 8}, tokens=6_000_000)  # more training tokens
    for window in (8192, 40_960):  # AuxK acting early (dead after these many silent tokens)
        add(hparams={"k": 8, "dead_tokens": window})
    add(hparams={"k": 8, "auxk_alpha": 0.0})  # and not at all
    for k in (8, 32):  # the rate `run` pinned before the rule (1e-3)
        add(hparams={"k": k}, lr=1e-3)
    for seed in (1, 2):  # init seeds
        add(hparams={"k": 8}, seed=seed)
    return out


def trace(model_dir: Path, layer: int, problems: int, seed: int, train_problems: int) -> dict[str, Any]:
    """The block output at ``layer``: training rows (train split) and scored rows (test split)."""
    import numpy as np
    import torch
    from synth_recovery import _block_outputs
    from transformers import AutoTokenizer, LlamaForCausalLM

    import scircuits

    info = json.loads((model_dir / "synth.json").read_text())
    task = scircuits.synth_tasks().get(info["task"]).sized(info["size"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()

    def draw(split: str, n: int, draw_seed: int) -> list[Any]:
        stream = task.problems(split, seed=draw_seed)
        return [next(stream) for _ in range(n)]

    def hidden(ps: list[Any]) -> np.ndarray:
        out = []
        for start in range(0, len(ps), 500):
            ids = torch.tensor([tok.convert_tokens_to_ids(list(p.tokens)) for p in ps[start : start + 500]])
            out.append(_block_outputs(model, ids)[1][layer].numpy())
        return np.concatenate(out).astype(np.float64)

    test = draw("test", problems, seed)
    h = hidden(test)
    rows = [(i, pos) for i, p in enumerate(test) for pos, cell in enumerate(p.variables) if cell]
    cells = [test[i].variables[pos] for i, pos in rows]
    train = draw("train", train_problems, 0)
    t = hidden(train)
    train_rows = [(i, pos) for i, p in enumerate(train) for pos in range(1, len(p.tokens))]
    return {
        "info": info,
        "task": task,
        "x": np.stack([h[i, pos] for i, pos in rows]),
        "cells": cells,
        "groups": np.array([i for i, _ in rows]),
        "train_x": np.stack([t[i, pos] for i, pos in train_rows]),
        "train_defined": np.array([bool(train[i].variables[pos]) for i, pos in train_rows]),
        "train_cells": [train[i].variables[pos] for i, pos in train_rows],
    }


def train_sae(config: dict[str, Any], x: Any) -> tuple[Any, Any, dict[str, Any]]:
    """One SAE of ``config`` trained on the float32 rows ``x`` by the project's trainer; the SAE
    folded to raw inputs, the trainer and the seconds it took."""
    import torch

    from scircuits.platform.config import TrainConfig
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.training import default_lr, train_in_memory

    variant = get_plugins().saes.get(config["variant"])
    d_in = x.shape[1]
    d_sae = config["expansion"] * d_in
    batch = TrainConfig().batch_size
    steps = max(1, config["tokens"] // batch)
    started, cpu = time.monotonic(), time.process_time()
    torch.manual_seed(config["seed"])
    sae = variant.build(d_in, d_sae, config["hparams"])
    lr = config["lr"] if config["lr"] is not None else default_lr(d_sae, batch)
    trainer = train_in_memory(sae, x, lr=lr, batch_size=batch, steps=steps, order_seed=config["seed"] + 1)
    timing = {
        "lr_used": lr,
        "lr_rule": config["lr"] is None,
        "steps": steps,
        "seconds": time.monotonic() - started,
        "cpu_seconds": time.process_time() - cpu,
    }
    return trainer.folded_copy(), trainer, timing


def search(args: Any) -> None:
    import numpy as np
    import torch

    import scircuits

    torch.set_num_threads(1)
    model_dir = Path(args.model_dir).resolve()
    started = time.monotonic()
    data = trace(model_dir, args.layer, args.problems, args.seed, args.train_problems)
    labels = scircuits.variable_labels(data["cells"], exclude=data["task"].index_keys)
    values = [lab for lab in labels if lab.name.split("=")[0] == args.variable]
    if not values:
        raise SystemExit(f"no label of {args.variable!r} at this site: {[lab.name for lab in labels]}")
    x, groups = data["x"], data["groups"]
    d = x.shape[1]
    probe = scircuits.probe_recovery(x, values, groups=groups, seed=0).by_label()
    raw = scircuits.feature_recovery(x, values, source="raw", signed=True).by_label()

    def random_floor(width: int, k: int) -> dict[str, float]:
        """Per value, the best unit over three random-decoder SAEs of that width and k."""
        best = {lab.name: 0.0 for lab in values}
        for s in (0, 1, 2):
            rec = scircuits.feature_recovery(
                scircuits.random_decoder_features(x, width, k, seed=s), values, source="random"
            ).by_label()
            for name in best:
                best[name] = max(best[name], rec[name].auroc)
        return best

    bench_floor = random_floor(4 * d, 16)
    floors: dict[tuple[int, int], dict[str, float]] = {}
    defined = np.array([args.variable in cell for cell in data["train_cells"]])
    mean, std = data["train_x"].mean(0), data["train_x"].std(0) + 1e-6
    report: dict[str, Any] = {
        "model": str(model_dir),
        "model_seed": data["info"]["seed"],
        "layer": args.layer,
        "variable": args.variable,
        "problems": args.problems,
        "problem_seed": args.seed,
        "train_problems": args.train_problems,
        "train_rows": {"all": len(data["train_x"]), "variable": int(defined.sum())},
        "tokens_scored": len(values[0].rows),
        "probe": {k: v.auroc for k, v in probe.items()},
        "raw": {k: v.auroc for k, v in raw.items()},
        "random_decoder": bench_floor,
        "bar": BAR,
        "rows": [],
    }
    out = Path(args.out)
    print(
        f"{model_dir.name} block {args.layer}, {args.variable}: {report['tokens_scored']} tokens; probe "
        + ", ".join(f"{k} {v:.3f}" for k, v in report["probe"].items())
        + "; raw "
        + ", ".join(f"{v:.3f}" for v in report["raw"].values())
        + "; random decoder (4x, k 16) "
        + ", ".join(f"{v:.3f}" for v in bench_floor.values())
    )
    configs = grid(args.grid)
    if args.only is not None:
        configs = [configs[i] for i in args.only]
    if args.init_seeds is not None:
        configs = [{**c, "seed": seed} for c in configs for seed in args.init_seeds]
    for config in configs:
        rows = data["train_x"] if config["rows"] == "all" else data["train_x"][defined]
        if config["inputs"] == "standardised":
            rows, scored = (rows - mean) / std, (x - mean) / std
        else:
            scored = x
        sae, trainer, timing = train_sae(config, torch.tensor(rows, dtype=torch.float32))
        with torch.no_grad():
            codes = sae.encode(torch.tensor(scored, dtype=torch.float32)).numpy().astype(np.float64)
        metrics = trainer.evaluate(iter(torch.tensor(scored, dtype=torch.float32).split(4096)), len(scored))
        rec = scircuits.feature_recovery(codes, values, source="sae").by_label()
        code_probe = scircuits.probe_recovery(codes, values, groups=groups, seed=0).by_label()
        k = config["hparams"].get("k", max(1, round(float((codes > 0).sum(1).mean()))))
        width = codes.shape[1]
        if (width, k) not in floors:
            floors[(width, k)] = random_floor(width, k)
        same_size = floors[(width, k)]
        row = {
            **config,
            **timing,
            "lr": timing.pop("lr_used"),
            "fvu": metrics["fvu"],
            "l0": metrics["l0"],
            "dead_fraction": metrics["dead_fraction"],
            "sae": {name: r.auroc for name, r in rec.items()},
            "unit": {name: r.unit for name, r in rec.items()},
            "code_probe": {name: r.auroc for name, r in code_probe.items()},
            "random_same_size": same_size,
        }
        row["beats_floor"] = [
            name
            for name in row["sae"]
            if row["sae"][name] >= BAR and max(report["raw"][name], bench_floor[name], same_size[name]) < BAR
        ]
        report["rows"].append(row)
        out.write_text(json.dumps(report, indent=1, default=float))
        print(line(row), flush=True)
    report["seconds"] = time.monotonic() - started
    out.write_text(json.dumps(report, indent=1, default=float))
    print(f"written: {out} ({report['seconds']:.0f} s)")


def slash(by_value: dict[str, float], values: list[str]) -> str:
    return " / ".join(f"{by_value[v]:.3f}" for v in values)


def describe(row: dict[str, Any]) -> str:
    hp = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["hparams"].items())
    return (
        f"{row['variant']:9s} x{row['expansion']:<2d} {hp:22s} {row['tokens'] / 1e6:.1f}M "
        f"{row['inputs'][:3]} {row['rows'][:3]} lr {row['lr']:.1e} s{row['seed']}"
    )


def line(row: dict[str, Any]) -> str:
    values = sorted(row["sae"])
    return (
        f"{describe(row)}  sae {slash(row['sae'], values)}"
        f"  random same size {slash(row['random_same_size'], values)}"
        f"  code probe {slash(row['code_probe'], values)}"
        f"  FVU {row['fvu']:.4f} L0 {row['l0']:.1f} dead {row['dead_fraction']:.2f}"
        f"  {row['cpu_seconds']:.0f} CPU s"
        + (f"  BEATS THE FLOOR on {row['beats_floor']}" if row["beats_floor"] else "")
    )


def table(args: Any) -> None:
    best: list[tuple[float, str]] = []
    merged: dict[tuple[str, int, str], dict[str, Any]] = {}  # a search split over several files
    for path in args.files:
        report = json.loads(Path(path).read_text())
        key = (report["model"], report["layer"], report["variable"])
        if key in merged:
            merged[key]["rows"].extend(report["rows"])
        else:
            merged[key] = report
    for report in merged.values():
        values = sorted(report["probe"])
        print(
            f"\n{report['model']} (model seed {report['model_seed']}), block {report['layer']}, "
            f"{report['variable']} over {report['tokens_scored']} tokens of {report['problems']} test "
            f"problems: probe {slash(report['probe'], values)}, raw "
            f"{slash(report['raw'], values)}, random decoder (4x, k 16, best of "
            f"3 seeds) {slash(report['random_decoder'], values)}  [{', '.join(values)}]"
        )
        for row in report["rows"]:
            print("  " + line(row))
            top = max(row["sae"].values())
            best.append((top, f"model seed {report['model_seed']}: {describe(row)}"))
            if row["beats_floor"]:
                print(f"    -> beats the floor (>= {report['bar']}, floors < {report['bar']})")
    best.sort(reverse=True)
    print("\nBest single SAE features over every configuration and model:")
    for value, what in best[:5]:
        print(f"  {value:.3f}  {what}")
    winners = [w for v, w in best if v >= BAR]
    print(f"configurations with a feature >= {BAR}: {len(winners)} of {len(best)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    se = sub.add_parser("search", help="train the grid's SAEs on one model and score them")
    se.add_argument("--model-dir", required=True)
    se.add_argument("--layer", type=int, default=1)
    se.add_argument("--variable", default="carry_in")
    se.add_argument("--problems", type=int, default=600, help="test-split problems scored")
    se.add_argument("--seed", type=int, default=1, help="seed of the scored problems")
    se.add_argument("--train-problems", type=int, default=4000, help="train-split problems traced")
    se.add_argument("--grid", choices=("quick", "full"), default="full")
    se.add_argument("--only", type=lambda s: [int(i) for i in s.split(",")], help="grid rows, e.g. 0,3")
    se.add_argument(
        "--init-seeds",
        type=lambda s: [int(i) for i in s.split(",")],
        help="run each selected configuration once per SAE init seed, e.g. 1,2 (default: the grid's own)",
    )
    se.add_argument("--out", default="synth_sae_search.json")
    tb = sub.add_parser("table", help="the table from search JSON files")
    tb.add_argument("files", nargs="+")
    args = parser.parse_args()
    {"search": search, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
