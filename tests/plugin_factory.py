"""Build real installed-looking distributions (dist-info + entry point) in a folder for tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_plugin_dist(
    root: Path, dist: str, module: str, source: str, entry_name: str | None = None, version: str = "1.0"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[scircuits]\n{entry_name or dist} = {module}\n")
    return root
