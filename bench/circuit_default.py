"""The default circuit's time and memory (issue 23, "Speed and memory"; docs/circuits.md).

    python bench/circuit_default.py --sae SAE [--sae SAE ...] --out DIR [-- extra `scircuits circuit` flags]

Runs `scircuits circuit` with its defaults (SmolLM2, arithmetic, 160 examples split 80/80, the top 8
nodes of each site, curves at 8, 32, 128 and 512 nodes per site beside 2 random circuits each, 10 exact
checks, 1000 bootstrap replicates) over the given trained
SAEs, in a child process, and prints: the wall and CPU seconds of each phase (from results.json's
``phase_seconds``), the child's total wall and CPU seconds and peak RSS (``getrusage`` of the
children: the model lives only in the child), the nodes per site, the edges, faithfulness and
completeness with their intervals beside random circuits of the same size, and the exact checks'
rank correlations. The summary is also written to DIR/bench.json. Not a test: on a shared CPU the wall
time is mostly waiting; the CPU seconds are the figure to compare with the 10-minute target.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TARGET_SECONDS = 600
TARGET_RSS_GB = 4.0


def run_circuit(saes: list[str], out: Path, extra: list[str]) -> dict[str, float]:
    args = [sys.executable, "-m", "scircuits", "circuit", "--no-progress", "--out", str(out / "circuit")]
    for sae in saes:
        args += ["--sae", sae]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run([*args, *extra], check=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_rss_gb": round(after.ru_maxrss / 2**20, 2),  # kilobytes on Linux
    }


def fmt_ci(ci: list[float] | None) -> str:
    return "—" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def summarize(results: dict, cost: dict[str, float]) -> dict:
    per_site = Counter(n["site"] for n in results["nodes"])
    kinds = Counter((n["site"], n["kind"]) for n in results["nodes"])
    return {
        "cost": cost,
        "phases": results.get("phase_seconds", {}),
        "examples": {"selection": results["n_selection"], "evaluation": results["n_evaluation"]},
        "sites": [s["name"] for s in results["sites"]],
        "nodes_per_site": {
            s["name"]: {
                "features": kinds[(s["name"], "feature")],
                "error": kinds[(s["name"], "error")],
                "active_features": s["active_features"],
            }
            for s in results["sites"]
        },
        "nodes": sum(per_site.values()),
        "edges": len(results["edges"]),
        "edges_to_metric": sum(1 for e in results["edges"] if e["target"] == "metric"),
        "reference": results["reference"],
        "splice": results["splice"],
        "curves": results["curves"],
        "exact_nodes": results["exact_nodes"],
        "exact_edges": results["exact_edges"],
        "passes": results["passes"],
    }


def report(summary: dict) -> None:
    cost = summary["cost"]
    print(f"sites: {', '.join(summary['sites'])}; examples {summary['examples']}")
    print("phase          wall s    CPU s")
    for phase, t in summary["phases"].items():
        print(f"{phase:<12} {t['wall']:>8.1f} {t['cpu']:>8.1f}")
    print(
        f"child total: wall {cost['wall_s']} s, CPU {cost['cpu_s']} s, peak RSS {cost['peak_rss_gb']} GB "
        f"(targets: {TARGET_SECONDS} s, {TARGET_RSS_GB} GB)"
    )
    print(f"nodes {summary['nodes']} per site {summary['nodes_per_site']}")
    print(f"edges {summary['edges']} ({summary['edges_to_metric']} to the metric)")
    ref = summary["reference"]
    print(f"m(M) {ref.get('full')}\nm(empty) {ref.get('empty')}")
    print("size (per site)  faithfulness [CI]     random [CI]          completeness [CI]       random [CI]")
    for p in summary["curves"]:
        per_site = "" if p.get("nodes_per_site") is None else f"({p['nodes_per_site']})"
        print(
            f"{p['size']:>4} {per_site:<6}  {num(p['faithfulness'])} {fmt_ci(p['faithfulness_ci']):<16} "
            f"{num(p['random_faithfulness'])} {fmt_ci(p['random_faithfulness_ci']):<16} "
            f"{num(p['completeness'])} {fmt_ci(p['completeness_ci']):<16} "
            f"{num(p['random_completeness'])} {fmt_ci(p['random_completeness_ci'])}"
        )
    for what in ("exact_nodes", "exact_edges"):
        a = summary[what]
        print(f"{what}: n {a['n']}, Spearman {num(a['spearman'])} {fmt_ci(a['spearman_ci'])}, "
              f"opposite sign {a['opposite_sign']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sae", action="append", required=True, help="a trained SAE (once per site)")
    parser.add_argument("--out", required=True, help="folder for DIR/circuit and DIR/bench.json")
    parser.add_argument("extra", nargs="*", help="more `scircuits circuit` flags, after --")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cost = run_circuit(args.sae, out, args.extra)
    results = json.loads((out / "circuit" / "results.json").read_text())
    summary = summarize(results, cost)
    (out / "bench.json").write_text(json.dumps(summary, indent=1))
    report(summary)


if __name__ == "__main__":
    main()
