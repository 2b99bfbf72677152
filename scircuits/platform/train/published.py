"""``--sae`` as a source: a local folder, ``hf:REPO[/PATH][@REVISION]``, or ``SCHEME:REF`` of a
registered SAE source (``saelens:RELEASE/SAE_ID``). Resolves it to a folder (through the hub cache
for the hub ones, every file checked against the cache's hashes) and picks the source plugin that
reads the folder's layout. Folders in the SAELens layout (ours included) are read by the checkpoint
module itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scircuits.platform.common import remote
from scircuits.platform.contract.errors import ConfigError, DataFormatError
from scircuits.platform.contract.sae_sources import HubLocation, SAESource
from scircuits.platform.manager.plugin_set import PluginSet
from scircuits.platform.train.hub_files import HubFolder, fetch_folder, parse_hub_ref, verified_files

HUB_SCHEME = "hf"
SAELENS_LAYOUT = ("cfg.json", "sae_weights.safetensors")


@dataclass
class ResolvedSource:
    """Where ``--sae`` points: the folder to read, the reader of its layout (None: SAELens layout),
    and the hub folder it came from (None: a local folder)."""

    spec: str
    folder: Path
    reader: SAESource | None
    hub: HubFolder | None = None
    location: HubLocation | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    checked: dict[str, str] = field(default_factory=dict)  # hub files, checked before any is read

    def provenance(self, files: list[Path]) -> dict[str, Any]:
        """What was read: the spec, the layout, the hub repository, revision asked and commit read,
        and each file's hash (checked against the hub cache's record for hub files)."""
        out: dict[str, Any] = {
            "spec": self.spec,
            "format": self.reader.name if self.reader else "saelens-layout",
            "folder": str(self.folder),
            "files": {p.name: self.checked.get(str(p)) or verified_files([p])[str(p)] for p in files},
        }
        if self.hub is not None:
            loc = self.hub.location
            out.update(
                {
                    "repo_id": loc.repo_id,
                    "path": loc.path,
                    "revision": loc.revision,
                    "commit": self.hub.commit,
                }
            )
        if self.facts:
            out["facts"] = dict(self.facts)
        return out


def schemes(plugins: PluginSet) -> dict[str, SAESource]:
    return {s.scheme: s for s in plugins.sae_sources if s.scheme}


def split_scheme(spec: str, plugins: PluginSet) -> tuple[str, str] | None:
    """(scheme, ref) when ``spec`` names a hub source rather than an existing path."""
    scheme, sep, ref = spec.partition(":")
    if not sep or Path(spec).exists():
        return None
    if scheme == HUB_SCHEME or scheme in schemes(plugins):
        return scheme, ref
    return None


def is_published(spec: str | None, plugins: PluginSet) -> bool:
    """Whether ``spec`` names an SAE to read rather than a variant to train (a scheme or a folder; a
    registered variant's name wins over a folder of that name)."""
    if not spec or spec in plugins.saes:
        return False
    return split_scheme(spec, plugins) is not None or remote.is_url(spec) or Path(spec).is_dir()


def resolve_source(spec: str, plugins: PluginSet) -> ResolvedSource:
    """The folder ``spec`` names and the reader of its layout; ConfigError for a name that resolves
    to nothing (close matches listed), DataFormatError for a folder in no known layout."""
    split = split_scheme(spec, plugins)
    checked: dict[str, str] = {}
    hub: HubFolder | None = None
    location: HubLocation | None = None
    if split is not None:
        scheme, ref = split
        location = parse_hub_ref(ref) if scheme == HUB_SCHEME else schemes(plugins)[scheme].resolve(ref)
        hub = fetch_folder(location, spec)
        folder = hub.folder
        # every file of the folder against the cache's hash of it, before anything is read
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        checked = verified_files(files)
    elif remote.is_url(spec):  # a folder on object storage (s3://...): read from a local copy
        folder = remote.fetch_folder(spec, remote.staging_dir(spec, "in"))
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            known = ", ".join(f"{s}:" for s in sorted({HUB_SCHEME, *schemes(plugins)}))
            raise ConfigError(
                f"--sae {spec} is not a folder; give a checkpoint folder or a published SAE ({known} ...)"
            )
    facts = dict(location.facts) if location is not None else {}
    if all((folder / name).is_file() for name in SAELENS_LAYOUT):
        return ResolvedSource(spec, folder, None, hub, location, facts, checked)
    readers = [s for s in plugins.sae_sources if s.matches(folder, location)]
    if len(readers) > 1:
        raise DataFormatError(
            f"{folder}: its layout is read by several SAE sources ({', '.join(r.name for r in readers)}); "
            "exclude one (SCIRCUITS_LOAD_PLUGINS)"
        )
    if not readers:  # the SAELens layout, whose reader says what is missing
        return ResolvedSource(spec, folder, None, hub, location, facts, checked)
    return ResolvedSource(spec, folder, readers[0], hub, location, facts, checked)
