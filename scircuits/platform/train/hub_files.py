"""A folder of a Hugging Face hub repository, through huggingface_hub's cache, checked file by file.

The hub cache names each file's blob by its hash: the sha256 of an LFS file (weights), the git blob
sha1 of a small one (JSON). ``verified_files`` recomputes both, with the size, so a truncated or
damaged download is refused instead of loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.provenance import file_sha256
from scircuits.platform.contract.errors import ConfigError, DataFormatError
from scircuits.platform.contract.hf_loading import is_hf_offline
from scircuits.platform.contract.hub_datasets import hub_cache
from scircuits.platform.contract.sae_sources import HubLocation

log = get_logger(__name__)
SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubFolder:
    """A hub folder in the local cache: where it lies and the commit it was read at."""

    folder: Path
    commit: str
    location: HubLocation


def parse_hub_ref(ref: str, option: str = "--sae") -> HubLocation:
    """``ORG/NAME[/PATH][@REVISION]`` as a HubLocation."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    body, _, revision = ref.partition("@")
    parts = [p for p in body.strip("/").split("/") if p]
    example = "e.g. hf:ORG/NAME/layer_12 or hf:ORG/NAME@REVISION"
    if len(parts) < 2:
        raise ConfigError(
            f"{option} hf:{ref}: name a hub repository and optionally a folder in it, {example}"
        )
    if any(part in (".", "..") for part in parts):  # the folder must lie inside the repository
        raise ConfigError(f"{option} hf:{ref}: a hub folder has no '.' or '..' parts; {example}")
    repo_id = "/".join(parts[:2])
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(
            f"{option} hf:{ref}: {repo_id!r} is not a Hugging Face repository id (ORG/NAME of letters, "
            f"digits, '-', '_' and '.'); {example}"
        ) from None
    return HubLocation(repo_id, "/".join(parts[2:]), revision or None)


def offline_help(location: HubLocation, spec: str, reason: str) -> str:
    return (
        f"--sae {spec}: {location.describe()} {reason}; the Hugging Face cache {hub_cache()} does not hold "
        "it and HF_HUB_OFFLINE=1 forbids downloading it: run once with HF_HUB_OFFLINE unset where the hub "
        "is reachable, set HF_HUB_CACHE to a cache that holds it, or give the checkpoint's local folder "
        "(--sae DIR)"
    )


def fetch_folder(location: HubLocation, spec: str) -> HubFolder:
    """The folder ``location`` in the local cache, downloading what is missing unless offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = is_hf_offline()
    patterns = [f"{location.path}/*"] if location.path else None
    try:
        snapshot = snapshot_download(
            location.repo_id,
            revision=location.revision,
            allow_patterns=patterns,
            cache_dir=hub_cache(),
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        if offline:
            raise ConfigError(offline_help(location, spec, "is not downloaded")) from None
        raise ConfigError(
            f"--sae {spec}: {location.describe()} cannot be downloaded now (the hub is unreachable) and "
            f"the cache {hub_cache()} does not hold it; connect, or give a local folder (--sae DIR)"
        ) from None
    except GatedRepoError:
        raise ConfigError(
            f"--sae {spec}: {location.repo_id} is gated: accept its licence on the hub and set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(
            f"--sae {spec}: {location.repo_id} has no revision {location.revision!r}; give a branch, tag "
            "or commit it has"
        ) from None
    except RepositoryNotFoundError:
        raise ConfigError(
            f"--sae {spec}: the hub has no repository {location.repo_id} (or it is private: set HF_TOKEN)"
        ) from None
    except OSError as exc:  # connection failures, a full disk
        raise ConfigError(
            f"--sae {spec}: {location.describe()} could not be fetched ({type(exc).__name__}: {exc}); "
            "try again, or give a local folder (--sae DIR)"
        ) from None
    root = Path(snapshot)
    folder = root / location.path if location.path else root
    if not folder.is_dir() or not any(folder.iterdir()):
        why = "is not in the cache" if offline else "has no such folder"
        if offline:
            raise ConfigError(offline_help(location, spec, why))
        raise ConfigError(f"--sae {spec}: {location.repo_id} {why} {location.path!r}")
    log.debug(f"[hub] {location.describe()}: commit {root.name}, read from {folder}")
    return HubFolder(folder, root.name, location)


def git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_cached_file(path: Path) -> str | None:
    """The file's hash as the hub cache names its blob, checked; None for a file outside the cache's
    blob store (a local folder). DataFormatError for a blob whose content does not match its name."""
    if not path.is_symlink():
        return None
    blob = Path(os.path.realpath(path))
    if blob.parent.name != "blobs":
        return None
    if not blob.is_file():
        raise DataFormatError(
            f"{path}: its cached blob {blob} is missing; delete the snapshot and download it again"
        )
    name = blob.name
    if SHA256.match(name):
        actual, kind = file_sha256(blob), "sha256"
    elif GIT_SHA1.match(name):
        actual, kind = git_blob_sha1(blob), "git sha1"
    else:
        return None
    if actual != name:
        raise DataFormatError(
            f"{path}: the cached file is damaged or truncated ({blob.stat().st_size} bytes, {kind} "
            f"{actual[:12]}..., the hub's is {name[:12]}...); it was not used: delete {blob} and download "
            "it again"
        )
    return f"{kind}:{name}"


def verified_files(paths: list[Path]) -> dict[str, str]:
    """``{path: hash}`` of ``paths``, each checked against the cache's record of it (a file outside
    the cache's blob store: its sha256)."""
    out: dict[str, str] = {}
    for path in paths:
        digest = verify_cached_file(path)
        out[str(path)] = digest if digest is not None else f"sha256:{file_sha256(path)}"
    return out
