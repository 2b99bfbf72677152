"""A collection: several sites and/or shards of one collect command, joined by a manifest.

    out/manifest.json                        which sites and how many shards, and the collection's id
    out/<site><layer>/shard-<r>-of-<n>/      one format-v2 store per site and rank

Every shard is an ordinary store whose identity also holds the collection's id and its rank; the
reader joins a site's shards, in rank order, into one logical store (``ActivationStore(out)`` when
there is one site, ``ActivationStore(out / "resid6")`` or ``ActivationStore(out, site="resid6")``).
A shard whose id is not the manifest's, or a shard folder the manifest does not list, is refused,
never merged.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from scircuits.files import write_atomic
from scircuits.store.errors import NotAStoreError, StoreMismatchError
from scircuits.store.remote import RemotePath, as_location
from scircuits.version import __version__

MANIFEST = "manifest.json"
COLLECTION_FORMAT = "scircuits.collection"
COLLECTION_VERSION = 1
SHARD_PREFIX = "shard-"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: str
    format_version: int
    collection_id: str
    world_size: int
    sites: list[str]
    created: str = ""
    scircuits_version: str = ""
    # the collecting command's settings (what its id hashes), so that a mismatch can name them
    identity: dict[str, Any] | None = None


def site_key(layer: int, site: str) -> str:
    return f"{site}{layer}"


def shard_name(rank: int, world_size: int) -> str:
    return f"{SHARD_PREFIX}{rank:05d}-of-{world_size:05d}"


def shard_path(root: str | os.PathLike[str], site: str, rank: int, world_size: int) -> Any:
    """The shard's folder: a ``Path``, or a :class:`RemotePath` when ``root`` is a URL."""
    return as_location(root) / site / shard_name(rank, world_size)


def read_manifest(root: Any) -> Manifest:
    root = as_location(root)
    try:
        data = json.loads((root / MANIFEST).read_text())
        manifest = Manifest(**data)
    except (OSError, ValueError, TypeError, ValidationError) as exc:
        raise NotAStoreError(
            f"{root / MANIFEST} cannot be read ({str(exc).splitlines()[0]}); the collection is damaged: "
            "move it away and collect again"
        ) from None
    if manifest.format != COLLECTION_FORMAT or manifest.format_version != COLLECTION_VERSION:
        raise NotAStoreError(
            f"{root / MANIFEST} is not a scircuits collection manifest of version {COLLECTION_VERSION} "
            f"(format {manifest.format!r}, version {manifest.format_version!r})"
        )
    return manifest


def write_manifest(
    root: Any,
    collection_id: str,
    world_size: int,
    sites: list[str],
    identity: dict[str, Any] | None = None,
) -> Manifest:
    """Create the manifest, or check that the one there is this collection's (else StoreMismatchError,
    naming the settings that differ)."""
    root = as_location(root)
    if (root / MANIFEST).exists():
        manifest = read_manifest(root)
        found = (manifest.collection_id, manifest.world_size, manifest.sites)
        if found == (collection_id, world_size, sites):
            return manifest
        # a manifest whose collection never wrote a store (it failed first) is replaced
        if any((root / site).exists() for site in manifest.sites):
            raise StoreMismatchError(_mismatch(root, manifest, world_size, sites, identity))
    manifest = Manifest(
        format=COLLECTION_FORMAT,
        format_version=COLLECTION_VERSION,
        collection_id=collection_id,
        world_size=world_size,
        sites=sites,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        scircuits_version=__version__,
        identity=identity,
    )
    text = json.dumps(manifest.model_dump(), indent=2) + "\n"
    if isinstance(root, RemotePath):  # one PUT: the object is whole or absent
        (root / MANIFEST).write_text(text)
        return manifest
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / MANIFEST, text)
    return manifest


def _mismatch(
    root: Any, manifest: Manifest, world_size: int, sites: list[str], identity: dict[str, Any] | None
) -> str:
    """One line: what differs between the collection at ``root`` and the one asked for, and what to do."""
    differences = []
    if manifest.identity is not None and identity is not None:
        for name in sorted(manifest.identity.keys() | identity.keys()):
            was, now = manifest.identity.get(name), identity.get(name)
            if was != now:
                differences.append(f"{name} {_short(was)} -> {_short(now)}")
    if manifest.sites != sites:
        differences.append(f"sites {','.join(manifest.sites)} -> {','.join(sites)}")
    if manifest.world_size != world_size:
        differences.append(f"processes {manifest.world_size} -> {world_size}")
    if not differences:  # a manifest from before identities were recorded
        differences.append(f"id {manifest.collection_id}")
    advice = "Write to another --out, or pass --force to move it aside."
    if differences == [f"processes {manifest.world_size} -> {world_size}"]:
        advice = (
            f"Collect it with --nproc {manifest.world_size} to continue it (its shards are per process), "
            "write to another --out, or pass --force to move it aside."
        )
    return f"{root} holds a different collection ({'; '.join(differences)}). {advice}"


def _short(value: Any) -> str:
    text = "unset" if value is None else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_collection(path: str | os.PathLike[str]) -> bool:
    return bool((as_location(path) / MANIFEST).is_file())


def resolve_parts(path: str | os.PathLike[str], site: str | None = None) -> tuple[list[str], Manifest | None]:
    """The store folders that make up the logical store at ``path`` (one for a plain store), and the
    manifest when ``path`` is a collection or one of its sites."""
    text = os.fspath(path)
    local = as_location(text)  # a Path, or a RemotePath for a URL
    if (local / "zarr.json").exists() and site is None:
        return [text], None
    if (local / MANIFEST).is_file():
        root = local
    elif (local.parent / MANIFEST).is_file() and site is None:
        root, site = local.parent, local.name
    else:
        return [text], None
    manifest = read_manifest(root)
    if site is None:
        if len(manifest.sites) != 1:
            raise NotAStoreError(
                f"{root} is a collection of {len(manifest.sites)} sites ({', '.join(manifest.sites)}); "
                f"name one: {root / manifest.sites[0]}"
            )
        site = manifest.sites[0]
    if site not in manifest.sites:
        raise NotAStoreError(
            f"{root} has no site {site!r}; its sites: {', '.join(manifest.sites)} "
            f"(e.g. {root / manifest.sites[0]})"
        )
    folder = root / site
    listed = [shard_name(rank, manifest.world_size) for rank in range(manifest.world_size)]
    if folder.is_dir():
        strangers = sorted(
            p.name for p in folder.iterdir() if p.name.startswith(SHARD_PREFIX) and p.name not in listed
        )
        if strangers:
            raise StoreMismatchError(
                f"{folder} holds shard(s) {', '.join(strangers)} that are not part of this collection "
                f"({manifest.world_size} shard(s), id {manifest.collection_id}); they are refused, never "
                "merged: move them away"
            )
    missing = [name for name in listed if not (folder / name / "zarr.json").exists()]
    if missing:
        raise NotAStoreError(
            f"{folder}: shard(s) {', '.join(missing)} of {manifest.world_size} are missing; run the same "
            "collect command again to finish the collection"
        )
    return [str(folder / name) for name in listed], manifest


def check_shard(path: str, attrs: dict[str, Any], manifest: Manifest, rank: int) -> None:
    """A shard belongs to the manifest's collection, at its rank."""
    found = (attrs.get("collection_id"), attrs.get("shard_rank"), attrs.get("world_size"))
    expected = (manifest.collection_id, rank, manifest.world_size)
    if found != expected:
        raise StoreMismatchError(
            f"{path} is not shard {rank} of {manifest.world_size} of this collection (it records "
            f"collection {found[0]!r}, rank {found[1]!r} of {found[2]!r}; the manifest says "
            f"{manifest.collection_id!r}); a shard of another collection is refused, never merged: "
            "move it away and run the collect command again"
        )
