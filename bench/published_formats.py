"""A SmolLM2 study through each published SAE layout, against the native run (README, "Published SAEs").

1. A small native run (`scircuits run`, topk) on SmolLM2 layer 15: its store and its SAE.
2. A JumpReLU SAE trained on that store (`scircuits train --sae jumprelu`), its thresholds set to
   one value (Llama Scope has one threshold for every latent) and saved as a native checkpoint.
3. Each SAE written into the published layouts of its architecture inside a hub cache
   (scircuits.testing.published), read offline: topk as SAELens layout (hf:) and sparsify (hf:),
   JumpReLU as Gemma Scope (hf:) and Llama Scope (saelens:llama_scope_lxr_8x/l15r_8x).
4. `scircuits ablate` with each against the native checkpoint it came from (same settings), and
   `scircuits run --sae hf:...` (no collection, no training) for the sparsify one; every number of
   results.json compared (provenance, timings and the gate's reference fields left out), and the
   load time of each format measured (wall and CPU, best of 3, on a shared machine).

    python bench/published_formats.py --out /tmp/published-bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SETTINGS = [
    "--limit",
    "24",
    "--top-k",
    "1,5",
    "--random-controls",
    "4",
    "--exact-top",
    "3",
    "--bootstrap",
    "200",
    "--faithfulness-n",
    "1,5,20",
    "--no-progress",
]
SKIP = {
    "provenance",
    "wall_seconds",
    "config",
    "config_hash",
    "created",
    "host_pid",
    "reference",
    "reference_metric",
    "reference_source",
    "training_relative_error",
    "error_growth",
}


def cli(*args: str, env: dict[str, str] | None = None) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "scircuits", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    print(
        f"$ scircuits {' '.join(args)}  ({time.monotonic() - started:.0f} s, rc {done.returncode})",
        flush=True,
    )
    if done.returncode != 0:
        print(done.stderr[-3000:], flush=True)
        raise SystemExit(done.returncode)


def leaves(data: Any, prefix: str = "", skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if key not in SKIP and key not in skip:
                out.update(leaves(value, f"{prefix}.{key}" if prefix else key, skip))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out.update(leaves(value, f"{prefix}[{i}]", skip))
    else:
        out[prefix] = data
    return out


def difference(a_path: Path, b_path: Path, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    a, b = (leaves(json.loads(p.read_text()), skip=skip) for p in (a_path, b_path))
    keys = sorted(set(a) | set(b))
    differing = [k for k in keys if a.get(k) != b.get(k)]
    numeric = [
        abs(a[k] - b[k])
        for k in differing
        if isinstance(a.get(k), (int, float))
        and isinstance(b.get(k), (int, float))
        and not (isinstance(a[k], float) and math.isnan(a[k]))
    ]
    return {
        "values": len(keys),
        "differing": len(differing),
        "max_abs_difference": max(numeric, default=0.0),
        "first_differing": differing[:5],
    }


def load_times(specs: dict[str, str]) -> dict[str, dict[str, float]]:
    from scircuits.platform.manager.plugin_set import load_plugins
    from scircuits.platform.train.checkpoint import load_sae

    plugins = load_plugins(entry_points_too=False)
    out = {}
    for name, spec in specs.items():
        best = (math.inf, math.inf)
        for _ in range(3):
            wall, cpu = time.perf_counter(), time.process_time()
            load_sae(spec, plugins)
            best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
        out[name] = {"wall_s": round(best[0], 3), "cpu_s": round(best[1], 3)}
    return out


def store_agreement(pairs: dict[str, tuple[str, Path]], store: Path) -> dict[str, dict[str, float]]:
    """Max |difference| of encode and decode between each format's SAE and the native checkpoint it
    came from, over every token of the run's store (real SmolLM2 layer-15 activations)."""
    import torch

    from scircuits.platform.manager.plugin_set import load_plugins
    from scircuits.platform.train.checkpoint import load_sae
    from scircuits.store.reader import ActivationStore

    plugins = load_plugins(entry_points_too=False)
    acts = ActivationStore(store)
    x = torch.as_tensor(acts.read_rows(0, acts.n_tokens)).float()
    out = {}
    with torch.no_grad():
        for name, (spec, native) in pairs.items():
            a, b = load_sae(spec, plugins)[0], load_sae(native, plugins)[0]
            fa, fb = a.encode(x), b.encode(x)
            out[name] = {
                "tokens": int(x.shape[0]),
                "encode_max_abs": float((fa - fb).abs().max()),
                "decode_max_abs": float((a.decode(fa) - b.decode(fb)).abs().max()),
                "same_active_latents": bool(((fa > 0) == (fb > 0)).all()),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/published-bench")
    parser.add_argument("--budget-minutes", type=float, default=40, help="start no study after this")
    args = parser.parse_args()
    started = time.monotonic()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    cache = root / "hub"
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)

    runs = root / "runs"
    native = runs / "smollm2-135m__arithmetic__resid15"
    cli("run", "--out", str(runs), "--collect-limit", "96", "--train-tokens", "150000", *SETTINGS)
    store = native / "activations.zarr"
    jr_dir = root / "jumprelu"
    from scircuits.platform.train.checkpoint import is_complete

    if not is_complete(jr_dir):
        train = ["--store", str(store), "--sae", "jumprelu", "--expansion", "4", "--tokens", "150000"]
        cli("train", *train, "--out", str(jr_dir), "--no-progress", "--force")

    import torch

    from scircuits.platform.manager.plugin_set import load_plugins
    from scircuits.platform.train.checkpoint import load_sae, read_json, save_sae
    from scircuits.testing import published as P

    plugins = load_plugins(entry_points_too=False)
    topk, _ = load_sae(native / "sae", plugins)
    jr, jr_info = load_sae(jr_dir, plugins)
    with torch.no_grad():  # one threshold for every latent, as Llama Scope has
        jr.log_threshold.fill_(float(jr.log_threshold.median()))
    jr_one = root / "jumprelu-one-threshold"
    kept = {
        k: v
        for k, v in jr_info["meta"].items()
        if k not in ("format", "format_version", "variant", "hparams")
    }
    save_sae(jr_one, jr, cfg=read_json(jr_dir / "cfg.json"), scircuits_meta=kept)
    hook = "blocks.15.hook_resid_post"
    norm = math.sqrt(jr.d_in) / 7.5  # any positive mean norm: the reader folds the scale back out
    P.hub_repo(cache, "scircuits-bench/saelens", P.saelens_files(topk, hook, hook))
    P.hub_repo(cache, "scircuits-bench/sparsify", P.sparsify_files(topk, "layers.15"))
    P.hub_repo(
        cache, "google/gemma-scope-2b-pt-res", P.gemma_scope_files(jr, "layer_15/width_16k/average_l0_32")
    )
    llama = P.llama_scope_files(jr, "Llama3_1-8B-Base-L15R-8x", hook, norm, float(jr.threshold[0].detach()))
    P.hub_repo(cache, "fnlp/Llama3_1-8B-Base-LXR-8x", llama)
    formats = {
        "sparsify (hf:)": ("hf:scircuits-bench/sparsify/layers.15", native / "sae"),
        "gemma-scope (hf:)": ("hf:google/gemma-scope-2b-pt-res/layer_15/width_16k/average_l0_32", jr_one),
        "saelens-layout (hf:)": ("hf:scircuits-bench/saelens/blocks.15.hook_resid_post", native / "sae"),
        "llama-scope (saelens:)": ("saelens:llama_scope_lxr_8x/l15r_8x", jr_one),
    }
    report: dict[str, Any] = {"settings": SETTINGS, "formats": {}}
    report["store_agreement"] = store_agreement({k: (v[0], v[1]) for k, v in formats.items()}, store)
    report["load_seconds"] = load_times(
        {"native folder": str(native / "sae"), **{k: v[0] for k, v in formats.items()}}
    )
    print(json.dumps(report, indent=2), flush=True)
    (root / "published_formats.json").write_text(json.dumps(report, indent=2) + "\n")

    def in_budget() -> bool:
        return time.monotonic() - started < args.budget_minutes * 60

    # the studies: run --sae (no collection, no training) against the native run, then ablate per format
    if in_budget():
        cli("run", "--out", str(runs), "--sae", formats["sparsify (hf:)"][0], *SETTINGS, env=env)
        published_run = next(p for p in runs.iterdir() if "__hf-" in p.name)
        report["run --sae sparsify vs native run"] = difference(
            native / "causal" / "results.json",
            published_run / "causal" / "results.json",
            # without a store the top contexts come from the evaluation examples (said in contexts_source)
            skip=frozenset({"top_tokens", "contexts_source"}),
        )
    ablated = {str(native / "sae"): native / "causal" / "results.json"}  # the native run's own study
    for name, (spec, native_sae) in formats.items():
        if not in_budget():
            report["formats"][name] = {"spec": spec, "study": "not run (time budget)"}
            continue
        if str(native_sae) not in ablated:
            out = root / "ablate" / "jumprelu"
            cli(
                "ablate",
                "--sae",
                str(native_sae),
                "--store",
                str(store),
                "--out",
                str(out),
                *SETTINGS,
                env=env,
            )
            ablated[str(native_sae)] = out / "results.json"
        out = root / "ablate" / name.split()[0]
        cli("ablate", "--sae", spec, "--store", str(store), "--out", str(out), *SETTINGS, env=env)
        report["formats"][name] = {
            "spec": spec,
            "native": str(native_sae),
            "vs_native": difference(ablated[str(native_sae)], out / "results.json"),
        }
        (root / "published_formats.json").write_text(json.dumps(report, indent=2) + "\n")
    (root / "published_formats.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
