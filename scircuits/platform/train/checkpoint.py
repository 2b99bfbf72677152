"""SAE checkpoints: SAELens-compatible ``cfg.json`` + ``sae_weights.safetensors``, and our
``scircuits.json``. Also the training state that ``--resume`` needs. safetensors and JSON only.

Layout of a checkpoint directory::

    cfg.json                   SAELens SAEConfig.to_dict(): d_in, d_sae, architecture, dtype, device,
                               apply_b_dec_to_input, normalize_activations, reshape_activations,
                               metadata{...} (+ k for topk)
    sae_weights.safetensors    W_enc (d_in x d_sae), W_dec (d_sae x d_in), b_dec, and per architecture:
                               standard/topk: b_enc; jumprelu: b_enc, threshold; gated: b_gate, r_mag, b_mag
    scircuits.json             variant, hparams, train config, store provenance, metrics, config_hash,
                               complete
    training_state/            (while training / for --resume) state.safetensors + state.json,
                               published together by one directory rename (never a mixed pair)
    train_log.jsonl            one JSON object per log or eval step

Every file is written to a temporary name and renamed; ``scircuits.json`` is marked incomplete
before and rewritten complete after the other files, so a killed write never looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scircuits.files import atomic_path, write_atomic
from scircuits.platform.common.artifacts import (
    ArtifactError,
    Claimed,
    claim,
    describe_os_error,
    publish_dir,
    read_marker,
    recover_published,
    remove_orphans,
    write_marker,
)
from scircuits.platform.common.provenance import base_provenance
from scircuits.platform.contract import jsonvalues
from scircuits.platform.contract.errors import DataFormatError
from scircuits.platform.contract.saes import SAEVariant
from scircuits.platform.manager.plugin_set import PluginSet
from scircuits.platform.manager.registry import Registry
from scircuits.platform.train.published import resolve_source

if TYPE_CHECKING:
    import torch

    from scircuits.platform.contract.sae_module import SparseAutoencoder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
META_FILE = "scircuits.json"
STATE_DIR = "training_state"
STATE_WEIGHTS_FILE = f"{STATE_DIR}/state.safetensors"
STATE_META_FILE = f"{STATE_DIR}/state.json"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_FORMAT = "scircuits.sae"
CHECKPOINT_FORMAT_VERSION = 1
SAELENS_FORMAT_VERSION = "6.0.0"  # the cfg.json layout we write (SAELens >= 6: "metadata" table)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


# -- atomic file writes ------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, jsonvalues.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_tensors(
    tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors' save_file, whose I/O failures (a full disk) are raised as the OSError they are:
    safetensors wraps them in a SafetensorError that names the errno only in its text."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata
        )
    except SafetensorError as exc:
        Path(path).unlink(missing_ok=True)
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def write_tensors_atomic(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    with atomic_path(path) as tmp:
        save_tensors(tensors, tmp, metadata=metadata)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataFormatError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise DataFormatError(f"{path} is not UTF-8 text (a binary file?)") from None
    except RecursionError:
        raise DataFormatError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object")
    return data


# -- the checkpoint ------------------------------------------------------------------------------


def saelens_cfg(sae: SparseAutoencoder, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """cfg.json as SAELens >= 6 writes it (``SAEConfig.to_dict``), for ``sae``'s architecture."""
    extra = dict(extra or {})
    metadata = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        **extra.pop("metadata", {}),
    }
    cfg: dict[str, Any] = {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
        **sae.saelens_cfg(),
    }
    cfg.update(extra)
    return cfg


def save_sae(
    out_dir: str | Path,
    sae: SparseAutoencoder,
    *,
    cfg: Mapping[str, Any],
    scircuits_meta: Mapping[str, Any],
    complete: bool = True,
) -> Path:
    """Write ``sae`` (weights applying to raw activations) as a checkpoint in ``out_dir``.

    ``cfg`` adds to / overrides cfg.json fields (e.g. ``{"metadata": {"model_name": ...}}``);
    ``scircuits_meta`` goes into scircuits.json (train config, store provenance, metrics,
    config_hash). Returns the directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_FILE
    if meta_path.exists():
        try:
            previous = read_json(meta_path)
        except DataFormatError:  # damaged: it already does not read as complete
            previous = {}
        if previous.get("complete"):
            write_json_atomic(meta_path, {**previous, "complete": False})
    tensors = sae.saelens_tensors()
    try:
        write_tensors_atomic(out / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
        write_json_atomic(out / CFG_FILE, saelens_cfg(sae, cfg))
    except OSError as exc:
        raise ArtifactError(
            f"{out}: cannot write the checkpoint ({describe_os_error(exc)}); free space or choose "
            "another --out"
        ) from None
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "variant": sae.variant,
        "hparams": dict(sae.hparams),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        **base_provenance(),
        **dict(scircuits_meta),
        "complete": complete,
    }
    write_json_atomic(meta_path, meta)
    return out


def weights_damage(path: str | Path) -> str | None:
    """Why the safetensors file at ``path`` cannot be whole (None when it looks whole), read cheaply:
    its header parses and the file is exactly as long as the header's tensors say."""
    import struct

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                return f"its header claims {header_len} bytes but the file holds {size}"
            header = json.loads(fh.read(header_len))
        if not isinstance(header, dict):
            return "its header is not a JSON object"
        ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
    except OSError as exc:
        return exc.strerror or str(exc)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return "its header does not parse"
    expected = 8 + header_len + max(ends, default=0)
    if expected != size:
        return f"{size} bytes where its header says {expected}: truncated or damaged"
    return None


def is_complete(out_dir: str | Path, config_hash: str | None = None) -> bool:
    """A complete checkpoint of ``config_hash`` whose weights file is whole (:func:`weights_damage`)."""
    return marked_complete(out_dir, config_hash) and weights_damage(Path(out_dir) / WEIGHTS_FILE) is None


def marked_complete(out_dir: str | Path, config_hash: str | None = None) -> bool:
    """Whether scircuits.json says the checkpoint of ``config_hash`` is complete (its weights unread)."""
    meta_path = Path(out_dir) / META_FILE
    if not meta_path.is_file() or not (Path(out_dir) / WEIGHTS_FILE).is_file():
        return False
    try:
        meta = read_json(meta_path)
    except DataFormatError:
        return False
    return bool(meta.get("complete")) and (config_hash is None or meta.get("config_hash") == config_hash)


def claim_checkpoint(out_dir: str | Path, config_hash: str, *, force: bool = False) -> Claimed:
    """Make ``out_dir`` the home of the checkpoint of ``config_hash`` (artifacts.claim): a folder of
    the user's files is refused (moved aside with ``force``), a checkpoint of other settings is moved
    aside. A checkpoint written
    before markers existed is recognised by its scircuits.json."""
    out = Path(out_dir)
    if out.is_dir() and read_marker(out) is None and (out / META_FILE).is_file():
        try:
            meta = read_json(out / META_FILE)
        except DataFormatError:
            meta = {}
        if meta.get("format") == CHECKPOINT_FORMAT:
            write_marker(out, "sae", str(meta.get("config_hash")))
    return claim(out, "sae", config_hash, force=force)


def saelens_reader(variants: Registry[SAEVariant], architecture: str, where: Path) -> SAEVariant:
    """The registered variant that reads SAELens checkpoints of ``architecture``."""
    readers = [v for v in variants if v.reads_saelens_checkpoints and v.saelens_architecture == architecture]
    if len(readers) != 1:
        known = sorted({v.saelens_architecture for v in variants if v.reads_saelens_checkpoints})
        problem = "is not supported" if not readers else "is read by several variants"
        names = f" ({', '.join(v.name for v in readers)})" if readers else ""
        raise DataFormatError(
            f"{where}: architecture {architecture!r} {problem}{names} (known: {', '.join(known)})"
        )
    return readers[0]


def load_sae(
    path: str | Path, plugins: PluginSet, device: str = "cpu"
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load an SAE without unpickling anything, with the SAE variants of ``plugins``: a checkpoint
    folder written by ``save_sae`` or by SAELens, a folder in a layout a registered SAE source reads,
    or a published SAE (``hf:REPO/PATH``, ``saelens:RELEASE/SAE_ID``; ``published.resolve_source``).

    Returns the module (eval mode; ``encode``/``decode`` apply to raw activations) and ``info``:
    ``{"cfg": cfg.json, "meta": scircuits.json or {}, "variant": name, "path": str}``, plus for an
    SAE not written by scircuits ``"source"`` (what was read: spec, layout, hub repo, commit, file
    hashes), ``"hook_name"`` and ``"published_metrics"``.
    """
    source = resolve_source(str(path), plugins)
    root = source.folder
    if source.reader is None:
        cfg, meta, tensors, files = read_saelens_folder(root)
        hook_name = (
            (cfg.get("metadata") or {}).get("hook_name") if isinstance(cfg.get("metadata"), dict) else None
        )
        metrics: dict[str, Any] = {}
    else:
        published = source.reader.read(root, source.location)
        cfg, meta, tensors, files = published.cfg, {}, published.tensors, published.files
        hook_name, metrics = published.hook_name, dict(published.metrics)
    where = root / CFG_FILE if source.reader is None else root
    if meta.get("complete") is False:
        raise DataFormatError(
            f"{root}: an unfinished checkpoint (its {META_FILE} says complete: false: the training, or "
            "the writing of its files, was interrupted); train it again (`scircuits train`)"
        )
    sae, variant_name = build_sae(cfg, meta, tensors, where, plugins)
    sae.to(device).eval()
    info: dict[str, Any] = {"cfg": cfg, "meta": meta, "variant": variant_name, "path": str(root)}
    if not meta:
        # not written by scircuits: record what was read (hub files are checked against their hashes)
        info["source"] = source.provenance(files)
        info["hook_name"] = hook_name or source.facts.get("hook_name")
        info["published_metrics"] = {**source.facts.get("metrics", {}), **metrics}
    return sae, info


def folder_hint(root: Path) -> str:
    """What a folder without weights holds instead: an activation store, or SAE checkpoints inside it."""
    if (root / "zarr.json").is_file() or (root / "acts").is_dir():
        return ": it is an activation store (give it to `scircuits train --store`), not an SAE"
    inner = sorted(p.name for p in root.iterdir() if (p / WEIGHTS_FILE).is_file()) if root.is_dir() else []
    if inner:
        shown = ", ".join(inner[:4]) + (" ..." if len(inner) > 4 else "")
        return f"; it holds SAE checkpoints ({shown}): give one of them, e.g. {root / inner[0]}"
    return ""


def read_saelens_folder(
    root: Path,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor], list[Path]]:
    """(cfg.json, scircuits.json or {}, tensors, files read) of a folder in the SAELens layout."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path = root / WEIGHTS_FILE
    if not weights_path.is_file():
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (
            (
                f"; found {', '.join(pickles)}, which would need unpickling: scircuits loads only "
                "safetensors (convert it with safetensors.torch.save_file)"
            )
            if pickles
            else folder_hint(root)
        )
        raise DataFormatError(f"SAE checkpoint {root} has no {WEIGHTS_FILE}{hint}")
    cfg = read_json(root / CFG_FILE)
    meta = read_json(root / META_FILE) if (root / META_FILE).is_file() else {}
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise DataFormatError(
            f"{weights_path}: not a readable safetensors file ({str(exc).splitlines()[0]}); train it again "
            "or restore the file"
        ) from None
    return cfg, meta, tensors, [root / CFG_FILE, weights_path]


def build_sae(
    cfg: dict[str, Any],
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    where: Path,
    plugins: PluginSet,
) -> tuple[SparseAutoencoder, str]:
    """The module of ``plugins``' variant for a SAELens ``cfg`` (scircuits.json's variant when given)
    holding ``tensors`` (SAELens names)."""
    import torch

    variants = plugins.saes
    architecture = cfg.get("architecture", "standard")
    if meta.get("variant"):
        variant = variants.get(meta["variant"])
    else:
        variant = saelens_reader(variants, architecture, where)
    normalize = cfg.get("normalize_activations") or "none"
    if normalize != "none":
        raise DataFormatError(
            f"{where}: normalize_activations={normalize!r} is not supported; fold the "
            "normalisation into the weights (SAELens: fold_activation_norm_scaling_factor) and save again"
        )
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise DataFormatError(f"{where}: {key!r} must be an integer, got {cfg.get(key)!r}")
    hparams = dict(meta.get("hparams") or {})
    if not meta:
        hparams.update(variant.hparams_from_saelens_cfg(cfg))
    k = hparams.get("k")
    if isinstance(k, int) and not 0 < k <= cfg["d_sae"]:
        raise DataFormatError(f"{where}: k = {k} does not fit the SAE's {cfg['d_sae']} latents (d_sae)")
    sae = variant.make(cfg["d_in"], cfg["d_sae"], hparams)
    try:
        sae.load_saelens_tensors(tensors)
    except ValueError as exc:
        raise DataFormatError(
            f"the weights do not match {where} (d_in {cfg['d_in']}, d_sae {cfg['d_sae']}): {exc}"
        ) from None
    if cfg.get("apply_b_dec_to_input") is False:
        # Our modules always subtract b_dec before encoding; compensate through the encoder biases.
        with torch.no_grad():
            sae.absorb_input_shift(sae.b_dec @ sae.W_enc)
    return sae, variant.name


# -- training state (for --resume) ------------------------------------------------------------


def save_training_state(
    out_dir: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Write the tensors and their metadata into a staging folder and publish it as
    ``training_state/`` by one rename, so a kill at any point leaves the old state or the new one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".{STATE_DIR}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir()
        save_tensors(tensors, staging / Path(STATE_WEIGHTS_FILE).name)
        (staging / Path(STATE_META_FILE).name).write_text(
            json.dumps({**base_provenance(), **dict(meta)}, indent=2, sort_keys=True, default=str) + "\n"
        )
        publish_dir(staging, out / STATE_DIR)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArtifactError(
            f"{out}: cannot save the training state ({describe_os_error(exc)}); the last saved state is "
            "kept: free space or fix the folder, then run again with --resume"
        ) from None


def remove_training_state(out_dir: str | Path) -> None:
    shutil.rmtree(Path(out_dir) / STATE_DIR, ignore_errors=True)


def has_training_state(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    recover_published(out / STATE_DIR)
    return (out / STATE_DIR).is_dir()


def load_training_state(out_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out = Path(out_dir)
    remove_orphans(out)
    recover_published(out / STATE_DIR)
    if not (out / STATE_WEIGHTS_FILE).is_file() or not (out / STATE_META_FILE).is_file():
        return None
    try:
        tensors = load_file(str(out / STATE_WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise DataFormatError(
            f"{out / STATE_WEIGHTS_FILE}: unreadable training state ({exc}); drop --resume (add --force) "
            "to start over"
        ) from None
    try:
        meta = read_json(out / STATE_META_FILE)
    except DataFormatError as exc:
        raise DataFormatError(
            f"{exc}: unreadable training state; drop --resume (add --force) to start over"
        ) from None
    return tensors, meta
