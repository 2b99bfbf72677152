"""``scircuits compare``: match the features of two or more runs' SAEs, beside each run's ceiling
(its SAE against a seed twin on the same store) and floors (an untrained SAE of the same
architecture; a random orthonormal basis of the activation space), and, for runs on different
models, layers or sites, the floors in the pair's own spaces (``floors``); write compare/results.json.
"""

from __future__ import annotations

import difflib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from scircuits.files import write_atomic
from scircuits.platform.common.artifacts import check_distinct
from scircuits.platform.common.logs import get_logger
from scircuits.platform.compare import internals
from scircuits.platform.compare.causal_agreement import (
    effect_correlation,
    exact_effects,
    ranked_ids,
    top_k_overlap,
)
from scircuits.platform.compare.correlation import CorrelationAccumulator
from scircuits.platform.compare.floors import ROTATION_SEED, decoder, floor_jobs, same_space, untrained_like
from scircuits.platform.compare.geometry import random_rotation, rsa
from scircuits.platform.compare.matching import (
    Matches,
    MatchSet,
    distribution,
    hungarian_matches,
    max_matches,
)
from scircuits.platform.compare.runs import Run, read_run, tag_alike
from scircuits.platform.compare.schema import (
    CompareResults,
    Comparison,
    ContextPair,
    ContextSide,
    EffectAgreement,
    Geometry,
    MatchedDistribution,
    MatchedPair,
    PairFloors,
    PairResult,
    Reference,
    RunEntry,
    TopKAgreement,
)
from scircuits.platform.compare.sources import (
    AlignmentCounts,
    Chunk,
    Encoder,
    ModelSide,
    TopRows,
    basis_encoder,
    model_chunks,
    paired_store_chunks,
    sae_encoder,
    store_chunks,
    stores_hold_the_same_tokens,
)
from scircuits.platform.config.stages import STRICT
from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.contract.hf_loading import check_weights_available
from scircuits.platform.manager.plugin_set import PluginSet

log = get_logger(__name__)

RESULTS_FILE = "results.json"
MATCHES_DIR = "matches"


class InvalidOption(ConfigError):
    """A compare option has a value it cannot take (the CLI reports it as a usage error)."""


class CompareOptions(BaseModel):
    model_config = STRICT
    out: str = "compare"
    limit: int = Field(default=200, gt=0)  # benchmark examples traced when the source is the models
    split: str | None = None  # None: run A's evaluation split
    source: Literal["auto", "model", "store"] = "auto"
    max_tokens: int | None = Field(default=200_000, gt=0)  # store tokens read per comparison
    train_twins: bool = True
    twin_seed_offset: int = Field(default=1, ge=1)
    permutations: int = Field(default=999, gt=0)
    rsa_pairs: int = Field(default=1000, ge=4)
    batch_size: int = Field(default=16, gt=0)
    top_pairs: int = Field(default=20, ge=0)
    top_k: list[int] = Field(default_factory=lambda: [5, 10])
    contexts: int = Field(default=6, ge=0)
    seed: int = Field(default=0, ge=0)
    progress: bool = True
    model_path: list[str] = Field(default_factory=list)  # where moved runs' model weights are now

    def __init__(self, **values: Any) -> None:
        # built in Python or from the flags, a bad value is one line naming the option
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidOption(option_error(exc)) from None


def option_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    flag = "--" + name.replace("_", "-") if name else "compare"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(name, list(CompareOptions.model_fields), n=1)
        known = ", ".join(CompareOptions.model_fields)
        hint = f"; did you mean {close[0]!r}?" if close else f"; the options: {known}"
        return f"compare has no option {name!r}{hint}"
    return f"{flag} {error.get('input')!r}: {error['msg']}"


FEW_TOKENS = 1000  # store tokens per comparison below which compare warns


def say(message: str) -> None:
    log.info(message)


def _dist(values: np.ndarray, n_total: int) -> MatchedDistribution:
    d = distribution(values, n_total)
    as_float = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in vars(d).items()}
    return MatchedDistribution(**as_float)


def _nan_none(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def measure(
    kind: str,
    labels: tuple[str, str],
    source: str,
    alignment: str,
    chunks: Iterable[Chunk],
    dims: tuple[int, int],
    decoders: tuple[np.ndarray, np.ndarray],
    options: CompareOptions,
    tops: tuple[TopRows, TopRows] | None = None,
) -> tuple[Comparison, MatchSet]:
    start = time.monotonic()
    acc = CorrelationAccumulator(*dims)
    for chunk in chunks:
        acc.add(chunk.a, chunk.b)
        if tops is not None:
            tops[0].update(chunk.a, chunk.labels)
            tops[1].update(chunk.b, chunk.labels)
    if acc.n < 2:
        raise internals.config_error(f"{labels[0]} vs {labels[1]}: fewer than 2 paired tokens to correlate")
    cm = acc.finish()
    forward, backward = max_matches(cm)
    hung = hungarian_matches(cm)
    m = min(options.rsa_pairs, len(hung))
    geo = rsa(
        decoders[0][hung.a_index[:m]], decoders[1][hung.b_index[:m]], options.permutations, options.seed
    )
    alive_a, alive_b = int(cm.alive_a.sum()), int(cm.alive_b.sum())
    comparison = Comparison(
        kind=kind,
        a=labels[0],
        b=labels[1],
        source=source,
        alignment=alignment,
        n_tokens=cm.n_tokens,
        d_a=dims[0],
        d_b=dims[1],
        alive_a=alive_a,
        alive_b=alive_b,
        max_a_to_b=_dist(forward.corr, alive_a),
        max_b_to_a=_dist(backward.corr, alive_b),
        hungarian=_dist(hung.corr, alive_a),  # shares: of A's live latents, unmatched ones below
        hungarian_method=hung.method,
        geometry=Geometry(
            rsa=_nan_none(geo.rsa),
            p_value=_nan_none(geo.p_value),
            null_mean=_nan_none(geo.null_mean),
            null_q95=_nan_none(geo.null_q95),
            n_pairs=geo.n_pairs,
            n_permutations=geo.n_permutations,
        ),
        top_pairs=[
            MatchedPair(a=int(a), b=int(b), corr=float(c))
            for a, b, c in zip(
                hung.a_index[: options.top_pairs],
                hung.b_index[: options.top_pairs],
                hung.corr[: options.top_pairs],
                strict=True,
            )
        ],
        seconds=time.monotonic() - start,
    )
    del cm
    return comparison, MatchSet(hung, forward, backward)


# -- a run's own ceiling and floors -------------------------------------------------------------


def twin_command(run: Run, twin_dir: Path, seed: int) -> str:
    tc = run.sae_meta.get("train_config") or {}
    parts = [
        "scircuits train",
        f"--store {run.store_path}",
        *([f"--sae {tc['sae']}"] if tc.get("sae") else []),  # none: the plugin set's default
        f"--seed {seed}",
    ]
    flags = {"expansion": "--expansion", "lr": "--lr", "batch_size": "--batch-size", "tokens": "--tokens"}
    parts += [f"{flag} {tc[key]}" for key, flag in flags.items() if tc.get(key) is not None]
    hparams = tc.get("hparams") or {}
    parts += [f"--{key} {hparams[key]}" for key in ("k", "l1") if hparams.get(key) is not None]
    parts.append(f"--out {twin_dir}")
    return " ".join(parts)


def seed_twin(run: Run, options: CompareOptions, core: internals.Core) -> tuple[Path | None, str | None]:
    """The run's SAE retrained with another seed on the same store: found, trained, or how to."""
    tc = dict(run.sae_meta.get("train_config") or {})
    seed = int(tc.get("seed", 0)) + options.twin_seed_offset
    if run.store_path is None:
        return None, f"no ceiling: {run.path} has no activation store to train a seed twin on"
    # keyed by what the twin is trained from (the SAE's config and the store), not the folder's name:
    # two runs of one name in different folders get their own twins
    key = f"{str(run.sae_meta.get('config_hash') or 'nohash')[:8]}-{internals.store_key(run.store_path)}"
    twin_dir = Path(options.out) / "twins" / f"{run.name}__{key}__seed{seed}"
    if internals.sae_complete(twin_dir):
        return twin_dir, None
    if not options.train_twins or not tc:
        how = twin_command(run, twin_dir, seed)
        why = "--no-train-twins was given" if tc else f"{run.sae_path}/scircuits.json records no train config"
        return None, f"no ceiling ({why}): train the seed twin with `{how}` and rerun compare"
    say(f"compare: training the seed twin of {run.name} (seed {seed}) -> {twin_dir}")
    tc.update(
        seed=seed, out=str(twin_dir), store=str(run.store_path), resume=False, progress=options.progress
    )
    return core.train_sae(tc), None


def reference(run: Run, sae: Any, options: CompareOptions, core: internals.Core) -> Reference:
    twin_path, note = seed_twin(run, options, core)
    ref = Reference(twin_path=str(twin_path) if twin_path else None, note=note)
    if run.store_path is None:
        ref.note = f"no ceiling or floor: {run.path} has no activation store"
        return ref
    store = internals.open_store(run.store_path)
    d_model, d_sae = int(sae.d_in), int(sae.d_sae)
    encode = sae_encoder(sae)
    dec = decoder(sae)
    name = "SAE"
    if twin_path is not None:
        twin, _ = core.load_sae(twin_path)
        ref.ceiling, _ = measure(
            "ceiling-seed",
            (name, "seed twin"),
            "store",
            "token",
            store_chunks(store, encode, sae_encoder(twin), options.max_tokens),
            (d_sae, int(twin.d_sae)),
            (dec, decoder(twin)),
            options,
        )
    untrained = untrained_like(run, sae, core)
    ref.floor_untrained, _ = measure(
        "floor-untrained",
        (name, "untrained"),
        "store",
        "token",
        store_chunks(store, encode, sae_encoder(untrained), options.max_tokens),
        (d_sae, d_sae),
        (dec, decoder(untrained)),
        options,
    )
    basis = random_rotation(d_model, ROTATION_SEED)
    ref.floor_rotation, _ = measure(
        "floor-rotation",
        (name, "random basis"),
        "store",
        "token",
        store_chunks(store, encode, basis_encoder(basis), options.max_tokens),
        (d_sae, d_model),
        (dec, basis),
        options,
    )
    return ref


# -- two runs -------------------------------------------------------------------------------------


def _context_side(latent: int, top: TopRows, texts: list[str], start_col: int) -> ContextSide:
    contexts = []
    for value, label in top.of(latent):
        example, start, end = int(label[0]), int(label[start_col]), int(label[2])
        if example < 0 or example >= len(texts) or end < 0:
            continue
        text = texts[example]
        start = start if start >= 0 else end
        contexts.append((text[max(0, start - 40) : start], text[start:end], value))
    return ContextSide(latent=latent, contexts=contexts)


def store_contexts(
    run: Run,
    store: Any,
    hung: Matches,
    tops: tuple[TopRows, TopRows],
    options: CompareOptions,
    cache: dict,
    core: internals.Core,
) -> list[ContextPair]:
    """Top contexts of the best pairs from a store's token ids, decoded with the run's tokenizer
    (both stores hold the same tokens). Without loadable weights there are no contexts."""
    if options.contexts == 0 or len(hung) == 0:
        return []
    if run.source is None:  # its model folder is gone: warned before any work
        return []
    key = (run.source.model, run.source.model_path)
    if key not in cache:
        try:
            cache[key] = core.load_run_model(run.source, run.path)
        except ConfigError:  # --model-path of other weights than the run's
            raise
        except Exception as exc:
            say(f"compare: no top contexts ({exc})")
            return []
    tokenizer = cache[key].tokenizer
    example_ids, token_ids, positions = (store.read_ids(n) for n in ("example_ids", "token_ids", "positions"))

    def side(latent: int, top: TopRows) -> ContextSide:
        contexts = []
        for value, label in top.of(latent):
            rows = np.flatnonzero(example_ids == label[0])
            tokens = token_ids[rows][np.argsort(positions[rows])]
            pos = int(label[2])
            before = tokenizer.decode(tokens[max(0, pos - 16) : pos].tolist())
            contexts.append((before, tokenizer.decode([int(tokens[pos])]), value))
        return ContextSide(latent=latent, contexts=contexts)

    return [
        ContextPair(corr=float(c), a=side(int(a), tops[0]), b=side(int(b), tops[1]))
        for a, b, c in zip(
            hung.a_index[: options.contexts], hung.b_index[: options.contexts], hung.corr, strict=False
        )
    ]


def check_inputs(
    runs: list[Run], traced: list[Run], options: CompareOptions, plugins: PluginSet, core: internals.Core
) -> None:
    """Before any twin is trained: a given --split exists in each run's benchmark, each run's model is
    located (``--model-path`` for a moved weights folder, its weights checked against the run's
    record), and the weights of every model a pair traces can be had. A run whose model folder is gone
    and that no pair traces loses only its top contexts, with a warning naming --model-path."""
    for run in runs:
        name = run.config.get("benchmark")
        if options.split is not None and name:
            plugins.benchmarks.get(str(name)).check_split(options.split)
    traced_ids = {id(r) for r in traced}
    for run in runs:
        try:
            run.source = core.locate_model(run, options.model_path)
        except ConfigError as exc:
            if id(run) in traced_ids or options.model_path:
                raise
            if options.contexts:
                log.warning(f"warning: compare: no top contexts of {run.path} ({exc})")
    for run in {id(r): r for r in traced}.values():
        adapter = plugins.models.get(run.source.model)
        check_weights_available(adapter, run.source.model_path)


def pair_source(run_a: Run, run_b: Run, options: CompareOptions) -> Literal["stores", "model"]:
    """Where a pair's activations come from; refuses impossible pairs before any work is done."""
    if options.source in ("auto", "store") and run_a.store_path is not None and run_b.store_path is not None:
        store_a, store_b = internals.open_store(run_a.store_path), internals.open_store(run_b.store_path)
        if stores_hold_the_same_tokens(store_a, store_b):
            return "stores"
    if options.source == "store":
        raise internals.config_error(
            f"--source store: the stores of {run_a.path} and {run_b.path} do not hold the same tokens; "
            "use --source model"
        )
    benchmark = run_a.config.get("benchmark")
    if benchmark != run_b.config.get("benchmark"):
        raise internals.config_error(
            f"{run_a.path} ran on {benchmark!r} and {run_b.path} on {run_b.config.get('benchmark')!r}; "
            "compare traces both models on one benchmark's examples: give runs on the same benchmark"
        )
    return "model"


def pair_floors(
    runs: tuple[Run, Run],
    saes: tuple[Any, Any],
    chunks_for: Callable[[Encoder, Encoder], Iterator[Chunk]],
    source: str,
    options: CompareOptions,
    core: internals.Core,
) -> PairFloors | None:
    """The floors in the pair's own spaces (``floors``), on the pair's tokens; None when both runs
    read the same activations (their own references are then the pair's floors)."""
    if same_space(*runs):
        return None
    say(f"compare: floors of {runs[0].name} vs {runs[1].name} in their own spaces")
    counts = AlignmentCounts()
    measured = {}
    for job in floor_jobs(runs, saes, lambda a, b: chunks_for(a, b, counts), core):
        comparison, _ = measure(
            job.kind, job.labels, source, "token", job.chunks, job.dims, job.decoders, options
        )
        comparison.alignment = counts.mode if source == "model" else "token"
        measured[job.field] = comparison
    return PairFloors(**measured)


def compare_pair(
    run_a: Run,
    run_b: Run,
    saes: tuple[Any, Any],
    options: CompareOptions,
    loaded_cache: dict[tuple, Any],
    core: internals.Core,
) -> tuple[Comparison, MatchSet, AlignmentCounts, list[ContextPair], PairFloors | None]:
    sae_a, sae_b = saes
    dims = (int(sae_a.d_sae), int(sae_b.d_sae))
    decoders = (decoder(sae_a), decoder(sae_b))
    labels = (run_a.label, run_b.label)
    counts = AlignmentCounts()
    stores_match = pair_source(run_a, run_b, options) == "stores"
    if stores_match:
        store_a, store_b = internals.open_store(run_a.store_path), internals.open_store(run_b.store_path)

        def store_pair(encode_a: Encoder, encode_b: Encoder, _: AlignmentCounts) -> Iterator[Chunk]:
            return paired_store_chunks(store_a, store_b, encode_a, encode_b, options.max_tokens)

        chunks = store_pair(sae_encoder(sae_a), sae_encoder(sae_b), counts)
        tops = (TopRows(dims[0]), TopRows(dims[1]))
        comparison, matches = measure(
            "pair", labels, "stores", "token", chunks, dims, decoders, options, tops
        )
        contexts = store_contexts(run_a, store_a, matches.hungarian, tops, options, loaded_cache, core)
        floors = pair_floors((run_a, run_b), saes, store_pair, "stores", options, core)
        return comparison, matches, counts, contexts, floors

    benchmark = run_a.config.get("benchmark")
    split = options.split or str(run_a.config.get("split", "test"))
    examples = core.benchmark_examples(
        benchmark,
        split,
        options.limit,
        int(run_a.config.get("seed", 0)),
        dict(run_a.config.get("benchmark_options") or {}),
    )
    if not examples:
        raise internals.config_error(f"benchmark {benchmark!r} gave no examples for split {split!r}")

    def side(run: Run, sae: Any) -> ModelSide:
        key = (run.source.model, run.source.model_path)
        if key not in loaded_cache:
            loaded_cache[key] = core.load_run_model(run.source, run.path)
        loaded = loaded_cache[key]
        return ModelSide(loaded, internals.site_tracer(loaded, run.layer, run.site), sae_encoder(sae))

    side_a, side_b = side(run_a, sae_a), side(run_b, sae_b)
    texts: list[str] = []
    tops = (TopRows(dims[0]), TopRows(dims[1]))

    def traced_pair(encode_a: Encoder, encode_b: Encoder, tally: AlignmentCounts) -> Iterator[Chunk]:
        sides = (replace(side_a, encode=encode_a), replace(side_b, encode=encode_b))
        return model_chunks(*sides, examples, options.batch_size, tally, [])

    chunks = model_chunks(side_a, side_b, examples, options.batch_size, counts, texts)
    comparison, matches = measure("pair", labels, "model", "token", chunks, dims, decoders, options, tops)
    hung = matches.hungarian
    comparison.alignment = counts.mode
    contexts = [
        ContextPair(
            corr=float(c),
            a=_context_side(int(a), tops[0], texts, 1),
            b=_context_side(int(b), tops[1], texts, 3),
        )
        for a, b, c in zip(
            hung.a_index[: options.contexts], hung.b_index[: options.contexts], hung.corr, strict=False
        )
    ]
    floors = pair_floors((run_a, run_b), saes, traced_pair, "model", options, core)
    return comparison, matches, counts, contexts, floors


def causal_agreement(
    run_a: Run, run_b: Run, hung: Matches, d_b: int, options: CompareOptions
) -> tuple[EffectAgreement, list[TopKAgreement]]:
    eff = effect_correlation(
        hung.a_index,
        hung.b_index,
        exact_effects(run_a.features),
        exact_effects(run_b.features),
        seed=options.seed,
    )
    note = "; ".join(w for w in (run_a.no_features, run_b.no_features) if w) or None
    agreement = EffectAgreement(
        n_pairs=eff.n_pairs, pearson=eff.pearson, ci=eff.ci, pairs=eff.pairs, note=note
    )
    ranked_a, ranked_b = ranked_ids(run_a.features), ranked_ids(run_b.features)
    top_k = []
    for k in options.top_k:
        if k > min(len(ranked_a), len(ranked_b)):
            continue  # results.json describes only its top features
        o = top_k_overlap(hung.a_index, hung.b_index, ranked_a, ranked_b, k, d_b)
        top_k.append(
            TopKAgreement(k=o.k, matched_in_top_k=o.matched_in_top_k, expected_by_chance=o.expected_by_chance)
        )
    return agreement, top_k


def run_entry(run: Run, sae: Any, ref: Reference) -> RunEntry:
    return RunEntry(
        path=str(run.path),
        resolved_path=str(run.path.resolve()),
        label=run.label,
        model=run.model,
        layer=run.layer,
        site=run.site,
        benchmark=str(run.config.get("benchmark")),
        sae_variant=str(run.sae_meta.get("variant") or sae.variant),
        d_model=int(sae.d_in),
        d_sae=int(sae.d_sae),
        reference=ref,
    )


def write_matches(matches: MatchSet, out: Path, i: int, j: int) -> str:
    """Every live latent's matches of runs i and j as arrays; returns the path relative to ``out``."""
    relative = Path(MATCHES_DIR) / f"pair-{i}-{j}.npz"
    path = out / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    # a file object: savez does not add ".npz" to the temporary name
    write_atomic(path, lambda fh: np.savez_compressed(fh, **matches.arrays()))
    return relative.as_posix()


def write_results(results: CompareResults, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    write_atomic(path, results.model_dump_json(indent=2) + "\n")
    return path


def _load_sae(core: internals.Core, run: Run) -> Any:
    """The run's SAE; a damaged checkpoint is a one-line error naming it."""
    try:
        return core.load_sae(run.sae_path)[0]
    except ScircuitsError:
        raise
    except Exception as exc:  # safetensors, torch or a variant failing on damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise internals.config_error(
            f"{run.sae_path}: the SAE cannot be loaded ({reason}); restore it or rerun `scircuits run`"
        ) from None


def compare_runs(paths: list[str | Path], options: CompareOptions, plugins: PluginSet) -> CompareResults:
    """Compare every pair of runs with the plugin objects of ``plugins``; writes
    ``<out>/results.json`` and returns the results."""
    start = time.monotonic()
    core = internals.Core(plugins)
    if len(paths) < 2:
        raise internals.config_error("compare needs at least two run directories")
    check_distinct(paths, "compare")
    if options.max_tokens is not None and options.max_tokens < FEW_TOKENS:
        log.warning(
            f"warning: --max-tokens {options.max_tokens}: correlations over so few tokens are noise (the "
            f"floors can read 1.0); give at least {FEW_TOKENS}"
        )
    runs = [read_run(p, plugins) for p in paths]
    tag_alike(runs)
    index_pairs = list(itertools.combinations(range(len(runs)), 2))
    sources = [pair_source(runs[i], runs[j], options) for i, j in index_pairs]  # impossible pairs fail
    traced = [runs[k] for (i, j), s in zip(index_pairs, sources, strict=True) if s == "model" for k in (i, j)]
    check_inputs(runs, traced, options, plugins, core)
    saes = [_load_sae(core, run) for run in runs]
    entries = []
    for run, sae in zip(runs, saes, strict=True):
        say(f"compare: ceiling and floors of {run.label} ({run.path})")
        entries.append(run_entry(run, sae, reference(run, sae, options, core)))
    loaded_cache: dict[tuple, Any] = {}
    pairs = []
    for i, j in index_pairs:
        say(f"compare: {runs[i].label} vs {runs[j].label}")
        comparison, matches, counts, contexts, floors = compare_pair(
            runs[i], runs[j], (saes[i], saes[j]), options, loaded_cache, core
        )
        effect, top_k = causal_agreement(runs[i], runs[j], matches.hungarian, int(saes[j].d_sae), options)
        pairs.append(
            PairResult(
                a=i,
                b=j,
                comparison=comparison,
                alignment_pairs=counts.pairs,
                alignment_tokens_a=counts.tokens_a,
                alignment_tokens_b=counts.tokens_b,
                effect_agreement=effect,
                top_k=top_k,
                floors=floors,
                contexts=contexts,
                matches_file=write_matches(matches, Path(options.out), i, j),
            )
        )
    results = CompareResults(
        options=options.model_dump(mode="json"),
        runs=entries,
        pairs=pairs,
        provenance={
            **internals.provenance(),
            "runs": [str(r.path) for r in runs],
            "saes": [str(r.sae_path) for r in runs],
        },
        wall_seconds=time.monotonic() - start,
    )
    write_results(results, Path(options.out))
    return results
