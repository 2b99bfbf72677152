"""The study's shared machinery: conditions over prepared evaluation data (one pass of the blocks
above the site per condition), feature edits, attribution, the splice check, and the feature
statistics, reconstruction metrics, logit effects and top contexts that analyses read.

Conventions:
- Effects are per example, versus the unablated splice (SAE output + error term), paired;
  intervals come from one seeded bootstrap over examples shared by every condition.
- The attribution of feature i estimates the mean change of the gold log-prob when i is ablated:
  Σ_positions ∂logprob/∂f_i · (ablated f_i − f_i), averaged over examples, from one forward and one
  backward pass per batch for all features. Ranking puts the most negative estimate first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scircuits.platform.causal.evaluation import EvalBatch, EvalData, edit_mask, token_mask
from scircuits.platform.causal.statistics import derived_seed
from scircuits.platform.common.progress import Progress
from scircuits.platform.contract.ablations import Ablation, FeatureStats
from scircuits.platform.contract.models import LoadedModel
from scircuits.platform.model.scoring import (
    example_objective,
    example_scores,
    next_token_nll,
    sequence_scores,
)
from scircuits.platform.model.splice import (
    FeatureEdit,
    SpliceError,
    SplitModel,
    clean_logits,
    nnsight_site_logits,
    spliced_output,
)
from scircuits.platform.train.metrics import ReconstructionStats
from scircuits.store.reader import ActivationStore

SiteMode = str  # "clean" | "splice" | "reconstruction" | "zeroed-site"


@dataclass
class ConditionScores:
    """Per-example scores of one condition (examples in evaluation order)."""

    logprob: np.ndarray
    correct: np.ndarray
    nll_sum: float = 0.0
    nll_count: int = 0
    scored: np.ndarray | None = None  # per example: whether it was scored (None: every example)

    def subset(self, indices: np.ndarray) -> ConditionScores:
        """The scores of the examples ``indices`` only (in that order)."""
        return ConditionScores(
            self.logprob[indices], self.correct[indices], self.nll_sum, self.nll_count, None
        )

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
        if mode == "zeroed-site":
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
        examples: np.ndarray | None = None,
    ) -> ConditionScores:
        """Score every example (or the batches holding one of ``examples``) with the site's output set
        by ``mode`` (features edited by ``edit_for(b)``)."""
        n = self.data.n_examples
        logprob = np.zeros(n)
        correct = np.zeros(n, dtype=bool)
        scored = np.zeros(n, dtype=bool)
        wanted = None if examples is None else set(int(i) for i in examples)
        nll_sum, nll_count = 0.0, 0
        with torch.no_grad():
            for b, eb in enumerate(self.data.batches):
                if wanted is not None and not wanted.intersection(eb.example_indices):
                    continue
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
                scored[eb.example_indices] = True
        self.n_conditions += 1
        if self.show is not None:
            self.show.advance(1, status)
        return ConditionScores(logprob, correct, nll_sum, nll_count, None if wanted is None else scored)

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

    def attribution(self, examples: np.ndarray | None = None) -> np.ndarray:
        """Per feature: Σ over examples and positions of ∂score/∂f · (ablated − actual), / n examples,
        the score being ``example_objective`` (the gold log-prob; the margin over the distractors for
        multiple choice); over ``examples`` only when given (the selection split). Sequences of a
        batch are independent, so backpropagating only the chosen examples' scores leaves the others'
        gradients 0."""
        wanted = None if examples is None else set(int(i) for i in examples)
        total = torch.zeros(self.d_sae, dtype=torch.float64)
        params = [p for p in self.split.model.parameters()] + [p for p in self.sae.parameters()]
        saved = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        everything = torch.arange(self.d_sae)
        try:
            for b, eb in enumerate(self.data.batches):
                chosen = [
                    layout
                    for i, layout in zip(eb.example_indices, eb.layouts, strict=True)
                    if wanted is None or i in wanted
                ]
                if not chosen:
                    continue
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
                    example_objective(seq_lp, chosen).sum().backward()
                total += (features.grad * delta).sum(dim=(0, 1)).double().cpu()
        finally:
            for p, flag in zip(params, saved, strict=False):
                p.requires_grad_(flag)
        self.n_conditions += 3  # a backward costs about two forwards
        if self.show is not None:
            self.show.advance(3, "attribution")
        return (total / (self.data.n_examples if wanted is None else max(len(wanted), 1))).numpy()

    # -- measurements analyses read ----------------------------------------------------------

    def check_splice(
        self, loaded: LoadedModel, check_examples: int | None, tolerance: float, described: str
    ) -> dict[str, Any]:
        return check_splice(loaded, self.split, self.sae, self.data, check_examples, tolerance, described)

    def reconstruction_metrics(self) -> dict[str, float]:
        return reconstruction_metrics(self.data, self.first_position)

    def unembedding_effects(
        self, features: Sequence[int], tokenizer: Any, n: int = 10
    ) -> dict[int, dict[str, list[dict[str, Any]]]]:
        return unembedding_effects(self.split, self.sae, features, tokenizer, n)

    def top_contexts(
        self, features: Sequence[int], tokenizer: Any, store: str | None
    ) -> tuple[dict[int, list[dict[str, Any]]], str]:
        """Top-activating contexts of ``features`` from the store when given, else the evaluation
        examples; and the source's name."""
        if store:
            rows, source = rows_from_store(store), "store"
        else:
            rows, source = rows_from_eval(self.data), "evaluation examples"
        return top_contexts(self.sae, rows, features, tokenizer, first_position=self.first_position), source


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
    """FVU, relative error, L0 and dead fraction of the SAE on the evaluation tokens (DESIGN.md
    definitions, ``scircuits.platform.train.metrics``); also the FVU over positions >= ``first_position``
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


def worst_of(worst: float, value: float) -> float:
    """The larger difference, where NaN counts as the worst of all (``max(0.0, nan)`` is 0.0)."""
    if math.isnan(worst) or math.isnan(value):
        return math.nan
    return max(worst, value)


def check_splice(
    loaded: LoadedModel,
    split: SplitModel,
    sae: torch.nn.Module,
    data: EvalData,
    check_examples: int | None,
    tolerance: float,
    described: str,
) -> dict[str, Any]:
    """Clean model vs the SAE spliced in through nnsight (error term kept), and the fast path vs
    nnsight, on the first ``check_examples`` examples. Stops when beyond the tolerance."""
    worst_splice, worst_fast, checked = 0.0, 0.0, 0
    for eb in data.batches:
        if check_examples is not None and checked >= check_examples:
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
        worst_splice = worst_of(worst_splice, float((traced - clean)[mask].abs().max()))
        worst_fast = worst_of(worst_fast, float((fast - traced)[mask].abs().max()))
        checked += len(eb.example_indices)
    result = {
        "max_abs_logit_diff": worst_splice,
        "fast_path_max_abs_diff": worst_fast,
        "examples_checked": checked,
        "tolerance": tolerance,
        "method": "nnsight",
    }
    # ``not (x <= tol)`` so that NaN (a non-finite SAE or model output) fails the check
    if not (worst_splice <= tolerance and worst_fast <= tolerance):
        raise SpliceError(
            f"the spliced model does not reproduce the clean model: max |logit difference| "
            f"{worst_splice:.3g} (nnsight splice vs clean) and {worst_fast:.3g} (fast path vs nnsight) on "
            f"{checked} examples, tolerance {tolerance:g}. {described}, or the model runs in low precision; "
            f"raise --splice-tolerance only if you accept that difference"
        )
    return result


def unembedding_effects(
    split: SplitModel, sae: torch.nn.Module, features: Sequence[int], tokenizer: Any, n: int = 10
) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Tokens each feature's decoder direction promotes and suppresses through the unembedding.

    The direction passes through the final norm's elementwise gain (LayerNorm also centres it);
    the norm's division by the token's scale is a positive factor, so it leaves the ranking
    unchanged. Blocks between the site and the end are not included (the direct path only).
    """
    if not features:
        return {}
    directions = sae.W_dec.detach()[list(features)].float()
    directions = split.through_final_norm(directions)
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
