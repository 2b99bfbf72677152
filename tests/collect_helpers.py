"""Helpers shared by the corpus and multi-site collect tests (a tiny GPT-2 saved as a folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from scircuits.store import ActivationStore


def tiny_collect_args(folder: Path, *args: str) -> list[str]:
    """`scircuits collect` arguments on the tiny GPT-2 saved in ``folder``."""
    return ["collect", "--model", "gpt2-medium", "--model-path", str(folder), *args]


def collect_process_command(folder: Path, *args: str) -> list[str]:
    """The command line of a `scircuits collect` subprocess (killable)."""
    return [sys.executable, "-m", "scircuits", *tiny_collect_args(folder, *args)]


def recorded(path: Path) -> dict:
    """A store's attributes as its zarr.json holds them now ({} before it exists)."""
    try:
        return json.loads((path / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        return {}


def by_example(store: ActivationStore) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each sequence's (acts, token_ids, positions), by example id."""
    acts = store.read_rows(0, store.n_tokens)
    ids = store.example_ids
    return {
        int(e): (acts[ids == e], store.token_ids[ids == e], store.positions[ids == e]) for e in np.unique(ids)
    }


def one_line(stderr: str) -> str:
    """The only non-blank line of ``stderr`` (an assertion error when there are more)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]
