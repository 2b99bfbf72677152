"""The collect stage: trace sites of a model on a benchmark's sequences, or on a text corpus packed
into contexts (``corpus``), into activation stores.

One site in one process writes one store at ``--out``. Several sites (``--layers``, ``--sites``)
and/or several processes (``--nproc``, or torchrun) write a collection: a manifest and one store per
site and rank (``scircuits.store.collection``), all sites from the same forward, which stops after
the last of them. Rank r takes the sequences whose index is r modulo the number of ranks.

Resumable: each store records how many whole sequences it holds; a rerun of the same command skips
them and appends the rest, so a killed collection ends identical to an uninterrupted one. A
different command into an existing store is refused by the store, naming the difference.
Memory stays bounded: a few batches of sequences are held at a time, never the whole collection.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scircuits.platform.collect import corpus as corpus_source
from scircuits.platform.collect.datahash import data_sha256
from scircuits.platform.collect.driver import Item, SiteKey, write_items
from scircuits.platform.common.artifacts import (
    DISK_ERRNOS,
    ArtifactError,
    check_can_create,
    check_out_apart,
    describe_os_error,
    local_paths,
    model_folder,
    move_aside,
)
from scircuits.platform.common.device import check_device
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.progress import progress
from scircuits.platform.config import CollectConfig
from scircuits.platform.config.stages import resolve_model_dtype
from scircuits.platform.contract.errors import ConfigError, DataFormatError, ScircuitsError
from scircuits.platform.manager.plugin_set import PluginSet, get_plugins
from scircuits.platform.model.sequences import encode_example
from scircuits.platform.model.tracing import RemoteBackend, SitesTracer, check_ndif, load_remote
from scircuits.platform.train.distributed import from_environment, launch, under_launcher
from scircuits.store import ActivationStore, ActivationStoreWriter, StoreMismatchError
from scircuits.store.collection import MANIFEST, read_manifest, shard_path, site_key, write_manifest
from scircuits.store.errors import DamagedStoreError, NotAStoreError
from scircuits.store.location import local_path, lock_store, read_group
from scircuits.store.remote import RemotePath, as_location, is_url

log = get_logger(__name__)

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
    return resolve_model_dtype(config.model_dtype, config.device)


def store_attrs(
    config: CollectConfig, loaded: Any, layer: int, site: str | None = None, packing: Any = None
) -> dict[str, Any]:
    """The store's identity: what was traced, from which weights, by which command."""
    site = site or config.site
    attrs = {
        "model": config.model,
        "model_id": loaded.model_id,
        "model_revision": loaded.revision,
        "model_dtype": loaded.dtype,
        "layer": layer,
        "site": site,
        "site_path": loaded.site_path(layer, site),
        "source": "traced",
        "config_hash": config.config_hash(),
        "config": config.identity(),
    }
    if config.corpus is None:
        attrs.update(
            benchmark=config.benchmark, split=config.split, data_sha256=data_sha256(config.benchmark_options)
        )
        return attrs
    spec = corpus_spec(config)
    attrs["data_source"] = {
        "kind": "corpus",
        "corpus": config.corpus,
        "text_column": config.text_column,
        "split": config.corpus_split if spec.local is None else None,
        "config": config.corpus_config,
        "seed": config.seed,
        "tokens": config.tokens,
        **(packing.record() if packing is not None else {}),
    }
    attrs["data_sha256"] = data_sha256({"data": str(spec.local)}) if spec.local is not None else None
    return attrs


def corpus_spec(config: CollectConfig) -> corpus_source.CorpusSpec:
    assert config.corpus is not None
    return corpus_source.CorpusSpec(
        config.corpus, text_column=config.text_column, split=config.corpus_split, config=config.corpus_config
    )


def collection_id(config: CollectConfig, world_size: int) -> str:
    """Names one collection: the same command with the same number of ranks has the same id."""
    return hashlib.sha256(f"{config.config_hash()}/{world_size}".encode()).hexdigest()[:16]


def _existing_store_attrs(out: str) -> dict[str, Any] | None:
    local = local_path(out)
    if local is None:  # a URL: what is there is checked here too (nothing at a URL is moved aside)
        _check_url_holds_a_store_or_nothing(out)
        return None  # the store's writer checks a store there against this command
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


def _check_url_holds_a_store_or_nothing(out: str) -> None:
    root = as_location(out)
    if (root / "zarr.json").is_file() or not root.is_dir():
        return
    if (root / MANIFEST).is_file():
        raise StoreMismatchError(
            f"{out} holds a collection of several sites or shards, not one store; write to another --out"
        )
    others = sorted(p.name for p in root.iterdir() if not p.name.startswith(".scircuits-lock"))
    if others:
        raise NotAStoreError(
            f"{out} exists and is not an activation store (it holds {', '.join(others[:3])}); choose "
            "another --out (nothing at a URL is moved aside)"
        )


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
    lock = lock_store(folder)  # refused while another process writes it
    lock.release()
    aside = move_aside(folder, recreate=False)  # (its lock files, an artifact's, go with it)
    log.info(f"[collect] {folder} held {what}; moved it to {aside}")


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
        lock = lock_store(local)  # refused while another process writes it
        lock.release()
        aside = move_aside(local, recreate=False)  # (an artifact's lock files go with it)
        reason = str(exc).split(";")[0].split(" (")[0]
        log.info(f"[collect] --force: {reason}; moved it to {aside}")
        return None


def _existing_store_state(config: CollectConfig) -> CollectSummary | None:
    attrs = _existing_store_attrs(config.out)
    if attrs is None and (Path(config.out) / MANIFEST).is_file():
        raise StoreMismatchError(
            f"{config.out} holds a collection of several sites or shards, not one store; write to another "
            "--out, or pass --force to move it aside (nothing is deleted)"
        )
    if attrs is None or not isinstance(attrs.get("config"), dict):
        return None
    stored, now = attrs["config"], config.identity()
    differences = [
        f"{key}: stored {stored.get(key, '<absent>')!r}, now {now.get(key, '<absent>')!r}"
        for key in sorted(stored.keys() | now.keys())
        if stored.get(key) != now.get(key)
    ]
    now_data = (
        data_sha256(config.benchmark_options) if config.corpus is None else store_attrs_data_sha(config)
    )
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


def store_attrs_data_sha(config: CollectConfig) -> str | None:
    spec = corpus_spec(config)
    return data_sha256({"data": str(spec.local)}) if spec.local is not None else None


def collect(config: CollectConfig, plugins: PluginSet, *, remote_backend: RemoteBackend = True) -> Path:
    """Run the collect stage; returns the store's path (see run_collect)."""
    return run_collect(config, plugins, remote_backend=remote_backend).path


def rank_and_world(config: CollectConfig) -> tuple[int, int]:
    """This process's rank and the number of ranks: torchrun's (or our launcher's), else (0, nproc)."""
    import os

    if under_launcher():
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, config.nproc


def resolve_sites(adapter: Any, config: CollectConfig, n_layers: int | None = None) -> list[tuple[int, str]]:
    """The (layer, site) pairs, each checked against the model: ConfigError listing what exists."""
    resolved = []
    for layer, site in config.site_list():
        if site not in ("resid", "mlp", "attn") or site not in adapter.site_paths:
            raise ConfigError(
                f"{adapter.name} has no site {site!r}; its sites: {', '.join(adapter.site_paths)}"
            )
        resolved.append((adapter.resolve_site(layer, site, n_layers), site))
    return sorted(set(resolved))


def run_collect(
    config: CollectConfig, plugins: PluginSet, *, remote_backend: RemoteBackend = True
) -> CollectSummary:
    """Run the collect stage with the model and benchmark (or corpus) of ``plugins``; returns where
    the store (or collection) is and what it holds (its first site).

    ``remote_backend`` applies when ``config.remote``: True runs on NDIF, "local" runs nnsight's
    offline stand-in of the remote path (tests). Under torchrun (or ``--nproc``'s own launcher) this
    process is one rank: it joins the process group (gloo on CPU, NCCL on GPUs; on its own device)
    and writes its own shards.
    """
    if not under_launcher():
        return _run_collect(config, plugins, remote_backend=remote_backend)
    dist = from_environment(config.device)
    try:
        return _run_collect(config.model_copy(update={"device": dist.device}), plugins)
    finally:
        dist.close()


def _run_collect(
    config: CollectConfig, plugins: PluginSet, *, remote_backend: RemoteBackend = True
) -> CollectSummary:
    config = config.with_plugin_defaults(plugins)
    adapter = plugins.models.get(config.model)
    if not is_url(config.out):  # before any work: --force would move the input aside
        data = config.benchmark_options.get("data")
        sources = [model_folder(plugins, config.model), config.model_path, config.corpus, data]
        check_out_apart(config.out, read=local_paths([s for s in sources if isinstance(s, str | Path)]))
    if not config.remote:
        check_device(config.device, allow_auto=True)
    rank, world = rank_and_world(config)
    if world > 1 and config.remote:
        raise ConfigError(
            "--nproc runs the model in several local processes; it cannot be combined with --remote"
        )
    if config.remote and remote_backend is True:
        check_ndif(adapter, config.model_path)  # a key, a hub model NDIF serves: before any work
    benchmark = options = None
    if config.corpus is None:
        benchmark = plugins.benchmarks.get(config.benchmark)
        benchmark.check_split(config.split)
        options = benchmark.parse_options(config.benchmark_options)
        # missing, empty or malformed data fails here, in full, before any weights load or any store exists
        if rank == 0:
            check_all_examples(benchmark, config, options)
    elif rank == 0:
        corpus_source.check_readable(corpus_spec(config))
    local = local_path(config.out)
    if local is not None:
        check_can_create(local)  # a read-only or unreachable --out stops here, before the weights load
    many = len(config.site_list()) > 1 or world > 1
    if world > 1 and local is None:
        raise ConfigError(
            "--nproc: several processes write a collection through a local folder: give a local --out "
            "(several sites in one process may write to a URL)"
        )
    sites: list[SiteKey] | None = None
    if adapter.n_layers:  # a declared adapter: check the layers and sites before loading anything
        sites = resolve_sites(adapter, config)
        if not many:
            config = config.model_copy(update={"layer": sites[0][0]})
            done = _check_existing_store(config)
            if done is not None:
                return done
    if many and not under_launcher():
        _prepare_collection(config, world, sites)
        if world > 1:
            return _launch_ranks(config, world)

    if config.remote:
        loaded = load_remote(adapter, model_path=config.model_path, backend=remote_backend)
    else:
        adapter.check_weights(config.model_path)
        loaded = adapter.load(
            model_path=config.model_path, dtype=model_dtype_for(config), device=config.device
        )
    sites = resolve_sites(loaded.adapter, config, loaded.n_layers)
    if config.corpus is not None and rank == 0:
        check_one_context(config, loaded.tokenizer)
    if not many:
        config = config.model_copy(update={"layer": sites[0][0]})
        done = _check_existing_store(config)
        if done is not None:
            return done
    try:
        return trace_into_stores(config, loaded, sites, benchmark, options, rank, world, many)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise ArtifactError(
            f"{config.out}: cannot write the store ({describe_os_error(exc)}); the examples already "
            "stored are kept: free space, then run the same command again to continue"
        ) from None


def check_one_context(config: CollectConfig, tokenizer: Any) -> None:
    """A corpus too short for one --context-size context would make an empty store: refused first."""
    packing = corpus_source.Packing.for_tokenizer(tokenizer, config.context_size)
    packed = corpus_source.contexts(corpus_spec(config), tokenizer, packing, config.seed, limit=1)
    if next(packed, None) is None:
        raise ConfigError(
            f"--corpus {config.corpus} gives fewer tokens than one context of --context-size "
            f"{config.context_size}: give a longer corpus or a smaller --context-size"
        )


def _prepare_collection(config: CollectConfig, world: int, sites: list[SiteKey] | None) -> None:
    """Write (or check) the manifest before any rank starts (when the sites are known before the model
    loads); with --force move another collection, or a folder of other files, aside."""
    root = as_location(config.out)  # a Path, or a RemotePath for a URL
    if root.is_dir() and not (root / MANIFEST).exists() and any(root.iterdir()):
        if not config.force or isinstance(root, RemotePath):
            raise NotAStoreError(
                f"{config.out} exists and is not a collection (it holds "
                f"{', '.join(sorted(p.name for p in root.iterdir())[:3])}); choose another --out, or pass "
                "--force to move it aside (nothing is deleted)"
            )
        _move_aside_for_force(root, "not a collection")
    if sites is None:
        return
    keys = [site_key(*s) for s in sites]
    try:
        write_manifest(root, collection_id(config, world), world, keys, config.identity())
    except (StoreMismatchError, NotAStoreError) as exc:
        if not config.force or isinstance(root, RemotePath):  # nothing is moved aside on object storage
            raise
        _move_aside_for_force(root, str(exc).split(" (")[0])
        write_manifest(root, collection_id(config, world), world, keys, config.identity())


def _move_aside_for_force(root: Path, reason: str) -> None:
    aside = move_aside(root, recreate=False)  # (an artifact's lock files go with it)
    log.info(f"[collect] --force: {reason}; moved it to {aside}")


def _launch_ranks(config: CollectConfig, world: int) -> CollectSummary:
    start = time.monotonic()
    before = _held(Path(config.out), world)
    try:
        launch(world, _collect_entry, config.model_dump(mode="json"))
    except (ConfigError, DataFormatError):
        raise  # a worker refused its input: its one line (running again would not help)
    except ScircuitsError as exc:
        detail = str(exc).replace("distributed training", "collection").splitlines()
        raise ScircuitsError(
            f"{' '.join(line.strip() for line in detail if line.strip())[-1500:]}; what the ranks wrote "
            "is kept: run the same command again to continue"
        ) from None
    first = read_manifest(Path(config.out)).sites[0]
    store = ActivationStore(config.out, site=first, prefetch=0)
    return CollectSummary(
        Path(config.out),
        store.n_examples,
        store.n_tokens,
        store.n_examples - before[0],
        store.n_tokens - before[1],
        time.monotonic() - start,
        already_complete=before[2],
    )


def _held(root: Path, world: int) -> tuple[int, int, bool]:
    """(sequences, tokens, complete) that the first site's shards record now ((0, 0, False) if none)."""
    if not (root / MANIFEST).is_file():
        return 0, 0, False
    site = read_manifest(root).sites[0]
    recorded = [_raw_attrs(str(shard_path(root, site, rank, world))) or {} for rank in range(world)]
    return (
        sum(int(a.get("n_examples", 0)) for a in recorded),
        sum(int(a.get("n_tokens", 0)) for a in recorded),
        all(a.get("complete") for a in recorded),
    )


def _collect_entry(config_values: dict[str, Any]) -> None:
    """The top of a collect rank: its own plugin set and process group (gloo on CPU)."""
    run_collect(CollectConfig.validated(config_values), get_plugins())


def check_all_examples(benchmark: Any, config: CollectConfig, options: Any) -> int:
    """Read every example the collection will trace (a bad line anywhere stops it now); no example
    at all is an error. Returns how many."""
    count = sum(1 for _ in benchmark.read_examples(config.split, config.limit, config.seed, options))
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


def _open_writers(
    config: CollectConfig, loaded: Any, sites: list[SiteKey], rank: int, world: int, many: bool, packing: Any
) -> dict[SiteKey, ActivationStoreWriter]:
    writers: dict[SiteKey, ActivationStoreWriter] = {}
    try:
        for layer, site in sites:
            attrs = store_attrs(config, loaded, layer, site, packing)
            path: str | Path = config.out
            if many:
                attrs.update(collection_id=collection_id(config, world), shard_rank=rank, world_size=world)
                path = str(shard_path(config.out, site_key(layer, site), rank, world))
            writers[(layer, site)] = ActivationStoreWriter.open(
                path, attrs, d_model=loaded.d_model, dtype=config.dtype, chunk_rows=config.chunk_rows
            )
    except BaseException:
        for writer in writers.values():
            writer.close(complete=False)
        raise
    return writers


def trace_into_stores(
    config: CollectConfig,
    loaded: Any,
    sites: list[SiteKey],
    benchmark: Any,
    options: Any,
    rank: int = 0,
    world: int = 1,
    many: bool = False,
) -> CollectSummary:
    start = time.monotonic()
    if many:  # every rank writes or checks it: the same command writes the same manifest
        write_manifest(
            config.out, collection_id(config, world), world, [site_key(*s) for s in sites], config.identity()
        )
    packing = (
        None
        if config.corpus is None
        else corpus_source.Packing.for_tokenizer(loaded.tokenizer, config.context_size)
    )
    writers = _open_writers(config, loaded, sites, rank, world, many, packing)
    first = writers[sites[0]]
    if all(w.complete for w in writers.values()):
        for writer in writers.values():
            writer.close()
        return CollectSummary(
            Path(config.out),
            first.n_examples_written,
            first.n_tokens_written,
            0,
            0,
            0.0,
            already_complete=True,
        )
    tracer = SitesTracer(loaded, sites)
    n_cut = [0]
    if config.corpus is None:
        max_length = sequence_limit(config, loaded)
        items_from = _benchmark_items(config, loaded, benchmark, options, max_length, rank, world, n_cut)
        total = None if config.limit is None else len(range(rank, config.limit, world))
        what, unit = config.benchmark, "examples"
    else:
        max_length = None
        n_contexts = -(-config.tokens // config.context_size) if config.tokens else None
        items_from = _corpus_items(config, loaded, packing, n_contexts, rank, world)
        total = None if n_contexts is None else len(range(rank, n_contexts, world))
        what, unit = f"corpus {config.corpus}", "contexts"
    label = ",".join(site_key(*s) for s in sites)
    shard = f" rank {rank}/{world}" if world > 1 else ""
    skip = min(w.n_examples_written for w in writers.values())
    log.debug(
        f"[collect] {config.model} (revision {loaded.revision}) sites {label}{shard}: {skip} example(s) "
        f"already written, batch {config.batch_size}, store dtype {config.dtype}, collection id "
        f"{collection_id(config, world)}"
    )
    try:
        with progress(
            f"collect {config.model} {label} {what}{shard}",
            total=total,
            enabled=config.progress,
            unit=unit,
        ) as bar:
            if skip:
                bar.advance(skip, status="resumed")

            def report(appended: int, new_tokens: int) -> None:
                elapsed = max(time.monotonic() - start, 1e-9)
                bar.advance(
                    appended, status=f"{first.n_tokens_written} tokens, {new_tokens / elapsed:.0f} tok/s"
                )

            counts = write_items(
                items_from,
                writers,
                tracer,
                batch_size=config.batch_size,
                window_size=config.batch_size * SORT_WINDOW_BATCHES,
                on_window=report,
            )
    except BaseException:
        for writer in writers.values():
            writer.close(complete=False)
        raise
    for writer in writers.values():
        writer.close()
    if n_cut[0]:
        log.info(
            f"note: {n_cut[0]} sequences reached {max_length} tokens and were cut to the end of their prompt "
            "and their target (--max-length)"
        )
    if (
        config.corpus is not None
        and config.tokens
        and first.n_tokens_written * world < config.tokens - world * config.context_size
    ):
        log.info(
            f"note: the corpus ran out after {first.n_tokens_written} tokens{shard} "
            f"(asked for {config.tokens} in all)"
        )
    if counts.new_examples == 0 and skip == 0:
        log.warning(f"warning: {what} gave no {unit}")
    return CollectSummary(
        Path(config.out),
        first.n_examples_written,
        first.n_tokens_written,
        counts.new_examples,
        counts.new_tokens,
        time.monotonic() - start,
    )


def trace_into_store(
    config: CollectConfig, loaded: Any, layer: int, benchmark: Any, options: Any
) -> CollectSummary:
    """One site of one layer into the store at --out (the single-store case of trace_into_stores)."""
    return trace_into_stores(config, loaded, [(layer, config.site)], benchmark, options)


def _benchmark_items(
    config: CollectConfig,
    loaded: Any,
    benchmark: Any,
    options: Any,
    max_length: int | None,
    rank: int,
    world: int,
    n_cut: list[int],
):
    def items_from(start: int) -> Iterator[Item]:
        examples = benchmark.read_examples(config.split, config.limit, config.seed, options)
        mine = itertools.islice(enumerate(examples), rank, None, world)
        for local, (index, example) in enumerate(mine):
            if local < start:
                continue
            ids = encode_example(loaded.tokenizer, example, max_length).input_ids
            n_cut[0] += max_length is not None and len(ids) == max_length
            yield local, index, list(ids)

    return items_from


def _corpus_items(
    config: CollectConfig, loaded: Any, packing: Any, n_contexts: int | None, rank: int, world: int
):
    spec = corpus_spec(config)

    def items_from(start: int) -> Iterator[Item]:
        packed = corpus_source.contexts(spec, loaded.tokenizer, packing, config.seed, limit=n_contexts)
        for index, ids in enumerate(packed):
            if index % world != rank:
                continue
            local = index // world
            if local >= start:
                yield local, index, ids

    return items_from
