"""The ablate stage's conditions eager (one forward per batch and condition) and stacked (several
conditions per forward, ``StudyContext.run_conditions``), timed side by side in one run.

    python bench/ablate_batching.py RUN_DIR [--limit 160] [--controls 20] [--exact 10] [--fuse 4096,16384]
    python bench/ablate_batching.py RUN_DIR --fuse none --batch-size 8     # eager only, other batches

RUN_DIR is a finished `scircuits run` (its SAE and results.json are used: its ranked features and
its k = 5 control sets, when it has them). The script prepares the study as the stage does, scores
the unedited splice once, then runs the same conditions each way: ``--controls`` control-sized
sets (k = 5) and ``--exact`` single features, as the sweeps and the exact analysis run them; eager
(``none``) and stacked into forwards of up to each ``--fuse`` size in padded tokens (default: the
stage's ``FUSE_TOKENS``). It prints wall and CPU seconds per path and condition, the speed-up over
eager, and the largest difference of any per-example score from the eager path (the reference).
Not a test: figures depend on whatever else runs on the machine (report ``uptime`` beside them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--limit", type=int, default=160)
    parser.add_argument("--controls", type=int, default=20)
    parser.add_argument("--exact", type=int, default=10)
    parser.add_argument("--fuse", default=None, help="stacked sizes in padded tokens, e.g. 4096,16384; none")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="sequences per batch (default: the run's)"
    )
    args = parser.parse_args()

    from scircuits.platform.causal.runner import prepare_study
    from scircuits.platform.causal.stage import load_inputs
    from scircuits.platform.config import AblateConfig
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.model import splice

    plugins = get_plugins()
    stored = json.loads((args.run_dir / "causal" / "results.json").read_text())
    settings = {**stored["config"], "limit": args.limit, "out": "unused", "progress": False}
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    config = AblateConfig(**settings).with_plugin_defaults(plugins)
    inputs = load_inputs(config, plugins, None)
    context = prepare_study(
        config, inputs.loaded, inputs.sae, inputs.examples, inputs.layer, plugins, inputs.sae_info
    )
    ranked = [int(i) for i in stored["rank"]["top"]]
    k5 = next((s for s in stored.get("sweeps") or [] if s["k"] == 5 and s.get("control_sets")), None)
    controls = (
        k5["control_sets"]["features"] if k5 else [ranked[100 + 5 * r : 105 + 5 * r] for r in range(20)]
    )
    controls = (controls * (args.controls // max(len(controls), 1) + 1))[: args.controls]
    sets = [list(c) for c in controls] + [[f] for f in ranked[: args.exact]]
    tags = [10_000 * (r + 1) + 5 for r in range(len(controls))] + [-(f + 1) for f in ranked[: args.exact]]
    context.run_condition("splice")  # the reference every edited condition reads

    def edits() -> list:
        return [context.ablate_edit(s, tag=t) for s, t in zip(sets, tags, strict=True)]

    sizes = [int(t) for t in (args.fuse or str(splice.FUSE_TOKENS)).split(",") if t and t != "none"]
    paths: dict[str, int | None] = {"eager": None, **{f"stacked {size}": size for size in sizes}}
    timings, scores = {}, {}
    for path, size in paths.items():
        context.study.split.fuse_tokens = size
        wall, cpu = time.perf_counter(), time.process_time()
        if size is None:
            scores[path] = [context.run_condition("splice", e) for e in edits()]
        else:
            scores[path] = context.run_conditions(edits())
        timings[path] = (time.perf_counter() - wall, time.process_time() - cpu)
    n = len(sets)
    print(
        f"{n} conditions ({len(controls)} control sets of k = 5, {args.exact} single features) on "
        f"{context.n_evaluation} evaluation examples; stacked: forwards of up to the size in padded tokens"
    )
    print(
        f"{'path':14} {'wall s':>9} {'CPU s':>9} {'wall s/cond':>12} {'CPU s/cond':>11} "
        f"{'speed-up':>9} {'max |Δ|':>9}"
    )
    ew, _ = timings["eager"]
    for path, (wall, cpu) in timings.items():
        worst = max(
            float(np.abs(a.logprob - b.logprob).max())
            for a, b in zip(scores["eager"], scores[path], strict=True)
        )
        flips = sum(
            int((a.correct != b.correct).sum()) for a, b in zip(scores["eager"], scores[path], strict=True)
        )
        print(
            f"{path:14} {wall:9.1f} {cpu:9.1f} {wall / n:12.2f} {cpu / n:11.2f} {ew / wall:8.2f}x "
            f"{worst:9.1e}" + (f" ({flips} correct flags differ)" if flips else "")
        )


if __name__ == "__main__":
    main()
