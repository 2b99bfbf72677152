"""Where the ablate stage's time goes, and what the default settings cost before and after.

    python bench/ablate_time.py RUN_DIR [--limit 160] [--benchmark arithmetic --data FILE ...]

RUN_DIR is a finished `scircuits run` (its SAE is used). The script prepares the study as the
stage does (selection / evaluation split, lower blocks and SAE once), then times, on the
evaluation examples, each kind of condition the analyses run: the unedited splice, top-k sweeps,
matched control sets, single-feature (exact) ablations and the mean-ablation companion, each with
the upper blocks run on every sequence (eager, as before) and only on the sequences the edit
changes (now). It prints a table of seconds per condition and the share of sequences skipped,
then the stage's projected condition time for the old default (R = 80 control sets per k, eager)
and the new one (R = 20, a mean-ablation sweep, skipping): the projection multiplies the measured
per-condition times by the number of conditions each setting runs, and says so.
Not a test: figures depend on whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def timed(run, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        run()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--limit", type=int, default=160)
    parser.add_argument("--benchmark", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--samples", type=int, default=4, help="conditions timed per kind and path")
    args = parser.parse_args()

    from scircuits.platform.causal.runner import prepare_study
    from scircuits.platform.causal.stage import load_inputs
    from scircuits.platform.config import AblateConfig
    from scircuits.platform.manager.plugin_set import get_plugins

    plugins = get_plugins()
    pipeline = json.loads((args.run_dir / "pipeline.json").read_text())
    benchmark = args.benchmark or pipeline.get("config", {}).get("benchmark")
    options = {"data": args.data} if args.data else {}
    config = AblateConfig(
        sae=str(args.run_dir / "sae"),
        limit=args.limit,
        progress=False,
        out="unused",
        **({"benchmark": benchmark} if benchmark else {}),
        benchmark_options=options,
    ).with_plugin_defaults(plugins)
    started = time.perf_counter()
    inputs = load_inputs(config, plugins, None)
    loaded_s = time.perf_counter() - started
    started = time.perf_counter()
    context = prepare_study(
        config, inputs.loaded, inputs.sae, inputs.examples, inputs.layer, plugins, inputs.sae_info
    )
    prepare_s = time.perf_counter() - started
    study = context.study
    context.run_condition("splice")  # fills the splice's per-sequence scores
    splice_s = timed(lambda: context.run_condition("splice"))
    ranked = [int(i) for i in np.argsort(-context.mean_activation)]  # any fixed order will do
    matched = context.matched_controls(ranked[:5], args.samples)
    kinds = {
        "top-k sweep (k = 5)": [ranked[:5]] * args.samples,
        "matched control set (k = 5)": matched.ids,
        "single feature (exact)": [[f] for f in ranked[10 : 10 + args.samples]],
    }
    rows = []
    per_condition: dict[str, dict[str, float]] = {}
    for kind, sets in kinds.items():
        seconds = {}
        for path, skip in (("eager", False), ("skip unchanged", True)):
            study.skip_unchanged = skip
            run0, skipped0 = study.sequences_run, study.sequences_skipped
            seconds[path] = timed(
                lambda sets=sets: [
                    context.run_condition("splice", context.ablate_edit(s, tag=1)) for s in sets
                ]
            ) / len(sets)
            if skip:
                ran, skipped = study.sequences_run - run0, study.sequences_skipped - skipped0
                seconds["skipped share"] = skipped / max(ran + skipped, 1)
        per_condition[kind] = seconds
        rows.append((kind, seconds["eager"], seconds["skip unchanged"], seconds["skipped share"]))
    study.skip_unchanged = True
    mean_s = timed(
        lambda: context.run_condition("splice", context.ablate_edit(ranked[:5], tag=1, ablation="mean"))
    )

    print(
        f"model load {loaded_s:.1f} s; lower blocks + SAE on {context.n_examples} examples {prepare_s:.1f} s"
    )
    print(f"evaluation examples {context.n_evaluation}; unedited splice pass {splice_s:.2f} s\n")
    print(f"{'condition':32} {'eager s':>9} {'skip s':>9} {'skipped':>9}")
    for kind, eager, skip, share in rows:
        print(f"{kind:32} {eager:9.2f} {skip:9.2f} {share:9.1%}")
    print(f"{'mean-ablation companion (k = 5)':32} {'':>9} {mean_s:9.2f}")

    top_k = [1, 5, 20, 50]
    exact, faithfulness, baseline = 50, 6 + 2, 4

    def projected(draws: int, path: str, companions: int) -> float:
        c = per_condition
        return (
            baseline * splice_s
            + len(top_k) * c["top-k sweep (k = 5)"][path]
            + len(top_k) * draws * c["matched control set (k = 5)"][path]
            + exact * c["single feature (exact)"][path]
            + (faithfulness + len(top_k) * companions) * mean_s
        )

    before = projected(80, "eager", 0)
    after = projected(20, "skip unchanged", 1)
    print(
        "\nprojected condition time of the ablate stage (measured seconds per condition x conditions; "
        "attribution and the nnsight check not included):"
    )
    print(f"  before: R = 80 control sets per k, every sequence run      {before:7.0f} s")
    print(f"  after:  R = 20, mean-ablation sweep, unchanged skipped     {after:7.0f} s")


if __name__ == "__main__":
    main()
