"""Several SAEs from one pass over a collection: the sites of one `scircuits collect --layers/--sites`.

The sites of a collection hold the same tokens in the same order, in blocks of the same rows, so one
training step of every site's SAE reads the same rows of each site's store (the same token indices,
while the sites' token exclusions agree). Each SAE is trained by its own ``fit_steps`` generator,
stepped in turn: its own config, optimiser, seed-derived initialisation and batch order, AuxK state,
input scale, token exclusion, log, checkpoint and resumable state. Each generator runs with its own
torch random state (swapped in around every step), so each SAE is bit for bit the SAE
``scircuits train --store COLLECTION/<site>`` trains alone with the same seed.

Layout: ``OUT/<hook name>/`` per SAE (an ordinary checkpoint folder) and ``OUT/index.json`` listing
them (docs/formats.md, "A set of SAEs from one collection").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scircuits.platform.common.artifacts import ArtifactError, FolderLock, check_out_apart, read_marker
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.progress import progress
from scircuits.platform.common.remote import is_url, join_path
from scircuits.platform.config import TrainConfig
from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.contract.models import tl_hook_name
from scircuits.platform.manager.plugin_set import PluginSet
from scircuits.platform.train import checkpoint as ckpt
from scircuits.platform.train.distributed import from_environment
from scircuits.platform.train.training import (
    _claim,
    _resolved,
    check_inputs,
    fit_steps,
    refuse_unresumed_state,
)
from scircuits.store import ActivationStore
from scircuits.store.collection import is_collection, read_manifest
from scircuits.version import __version__

log = get_logger(__name__)

INDEX_FILE = "index.json"
INDEX_FORMAT = "scircuits.sae_set"
INDEX_VERSION = 1
_SITE_KEY = re.compile(r"^([a-z_]+?)(\d+)$")


@dataclass(frozen=True)
class SiteStore:
    """One site of a collection, as training reads it."""

    key: str  # the collection's name of the site, e.g. "resid6"
    path: str  # the store to train on: COLLECTION/<key>
    layer: int
    site: str  # resid, mlp, attn
    n_tokens: int
    collection: str
    collection_id: str

    @property
    def hook_name(self) -> str:
        return tl_hook_name(self.layer, self.site)


def _wanted(text: str | None, flag: str = "--sites") -> list[str] | None:
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"{flag} {text!r}: give one or more, comma-separated")
    if len(set(parts)) < len(parts):
        raise ConfigError(f"{flag} {text}: give each once")
    return parts


def _layers(text: str | None) -> list[int] | None:
    parts = _wanted(text, "--layers")
    if parts is None:
        return None
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--layers: give comma-separated block numbers, e.g. 3,6 (not {text!r})") from None


def site_stores(stores: list[str], sites: str | None = None, layers: str | None = None) -> list[str]:
    """The stores to train on: a collection of several sites stands for its sites (those ``sites``
    and ``layers`` choose: site kinds such as ``resid,mlp`` or site names such as ``resid6``, and
    block numbers); any other store for itself."""
    kinds, blocks = _wanted(sites), _layers(layers)
    expanded: list[str] = []
    chose = False
    for store in stores:
        if not is_collection(store):
            expanded.append(store)
            continue
        manifest = read_manifest(store)
        if len(manifest.sites) == 1 and kinds is None and blocks is None:
            expanded.append(store)
            continue
        chose = True
        parsed = {key: _SITE_KEY.match(key) for key in manifest.sites}
        chosen = [
            key
            for key, match in parsed.items()
            if (kinds is None or key in kinds or (match is not None and match.group(1) in kinds))
            and (blocks is None or (match is not None and int(match.group(2)) in blocks))
        ]
        site_names = set(manifest.sites) | {m.group(1) for m in parsed.values() if m}
        for name, what, given, known in (
            ("--sites", "site", kinds or [], site_names),
            ("--layers", "layer", [str(b) for b in blocks or []], {m.group(2) for m in parsed.values() if m}),
        ):
            unknown = [g for g in given if g not in known]
            if unknown:
                raise ConfigError(
                    f"{name} {','.join(given)}: {store} has no {what} {', '.join(unknown)}; its sites: "
                    f"{', '.join(manifest.sites)}"
                )
        if not chosen:
            raise ConfigError(
                f"--sites/--layers choose none of {store}'s sites ({', '.join(manifest.sites)}); "
                "name some of them"
            )
        expanded.extend(join_path(store.rstrip("/"), key) for key in chosen)
    if (kinds is not None or blocks is not None) and not chose:
        raise ConfigError(
            "--sites/--layers choose sites of a collection (the folder of `scircuits collect --layers ... "
            f"--sites ...`); {', '.join(stores)} is not one: leave them out"
        )
    return expanded


def one_collection(stores: list[str]) -> list[SiteStore] | None:
    """The stores as sites of one collection (same id, same token count), or None when they are not
    all sites of one collection (they are then trained one after another, as before)."""
    opened = [ActivationStore(path) for path in stores]
    found = [store.collection_site for store in opened]
    if len(stores) < 2 or any(f is None for f in found):
        return None
    if len({(f["collection"], f["collection_id"]) for f in found if f}) != 1:
        return None
    counts = {f["site"]: store.n_tokens for f, store in zip(found, opened, strict=True) if f}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{site} {n}" for site, n in counts.items())
        raise ConfigError(
            f"the sites of {found[0]['collection'] if found[0] else stores[0]} hold different token counts "
            f"({listed}): the collection is unfinished; run the same collect command again to finish it"
        )
    result = []
    for path, store, where in zip(stores, opened, found, strict=True):
        assert where is not None
        layer, site = store.attrs.get("layer"), store.attrs.get("site")
        if layer is None or not site:
            raise ConfigError(f"{path} records no layer and site; it cannot name its SAE's folder")
        result.append(
            SiteStore(
                where["site"],
                path,
                int(layer),
                str(site),
                store.n_tokens,
                where["collection"],
                where["collection_id"],
            )
        )
    if len({s.key for s in result}) != len(result):
        raise ConfigError("the same site is given twice: give each --store once")
    return result


def check_set_folder(out: Path, stores: list[str]) -> None:
    """``out`` may hold the SAEs of a collection's sites: new or empty, or an earlier such folder (its
    index.json is ours); not a folder the user wrote, an SAE checkpoint or a store, and not the
    collection read or anything in it. ArtifactError in one line, before anything is written."""
    check_out_apart(out, read=[Path(s) for s in stores if not is_url(s)])
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"--out {out} is a file, not a folder: choose another --out")
    marker = read_marker(out)
    if marker is not None:
        raise ArtifactError(
            f"--out {out} holds a {marker.kind} artifact, not a folder of per-site SAEs: choose another --out"
        )
    foreign = [p.name for p in sorted(out.iterdir()) if not p.name.startswith(".") and not _site_entry(p)]
    if foreign:
        shown = ", ".join(foreign[:3])
        raise ArtifactError(
            f"--out {out} holds files scircuits did not write ({shown}...): it will not write the sites' "
            "SAEs among them; choose another --out"
        )


def _site_entry(path: Path) -> bool:
    """What a folder of site SAEs holds: our index, SAE checkpoints, and folders moved aside."""
    if path.name == INDEX_FILE:
        try:
            return bool(ckpt.read_json(path).get("format") == INDEX_FORMAT)
        except (ScircuitsError, AttributeError):
            return False
    if not path.is_dir():
        return False
    marker = read_marker(path)
    return (
        (marker is not None and marker.kind == "sae")
        or (path / ckpt.CFG_FILE).is_file()
        or ".superseded-" in path.name
    )


def write_index(out: Path, sites: list[SiteStore], configs: list[TrainConfig], plugins: PluginSet) -> Path:
    """``OUT/index.json``: the SAEs of this folder (entries of an earlier run at other sites kept)."""
    configs = [_resolved(c, plugins) for c in configs]
    path = out / INDEX_FILE
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            for entry in ckpt.read_json(path).get("saes", []):
                entries[str(entry["path"])] = entry
        except (ScircuitsError, KeyError, TypeError, AttributeError):  # unreadable: rewritten
            entries = {}
    for site, config in zip(sites, configs, strict=True):
        folder = Path(config.out).name
        entries[folder] = {
            "path": folder,
            "site": site.key,
            "layer": site.layer,
            "site_kind": site.site,
            "hook_name": site.hook_name,
            "sae": config.sae,
            "store": site.path,
        }
    first = sites[0]
    index = {
        "format": INDEX_FORMAT,
        "format_version": INDEX_VERSION,
        "collection": first.collection,
        "collection_id": first.collection_id,
        "scircuits_version": __version__,
        "saes": sorted(entries.values(), key=lambda e: (e.get("layer", 0), str(e.get("path")))),
    }
    if path.is_file() and _read_or_none(path) == index:  # unchanged: left as it is (an --out URL
        return path  # then keeps its generation)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.write_json_atomic(path, index)
    return path


def _read_or_none(path: Path) -> Any:
    try:
        return ckpt.read_json(path)
    except ScircuitsError:
        return None


@dataclass
class _RandomState:
    """A torch random state of one SAE, swapped in while it steps (CPU, and CUDA once initialised)."""

    cpu: torch.Tensor | None = None
    cuda: list[torch.Tensor] | None = field(default=None)

    @contextmanager
    def active(self) -> Iterator[None]:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        outer_cpu, outer_cuda = torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None
        if self.cpu is not None:
            torch.set_rng_state(self.cpu)
        if self.cuda is not None and cuda:
            torch.cuda.set_rng_state_all(self.cuda)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            torch.set_rng_state(outer_cpu)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                self.cuda = torch.cuda.get_rng_state_all()
                if outer_cuda is not None:
                    torch.cuda.set_rng_state_all(outer_cuda)


def train_joint(
    configs: list[TrainConfig],
    plugins: PluginSet,
    *,
    stop_after_steps: int | None = None,
    show_progress: bool = True,
) -> list[Path]:
    """Train one SAE per config (the sites of one collection) in one pass; returns their folders.

    Every folder is locked and claimed before any trains: a complete checkpoint of the same config is
    kept and skipped, a refusal (e.g. an unresumed training state without --resume) stops the run
    before any SAE steps. ``stop_after_steps``: as in ``train`` (each SAE stops there, resumable).
    """
    configs = [_resolved(c, plugins) for c in configs]
    outs = [Path(c.out) for c in configs]
    if len(set(outs)) != len(outs):
        raise ConfigError("several SAEs would be written to the same --out directory")
    for config in configs:
        if config.nproc != 1 or "," in config.device:
            raise ConfigError("one pass over several sites runs in one process on one device")
    for config in configs:  # every store and setting checked before any folder is claimed
        check_inputs(config, plugins)
    with ExitStack() as held:
        for config in configs:  # every folder locked and checked before any is claimed
            held.enter_context(FolderLock(Path(config.out), "SAE checkpoint"))
            refuse_unresumed_state(config)
        pending = []
        for config in configs:
            if not _claim(config):
                pending.append(config)
        members = [
            (
                c,
                fit_steps(
                    c.model_copy(update={"progress": False}),
                    plugins.saes.get(c.sae),
                    from_environment(c.device),
                    stop_after_steps,
                ),
                _RandomState(),
            )
            for c in pending
        ]
        if members:
            log.info(f"[train] {len(members)} SAE(s) in one pass: {', '.join(c.out for c, _, _ in members)}")
        active = list(members)
        shown = show_progress and bool(members)
        with progress(f"train {len(members)} SAEs", enabled=shown, unit="steps") as bar:
            while active:
                for member in list(active):
                    config, steps, random_state = member
                    with random_state.active():
                        step = next(steps, None)
                    if step is None:
                        active.remove(member)
                bar.advance(1)
    return outs


__all__ = [
    "INDEX_FILE",
    "SiteStore",
    "check_set_folder",
    "one_collection",
    "site_stores",
    "train_joint",
    "write_index",
]
