"""`scircuits run`: the stages of ``stages.STAGES`` (collect -> train -> ablate -> report) into one
run directory (DESIGN.md).

    runs/<model>__<benchmark>[-<label>]__<site><layer>/
      activations.zarr/  sae/  causal/  report.md  report.html  figures/  pipeline.json

Each stage has a key: the hash of its own configuration and the key of the stage before it, so a
changed flag redoes the stage it affects and every stage after it. ``pipeline.json`` records each
stage's key when it starts and when it is complete. A stage is skipped when its artifact is
complete and was made under the current key; it is continued (collection and training resume) when
it was started under the current key; otherwise its stale artifact is moved aside (never deleted) and
the stage is redone. The model's weights are checked before anything runs.

``pipeline.json`` is a log, not the authority: a stage whose artifact proves by itself that it was
made with the current settings (the store's attrs, the SAE's config_hash, results.json's config
hash) is up to date even when ``pipeline.json`` is lost or truncated, as long as every stage before
it was up to date too. Every setting is validated before the run directory is touched, and the run
directory is locked against a second ``run``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from scircuits.platform.causal.stage import hook_site
from scircuits.platform.common.artifacts import (
    LOCK_FILE,
    MARKER_FILE,
    ArtifactError,
    FolderLock,
    check_writable,
    enclosing_container,
    move_aside,
    read_marker,
    remove_orphans,
    write_marker,
)
from scircuits.platform.common.device import check_device, check_study_dtype
from scircuits.platform.common.fingerprint import weights_fingerprint
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.provenance import now_iso
from scircuits.platform.common.remote import is_url, join_path, remote_out
from scircuits.platform.config import RunConfig, StageConfig
from scircuits.platform.contract.errors import ConfigError, ScircuitsError, WeightsUnavailableError
from scircuits.platform.contract.hf_loading import check_weights_available, config_sizes
from scircuits.platform.dashboard.sources import EVALUATION_STORE
from scircuits.platform.manager.failures import warn_failed_plugins
from scircuits.platform.model.tracing import check_ndif
from scircuits.platform.pipeline.stages import STAGES, PlanContext, Stage
from scircuits.platform.pipeline.state import STATE_FILE, PipelineState
from scircuits.platform.report.document import REPORT_HTML, REPORT_MD
from scircuits.platform.train.checkpoint import load_sae
from scircuits.platform.train.published import is_published, resolve_source
from scircuits.platform.train.size import check_sae_memory

log = get_logger(__name__)


def sae_fingerprint(spec: str, plugins: Any) -> str:
    """What names a given SAE's weights, so that a study of other weights under the same spec is redone:
    the sha256 of a local folder's files, or the hub commit a published SAE resolves to now."""
    folder = Path(spec).expanduser()
    if not is_url(spec) and folder.is_dir():
        return f"files:{weights_fingerprint(folder)}"
    try:
        hub = resolve_source(spec, plugins).hub
    except ScircuitsError:
        return "unresolved"  # the study's own loading says what is wrong
    return f"commit:{hub.commit}" if hub is not None else "unversioned"


MAX_MODEL_PART = 80  # characters of a run directory's name taken by the model (names stay < 255)


def run_dir_name(model: str, benchmark: str, site: str, layer: int, label: str = "") -> str:
    """The run directory's name; ``label`` is the benchmark's tag for options that change what is
    measured (``Benchmark.label``, e.g. a prompt mode: "gsm8k-cot-none")."""
    safe = lambda text: "".join(c if c.isalnum() or c in "-._" else "-" for c in text)  # noqa: E731
    named = f"{benchmark}-{label}" if label else benchmark
    model_part = safe(model)
    if len(model_part) > MAX_MODEL_PART:  # a model named by a long folder path: its end and a hash
        digest = hashlib.sha256(model.encode()).hexdigest()[:8]
        model_part = f"{model_part[-(MAX_MODEL_PART - 9) :].lstrip('-')}-{digest}"
    return f"{model_part}__{safe(named)}__{site}{layer}"


def chained_key(config_hash: str, *upstream: str) -> str:
    return hashlib.sha256("|".join((config_hash, *upstream)).encode()).hexdigest()[:16]


@dataclass
class Plan:
    """The stage configurations of one run (by stage name; None for a stage without one), and the
    key of each stage."""

    run_dir: Path
    layer: int
    configs: dict[str, StageConfig | None]
    keys: dict[str, str]

    def __getattr__(self, name: str) -> Any:  # plan.collect, plan.train, plan.ablate
        configs = self.__dict__.get("configs", {})
        if name in configs:
            return configs[name]
        raise AttributeError(name)


def resolve_layer(adapter: Any, config: RunConfig) -> int:
    """The layer of the run, known before any weights load (it names the run directory)."""
    n_layers = adapter.n_layers
    if not n_layers:  # an adapter that learns its sizes from the config (e.g. hf:ORG/NAME)
        n_layers = config_layer_count(config.model_path or adapter.hf_id)
    return adapter.resolve_site(config.layer, config.site, n_layers)


def config_layer_count(source: str) -> int:
    return model_config_sizes(source)[0]


def model_layer_count(adapter: Any, config: RunConfig) -> int:
    """The model's number of blocks, known before any weights load (0 when it cannot be read)."""
    return _known_size(adapter, config, "n_layers", 0)


def model_width(adapter: Any, config: RunConfig) -> int:
    """The model's width, known before any weights load (0 when its configuration cannot be read)."""
    return _known_size(adapter, config, "d_model", 1)


def _known_size(adapter: Any, config: RunConfig, attribute: str, index: int) -> int:
    """The adapter's ``attribute`` or else the model configuration's (blocks, width)[``index``]."""
    if getattr(adapter, attribute, 0):
        return int(getattr(adapter, attribute))
    try:
        return model_config_sizes(config.model_path or adapter.hf_id)[index]
    except (WeightsUnavailableError, ConfigError):
        return 0


def model_config_sizes(source: str) -> tuple[int, int]:
    from transformers import AutoConfig

    try:
        return config_sizes(AutoConfig.from_pretrained(source))
    except OSError as exc:
        raise WeightsUnavailableError(
            f"cannot read the configuration of {source}: {exc}. Give --model-path "
            f"DIR (a folder with config.json and the weights)"
        ) from None


def sae_slug(spec: str) -> str:
    """A run directory's tag for a given SAE: its spec made safe, shortened with a hash when long."""
    text = spec if ":" in spec else f"{Path(spec).resolve().name}-{_digest(str(Path(spec).resolve()))}"
    safe = "".join(c if c.isalnum() or c in "-._" else "-" for c in text).strip("-")
    return safe if len(safe) <= 72 else f"{safe[:63]}-{_digest(spec)}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def published_layer(config: RunConfig, plugins: Any, adapter: Any) -> int:
    """The layer of a given SAE, from its hook name (checked against --layer and --site); the SAE is
    read here, before any model weights, so a bad name or width stops the run first."""
    spec = str(config.train.sae)
    sae, info = load_sae(spec, plugins)
    width = int(sae.W_dec.shape[1])
    if adapter.d_model and width != adapter.d_model:
        raise ConfigError(
            f"the SAE {spec} reads width {width}, but {config.model} has width {adapter.d_model}: it was "
            "made for another model"
        )
    hooked = hook_site(SimpleNamespace(sae=spec, layer=config.layer, site=config.site), adapter, info)
    return hooked[0] if hooked is not None else resolve_layer(adapter, config)


def plan(config: RunConfig, plugins: Any) -> Plan:
    config = config.with_plugin_defaults(plugins)
    adapter = plugins.models.get(config.model)
    benchmark = plugins.benchmarks.get(config.benchmark)
    benchmark.check_split(config.split)
    published = str(config.train.sae) if is_published(config.train.sae, plugins) else None
    layer = published_layer(config, plugins, adapter) if published else resolve_layer(adapter, config)
    if published:
        unused = sorted(config.train.model_fields_set - {"sae"})
        if unused:
            named = {"hparams": "--sae-option"}  # the flag of the SAE options on the command line
            flags = ", ".join(named.get(n) or RunConfig.flag_of(("train", n)) or n for n in unused)
            log.warning(f"[run] --sae {published} is studied as given (nothing is trained): {flags} not used")
        blocks = model_layer_count(adapter, config)
        if blocks and layer >= blocks:
            raise ConfigError(
                f"--sae {published} reads layer {layer}, but {config.model} has {blocks} layers "
                f"(0-{blocks - 1}): it was made for another model"
            )
    label = benchmark.label(config.benchmark_options)
    name = run_dir_name(config.model, config.benchmark, config.site, layer, label)
    run_dir = Path(config.out) / (f"{name}__{sae_slug(published)}" if published else name)
    n_layers = None
    if config.circuit_layers:  # its blocks are checked against the model before anything runs
        n_layers = adapter.n_layers or config_layer_count(config.model_path or adapter.hf_id)
    context = PlanContext(run_dir, layer, benchmark, plugins, published, n_layers)
    configs: dict[str, StageConfig | None] = {}
    keys: dict[str, str] = {}
    # a given SAE is the root of the chain: another SAE gives every stage another key
    upstream: tuple[str, ...] = (f"sae:{published}", sae_fingerprint(published, plugins)) if published else ()
    for stage in STAGES:
        if (published and stage.makes_the_sae) or not stage.wanted(config):
            continue
        configs[stage.name] = stage.configure(config, context)
        keys[stage.name] = chained_key(stage.identity(configs[stage.name]), *upstream)
        upstream = (keys[stage.name],)
    return Plan(run_dir, layer, configs, keys)


def set_aside(path: Path) -> Path | None:
    """Move a superseded artifact folder aside (``<name>.superseded-<time>``); a file artifact (a
    report page) is rewritten by its stage instead. Returns where it went."""
    if not path.is_dir():
        return None
    # no other process holds its lock: stage folders are locked under the run directory's lock, held here
    return move_aside(path, recreate=False)


def check_circuit_saes(the_plan: Plan, plugins: Any) -> None:
    """Each --circuit-sae that names a local checkpoint is a folder, checked before any stage runs."""
    circuit = the_plan.configs.get("circuit")
    for spec in getattr(circuit, "sae", None) or []:
        if not (is_published(spec, plugins) or str(spec).startswith(str(the_plan.run_dir))):
            raise ConfigError(
                f"--circuit-sae {spec}: no such folder; give a checkpoint folder of `scircuits train` (or "
                "one holding one per site), hf:REPO/PATH or saelens:RELEASE/SAE_ID"
            )


def validate_settings(the_plan: Plan, plugins: Any, adapter: Any, d_model: int) -> None:
    """Every setting that can be checked without the weights, before the run directory is touched:
    plugin names, SAE hyperparameters against the variant, the ablation, top-k against d_sae
    (``d_model``: the model's width, 0 when unknown)."""
    check_circuit_saes(the_plan, plugins)
    train_config, ablate_config = the_plan.configs.get("train"), the_plan.configs.get("ablate")
    d_sae = None
    if train_config is not None:
        variant = plugins.saes.get(train_config.sae)
        hparams = variant.parse_hparams(train_config.hparams)
        if d_model:
            d_sae = train_config.expansion * d_model
            check_sae_memory(d_model, train_config.expansion, train_config.batch_size, train_config.device)
            k = getattr(hparams, "k", None)
            if isinstance(k, int) and k > d_sae:
                raise ConfigError(
                    f"SAE option k={k} is larger than the SAE's {d_sae} latents (expansion "
                    f"{train_config.expansion} x width {d_model}); give k <= {d_sae}"
                )
    if ablate_config is not None:
        plugins.ablations.get(ablate_config.ablation)
        for name in ablate_config.sweep_also or []:
            plugins.ablations.get(name)
        too_big = [k for k in ablate_config.top_k if d_sae is not None and k > d_sae]
        if too_big:
            raise ConfigError(
                f"--top-k {', '.join(map(str, too_big))}: larger than the SAE's {d_sae} latents; give values "
                f"<= {d_sae}"
            )


RUN_ENTRIES = frozenset(
    {stage.artifact_name for stage in STAGES}
    | {STATE_FILE, REPORT_MD, REPORT_HTML, "figures", "dashboard", EVALUATION_STORE, MARKER_FILE, LOCK_FILE}
)


def check_out_holds_runs(out: str) -> None:
    """--out is the folder runs are made in: a run directory (or a folder inside one) is refused, since
    the new run would be nested in it."""
    folder = Path(out)
    marker = read_marker(folder) if folder.is_dir() else None
    inside = enclosing_container(folder)
    run_dir = folder if marker is not None and marker.kind == "run" else None
    if run_dir is None and inside is not None and inside[1] == "run":
        run_dir = inside[0]
    if run_dir is not None:
        raise ConfigError(
            f"--out {out} is {'' if run_dir == folder else 'inside '}the run directory {run_dir}; --out is "
            f"the folder runs are made in: give {run_dir.parent} to continue or redo that run"
        )


def claim_run_dir(run_dir: Path, force: bool) -> None:
    """A run directory that holds neither a run marker nor any run artifact but other files is not
    a run the tool wrote: refused, or moved aside with ``--force``."""
    if not run_dir.is_dir() or read_marker(run_dir) is not None:
        return
    names = sorted(
        p.name for p in run_dir.iterdir() if ".superseded-" not in p.name and ".tmp-" not in p.name
    )
    if not names or any(name in RUN_ENTRIES for name in names):
        return
    if not force:
        raise ArtifactError(
            f"{run_dir} holds files scircuits did not write ({', '.join(names[:3])}) and no run: it will "
            f"not write a run among them; choose another --out, or pass --force to move them aside"
        )
    aside = move_aside(run_dir)
    say(f"--force: {run_dir} held files scircuits did not write; moved them to {aside}")


def say(message: str) -> None:
    log.info(f"[run] {message}")


def check_model_weights(config: RunConfig, plugins: Any) -> None:
    """Stop before any work when the weights cannot be had (WeightsUnavailableError names the ways)."""
    adapter = plugins.models.get(config.model)
    if config.remote:  # every stage that runs the model runs it on NDIF
        check_ndif(adapter, config.model_path)
        return
    check_weights_available(adapter, config.model_path)


def check_examples(the_plan: Plan, plugins: Any) -> None:
    """Read every example each stage will read, so that bad benchmark options, splits or a bad line
    anywhere in a data file stop the run before any work."""
    for stage in the_plan.configs.values():
        if stage is None or not hasattr(stage, "benchmark"):
            continue
        benchmark = plugins.benchmarks.get(stage.benchmark)
        count = sum(
            1 for _ in benchmark.read_examples(stage.split, stage.limit, stage.seed, stage.benchmark_options)
        )
        if count == 0:
            raise ConfigError(
                f"benchmark {stage.benchmark!r} gives no examples for split {stage.split!r} "
                f"with options {stage.benchmark_options}"
            )


def run_stage(
    stage: Stage,
    the_plan: Plan,
    state: PipelineState,
    plugins: Any,
    upstream_current: bool = False,
    upstream_ran: bool = False,
) -> bool:
    """Run, continue or skip one stage. Returns True when it was skipped as up to date (its artifact
    proves it), which lets the next stage trust its own artifact without ``pipeline.json``. A stage
    after one that ran is never up to date (its input was just made again)."""
    run_dir, config = the_plan.run_dir, the_plan.configs[stage.name]
    key, artifact = the_plan.keys[stage.name], stage.artifact(the_plan.run_dir)
    recorded = state.stage(stage.name)
    upstream_current = upstream_current and stage.self_identifying
    log.debug(
        f"[run] {stage.name}: key {key} (recorded: started {recorded.started_key}, completed "
        f"{recorded.completed_key}); config hash {config.config_hash() if config is not None else None}"
    )
    complete = (
        not upstream_ran
        and (recorded.completed_key == key or upstream_current)
        and stage.complete(run_dir, config)
    )
    stale = stage.stale(run_dir, plugins) if complete else None
    if complete and stale is None:
        say(f"{stage.name}: up to date ({artifact}), skipped")
        if recorded.completed_key != key:
            state.record(stage.name, started_key=key, completed_key=key, completed=now_iso())
        return True
    if stale is not None:
        say(f"{stage.name}: {stale}; running it again in place")
    same_start = (
        stale is not None
        or recorded.started_key == key
        or (upstream_current and stage.started(run_dir, config))
    )
    # An artifact started under this key is the stage's own: a resumable stage continues it, another
    # stage rewrites it in place (its writer claims the folder as "same").
    if artifact.exists() and not same_start:
        aside = set_aside(artifact)
        if aside is not None:
            say(f"{stage.name}: {artifact} was made with other settings; moved it to {aside}")
    resume = stage.resumable and same_start and artifact.exists()
    say(f"{stage.name}: {'continuing' if resume else 'starting'}")
    state.record(stage.name, started_key=key, completed_key=None, started=now_iso())
    t0 = time.monotonic()
    stage.run(config, run_dir, plugins, resume)
    state.record(stage.name, completed_key=key, completed=now_iso(), seconds=round(time.monotonic() - t0, 1))
    return False


def run_pipeline(config: RunConfig, plugins: Any) -> Path:
    """Run (or continue) the whole study; returns the run directory."""
    started = time.monotonic()
    warn_failed_plugins(plugins)
    config = config.with_plugin_defaults(plugins)  # before any hash: what is recorded names what runs
    if is_url(config.out):  # the run directory is staged locally, then published (common.remote)
        url = join_path(config.out, plan(config.model_copy(update={"out": "."}), plugins).run_dir.name)
        with remote_out(url, "run") as local:
            run_pipeline(config.model_copy(update={"out": str(local.parent)}), plugins)
        return local
    # absolute: the paths the stages record (the circuit's SAE folders) do not depend on the spelling
    config = config.model_copy(update={"out": str(Path(config.out).expanduser().absolute())})
    check_out_holds_runs(config.out)
    the_plan = plan(config, plugins)
    check_device(config.device, allow_auto=True)
    check_study_dtype(config.ablate.study_dtype, config.device, config.remote)
    adapter = plugins.models.get(config.model)
    validate_settings(the_plan, plugins, adapter, model_width(adapter, config))
    check_model_weights(config, plugins)
    check_examples(the_plan, plugins)
    run_dir = the_plan.run_dir
    claim_run_dir(run_dir, config.force)
    check_writable(run_dir, option="--out")
    with FolderLock(run_dir, "run"):
        remove_orphans(run_dir)
        if read_marker(run_dir) is None:
            write_marker(run_dir, "run", "run")  # a run directory's stages carry their own identities
        state = PipelineState(run_dir)
        state.set_run_config(config.model_dump(mode="json"))
        say(f"run directory {run_dir}")
        # a given SAE is not an artifact of the run: its stages trust pipeline.json, not their artifacts
        upstream_current, upstream_ran = "collect" in the_plan.keys, False
        for stage in STAGES:
            if stage.name not in the_plan.keys:
                if stage.makes_the_sae:
                    say(f"{stage.name}: not needed (the SAE is given: {the_plan.ablate.sae})")
                continue
            upstream_current = run_stage(stage, the_plan, state, plugins, upstream_current, upstream_ran)
            upstream_ran = upstream_ran or not upstream_current
        # a rerun that found every stage up to date changes nothing, pipeline.json included (an --out URL
        # then keeps its generation); the record names the run that made what is there
        if state.recorded or state.stage("run").completed is None:
            state.record("run", completed=now_iso(), seconds=round(time.monotonic() - started, 1))
    say(f"done in {time.monotonic() - started:.0f} s: {run_dir / 'report.html'}")
    return run_dir
