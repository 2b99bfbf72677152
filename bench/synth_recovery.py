"""Score the whole pipeline against known variables on trained synth models (issue 12's table).

    python bench/synth_recovery.py family --task addition --seeds 0,1,2 --sizes 2x128,3x128
    python bench/synth_recovery.py recover --model-dir DIR --sae topk --sae relu ... [-- RUN OPTIONS]
    python bench/synth_recovery.py table addition.json logic.json

``recover``: for each SAE variant, ``scircuits run`` at its defaults on the trained model (trace ->
SAE -> rank -> ablate), whose ``ground-truth`` analysis scores feature recovery (SAE feature, probe
ceiling, best raw dimension, random-decoder SAE), causal recovery (the study's ranking against the
features aligned with the known variables) and specificity (with a null edit) on the run's
evaluation examples; then a reduced run of an untrained model of the same architecture
(``synth train --steps 0``) for the floor: its SAE's feature recovery. Prints a table per variant
and writes everything to --out (JSON). ``table`` prints one row per (task, variant).
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
    model_dir: Path, task: str, size: int, layer: int, sae: str, out: Path, extra: list[str]
) -> tuple[Path, float]:
    output, wall = cli(
        "run",
        "--model", f"hf:{model_dir}",
        "--benchmark", f"synth-{task}",
        "--option", f"size={size}",
        "--layer", str(layer),
        "--sae", sae,
        "--no-progress",
        "--out", str(out),
        *extra,
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
            "--steps", "0", "--eval-examples", "100", "--out", str(folder), "--force",
        )  # fmt: skip
    return folder


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def summarise(results: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """The ground-truth scores of a run, with the untrained model's SAE recovery as the floor."""
    truth = results["ground_truth"]
    floor_truth = floor["ground_truth"]
    recovery = dict(truth["feature_recovery"])
    recovery["untrained-model"] = floor_truth["feature_recovery"]["sae"]
    return {
        "recovery": recovery,
        "causal": truth["causal_recovery"],
        "causal_note": truth["causal_recovery_note"],
        "specificity": truth["specificity"],
        "null_edit": truth["null_edit"],
        "labelled_tokens": truth["labelled_tokens"],
        "pipeline": {
            "accuracy_clean": results["baseline"]["accuracy"],
            "splice_max_abs_logit_diff": results["splice"]["max_abs_logit_diff"],
            "fvu": results["sae_metrics_eval"]["fvu"],
            "l0": results["sae_metrics_eval"].get("l0"),
            "sweeps": [
                {k: s.get(k) for k in SWEEP_KEYS} | {"control": (s.get("control") or {}).get("logprob_delta")}
                for s in results["sweeps"]
            ],
        },
        "floor_pipeline": {
            "accuracy_clean": floor["baseline"]["accuracy"],
            "fvu": floor["sae_metrics_eval"]["fvu"],
        },
    }


SWEEP_KEYS = ("k", "logprob_delta", "logprob_ci", "accuracy_delta")
# only its SAE's recovery is read; these come last, so they win over the same options in `extra`
FLOOR_RUN = ["--top-k", "1,5", "--random-controls", "2", "--exact-top", "0"]


def recover(args: Any) -> None:
    model_dir = Path(args.model_dir).resolve()
    info = json.loads((model_dir / "synth.json").read_text())
    task, size = info["task"], info["size"]
    # (layers - 1) // 2: never the last block, whose output at a non-answer position reaches no answer
    layer = args.layer if args.layer is not None else (info["settings"]["layers"] - 1) // 2
    untrained = ensure_untrained(model_dir, info)
    out_runs = Path(args.runs).resolve()
    extra = ["--limit", str(args.limit), *args.extra]
    report: dict[str, Any] = {
        "model": str(model_dir), "model_info": info, "layer": layer, "run_options": extra, "variants": {},
    }  # fmt: skip
    for variant in args.sae:
        run_dir, wall = run_pipeline(model_dir, task, size, layer, variant, out_runs / variant, extra)
        floor_dir, floor_wall = run_pipeline(
            untrained, task, size, layer, variant, out_runs / f"{variant}-floor",
            ["--limit", str(args.limit), *args.extra, *FLOOR_RUN],  # same SAE settings
        )  # fmt: skip
        results = json.loads((run_dir / "causal" / "results.json").read_text())
        floor = json.loads((floor_dir / "causal" / "results.json").read_text())
        scored = summarise(results, floor)
        scored["wall_s"] = {"pipeline": wall, "pipeline_untrained": floor_wall}
        scored["run_dir"] = str(run_dir)
        report["variants"][variant] = scored
        print_variant(task, variant, scored)
        Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    print(f"written: {args.out}")


SOURCES = ("sae", "probe", "raw", "random-decoder", "untrained-model")


def print_variant(task: str, variant: str, s: dict) -> None:
    rec = s["recovery"]
    print(f"\n## {task}, SAE {variant} (pipeline {s['wall_s']['pipeline']:.0f} s, untrained-model run "
          f"{s['wall_s']['pipeline_untrained']:.0f} s; {s['labelled_tokens']} labelled tokens)")  # fmt: skip
    print("| source | share AUROC>=0.9 | mean best AUROC |")
    print("|---|---|---|")
    for name in SOURCES:
        print(f"| {name} | {fmt(rec[name]['share_recovered'])} | {fmt(rec[name]['mean_auroc'])} |")
    print("| variable | SAE feature | SAE AUROC | SAE F1 | probe | raw dim | random-dec | untrained |")
    print("|---|---|---|---|---|---|---|---|")
    tables = {name: {r["label"]: r for r in rec[name]["labels"]} for name in SOURCES}
    for label, r in tables["sae"].items():
        cells = [fmt(tables[n].get(label, {}).get("auroc")) for n in SOURCES[1:]]
        probe = tables["probe"].get(label, {}).get("auroc") or 0.0
        flag = " (missed: probe has it)" if r["auroc"] < 0.9 <= probe else ""
        print(f"| {label}{flag} | {r['unit']} | {fmt(r['auroc'])} | {fmt(r['f1'])} | {' | '.join(cells)} |")
    for c in s["causal"]:
        print(
            f"causal set at AUROC>={c['min_auroc']} ({len(c['causal_set'])} features): "
            f"P@k {c['precision_at_k']} R@k {c['recall_at_k']} ranking AUROC {fmt(c['auroc'])}"
        )
    if not s["causal"]:
        print(f"causal recovery: {s['causal_note']}")
    for name in ("specificity", "null_edit"):
        sp = s[name]
        if sp is None:
            print(f"{name}: no feature for the edited variable")
            continue
        d, i = sp["dependent"], sp["independent"]
        print(
            f"{name} (features {sp['features']}, {sp['variable']}): Δlogprob dependent {d['mean']:+.3g} "
            f"[{d['low']:+.3g}, {d['high']:+.3g}] (n={d['n']}), independent {i['mean']:+.3g} "
            f"[{i['low']:+.3g}, {i['high']:+.3g}] (n={i['n']}); specific: {sp['specific']}"
        )
    p = s["pipeline"]
    print(f"pipeline: clean accuracy {fmt(p['accuracy_clean'])}, splice max |Δlogit| "
          f"{p['splice_max_abs_logit_diff']:.1e}, FVU {fmt(p['fvu'])}")  # fmt: skip


def interval(i: dict[str, Any]) -> str:
    return f"{i['mean']:+.3g} [{i['low']:+.2g}, {i['high']:+.2g}]"


def table(args: Any) -> None:
    """One row per (task, variant) from several `recover` JSON files: the README's acceptance table."""
    print(
        "| task | SAE | share ≥0.9: SAE / probe / raw / random-dec / untrained | mean best AUROC: SAE / "
        "probe / untrained | ranking AUROC (causal set ≥0.9; ≥0.75) | P@5 (≥0.75) | "
        "specificity Δlogprob: depends / not | wall s (run; untrained run) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in args.files:
        report = json.loads(Path(path).read_text())
        task = report["model_info"]["task"]
        for variant, s in report["variants"].items():
            rec = s["recovery"]
            shares = " / ".join(fmt(rec[n]["share_recovered"], 2) for n in SOURCES)
            means = " / ".join(fmt(rec[n]["mean_auroc"], 2) for n in ("sae", "probe", "untrained-model"))
            by_bar = {c["min_auroc"]: c for c in s["causal"]}
            ranking = "; ".join(fmt(by_bar.get(b, {}).get("auroc"), 2) for b in (0.9, 0.75))
            p5 = fmt(by_bar.get(0.75, {}).get("precision_at_k", {}).get("5"), 2)
            sp = s["specificity"]
            spec = "n/a" if sp is None else f"{interval(sp['dependent'])} / {interval(sp['independent'])}"
            wall = f"{s['wall_s']['pipeline']:.0f}; {s['wall_s']['pipeline_untrained']:.0f}"
            print(f"| {task} | {variant} | {shares} | {means} | {ranking} | {p5} | {spec} | {wall} |")


def family(args: Any) -> None:
    """Train seeds x sizes of one task with `scircuits synth train` (default folders)."""
    from scircuits.plugins.synth.models import default_folder

    for size in args.sizes.split(","):
        layers, d_model = size.split("x")
        for seed in args.seeds.split(","):
            _, wall = cli(
                "synth", "train", "--task", args.task, "--layers", layers, "--d-model", d_model,
                "--seed", seed, "--steps", str(args.steps), "--stop-at", str(args.stop_at), "--force",
            )  # fmt: skip
            folder = default_folder(args.task, int(layers), int(d_model), int(seed))
            info = json.loads((folder / "synth.json").read_text())
            print(
                f"{folder}: held-out {info['heldout_accuracy']:.4f} after {info['steps_done']} steps, "
                f"{info['train_cpu_s']:.0f} CPU s, {wall:.0f} s wall",
                flush=True,
            )


def models(args: Any) -> None:
    """The trained models in the cache folder (the family), one row each."""
    from scircuits.plugins.synth._internal import cache_root

    print(
        "| model | task (size) | parameters | held-out exact match | steps (of schedule) | CPU s | wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for info_file in sorted((cache_root() / "synth").glob("*/synth.json")):
        info = json.loads(info_file.read_text())
        if info["steps_done"] == 0:
            continue  # an untrained floor
        s = info["settings"]
        print(
            f"| {info_file.parent.name} | {info['task']} ({info['size']}) | {info['n_parameters']:,} | "
            f"{info['heldout_accuracy']:.4f} ({info['heldout_examples']}) | "
            f"{info['steps_done']} ({s['steps']}) | {info['train_cpu_s']:.0f} | {info['train_wall_s']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    fam = sub.add_parser("family", help="train several seeds and sizes")
    fam.add_argument("--task", required=True, choices=["addition", "logic"])
    fam.add_argument("--seeds", default="0,1,2")
    fam.add_argument("--sizes", default="2x128,3x128", help="LAYERSxD_MODEL,...")
    fam.add_argument("--steps", type=int, default=6000)
    fam.add_argument("--stop-at", type=float, default=0.995)
    rec = sub.add_parser("recover", help="pipeline + ground-truth scores on one trained model")
    rec.add_argument("--model-dir", required=True)
    rec.add_argument("--sae", action="append", default=None, help="SAE variant; repeatable (default: topk)")
    rec.add_argument("--layer", type=int)
    rec.add_argument("--limit", type=int, default=300, help="the pipeline's evaluation examples (scored)")
    rec.add_argument("--runs", default="runs/synth")
    rec.add_argument("--out", default="synth_recovery.json")
    rec.add_argument("extra", nargs="*", help="further `scircuits run` options, after --")
    sub.add_parser("models", help="the trained family in the cache, a row each")
    tab = sub.add_parser("table", help="the acceptance table from recover JSON files")
    tab.add_argument("files", nargs="+")
    args = parser.parse_args()
    if args.command == "family":
        family(args)
    elif args.command == "recover":
        args.sae = args.sae or ["topk"]
        recover(args)
    elif args.command == "models":
        models(args)
    elif args.command == "table":
        table(args)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
