"""A tiny finished run (collect -> train -> ablate -> report -> dashboard), built once per test process;
and the same run compared with a permuted copy of itself, so its feature pages list linked matches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

_BUILT: dict[str, Path] = {}
_PERM: dict[str, Any] = {}


def tiny_run(tmp_path_factory: Any) -> Path:
    """The run directory of `scircuits run` on a tiny random SmolLM2-architecture model (about 15 s)."""
    if "run" not in _BUILT:
        from scircuits.cli import main
        from scircuits.testing import save_tiny_model, tiny_loaded_model

        root = tmp_path_factory.mktemp("dashboard-run")
        folder = save_tiny_model(tiny_loaded_model("smollm2-135m"), root / "tiny")
        out = root / "runs"
        main(
            [
                "run",
                "--model",
                f"hf:{folder}",
                "--layer",
                "2",
                "--limit",
                "12",
                "--collect-limit",
                "40",
                "--train-tokens",
                "4000",
                "--train-batch-size",
                "512",
                "--expansion",
                "2",
                "--top-k",
                "1,4",
                "--random-controls",
                "2",
                "--exact-top",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        (_BUILT["run"],) = list(out.iterdir())
    return _BUILT["run"]


def compared_run(tmp_path_factory: Any) -> tuple[Path, Path, Path, Any]:
    """(run, its copy whose SAE latents are permuted, the compare folder, the permutation): the copy
    gets its own dashboard, then `scircuits compare` links both dashboards' matches (about 10 s more)."""
    if "compare" not in _BUILT:
        import numpy as np

        from scircuits.cli import main
        from tests.compare_tiny import permuted_copy

        run = tiny_run(tmp_path_factory)
        d_sae = json.loads((run / "sae" / "cfg.json").read_text())["d_sae"]
        perm = np.random.default_rng(3).permutation(d_sae)
        copy = permuted_copy(run, tmp_path_factory.mktemp("permuted") / "copy", perm)
        shutil.rmtree(copy / "dashboard")  # the original's pages: rebuilt for the copy's latent ids
        main(["dashboard", str(copy)])
        compare_dir = tmp_path_factory.mktemp("compared") / "cmp"
        main(
            [
                "compare",
                *(str(p) for p in (run, copy)),
                "--out",
                str(compare_dir),
                "--no-train-twins",
                "--permutations",
                "19",
                "--no-progress",
            ]
        )
        _BUILT["compare"], _BUILT["copy"], _PERM["perm"] = compare_dir, copy, perm
    return _BUILT["run"], _BUILT["copy"], _BUILT["compare"], _PERM["perm"]


def read_js(path: Path) -> Any:
    """The JSON value a data file assigns (``window.X=<json>;``)."""
    text = path.read_text()
    start = text.index("=") + 1
    if text.startswith("Object.assign("):
        start = text.index("||{},") + len("||{},")
        return json.loads(text[start : text.rindex(");")].replace("<\\/", "</"))
    return json.loads(text[start : text.rindex(";")].replace("<\\/", "</"))
