"""The causal study in float32 and in bfloat16 (``--study-dtype``), side by side in one run.

    python bench/study_dtype.py RUN_DIR --out DIR [--reference RESULTS_JSON] [--dtypes float32,bfloat16]
        [--top-k 1,5 --random-controls 2 --exact-top 3 --faithfulness-n 1,5 ...] [--emulate]
    python bench/study_dtype.py RUN_DIR --compare FLOAT32_RESULTS BFLOAT16_RESULTS
    python bench/study_dtype.py RUN_DIR --out DIR --dtypes float32-eager,float32

``float32-eager`` is float32 with transformers' own blocks above the site, where the study would
run them fused (model/fused_blocks.py): the fused blocks' time and agreement against the eager ones.

RUN_DIR is a finished `scircuits run`: its causal study's settings (results.json's config) are used,
with its SAE and store, and any setting given here on top (a cut-down study). The model is loaded
once; the stage (`run_ablate`) runs once per dtype into DIR/<dtype>. It prints:

* per kind of condition (the progress status: clean, splice, top-k, controls, exact, ...) the
  conditions, wall and CPU seconds per condition in each dtype, side by side;
* the agreement table: every table value with an interval (Δlogprob, Δaccuracy of the top-k sweeps,
  their controls and the top-k minus control difference, the exact single-feature effects,
  faithfulness, the behaviour of the reconstruction, the clean accuracy), bfloat16 minus float32,
  against the float32 interval's half-width; every significance call (significant_*, the gate, the
  capability); and the values without an interval (CE losses, CE loss recovered, log-probs), by
  their absolute difference.
  ``--reference`` compares against a stored float32 results.json instead of (or beside) a float32 run.

``--margins`` (with bfloat16 in ``--dtypes``) also scores every bfloat16 job in float32 and prints, per
sequence, how far bfloat16 moves the decisive margin (the smallest, over the answer's tokens, of the
target logit minus the best other logit: the sequence is correct when it is above 0), how many
sequences change correctness, and the share within each margin of 0: the sequences a float32 recheck
of bfloat16's close calls would have to rerun. (The stage's times then include the float32 rerun.)

``--emulate`` runs bfloat16 where the CPU has no native bfloat16 (the stage refuses it there): torch
emulates the products, so the numbers are bfloat16's but the times are not (several times slower
than float32); the provenance records the hardware as emulated. Not a test: times depend on whatever
else runs on the machine (report CPU seconds beside wall).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

CUT_DOWN = {"top_k", "random_controls", "exact_top", "faithfulness_n", "limit", "bootstrap", "sweep_also"}


def parse_value(name: str, text: str) -> Any:
    if name in ("top_k", "faithfulness_n", "sweep_also"):
        items = [t for t in text.split(",") if t]
        return items if name == "sweep_also" else [int(t) for t in items]
    return int(text)


def interval_rows(a: Any, b: Any, path: str = "") -> list[tuple[str, float, float, float | None]]:
    """(path, float32 value, bfloat16 value, float32 interval half-width or None) for every number of
    the tables (walked in parallel), and (path, a, b, None) for every boolean call."""
    out: list[tuple[str, float, float, float | None]] = []
    if isinstance(a, dict) and isinstance(b, dict):
        intervals = {}
        for key, value in a.items():
            if key.endswith("_ci") or key == "ci":
                base = key[:-3] if key.endswith("_ci") else ""
                for name in (f"{base}_delta", base, "value", "mean") if base else ("value", "mean"):
                    if name in a:
                        intervals[name] = value
                        break
        if {"mean", "low", "high"} <= a.keys():
            intervals["mean"] = [a["low"], a["high"]]
        for key, value in a.items():
            if key not in b or key in SKIP:
                continue
            here = f"{path}.{key}" if path else key
            if isinstance(value, bool) and isinstance(b[key], bool):
                out.append((here, float(value), float(b[key]), None))
            elif isinstance(value, (int, float)) and isinstance(b[key], (int, float)):
                ci = intervals.get(key)
                half = None
                if isinstance(ci, list) and len(ci) == 2 and None not in ci:
                    half = (ci[1] - ci[0]) / 2
                out.append((here, float(value), float(b[key]), half))
            elif isinstance(value, (dict, list)):
                out += interval_rows(value, b[key], here)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if isinstance(x, (dict, list)):
                out += interval_rows(x, y, f"{path}[{i}]")
    return out


# not tables of condition results: settings, records of the run, descriptions of the features
SKIP = {
    "config",
    "provenance",
    "wall_seconds",
    "top_tokens",
    "promoted",
    "suppressed",
    "logit_effects",
    "control_sets",
    "draws",
    "control_effects",
    "statistics",
    "evaluation_split",
    "splice",
    "rank",
    "features_detail",
    "n_examples",
    "n_tokens",
    "sequences_run",
    "sequences_unchanged",
    "n_conditions",
    "k",
    "n",
    "id",
    "attribution",
    "mean_activation",
    "frequency",
    "level",
    "n_replicates",
    "low",
    "high",
}


def agreement(fp32: dict[str, Any], bf16: dict[str, Any], label: str) -> bool:
    """Print the agreement table; whether every interval value agrees and every call is the same."""
    rows = interval_rows(fp32, bf16)
    calls = [r for r in rows if isinstance(r[1], float) and r[0].rsplit(".", 1)[-1] in CALLS]
    with_ci = [r for r in rows if r[3] is not None]
    without = [r for r in rows if r[3] is None and r not in calls]
    print(
        f"\nagreement, the compared run vs {label}: "
        f"{len(with_ci)} values with an interval, {len(calls)} calls"
    )
    print(f"{'value':58} {'reference':>11} {'compared':>11} {'|diff|':>9} {'half-w':>9} {'ratio':>6}")
    worst = 0.0
    failed = []
    for path, a, b, half in with_ci:
        diff = abs(b - a)
        ratio = diff / half if half and half > 0 else (0.0 if diff == 0 else float("inf"))
        worst = max(worst, ratio)
        flag = "" if ratio <= 1 else "  OUTSIDE"
        if ratio > 1:
            failed.append(path)
        print(f"{path[:58]:58} {a:11.5f} {b:11.5f} {diff:9.2e} {half:9.2e} {ratio:6.2f}{flag}")
    changed = [(p, a, b) for p, a, b, _ in calls if a != b]
    print(f"\nlargest |diff| / half-width: {worst:.3f}; outside: {len(failed)} of {len(with_ci)}")
    print(f"significance and gate calls: {len(calls) - len(changed)} of {len(calls)} the same")
    for p, a, b in changed:
        print(f"  CHANGED {p}: {bool(a)} -> {bool(b)}")
    print("\nvalues without an interval (|diff|):")
    for path, a, b, _ in without:
        if path.rsplit(".", 1)[-1] in ("p_value", "p_adjusted", "p_holm", "p_normal") or "." not in path:
            continue
        print(f"  {path[:58]:58} {a:12.6g} {b:12.6g} {abs(b - a):9.2e}")
    return not failed and not changed


CALLS = {
    "significant",
    "significant_logprob",
    "significant_accuracy",
    "passed",
    "capable",
    "changes_behaviour",
}


class ConditionClock:
    """Wall and CPU seconds of every condition (``Study.run``), by its progress status."""

    def __init__(self) -> None:
        self.times: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def install(self) -> None:
        from scircuits.platform.causal.study import Study

        original = Study.run
        clock = self

        def run(study: Any, mode: str = "splice", *args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            out = original(study, mode, *args, **kwargs)
            status = kwargs.get("status") or mode
            clock.times[kind_of(status)].append((time.perf_counter() - wall, time.process_time() - cpu))
            return out

        Study.run = run  # type: ignore[method-assign]


class MarginProbe:
    """Every bfloat16 job (``SplitModel._score_one``, no CE) scored again in float32: per sequence
    (bfloat16 margin, float32 margin, bfloat16 correct, float32 correct, Δ log-prob)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, bool, bool, float]] = []

    @staticmethod
    def margins(logits: Any, batch: Any) -> Any:
        import torch

        logits = logits.float()
        target = logits.gather(1, batch.target_ids[:, None]).squeeze(1)
        others = logits.scatter(1, batch.target_ids[:, None], float("-inf"))
        margin = target - others.max(dim=1).values
        out = torch.full((batch.size,), float("inf"))
        return out.scatter_reduce(0, batch.pred_rows, margin, reduce="amin")

    def install(self) -> None:
        import torch

        from scircuits.platform.model.scoring import sequence_scores
        from scircuits.platform.model.splice import SplitModel

        original = SplitModel._score_one
        probe = self

        def score_one(split: Any, job: Any) -> Any:
            scores = original(split, job)
            if split.study_dtype is None or job.ce:
                return scores
            value = job.cache.site_output if job.value is None else job.value
            with torch.no_grad():
                low = split.upper(job.batch, job.cache, value, dtype=split.study_dtype)
                full = split.upper(job.batch, job.cache, value, dtype=None)
            full_lp, full_ok = sequence_scores(full, job.batch)
            low_m, full_m = probe.margins(low, job.batch), probe.margins(full, job.batch)
            for i in range(job.batch.size):
                probe.rows.append(
                    (
                        float(low_m[i]),
                        float(full_m[i]),
                        bool(scores.seq_correct[i]),
                        bool(full_ok[i]),
                        float(scores.seq_logprob[i] - full_lp[i]),
                    )
                )
            return scores

        SplitModel._score_one = score_one  # type: ignore[method-assign]

    def summary(self) -> None:
        import numpy as np

        rows = self.rows
        if not rows:
            print("\nmargins: no bfloat16 job was scored")
            return
        low = np.array([r[0] for r in rows])
        full = np.array([r[1] for r in rows])
        error = np.abs(low - full)[np.isfinite(low)]
        flips = np.array([r[2] != r[3] for r in rows])
        logprob = np.abs([r[4] for r in rows])
        print(
            f"\nmargins: {len(rows):,} sequences scored in both dtypes; correctness differs on "
            f"{int(flips.sum())} ({flips.mean():.1%})\n"
            f"|bfloat16 - float32| of the decisive margin: median {np.median(error):.3f}, "
            f"99% {np.quantile(error, 0.99):.3f}, max {error.max():.3f}; of the sequence log-prob: "
            f"median {np.median(logprob):.3f}, max {logprob.max():.3f}"
        )
        print(f"{'recheck |margin| <=':>20} {'share of sequences':>19} {'flips left outside':>19}")
        for tau in (0.25, 0.5, 1.0, 2.0):
            inside = np.abs(low) <= tau
            print(f"{tau:20.2f} {inside.mean():19.1%} {int((flips & ~inside).sum()):19d}")


def kind_of(status: str) -> str:
    """The kind of a condition from its progress status ("control k=5 3/20" -> "control")."""
    words = status.split()
    return " ".join(w for w in words if not any(c.isdigit() for c in w)) or status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--reference", type=Path, default=None, help="a stored float32 results.json")
    parser.add_argument("--emulate", action="store_true", help="bfloat16 on a CPU without it (numbers only)")
    parser.add_argument(
        "--study-tolerance", type=float, default=None, help="the bfloat16 fast path tolerance"
    )
    parser.add_argument(
        "--margins", action="store_true", help="score every bfloat16 job in float32 too: margins, flips"
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("FLOAT32_RESULTS", "BFLOAT16_RESULTS"),
        help="only print the agreement table of two results.json files (no study is run)",
    )
    for name in sorted(CUT_DOWN):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None)
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        print(f"agrees by the criterion: {agreement(a, b, str(args.compare[0]))}")
        return

    from scircuits.platform.causal.stage import run_ablate
    from scircuits.platform.common import device
    from scircuits.platform.config import AblateConfig
    from scircuits.platform.config.stages import SPLICE_TOLERANCE
    from scircuits.platform.manager.plugin_set import get_plugins

    stored = json.loads((args.run_dir / "causal" / "results.json").read_text())
    settings = {
        k: v
        for k, v in stored["config"].items()
        if k in AblateConfig.model_fields and k not in ("out", "study_dtype")
    }
    if settings.get("splice_tolerance") == SPLICE_TOLERANCE["float32"]:
        del settings["splice_tolerance"]  # the default, recorded: a given tolerance would hold for both
    settings.update(
        sae=str(args.run_dir / "sae"), store=str(args.run_dir / "activations.zarr"), progress=False
    )
    settings.update({k: parse_value(k, v) for k, v in vars(args).items() if k in CUT_DOWN and v is not None})
    if args.emulate:
        native = device.bf16_hardware

        def emulated(name: str) -> str:
            return native(name) or "emulated: no native bfloat16 on this device (times are not bfloat16's)"

        device.bf16_hardware = emulated  # type: ignore[assignment]
    if args.study_tolerance is not None:
        from scircuits.platform.config.stages import STUDY_TOLERANCE

        STUDY_TOLERANCE["bfloat16"] = args.study_tolerance
    plugins = get_plugins()
    clock = ConditionClock()
    clock.install()
    probe = MarginProbe() if args.margins else None
    if probe is not None:
        probe.install()
    loaded = None
    results: dict[str, dict[str, Any]] = {}
    totals: dict[str, tuple[float, float]] = {}
    times: dict[str, dict[str, list[tuple[float, float]]]] = {}
    from scircuits.platform.model.fused_blocks import FusedDecoderStack

    recognise = FusedDecoderStack.recognise
    for dtype in args.dtypes.split(","):
        study_dtype, _, blocks = dtype.partition("-")
        config = AblateConfig(**settings, study_dtype=study_dtype, out=str(args.out / dtype))
        if loaded is None:
            from scircuits.platform.causal.stage import load_inputs

            loaded = load_inputs(config.with_plugin_defaults(plugins), plugins).loaded
        # float32-eager: transformers' own blocks where the study would fuse them (model/fused_blocks.py)
        FusedDecoderStack.recognise = (  # type: ignore[method-assign]
            classmethod(lambda cls, base, blocks: None) if blocks == "eager" else recognise
        )
        clock.times.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        out = run_ablate(config, plugins, loaded=loaded)
        totals[dtype] = (time.perf_counter() - wall, time.process_time() - cpu)
        times[dtype] = {k: list(v) for k, v in clock.times.items()}
        results[dtype] = json.loads((Path(out) / "results.json").read_text())
        print(f"{dtype}: stage {totals[dtype][0]:.0f} s wall, {totals[dtype][1]:.0f} s CPU -> {out}")

    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    dtypes = list(times)
    header = "".join(f" {d + ' wall':>15} {d + ' cpu':>14}" for d in dtypes)
    print(f"\nseconds per condition (mean over the kind's conditions; n each)\n{'kind':28} {'n':>4}{header}")
    for kind in times[dtypes[0]]:
        cells = ""
        for d in dtypes:
            got = times[d].get(kind, [])
            if got:
                wall, cpu = (sum(t[i] for t in got) / len(got) for i in (0, 1))
                cells += f" {wall:15.2f} {cpu:14.2f}"
            else:
                cells += f" {'-':>15} {'-':>14}"
        print(f"{kind[:28]:28} {len(times[dtypes[0]][kind]):4}{cells}")
    for d in dtypes:
        every = [t for v in times[d].values() for t in v]
        print(
            f"{d}: {len(every)} conditions, {sum(w for w, _ in every):.0f} s wall, "
            f"{sum(c for _, c in every):.0f} s CPU in conditions"
        )
    if probe is not None:
        probe.summary()
    verdicts = []
    if "bfloat16" in results and "float32" in results:
        verdicts.append(agreement(results["float32"], results["bfloat16"], "float32 run now"))
    if "float32-eager" in results and "float32" in results:
        verdicts.append(agreement(results["float32-eager"], results["float32"], "fused against eager blocks"))
    if args.reference is not None:
        reference = json.loads(args.reference.read_text())
        for d, r in results.items():
            verdicts.append(agreement(reference, r, f"stored {args.reference} ({d} now)"))
    if verdicts:
        print(f"\nagrees by the criterion (within half-width, same calls): {all(verdicts)}")


if __name__ == "__main__":
    main()
