"""`import scircuits` stays light: every public name is imported on first access, so the import
loads none of the heavy libraries (checked on sys.modules in a fresh process, not on timing), and
every name of ``__all__`` still resolves to the object plugins and notebooks use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import scircuits

HEAVY = ("numpy", "scipy", "torch", "transformers", "nnsight", "zarr", "pandas", "matplotlib", "pydantic")
API_NAMES = (
    "collect", "train", "ablate", "run", "compare", "dashboard", "load_run", "load_study",
    "load_comparison", "set_log_level", "CollectConfig", "TrainConfig", "AblateConfig", "RunConfig",
    "CompareOptions", "CollectResult", "TrainResult", "AblateResult", "FeatureView", "RunResult",
    "CompareResult", "DashboardResult",
)  # fmt: skip


def modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


def test_import_scircuits_loads_no_heavy_library():
    loaded = modules_after("import scircuits")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_reading_a_run_loads_no_torch():
    loaded = modules_after("import scircuits\nscircuits.load_run\nscircuits.AblateResult")
    assert not loaded & {"torch", "transformers", "nnsight", "scipy"}


def test_every_public_name_resolves():
    for name in scircuits.__all__:
        assert getattr(scircuits, name) is not None, name
    assert set(API_NAMES) <= set(scircuits.__all__)
    assert (
        scircuits.StudyResults
        is __import__("scircuits.platform.contract.study", fromlist=["StudyResults"]).StudyResults
    )
    assert "run" in dir(scircuits) and "SparseAutoencoder" in dir(scircuits)


def test_docs_api_names_every_api_name():
    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    missing = [name for name in API_NAMES if f"scircuits.{name}" not in text and f"`{name}`" not in text]
    assert not missing, missing
