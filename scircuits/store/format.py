"""Format v1 of the activation store: names, attributes, identity, layout and codec choices.

A store is a Zarr v3 group holding the arrays ``acts`` (n_tokens x d_model, float16 or float32,
chunked by rows), ``token_ids``, ``example_ids`` and ``positions`` (n_tokens, int32), and the group
attributes listed in :data:`REQUIRED_ATTRS`. Other tools may read and write it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from scircuits.errors import ConfigError

FORMAT = "scircuits.activations"
FORMAT_VERSION = 1

ACTS = "acts"
ID_ARRAYS = ("token_ids", "example_ids", "positions")
ARRAYS = (ACTS, *ID_ARRAYS)
ID_DTYPE = np.dtype("int32")
ACT_DTYPES = ("float16", "float32")

REQUIRED_ATTRS = (
    "format",
    "format_version",
    "model",
    "model_id",
    "model_revision",
    "layer",
    "site",
    "benchmark",
    "split",
    "d_model",
    "dtype",
    "n_tokens",
    "n_examples",
    "source",
    "complete",
    "created",
    "scircuits_version",
)
# Bookkeeping the writer maintains; never part of a store's identity.
VOLATILE_ATTRS = frozenset(
    {
        "format",
        "format_version",
        "n_tokens",
        "n_examples",
        "complete",
        "created",
        "scircuits_version",
        "chunk_rows",
        "compressor",
    }
)
# Set by the writer from its own arguments; a caller's attrs may repeat them only with equal values.
WRITER_ATTRS = frozenset(VOLATILE_ATTRS | {"d_model", "dtype"})

# Measured on SmolLM2 layer-15 residual activations (bench/store.py): zstd and blosc shrink float16
# activations by only a few percent while costing write throughput, so stores are uncompressed.
DEFAULT_COMPRESSOR: str | None = None
CHUNK_TARGET_BYTES = 4 << 20


class StoreIdentity(BaseModel):
    """What a store holds. Two stores with equal identity hold the same rows."""

    model_config = ConfigDict(extra="allow")

    source: Literal["traced", "synthetic", "imported"]
    model: str | None = None
    model_id: str | None = None
    model_revision: str | None = None
    layer: int | None = None
    site: str | None = None
    benchmark: str | None = None
    split: str | None = None
    config_hash: str | None = None


_NEEDED_UNLESS_SYNTHETIC = ("model", "model_id", "model_revision", "layer", "site", "benchmark", "split")


def identity_attrs(attrs: dict[str, Any], *, d_model: int, dtype: str) -> dict[str, Any]:
    """Validate a writer's identity attributes; returns them JSON-normalised with d_model and dtype."""
    for key in WRITER_ATTRS & attrs.keys():
        expected = {"d_model": d_model, "dtype": dtype}.get(key)
        if expected is None or attrs[key] != expected:
            raise ConfigError(
                f"store attribute {key!r} is set by the writer; remove it from attrs "
                f"(got {attrs[key]!r}{'' if expected is None else f', writer has {expected!r}'})"
            )
    try:
        identity = StoreIdentity(**{k: v for k, v in attrs.items() if k not in WRITER_ATTRS})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid store attributes: {problems}") from None
    if identity.source != "synthetic":
        missing = [k for k in _NEEDED_UNLESS_SYNTHETIC if getattr(identity, k) is None]
        if missing:
            raise ConfigError(
                f"store attributes {', '.join(missing)} are required for a {identity.source} store "
                "(only synthetic stores may leave them out)"
            )
    out = identity.model_dump(mode="json")
    out.update(d_model=int(d_model), dtype=dtype)
    try:
        return json.loads(json.dumps(out, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"store attributes must be JSON values: {exc}") from None


def identity_of(stored_attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stored_attrs.items() if k not in VOLATILE_ATTRS}


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for each differing identity attribute; absent values are '<absent>'."""
    absent = "<absent>"
    keys = sorted(old.keys() | new.keys())
    return [
        (k, old.get(k, absent), new.get(k, absent)) for k in keys if old.get(k, absent) != new.get(k, absent)
    ]


def check_act_dtype(dtype: str) -> str:
    name = np.dtype(dtype).name
    if name not in ACT_DTYPES:
        raise ConfigError(f"store dtype must be one of {', '.join(ACT_DTYPES)}, not {dtype!r}")
    return name


def default_chunk_rows(d_model: int, dtype: str) -> int:
    """A power of two near CHUNK_TARGET_BYTES per acts chunk, between 256 and 65,536 rows."""
    rows = CHUNK_TARGET_BYTES / (d_model * np.dtype(dtype).itemsize)
    return int(min(65536, max(256, 2 ** round(math.log2(max(rows, 1))))))


def compressor_codecs(spec: str | None) -> list[Any] | None:
    """Zarr codec list for a compressor spec: None/"none", "zstd[:LEVEL]", "blosc-zstd[:LEVEL]",
    "blosc-lz4[:LEVEL]" (blosc with byte shuffle)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if spec is None or spec == "none":
        return None
    name, _, level_text = spec.partition(":")
    try:
        level = int(level_text) if level_text else None
    except ValueError:
        raise ConfigError(f"compressor {spec!r}: the level after ':' must be an integer") from None
    if name == "zstd":
        return [ZstdCodec(level=1 if level is None else level)]
    if name in ("blosc-zstd", "blosc-lz4"):
        return [BloscCodec(cname=name.split("-")[1], clevel=5 if level is None else level, shuffle="shuffle")]
    raise ConfigError(
        f"unknown compressor {spec!r}: use none, zstd[:LEVEL], blosc-zstd[:LEVEL] or blosc-lz4[:LEVEL]"
    )


def normalise_compressor(spec: str | None) -> str | None:
    compressor_codecs(spec)  # validates
    return None if spec in (None, "none") else spec
