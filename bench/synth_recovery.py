"""Score the whole pipeline against known variables on a trained synth model (issue 12's table).

    python bench/synth_recovery.py --task addition --model-dir DIR [--sae topk --sae relu ...]
    python bench/synth_recovery.py family --task addition --seeds 0,1,2 --sizes 1x64,2x128

For each SAE variant: `scircuits run` on the trained model (trace -> SAE -> rank -> ablate), and
the same on an untrained model of the same architecture (``synth train --steps 0``, the floor).
Then, on fresh test problems, with the ground truth of the benchmark's ``meta``:

- feature recovery: per variable (``key=value``), the best single SAE feature's AUROC / F1, and the
  share at AUROC >= 0.9; beside it the probe on the raw activations (ceiling), the best raw
  dimension, a random-decoder SAE of the same width and k, and the untrained model's SAE (floor);
- causal recovery: the causal set is the features aligned (AUROC >= 0.9) with a variable; the
  pipeline's ranking (its results.json top list) and a full gradient x activation attribution
  ranking are scored by precision / recall at k and AUROC;
- specificity: the feature best aligned with ``carry_in=1`` (addition) or with ``value=0/1``
  (logic) is zero-ablated at one column's / step's position only; the change of the answer's
  log-prob on problems that use that carry (read that step) against those that do not, with
  bootstrap intervals; a null edit beside it.

Prints one table and writes everything to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli(*args: str) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "scircuits", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode:
        raise SystemExit(f"scircuits {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr, time.perf_counter() - start


def run_pipeline(
    model_dir: Path, task: str, size: int, layer: int, sae: str, out: Path, args: Any
) -> tuple[Path, float]:
    output, wall = cli(
        "run",
        "--model", f"hf:{model_dir}",
        "--benchmark", f"synth-{task}",
        "--option", f"size={size}",
        "--layer", str(layer),
        "--sae", sae,
        "--limit", str(args.limit),
        "--collect-limit", str(args.collect_limit),
        "--train-tokens", str(args.train_tokens),
        "--train-batch-size", "1024",
        "--top-k", "1,5,20",
        "--random-controls", "2",
        "--exact-top", "5",
        "--no-progress",
        "--out", str(out),
    )  # fmt: skip
    match = re.search(r"run directory (\S+)", output)
    if not match:
        raise SystemExit(f"no run directory in the output of scircuits run:\n{output[-2000:]}")
    return Path(match.group(1)), wall


def ensure_untrained(model_dir: Path, info: dict[str, Any]) -> Path:
    folder = model_dir.parent / f"{model_dir.name}-untrained"
    if not (folder / "config.json").is_file():
        s = info["settings"]
        cli(
            "synth", "train", "--task", info["task"], "--size", str(info["size"]),
            "--layers", str(s["layers"]), "--d-model", str(s["d_model"]), "--seed", str(info["seed"]),
            "--steps", "0", "--eval-examples", "100", "--out", str(folder), "--overwrite",
        )  # fmt: skip
    return folder


def load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def encode_all(sae: Any, acts: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return sae.encode(torch.tensor(acts)).numpy()


def fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def specificity_rows(task: str, model: Any, tok: Any, examples: list, layer: int, sae: Any, recovery) -> dict:
    """Ablate the best-aligned feature(s) at one column/step at a time; effects by dependence."""
    from scircuits.plugins.synth.evaluation import answer_scores
    from scircuits.plugins.synth.scoring import specificity

    by_label = recovery.by_label()
    wanted = ["carry_in=1"] if task == "addition" else ["value=0", "value=1"]
    features = sorted({by_label[w].unit for w in wanted if w in by_label and by_label[w].unit >= 0})
    aurocs = {w: by_label[w].auroc for w in wanted if w in by_label}
    clean, _ = answer_scores(model, tok, examples)
    n_tokens = len(examples[0].meta["tokens"])
    key = "column" if task == "addition" else "step"
    indices = sorted({c[key] for c in examples[0].meta["variables"] if key in c})
    if task == "addition":
        indices = [i for i in indices if i >= 1]  # column 0 never receives a carry
    results = {}
    for name, feats in (("edit", features), ("null edit", [])):
        clean_all, edited_all, depends_all = [], [], []
        for index in indices:
            positions = np.zeros((len(examples), n_tokens), dtype=bool)
            depends = np.zeros(len(examples), dtype=bool)
            for e, example in enumerate(examples):
                for p, cell in enumerate(example.meta["variables"]):
                    if cell.get(key) == index and ("carry_in" in cell or "value" in cell):
                        positions[e, p] = True
                        if task == "addition":
                            depends[e] = bool(cell["carry_in"])
                if task == "logic":
                    depends[e] = example.meta["facts"]["query"] >= index
            edited, _ = answer_scores(
                model, tok, examples, layer=layer, sae=sae, features=feats, positions=positions
            )
            clean_all.append(clean), edited_all.append(edited), depends_all.append(depends)
        result = specificity(
            np.concatenate(clean_all), np.concatenate(edited_all), np.concatenate(depends_all)
        )
        results[name] = result.to_dict()
    return {"features": features, "feature_auroc": aurocs, **results}


def score_run(
    task: str, model_dir: Path, untrained_dir: Path, run_dir: Path, floor_run: Path, args: Any
) -> dict:
    import torch

    from scircuits.plugins.synth._internal import load_sae
    from scircuits.plugins.synth.benchmarks import SynthBenchmark
    from scircuits.plugins.synth.evaluation import attribution, trace
    from scircuits.plugins.synth.scoring import (
        aligned_features,
        feature_recovery,
        probe_recovery,
        random_decoder_features,
        ranking_recovery,
        variable_labels,
    )

    results = json.loads((run_dir / "causal" / "results.json").read_text())
    layer = int(results["layer"])
    info = json.loads((model_dir / "synth.json").read_text())
    bench = SynthBenchmark(task)
    examples = list(bench.examples(split="test", limit=args.examples, seed=1, options={"size": info["size"]}))
    model, tok = load(model_dir)
    sae, _ = load_sae(run_dir / "sae")
    traced = trace(model, tok, examples, layer)
    labels = variable_labels(traced.variables)
    feats = encode_all(sae, traced.acts)
    k = int(json.loads((run_dir / "sae" / "cfg.json").read_text()).get("k", 32))
    sae_rec = feature_recovery(feats, labels, source="sae")
    rows = {
        "sae": sae_rec,
        "probe": probe_recovery(traced.acts, labels, groups=traced.example_index),
        "raw": feature_recovery(traced.acts, labels, source="raw", signed=True),
        "random-decoder": feature_recovery(
            random_decoder_features(traced.acts, feats.shape[1], k), labels, source="random-decoder"
        ),
    }
    floor_model, floor_tok = load(untrained_dir)
    floor_sae, _ = load_sae(floor_run / "sae")
    floor_traced = trace(floor_model, floor_tok, examples, layer)
    rows["untrained-model"] = feature_recovery(
        encode_all(floor_sae, floor_traced.acts), labels, source="untrained"
    )
    causal_set = aligned_features(sae_rec, [lab.name for lab in labels])
    attr = attribution(model, tok, examples, layer, sae)
    causal: dict[str, Any] = {"causal_set": sorted(causal_set)}
    if causal_set:
        causal["attribution"] = ranking_recovery(-attr, causal_set).to_dict()
        top = results["rank"]["top"]
        pipeline_scores = np.zeros(feats.shape[1])
        pipeline_scores[top] = np.arange(len(top), 0, -1)
        causal["pipeline_top"] = {
            "top": top,
            "precision_at_k": {
                k: float(np.isin(top[:k], list(causal_set)).mean()) for k in (1, 5) if k <= len(top)
            },
            "recall_at_k": {
                k: float(np.isin(top[:k], list(causal_set)).sum() / len(causal_set))
                for k in (1, 5)
                if k <= len(top)
            },
        }
    torch.set_grad_enabled(True)
    spec = specificity_rows(task, model, tok, examples, layer, sae, sae_rec)
    return {
        "recovery": {name: rec.to_dict() for name, rec in rows.items()},
        "causal": causal,
        "specificity": spec,
        "pipeline": {
            "accuracy_clean": results["baseline"]["accuracy"],
            "splice_max_abs_logit_diff": results["splice"]["max_abs_logit_diff"],
            "fvu": results["sae_metrics_eval"]["fvu"],
            "sweeps": [
                {k: s[k] for k in ("k", "logprob_delta", "logprob_ci", "accuracy_delta")}
                | {"control": s["control"]}
                for s in results["sweeps"]
            ],
        },
    }


def recover(args: Any) -> None:
    model_dir = Path(args.model_dir).resolve()
    info = json.loads((model_dir / "synth.json").read_text())
    task, size = info["task"], info["size"]
    # (layers - 1) // 2: never the last block, whose output at a non-answer position reaches no answer
    layer = args.layer if args.layer is not None else (info["settings"]["layers"] - 1) // 2
    untrained = ensure_untrained(model_dir, info)
    out_runs = Path(args.runs).resolve()
    report: dict[str, Any] = {"model": str(model_dir), "model_info": info, "layer": layer, "variants": {}}
    for variant in args.sae:
        run_dir, wall = run_pipeline(model_dir, task, size, layer, variant, out_runs / variant, args)
        floor_dir, floor_wall = run_pipeline(
            untrained, task, size, layer, variant, out_runs / f"{variant}-floor", args
        )
        start = time.perf_counter()
        scored = score_run(task, model_dir, untrained, run_dir, floor_dir, args)
        scored["wall_s"] = {
            "pipeline": wall,
            "pipeline_untrained": floor_wall,
            "scoring": time.perf_counter() - start,
        }
        scored["run_dir"] = str(run_dir)
        report["variants"][variant] = scored
        print_variant(task, variant, scored)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    print(f"written: {args.out}")


def print_variant(task: str, variant: str, s: dict) -> None:
    rec = s["recovery"]
    print(f"\n## {task}, SAE {variant} (pipeline {s['wall_s']['pipeline']:.0f} s, floor run "
          f"{s['wall_s']['pipeline_untrained']:.0f} s, scoring {s['wall_s']['scoring']:.0f} s)")  # fmt: skip
    print("| source | share AUROC>=0.9 | mean best AUROC |")
    print("|---|---|---|")
    for name in ("sae", "probe", "raw", "random-decoder", "untrained-model"):
        print(f"| {name} | {fmt(rec[name]['share_recovered'])} | {fmt(rec[name]['mean_auroc'])} |")
    print(
        "| variable | SAE feature | SAE AUROC | SAE F1 | probe AUROC | raw AUROC | random-dec | untrained |"
    )
    print("|---|---|---|---|---|---|---|---|")
    tables = {name: {r["label"]: r for r in rec[name]["labels"]} for name in rec}
    for label, r in tables["sae"].items():
        cells = [
            fmt(tables[n].get(label, {}).get("auroc", float("nan")))
            for n in ("probe", "raw", "random-decoder")
        ]
        floor = fmt(tables["untrained-model"].get(label, {}).get("auroc", float("nan")))
        flag = (
            " (missed: probe has it)"
            if r["auroc"] < 0.9 <= tables["probe"].get(label, {}).get("auroc", 0)
            else ""
        )
        head = f"| {label}{flag} | {r['unit']} | {fmt(r['auroc'])} | {fmt(r['f1'])}"
        print(f"{head} | {' | '.join(cells)} | {floor} |")
    c = s["causal"]
    print(f"causal set ({len(c['causal_set'])} features): {c['causal_set'][:20]}")
    if "attribution" in c:
        a = c["attribution"]
        print(
            f"attribution ranking: P@k {a['precision_at_k']} R@k {a['recall_at_k']} AUROC {fmt(a['auroc'])}"
        )
        print(f"pipeline top {c['pipeline_top']['top']}: P@k {c['pipeline_top']['precision_at_k']} "
              f"R@k {c['pipeline_top']['recall_at_k']}")  # fmt: skip
    sp = s["specificity"]
    for name in ("edit", "null edit"):
        d, i = sp[name]["dependent"], sp[name]["independent"]
        edited = sp["features"] if name == "edit" else []
        print(
            f"specificity ({name}, features {edited}): Δlogprob dependent {d['mean']:+.3f} "
            f"[{d['low']:+.3f}, {d['high']:+.3f}] (n={d['n']}), independent {i['mean']:+.3f} "
            f"[{i['low']:+.3f}, {i['high']:+.3f}] (n={i['n']}); specific: {sp[name]['specific']}"
        )


def family(args: Any) -> None:
    """Train seeds x sizes of one task with `scircuits synth train` (default folders)."""
    for size in args.sizes.split(","):
        layers, d_model = size.split("x")
        for seed in args.seeds.split(","):
            output, wall = cli(
                "synth", "train", "--task", args.task, "--layers", layers, "--d-model", d_model,
                "--seed", seed, "--steps", str(args.steps), "--stop-at", str(args.stop_at), "--overwrite",
            )  # fmt: skip
            print(output.strip().splitlines()[-1], f"[{wall:.0f} s wall]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    fam = sub.add_parser("family", help="train several seeds and sizes")
    fam.add_argument("--task", required=True, choices=["addition", "logic"])
    fam.add_argument("--seeds", default="0,1,2")
    fam.add_argument("--sizes", default="1x64,2x128", help="LAYERSxD_MODEL,...")
    fam.add_argument("--steps", type=int, default=3000)
    fam.add_argument("--stop-at", type=float, default=0.995)
    rec = sub.add_parser("recover", help="pipeline + scoring on one trained model")
    rec.add_argument("--model-dir", required=True)
    rec.add_argument("--sae", action="append", default=None, help="SAE variant; repeatable (default: topk)")
    rec.add_argument("--layer", type=int)
    rec.add_argument("--examples", type=int, default=500, help="fresh test problems scored")
    rec.add_argument("--limit", type=int, default=160, help="the pipeline's evaluation examples")
    rec.add_argument("--collect-limit", type=int, default=2000)
    rec.add_argument("--train-tokens", type=int, default=200_000)
    rec.add_argument("--runs", default="runs/synth")
    rec.add_argument("--out", default="synth_recovery.json")
    args = parser.parse_args()
    if args.command == "family":
        family(args)
    elif args.command == "recover":
        args.sae = args.sae or ["topk"]
        recover(args)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
