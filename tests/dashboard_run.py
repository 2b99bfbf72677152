"""A tiny finished run (collect -> train -> ablate -> report -> dashboard), built once per test process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_BUILT: dict[str, Path] = {}


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


def read_js(path: Path) -> Any:
    """The JSON value a data file assigns (``window.X=<json>;``)."""
    text = path.read_text()
    start = text.index("=") + 1
    if text.startswith("Object.assign("):
        start = text.index("||{},") + len("||{},")
        return json.loads(text[start : text.rindex(");")].replace("<\\/", "</"))
    return json.loads(text[start : text.rindex(";")].replace("<\\/", "</"))
