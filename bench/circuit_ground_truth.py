"""A circuit scored against a synth task's known mechanism, trained model beside untrained (issue 23
items 6 and 7; docs/ground_truth.md "Circuits against ground truth").

    python bench/circuit_ground_truth.py --model TRAINED --sae SAES --model UNTRAINED --sae SAES2 \
        --out DIR [--limit 80 --nodes 30 --metric counterfactual --label-examples 600]

Each ``--model`` (a `scircuits synth train` folder; the untrained one: the same architecture at its
random initialisation, `--untrained-from` makes it) is paired with the ``--sae`` at the same index (a
folder of per-site checkpoints of its block outputs). For each: `scircuits circuit` on the synth
benchmark the model was trained on, with ``--positions kept``, ``--check-split train`` and
``--check-seed seed+1`` (item 7), into DIR/<name>/circuit; then ``scircuits.circuit_ground_truth`` on
``--label-examples`` examples. Prints one table (alignment precision and recall with intervals,
routes, faithfulness on held-out, other-split and other-seed examples) and writes DIR/bench.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import scircuits


def untrained_copy(source: Path, out: Path, seed: int) -> Path:
    """``source`` (a synth model folder) with its weights replaced by a seeded random initialisation."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    if out.exists():
        return out
    shutil.copytree(source, out)
    torch.manual_seed(seed)
    LlamaForCausalLM(AutoConfig.from_pretrained(source)).save_pretrained(out)
    return out


def study(model: Path, sae: str, out: Path, args: argparse.Namespace) -> dict:
    info = json.loads((model / "synth.json").read_text())
    config = scircuits.CircuitConfig(
        model=f"hf:{model}",
        benchmark=f"synth-{info['task']}",
        benchmark_options={"size": info["size"]},
        sae=[sae],
        metric=args.metric,
        positions="kept",
        limit=args.limit,
        node_selection="global",
        nodes=args.nodes,
        sizes=[5, 10, 20],
        random_circuits=args.random_circuits,
        exact_top=args.exact_top,
        check_split="train",
        check_seed=args.seed + 1,
        seed=args.seed,
        bootstrap=args.bootstrap,
        progress=False,
        force=True,
        out=str(out / "circuit"),
    )
    started, cpu = time.monotonic(), time.process_time()
    results = scircuits.circuit(config)
    score = scircuits.circuit_ground_truth(
        out / "circuit", n_examples=args.label_examples, replicates=args.bootstrap
    )
    own = next(p for p in results.curves if p.size == len(results.nodes))
    return {
        "model": str(model),
        "heldout_accuracy": info.get("heldout_accuracy"),  # as synth.json records it
        "circuit": {
            "nodes": len(results.nodes),
            "edges": len(results.edges),
            "reference": results.reference,
            "faithfulness": [own.faithfulness, own.faithfulness_ci, own.random_faithfulness],
            "completeness": [own.completeness, own.completeness_ci, own.random_completeness],
            "other_split": _point(results.cross_split),
            "other_seed": _point(results.cross_seed),
        },
        "ground_truth": score.to_dict(),
        "wall_s": round(time.monotonic() - started, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }


def _point(check) -> list | None:
    if check is None:
        return None
    p = check.point
    return [p.faithfulness, p.faithfulness_ci, p.random_faithfulness]


def fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" + ("" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def table(rows: dict[str, dict]) -> str:
    names = list(rows)
    lines = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(title: str, cell) -> None:
        lines.append(f"| {title} | " + " | ".join(cell(rows[n]) for n in names) + " |")

    gt = lambda r: r["ground_truth"]  # noqa: E731
    row("feature nodes (error nodes)", lambda r: f"{gt(r)['n_feature_nodes']} ({gt(r)['n_error_nodes']})")
    row(
        "aligned features",
        lambda r: ", ".join(f"{n['node']}:{n['label']}" for n in gt(r)["nodes"] if n["aligned"]) or "none",
    )
    row(
        "best circuit feature per variable (AUROC)",
        lambda r: "; ".join(
            f"{key} {b['auroc']:.2f} ({b['node']})" for key, b in gt(r)["best_by_variable"].items()
        ),
    )
    row("precision", lambda r: fmt(gt(r)["precision"], gt(r)["precision_ci"]))
    row(
        "recall (of task labels)",
        lambda r: f"{fmt(gt(r)['recall'], gt(r)['recall_ci'])} of {len(gt(r)['labels'])}",
    )
    row(
        "recall (of labels the SAEs have)",
        lambda r: (
            f"{fmt(gt(r)['recall_recoverable'], gt(r)['recall_recoverable_ci'])} of "
            f"{len(gt(r)['recoverable'] or [])}"
        ),
    )
    for key in (
        "prompt_to_answer",
        "answer_to_answer",
        "into_aligned_prompt_to_answer",
        "aligned_effect_at_answer",
    ):
        row(key.replace("_", " "), lambda r, key=key: fmt((gt(r)["routes"].get(key) or {}).get("value")))
    for key, title in (
        ("faithfulness", "faithfulness held out (random)"),
        ("completeness", "completeness held out (random)"),
        ("other_split", "faithfulness, train split (random)"),
        ("other_seed", "faithfulness, seed + 1 (random)"),
    ):
        row(
            title,
            lambda r, key=key: (
                "—"
                if r["circuit"][key] is None
                else f"{fmt(r['circuit'][key][0], r['circuit'][key][1])} ({fmt(r['circuit'][key][2])})"
            ),
        )
    row(
        "m(M), m(∅)",
        lambda r: (
            f"{r['circuit']['reference']['full']['mean']:.2f}, "
            f"{r['circuit']['reference']['empty']['mean']:.2f}"
        ),
    )
    row("CPU s (wall s)", lambda r: f"{r['cpu_s']} ({r['wall_s']})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, type=Path)
    parser.add_argument("--sae", action="append", required=True)
    parser.add_argument(
        "--name", action="append", help="a column name per --model (default: trained/untrained)"
    )
    parser.add_argument("--untrained-from", type=Path, help="make --model's last entry from this model first")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--metric", choices=["counterfactual", "score"], default="counterfactual")
    parser.add_argument("--label-examples", type=int, default=600)
    parser.add_argument("--random-circuits", type=int, default=3)
    parser.add_argument("--exact-top", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.model) != len(args.sae):
        sys.exit("error: give one --sae per --model")
    if args.untrained_from:
        untrained_copy(args.untrained_from, args.model[-1], seed=args.seed)
    names = args.name or ["trained", "untrained"][: len(args.model)]
    rows = {}
    for name, model, sae in zip(names, args.model, args.sae, strict=True):
        rows[name] = study(model, sae, args.out / name, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(rows, indent=1, default=str))
    print(table(rows))


if __name__ == "__main__":
    main()
