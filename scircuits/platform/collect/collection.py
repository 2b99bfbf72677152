"""The collect stage: trace one site of one layer on a benchmark's sequences into an activation store.

Resumable: the store records how many whole examples it holds; a rerun of the same command skips
them and appends the rest, so a killed collection ends identical to an uninterrupted one. A
different command into an existing store is refused by the store, naming the difference.
Memory stays bounded: a few batches of examples are held at a time, never the whole collection.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scircuits.platform.collect.datahash import data_sha256
from scircuits.platform.common.artifacts import (
    DISK_ERRNOS,
    ArtifactError,
    check_can_create,
    describe_os_error,
    move_aside,
)
from scircuits.platform.common.device import check_device
from scircuits.platform.common.progress import progress
from scircuits.platform.config import CollectConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import PluginSet
from scircuits.platform.model.sequences import encode_example
from scircuits.platform.model.tracing import RemoteBackend, SiteTracer, load_remote
from scircuits.store import ActivationStoreWriter, StoreMismatchError
from scircuits.store.errors import DamagedStoreError, NotAStoreError
from scircuits.store.location import WriterLock, local_path, read_group

# Examples are encoded and sorted by length within windows of this many batches, so a batch pads
# little; they are stored in benchmark order.
SORT_WINDOW_BATCHES = 4


@dataclass
class CollectSummary:
    path: Path
    n_examples: int  # in the store when done
    n_tokens: int
    new_examples: int  # traced by this run
    new_tokens: int
    seconds: float
    already_complete: bool = False


def model_dtype_for(config: CollectConfig) -> str:
    if config.model_dtype != "auto":
        return config.model_dtype
    return "float32" if config.device == "cpu" else "bfloat16"


def store_attrs(config: CollectConfig, loaded: Any, layer: int) -> dict[str, Any]:
    """The store's identity: what was traced, from which weights, by which command."""
    return {
        "model": config.model,
        "model_id": loaded.model_id,
        "model_revision": loaded.revision,
        "model_dtype": loaded.dtype,
        "layer": layer,
        "site": config.site,
        "site_path": loaded.site_path(layer, config.site),
        "benchmark": config.benchmark,
        "split": config.split,
        "source": "traced",
        "config_hash": config.config_hash(),
        "config": config.identity(),
        "data_sha256": data_sha256(config.benchmark_options),
    }


def _existing_store_attrs(out: str) -> dict[str, Any] | None:
    local = local_path(out)
    if local is not None and local.exists() and not local.is_dir():
        raise NotAStoreError(f"{out} is a file, not an activation store; choose another --out")
    if not (Path(out) / "zarr.json").is_file():
        if local is not None and local.is_dir():
            others = sorted(p.name for p in local.iterdir() if not p.name.endswith(".partial"))
            if others:  # refused now, before any weights load, not when the writer opens
                raise NotAStoreError(
                    f"{out} exists and is not an activation store (it holds {', '.join(others[:3])}); "
                    "choose another --out, or pass --force to move it aside (nothing is deleted)"
                )
        return None
    try:
        return dict(read_group(out, None).attrs)
    except Exception as exc:
        if _holds_no_examples(_raw_attrs(out)):
            # Its creation was cut short (a kill or a full disk before every array existed): it holds
            # nothing, so it must not block the command that made it.
            _set_aside_empty(Path(out), "an empty collection whose creation was cut short")
            return None
        raise DamagedStoreError(
            f"{out}: the store's zarr.json cannot be read "
            f"({str(exc).splitlines()[0] if str(exc) else exc!r}); it is damaged: move it away and "
            "collect again, or pass --force to move it aside"
        ) from None


def _raw_attrs(out: str) -> dict[str, Any] | None:
    try:
        attrs = json.loads((Path(out) / "zarr.json").read_text()).get("attributes")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return attrs if isinstance(attrs, dict) else None


def _holds_no_examples(attrs: dict[str, Any] | None) -> bool:
    if attrs is None or attrs.get("complete"):
        return False
    try:
        return int(attrs.get("n_examples", 0) or 0) == 0
    except (TypeError, ValueError):
        return False


def _set_aside_empty(folder: Path, what: str) -> None:
    lock = WriterLock(folder)  # refused while another process writes it
    lock.release()
    aside = move_aside(folder)
    folder.rmdir()
    print(f"[collect] {folder} held {what}; moved it to {aside}", file=sys.stderr)


def _check_existing_store(config: CollectConfig) -> CollectSummary | None:
    """Before loading any model: refuse a store made by a different command, naming the settings
    that differ, a damaged store or a folder of other files; with ``--force`` move any of those
    aside instead. A complete store made by this very command means there is nothing to do."""
    try:
        return _existing_store_state(config)
    except (StoreMismatchError, NotAStoreError, DamagedStoreError) as exc:
        local = local_path(config.out)
        if not config.force or local is None or not local.is_dir():
            raise
        lock = WriterLock(local)  # refused while another process writes it
        lock.release()
        aside = move_aside(local)
        local.rmdir()
        reason = str(exc).split(";")[0].split(" (")[0]
        print(f"[collect] --force: {reason}; moved it to {aside}", file=sys.stderr)
        return None


def _existing_store_state(config: CollectConfig) -> CollectSummary | None:
    attrs = _existing_store_attrs(config.out)
    if attrs is None or not isinstance(attrs.get("config"), dict):
        return None
    stored, now = attrs["config"], config.identity()
    differences = [
        f"{key}: stored {stored.get(key, '<absent>')!r}, now {now.get(key, '<absent>')!r}"
        for key in sorted(stored.keys() | now.keys())
        if stored.get(key) != now.get(key)
    ]
    now_data = data_sha256(config.benchmark_options)
    if not differences and attrs.get("data_sha256", now_data) != now_data:
        differences.append(
            f"the data file {config.benchmark_options.get('data')} changed since the store was collected"
        )
    if differences and _holds_no_examples(attrs):
        # A collection that failed before its first example holds nothing: set it aside so that it
        # does not block the corrected command.
        _set_aside_empty(Path(config.out), "an empty, failed collection")
        return None
    if differences:
        raise StoreMismatchError(
            f"{config.out} holds activations of a different collection ({'; '.join(differences)}). "
            "Write to another --out, or pass --force to move it aside (nothing is deleted)."
        )
    if attrs.get("complete"):
        return CollectSummary(
            Path(config.out),
            int(attrs.get("n_examples", 0)),
            int(attrs.get("n_tokens", 0)),
            0,
            0,
            0.0,
            already_complete=True,
        )
    return None


def _windows(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while window := list(itertools.islice(iterator, size)):
        yield window


def collect(config: CollectConfig, plugins: PluginSet, *, remote_backend: RemoteBackend = True) -> Path:
    """Run the collect stage; returns the store's path (see run_collect)."""
    return run_collect(config, plugins, remote_backend=remote_backend).path


def run_collect(
    config: CollectConfig, plugins: PluginSet, *, remote_backend: RemoteBackend = True
) -> CollectSummary:
    """Run the collect stage with the model and benchmark of ``plugins``; returns where the store is
    and what it holds.

    ``remote_backend`` applies when ``config.remote``: True runs on NDIF, "local" runs nnsight's
    offline stand-in of the remote path (tests).
    """
    config = config.with_plugin_defaults(plugins)
    adapter = plugins.models.get(config.model)
    benchmark = plugins.benchmarks.get(config.benchmark)
    benchmark.check_split(config.split)
    if not config.remote:
        check_device(config.device)
    options = benchmark.parse_options(config.benchmark_options)
    # missing, empty or malformed data fails here, in full, before any weights load or any store exists
    check_all_examples(benchmark, config, options)
    local = local_path(config.out)
    if local is not None:
        check_can_create(local)  # a read-only or unreachable --out stops here, before the weights load
    if adapter.n_layers:  # a declared adapter: check the layer and site before loading anything
        config = config.model_copy(update={"layer": adapter.resolve_site(config.layer, config.site)})
        done = _check_existing_store(config)
        if done is not None:
            return done

    if config.remote:
        loaded = load_remote(adapter, model_path=config.model_path, backend=remote_backend)
    else:
        adapter.check_weights(config.model_path)
        loaded = adapter.load(
            model_path=config.model_path, dtype=model_dtype_for(config), device=config.device
        )
    layer = loaded.adapter.resolve_site(config.layer, config.site, loaded.n_layers)
    config = config.model_copy(update={"layer": layer})
    done = _check_existing_store(config)
    if done is not None:
        return done
    try:
        return trace_into_store(config, loaded, layer, benchmark, options)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise ArtifactError(
            f"{config.out}: cannot write the store ({describe_os_error(exc)}); the examples already "
            "stored are kept: free space, then run the same command again to continue"
        ) from None


def check_all_examples(benchmark: Any, config: CollectConfig, options: Any) -> int:
    """Read every example the collection will trace (a bad line anywhere stops it now); no example
    at all is an error. Returns how many."""
    count = sum(1 for _ in benchmark.examples(config.split, config.limit, config.seed, options))
    if count == 0:
        data = config.benchmark_options.get("data")
        source = f"the data file {data}" if data else f"split {config.split!r}"
        raise ConfigError(
            f"benchmark {config.benchmark!r}: {source} holds no examples; give a file with at least one "
            "example (or another --split)"
        )
    return count


def sequence_limit(config: CollectConfig, loaded: Any) -> int | None:
    limit = loaded.adapter.max_positions(loaded.model)
    if config.max_length is not None:
        if limit is not None and config.max_length > limit:
            raise ConfigError(
                f"--max-length {config.max_length} is longer than {config.model} takes ({limit} tokens)"
            )
        return config.max_length
    return limit


def trace_into_store(
    config: CollectConfig, loaded: Any, layer: int, benchmark: Any, options: Any
) -> CollectSummary:
    start = time.monotonic()
    writer = ActivationStoreWriter.open(
        config.out,
        store_attrs(config, loaded, layer),
        d_model=loaded.d_model,
        dtype=config.dtype,
        chunk_rows=config.chunk_rows,
    )
    if writer.complete:
        writer.close()
        return CollectSummary(
            Path(config.out),
            writer.n_examples_written,
            writer.n_tokens_written,
            0,
            0,
            0.0,
            already_complete=True,
        )
    tracer = SiteTracer(loaded, layer, config.site)
    max_length = sequence_limit(config, loaded)
    n_cut = 0
    skip = writer.n_examples_written
    new_examples = new_tokens = 0
    examples = benchmark.examples(config.split, config.limit, config.seed, options)
    # Batches are formed within fixed windows of example indices, so a resumed run (same batch size)
    # re-traces the partial window it stopped in and its rows come out bit-identical to an
    # uninterrupted run's; rows already stored are not appended again.
    window_size = config.batch_size * SORT_WINDOW_BATCHES
    remaining = itertools.islice(enumerate(examples), skip - skip % window_size, None)
    total = config.limit
    with (
        writer,
        progress(
            f"collect {config.model} {config.site}{layer} {config.benchmark}",
            total=total,
            enabled=config.progress,
            unit="examples",
        ) as bar,
    ):
        if skip:
            bar.advance(skip, status="resumed")
        for window in _windows(remaining, window_size):
            encoded = []
            for index, example in window:
                ids = encode_example(loaded.tokenizer, example, max_length).input_ids
                n_cut += max_length is not None and len(ids) == max_length
                encoded.append((index, ids))
            rows: dict[int, Any] = {}
            by_length = sorted(encoded, key=lambda item: len(item[1]))
            for batch in _windows(by_length, config.batch_size):
                for (index, _), acts in zip(batch, tracer.trace([ids for _, ids in batch]), strict=False):
                    rows[index] = acts
            appended = 0
            for index, ids in encoded:
                acts = rows.pop(index)
                if index < skip:
                    continue
                writer.append_example(index, ids, acts.numpy())
                new_tokens += len(ids)
                appended += 1
            new_examples += appended
            elapsed = max(time.monotonic() - start, 1e-9)
            bar.advance(
                appended, status=f"{writer.n_tokens_written} tokens, {new_tokens / elapsed:.0f} tok/s"
            )
    if n_cut:
        print(
            f"note: {n_cut} sequences reached {max_length} tokens and were cut to the end of their prompt "
            "and their target (--max-length)",
            file=sys.stderr,
        )
    if new_examples == 0 and skip == 0:
        print(f"warning: benchmark {config.benchmark!r} gave no examples", file=sys.stderr)
    return CollectSummary(
        Path(config.out),
        writer.n_examples_written,
        writer.n_tokens_written,
        new_examples,
        new_tokens,
        time.monotonic() - start,
    )
