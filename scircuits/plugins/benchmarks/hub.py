"""A benchmark's canonical Hugging Face dataset, read through `datasets` when no ``--data`` is given.

The first read downloads the dataset into the usual Hugging Face cache (``HF_HOME``, by default
``~/.cache/huggingface``); later reads, offline included (``HF_DATASETS_OFFLINE=1``), come from
there. `datasets` is imported here, inside the functions, so listing benchmarks never imports it.
Every failure (package missing, hub unreachable with nothing cached, unknown split) is a
ConfigError naming the dataset, the cache, ``HF_DATASETS_OFFLINE`` and ``--data PATH``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scircuits import ConfigError, datasets_cache, hub_nothing_cached, hub_offline, hub_unreachable

Row = tuple[str, dict[str, Any]]  # ("<dataset> <split>, row N", the row's columns)
OFFLINE_REASON = "offline (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set) and the cache does not hold it"


@dataclass(frozen=True)
class HubDataset:
    """Where a benchmark split lives on the hub: ``load_dataset(path, config, split=split)``."""

    path: str  # the dataset id ("openai/gsm8k"), or a local folder laid out like the hub repo
    config: str | None
    split: str


def offline() -> bool:
    """HF_DATASETS_OFFLINE, or else HF_HUB_OFFLINE, set true (as `datasets` reads them)."""
    return hub_offline()


def clearly_not_cached(source: HubDataset) -> bool:
    """Offline, a hub dataset of which neither cache holds anything under its name: `datasets` could
    only fail, so fail without importing it (fast). Any doubt leaves the answer to `datasets`."""
    return offline() and hub_nothing_cached(source.path)


def _help(benchmark: str, source: HubDataset, reason: str, expected_data: str) -> str:
    config = f" (config {source.config!r})" if source.config else ""
    return (
        f"benchmark {benchmark!r}: cannot read the Hugging Face dataset {source.path}{config}, split "
        f"{source.split!r}: {reason}. It is read once into the cache at {datasets_cache()} and offline "
        f"from there afterwards: run once with network (HF_DATASETS_OFFLINE and HF_HUB_OFFLINE unset), "
        f"or point HF_HOME at a cache that holds it, or pass --data PATH ({expected_data})."
    )


def hub_rows(benchmark: str, source: HubDataset, expected_data: str) -> Iterator[Row]:
    """The rows of ``source``, loaded now (so a missing dataset fails before any model loads)."""
    if clearly_not_cached(source):
        raise ConfigError(_help(benchmark, source, OFFLINE_REASON, expected_data))
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
    if not offline() and hub_nothing_cached(source.path):  # `datasets` would retry for half a minute first
        unreachable = hub_unreachable()
        if unreachable is not None:
            raise ConfigError(_help(benchmark, source, unreachable, expected_data))
    try:
        dataset = datasets.load_dataset(source.path, source.config, split=source.split)
    except Exception as exc:  # offline with nothing cached, hub errors, unknown split: all fixed the same way
        if offline() and isinstance(exc, ConnectionError):
            reason = OFFLINE_REASON
        else:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise ConfigError(_help(benchmark, source, reason, expected_data)) from None
    label = f"{source.path} {source.split}"
    return ((f"{label}, row {index}", dict(row)) for index, row in enumerate(dataset))
