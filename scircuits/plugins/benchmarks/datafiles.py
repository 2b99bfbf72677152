"""Reading benchmark data files: path resolution, JSONL rows and errors that name file and line."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from scircuits import Benchmark, ConfigError, DataFormatError, Example

from .hub import HubDataset, Row, hub_rows

T = TypeVar("T")


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit must be a whole number >= 0 or None, got {limit!r}")
    return limit


def take(items: Iterable[T], limit: int | None) -> Iterator[T]:
    """The first ``limit`` items (all when ``limit`` is None)."""
    if limit is None:
        return iter(items)
    return itertools.islice(items, check_limit(limit))


def resolve_data_file(benchmark: str, data: str, split: str, suffix: str, expected: str) -> Path:
    """The file holding ``split``: ``data`` itself when it is a file, else ``data/<split><suffix>``.

    ``expected`` describes what ``data`` should be, for the error messages.
    """
    path = Path(data).expanduser()
    if path.is_dir():
        candidate = path / f"{split}{suffix}"
        if not candidate.is_file():
            present = sorted(p.name for p in path.iterdir() if p.suffix == suffix)
            raise ConfigError(
                f"benchmark {benchmark!r}: the data directory {path} holds no {candidate.name} for split "
                f"{split!r} (it has: {', '.join(present) or 'no ' + suffix + ' files'}). "
                f"Pass --data PATH with {expected}."
            )
        return candidate
    if path.is_file():
        if path.stat().st_size == 0:
            raise ConfigError(
                f"benchmark {benchmark!r}: data file {path} is empty. Pass --data PATH with {expected}."
            )
        return path
    if path.exists():  # /dev/null, a pipe, a socket
        raise ConfigError(
            f"benchmark {benchmark!r}: data path {path} is not a regular file or a folder. Pass --data PATH "
            f"with {expected}."
        )
    raise ConfigError(
        f"benchmark {benchmark!r}: data path {path} does not exist. Pass --data PATH with {expected}."
    )


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; a bad line raises DataFormatError."""
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    f"{path}, line {line_no}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                    f"{exc.start + 1}); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(
                    f"{path}, line {line_no}: expected one JSON object per line, got invalid JSON ({exc.msg} "
                    f"at column {exc.colno})"
                ) from None
            except RecursionError:
                raise DataFormatError(f"{path}, line {line_no}: JSON nested too deeply to read") from None
            if not isinstance(row, dict):
                raise DataFormatError(
                    f"{path}, line {line_no}: expected a JSON object per line, got {type(row).__name__}"
                )
            yield line_no, row


def require_text(row: dict[str, Any], key: str, where: str) -> str:
    """``row[key]`` as a non-empty string; ``where`` is "FILE, line N" for the error."""
    if key not in row:
        raise DataFormatError(f"{where}: expected the field {key!r}; the object has {sorted(row)}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{where}: expected {key!r} to be a non-empty string, got {value!r:.80}")
    return value


class DataFileBenchmark(Benchmark):
    """A benchmark read from one file per split: ``data`` (an option) is that file or its folder;
    without ``data``, from the split's Hugging Face dataset (``hub_dataset``), when it has one.

    Subclasses set ``data_suffix`` and ``expected_data`` (what a valid ``data`` holds) and implement
    ``examples_from(path, split, options)``, and for the hub ``hub_dataset(split)`` and
    ``examples_from_hub(rows, hub, split, options)``; the ``limit`` is applied here.
    """

    data_suffix: str = ""
    expected_data: str = ""

    def examples(self, split="test", limit=None, seed=0, options=None):  # type: ignore[no-untyped-def]
        self.check_split(split)
        opts = self.parse_options(options)
        if getattr(opts, "data", None) is not None:
            path = resolve_data_file(self.name, opts.data, split, self.data_suffix, self.expected_data)
            return take(self.examples_from(path, split, opts), limit)
        hub = self.hub_dataset(split)
        if hub is None:
            raise ConfigError(f"benchmark {self.name!r} needs data: pass --data PATH ({self.expected_data})")
        rows = hub_rows(self.name, hub, self.expected_data)
        return take(self.examples_from_hub(rows, hub, split, opts), limit)

    def examples_from(self, path: Path, split: str, opts: Any) -> Iterator[Example]:
        raise NotImplementedError

    def hub_dataset(self, split: str) -> HubDataset | None:
        """The Hugging Face dataset holding ``split`` (None: the benchmark needs ``data``)."""
        return None

    def examples_from_hub(
        self, rows: Iterator[Row], hub: HubDataset, split: str, opts: Any
    ) -> Iterator[Example]:
        raise NotImplementedError
