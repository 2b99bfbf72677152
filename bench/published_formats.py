"""The SmolLM2 study through each published SAE layout, against the native study (README, "Published SAEs").

Starts from a native checkpoint and its store (those of the default run: `scircuits run`, topk,
layer 15 resid), copied into ``--out`` (the originals are only read):

1. ``native-topk``: the checkpoint as it is. ``native-jumprelu``: the same weights as a JumpReLU SAE
   with one threshold for every latent (Gemma Scope and Llama Scope hold JumpReLU SAEs; Llama Scope
   has one threshold), the threshold set so that the mean L0 on the store equals the topk's k; its
   scircuits.json is the topk's without the metrics (those were measured for the topk).
2. Each written into the published layouts of its architecture (scircuits.testing.published): topk
   as a local SAELens folder (cfg.json + weights, as SAELens saves it), as SAELens layout on the hub
   (``hf:``) and as sparsify (``hf:``); JumpReLU as Gemma Scope npz (``hf:``), Llama Scope (``hf:``)
   and Llama Scope through SAELens' release table (``saelens:llama_scope_lxr_8x/l15r_8x``). The hub
   ones in a hub cache, read offline.
3. Encode/decode of each against its native checkpoint on the store's first 16,384 tokens; load time per
   format (best of 3, wall and CPU).
4. The study (``run_ablate``, what ``scircuits ablate`` runs) with the same settings (``SETTINGS``:
   the default study cut down to fit a shared CPU) for each native checkpoint and each format, one
   after the other in this process on the model loaded once; each results.json compared with its
   native one value by value, per section.

    python bench/published_formats.py --sae RUN/sae --store RUN/activations.zarr --out /tmp/published2 \
        [--only prepare|studies] [--formats NAME,...] [--study-of RUN/causal/results.json]

``--study-of`` runs every study with the settings that finished study recorded (its ``config``: the
full default study, gate on) instead of ``SETTINGS``, into ``OUT/ablate-full/``; when that study is of
the native topk checkpoint itself (``--sae``), its results.json is the topk reference and is not rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

# the default study's settings cut down to fit a shared CPU (the same for every study)
SETTINGS = {
    "limit": 16,
    "top_k": [1, 5, 20],
    "random_controls": 4,
    "exact_top": 5,
    "faithfulness_n": [1, 5, 20],
    "bootstrap": 200,
    "splice_check_examples": 8,
    # a copy in a published layout loses the checkpoint's token exclusion (scircuits.json): its
    # reconstruction-alone condition replaces the attention-sink tokens too, and the gate refused the
    # sparsify copy (CE loss recovered 0.38 against the native 1.00); the effects, measured on the
    # splice with its error term, do not depend on it. The gate only refuses: off, nothing else changes.
    "reconstruction_gate": False,
}
AGREEMENT_TOKENS = 16384  # the store's first rows
HOOK = "blocks.15.hook_resid_post"
# fields that name where and when a study ran, not what it measured
SKIP = {"provenance", "wall_seconds", "config", "config_hash", "created", "host_pid", "seconds"}


def leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if key not in SKIP:
                out.update(leaves(value, f"{prefix}.{key}" if prefix else key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out.update(leaves(value, f"{prefix}[{i}]"))
    else:
        out[prefix] = data
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def difference(a_path: Path, b_path: Path) -> dict[str, Any]:
    """Value by value, per top-level section of results.json: how many values, how many differ, the
    largest |difference| of the numeric ones, and the differing keys (first 8). A value only one file
    holds (a field newer code writes, an analysis only one process had installed) is counted apart,
    in ``only_in_first`` / ``only_in_second``, not as a difference."""
    a, b = (leaves(json.loads(p.read_text())) for p in (a_path, b_path))
    sections: dict[str, dict[str, Any]] = {}
    for key in sorted(set(a) | set(b)):
        section = sections.setdefault(
            key.split(".")[0].split("[")[0],
            {"values": 0, "differing": [], "only_in_first": 0, "only_in_second": 0},
        )
        if key not in b or key not in a:
            section["only_in_first" if key not in b else "only_in_second"] += 1
            continue
        section["values"] += 1
        x, y = a[key], b[key]
        same = x == y or (_number(x) and _number(y) and math.isnan(x) and math.isnan(y))
        if not same:
            section["differing"].append(key)
            if _number(x) and _number(y):
                section["max_abs_difference"] = max(section.get("max_abs_difference", 0.0), abs(x - y))
    for section in sections.values():
        section["n_differing"] = len(section["differing"])
        section["differing"] = section["differing"][:8]
    return sections


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


def store_rows(store: Path, chunk: int = 8192, limit: int | None = None):
    import torch

    from scircuits.store.reader import ActivationStore

    acts = ActivationStore(store)
    end = acts.shape[0] if limit is None else min(limit, acts.shape[0])
    for start in range(0, end, chunk):
        yield torch.as_tensor(acts.read_rows(start, min(start + chunk, end))).float()


def store_agreement(pairs: dict[str, tuple[str, Path]], store: Path) -> dict[str, dict[str, Any]]:
    """Max |difference| of encode and decode between each format's SAE and its native checkpoint,
    over every token of the store (real SmolLM2 layer-15 activations)."""
    import torch

    from scircuits.platform.manager.plugin_set import load_plugins
    from scircuits.platform.train.checkpoint import load_sae

    plugins = load_plugins(entry_points_too=False)
    out = {}
    with torch.no_grad():
        for name, (spec, native) in pairs.items():
            a, b = load_sae(spec, plugins)[0], load_sae(str(native), plugins)[0]
            enc = dec = 0.0
            same, tokens = True, 0
            for x in store_rows(store, limit=AGREEMENT_TOKENS):
                fa, fb = a.encode(x), b.encode(x)
                enc = max(enc, float((fa - fb).abs().max()))
                dec = max(dec, float((a.decode(fa) - b.decode(fb)).abs().max()))
                same = same and bool(((fa > 0) == (fb > 0)).all())
                tokens += x.shape[0]
            out[name] = {
                "tokens": tokens,
                "encode_max_abs": enc,
                "decode_max_abs": dec,
                "same_active_latents": same,
            }
    return out


def jumprelu_twin(topk_dir: Path, store: Path, out: Path) -> dict[str, Any]:
    """The topk checkpoint's weights as a JumpReLU SAE with one threshold, chosen so that the mean
    L0 over the store equals k; saved as a native checkpoint (the topk's scircuits.json without its
    metrics). Returns the threshold and the L0 it gives."""
    import torch

    from scircuits.platform.manager.plugin_set import load_plugins
    from scircuits.platform.train.checkpoint import is_complete, load_sae, read_json, save_sae

    plugins = load_plugins(entry_points_too=False)
    topk, info = load_sae(topk_dir, plugins)
    k = int(topk.hparams["k"])
    if not is_complete(out):
        with torch.no_grad():
            pre = torch.cat([topk.pre_activation(x) for x in store_rows(store)]).flatten()
        # the threshold above which k of the d_sae pre-activations of a token lie, on average
        sample = pre[torch.randperm(pre.numel(), generator=torch.Generator().manual_seed(0))[:5_000_000]]
        threshold = float(torch.quantile(sample.double(), 1 - k / topk.d_sae))
        del pre, sample
        jr = plugins.saes.get("jumprelu").build(topk.d_in, topk.d_sae, {})
        for name, value in topk.saelens_tensors().items():
            jr.load_saelens_tensor(name, value.detach().clone())
        jr.load_saelens_tensor("threshold", torch.full((topk.d_sae,), threshold))
        dropped = ("format", "format_version", "variant", "hparams", "metrics", "complete", "d_in", "d_sae")
        kept = {key: v for key, v in info["meta"].items() if key not in dropped}
        cfg = {"metadata": read_json(topk_dir / "cfg.json").get("metadata", {})}
        save_sae(out, jr.eval(), cfg=cfg, scircuits_meta=kept)
    jr, _ = load_sae(out, plugins)
    with torch.no_grad():
        l0 = torch.cat(
            [(jr.encode(x) > 0).sum(-1).float() for x in store_rows(store, limit=AGREEMENT_TOKENS)]
        )
    return {
        "threshold": float(jr.threshold[0].detach()),
        "mean_l0_first_rows": float(l0.mean()),
        "k_of_topk": k,
    }


def prepare(args: argparse.Namespace, root: Path, cache: Path) -> dict[str, Any]:
    import torch

    from scircuits.platform.manager.plugin_set import load_plugins
    from scircuits.platform.train.checkpoint import load_sae
    from scircuits.testing import published as P

    native_topk, native_jr, store = root / "native-topk", root / "native-jumprelu", root / "store.zarr"
    if not native_topk.exists():
        shutil.copytree(args.sae, native_topk, ignore=shutil.ignore_patterns(".scircuits-lock"))
    if not store.exists():
        shutil.copytree(args.store, store, ignore=shutil.ignore_patterns(".scircuits-lock"))
    report: dict[str, Any] = {"native_sae": str(args.sae), "store": str(args.store)}
    report["jumprelu_twin"] = jumprelu_twin(native_topk, store, native_jr)
    plugins = load_plugins(entry_points_too=False)
    topk, _ = load_sae(native_topk, plugins)
    jr, _ = load_sae(native_jr, plugins)
    folder = root / "saelens-folder"
    folder.mkdir(exist_ok=True)
    for name, data in P.saelens_files(topk, HOOK).items():
        (folder / name).write_bytes(data)
    P.hub_repo(cache, "scircuits-bench/saelens", P.saelens_files(topk, HOOK, HOOK))
    P.hub_repo(cache, "scircuits-bench/sparsify", P.sparsify_files(topk, "layers.15"))
    P.hub_repo(
        cache, "google/gemma-scope-2b-pt-res", P.gemma_scope_files(jr, "layer_15/width_16k/average_l0_32")
    )
    with torch.no_grad():
        norm = float(torch.cat(list(store_rows(store, limit=AGREEMENT_TOKENS))).norm(dim=-1).mean())
        threshold = float(jr.threshold[0])
    llama = P.llama_scope_files(jr, "Llama3_1-8B-Base-L15R-8x", HOOK, norm, threshold)
    P.hub_repo(cache, "fnlp/Llama3_1-8B-Base-LXR-8x", llama)
    report["store_agreement"] = store_agreement({k: (v[0], v[1]) for k, v in formats(root).items()}, store)
    report["load_seconds"] = load_times(
        {"native topk folder": str(native_topk), "native jumprelu folder": str(native_jr)}
        | {k: v[0] for k, v in formats(root).items()}
    )
    return report


def formats(root: Path) -> dict[str, tuple[str, Path]]:
    """{name: (--sae spec, the native checkpoint it came from)}."""
    topk, jr = root / "native-topk", root / "native-jumprelu"
    return {
        "saelens-folder": (str(root / "saelens-folder"), topk),
        "saelens-layout-hf": (f"hf:scircuits-bench/saelens/{HOOK}", topk),
        "sparsify-hf": ("hf:scircuits-bench/sparsify/layers.15", topk),
        "gemma-scope-hf": ("hf:google/gemma-scope-2b-pt-res/layer_15/width_16k/average_l0_32", jr),
        "llama-scope-saelens": ("saelens:llama_scope_lxr_8x/l15r_8x", jr),
        "llama-scope-hf": ("hf:fnlp/Llama3_1-8B-Base-LXR-8x/Llama3_1-8B-Base-L15R-8x", jr),
    }


# a recorded study's config fields that say where it read and wrote, not what it measured
WHERE = {"sae", "store", "out", "progress", "force", "model_path", "device"}


def recorded_settings(results: Path) -> dict[str, Any]:
    """The settings a finished study ran with (its results.json ``config``), without its paths."""
    config = json.loads(results.read_text())["config"]
    return {key: value for key, value in config.items() if key not in WHERE}


def study(
    folder: Path, name: str, spec: str, loaded: Any, plugins: Any, settings: dict[str, Any], store: Path
) -> dict[str, Any]:
    """``scircuits ablate`` with ``settings`` in this process, on the model loaded once."""
    from scircuits.platform.causal.stage import run_ablate
    from scircuits.platform.config import AblateConfig

    out = folder / name
    if (out / "results.json").is_file():
        return {"out": str(out), "reused": True}
    config = AblateConfig(
        sae=spec, store=str(store), out=str(out), progress=False, **settings
    ).with_plugin_defaults(plugins)
    wall, cpu = time.monotonic(), time.process_time()
    run_ablate(config, plugins, loaded=loaded)
    took = {
        "out": str(out),
        "wall_s": round(time.monotonic() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }
    print(f"ablate {name}: {took}", flush=True)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sae", type=Path, required=True, help="the native (default run's) checkpoint")
    parser.add_argument("--store", type=Path, required=True, help="the native run's activation store")
    parser.add_argument("--out", type=Path, default=Path("/tmp/published-bench"))
    parser.add_argument("--only", choices=["prepare", "studies"], default=None)
    parser.add_argument(
        "--formats", default=None, help="comma-separated format names, studied in this order (default: all)"
    )
    parser.add_argument(
        "--study-of",
        type=Path,
        default=None,
        help="a finished study's results.json: run every study with its settings (the full default study)",
    )
    args = parser.parse_args()
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    cache = root / "hub"
    os.environ.update({"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    report_path = root / "published_formats.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if args.only != "studies":
        report.update(prepare(args, root, cache))
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2), flush=True)
    if args.only == "prepare":
        return
    from scircuits.platform.manager.plugin_set import load_plugins

    plugins = load_plugins(entry_points_too=False)
    settings, folder, key = SETTINGS, root / "ablate", "studies"
    references: dict[str, Path] = {}
    if args.study_of is not None:
        settings, folder, key = recorded_settings(args.study_of), root / "ablate-full", "full_studies"
        recorded = json.loads(args.study_of.read_text())["config"]["sae"]
        if Path(recorded).resolve() == args.sae.resolve():
            references["native-topk"] = args.study_of
    report[f"{key}_settings"] = settings
    chosen = formats(root)
    if args.formats:
        chosen = {k: chosen[k] for k in args.formats.split(",")}  # in the order given
    wall, cpu = time.monotonic(), time.process_time()
    loaded = plugins.models.get("smollm2-135m").load(dtype="float32", device="cpu")
    report["model_load"] = {
        "wall_s": round(time.monotonic() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }
    studies = report.setdefault(key, {})
    store = root / "store.zarr"
    for name, (spec, native) in chosen.items():
        if native.name in references:
            studies[native.name] = {"out": str(references[native.name].parent), "recorded": True}
        elif native.name not in studies:
            studies[native.name] = study(folder, native.name, str(native), loaded, plugins, settings, store)
        studies[name] = study(folder, name, spec, loaded, plugins, settings, store)
        a = references.get(native.name, folder / native.name / "results.json")
        studies[name]["vs_native"] = difference(a, folder / name / "results.json")
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
