"""``saelens:RELEASE/SAE_ID[@REVISION]``: SAELens' table of published SAEs.

The table is SAELens' own ``pretrained_saes.yaml`` when the ``sae-lens`` package is installed (read
as a file: sae_lens itself is not imported), else the copy of a few releases shipped here
(``releases.yaml``, whose header says which SAELens version it was copied from).
"""

from __future__ import annotations

import difflib
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from scircuits import ConfigError, HubLocation, SAESource

SHIPPED = Path(__file__).with_name("releases.yaml")


def table_path() -> tuple[Path, str]:
    """The release table to read and where it comes from, in words."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "pretrained_saes.yaml"
        if path.is_file():
            from importlib.metadata import version

            return path, f"sae-lens {version('sae-lens')} pretrained_saes.yaml"
    return SHIPPED, "the table shipped with scircuits (plugins/sae_sources/releases.yaml)"


@lru_cache(maxsize=4)
def read_table(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return data.get("SAE_LOOKUP", data) if isinstance(data, dict) else {}


def close(word: str, options: list[str]) -> str:
    found = difflib.get_close_matches(word, options, n=5, cutoff=0.5)
    return f"close matches: {', '.join(found)}" if found else f"{len(options)} known, none close"


class SAELensReleases(SAESource):
    name = "saelens"
    default = True  # the family's default (docs/plugins.md, "Defaults")
    description = "SAELens' release table: --sae saelens:RELEASE/SAE_ID[@REVISION]"
    scheme = "saelens"

    def resolve(self, ref: str) -> HubLocation:
        body, _, revision = ref.partition("@")
        release, sep, sae_id = body.partition("/")
        path, source = table_path()
        table = read_table(path)
        if not sep or not release or not sae_id:
            raise ConfigError(
                f"--sae saelens:{ref}: give RELEASE/SAE_ID, e.g. "
                "saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"
            )
        entry = table.get(release)
        if not isinstance(entry, dict):
            raise ConfigError(
                f"--sae saelens:{ref}: no release {release!r} in {source} ({close(release, sorted(table))})"
            )
        saes = {str(s.get("id")): s for s in entry.get("saes") or [] if isinstance(s, dict)}
        sae = saes.get(sae_id)
        if sae is None:
            raise ConfigError(
                f"--sae saelens:{ref}: release {release!r} has no SAE {sae_id!r} "
                f"({close(sae_id, sorted(saes))})"
            )
        overrides = sae.get("config_overrides") or entry.get("config_overrides") or {}
        metrics = {k: sae[k] for k in ("l0", "variance_explained") if isinstance(sae.get(k), (int, float))}
        facts = {
            "release": release,
            "sae_id": sae_id,
            "model": entry.get("model"),
            "conversion_func": entry.get("conversion_func"),
            "table": source,
            "metrics": metrics,
        }
        if isinstance(overrides, dict) and overrides.get("hook_name"):
            facts["hook_name"] = overrides["hook_name"]
        if sae.get("neuronpedia"):
            facts["neuronpedia"] = sae["neuronpedia"]
        return HubLocation(
            str(entry["repo_id"]), str(sae.get("path", sae_id)).strip("/"), revision or None, facts
        )
