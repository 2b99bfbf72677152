"""Stage 4: which SAE features does the model use on a benchmark, and what happens without them.

``run_ablate(AblateConfig) -> Path`` writes ``causal/results.json`` and ``causal/examples.jsonl``.

Every condition (clean, spliced, reconstruction, zeroed site, each top-k ablation and its random
controls, each single feature, each faithfulness point) is one pass over the evaluation examples.
The blocks below the site are the same in every condition, so they run once per batch
(``SplitModel.lower``); each condition runs only the blocks above (``SplitModel.upper``). The
splice itself is checked through nnsight on every run (``splice`` in results.json).

Conventions:
- Effects are per example, versus the unablated splice (SAE output + error term), paired;
  intervals come from one seeded bootstrap over examples shared by every condition.
- The attribution of feature i estimates the mean change of the gold log-prob when i is ablated:
  Σ_positions ∂logprob/∂f_i · (ablated f_i − f_i), averaged over examples, from one forward and one
  backward pass per batch for all features. Ranking puts the most negative estimate first.
- Controls: k features drawn (seeded) among those active on the evaluation tokens and not in the
  top k; per example, the mean over the R draws.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scircuits.platform.common.progress import Progress, progress
from scircuits.platform.common.provenance import base_provenance
from scircuits.platform.config import AblateConfig
from scircuits.platform.contract.ablations import Ablation, FeatureStats
from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.models import LoadedModel
from scircuits.platform.model.scoring import (
    ExampleLayout,
    SequenceBatch,
    example_scores,
    layout_examples,
    make_batch,
    next_token_nll,
    sequence_scores,
)
from scircuits.platform.model.splice import (
    FeatureEdit,
    LowerCache,
    SpliceError,
    SplitModel,
    clean_logits,
    nnsight_site_logits,
    spliced_output,
)
from scircuits.platform.statistics import Bootstrap, Interval, spearman
from scircuits.platform.train.metrics import ReconstructionStats

RESULTS_FILE = "results.json"
EXAMPLES_FILE = "examples.jsonl"
RESULTS_FORMAT = "scircuits.causal"
RESULTS_FORMAT_VERSION = 1

SiteMode = str  # "clean" | "splice" | "reconstruction" | "zero"


# ----------------------------------------------------------------------------- evaluation data


@dataclass
class EvalBatch:
    batch: SequenceBatch
    example_indices: list[int]  # examples (global indices) whose sequences this batch holds
    layouts: list[ExampleLayout]  # their layouts, sequence indices local to the batch
    cache: LowerCache
    features: torch.Tensor  # (B, T, d_sae) SAE features of the clean site output
    error: torch.Tensor  # (B, T, d) site output minus the SAE reconstruction


@dataclass
class EvalData:
    examples: list[Example]
    batches: list[EvalBatch]
    n_tokens: int

    @property
    def n_examples(self) -> int:
        return len(self.examples)


def group_batches(layouts: Sequence[ExampleLayout], batch_size: int) -> list[list[int]]:
    """Consecutive examples grouped so that a batch holds about ``batch_size`` sequences, examples whole."""
    groups: list[list[int]] = []
    current: list[int] = []
    count = 0
    for i, layout in enumerate(layouts):
        n = len(layout.sequence_indices)
        if current and count + n > batch_size:
            groups.append(current)
            current, count = [], 0
        current.append(i)
        count += n
    if current:
        groups.append(current)
    return groups


def prepare_eval(
    split: SplitModel,
    sae: torch.nn.Module,
    tokenizer: Any,
    examples: list[Example],
    batch_size: int,
    max_length: int | None,
    show: Progress | None = None,
) -> EvalData:
    """Encode the examples, batch them, and run the lower blocks and the SAE once per batch."""
    sequences, layouts = layout_examples(tokenizer, examples, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(split.model.parameters()).device
    batches: list[EvalBatch] = []
    n_tokens = 0
    for group in group_batches(layouts, batch_size):
        seq_ids = [j for i in group for j in layouts[i].sequence_indices]
        local = {g: l for l, g in enumerate(seq_ids)}
        local_layouts = [
            ExampleLayout(
                layouts[i].example_id,
                tuple(local[j] for j in layouts[i].sequence_indices),
                layouts[i].answer_index,
            )
            for i in group
        ]
        batch = make_batch([sequences[j] for j in seq_ids], pad_id).to(device)
        cache = split.lower(batch)
        with torch.no_grad():
            x = cache.site_output.to(sae.W_dec.dtype)
            features = sae.encode(x)
            error = x - sae.decode(features)
        batches.append(EvalBatch(batch, list(group), local_layouts, cache, features, error))
        n_tokens += batch.n_tokens
        if show is not None:
            show.advance(len(group))
    return EvalData(examples, batches, n_tokens)


def derived_seed(*parts: int) -> int:
    """A deterministic 31-bit seed from integers (Python's hash() of strings changes per process)."""
    return int(np.random.SeedSequence([p % (1 << 32) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def token_mask(batch: SequenceBatch) -> torch.Tensor:
    return batch.attention_mask.bool()


def edit_mask(batch: SequenceBatch, first_position: int) -> torch.Tensor:
    """(B, T) True where features are edited: real tokens at positions >= ``first_position``."""
    return token_mask(batch) & (batch.position_ids >= first_position)


# ----------------------------------------------------------------------------- conditions


@dataclass
class ConditionScores:
    """Per-example scores of one condition (examples in evaluation order)."""

    logprob: np.ndarray
    correct: np.ndarray
    nll_sum: float = 0.0
    nll_count: int = 0

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_logprob(self) -> float:
        return float(self.logprob.mean())

    @property
    def ce(self) -> float | None:
        return self.nll_sum / self.nll_count if self.nll_count else None


class Study:
    """Runs conditions over prepared evaluation data."""

    def __init__(
        self,
        split: SplitModel,
        sae: torch.nn.Module,
        data: EvalData,
        ablation: Ablation,
        ablation_options: Any,
        stats: FeatureStats,
        seed: int,
        show: Progress | None = None,
        first_position: int = 0,
    ) -> None:
        self.split, self.sae, self.data = split, sae, data
        self.first_position = first_position
        self.ablation, self.ablation_options, self.stats = ablation, ablation_options, stats
        self.seed = seed
        self.show = show
        self.d_sae = int(sae.W_dec.shape[0])
        self.n_conditions = 0

    def site_value(self, eb: EvalBatch, mode: SiteMode, edit: FeatureEdit | None) -> torch.Tensor:
        x = eb.cache.site_output
        if mode == "clean":
            return x
        if mode == "zero":
            return torch.zeros_like(x)
        features = eb.features
        if edit is not None:
            where = edit_mask(eb.batch, self.first_position)[..., None]
            features = torch.where(where, edit(features), features)
        out = self.sae.decode(features)
        if mode == "splice":
            out = out + eb.error
        elif mode != "reconstruction":
            raise ValueError(f"unknown site mode {mode!r}")
        return out.to(x.dtype)

    def run(
        self,
        mode: SiteMode = "splice",
        edit_for: Callable[[int], FeatureEdit | None] | None = None,
        ce: bool = False,
        status: str = "",
    ) -> ConditionScores:
        """Score every example with the site's output set by ``mode`` (features edited by ``edit_for(b)``)."""
        n = self.data.n_examples
        logprob = np.zeros(n)
        correct = np.zeros(n, dtype=bool)
        nll_sum, nll_count = 0.0, 0
        with torch.no_grad():
            for b, eb in enumerate(self.data.batches):
                edit = edit_for(b) if edit_for is not None else None
                value = self.site_value(eb, mode, edit)
                logits = self.split.upper(eb.batch, eb.cache, value, all_positions=ce)
                if ce:
                    s, c = next_token_nll(logits, eb.batch)
                    nll_sum += s
                    nll_count += c
                    logits = logits[eb.batch.pred_rows, eb.batch.pred_cols]
                seq_lp, seq_ok = sequence_scores(logits, eb.batch)
                lp, ok = example_scores(seq_lp, seq_ok, eb.layouts)
                logprob[eb.example_indices] = lp.numpy()
                correct[eb.example_indices] = ok.numpy()
        self.n_conditions += 1
        if self.show is not None:
            self.show.advance(1, status)
        return ConditionScores(logprob, correct, nll_sum, nll_count)

    # -- edits -------------------------------------------------------------------------------

    def ablate_edit(self, indices: Sequence[int], tag: int) -> Callable[[int], FeatureEdit]:
        """Edits ablating ``indices`` with the configured ablation; the generator is seeded per batch."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)

        def edit_for(b: int) -> FeatureEdit:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, tag, b))
            return lambda f: self.ablation.apply(
                f, idx.to(f.device), self.stats, self.ablation_options, generator
            )

        return edit_for

    def keep_only_edit(self, keep: Sequence[int]) -> Callable[[int], FeatureEdit]:
        """Edits that mean-ablate every feature outside ``keep``."""
        keep_idx = torch.as_tensor(list(keep), dtype=torch.long)
        mean = self.stats.mean

        def edit(f: torch.Tensor) -> torch.Tensor:
            out = mean.to(f.device, f.dtype).expand_as(f).clone()
            if len(keep_idx):
                out[..., keep_idx] = f[..., keep_idx]
            return out

        return lambda b: edit

    # -- attribution -------------------------------------------------------------------------

    def attribution(self) -> np.ndarray:
        """Per feature: Σ over examples and positions of ∂logprob/∂f · (ablated − actual), / n examples."""
        total = torch.zeros(self.d_sae, dtype=torch.float64)
        params = [p for p in self.split.model.parameters()] + [p for p in self.sae.parameters()]
        saved = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        everything = torch.arange(self.d_sae)
        try:
            for b, eb in enumerate(self.data.batches):
                generator = torch.Generator().manual_seed(derived_seed(self.seed, -(10**9), b))
                with torch.no_grad():
                    ablated = self.ablation.apply(
                        eb.features,
                        everything.to(eb.features.device),
                        self.stats,
                        self.ablation_options,
                        generator,
                    )
                    delta = (ablated - eb.features) * edit_mask(eb.batch, self.first_position)[..., None]
                with torch.enable_grad():
                    features = eb.features.detach().clone().requires_grad_(True)
                    value = (self.sae.decode(features) + eb.error).to(eb.cache.site_output.dtype)
                    logits = self.split.upper(eb.batch, eb.cache, value)
                    seq_lp, _ = sequence_scores(logits, eb.batch)
                    gold = torch.tensor([layout.gold_sequence for layout in eb.layouts], device=seq_lp.device)
                    seq_lp[gold].sum().backward()
                total += (features.grad * delta).sum(dim=(0, 1)).double().cpu()
        finally:
            for p, flag in zip(params, saved, strict=False):
                p.requires_grad_(flag)
        self.n_conditions += 3  # a backward costs about two forwards
        if self.show is not None:
            self.show.advance(3, "attribution")
        return (total / self.data.n_examples).numpy()


# ----------------------------------------------------------------------------- feature statistics


def feature_statistics(
    data: EvalData, n_samples: int = 4096, seed: int = 0, first_position: int = 0
) -> tuple[FeatureStats, np.ndarray, np.ndarray]:
    """Mean activation over the evaluation tokens, a pool of token rows for resampling, and per-feature
    (mean activation, firing frequency) arrays."""
    d_sae = data.batches[0].features.shape[-1]
    total = torch.zeros(d_sae, dtype=torch.float64)
    fired = torch.zeros(d_sae, dtype=torch.float64)
    rows: list[torch.Tensor] = []
    count = 0
    for eb in data.batches:
        f = eb.features[edit_mask(eb.batch, first_position)]
        total += f.double().sum(0).cpu()
        fired += (f > 0).double().sum(0).cpu()
        count += f.shape[0]
        rows.append(f.cpu())
    mean = (total / max(count, 1)).float()
    pool = torch.cat(rows)
    if pool.shape[0] > n_samples:
        pick = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed))[:n_samples]
        pool = pool[pick]
    return FeatureStats(mean=mean, samples=pool), mean.numpy(), (fired / max(count, 1)).numpy()


def reconstruction_metrics(data: EvalData, first_position: int = 0) -> dict[str, float]:
    """FVU, relative error, L0 and dead fraction of the SAE on the evaluation tokens (docs/metrics.md
    definitions, ``scircuits.platform.metrics``); also the FVU over positions >= ``first_position``
    only (the first token's huge activations can dominate both sums of squares)."""

    def stats(position_from: int) -> dict[str, float]:
        acc = ReconstructionStats(d_sae=data.batches[0].features.shape[-1]) if data.batches else None
        for eb in data.batches:
            mask = edit_mask(eb.batch, position_from)
            x = eb.cache.site_output[mask]
            acc.update(x, x - eb.error[mask], eb.features[mask])  # type: ignore[union-attr]
        return acc.result() if acc is not None else {"tokens": 0}

    result = stats(0)
    if first_position > 0:
        result[f"fvu_positions_from_{first_position}"] = stats(first_position).get("fvu", float("nan"))
    return result


def control_draws(
    k: int, ranked_top: Sequence[int], active: np.ndarray, draws: int, seed: int
) -> list[list[int]]:
    """``draws`` sets of k features among the active ones outside the top k (seeded by seed and k)."""
    top = set(int(i) for i in ranked_top[:k])
    pool = [int(i) for i in np.flatnonzero(active) if int(i) not in top]
    if len(pool) < k:
        pool = [i for i in range(len(active)) if i not in top]
    rng = np.random.default_rng([seed, k])
    return [
        sorted(int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)) for _ in range(draws)
    ]


# ----------------------------------------------------------------------------- feature descriptions


def unembedding_effects(
    split: SplitModel, sae: torch.nn.Module, features: Sequence[int], tokenizer: Any, n: int = 10
) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Tokens each feature's decoder direction promotes and suppresses through the unembedding.

    The direction passes through the final norm's elementwise weight (LayerNorm also centres it;
    Gemma's RMSNorm scales by 1 + weight); the norm's division by the token's scale is a positive
    factor, so it leaves the ranking unchanged. Blocks between the site and the end are not
    included (the direct path only).
    """
    if not features:
        return {}
    directions = sae.W_dec.detach()[list(features)].float()
    norm = split.final_norm()
    if norm is not None:
        if isinstance(norm, torch.nn.LayerNorm):
            directions = directions - directions.mean(dim=-1, keepdim=True)
        weight = getattr(norm, "weight", None)
        if weight is not None:
            w = weight.detach().float()
            if "gemma" in type(norm).__name__.lower():
                w = 1.0 + w
            directions = directions * w
    unembed = split.unembed.weight.detach().float()  # (vocab, d)
    scores = directions @ unembed.T
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for row, feature in enumerate(features):
        top = torch.topk(scores[row], n)
        bottom = torch.topk(-scores[row], n)
        out[int(feature)] = {
            "promoted": [
                {"token": tokenizer.decode([int(t)]), "logit": float(v)}
                for v, t in zip(top.values, top.indices, strict=False)
            ],
            "suppressed": [
                {"token": tokenizer.decode([int(t)]), "logit": float(-v)}
                for v, t in zip(bottom.values, bottom.indices, strict=False)
            ],
        }
    return out


@dataclass
class TokenRows:
    """Token rows of activations: from the store, or from the evaluation batches."""

    source: str
    n_tokens: int
    token_ids: np.ndarray
    example_ids: np.ndarray
    positions: np.ndarray
    read: Callable[[int, int], np.ndarray]  # rows [a, b) as float32 (n, d)


def rows_from_store(path: str) -> TokenRows:
    from scircuits.store.reader import ActivationStore

    store = ActivationStore(path)
    return TokenRows(
        f"store:{path}", store.n_tokens, store.token_ids, store.example_ids, store.positions, store.read_rows
    )


def rows_from_eval(data: EvalData) -> TokenRows:
    acts, tokens, examples, positions = [], [], [], []
    for eb in data.batches:
        mask = token_mask(eb.batch)
        for local, layout in enumerate(eb.layouts):
            seq = layout.gold_sequence
            n = int(mask[seq].sum())
            acts.append(eb.cache.site_output[seq, :n].float().cpu().numpy())
            tokens.append(eb.batch.input_ids[seq, :n].cpu().numpy())
            examples.append(np.full(n, eb.example_indices[local]))
            positions.append(np.arange(n))
    stacked = np.concatenate(acts)
    return TokenRows(
        "evaluation examples",
        len(stacked),
        np.concatenate(tokens),
        np.concatenate(examples),
        np.concatenate(positions),
        lambda a, b: stacked[a:b],
    )


def top_contexts(
    sae: torch.nn.Module,
    rows: TokenRows,
    features: Sequence[int],
    tokenizer: Any,
    n_top: int = 5,
    before: int = 10,
    after: int = 2,
    block: int = 8192,
    first_position: int = 0,
) -> dict[int, list[dict[str, Any]]]:
    """For each feature: its ``n_top`` highest-activating tokens, each with its context and the
    feature's activation on every context token."""
    if not features:
        return {}
    idx = torch.as_tensor(list(features), dtype=torch.long)
    best_values = torch.full((len(features), n_top), -float("inf"))
    best_rows = torch.full((len(features), n_top), -1, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, rows.n_tokens, block):
            stop = min(start + block, rows.n_tokens)
            f = sae.encode(torch.from_numpy(rows.read(start, stop)).to(sae.W_dec.dtype))[:, idx].T  # (F, n)
            f = f.masked_fill(torch.from_numpy(rows.positions[start:stop] < first_position), -float("inf"))
            values = torch.cat([best_values, f.float()], dim=1)
            row_ids = torch.cat([best_rows, torch.arange(start, stop).expand(len(features), -1)], dim=1)
            top = torch.topk(values, min(n_top, values.shape[1]), dim=1)
            best_values, best_rows = top.values, row_ids.gather(1, top.indices)
    out: dict[int, list[dict[str, Any]]] = {}
    for fi, feature in enumerate(features):
        contexts = []
        for value, row in zip(best_values[fi].tolist(), best_rows[fi].tolist(), strict=False):
            if row < 0 or value <= 0:
                continue
            example, position = int(rows.example_ids[row]), int(rows.positions[row])
            lo = row
            while lo - 1 >= 0 and row - lo < before and rows.example_ids[lo - 1] == example:
                lo -= 1
            hi = row + 1
            while hi < rows.n_tokens and hi - row <= after and rows.example_ids[hi] == example:
                hi += 1
            with torch.no_grad():
                acts = sae.encode(torch.from_numpy(rows.read(lo, hi)).to(sae.W_dec.dtype))[:, feature]
            contexts.append(
                {
                    "token": tokenizer.decode([int(rows.token_ids[row])]),
                    "activation": float(value),
                    "example": example,
                    "position": position,
                    "context": [
                        [tokenizer.decode([int(t)]), float(a)]
                        for t, a in zip(rows.token_ids[lo:hi], acts.tolist(), strict=False)
                    ],
                    "focus": row - lo,
                }
            )
        out[int(feature)] = contexts
    return out


# ----------------------------------------------------------------------------- summaries


def effect(bootstrap: Bootstrap, scores: ConditionScores, reference: ConditionScores) -> dict[str, Any]:
    acc = bootstrap.interval(scores.correct.astype(float) - reference.correct.astype(float))
    lp = bootstrap.interval(scores.logprob - reference.logprob)
    return {
        "accuracy_delta": acc.mean,
        "accuracy_ci": acc.as_list(),
        "logprob_delta": lp.mean,
        "logprob_ci": lp.as_list(),
    }


def control_effect(
    bootstrap: Bootstrap, draws: list[ConditionScores], reference: ConditionScores
) -> dict[str, Any]:
    """Effect of the mean over the control draws, per example (paired with the reference)."""
    acc = np.mean([d.correct.astype(float) for d in draws], axis=0) - reference.correct.astype(float)
    lp = np.mean([d.logprob for d in draws], axis=0) - reference.logprob
    a, l = bootstrap.interval(acc), bootstrap.interval(lp)
    return {
        "accuracy_delta": a.mean,
        "accuracy_ci": a.as_list(),
        "logprob_delta": l.mean,
        "logprob_ci": l.as_list(),
        "draws": [
            {
                "accuracy_delta": float(d.accuracy - reference.accuracy),
                "logprob_delta": float(d.mean_logprob - reference.mean_logprob),
            }
            for d in draws
        ],
    }


def excludes(a: list[float], b: list[float]) -> bool:
    return Interval(0, a[0], a[1]).excludes(Interval(0, b[0], b[1]))


def ce_loss_recovered(clean: float | None, sae: float | None, zero: float | None) -> float | None:
    if clean is None or sae is None or zero is None or zero == clean:
        return None
    return (zero - sae) / (zero - clean)


# ----------------------------------------------------------------------------- the stage


@dataclass
class AblateInputs:
    """What the stage works on; ``run_ablate`` builds it from the config (tests may pass their own)."""

    loaded: LoadedModel
    sae: torch.nn.Module
    sae_info: dict[str, Any]
    examples: list[Example]
    layer: int
    benchmark_info: dict[str, Any] = field(default_factory=dict)


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
    if layer is None:
        cfg = info.get("cfg") if isinstance(info.get("cfg"), dict) else {}
        metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
        layer = metadata.get("hook_layer")
    return (int(layer) if isinstance(layer, int) else None, site if isinstance(site, str) else None)


def load_inputs(config: AblateConfig, loaded: LoadedModel | None = None) -> AblateInputs:
    """Check the weights, load the model, the SAE and the examples (model weights checked first)."""
    from scircuits.platform.manager.plugin_set import get_plugins

    plugins = get_plugins()
    adapter = plugins.models.get(config.model)
    benchmark = plugins.benchmarks.get(config.benchmark)
    benchmark.check_split(config.split)
    if not config.sae:
        raise ConfigError("ablate needs --sae DIR (an SAE checkpoint folder from `scircuits train`)")
    if not Path(config.sae).is_dir():
        raise ConfigError(f"--sae {config.sae} is not a folder; give the folder that `scircuits train` wrote")
    if loaded is None:
        from scircuits.platform.contract.hf_loading import check_weights_available

        check_weights_available(adapter, config.model_path)
    from scircuits.platform.train.checkpoint import load_sae

    sae, info = load_sae(config.sae)
    if loaded is None:
        loaded = adapter.load(model_path=config.model_path, dtype="float32", device=config.device)
    if int(sae.W_dec.shape[1]) != loaded.d_model:
        raise ConfigError(
            f"the SAE in {config.sae} has d_in {sae.W_dec.shape[1]}, but {config.model} has "
            f"width {loaded.d_model}: it was trained on another model"
        )
    examples = list(benchmark.examples(config.split, config.limit, config.seed, config.benchmark_options))
    if not examples:
        raise ConfigError(f"benchmark {config.benchmark!r} gave no examples for split {config.split!r}")
    info = dict(info) if isinstance(info, dict) else {}
    trained_site = sae_site(info)[1]
    if trained_site is not None and trained_site != config.site:
        raise ConfigError(
            f"the SAE in {config.sae} was trained on the {trained_site!r} site, not {config.site!r}; "
            f"pass --site {trained_site}"
        )
    layer = resolve_layer(config, loaded, info)
    return AblateInputs(loaded, sae, info, examples, layer)


def run_ablate(
    config: AblateConfig, loaded: LoadedModel | None = None, inputs: AblateInputs | None = None
) -> Path:
    """The ablation study of ``config``; returns the output folder (results.json, examples.jsonl)."""
    started = time.monotonic()
    inputs = inputs or load_inputs(config, loaded)
    results, per_example = analyse(config, inputs)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / (EXAMPLES_FILE + ".tmp"), "w") as fh:
        for row in per_example:
            fh.write(json.dumps(row) + "\n")
    (out / (EXAMPLES_FILE + ".tmp")).replace(out / EXAMPLES_FILE)
    (out / (RESULTS_FILE + ".tmp")).write_text(json.dumps(results, indent=2))
    (out / (RESULTS_FILE + ".tmp")).replace(out / RESULTS_FILE)
    return out


def planned_conditions(config: AblateConfig, faithfulness_points: int) -> int:
    return (
        4 + 3 + len(config.top_k) * (1 + config.random_controls) + config.exact_top + faithfulness_points + 1
    )


def analyse(config: AblateConfig, inputs: AblateInputs) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from scircuits.platform.manager.plugin_set import get_plugins

    loaded, sae = inputs.loaded, inputs.sae
    sae.eval()
    ablation = get_plugins().ablations.get(config.ablation)
    ablation_options = ablation.parse_options(config.ablation_options)
    split = SplitModel(loaded, inputs.layer, config.site)
    tokenizer = loaded.tokenizer

    with progress(
        "ablate: lower blocks + SAE", total=len(inputs.examples), enabled=config.progress, unit="examples"
    ) as show:
        data = prepare_eval(
            split, sae, tokenizer, inputs.examples, config.batch_size, config.max_length, show
        )
    stats, mean_activation, frequency = feature_statistics(
        data, seed=config.seed, first_position=config.edit_from_position
    )
    active = frequency > 0
    bootstrap = Bootstrap(data.n_examples, config.bootstrap, config.seed)

    faith_n = sorted({n for n in config.faithfulness_n if 0 < n <= sae.W_dec.shape[0]})
    total = planned_conditions(config, len(faith_n))
    with progress("ablate: conditions", total=total, enabled=config.progress, unit="passes") as show:
        study = Study(
            split,
            sae,
            data,
            ablation,
            ablation_options,
            stats,
            config.seed,
            show,
            first_position=config.edit_from_position,
        )
        splice = check_splice(config, loaded, split, sae, data)
        clean = study.run("clean", ce=True, status="clean")
        spliced = study.run("splice", status="splice")
        recon = study.run("reconstruction", ce=True, status="reconstruction")
        zeroed = study.run("zero", ce=True, status="zero site")

        attribution = study.attribution()
        if config.rank == "attribution":
            order = np.lexsort((-mean_activation, attribution))  # most negative first; ties by activation
        else:
            order = np.argsort(-mean_activation, kind="stable")
        ranked = [int(i) for i in order]

        conditions: dict[str, ConditionScores] = {
            "clean": clean,
            "splice": spliced,
            "reconstruction": recon,
            "zero_site": zeroed,
        }
        sweeps = []
        for k in config.top_k:
            if k > len(ranked):
                continue
            top = study.run("splice", study.ablate_edit(ranked[:k], tag=k), status=f"top {k}")
            draws = [
                study.run(
                    "splice", study.ablate_edit(features, tag=10_000 * (r + 1) + k), status=f"control {k}.{r}"
                )
                for r, features in enumerate(
                    control_draws(k, ranked, active, config.random_controls, config.seed)
                )
            ]
            conditions[f"top{k}"] = top
            for r, d in enumerate(draws):
                conditions[f"control{k}_{r}"] = d
            entry = {
                "k": k,
                "ablation": config.ablation,
                "features": ranked[:k],
                **effect(bootstrap, top, spliced),
            }
            if draws:
                entry["control"] = control_effect(bootstrap, draws, spliced)
                entry["significant_logprob"] = excludes(entry["logprob_ci"], entry["control"]["logprob_ci"])
                entry["significant_accuracy"] = excludes(
                    entry["accuracy_ci"], entry["control"]["accuracy_ci"]
                )
            else:
                entry["control"] = None
                entry["significant_logprob"] = entry["significant_accuracy"] = None
            sweeps.append(entry)

        exact_features = ranked[: min(config.exact_top, len(ranked))]
        exact: dict[int, dict[str, Any]] = {}
        for i, feature in enumerate(exact_features):
            scores = study.run(
                "splice", study.ablate_edit([feature], tag=-(feature + 1)), status=f"feature {feature}"
            )
            conditions[f"feature{feature}"] = scores
            exact[feature] = effect(bootstrap, scores, spliced)

        empty = study.run("splice", study.keep_only_edit([]), status="faithfulness ∅")
        faithfulness = []
        denominator = spliced.mean_logprob - empty.mean_logprob
        for n in faith_n:
            kept = study.run("splice", study.keep_only_edit(ranked[:n]), status=f"faithfulness {n}")
            value = (kept.mean_logprob - empty.mean_logprob) / denominator if denominator else None
            faithfulness.append(
                {"n": n, "value": value, "logprob": kept.mean_logprob, "accuracy": kept.accuracy}
            )
        conditions["keep_none"] = empty

    spearman_value = None
    if len(exact_features) >= 2:
        spearman_value = spearman(
            attribution[exact_features], np.array([exact[f]["logprob_delta"] for f in exact_features])
        )

    described = ranked[: max(len(exact_features), min(10, len(ranked)))]
    lens = unembedding_effects(split, sae, described, tokenizer)
    rows, contexts_source = context_rows(config, data)
    contexts = top_contexts(sae, rows, described, tokenizer, first_position=config.edit_from_position)
    features = []
    for rank, feature in enumerate(described):
        ex = exact.get(feature)
        features.append(
            {
                "id": feature,
                "rank": rank + 1,
                "attribution": float(attribution[feature]),
                "mean_activation": float(mean_activation[feature]),
                "frequency": float(frequency[feature]),
                "exact_logprob_delta": ex["logprob_delta"] if ex else None,
                "exact_logprob_ci": ex["logprob_ci"] if ex else None,
                "exact_accuracy_delta": ex["accuracy_delta"] if ex else None,
                "exact_accuracy_ci": ex["accuracy_ci"] if ex else None,
                "top_tokens": contexts.get(feature, []),
                "promoted": lens.get(feature, {}).get("promoted", []),
                "suppressed": lens.get(feature, {}).get("suppressed", []),
            }
        )

    results = {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_FORMAT_VERSION,
        "config": config.model_dump(mode="json"),
        "config_hash": config.config_hash(),
        "n_examples": data.n_examples,
        "n_tokens": data.n_tokens,
        "layer": inputs.layer,
        "site": config.site,
        "splice": splice,
        "baseline": {"accuracy": clean.accuracy, "logprob": clean.mean_logprob, "ce_loss": clean.ce},
        "splice_scores": {"accuracy": spliced.accuracy, "logprob": spliced.mean_logprob},
        "reconstruction": {
            "accuracy": recon.accuracy,
            "logprob": recon.mean_logprob,
            "ce_loss": recon.ce,
            "ce_loss_zero_site": zeroed.ce,
            "ce_loss_clean": clean.ce,
            "ce_loss_recovered": ce_loss_recovered(clean.ce, recon.ce, zeroed.ce),
            "zero_site_accuracy": zeroed.accuracy,
            "zero_site_logprob": zeroed.mean_logprob,
        },
        "rank": {
            "method": config.rank,
            "order": "most negative attribution first"
            if config.rank == "attribution"
            else "highest mean activation first",
            "top": ranked[: max([*config.top_k, config.exact_top, 1])],
        },
        "sae_metrics_eval": reconstruction_metrics(data, config.edit_from_position),
        "active_features": int(active.sum()),
        "d_sae": int(sae.W_dec.shape[0]),
        "sweeps": sweeps,
        "features": features,
        "attribution_vs_exact_spearman": spearman_value,
        "faithfulness": faithfulness,
        "faithfulness_reference": {
            "all": spliced.mean_logprob,
            "none": empty.mean_logprob,
            "metric": "mean logprob",
        },
        "statistics": {
            "bootstrap_replicates": config.bootstrap,
            "level": 0.95,
            "paired": True,
            "seed": config.seed,
            "significance": "the top-k interval excludes the control's interval",
        },
        "contexts_source": contexts_source,
        "stats_source": "evaluation tokens at the edited positions",
        "edited_positions": f"every position >= {config.edit_from_position} of every sequence",
        "unembedding": "decoder direction x final-norm weight (centred for LayerNorm) @ W_U; direct path only",
        "n_conditions": study.n_conditions,
        "provenance": provenance(config, inputs, data),
    }
    per_example = []
    for i, example in enumerate(data.examples):
        per_example.append(
            {
                "id": example.id,
                "target": example.target,
                "scores": {
                    name: {"logprob": float(s.logprob[i]), "correct": bool(s.correct[i])}
                    for name, s in conditions.items()
                },
            }
        )
    return results, per_example


def context_rows(config: AblateConfig, data: EvalData) -> tuple[TokenRows, str]:
    if config.store:
        return rows_from_store(config.store), "store"
    return rows_from_eval(data), "evaluation examples"


def check_splice(
    config: AblateConfig, loaded: LoadedModel, split: SplitModel, sae: torch.nn.Module, data: EvalData
) -> dict[str, Any]:
    """Clean model vs the SAE spliced in through nnsight (error term kept), and the fast path vs
    nnsight, on the first ``splice_check_examples`` examples. Stops when beyond the tolerance."""
    worst_splice, worst_fast, checked = 0.0, 0.0, 0
    for eb in data.batches:
        if config.splice_check_examples is not None and checked >= config.splice_check_examples:
            break
        batch = eb.batch
        mask = token_mask(batch)
        clean = clean_logits(loaded, batch)
        traced = nnsight_site_logits(
            loaded, split.layer, split.site, batch, lambda x: spliced_output(sae, x, error_term=True)
        )
        with torch.no_grad():
            value = (sae.decode(eb.features) + eb.error).to(eb.cache.site_output.dtype)
            fast = split.upper(batch, eb.cache, value, all_positions=True)
        worst_splice = max(worst_splice, float((traced - clean)[mask].abs().max()))
        worst_fast = max(worst_fast, float((fast - traced)[mask].abs().max()))
        checked += len(eb.example_indices)
    result = {
        "max_abs_logit_diff": worst_splice,
        "fast_path_max_abs_diff": worst_fast,
        "examples_checked": checked,
        "tolerance": config.splice_tolerance,
        "method": "nnsight",
    }
    if worst_splice > config.splice_tolerance or worst_fast > config.splice_tolerance:
        raise SpliceError(
            f"the spliced model does not reproduce the clean model: max |logit difference| "
            f"{worst_splice:.3g} (nnsight splice vs clean) and {worst_fast:.3g} (fast path vs nnsight) on "
            f"{checked} examples, tolerance {config.splice_tolerance:g}. The SAE in {config.sae} may not "
            f"match layer {split.layer} {split.site} of {config.model}, or the model runs in low precision; "
            f"raise --splice-tolerance only if you accept that difference"
        )
    return result


def provenance(config: AblateConfig, inputs: AblateInputs, data: EvalData) -> dict[str, Any]:
    loaded = inputs.loaded
    sae_dir = Path(config.sae) if config.sae else None
    sae_prov: dict[str, Any] = {
        "path": str(sae_dir) if sae_dir else None,
        "d_in": int(inputs.sae.W_dec.shape[1]),
        "d_sae": int(inputs.sae.W_dec.shape[0]),
        "variant": getattr(inputs.sae, "variant", type(inputs.sae).__name__),
    }
    if sae_dir is not None:
        weights = sae_dir / "sae_weights.safetensors"
        if weights.is_file():
            from scircuits.platform.common.provenance import file_sha256

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
    store_prov: dict[str, Any] | None = None
    if config.store:
        try:
            from scircuits.store.reader import ActivationStore

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
            "n_examples": data.n_examples,
            "n_tokens": data.n_tokens,
            "options": config.benchmark_options,
        },
        "layer": inputs.layer,
        "site": config.site,
    }


def iter_results(paths: Sequence[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    for p in paths:
        yield p, json.loads((Path(p) / RESULTS_FILE).read_text())
