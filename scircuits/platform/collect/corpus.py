"""Text corpora as an activation source: documents from local files or a Hugging Face dataset,
tokenised and packed into fixed-length contexts.

Sources (``--corpus``):

- a local ``.txt`` (one document per line, as `datasets`' text loader reads it), ``.jsonl`` (one
  JSON object per line, the document in ``--text-column``) or ``.parquet`` file (``--text-column``),
  or a folder of such files (read in name order, other files ignored);
- ``hub:ID`` or a dataset id that is not a local path: streamed through ``datasets.load_dataset(ID,
  --corpus-config, split=--corpus-split, streaming=True)``; nothing is downloaded beyond what is read.

Packing, as SAELens packs by default (``begin_batch_token="bos"``, ``sequence_separator_token="bos"``,
no begin-sequence token): documents are tokenised without special tokens and joined into one stream
with the separator between documents; each context is the BOS token followed by the next
``context_size - 1`` tokens of the stream, so a document may run over several contexts and every
context starts at position 0 with BOS (an attention sink whose activations are outliers: stored,
with ``positions``, so training may leave position 0 out). A model without a BOS token uses its EOS
token for both. The stream's tail shorter than a context is dropped.

Order: documents are read in source order and permuted, with the collection's seed, within windows
of :data:`SHUFFLE_WINDOW` documents; the same seed gives the same contexts. Contexts are numbered
from 0 in stream order; with several ranks, context i belongs to rank i mod world_size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.hub_datasets import (
    datasets_cache,
    hub_nothing_cached,
    hub_offline,
    hub_unreachable,
)

SUFFIXES = (".txt", ".jsonl", ".parquet")
SHUFFLE_WINDOW = 1024
HF_PREFIX = "hub:"


@dataclass(frozen=True)
class CorpusSpec:
    source: str
    text_column: str = "text"
    split: str = "train"
    config: str | None = None

    def __post_init__(self) -> None:
        if not self.source.strip() or not self.hub_id.strip():
            raise CorpusError(
                f"--corpus {self.source!r} names no corpus: give a text file or folder (.txt, .jsonl, "
                ".parquet) or a Hugging Face dataset id such as hub:HuggingFaceFW/fineweb"
            )

    @property
    def local(self) -> Path | None:
        """The local file or folder, or None for a Hugging Face dataset."""
        if self.source.startswith(HF_PREFIX):
            return None
        path = Path(self.source).expanduser()
        return (
            path
            if path.exists() or "/" not in self.source or self.source.startswith((".", "/", "~"))
            else None
        )

    @property
    def hub_id(self) -> str:
        return self.source[len(HF_PREFIX) :] if self.source.startswith(HF_PREFIX) else self.source


class CorpusError(ConfigError):
    """The corpus cannot be read: one line naming the file and line, or the dataset."""


# ---------------------------------------------------------------------------------- local files
def local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise CorpusError(
            f"--corpus {path}: no such file or folder (give a .txt/.jsonl/.parquet file, a folder of them, "
            "or a Hugging Face dataset id such as hub:HuggingFaceFW/fineweb)"
        )
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise CorpusError(
                f"--corpus {path}: unsupported file type {path.suffix!r}; use .txt, .jsonl or .parquet"
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise CorpusError(f"--corpus {path}: the folder holds no .txt, .jsonl or .parquet file")
    return files


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every line; a byte sequence that is not UTF-8 names its line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                byte = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
                raise CorpusError(
                    f"{path}:{number}: not UTF-8 text ({byte}); convert the file to UTF-8"
                ) from None


def file_documents(path: Path, text_column: str) -> Iterator[tuple[str, str]]:
    """("file:line", document) for each document of one local file."""
    if path.stat().st_size == 0:
        raise CorpusError(f"{path}:1: the file is empty; remove it from the corpus or give it text")
    if path.suffix == ".parquet":
        yield from _parquet_documents(path, text_column)
        return
    found = False
    for number, line in _lines(path):
        if path.suffix == ".txt":
            if line.strip():
                found = True
                yield f"{path}:{number}", line
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise CorpusError(f"{path}:{number}: not a JSON object ({exc})") from None
        if not isinstance(row, dict) or text_column not in row:
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise CorpusError(
                f"{path}:{number}: no text column {text_column!r} (the row has: {keys}); "
                "pass --text-column NAME"
            )
        text = row[text_column]
        if not isinstance(text, str):
            raise CorpusError(
                f"{path}:{number}: column {text_column!r} holds {type(text).__name__}, not text"
            )
        found = True
        yield f"{path}:{number}", text
    if not found:
        raise CorpusError(f"{path}:1: the file holds no text (only blank lines)")


def _parquet_documents(path: Path, text_column: str) -> Iterator[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(
            f"{path}:1: reading parquet needs pyarrow (pip install 'scircuits[hf]'), or give .jsonl/.txt"
        ) from None

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:
        raise CorpusError(f"{path}:1: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    names = table.schema_arrow.names
    if text_column not in names:
        raise CorpusError(
            f"{path}:1: no text column {text_column!r} (its columns: {', '.join(names)}); "
            "pass --text-column NAME"
        )
    row = 0
    for batch in table.iter_batches(columns=[text_column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                raise CorpusError(
                    f"{path}:{row}: column {text_column!r} holds {type(text).__name__}, not text"
                )
            yield f"{path}:{row}", text
    if row == 0:
        raise CorpusError(f"{path}:1: the parquet file holds no rows")


def check_local(spec: CorpusSpec) -> int:
    """Read every local file through (before any model loads): a bad one stops here. Returns documents."""
    assert spec.local is not None
    return sum(1 for _ in _local_documents(spec))


def _local_documents(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    assert spec.local is not None
    for file in local_files(spec.local):
        yield from file_documents(file, spec.text_column)


# ---------------------------------------------------------------------------------- the hub
def _hub_help(spec: CorpusSpec, reason: str) -> str:
    config = f" (config {spec.config!r})" if spec.config else ""
    return (
        f"--corpus {spec.hub_id}{config}, split {spec.split!r}: cannot read this Hugging Face dataset: "
        f"{reason}. It is streamed from the hub, or read from the cache at {datasets_cache()}; with "
        "HF_DATASETS_OFFLINE=1 only a cached dataset can be read: run with network "
        "(HF_DATASETS_OFFLINE and HF_HUB_OFFLINE unset), "
        "or give local files (--corpus PATH, or --data PATH to collect a benchmark instead)."
    )


def _hub_documents(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            _hub_help(spec, "the `datasets` package is not installed (pip install 'scircuits[hf]')")
        ) from None
    if not hub_offline() and hub_nothing_cached(spec.hub_id):  # `datasets` would retry for half a minute
        unreachable = hub_unreachable()
        if unreachable is not None:
            raise CorpusError(_hub_help(spec, unreachable))
    try:
        dataset = datasets.load_dataset(spec.hub_id, spec.config, split=spec.split, streaming=True)
        rows = iter(dataset)
        first = next(rows, None)
    except Exception as exc:  # offline with nothing cached, hub errors, unknown split or config
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        if hub_offline():
            reason = f"offline (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set) and not cached ({reason})"
        raise CorpusError(_hub_help(spec, reason)) from None
    if first is None:
        raise CorpusError(_hub_help(spec, "the split holds no rows"))
    for row_number, row in enumerate(_chain_first(first, rows)):
        where = f"{spec.hub_id} {spec.split}, row {row_number}"
        if spec.text_column not in row:
            raise CorpusError(
                f"{where}: no text column {spec.text_column!r} (its columns: {', '.join(row)}); "
                "pass --text-column NAME"
            )
        text = row[spec.text_column]
        if not isinstance(text, str):
            raise CorpusError(f"{where}: column {spec.text_column!r} holds {type(text).__name__}, not text")
        yield where, text


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def documents(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    """("where", text) of every document in source order."""
    return _local_documents(spec) if spec.local is not None else _hub_documents(spec)


def check_readable(spec: CorpusSpec) -> None:
    """Fail now, in one line, for a corpus that cannot be read (local files are read through)."""
    if spec.local is not None:
        check_local(spec)
    else:
        next(iter(_hub_documents(spec)))


# ---------------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class Packing:
    context_size: int
    bos_id: int
    separator_id: int

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, context_size: int) -> Packing:
        if context_size < 2:
            raise ConfigError(f"--context-size must be at least 2 (BOS and one token), not {context_size}")
        bos = getattr(tokenizer, "bos_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None)
        first = bos if bos is not None else eos
        if first is None:
            raise ConfigError("the tokenizer has neither a BOS nor an EOS token to start each context with")
        return cls(context_size, int(first), int(first))

    def record(self) -> dict[str, Any]:
        return {
            "context_size": self.context_size,
            "bos_token_id": self.bos_id,
            "separator_token_id": self.separator_id,
        }


def shuffled_documents(spec: CorpusSpec, seed: int) -> Iterator[str]:
    """Documents permuted within windows of SHUFFLE_WINDOW (deterministic for ``seed``)."""
    window: list[str] = []
    index = 0
    for _, text in documents(spec):
        window.append(text)
        if len(window) == SHUFFLE_WINDOW:
            yield from _permuted(window, seed, index)
            window, index = [], index + 1
    yield from _permuted(window, seed, index)


def _permuted(window: list[str], seed: int, index: int) -> list[str]:
    order = np.random.default_rng([seed, index]).permutation(len(window))
    return [window[i] for i in order]


def contexts(
    spec: CorpusSpec, tokenizer: Any, packing: Packing, seed: int, limit: int | None = None
) -> Iterator[list[int]]:
    """The packed contexts (each ``context_size`` token ids, BOS first), at most ``limit`` of them."""
    body = packing.context_size - 1
    stream: list[int] = []
    made = 0
    first = True
    batch: list[str] = []

    def flush(texts: list[str]) -> Iterator[list[int]]:
        nonlocal first, made, stream
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        for ids in encoded:
            if not first:
                stream.append(packing.separator_id)
            first = False
            stream.extend(ids)
            taken = 0
            while len(stream) - taken >= body:
                if limit is not None and made >= limit:
                    return
                yield [packing.bos_id, *stream[taken : taken + body]]
                taken += body
                made += 1
            del stream[:taken]

    for text in shuffled_documents(spec, seed):
        batch.append(text)
        if len(batch) == 256:
            yield from flush(batch)
            batch = []
            if limit is not None and made >= limit:
                return
    yield from flush(batch)
