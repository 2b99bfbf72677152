"""A finished run's model, loaded again by a later command (`dashboard`, `compare`): from where the run
recorded it, or from a folder given with ``--model-path`` (the run's weights folder moved), whose
weights must be the ones the run recorded.

The run records where its weights were (``model_path``, or the folder after the prefix of a model
named ``PREFIX:DIR``, made absolute) and what they were (the loaded model's ``revision``: a content
hash of the weights for a local folder). A folder given instead is checked against that record before
any work (:func:`weights_identity`, the hash the built-in loaders record) and once loaded
(:func:`check_loaded`, the adapter's own ``revision``), as ``circuit`` checks its SAEs' training
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.provenance import file_sha256
from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.contract.hf_loading import weights_revision
from scircuits.store.remote import is_url

log = get_logger(__name__)

REMEDY = "--model-path DIR"


@dataclass(frozen=True)
class RunModel:
    """How to load a run's model now: the adapter's name, the folder (None: where the adapter finds
    it), the weights' identity the run recorded, and whether the folder was given (``--model-path``)."""

    model: str
    model_path: str | None
    revision: str | None
    given: bool = False


def recorded_folder(model: str, model_path: str | None) -> Path | None:
    """The local folder the run read its weights from: its ``model_path``, else the absolute folder
    after the prefix of a model named ``PREFIX:DIR``; None for a model found by name (hub, package)."""
    if model_path:
        return None if is_url(model_path) else Path(model_path).expanduser()
    prefix, colon, rest = model.partition(":")
    if colon and prefix and rest and not is_url(model) and Path(rest).is_absolute():
        return Path(rest)
    return None


def recorded_revision(results: dict[str, Any]) -> str | None:
    """The identity of the weights a study ran on (results.json's provenance, else its store's)."""
    provenance = results.get("provenance") if isinstance(results.get("provenance"), dict) else {}
    for record in (provenance.get("model"), (provenance.get("store") or {})):
        if isinstance(record, dict):
            revision = record.get("revision") or record.get("model_revision")
            if isinstance(revision, str) and revision:
                return revision
    return None


def weights_identity(adapter: Any, folder: Path) -> str | None:
    """The ``revision`` a load of ``folder`` would record, known before loading: the snapshot commit
    the adapter reports, else the sha256 of a single weights file, else of the folder's weights files
    (as the built-in loaders record it); None when the adapter does not say where it would read."""
    try:
        source = adapter.check_weights(str(folder))
    except ScircuitsError:
        raise
    except Exception:
        return None
    if getattr(source, "revision", None):
        return str(source.revision)
    if not getattr(source, "local", False):
        return None
    location = Path(source.location)
    try:
        if location.is_file():
            return f"sha256:{file_sha256(location)}"
        return weights_revision(location) if location.is_dir() else None
    except OSError:
        return None


def _comparable(a: str, b: str) -> bool:
    """Both content hashes of one kind (a hub commit may hold the same weights as a hash: not compared)."""
    kind_a, kind_b = a.split(":", 1)[0], b.split(":", 1)[0]
    return kind_a == kind_b and kind_a.startswith("sha256")


def run_model(
    plugins: Any,
    run: str | Path,
    model: str,
    model_path: str | None,
    revision: str | None,
    given: Sequence[str | Path] = (),
    *,
    strict: bool = True,
) -> RunModel:
    """How to load the model of ``run`` (recorded as ``model`` / ``model_path`` / ``revision``), with
    the ``--model-path`` folders ``given``: the one holding the recorded weights is used; one holding
    other weights is refused in one line (``strict``: always; else only when the recorded folder is
    gone, a folder that is not this run's being another run's). A recorded folder that is gone with
    none given is refused in one line naming ``--model-path``."""
    folder = recorded_folder(model, model_path)
    missing = folder is not None and not folder.exists()
    if given:
        chosen = _choose(plugins, run, model, model_path, missing, revision, given, strict)
        if chosen is not None:
            name = model
            if model_path is None and missing:  # PREFIX:DIR names the adapter: DIR is now this one
                name = f"{model.partition(':')[0]}:{chosen.resolve()}"
            return RunModel(name, str(chosen), revision, given=True)
    if missing:
        raise ConfigError(
            f"{run}: the model's weights folder {folder}, recorded by the run, is not found (moved or "
            f"removed): give the folder that holds those weights now with {REMEDY} (its weights are "
            "checked against the run's record)"
        )
    return RunModel(model, model_path, revision)


def _choose(
    plugins: Any,
    run: str | Path,
    model: str,
    model_path: str | None,
    missing: bool,
    revision: str | None,
    given: Sequence[str | Path],
    strict: bool,
) -> Path | None:
    folders = [Path(g).expanduser() for g in given]
    for candidate in folders:
        if not candidate.is_dir():
            raise ConfigError(
                f"--model-path {candidate} is not a folder: give the folder of the model's weights"
            )
    prefix, renamed = model.partition(":")[0], model_path is None and missing
    identities = {}
    for candidate in folders:  # a model named by its (gone) folder: the adapter named by this one
        name = f"{prefix}:{candidate.resolve()}" if renamed else model
        identities[candidate] = weights_identity(plugins.models.get(name), candidate)
    if revision is None:
        if len(folders) == 1 and (strict or missing):
            log.warning(
                f"warning: {run} records no identity of its model's weights: --model-path {folders[0]} is "
                "used unchecked"
            )
            return folders[0]
        if missing:
            raise ConfigError(
                f"{run} records no identity of its model's weights, so which --model-path folder holds "
                "them cannot be told: give only that one"
            )
        return None
    for candidate, identity in identities.items():
        if identity == revision:
            return candidate
    unknown = [c for c, i in identities.items() if i is None or not _comparable(i, revision)]
    if len(folders) == 1 and unknown and (strict or missing):
        return folders[0]  # checked once loaded (check_loaded)
    if (strict or missing) and len(folders) == 1:
        raise ConfigError(
            f"--model-path {folders[0]} holds other weights ({str(identities[folders[0]])[:24]}...) than the "
            f"run {run} recorded ({revision[:24]}...): give the folder of the weights the run used"
        )
    if strict or missing:
        found = "; ".join(f"{c}: {(identities[c] or 'unknown')[:24]}..." for c in folders)
        raise ConfigError(
            f"--model-path: no folder given holds the weights {run} recorded ({revision[:24]}...; {found}): "
            "give the folder of the weights the run used"
        )
    return None


def check_loaded(source: RunModel, loaded_revision: str | None, run: str | Path) -> None:
    """Once loaded from a given folder: ConfigError when its weights are not the recorded ones (both
    content hashes of one kind), a warning when they cannot be compared (a hub commit)."""
    recorded = source.revision
    if not source.given or not recorded or not loaded_revision or loaded_revision == recorded:
        return
    if _comparable(loaded_revision, recorded):
        raise ConfigError(
            f"--model-path {source.model_path} holds other weights ({loaded_revision[:24]}...) than the run "
            f"{run} recorded ({recorded[:24]}...): give the folder of the weights the run used"
        )
    log.warning(
        f"warning: {run} ran on revision {recorded} of its model; --model-path {source.model_path} is at "
        f"{loaded_revision}"
    )
