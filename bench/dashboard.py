"""Dashboard build time and site size at scale: a real run's store, its SAE swapped for a wide one.

    python bench/dashboard.py RUN_DIR --latents 16384          # RUN_DIR: a finished `scircuits run`

Copies RUN_DIR (the store is linked, not copied) into a temporary folder, replaces its SAE by a
randomly initialised TopK SAE of --latents latents (k = --k) on the same width, and builds the
dashboard there: the build time per phase, the number of pages, the site's size and files. The
wide SAE is random (labelled so): the figures measure the dashboard's cost, not any feature.
Not a test: figures depend on whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument(
        "--keep", type=Path, default=None, help="build here and keep it (default: a temp dir)"
    )
    args = parser.parse_args()

    import torch

    from scircuits.platform.dashboard import build_dashboard
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.checkpoint import load_sae, save_sae

    work = args.keep or Path(tempfile.mkdtemp(prefix="scircuits-dashboard-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "causal").mkdir(exist_ok=True)
    results = json.loads((args.run_dir / "causal" / "results.json").read_text())
    results["features"], results["d_sae"] = [], args.latents
    results["rank"] = {**results.get("rank", {}), "top": []}
    (work / "causal" / "results.json").write_text(json.dumps(results))
    store = work / "activations.zarr"
    if not store.exists():
        store.symlink_to((args.run_dir / "activations.zarr").resolve())
    trained, _ = load_sae(args.run_dir / "sae", get_plugins())
    torch.manual_seed(0)
    wide = get_plugins().saes.get("topk").build(int(trained.W_dec.shape[1]), args.latents, {"k": args.k})
    save_sae(work / "sae", wide, cfg={}, scircuits_meta={"note": "random TopK SAE for bench/dashboard.py"})
    started = time.monotonic()
    summary = build_dashboard(work, get_plugins(), say=print)
    print(
        json.dumps(
            {
                "latents": args.latents,
                "k": args.k,
                "tokens_scanned": summary.n_tokens,
                "active": summary.n_active,
                "pages": summary.n_pages,
                "site_mib": round(summary.size_bytes / 2**20, 1),
                "files": summary.n_files,
                "seconds": round(time.monotonic() - started, 1),
                "phases_s": summary.timings,
                "site": str(summary.out),
            },
            indent=2,
        )
    )
    if args.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
