"""A benchmark's canonical Hugging Face dataset, read through `datasets` when no ``--data`` is given.

The first read downloads the dataset into the usual Hugging Face cache (``HF_HOME``, by default
``~/.cache/huggingface``); later reads, offline included (``HF_DATASETS_OFFLINE=1``), come from
there. `datasets` is imported here, inside the functions, so listing benchmarks never imports it.
Every failure (package missing, hub unreachable with nothing cached, unknown split) is a
ConfigError naming the dataset, the cache, ``HF_DATASETS_OFFLINE`` and ``--data PATH``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scircuits.platform.errors import ConfigError

Row = tuple[str, dict[str, Any]]  # ("<dataset> <split>, row N", the row's columns)


@dataclass(frozen=True)
class HubDataset:
    """Where a benchmark split lives on the hub: ``load_dataset(path, config, split=split)``."""

    path: str  # the dataset id ("openai/gsm8k"), or a local folder laid out like the hub repo
    config: str | None
    split: str


def datasets_cache() -> str:
    """Where `datasets` keeps what it has read (without importing it when it is not installed)."""
    try:
        from datasets import config

        return str(config.HF_DATASETS_CACHE)
    except ImportError:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
        )
        return os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets")


def _help(benchmark: str, source: HubDataset, reason: str, expected_data: str) -> str:
    config = f" (config {source.config!r})" if source.config else ""
    return (
        f"benchmark {benchmark!r}: cannot read the Hugging Face dataset {source.path}{config}, split "
        f"{source.split!r}: {reason}. It is read once into the cache at {datasets_cache()} and offline "
        f"from there afterwards: run once with network (HF_DATASETS_OFFLINE unset), or point HF_HOME at a "
        f"cache that holds it, or pass --data PATH ({expected_data})."
    )


def hub_rows(benchmark: str, source: HubDataset, expected_data: str) -> Iterator[Row]:
    """The rows of ``source``, loaded now (so a missing dataset fails before any model loads)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            _help(
                benchmark,
                source,
                "the `datasets` package is not installed (pip install 'scircuits[hf]')",
                expected_data,
            )
        ) from None
    try:
        dataset = datasets.load_dataset(source.path, source.config, split=source.split)
    except Exception as exc:  # offline with nothing cached, hub errors, unknown split: all fixed the same way
        if datasets.config.HF_HUB_OFFLINE and isinstance(exc, ConnectionError):
            reason = "offline (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set) and the cache does not hold it"
        else:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise ConfigError(_help(benchmark, source, reason, expected_data)) from None
    label = f"{source.path} {source.split}"
    return ((f"{label}, row {index}", dict(row)) for index, row in enumerate(dataset))
