"""SAE training: streams minibatches from an activation store, single process or DDP.

``train(config)`` is the stage entry point (the pipeline calls it). ``SAETrainer`` is the optimiser
loop on tensors, shared with the ground-truth check (``scircuits validate sae``).

Training details:
- tokens left out (``scircuits.platform.train.exclusion``): by default attention sinks and
  outlier-norm tokens are not fitted, not used for the input scale and not scored; the rule and its
  counts are recorded in ``scircuits.json`` (``token_exclusion``);
- inputs are normalised by a constant ``scale`` = sqrt(d_in) / E|x| estimated on a training sample;
  the saved checkpoint has the scale folded into its weights (it applies to raw activations);
- ``b_dec`` starts at the geometric median of that sample (Weiszfeld iterations);
- Adam, linear warm-up over ``warmup_steps``, constant, then linear decay to zero over the final
  ``decay_fraction`` of the steps; gradient-norm clipping; unit-norm decoder rows where the variant
  asks (gradient component parallel to each row removed before the step, rows renormalised after);
- dead latents: tokens since each latent last fired; variants with AuxK get a dead mask over a window
  relative to the run (``default_dead_window``) unless their hyperparameters fix one;
- at the end, latent usage over up to ``USAGE_TOKENS`` training tokens with the final weights: the
  dead (never fired) and rare (fired on < 1e-4 of them) fractions, and how many tokens they cover;
- every ``eval_every`` steps and at the end: FVU, L0, dead fraction, MSE on held-out examples
  (``scircuits.platform.train.metrics``), appended to ``train_log.jsonl``;
- every ``checkpoint_every`` steps: the full training state (weights, Adam moments, step, epoch,
  position in the epoch, dead-latent counters, RNG) so ``--resume`` ends with the same weights as
  an uninterrupted run. Under DDP every rank reads a disjoint share of each epoch (and of the
  token-exclusion pass); gradients are all-reduced; rank 0 evaluates and writes. Under torchrun
  (``_train_as_rank``) rank 0 also locks and claims the folder, and a refusal or a lost rank is one
  line (docs/scale.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import torch

from scircuits.files import write_atomic
from scircuits.platform.common.artifacts import (
    FolderLock,
    check_out_apart,
    local_paths,
    move_aside,
    read_marker,
    write_marker,
)
from scircuits.platform.common.device import check_device
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.progress import progress
from scircuits.platform.common.remote import is_url, remote_out
from scircuits.platform.config import TrainConfig
from scircuits.platform.contract.errors import ConfigError, DataFormatError, ResumableError, ScircuitsError
from scircuits.platform.contract.models import tl_hook_name
from scircuits.platform.contract.sae_module import SparseAutoencoder, TrainOutput
from scircuits.platform.contract.saes import SAEVariant
from scircuits.platform.manager.plugin_set import PluginSet, get_plugins
from scircuits.platform.manager.registry import Registry
from scircuits.platform.train import checkpoint as ckpt
from scircuits.platform.train.distributed import (
    DistContext,
    RankError,
    agree,
    all_reduce_,
    broadcast_tensors,
    from_environment,
    from_rank_zero,
    gather_objects,
    joined_a_group,
    launch,
    lost_peer,
    lost_rank_error,
    run_jobs_on_devices,
    sum_over_ranks,
    under_launcher,
)
from scircuits.platform.train.exclusion import fit_exclusion, row_norms
from scircuits.platform.train.metrics import RARE_FREQUENCY, ReconstructionStats
from scircuits.platform.train.size import check_sae_memory
from scircuits.store import ActivationStore
from scircuits.version import __version__

log = get_logger(__name__)

INIT_SAMPLE_TOKENS = 16384
# latent usage (dead / rare) of the final SAE is counted over at most this many training tokens
USAGE_TOKENS = 1 << 20

# The AuxK dead window when a variant fixes none (docs/training.md): a tenth of the run's tokens, at most
# DEAD_WINDOW_MAX (the fixed window used before, which never acted in runs of ~1M tokens) and at
# least DEAD_WINDOW_MIN_BATCHES batches (a latent is not judged on fewer).
DEAD_WINDOW_SHARE = 0.1
DEAD_WINDOW_MAX = 1_000_000
DEAD_WINDOW_MIN_BATCHES = 10
FUSED_ADAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # torch's fused Adam


def default_dead_window(total_tokens: int, batch_size: int) -> int:
    """Training tokens a latent must stay silent to count as dead, for a run of ``total_tokens``."""
    relative = min(round(DEAD_WINDOW_SHARE * total_tokens), DEAD_WINDOW_MAX)
    return max(relative, DEAD_WINDOW_MIN_BATCHES * batch_size, 1)


# The default learning rate (docs/training.md). Two factors:
# - width (sparsify's rule, after Gao et al. 2024): 2e-4 at 2**14 latents, times 1/sqrt(d_sae / 2**14);
# - batch (the square-root rule for Adam, Malladi et al. 2022): times sqrt(batch_size / 64), so that
#   sparsify's value is the rate at a 64-token batch.
# The batch anchor is our calibration, not sparsify's (whose batches are far larger): on the planted
# dictionary of bench/planted_defaults.py (512 atoms in 128 dimensions, d_sae 1024, 1.5M tokens at the
# default batch of 4096, 366 steps) the width rule alone (8e-4) recovered 29% of the atoms at cosine
# > 0.9; 1.6e-3 75%, 3.2e-3 94%, 4.8e-3 96%, 6.4e-3 (this rule) 96%.
WIDTH_RULE_LR = 2e-4
WIDTH_RULE_LATENTS = 2**14
BATCH_RULE_TOKENS = 64
LR_RULE = "2e-4 * sqrt(2**14 / d_sae) * sqrt(batch_size / 64)"


def width_scaled_lr(d_sae: int) -> float:
    """sparsify's width rule: the Adam learning rate of an SAE with ``d_sae`` latents at a 64-token batch."""
    if d_sae < 1:
        raise ValueError(f"d_sae must be positive, got {d_sae}")
    return WIDTH_RULE_LR / math.sqrt(d_sae / WIDTH_RULE_LATENTS)


def default_lr(d_sae: int, batch_size: int) -> float:
    """The default Adam learning rate (``LR_RULE``) of an SAE with ``d_sae`` latents trained on
    batches of ``batch_size`` tokens."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return width_scaled_lr(d_sae) * math.sqrt(batch_size / BATCH_RULE_TOKENS)


def resolved_lr(config: TrainConfig, d_sae: int) -> float:
    """``config.lr`` when given, else the default rule at ``config.batch_size``."""
    return config.lr if config.lr is not None else default_lr(d_sae, config.batch_size)


def default_warmup_steps(total_steps: int) -> int:
    """Warm-up when none is given: a tenth of the steps, at most 100."""
    return min(100, max(1, total_steps // 10))


def resolved_warmup_steps(config: TrainConfig, total_steps: int) -> int:
    return config.warmup_steps if config.warmup_steps is not None else default_warmup_steps(total_steps)


class TrainSeeds(NamedTuple):
    """Independent seeds derived from ``--seed``: SAE initialisation (torch) and batch order (store)."""

    init: int
    data: int


def derived_seeds(seed: int) -> TrainSeeds:
    """Two independent streams of one seed (numpy ``SeedSequence.spawn``), so that changing how the
    data are shuffled never correlates with how the weights are drawn."""
    import numpy as np

    init, data = (
        int(child.generate_state(1, np.uint32)[0]) for child in np.random.SeedSequence(seed).spawn(2)
    )
    return TrainSeeds(init=init, data=data)


# -- the optimiser loop --------------------------------------------------------------------------


class SAETrainer:
    """Adam + schedule + clipping + decoder constraint + dead-latent tracking for one SAE."""

    def __init__(
        self,
        sae: SparseAutoencoder,
        *,
        lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        decay_fraction: float = 0.2,
        grad_clip: float | None = 1.0,
        dist: DistContext | None = None,
        dead_window: int | None = None,
    ) -> None:
        """``dead_window``: tokens of silence after which a latent is dead (the variant's own
        ``dead_tokens`` wins); None: ``default_dead_window`` of the run, from the first batch's size."""
        self.sae = sae
        self.dist = dist or DistContext()
        self.base_lr = lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.decay_steps = round(decay_fraction * self.total_steps)
        self.grad_clip = grad_clip
        params = list(sae.parameters())
        # torch's fused Adam: one pass over each parameter instead of a dozen (about 8% of a TopK
        # step on a CPU); a checkpoint written before it resumes with the loop it was trained with
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_ADAM_DTYPES for p in params)
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=fused or None)
        self.step = 0
        self.tokens = 0
        self.scale = 1.0
        self.tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long)
        self.dead_window: int | None = sae.dead_tokens or dead_window
        self.forward_module: torch.nn.Module = _TrainForward(sae)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = (
                [torch.device(self.dist.device).index] if self.dist.device.startswith("cuda") else None
            )
            self.forward_module = DistributedDataParallel(self.forward_module, device_ids=device_ids)

    def lr_at(self, step: int) -> float:
        factor = 1.0
        if self.warmup_steps and step < self.warmup_steps:
            factor = (step + 1) / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if self.decay_steps and step >= decay_start:
            factor *= max(0.0, (self.total_steps - step) / self.decay_steps)
        return self.base_lr * factor

    @torch.no_grad()
    def initialize_from_sample(self, x_raw: torch.Tensor) -> None:
        """Set the input scale and ``b_dec`` (geometric median) from a sample of raw activations."""
        x = x_raw.to(torch.float32)
        mean_norm = float(x.norm(dim=1).mean())
        self.scale = math.sqrt(x.shape[1]) / mean_norm if mean_norm > 0 else 1.0
        self.sae.b_dec.copy_(geometric_median(x * self.scale).to(self.sae.b_dec.device))

    def dead_mask(self) -> torch.Tensor | None:
        if not (self.sae.uses_dead_mask or self.sae.dead_tokens) or self.dead_window is None:
            return None
        return (self.tokens_since_fired >= self.dead_window).to(self.sae.W_dec.device)

    def dead_fraction(self) -> float:
        """Latents silent for the whole dead window (or for every token so far, early on)."""
        window = min(self.dead_window or DEAD_WINDOW_MAX, max(self.tokens, 1))
        return float((self.tokens_since_fired >= window).float().mean())

    def train_step(self, x_raw: torch.Tensor) -> TrainOutput:
        sae = self.sae
        x = x_raw.to(sae.W_dec.device, torch.float32) * self.scale
        if self.dead_window is None:
            batch = x.shape[0] * self.dist.world_size
            self.dead_window = default_dead_window(self.total_steps * batch, batch)
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out: TrainOutput = self.forward_module(x, self.dead_mask())
        self.optimizer.zero_grad(set_to_none=True)
        out.terms["loss"].backward()
        sae.before_step()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), self.grad_clip)
        self.optimizer.step()
        fired = out.fired.detach().to("cpu", torch.long)
        batch_tokens = x.shape[0]
        if self.dist.enabled:
            fired = all_reduce_(fired.to(sae.W_dec.device)).cpu()
            batch_tokens *= self.dist.world_size
            if "smallest_kept" in out.extra:
                smallest = torch.tensor([out.extra["smallest_kept"]], device=sae.W_dec.device)
                out.extra["smallest_kept"] = float(all_reduce_(smallest, "min"))
        sae.after_step(out)
        self.tokens_since_fired += batch_tokens
        self.tokens_since_fired[fired > 0] = 0
        self.step += 1
        self.tokens += batch_tokens
        return out

    # -- state for resuming ------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.sae.state_dict().items()}
        opt = self.optimizer.state_dict()
        for index, state in opt["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        tensors["tokens_since_fired"] = self.tokens_since_fired
        tensors["rng_cpu"] = torch.get_rng_state()
        return tensors

    def state_meta(self) -> dict[str, Any]:
        groups = [
            {k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
            for g in self.optimizer.state_dict()["param_groups"]
        ]
        return {"step": self.step, "tokens": self.tokens, "scale": self.scale, "param_groups": groups}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        self.sae.load_state_dict(model_state)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.tokens_since_fired = tensors["tokens_since_fired"].clone()
        torch.set_rng_state(tensors["rng_cpu"])
        self.step = int(meta["step"])
        self.tokens = int(meta["tokens"])
        self.scale = float(meta["scale"])

    # -- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batches: Iterator[torch.Tensor], max_tokens: int) -> dict[str, Any]:
        """FVU, L0, dead and rare fractions, MSE on raw activations (``scircuits.platform.train.metrics``)."""
        sae = self.sae
        was_training = sae.training
        sae.eval()
        stats = ReconstructionStats(sae.d_sae)
        for x_raw in batches:
            x_raw = x_raw.to(sae.W_dec.device, torch.float32)[: max_tokens - stats.tokens]
            acts = sae.encode(x_raw * self.scale)
            x_hat = sae.decode(acts) / self.scale
            stats.update(x_raw, x_hat, acts)
            if stats.tokens >= max_tokens:
                break
        sae.train(was_training)
        return stats.result()

    def folded_copy(self) -> SparseAutoencoder:
        """The SAE with the input scale folded in (applies to raw activations), on CPU."""
        import copy

        sae = copy.deepcopy(self.sae).cpu()
        sae.fold_input_scale(self.scale)
        return sae.eval()


def train_in_memory(
    sae: SparseAutoencoder, x: torch.Tensor, *, lr: float, batch_size: int, steps: int, order_seed: int
) -> SAETrainer:
    """``sae`` trained on the rows ``x`` (held in memory) for ``steps`` batches of ``batch_size``,
    shuffled by ``order_seed`` and reshuffled at each pass, with the training stage's default warm-up,
    decay and clipping; the input scale and ``b_dec`` set from the first 16,384 rows. The loop of the
    planted benchmarks and the ground-truth SAE search (no store, no checkpoints)."""
    defaults = TrainConfig()
    trainer = SAETrainer(
        sae,
        lr=lr,
        total_steps=steps,
        warmup_steps=default_warmup_steps(steps),
        decay_fraction=defaults.decay_fraction,
        grad_clip=defaults.grad_clip,
    )
    trainer.initialize_from_sample(x[:16384])
    order = torch.Generator().manual_seed(order_seed)
    permutation, position = torch.randperm(len(x), generator=order), 0
    for _ in range(steps):
        if position + batch_size > len(x):
            permutation, position = torch.randperm(len(x), generator=order), 0
        trainer.train_step(x[permutation[position : position + batch_size]])
        position += batch_size
    return trainer


class _TrainForward(torch.nn.Module):
    """Routes ``forward`` to ``train_forward`` so DDP can wrap it."""

    def __init__(self, sae: SparseAutoencoder) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOutput:
        return self.sae.train_forward(x, dead_mask)


@torch.no_grad()
def geometric_median(x: torch.Tensor, iterations: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm, started at the mean."""
    median = x.mean(dim=0)
    for _ in range(iterations):
        weights = 1.0 / (x - median).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * x).sum(dim=0) / weights.sum()
        if (new - median).norm() < eps * max(1.0, float(median.norm())):
            median = new
            break
        median = new
    return median


# -- the stage ---------------------------------------------------------------------------------


def find_preset(
    variants: Registry[SAEVariant], name: str, sae: str | None
) -> tuple[SAEVariant, dict[str, Any]]:
    """The variant that owns preset ``name`` (``sae`` when given) and the preset's settings."""
    if sae is not None:
        variant = variants.get(sae)
        if name not in variant.presets:
            known = ", ".join(sorted(variant.presets)) or "none"
            raise ConfigError(f"SAE variant {sae!r} has no preset {name!r}; its presets: {known}")
        return variant, dict(variant.presets[name])
    owners = [v for v in variants if name in v.presets]
    if not owners:
        known = sorted({p for v in variants for p in v.presets})
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(known) or 'none'}")
    if len(owners) > 1:
        raise ConfigError(
            f"preset {name!r} is declared by several SAE variants ({', '.join(v.name for v in owners)}); "
            "choose one with --sae"
        )
    return owners[0], dict(owners[0].presets[name])


def apply_preset(config: TrainConfig, plugins: PluginSet) -> TrainConfig:
    """Fill the fields a preset sets (and the variant that declares it), unless given explicitly."""
    if not config.preset:
        return config
    given = config.model_fields_set
    variant, preset = find_preset(plugins.saes, config.preset, config.sae if "sae" in given else None)
    preset = {"sae": variant.name, **preset}
    values = config.model_dump()
    for key, value in preset.items():
        if key == "hparams":
            values["hparams"] = {**value, **config.hparams}
        elif key not in given:
            values[key] = value
    if "epochs" in preset and "tokens" in given and "epochs" not in given:
        values["epochs"] = None
    return TrainConfig.validated(values)


def train(config: TrainConfig, plugins: PluginSet, *, stop_after_steps: int | None = None) -> Path:
    """Train one SAE of ``plugins``' variant ``config.sae`` as ``config`` says; returns the checkpoint
    directory.

    Skips (returns at once) when ``config.out`` holds a complete checkpoint with the same
    ``config_hash``. ``stop_after_steps`` ends the run early after writing a resumable state (what a
    killed run leaves behind; tests use it). Under torchrun this process is one rank: see
    ``_train_as_rank``.
    """
    if under_launcher():
        return _train_as_rank(config, plugins, stop_after_steps)
    if not is_url(config.out):  # before any work: --force would move the store aside
        check_out_apart(config.out, read=local_paths([config.store]))
    config = _resolved(config, plugins)
    if is_url(config.out):  # trained in a local staging folder, then published
        # Ctrl-C publishes the state saved so far, which --resume continues (as a local folder keeps it)
        with remote_out(config.out, "SAE checkpoint", publish_interrupted=True) as local:
            done = train(
                config.model_copy(update={"out": str(local)}), plugins, stop_after_steps=stop_after_steps
            )
        return done
    check_world(config, config.nproc)
    check_inputs(config, plugins)
    out = Path(config.out)
    with FolderLock(out, "SAE checkpoint"):
        if _claim(config):
            return out
        return _train_checked(config, plugins, stop_after_steps)


def _resolved(config: TrainConfig, plugins: PluginSet) -> TrainConfig:
    """The preset and plugin defaults filled in; an unknown variant or an unusable device refused
    before the folder is touched."""
    config = apply_preset(config, plugins).with_plugin_defaults(plugins)
    plugins.saes.get(config.sae)
    check_device(config.device)
    return config


def check_inputs(config: TrainConfig, plugins: PluginSet) -> None:
    """Before ``--out`` is claimed (which moves a checkpoint of other settings aside): the store opens
    (its files all present), holds rows, and the variant's hyperparameters fit the SAE's width."""
    hparams = plugins.saes.get(config.sae).parse_hparams(config.hparams)
    store = open_store(config.store)
    if store.n_tokens == 0:
        raise ConfigError(
            f"store {config.store} holds no activations: collect into it first, or give another --store"
        )
    check_k_fits(getattr(hparams, "k", None), config.expansion, store.d_model)
    steps = store.batches_per_epoch(
        config.batch_size // config.nproc,
        split="train",
        world_size=config.nproc,
        drop_last=True,
        eval_fraction=config.eval_fraction,
        split_seed=0,
    )
    if steps == 0:  # (tokens left out by --exclude-tokens are counted when training starts)
        raise ConfigError(
            f"store {config.store} has fewer training rows than one batch of {config.batch_size} "
            f"(--eval-fraction {config.eval_fraction:g} holds out the rest); give a smaller --batch-size "
            "or --eval-fraction"
        )


def check_k_fits(k: Any, expansion: int, d_in: int) -> None:
    if isinstance(k, int) and k > expansion * d_in:
        raise ConfigError(
            f"--sae-option k={k} is larger than the SAE's {expansion * d_in} latents (expansion "
            f"{expansion} x store width {d_in}); give k <= {expansion * d_in}"
        )


def check_world(config: TrainConfig, world_size: int) -> None:
    if config.batch_size % world_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by the {world_size} training processes; "
            f"give a multiple of {world_size}"
        )


def _claim(config: TrainConfig) -> bool:
    """Make ``config.out`` this checkpoint's folder (the caller holds its lock); True when it already
    holds a complete checkpoint of this config (nothing to do)."""
    out = Path(config.out)
    marker = read_marker(out)
    if config.resume and marker is not None and marker.identity != config.config_hash():
        raise ConfigError(
            f"--resume: {out} holds a training state for a different config "
            f"(hash {marker.identity}, now {config.config_hash()}); use another --out "
            "or drop --resume to start over (the old one is then moved aside)"
        )
    claimed = ckpt.claim_checkpoint(out, config.config_hash(), force=config.force)
    if claimed.moved_to:
        held = "files scircuits did not write"
        if claimed.state != "forced":
            held = "a checkpoint made with other settings"
        log.info(f"[train] {out} held {held}; moved it to {claimed.moved_to}")
    weights = out / ckpt.WEIGHTS_FILE
    damage = ckpt.weights_damage(weights) if ckpt.marked_complete(out, config.config_hash()) else None
    if damage is not None:
        if not config.force:
            raise DataFormatError(
                f"{weights}: the checkpoint's weights are damaged ({damage}); restore the file, or pass "
                "--force to move the checkpoint aside and train it again (nothing is deleted)"
            )
        aside = move_aside(out)
        write_marker(out, "sae", config.config_hash())
        log.info(f"[train] --force: {weights} was damaged ({damage}); moved the checkpoint to {aside}")
    complete = ckpt.is_complete(out, config.config_hash())
    if complete and not _store_grew(out, config):
        log.info(f"[train] {out} already holds a complete checkpoint for this config; skipping")
        return True
    if complete:  # trained on an unfinished store, finished since
        aside = move_aside(out)
        write_marker(out, "sae", config.config_hash())
        log.info(f"[train] {out} was trained on the store before it was complete; moved it to {aside}")
    if not config.resume and ckpt.has_training_state(out):
        refuse_unresumed_state(config)
        aside = move_aside(out)
        write_marker(out, "sae", config.config_hash())
        log.info(f"[train] --force: moved the unresumed training state in {out} to {aside}")
    return False


def _store_grew(out: Path, config: TrainConfig) -> bool:
    """Whether the checkpoint at ``out`` was trained on fewer rows of its store than the store holds
    now (a collection finished after an SAE was trained on its first rows)."""
    try:
        recorded = ckpt.read_json(out / ckpt.META_FILE)["store"]["attrs"]["n_tokens"]
        return int(recorded) < open_store(config.store).n_tokens
    except (ScircuitsError, KeyError, TypeError, ValueError):
        return False


def refuse_unresumed_state(config: TrainConfig) -> None:
    """A saved training state in ``config.out`` is neither resumed nor overwritten unless asked."""
    out = Path(config.out)
    if config.resume or config.force or not ckpt.has_training_state(out):
        return
    marker = read_marker(out)  # a state of other settings is moved aside by the claim, not refused
    if marker is None or marker.identity != config.config_hash() or ckpt.is_complete(out, marker.identity):
        return
    raise ConfigError(
        f"{out / ckpt.STATE_DIR} holds a saved training state of this config; add --resume to "
        "continue it, or --force to move it aside and start over"
    )


def _train_checked(config: TrainConfig, plugins: PluginSet, stop_after_steps: int | None) -> Path:
    out = Path(config.out)
    if "," in config.device and config.nproc == 1:
        raise ConfigError(
            f"--device {config.device}: several devices spread several SAEs (use train_many or "
            "several --store/--sae); for one SAE on several GPUs use --nproc"
        )
    if config.nproc > 1:
        try:
            launch(
                config.nproc, _distributed_entry, config.model_dump(mode="json"), stop_after_steps, hold=out
            )
        except (ConfigError, DataFormatError):
            raise  # a worker refused its input: its one line
        except ScircuitsError as exc:
            raise ResumableError(
                f"{exc}; the last saved training state in {out} is kept: run the same command with "
                "--resume to continue from it"
            ) from None
        return out
    _train_rank(config, plugins.saes.get(config.sae), from_environment(config.device), stop_after_steps)
    return out


def _distributed_entry(config_values: dict[str, Any], stop_after_steps: int | None) -> None:
    """The top of a ``--nproc`` worker process: it loads the plugin set of its own process (the
    launching process holds the folder's lock and has claimed it)."""
    config = TrainConfig.validated(config_values)
    dist = from_environment(config.device)
    finished = False
    try:
        _train_rank(config, get_plugins().saes.get(config.sae), dist, stop_after_steps)
        finished = True
    finally:
        dist.close(barrier=finished)


def _train_as_rank(config: TrainConfig, plugins: PluginSet, stop_after_steps: int | None) -> Path:
    """One rank of ``torchrun ... -m scircuits train``. Every rank checks its settings and its store
    (one line, from rank 0, when any rank is refused, before anything is written); rank 0 alone
    locks, claims and writes ``--out`` (the other ranks never write, and need not see it: a resumed
    state is read by rank 0 and sent to them)."""
    dist = from_environment(config.device)
    finished = False
    try:
        settings = agree(dist, lambda: _rank_settings(config, plugins, dist))
        _check_same_settings(dist, settings)
        config = _resolved(config, plugins)
        out = Path(config.out)
        with ExitStack() as held:

            def claim_on_rank_zero() -> bool:
                held.enter_context(FolderLock(out, "SAE checkpoint"))
                return _claim(config)

            if not from_rank_zero(dist, claim_on_rank_zero):
                _train_rank(config, plugins.saes.get(config.sae), dist, stop_after_steps)
        finished = True
    finally:
        dist.close(barrier=finished)
    return out


def _rank_settings(config: TrainConfig, plugins: PluginSet, dist: DistContext) -> dict[str, Any]:
    """What this rank was given and can read, checked (the same checks as `scircuits train` makes
    before any work), as a fingerprint every rank must share."""
    if config.nproc > 1:
        raise ConfigError(
            "--nproc starts training processes of its own: under torchrun leave it out (torchrun's "
            "--nnodes and --nproc-per-node set the processes)"
        )
    config = _resolved(config, plugins)
    if is_url(config.out):
        raise ConfigError(
            f"--out {config.out}: under torchrun the checkpoint is written by rank 0 to a local or shared "
            "folder; give a path (then copy it to the URL), or train with --nproc instead"
        )
    plugins.saes.get(config.sae).parse_hparams(config.hparams)
    check_world(config, dist.world_size)
    store = open_store(config.store)
    check_sae_memory(store.d_model, config.expansion, config.batch_size // dist.world_size, dist.device)
    return {
        **{f"--{k.replace('_', '-')}": v for k, v in config.identity().items()},
        "store rows": store.n_tokens,
        "store width": store.d_model,
        "scircuits": __version__,
    }


def refuse_as_rank(device: str, error: ScircuitsError) -> None:
    """A torchrun rank refused before it reached ``train`` (its command line could not be read):
    join the other ranks at their first check so that they stop too, with one line, not wait.
    Nothing to do once this process has joined them (they learnt of its failure then)."""
    if joined_a_group():
        return
    dist = from_environment(device)
    try:
        agree(dist, lambda: _raise(error))
    finally:
        dist.close(barrier=False)


def _raise(error: ScircuitsError) -> None:
    raise error


def _check_same_settings(dist: DistContext, settings: list[dict[str, Any]]) -> None:
    for rank, mine in enumerate(settings):
        differ = [key for key in mine if mine[key] != settings[0].get(key)]
        if differ:
            shown = "; ".join(f"{k} {settings[0].get(k)} on rank 0, {mine[k]} on rank {rank}" for k in differ)
            raise RankError(
                f"the ranks were started with different settings ({shown}): start every node with the same "
                "`scircuits train` arguments, store and scircuits version",
                quiet=not dist.is_main,
            )


def open_store(path: str) -> ActivationStore:
    if not path:
        raise ConfigError("train: give the activation store with --store PATH")
    return ActivationStore(path)


def _train_rank(
    config: TrainConfig, variant: SAEVariant, dist: DistContext, stop_after_steps: int | None
) -> None:
    """Train as this rank (the only one when not distributed); a collective that fails because
    another rank is gone ends this one with one line."""
    try:
        _fit(config, variant, dist, stop_after_steps)
    except Exception as exc:
        if not (dist.enabled and lost_peer(exc)):
            raise
        what = (
            f"nothing is marked complete and rank 0's --out {config.out} keeps the training state saved "
            f"last (every {config.checkpoint_every} steps): start the same command on every node again "
            "with --resume"
        )
        if dist.is_main and ckpt.is_complete(config.out, config.config_hash()):
            what = f"the checkpoint in {config.out} is complete (written before the other ranks were lost)"
        raise lost_rank_error(dist, exc, what) from None


def _fit(config: TrainConfig, variant: SAEVariant, dist: DistContext, stop_after_steps: int | None) -> None:
    for _ in fit_steps(config, variant, dist, stop_after_steps):
        pass


def fit_steps(
    config: TrainConfig, variant: SAEVariant, dist: DistContext, stop_after_steps: int | None = None
) -> Iterator[int]:
    """The training of one SAE as a generator: yields the step count after each optimiser step, so
    that several SAEs can be stepped in turn (``scircuits.platform.train.joint``); exhausting it is
    ``_fit``. The caller holds the folder (locked and claimed)."""
    seeds = derived_seeds(config.seed)
    torch.manual_seed(seeds.init)
    out = Path(config.out)
    store = open_store(config.store)
    if not store.complete:
        log.warning(f"[train] warning: store {config.store} is not complete; training on the rows it has")
    measured = None
    if dist.enabled and config.exclude_tokens != "none":  # each rank measures its own blocks
        norms, positions = row_norms(store, rank=dist.rank, world_size=dist.world_size)
        measured = (sum_over_ranks(dist, norms), sum_over_ranks(dist, positions))
    exclusion, excluded_rows = fit_exclusion(
        store, config.exclude_tokens, config.outlier_factor, measured=measured
    )
    if excluded_rows.size:
        store = store.excluding(excluded_rows)
    if dist.is_main:
        log.info(f"[train] {exclusion.describe()}")
    local_batch = config.batch_size // dist.world_size
    read = dict(eval_fraction=config.eval_fraction, split_seed=0)
    steps_per_epoch = store.batches_per_epoch(
        local_batch, split="train", world_size=dist.world_size, drop_last=True, **read
    )
    if steps_per_epoch == 0:
        left_out = f" ({exclusion.excluded} tokens left out: --exclude-tokens none keeps them)" * bool(
            exclusion.excluded
        )
        raise ConfigError(
            f"store {config.store} has fewer training rows than one batch of {config.batch_size}{left_out}"
        )
    if config.tokens is not None:
        total_steps = max(1, math.ceil(config.tokens / config.batch_size))
    else:
        total_steps = steps_per_epoch * (config.epochs or 1)

    d_in = store.d_model
    check_k_fits(getattr(variant.parse_hparams(config.hparams), "k", None), config.expansion, d_in)
    sae = variant.make(d_in, config.expansion * d_in, config.hparams).to(dist.device)
    sae.encoder_bf16 = config.bf16
    lr = resolved_lr(config, sae.d_sae)
    warmup_steps = resolved_warmup_steps(config, total_steps)
    trainer = SAETrainer(
        sae,
        lr=lr,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        decay_fraction=config.decay_fraction,
        grad_clip=config.grad_clip,
        dist=dist,
        dead_window=default_dead_window(total_steps * config.batch_size, config.batch_size),
    )
    config_hash = config.config_hash()
    if dist.is_main:
        log.debug(
            f"[train] {config.sae} d_sae {sae.d_sae}: lr {lr:.3g}, warmup {warmup_steps} of {total_steps} "
            f"steps ({steps_per_epoch} per epoch, {dist.world_size} process(es) of {local_batch} rows), "
            f"dead window {trainer.dead_window} tokens, config hash {config_hash}"
        )
    epoch, batch_in_epoch = 0, 0
    saved: dict[str, torch.Tensor] = {}

    def saved_state() -> dict[str, Any] | None:  # rank 0 reads it; the others receive it
        state = ckpt.load_training_state(out)
        if state is None:
            return None
        tensors, meta = state
        if meta.get("config_hash") != config_hash:
            raise ConfigError(
                f"--resume: {out} holds a training state for a different config "
                f"(hash {meta.get('config_hash')}, now {config_hash}); use another --out "
                "or drop --resume to start over"
            )
        processes = meta.get("world_size")  # each process reads its own share of an epoch's blocks
        if processes is not None and int(processes) != dist.world_size:
            raise ConfigError(
                f"--resume: {out} holds a training state of {processes} process(es), now {dist.world_size}; "
                f"resume it with --nproc {processes} (or as many torchrun processes), or start over with "
                "--force instead of --resume"
            )
        saved.update(tensors)
        return meta

    meta = from_rank_zero(dist, saved_state) if config.resume else None
    if meta is not None:
        trainer.load_state(broadcast_tensors(dist, saved if dist.is_main else None), meta)
        epoch, batch_in_epoch = int(meta["epoch"]), int(meta["batch_in_epoch"])
        if dist.is_main:
            log.info(f"[train] resuming {out} from step {trainer.step}")
            trim_log(out / ckpt.LOG_FILE, trainer.step)
    else:
        if dist.is_main:
            sample = next(
                store.iter_batches(
                    min(INIT_SAMPLE_TOKENS, store.n_rows("train", **read)),
                    seed=seeds.data,
                    split="train",
                    **read,
                )
            )
            trainer.initialize_from_sample(sample)
            out.mkdir(parents=True, exist_ok=True)
            (out / ckpt.LOG_FILE).unlink(missing_ok=True)
        if dist.enabled:  # rank 0 read the sample: its scale and b_dec go to the others
            scale = torch.tensor([trainer.scale], dtype=torch.float64)
            start = broadcast_tensors(
                dist, {"b_dec": trainer.sae.b_dec.detach(), "scale": scale} if dist.is_main else None
            )
            with torch.no_grad():
                trainer.sae.b_dec.copy_(start["b_dec"])
            trainer.scale = float(start["scale"][0])

    logger = _Logger(out, config, enabled=dist.is_main)
    has_eval = store.n_rows("eval", **read) > 0

    def eval_batches() -> Iterator[torch.Tensor]:
        split = "eval" if has_eval else "train"
        return store.iter_batches(min(config.batch_size, 8192), seed=seeds.data, split=split, **read)

    def save_state() -> None:
        if dist.is_main:
            ckpt.save_training_state(
                out,
                trainer.state_tensors(),
                {
                    **trainer.state_meta(),
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "config_hash": config_hash,
                    "total_steps": total_steps,
                    "world_size": dist.world_size,
                },
            )

    start_time = time.monotonic()
    start_tokens = trainer.tokens
    last_eval: dict[str, Any] = {}
    with progress(
        f"train {config.sae}", total=total_steps, enabled=config.progress and dist.is_main, unit="steps"
    ) as bar:
        bar.advance(trainer.step)
        while trainer.step < total_steps:
            batches = store.iter_batches(
                local_batch,
                seed=seeds.data,
                split="train",
                rank=dist.rank,
                world_size=dist.world_size,
                drop_last=True,
                epoch=epoch,
                start_batch=batch_in_epoch,  # resumed mid-epoch: seek, reading no skipped batch
                **read,
            )
            for x in batches:
                if batch_in_epoch >= steps_per_epoch or trainer.step >= total_steps:
                    break
                out_step = trainer.train_step(x)
                check_finite(trainer, out_step, config, epoch, batch_in_epoch, local_batch)
                batch_in_epoch += 1
                if trainer.step % config.log_every == 0 or trainer.step == total_steps:
                    rate = (trainer.tokens - start_tokens) / max(time.monotonic() - start_time, 1e-9)
                    logger.write(
                        {
                            "step": trainer.step,
                            "tokens": trainer.tokens,
                            "epoch": epoch,
                            "lr": trainer.lr_at(trainer.step - 1),
                            "l0": out_step.l0,
                            "dead_fraction_train": trainer.dead_fraction(),
                            "dead_window": trainer.dead_window,
                            "tokens_per_s": rate,
                            **{k: float(v.detach()) for k, v in out_step.terms.items()},
                        }
                    )
                if trainer.step % config.eval_every == 0 and trainer.step < total_steps and dist.is_main:
                    last_eval = trainer.evaluate(eval_batches(), config.eval_tokens)
                    logger.write({"step": trainer.step, "tokens": trainer.tokens, "eval": last_eval})
                bar.advance(1, status=_status(out_step, last_eval))
                if trainer.step % config.checkpoint_every == 0 and trainer.step < total_steps:
                    save_state()
                if stop_after_steps is not None and trainer.step >= stop_after_steps:
                    save_state()
                    logger.close()
                    return
                yield trainer.step
            if trainer.step < total_steps:
                epoch += 1
                batch_in_epoch = 0
    elapsed = time.monotonic() - start_time
    rows_read = gather_objects(dist, store.acts_read.rows)  # rank 0's own count is taken at the end
    if dist.is_main:
        final = trainer.evaluate(eval_batches(), config.eval_tokens)
        final["split"] = "eval" if has_eval else "train"
        final["eval_dead_fraction"] = final.pop("dead_fraction")
        final.pop("rare_fraction")  # the held-out tokens are too few to tell rare from dead
        final.update(_latent_usage(trainer, store, config, seeds.data, read))
        logger.write({"step": trainer.step, "tokens": trainer.tokens, "eval": final, "final": True})
        meta = {
            "config_hash": config_hash,
            # lr and warm-up as used (the rules' values when not given); the hash is of config as given
            "train_config": {**config.model_dump(mode="json"), "lr": lr, "warmup_steps": warmup_steps},
            "lr_rule": "given" if config.lr is not None else LR_RULE,
            "seeds": {"seed": config.seed, **seeds._asdict()},
            "store": {"path": config.store, "attrs": store.attrs},
            **({"collection": store.collection_site} if store.collection_site else {}),
            "metrics": final,
            "steps": trainer.step,
            "tokens": trainer.tokens,
            "input_scale": trainer.scale,
            "token_exclusion": exclusion.model_dump(),
            "dead_window_tokens": trainer.dead_window,
            "world_size": dist.world_size,
            # activation rows each rank read from the store in this run (rank 0's include evaluation)
            "activation_rows_read": [store.acts_read.rows, *rows_read[1:]],
            "seconds": elapsed,
        }
        ckpt.save_sae(
            out, trainer.folded_copy(), cfg={"metadata": _saelens_metadata(store.attrs)}, scircuits_meta=meta
        )
        ckpt.remove_training_state(out)
    logger.close()
    if dist.enabled:
        torch.distributed.barrier()


class NonFiniteTrainingError(ConfigError):
    """The loss or the weights became NaN or infinite; nothing is marked complete."""


def check_finite(
    trainer: SAETrainer, out: TrainOutput, config: TrainConfig, epoch: int, batch: int, batch_rows: int
) -> None:
    """Stop at the first non-finite loss or weight, naming the store rows of the batch that made it."""
    loss = out.terms["loss"].detach()
    bad = None if bool(torch.isfinite(loss)) else f"loss is {float(loss)}"
    if bad is None:
        for name, param in trainer.sae.named_parameters():
            if not bool(torch.isfinite(param).all()):
                bad = f"weight {name} is not finite"
                break
    if bad is not None:
        raise NonFiniteTrainingError(
            f"train: {bad} at step {trainer.step} (store {config.store}, training batch {batch} of epoch "
            f"{epoch}: {batch_rows} shuffled rows, seed {config.seed}, data seed "
            f"{derived_seeds(config.seed).data}); check the store with "
            "`scircuits inspect` or lower --lr; nothing was marked complete"
        )


def _latent_usage(
    trainer: SAETrainer, store: ActivationStore, config: TrainConfig, seed: int, read: dict[str, Any]
) -> dict[str, Any]:
    """Dead and rare fractions of the final SAE over up to ``USAGE_TOKENS`` training tokens (the
    held-out split is too small to tell a rare latent from a dead one); the held-out split's own
    dead fraction is kept as ``eval_dead_fraction``."""
    batches = store.iter_batches(min(config.batch_size, 8192), seed=seed, split="train", **read)
    usage = trainer.evaluate(batches, USAGE_TOKENS)
    return {
        "dead_fraction": usage["dead_fraction"],
        "rare_fraction": usage["rare_fraction"],
        "rare_threshold": RARE_FREQUENCY,
        "usage_tokens": usage["tokens"],
        "usage_split": "train",
    }


def _status(out: TrainOutput, last_eval: dict[str, Any]) -> str:
    text = f"loss {float(out.terms['loss'].detach()):.4g} L0 {out.l0:.1f}"
    if "fvu" in last_eval:
        text += f" eval FVU {last_eval['fvu']:.3f}"
    return text


def _saelens_metadata(attrs: dict[str, Any]) -> dict[str, Any]:
    """SAELens metadata fields we know from the store (hook_name as TransformerLens names the site)."""
    layer, site = attrs.get("layer"), attrs.get("site")
    return {
        "model_name": attrs.get("model_id") or attrs.get("model"),
        "hook_name": tl_hook_name(layer, site) if layer is not None and site else None,
        "hook_layer": layer,
        "dataset_path": attrs.get("benchmark"),
    }


def trim_log(path: Path, step: int) -> None:
    """The training log as it stood at ``step`` (a resume continues from there): the records of
    later steps, logged before the interruption, and a line the interruption cut are dropped, so
    that the resumed run's records follow on whole lines, each step once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    write_atomic(path, "".join(kept))


class _Logger:
    """train_log.jsonl (appended), plus wandb or tensorboard when asked for and installed."""

    def __init__(self, out: Path, config: TrainConfig, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / ckpt.LOG_FILE
        self.tracker: Any = None
        self.kind = config.tracker
        if not enabled or config.tracker == "none":
            return
        try:
            if config.tracker == "wandb":
                import wandb  # type: ignore[import-not-found]

                self.tracker = wandb.init(
                    project="scircuits", config=config.model_dump(mode="json"), dir=str(out), resume="allow"
                )
            else:
                from torch.utils.tensorboard import SummaryWriter

                self.tracker = SummaryWriter(log_dir=str(out / "tensorboard"))
        except ImportError as exc:
            log.warning(
                f"[train] {config.tracker} was asked for but is not installed ({exc}); logging to "
                f"{self.path} only"
            )

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        if self.tracker is not None:
            flat = {f"eval/{k}": v for k, v in record.get("eval", {}).items() if isinstance(v, (int, float))}
            flat.update({f"train/{k}": v for k, v in record.items() if isinstance(v, (int, float))})
            if self.kind == "wandb":
                self.tracker.log(flat, step=record["step"])
            else:
                for key, value in flat.items():
                    self.tracker.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tracker is not None:
            (self.tracker.finish if self.kind == "wandb" else self.tracker.close)()
            self.tracker = None


# -- several SAEs over several devices ----------------------------------------------------------


def _train_job(config_values: dict[str, Any], device: str) -> str:
    """The top of a job process: it loads the plugin set of its own process."""
    config = TrainConfig.validated({**config_values, "device": device})
    return str(train(config, get_plugins()))


def train_many(configs: list[TrainConfig], devices: list[str], plugins: PluginSet) -> list[Path]:
    """Train independent SAEs, one at a time per device (``--device cuda:0,cuda:1`` with several
    stores or variants). Each job runs in its own process; returns the checkpoint directories."""
    if len(configs) == 1 and len(devices) == 1:
        return [train(configs[0].model_copy(update={"device": devices[0]}), plugins)]
    outs = [c.out for c in configs]
    if len(set(outs)) != len(outs):
        raise ConfigError("several SAEs would be written to the same --out directory")
    results = run_jobs_on_devices([c.model_dump(mode="json") for c in configs], devices, _train_job)
    return [Path(r) for r in results]


__all__ = [
    "LR_RULE",
    "SAETrainer",
    "TrainSeeds",
    "apply_preset",
    "default_dead_window",
    "default_lr",
    "default_warmup_steps",
    "derived_seeds",
    "find_preset",
    "geometric_median",
    "refuse_as_rank",
    "resolved_lr",
    "train",
    "train_many",
    "width_scaled_lr",
]
