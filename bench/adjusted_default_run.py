"""The covariate-adjusted contrast of a finished study, offline, without the model (docs/metrics.md,
"Adjusted contrast"): for a results.json written before the study recorded it.

Reads RUN/causal/results.json and RUN/causal/examples.jsonl (only read) and ``--stats``, an npz with
the per-latent ``frequency`` and ``size`` (Σ activation x decoder-row norm) on the study's evaluation
tokens and the ``ranked`` latents, as ``StudyContext.control_statistics()`` computes them (the
default run's: dumped by the stage's own code, ``load_inputs`` + ``prepare_study``, no ablation
pass). The script checks the npz against the run: the same top 50 ranking, and every k's recorded
median control / top ratios recomputed exactly from the saved control ids.

Such a run did not store the control sets' per-example effects, only each set's mean. So the
interval resamples the evaluation examples for the top set (the study's own bootstrap replicates)
and the control sets with their recorded means: the controls' common example noise and its
covariance with the top set are left out. The control mean's own interval is printed beside it to
show how much that can be. A study run with this code records the full interval itself, and its
examples.jsonl holds every control set's per-example scores (``sets``, docs/formats.md): with such a
file the script uses them, so the interval is the full two-way one.

``--per-member``: each set's covariate is the mean over its members of log(control / matched top
feature) instead of log(Σ set / Σ top set), as a check of the definition's weight on the result.

    python bench/adjusted_default_run.py RUN --stats STATS.npz --out /tmp/adjusted [--per-member]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from scircuits import adjusted_contrast, set_log_ratios
from scircuits.platform.causal.statistics import Bootstrap


def per_member(top: list[int], sets: list[list[int]], values: np.ndarray) -> list[float]:
    return [
        float(np.mean([np.log(values[c] / values[t]) for c, t in zip(ids, top, strict=True)])) for ids in sets
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-member", action="store_true")
    args = parser.parse_args()
    causal = args.run / "causal"
    results = json.loads((causal / "results.json").read_text())
    rows = [json.loads(line) for line in (causal / "examples.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if r.get("evaluation", bool(r["scores"]))]
    stats = np.load(args.stats)
    frequency, size = stats["frequency"], stats["size"]
    top_ranked = results["rank"]["top"]
    assert [int(i) for i in stats["ranked"][: len(top_ranked)]] == top_ranked, "another study's statistics"
    n = len(evaluated)
    assert n == results["evaluation_split"]["n_evaluation"]
    settings = results["statistics"]
    bootstrap = Bootstrap(n, settings["bootstrap_replicates"], seed=settings["seed"], level=settings["level"])
    covariate = per_member if args.per_member else set_log_ratios
    out: dict = {"run": str(args.run), "stats": str(args.stats), "per_member": args.per_member, "sweeps": []}
    for sweep in results["sweeps"]:
        k, top_ids, sets = sweep["k"], sweep["features"], sweep["control_sets"]
        for which, values in (("frequency", frequency), ("size", size)):
            ratios = [
                values[c] / values[t] for ids in sets["features"] for c, t in zip(ids, top_ids, strict=True)
            ]
            assert abs(float(np.median(ratios)) - sets[f"median_{which}_ratio"]) < 1e-9, (k, which)
        log_f = covariate(top_ids, sets["features"], frequency)
        log_s = covariate(top_ids, sets["features"], size)
        entry: dict = {"k": k, "log_frequency_ratio": log_f, "log_size_ratio": log_s}
        for metric, key in (("logprob", "logprob"), ("accuracy", "correct")):
            test = sweep[f"test_{metric}"]
            top = np.array(
                [float(r["scores"][f"top{k}"][key]) - float(r["scores"]["splice"][key]) for r in evaluated]
            )
            assert abs(top.mean() - test["top_effect"]) < 1e-9, (k, metric)
            means = np.array(test["control_effects"])
            if all(f"control{k}" in r.get("sets", {}) for r in evaluated):
                splice = np.array([float(r["scores"]["splice"][key]) for r in evaluated])
                per_set = np.array([r["sets"][f"control{k}"][key] for r in evaluated], dtype=float)
                controls = per_set.T - splice
                assert np.allclose(controls.mean(axis=1), means, atol=1e-9), (k, metric)
            else:  # an older file: per-example control effects were not stored
                controls = np.repeat(means[:, None], n, axis=1)
            adjusted = adjusted_contrast(
                top, controls, log_f, log_s, bootstrap, seed=[results["config"]["seed"], 6007, k]
            )
            entry[metric] = {
                **adjusted.model_dump(),
                "raw_paired_ci": [test["difference"]["low"], test["difference"]["high"]],
                "control_mean_ci": sweep["control"][f"{metric}_ci"],
            }
            a = adjusted
            print(
                f"k={k:>3} {metric:8} raw {a.raw:+.3f} [{test['difference']['low']:+.3f}, "
                f"{test['difference']['high']:+.3f}]  control at ratio 1 {a.adjusted_control:+.3f}  adjusted "
                f"{a.adjusted:+.3f} [{a.ci[0]:+.3f}, {a.ci[1]:+.3f}]  frequency ratios "
                f"{np.exp(a.log_frequency_range[0]):.2f}-{np.exp(a.log_frequency_range[1]):.2f} size "
                f"{np.exp(a.log_size_range[0]):.2f}-{np.exp(a.log_size_range[1]):.2f}  extrapolated "
                f"{','.join(a.extrapolated) or 'no'}"
                if a.adjusted is not None and a.ci is not None
                else f"k={k:>3} {metric:8} raw {a.raw:+.3f}  not adjusted: {a.note}"
            )
        out["sweeps"].append(entry)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "adjusted_per_member.json" if args.per_member else "adjusted.json"
    (args.out / name).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
