"""Reading a JSON-lines log that a run appends to (train_log.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scircuits.errors import DataFormatError


def read_log(path: Path) -> list[dict[str, Any]]:
    """One dict per line of ``path``. A last line without its newline that does not parse is a write
    cut short (a run killed mid-write) and is left out; any other line that is not a JSON object is a
    ``DataFormatError`` naming the file and the line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines):  # no newline after it: cut short
                break
            raise DataFormatError(
                f"{path}:{number}: not a JSON object; the file is damaged: train the SAE again "
                "(or delete the line)"
            ) from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{number}: not a JSON object (a {type(row).__name__})")
        rows.append(row)
    return rows
