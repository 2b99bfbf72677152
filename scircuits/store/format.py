"""Format v2 of the activation store: names, attributes, identity, layout and codec choices.

A store is a Zarr v3 group holding the arrays ``acts`` (n_tokens x d_model, float16, float32, or
bfloat16 kept as its uint16 bit pattern; chunked by rows), ``token_ids``, ``example_ids`` and
``positions`` (n_tokens, int32), and the group attributes listed in :data:`REQUIRED_ATTRS`. Other
tools may read and write it. Version 1 (a benchmark's ``benchmark``/``split`` attributes instead of
the ``data_source`` record) is still read: :func:`upgraded_attrs`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from scircuits.errors import ConfigError

FORMAT = "scircuits.activations"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

ACTS = "acts"
ID_ARRAYS = ("token_ids", "example_ids", "positions")
ARRAYS = (ACTS, *ID_ARRAYS)
ID_DTYPE = np.dtype("int32")
ACT_DTYPES = ("float16", "float32", "bfloat16")
# Zarr has no bfloat16: its values are stored as the upper 16 bits of their float32 pattern.
BF16_STORAGE = np.dtype("uint16")

REQUIRED_ATTRS = (
    "format",
    "format_version",
    "model",
    "model_id",
    "model_revision",
    "layer",
    "site",
    "data_source",
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
    data_source: dict[str, Any] | None = None
    config_hash: str | None = None


class DataSource(BaseModel):
    """What text the rows come from: a benchmark split, or a text corpus packed into contexts."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["benchmark", "corpus"]
    benchmark: str | None = None  # kind "benchmark"
    split: str | None = None
    corpus: str | None = None  # kind "corpus": the dataset id or local path as given


_NEEDED_UNLESS_SYNTHETIC = ("model", "model_id", "model_revision", "layer", "site", "data_source")


def benchmark_source(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The data_source record of a store given a benchmark and split (format v1's attributes)."""
    if attrs.get("benchmark") is None and attrs.get("split") is None:
        return None
    return {"kind": "benchmark", "benchmark": attrs.get("benchmark"), "split": attrs.get("split")}


def upgraded_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """A version-1 store's attributes as version 2 reads them (``data_source`` from benchmark/split);
    other versions unchanged. ``format_version`` keeps the stored value."""
    if attrs.get("format_version") != 1 or "data_source" in attrs:
        return attrs
    return {**attrs, "data_source": benchmark_source(attrs)}


def identity_attrs(attrs: dict[str, Any], *, d_model: int, dtype: str) -> dict[str, Any]:
    """Validate a writer's identity attributes; returns them JSON-normalised with d_model and dtype."""
    for key in WRITER_ATTRS & attrs.keys():
        expected = {"d_model": d_model, "dtype": dtype}.get(key)
        if expected is None or attrs[key] != expected:
            raise ConfigError(
                f"store attribute {key!r} is set by the writer; remove it from attrs "
                f"(got {attrs[key]!r}{'' if expected is None else f', writer has {expected!r}'})"
            )
    given = {k: v for k, v in attrs.items() if k not in WRITER_ATTRS}
    if given.get("data_source") is None:  # a benchmark and split given the version-1 way
        given["data_source"] = benchmark_source(given)
    try:
        identity = StoreIdentity(**given)
        if identity.data_source is not None:
            DataSource(**identity.data_source)
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


def storage_dtype(dtype: str) -> np.dtype:
    """The Zarr dtype that holds activations of ``dtype``."""
    return BF16_STORAGE if dtype == "bfloat16" else np.dtype(dtype)


def encode_acts(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Float rows as stored: cast, or for bfloat16 rounded to nearest-even and kept as uint16 bits."""
    if dtype != "bfloat16":
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(rows, dtype=dtype)
    bits = np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def decode_acts(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows as floats (bfloat16 bits widened to float32; others as stored)."""
    if dtype != "bfloat16":
        return stored
    return (stored.astype(np.uint32) << np.uint32(16)).view(np.float32)


def check_act_dtype(dtype: str) -> str:
    if dtype == "bfloat16":
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in ACT_DTYPES:
        raise ConfigError(f"store dtype must be one of {', '.join(ACT_DTYPES)}, not {dtype!r}")
    return name


def default_chunk_rows(d_model: int, dtype: str) -> int:
    """A power of two near CHUNK_TARGET_BYTES per acts chunk, between 256 and 65,536 rows."""
    rows = CHUNK_TARGET_BYTES / (d_model * storage_dtype(dtype).itemsize)
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
