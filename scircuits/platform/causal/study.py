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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scircuits.platform.causal.evaluation import EvalBatch, EvalData, edit_mask, token_mask
from scircuits.platform.causal.statistics import derived_seed
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.progress import Progress
from scircuits.platform.contract.ablations import Ablation, FeatureStats
from scircuits.platform.contract.models import LoadedModel
from scircuits.platform.contract.sae_module import SparseAutoencoder
from scircuits.platform.model.remote_split import RemoteSplitModel
from scircuits.platform.model.scoring import (
    SequenceBatch,
    distractors,
    example_objective,
    example_scores,
    sequence_scores,
)
from scircuits.platform.model.splice import (
    FeatureEdit,
    JobScores,
    LowerCache,
    LowRankDelta,
    ScoreJob,
    SpliceError,
    SplitModel,
    clean_logits,
    nnsight_site_logits,
    spliced_output,
)
from scircuits.platform.train.exclusion import TokenExclusion
from scircuits.platform.train.metrics import ReconstructionStats
from scircuits.store.reader import ActivationStore

log = get_logger(__name__)

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


# site-value tokens ``Study.run_many`` plans before it scores them (~75 MB per 32k tokens at d = 576)
PLANNED_TOKENS = 65_536


@dataclass
class Condition:
    """One condition: the site's output set by ``mode``, features edited by ``edit_for(batch)``."""

    mode: SiteMode = "splice"
    edit_for: Callable[[int], FeatureEdit | None] | None = None
    ce: bool = False
    status: str = ""


@dataclass
class ConditionPlan:
    """A condition's jobs for ``SplitModel.score_all`` and, per batch, how its scores are read back."""

    condition: Condition
    wanted: set[int] | None
    jobs: list[ScoreJob] = field(default_factory=list)
    steps: list[tuple[int, EvalBatch, str, Any]] = field(default_factory=list)


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
        # the tokens the SAE's training left out of its fit and metrics (None: it recorded none)
        self.token_exclusion: TokenExclusion | None = None
        self.ablation, self.ablation_options, self.stats = ablation, ablation_options, stats
        self.seed = seed
        self.show = show
        self.d_sae = int(sae.W_dec.shape[0])
        self.n_conditions = 0
        self.pool_examples: np.ndarray | None = None  # example index of each row of stats.samples
        self.companions: dict[str, tuple[Ablation, Any]] = {}  # further ablations swept beside the main one
        self._batch_stats: dict[int, FeatureStats] = {}
        # an edited splice runs the upper blocks only on the sequences whose features it changes
        self.skip_unchanged = True
        self._splice_scores: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sequences_run = 0
        self.sequences_skipped = 0

    def batch_stats(self, b: int) -> FeatureStats:
        """The feature statistics batch ``b`` is edited with: the resample pool without the rows of
        the batch's own examples, so that replacement values always come from other examples."""
        if self.pool_examples is None or self.stats.samples is None:
            return self.stats
        cached = self._batch_stats.get(b)
        if cached is None:
            own = np.isin(self.pool_examples, self.data.batches[b].example_indices)
            keep = torch.from_numpy(np.flatnonzero(~own))
            cached = FeatureStats(mean=self.stats.mean, samples=self.stats.samples[keep])
            self._batch_stats[b] = cached
        return cached

    def edited_features(self, eb: EvalBatch, edit: FeatureEdit) -> torch.Tensor:
        """The batch's features with ``edit`` applied at the edited positions only."""
        where = edit_mask(eb.batch, self.first_position)[..., None]
        return torch.where(where, edit(eb.features), eb.features)

    def site_value(self, eb: EvalBatch, mode: SiteMode, edit: FeatureEdit | None) -> torch.Tensor:
        x = eb.cache.site_output
        if mode == "clean":
            return x
        if mode == "zeroed-site":
            return self._outside_exclusion(eb, torch.zeros_like(x))
        features = eb.features if edit is None else self.edited_features(eb, edit)
        out = self.sae.decode(features)
        if mode == "splice":
            out = out + eb.error
        elif mode == "reconstruction":
            out = self._outside_exclusion(eb, out)
        else:
            raise ValueError(f"unknown site mode {mode!r}")
        return out.to(x.dtype)

    def _outside_exclusion(self, eb: EvalBatch, value: torch.Tensor) -> torch.Tensor:
        """``value`` at the tokens the SAE's token exclusion keeps, the clean activation at those it
        left out (attention sinks, outlier-norm tokens): the reconstruction-alone and zeroed-site
        conditions replace the site only on the tokens the SAE was fitted to (as SAELens' evaluation
        with special tokens excluded from the reconstruction). The splice covers every token."""
        if self.token_exclusion is None or not self.token_exclusion.active:
            return value
        x = eb.cache.site_output
        kept = self.token_exclusion.kept(x, eb.batch.position_ids.to(x.device))[..., None]
        return torch.where(kept, value, x.to(value.dtype))

    def run(
        self,
        mode: SiteMode = "splice",
        edit_for: Callable[[int], FeatureEdit | None] | None = None,
        ce: bool = False,
        status: str = "",
        examples: np.ndarray | None = None,
    ) -> ConditionScores:
        """Score every example (or the batches holding one of ``examples``) with the site's output set
        by ``mode`` (features edited by ``edit_for(b)``). Every batch's scoring goes to the split model
        at once (on NDIF: one request per condition)."""
        return self.run_many([Condition(mode, edit_for, ce, status)], examples)[0]

    def run_many(
        self, conditions: Sequence[Condition], examples: np.ndarray | None = None
    ) -> list[ConditionScores]:
        """``run`` of each condition, their jobs scored together: locally, ``SplitModel.score_all``
        stacks consecutive jobs, of one condition or of several, into bigger forwards. On NDIF each
        condition stays one request (``remote_split``'s sessions are per condition)."""
        if self.remote or len(conditions) <= 1:
            return [self._run_plans([self._plan(c, examples)], c.status or c.mode)[0] for c in conditions]
        # plans are scored once they hold PLANNED_TOKENS site values (memory stays bounded)
        out: list[ConditionScores] = []
        plans: list[ConditionPlan] = []
        pending: set[int] = set()  # batches whose splice reference an earlier plan scores
        planned = 0
        for condition in conditions:
            plans.append(self._plan(condition, examples, pending))
            planned += sum(job.batch.size * int(job.batch.input_ids.shape[1]) for job in plans[-1].jobs)
            if planned >= PLANNED_TOKENS:
                out += self._run_plans(plans, plans[0].condition.status or plans[0].condition.mode)
                plans, planned, pending = [], 0, set()
        if plans:
            out += self._run_plans(plans, plans[0].condition.status or plans[0].condition.mode)
        return out

    def _plan(
        self, condition: Condition, examples: np.ndarray | None, pending: set[int] | None = None
    ) -> ConditionPlan:
        """The jobs of one condition: per batch, its edited scoring, or only the sequences the edit
        changes beside the unedited splice's scores (computed once per batch, here if not yet)."""
        mode, edit_for, ce = condition.mode, condition.edit_for, condition.ce
        wanted = None if examples is None else set(int(i) for i in examples)
        plan = ConditionPlan(condition, wanted)
        with torch.no_grad():
            for b, eb in enumerate(self.data.batches):
                if wanted is not None and not wanted.intersection(eb.example_indices):
                    continue
                edit = edit_for(b) if edit_for is not None else None
                if mode == "splice" and edit is not None and not ce and self.skip_unchanged:
                    edited = self.edited_features(eb, edit)
                    changed = (edited != eb.features).flatten(1).any(dim=1)
                    if b not in self._splice_scores and (pending is None or b not in pending):
                        plan.steps.append((b, eb, "reference", len(plan.jobs)))
                        plan.jobs.append(self._job(eb, "splice", None))
                        if pending is not None:
                            pending.add(b)
                    keep = torch.nonzero(changed).squeeze(1)
                    plan.steps.append((b, eb, "part", (keep, len(plan.jobs) if len(keep) else None)))
                    if len(keep):
                        plan.jobs.append(self._part_job(eb, edited, keep))
                else:
                    plan.steps.append((b, eb, "whole", len(plan.jobs)))
                    plan.jobs.append(self._job(eb, mode, edit, ce))
        return plan

    def _run_plans(self, plans: list[ConditionPlan], purpose: str) -> list[ConditionScores]:
        """Score every plan's jobs in one ``score_all`` call, then each plan's conditions in order."""
        jobs = [job for plan in plans for job in plan.jobs]
        started = time.monotonic()
        with torch.no_grad():
            results = self.split.score_all(jobs, purpose=purpose) if jobs else []
        log.debug(
            f"[ablate] {purpose}: {len(plans)} condition(s), {len(jobs)} forward job(s) in "
            f"{time.monotonic() - started:.2f} s"
        )
        out, start = [], 0
        for plan in plans:
            out.append(self._finish(plan, results[start : start + len(plan.jobs)]))
            start += len(plan.jobs)
        return out

    def _finish(self, plan: ConditionPlan, results: list[JobScores]) -> ConditionScores:
        mode, edit_for, ce = plan.condition.mode, plan.condition.edit_for, plan.condition.ce
        n = self.data.n_examples
        logprob = np.zeros(n)
        correct = np.zeros(n, dtype=bool)
        scored = np.zeros(n, dtype=bool)
        nll_sum, nll_count = 0.0, 0
        for b, eb, kind, where in plan.steps:
            if kind == "reference":
                job = results[where]
                self._splice_scores[b] = (job.seq_logprob, job.seq_correct)
                continue
            if kind == "part":
                keep, at = where
                seq_lp, seq_ok = self._splice_scores[b]
                if at is not None:
                    seq_lp, seq_ok = seq_lp.clone(), seq_ok.clone()
                    seq_lp[keep] = results[at].seq_logprob.to(seq_lp.dtype)
                    seq_ok[keep] = results[at].seq_correct
                if len(keep):
                    self.sequences_run += len(keep)
                    self.sequences_skipped += int(eb.batch.size - len(keep))
            else:
                job = results[where]
                seq_lp, seq_ok = job.seq_logprob, job.seq_correct
                nll_sum += job.nll_sum
                nll_count += job.nll_count
                if mode == "splice" and edit_for is None and not ce:
                    self._splice_scores[b] = (seq_lp, seq_ok)
            lp, ok = example_scores(seq_lp, seq_ok, eb.layouts)
            logprob[eb.example_indices] = lp.cpu().numpy()
            correct[eb.example_indices] = ok.cpu().numpy()
            scored[eb.example_indices] = True
        self.n_conditions += 1
        if self.show is not None:
            self.show.advance(1, plan.condition.status)
        return ConditionScores(logprob, correct, nll_sum, nll_count, None if plan.wanted is None else scored)

    @property
    def remote(self) -> bool:
        return bool(getattr(self.split, "remote", False))

    def _job(self, eb: EvalBatch, mode: SiteMode, edit: FeatureEdit | None, ce: bool = False) -> ScoreJob:
        """One batch of a condition. On NDIF the clean and plain-splice conditions leave the site
        as the model computes it (the splice with its error term is that output, up to rounding)."""
        if self.remote and (mode == "clean" or (mode == "splice" and edit is None)):
            return ScoreJob(eb.batch, eb.cache, None, ce)
        if self.remote and mode == "splice" and edit is not None:
            edited = self.edited_features(eb, edit)
            return self._edited_job(eb.batch, eb.cache, eb.features, eb.error, edited, ce)
        return ScoreJob(eb.batch, eb.cache, self.site_value(eb, mode, edit), ce)

    def _part_job(self, eb: EvalBatch, edited: torch.Tensor, keep: torch.Tensor) -> ScoreJob:
        """The sequences ``keep`` of a batch whose features ``edited`` changes there."""
        return self._edited_job(
            eb.batch.rows(keep), eb.cache.rows(keep), eb.features[keep], eb.error[keep], edited[keep]
        )

    def _edited_job(
        self,
        batch: SequenceBatch,
        cache: LowerCache,
        features: torch.Tensor,
        error: torch.Tensor,
        edited: torch.Tensor,
        ce: bool = False,
    ) -> ScoreJob:
        value = None if self.remote else (self.sae.decode(edited) + error).to(cache.site_output.dtype)
        if not self.remote:
            return ScoreJob(batch, cache, value, ce)
        # NDIF: the change, as the decoder rows of the changed features and their change per token,
        # when that is smaller than the whole new output (a linear decoder only)
        change = edited - features
        columns = torch.nonzero(change.flatten(0, -2).ne(0).any(dim=0)).squeeze(1)
        n_tokens, d = cache.site_output.shape[0] * cache.site_output.shape[1], cache.site_output.shape[-1]
        if linear_decoder(self.sae) and len(columns) * (n_tokens + d) < n_tokens * d:
            delta = LowRankDelta(change[..., columns].contiguous(), self.sae.W_dec[columns].detach())
            return ScoreJob(batch, cache, None, ce, delta=delta)
        return ScoreJob(batch, cache, (self.sae.decode(edited) + error).to(cache.site_output.dtype), ce)

    # -- edits -------------------------------------------------------------------------------

    def ablate_edit(
        self, indices: Sequence[int], tag: int, ablation: str | None = None
    ) -> Callable[[int], FeatureEdit]:
        """Edits ablating ``indices`` with the configured ablation (or the companion ``ablation``);
        the generator is seeded per batch."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        how, options = (
            (self.ablation, self.ablation_options) if ablation is None else self.companions[ablation]
        )

        def edit_for(b: int) -> FeatureEdit:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, tag, b))
            stats = self.batch_stats(b)
            return lambda f: how.apply(f, idx.to(f.device), stats, options, generator)

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
        if self.remote:
            return self._remote_attribution(wanted)
        total = torch.zeros(self.d_sae, dtype=torch.float64)
        params = [p for p in self.split.model.parameters()] + [p for p in self.sae.parameters()]
        saved = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            for b, eb in enumerate(self.data.batches):
                chosen = [
                    layout
                    for i, layout in zip(eb.example_indices, eb.layouts, strict=True)
                    if wanted is None or i in wanted
                ]
                if not chosen:
                    continue
                delta = self._ablation_delta(b, eb)
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

    def _ablation_delta(self, b: int, eb: EvalBatch) -> torch.Tensor:
        """(ablated − actual) of every feature at the edited positions of batch ``b``."""
        generator = torch.Generator().manual_seed(derived_seed(self.seed, -(10**9), b))
        everything = torch.arange(self.d_sae)
        with torch.no_grad():
            ablated = self.ablation.apply(
                eb.features,
                everything.to(eb.features.device),
                self.batch_stats(b),
                self.ablation_options,
                generator,
            )
            return (ablated - eb.features) * edit_mask(eb.batch, self.first_position)[..., None]

    def _remote_attribution(self, wanted: set[int] | None) -> np.ndarray:
        """``attribution`` on NDIF: one request brings back each batch's gradient of the objective at
        the site; the SAE's decoder carries it to the features here. The objective is linear in the
        sequences' log-probs with weights taken at the splice (1 for the gold sequence, minus the
        softmax over the distractors for a margin), so its gradient is the one autograd takes here."""
        total = torch.zeros(self.d_sae, dtype=torch.float64)
        chosen_batches = []
        for b, eb in enumerate(self.data.batches):
            chosen = [
                layout
                for i, layout in zip(eb.example_indices, eb.layouts, strict=True)
                if wanted is None or i in wanted
            ]
            if chosen:
                chosen_batches.append((b, eb, chosen))
        missing = [(b, eb) for b, eb, _ in chosen_batches if b not in self._splice_scores]
        if missing:
            results = self.split.score_all(
                [self._job(eb, "splice", None) for _, eb in missing], purpose="splice"
            )
            for (b, _), job in zip(missing, results, strict=True):
                self._splice_scores[b] = (job.seq_logprob, job.seq_correct)
        weights = []
        for b, eb, chosen in chosen_batches:
            seq_lp = self._splice_scores[b][0].detach()
            w = torch.zeros(eb.batch.size, dtype=torch.float32)
            for layout in chosen:
                w[layout.gold_sequence] += 1.0
                others = distractors(layout)
                if others:
                    w[others] -= torch.softmax(seq_lp[others].float(), dim=0)
            weights.append(w)
        grads = (
            self.split.grad_all([eb.batch for _, eb, _ in chosen_batches], weights) if chosen_batches else []
        )
        for (b, eb, _), grad in zip(chosen_batches, grads, strict=True):
            delta = self._ablation_delta(b, eb)
            with torch.enable_grad():
                features = eb.features.detach().clone().requires_grad_(True)
                value = (self.sae.decode(features) + eb.error).to(eb.cache.site_output.dtype)
                (features_grad,) = torch.autograd.grad(value, features, grad.to(value.device, value.dtype))
            total += (features_grad * delta).sum(dim=(0, 1)).double().cpu()
        self.n_conditions += 3
        if self.show is not None:
            self.show.advance(3, "attribution")
        return (total / (self.data.n_examples if wanted is None else max(len(wanted), 1))).numpy()

    # -- measurements analyses read ----------------------------------------------------------

    def check_splice(
        self,
        loaded: LoadedModel,
        check_examples: int | None,
        tolerance: float,
        described: str,
        fast_tolerance: float | None = None,
    ) -> dict[str, Any]:
        """``fast_tolerance``: the fast path's (in the study dtype) against nnsight; default ``tolerance``."""
        if self.remote:
            return check_remote_splice(self, check_examples, tolerance, described, loaded.dtype)
        return check_splice(
            loaded,
            self.split,
            self.sae,
            self.data,
            check_examples,
            tolerance,
            described,
            self.first_position,
            fast_tolerance=fast_tolerance,
        )

    def reconstruction_metrics(self) -> dict[str, float]:
        return reconstruction_metrics(self.data, self.first_position, self.token_exclusion)

    def scored_mask(self, eb: EvalBatch, first_position: int = 0) -> torch.Tensor:
        """(B, T) the real tokens at positions >= ``first_position`` that the SAE's training would
        score: those its recorded token exclusion keeps."""
        return scored_mask(eb, first_position, self.token_exclusion)

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


def linear_decoder(sae: torch.nn.Module) -> bool:
    """Whether the SAE decodes as ``f @ W_dec + b_dec`` (an edit is then a change along decoder rows)."""
    return getattr(type(sae), "decode", None) is SparseAutoencoder.decode


def feature_statistics(
    data: EvalData,
    n_samples: int = 4096,
    seed: int = 0,
    first_position: int = 0,
    examples: np.ndarray | None = None,
) -> tuple[FeatureStats, np.ndarray, np.ndarray, np.ndarray]:
    """Over the edited tokens of ``examples`` (every example when None; the study passes its
    evaluation examples): the mean activation, a pool of token rows for resampling, per-feature
    (mean activation, firing frequency) arrays, and the example index of each pool row."""
    d_sae = data.batches[0].features.shape[-1]
    wanted = None if examples is None else set(int(i) for i in examples)
    total = torch.zeros(d_sae, dtype=torch.float64)
    fired = torch.zeros(d_sae, dtype=torch.float64)
    rows: list[torch.Tensor] = []
    owners: list[np.ndarray] = []
    count = 0
    for eb in data.batches:
        mask = edit_mask(eb.batch, first_position)
        example_of_sequence = np.full(mask.shape[0], -1, dtype=np.int64)
        for example, layout in zip(eb.example_indices, eb.layouts, strict=True):
            if wanted is None or int(example) in wanted:
                example_of_sequence[list(layout.sequence_indices)] = example
        mask = mask & torch.from_numpy(example_of_sequence >= 0).to(mask.device)[:, None]
        f = eb.features[mask]
        total += f.double().sum(0).cpu()
        fired += (f > 0).double().sum(0).cpu()
        count += f.shape[0]
        rows.append(f.cpu())
        owners.append(np.repeat(example_of_sequence, mask.sum(dim=1).cpu().numpy()))
    mean = (total / max(count, 1)).float()
    pool = torch.cat(rows)
    pool_examples = np.concatenate(owners)
    if pool.shape[0] > n_samples:
        pick = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed))[:n_samples]
        pool, pool_examples = pool[pick], pool_examples[pick.numpy()]
    return (
        FeatureStats(mean=mean, samples=pool),
        mean.numpy(),
        (fired / max(count, 1)).numpy(),
        pool_examples,
    )


def scored_mask(eb: EvalBatch, first_position: int, exclusion: TokenExclusion | None) -> torch.Tensor:
    """(B, T) real tokens at positions >= ``first_position`` that ``exclusion`` keeps (all without one)."""
    mask = edit_mask(eb.batch, first_position)
    if exclusion is not None and exclusion.active:
        mask = mask & exclusion.kept(eb.cache.site_output, eb.batch.position_ids.to(mask.device))
    return mask


def reconstruction_metrics(
    data: EvalData, first_position: int = 0, exclusion: TokenExclusion | None = None
) -> dict[str, float]:
    """FVU, relative error, L0, dead and rare fractions of the SAE on the evaluation tokens (DESIGN.md
    definitions, ``scircuits.platform.train.metrics``), on the tokens the SAE's training scored: those
    its ``exclusion`` keeps (attention sinks and outlier-norm tokens left out). With an active
    exclusion, ``*_all_tokens`` are the same over every token (the splice covers every token); with
    ``first_position`` > 0, ``fvu_positions_from_<p>`` is the FVU over the kept tokens at positions >= p."""

    def stats(position_from: int, rule: TokenExclusion | None) -> dict[str, float]:
        acc = ReconstructionStats(d_sae=data.batches[0].features.shape[-1]) if data.batches else None
        for eb in data.batches:
            mask = scored_mask(eb, position_from, rule)
            x = eb.cache.site_output[mask]
            acc.update(x, x - eb.error[mask], eb.features[mask])  # type: ignore[union-attr]
        return acc.result() if acc is not None else {"tokens": 0}

    result = stats(0, exclusion)
    if exclusion is not None and exclusion.active:
        every = stats(0, None)
        result["tokens_excluded"] = every["tokens"] - result["tokens"]
        for key in ("fvu", "relative_error"):
            result[f"{key}_all_tokens"] = every.get(key, float("nan"))
    if first_position > 0:
        result[f"fvu_positions_from_{first_position}"] = stats(first_position, exclusion).get(
            "fvu", float("nan")
        )
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
    first_position: int = 0,
    edited_features: int = 16,
    fast_tolerance: float | None = None,
) -> dict[str, Any]:
    """On the batches of the first examples (``EvalData.by_first_example``), whole, until at least
    ``check_examples`` examples: the clean model vs the SAE spliced in through nnsight
    (error term kept: an identity, so this catches hooks and dtypes, not a wrong SAE), and the fast
    path vs nnsight, both unedited and with the batch's ``edited_features`` most active features
    zeroed at the edited positions (so that the fast path's edit is checked, not only its identity).
    The fast path runs in the conditions' dtype (``split.study_dtype``), checked against
    ``fast_tolerance`` (default ``tolerance``); nnsight in the model's. Stops when beyond a
    tolerance. Whether the SAE fits the site is the reconstruction gate's job."""
    fast_tolerance = tolerance if fast_tolerance is None else fast_tolerance
    study_dtype = split.study_dtype
    worst_splice, worst_fast, worst_edited, checked = 0.0, 0.0, 0.0, 0
    for eb in data.by_first_example():
        if check_examples is not None and checked >= check_examples:
            break
        batch = eb.batch
        mask = token_mask(batch)
        clean = clean_logits(loaded, batch)
        traced = nnsight_site_logits(
            loaded, split.layer, split.site, batch, lambda x: spliced_output(sae, x, error_term=True)
        )
        where = edit_mask(batch, first_position)[..., None]
        busiest = (
            eb.features[where[..., 0]].float().mean(dim=0).topk(min(edited_features, eb.features.shape[-1]))
        )
        chosen = busiest.indices

        def zeroed(
            f: torch.Tensor, chosen: torch.Tensor = chosen, where: torch.Tensor = where
        ) -> torch.Tensor:
            out = f.clone()
            out[..., chosen] = 0
            return torch.where(where, out, f)

        def edited_splice(x: torch.Tensor, zeroed: Callable[..., torch.Tensor] = zeroed) -> torch.Tensor:
            xs = x.to(sae.W_dec.dtype)
            features = sae.encode(xs)
            return (sae.decode(zeroed(features)) + xs - sae.decode(features)).to(x.dtype)

        traced_edit = nnsight_site_logits(loaded, split.layer, split.site, batch, edited_splice)
        with torch.no_grad():
            dtype = eb.cache.site_output.dtype
            value = (sae.decode(eb.features) + eb.error).to(dtype)
            fast = split.upper(batch, eb.cache, value, all_positions=True, dtype=study_dtype)
            edited = (sae.decode(zeroed(eb.features)) + eb.error).to(dtype)
            fast_edit = split.upper(batch, eb.cache, edited, all_positions=True, dtype=study_dtype)
        worst_splice = worst_of(worst_splice, float((traced - clean)[mask].abs().max()))
        worst_fast = worst_of(worst_fast, float((fast - traced)[mask].abs().max()))
        worst_edited = worst_of(worst_edited, float((fast_edit - traced_edit)[mask].abs().max()))
        checked += len(eb.example_indices)
    return splice_verdict(
        (worst_splice, worst_fast, worst_edited),
        edited_features,
        checked,
        tolerance,
        "nnsight",
        f"the spliced model does not reproduce the clean model: max |logit difference| "
        f"{worst_splice:.3g} (nnsight splice vs clean), {worst_fast:.3g} (fast path vs nnsight) and "
        f"{worst_edited:.3g} (the same with {edited_features} features zeroed) on {checked} examples, "
        f"tolerance {tolerance:g} (fast path {fast_tolerance:g}). {described}, or the model runs in low "
        f"precision; raise --splice-tolerance only if you accept that difference",
        loaded.dtype,
        fast_tolerance=fast_tolerance,
        study_dtype=None if study_dtype is None else str(study_dtype).removeprefix("torch."),
        upper_blocks=split.upper_blocks,
    )


def check_remote_splice(
    study: Study,
    check_examples: int | None,
    tolerance: float,
    described: str,
    dtype: str,
    edited_features: int = 16,
) -> dict[str, Any]:
    """``check_splice`` on NDIF, in one request, on the per-sequence target log-probs (no logits come
    back): the SAE spliced in with its error term (the whole new output sent) against the clean model;
    the splice as NDIF runs it (the site untouched) against that; and the batch's most active
    features zeroed sent as decoder-row changes against the same edit sent whole."""
    jobs: list[ScoreJob] = []
    checked = 0
    for eb in study.data.by_first_example():
        if check_examples is not None and checked >= check_examples:
            break
        where = edit_mask(eb.batch, study.first_position)[..., None]
        chosen = (
            eb.features[where[..., 0]].float().mean(dim=0).topk(min(edited_features, study.d_sae)).indices
        )
        zeroed = eb.features.clone()
        zeroed[..., chosen] = 0
        zeroed = torch.where(where, zeroed, eb.features)
        site_dtype = eb.cache.site_output.dtype
        with torch.no_grad():
            splice = (study.sae.decode(eb.features) + eb.error).to(site_dtype)
            edited = (study.sae.decode(zeroed) + eb.error).to(site_dtype)
            delta_job = study._edited_job(eb.batch, eb.cache, eb.features, eb.error, zeroed)
        jobs += [
            ScoreJob(eb.batch, eb.cache, None),
            ScoreJob(eb.batch, eb.cache, splice),
            study._job(eb, "splice", None),
            ScoreJob(eb.batch, eb.cache, edited),
            delta_job,
        ]
        checked += len(eb.example_indices)
    results = study.split.score_all(jobs, purpose="splice check (once)")

    def worst(a: JobScores, b: JobScores) -> float:
        return float((a.seq_logprob.double() - b.seq_logprob.double()).abs().max())

    worst_splice, worst_fast, worst_edited = 0.0, 0.0, 0.0
    for i in range(0, len(results), 5):
        clean, splice, identity, edited, delta = results[i : i + 5]
        worst_splice = worst_of(worst_splice, worst(splice, clean))
        worst_fast = worst_of(worst_fast, worst(identity, splice))
        worst_edited = worst_of(worst_edited, worst(delta, edited))
    return splice_verdict(
        (worst_splice, worst_fast, worst_edited),
        edited_features,
        checked,
        tolerance,
        "nnsight on NDIF: differences of the per-sequence target log-probs, not of logits",
        f"the spliced model does not reproduce the clean model on NDIF: max |target log-prob "
        f"difference| {worst_splice:.3g} (splice vs clean), {worst_fast:.3g} (the site untouched vs the "
        f"splice) and {worst_edited:.3g} (the edit as decoder-row changes vs sent whole, "
        f"{edited_features} features zeroed) on {checked} examples, tolerance {tolerance:g}. "
        f"{described}, or the model runs in low precision; raise --splice-tolerance only if you "
        "accept that difference",
        dtype,
    )


def splice_verdict(
    worst: tuple[float, float, float],
    edited_features: int,
    checked: int,
    tolerance: float,
    method: str,
    failure: str,
    dtype: str,
    fast_tolerance: float | None = None,
    study_dtype: str | None = None,
    upper_blocks: str | None = None,
) -> dict[str, Any]:
    """The splice check's record, or a SpliceError with ``failure`` when a difference is beyond its
    tolerance (``not (x <= tol)``, so that NaN, a non-finite SAE or model output, fails): the splice
    against ``tolerance``, the fast path's two against ``fast_tolerance`` (default ``tolerance``)."""
    fast = tolerance if fast_tolerance is None else fast_tolerance
    if not (worst[0] <= tolerance and worst[1] <= fast and worst[2] <= fast):
        raise SpliceError(failure)
    extra = {} if study_dtype is None else {"study_dtype": study_dtype, "fast_path_tolerance": fast}
    if upper_blocks is not None:  # which blocks the fast path ran: "fused" or "transformers"
        extra["fast_path_blocks"] = upper_blocks
    return {
        **extra,
        "max_abs_logit_diff": worst[0],
        "fast_path_max_abs_diff": worst[1],
        "edited_fast_path_max_abs_diff": worst[2],
        "edited_features": edited_features,
        "examples_checked": checked,
        "tolerance": tolerance,
        "dtype": dtype,
        "method": method,
    }


def unembedding_effects(
    split: SplitModel | RemoteSplitModel,
    sae: torch.nn.Module,
    features: Sequence[int],
    tokenizer: Any,
    n: int = 10,
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
    top_values, top_ids, bottom_values, bottom_ids = split.unembedding_extremes(directions, n)
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for row, feature in enumerate(features):
        out[int(feature)] = {
            "promoted": [
                {"token": tokenizer.decode([int(t)]), "logit": float(v)}
                for v, t in zip(top_values[row], top_ids[row], strict=False)
            ],
            "suppressed": [
                {"token": tokenizer.decode([int(t)]), "logit": float(-v)}
                for v, t in zip(bottom_values[row], bottom_ids[row], strict=False)
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
            x = torch.from_numpy(rows.read(start, stop)).to(sae.W_dec.device, sae.W_dec.dtype)
            f = sae.encode(x)[:, idx.to(x.device)].T.cpu()  # (F, n)
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
                x = torch.from_numpy(rows.read(lo, hi)).to(sae.W_dec.device, sae.W_dec.dtype)
                acts = sae.encode(x)[:, feature].cpu()
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
