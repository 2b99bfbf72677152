"""The ablate stage: ``run_ablate(config, plugins) -> Path`` loads the model, the SAE and the
examples, runs the study (``runner.run_study``) and writes ``causal/results.json`` and
``causal/examples.jsonl`` (``results``)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scircuits.platform.causal.results import recorded_config_hash, write_study
from scircuits.platform.causal.runner import ReferenceExamples, run_study
from scircuits.platform.common import device as devices
from scircuits.platform.common.artifacts import (
    ArtifactError,
    FolderLock,
    check_claim,
    check_out_apart,
    check_writable,
    claim,
    describe_os_error,
    local_paths,
    model_folder,
    read_marker,
    remove_orphans,
    write_marker,
)
from scircuits.platform.common.device import check_device, check_study_dtype
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.provenance import base_provenance, file_sha256
from scircuits.platform.common.remote import is_url, remote_out
from scircuits.platform.config import AblateConfig
from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.hf_loading import check_weights_available
from scircuits.platform.contract.models import LoadedModel
from scircuits.platform.manager.failures import warn_failed_plugins
from scircuits.platform.model.tracing import check_ndif, load_remote
from scircuits.platform.train.checkpoint import load_sae
from scircuits.store.reader import ActivationStore

log = get_logger(__name__)


@dataclass
class AblateInputs:
    """What the stage works on; ``run_ablate`` builds it from the config (tests may pass their own)."""

    loaded: LoadedModel
    sae: Any  # an SAE module (scircuits.platform.contract.sae_module)
    sae_info: dict[str, Any]
    examples: list[Example]
    layer: int
    benchmark_info: dict[str, Any] = field(default_factory=dict)
    # examples for a fresh measurement of the SAE's error when it records none (None: no other split)
    reference: ReferenceExamples | None = None


def reference_examples(benchmark: Any, config: AblateConfig, n: int) -> ReferenceExamples | None:
    """``n`` examples of the split collection would trace (train), read only if the gate asks; None
    when that is the evaluation split itself (the measurement would repeat the evaluated one)."""
    split = "train" if "train" in benchmark.splits else config.split
    if split == config.split:
        return None
    return ReferenceExamples(
        split, lambda: list(benchmark.read_examples(split, n, config.seed, config.benchmark_options))
    )


def resolve_layer(config: AblateConfig, loaded: LoadedModel, sae_info: dict[str, Any]) -> int:
    trained_at = sae_site(sae_info)[0]
    if config.layer is not None:
        if trained_at is not None and trained_at != config.layer:
            raise ConfigError(
                f"the SAE was trained on layer {trained_at}, but --layer {config.layer} was given; "
                f"drop --layer or use an SAE trained on layer {config.layer}"
            )
        return config.layer
    if trained_at is not None:
        return trained_at
    return loaded.adapter.layer_or_default(None, loaded.n_layers)


def sae_site(info: dict[str, Any]) -> tuple[int | None, str | None]:
    """(layer, site) the SAE was trained on, from its scircuits.json (the store's attributes) or cfg.json."""
    meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
    store = meta.get("store") if isinstance(meta.get("store"), dict) else {}
    attrs = store.get("attrs") if isinstance(store.get("attrs"), dict) else {}
    layer, site = attrs.get("layer"), attrs.get("site")
    hooked = info.get("hook_site") if isinstance(info.get("hook_site"), dict) else {}
    if layer is None and hooked:
        layer, site = hooked.get("layer"), hooked.get("site")
    if layer is None:
        cfg = info.get("cfg") if isinstance(info.get("cfg"), dict) else {}
        metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
        layer = metadata.get("hook_layer")
    return (int(layer) if isinstance(layer, int) else None, site if isinstance(site, str) else None)


def hook_site(config: Any, adapter: Any, info: dict[str, Any]) -> tuple[int, str] | None:
    """(layer, site) a published SAE's hook name decides, checked against ``config``'s layer and site
    (--layer, --site); None for an SAE whose scircuits.json records its store (it says so itself) or
    that names no hook. ``config.sae`` names the SAE in the messages."""
    hook = info.get("hook_name")
    if not hook or info.get("meta"):
        return None
    layer, site = adapter.site_of_hook(str(hook))
    if config.layer is not None and config.layer != layer:
        raise ConfigError(
            f"the SAE {config.sae} reads {hook} (layer {layer}, site {site}), but --layer {config.layer} "
            f"was given; drop --layer or give --layer {layer}"
        )
    if config.site != site:
        raise ConfigError(
            f"the SAE {config.sae} reads {hook} (layer {layer}, site {site}), but --site {config.site} "
            f"was given; give --site {site}"
        )
    return layer, site


def check_store_matches_sae(
    store_path: str | None, sae_path: str | None, info: dict[str, Any], hooked: tuple[int, str] | None = None
) -> None:
    """``--store`` must hold the activations the SAE was trained on: same model, layer and site (its
    feature contexts are read from it), as far as the SAE's scircuits.json records them, or, for a
    published SAE, the layer and site its hook names (``hooked``)."""
    if not store_path:
        return
    meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
    trained = (meta.get("store") or {}).get("attrs") if isinstance(meta.get("store"), dict) else None
    if not isinstance(trained, dict):
        if hooked is None:
            return
        trained = {"layer": hooked[0], "site": hooked[1]}
    try:
        given = ActivationStore(store_path).attrs
    except Exception as exc:
        raise ConfigError(f"--store {store_path}: not a readable activation store ({exc})") from None
    differences = [
        f"{key}: store {given.get(key)!r}, SAE {trained.get(key)!r}"
        for key in ("model", "layer", "site")
        if key in trained and given.get(key) != trained.get(key)
    ]
    if differences:
        raise ConfigError(
            f"--store {store_path} does not hold the activations the SAE in {sae_path} was trained on "
            f"({'; '.join(differences)}); give the store it was trained on, or leave --store out"
        )


def check_results_folder(out: Path, force: bool = False) -> None:
    """``--out`` of ablate, before any work: refuse a folder of the user's files or of another kind of
    artifact (results.json written before markers existed are recognised by their config hash)."""
    if out.is_dir() and read_marker(out) is None:
        recorded = recorded_config_hash(out)
        if recorded is not None:
            write_marker(out, "causal", recorded)
    check_claim(out, "causal", option="--out", force=force)


def claim_results_folder(out: Path, config_hash: str, force: bool = False) -> None:
    """``--out`` of ablate, once the results are ready: move aside results of other settings."""
    check_results_folder(out, force)
    claimed = claim(out, "causal", config_hash, option="--out", force=force)
    if claimed.moved_to:
        held = "files scircuits did not write" if claimed.state == "forced" else "results of other settings"
        log.info(f"[ablate] {out} held {held}; moved them to {claimed.moved_to}")


def load_inputs(config: AblateConfig, plugins: Any, loaded: LoadedModel | None = None) -> AblateInputs:
    """Check the weights, load the model, the SAE and the examples (model weights checked first)."""
    adapter = plugins.models.get(config.model)
    benchmark = plugins.benchmarks.get(config.benchmark)
    benchmark.check_split(config.split)
    if not config.sae:
        raise ConfigError(
            "ablate needs --sae: a checkpoint folder from `scircuits train`, or a published SAE "
            "(hf:REPO/PATH, saelens:RELEASE/SAE_ID)"
        )
    # every example is read (a bad line anywhere stops here) before any weights are checked or loaded
    examples = list(
        benchmark.read_examples(config.split, config.limit, config.seed, config.benchmark_options)
    )
    if not examples:
        raise ConfigError(f"benchmark {config.benchmark!r} gave no examples for split {config.split!r}")
    if loaded is None and not config.remote:
        check_weights_available(adapter, config.model_path)
    sae, info = load_sae(config.sae, plugins)
    d_in = int(sae.W_dec.shape[1])
    d_sae = int(sae.W_dec.shape[0])
    too_big = [k for k in config.top_k if k > d_sae]
    if too_big:
        raise ConfigError(
            f"--top-k {', '.join(map(str, too_big))}: the SAE in {config.sae} has only {d_sae} latents; give "
            f"values <= {d_sae}"
        )
    # the model's width is known before it loads only for the named weights (--model-path may hold
    # another size of the architecture: checked once loaded)
    if loaded is None and config.model_path is None and adapter.d_model and d_in != adapter.d_model:
        raise ConfigError(
            f"the SAE {config.sae} reads width {d_in}, but {config.model} has width {adapter.d_model}: "
            "it was made for another model"
        )
    hooked = hook_site(config, adapter, info)
    check_store_matches_sae(config.store, config.sae, info, hooked)
    if loaded is None and config.remote:
        loaded = load_remote(adapter, model_path=config.model_path)
    elif loaded is None:
        loaded = adapter.load(
            model_path=config.model_path, dtype=config.resolved_model_dtype(), device=config.device
        )
    if d_in != loaded.d_model:
        raise ConfigError(
            f"the SAE {config.sae} has d_in {d_in}, but {config.model} has "
            f"width {loaded.d_model}: it was made for another model"
        )
    info = dict(info) if isinstance(info, dict) else {}
    if hooked is not None:
        info["hook_site"] = {"hook_name": info.get("hook_name"), "layer": hooked[0], "site": hooked[1]}
    trained_site = sae_site(info)[1]
    if trained_site is not None and trained_site != config.site:
        raise ConfigError(
            f"the SAE in {config.sae} was trained on the {trained_site!r} site, not {config.site!r}; "
            f"pass --site {trained_site}"
        )
    layer = resolve_layer(config, loaded, info)
    if not 0 <= layer < loaded.n_layers:
        raise ConfigError(
            f"the SAE {config.sae} reads layer {layer}, but {config.model} has {loaded.n_layers} layers "
            f"(0-{loaded.n_layers - 1}): it was made for another model"
        )
    sae.to(site_device(loaded, layer))
    label = {"label": benchmark.label(config.benchmark_options)}
    reference = reference_examples(benchmark, config, len(examples))
    return AblateInputs(loaded, sae, info, examples, layer, benchmark_info=label, reference=reference)


def site_device(loaded: LoadedModel, layer: int) -> Any:
    """Where block ``layer``'s weights are (with --device auto, the GPU holding that block): the SAE
    runs there."""
    import torch

    block = loaded.module(f"{loaded.adapter.blocks_path}.{layer}")
    first = next(block.parameters(), None)
    return first.device if first is not None and not first.is_meta else torch.device("cpu")


def provenance(config: AblateConfig, inputs: AblateInputs, n_examples: int, n_tokens: int) -> dict[str, Any]:
    loaded = inputs.loaded
    # the folder read (a URL's local copy); the path as given is recorded
    sae_dir = Path(inputs.sae_info.get("path") or config.sae) if config.sae else None
    sae_prov: dict[str, Any] = {
        "path": config.sae or None,
        "d_in": int(inputs.sae.W_dec.shape[1]),
        "d_sae": int(inputs.sae.W_dec.shape[0]),
        "variant": getattr(inputs.sae, "variant", type(inputs.sae).__name__),
    }
    if sae_dir is not None:
        weights = sae_dir / "sae_weights.safetensors"
        if weights.is_file():
            sae_prov["weights_sha256"] = file_sha256(weights)
        meta = inputs.sae_info.get("meta") or {}
        sae_prov.update(
            {
                k: meta.get(k)
                for k in ("config_hash", "metrics", "steps", "tokens", "created", "variant")
                if k in meta
            }
        )
        if isinstance(meta.get("store"), dict):
            sae_prov["store_path"] = meta["store"].get("path")
        for key in ("source", "hook_name", "published_metrics"):  # a published SAE: what was read
            if inputs.sae_info.get(key) is not None:
                sae_prov[key] = inputs.sae_info[key]
    store_prov: dict[str, Any] | None = None
    if config.store:
        try:
            store_prov = {
                "path": config.store,
                **{k: v for k, v in ActivationStore(config.store).attrs.items()},
            }
        except Exception as exc:
            store_prov = {"path": config.store, "error": str(exc)}
    return {
        **base_provenance(),
        "model": {
            "name": config.model,
            "model_id": loaded.model_id,
            "revision": loaded.revision,
            "dtype": loaded.dtype,
            "n_layers": loaded.n_layers,
            "d_model": loaded.d_model,
        },
        "sae": sae_prov,
        "store": store_prov,
        "benchmark": {
            "name": config.benchmark,
            "split": config.split,
            "limit": config.limit,
            "n_examples": n_examples,
            "n_tokens": n_tokens,
            "options": config.benchmark_options,
            **inputs.benchmark_info,
        },
        "layer": inputs.layer,
        "site": config.site,
        "study_dtype": study_dtype_record(config),
    }


def study_dtype_record(config: AblateConfig) -> dict[str, Any]:
    """The dtype the conditions ran in, what computed it natively, and what stayed in the model's."""
    if config.study_dtype == "float32":
        return {"dtype": "float32"}
    return {
        "dtype": config.study_dtype,
        "hardware": devices.bf16_hardware(config.device),  # looked up now (tests stand in for it)
        "autocast": "the matrix products of the blocks above the site (attention included) in every "
        "condition and in the splice check's fast path",
        "kept_in_model_dtype": "the residual stream the blocks add into, the norms, the unembedding, "
        "log-softmax and scores; the lower blocks, the SAE encode/decode and the attribution",
        "fast_path_tolerance": config.resolved_fast_path_tolerance(),
    }


def run_ablate(
    config: AblateConfig, plugins: Any, loaded: LoadedModel | None = None, inputs: AblateInputs | None = None
) -> Path:
    """The ablation study of ``config``; returns the output folder (results.json, examples.jsonl)."""
    started = time.monotonic()
    warn_failed_plugins(plugins)
    config = config.with_plugin_defaults(plugins)
    for name in config.sweep_also or []:
        plugins.ablations.get(name)  # an unknown name fails here, listing the known ones
    if is_url(config.out):  # written in a local staging folder, then published (common.remote)
        with remote_out(config.out, "causal results") as local:
            run_ablate(config.model_copy(update={"out": str(local)}), plugins, loaded, inputs)
        return Path(local)
    out = Path(config.out)
    sources = [config.sae, config.store, config.model_path, model_folder(plugins, config.model)]
    check_out_apart(out, read=local_paths(sources))  # before any work: --force would move them aside
    check_device(config.device, allow_auto=True)
    check_study_dtype(config.study_dtype, config.device, config.remote)
    if config.remote and loaded is None and inputs is None:
        check_ndif(plugins.models.get(config.model), config.model_path)  # before any work
    try:
        fresh = not out.exists()
    except OSError:  # a path too long to look up: check_writable says so
        fresh = False
    check_writable(out, option="--out")  # before any model loads
    try:
        return _run_ablate_in(out, config, plugins, loaded, inputs, started)
    except BaseException:
        if fresh:  # a failed first run leaves no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_ablate_in(
    out: Path,
    config: AblateConfig,
    plugins: Any,
    loaded: LoadedModel | None,
    inputs: AblateInputs | None,
    started: float,
) -> Path:
    with FolderLock(out, "causal results"):
        remove_orphans(out)
        check_results_folder(out, force=config.force)  # claimed once the results are ready: a
        inputs = inputs or load_inputs(config, plugins, loaded)  # failure leaves --out as it was
        results, rows = run_study(
            config,
            inputs.loaded,
            inputs.sae,
            inputs.examples,
            inputs.layer,
            plugins,
            inputs.sae_info,
            inputs.reference,
        )
        results.provenance = provenance(config, inputs, results.n_examples, results.n_tokens)
        results.wall_seconds = round(time.monotonic() - started, 1)
        claim_results_folder(out, config.config_hash(), force=config.force)
        try:
            return write_study(out, results, rows)
        except OSError as exc:
            raise ArtifactError(
                f"{out}: cannot write the results ({describe_os_error(exc)}); free space or choose another "
                "--out, then run again"
            ) from None
