"""The SAE spliced into the running model at one site, with its error term (docs/metrics.md).

    out = decode(edit(encode(x))) + (x - decode(encode(x)))

so that with no edit the model computes exactly what it computed before. Two ways to run it:

* ``nnsight_site_logits``: the whole model traced with nnsight, the site's output replaced inside
  the trace. This is the reference, and every run checks the splice exactness through it.
* ``SplitModel``: the fast path for the many conditions of a study. Everything below the site is
  the same in every condition, so ``lower`` computes it once per batch (stopping right after the
  site) and ``upper`` runs only the blocks above, with the site's output given, and the
  unembedding only where it is needed. Blocks below are swapped for pass-throughs meanwhile.
  ``tests/test_splice.py`` checks that both paths give the same logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scircuits.platform.contract.errors import ScircuitsError
from scircuits.platform.contract.models import LoadedModel, Site
from scircuits.platform.model.fused_blocks import FusedDecoderStack
from scircuits.platform.model.scoring import SequenceBatch, next_token_nll, sequence_scores
from scircuits.platform.model.tracing import traced_model

FeatureEdit = Callable[[torch.Tensor], torch.Tensor]  # feature activations (..., d_sae) -> edited


class SpliceError(ScircuitsError):
    """The spliced model does not reproduce the clean model's logits."""


def spliced_output(
    sae: nn.Module, x: torch.Tensor, edit: FeatureEdit | None = None, error_term: bool = True
) -> torch.Tensor:
    """The site's new output: the SAE's (edited) reconstruction, plus its error term when kept."""
    dtype = x.dtype
    xs = x.to(sae.W_dec.dtype)
    features = sae.encode(xs)
    reconstruction = sae.decode(features)
    out = sae.decode(edit(features)) if edit is not None else reconstruction
    if error_term:
        out = out + (xs - reconstruction)
    return out.to(dtype)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    return (value, *tuple(output[1:])) if isinstance(output, tuple) else value


def nnsight_site_logits(
    loaded: LoadedModel,
    layer: int,
    site: str,
    batch: SequenceBatch,
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """Full logits (B, T, V) with the site's output replaced by ``transform(output)`` in an nnsight trace."""
    traced = traced_model(loaded)  # the one nnsight wrapper of this model (model.tracing)
    wrapped = traced.nn
    path = loaded.site_path(layer, site)
    with (
        torch.no_grad(),
        wrapped.trace(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **traced.trace_kwargs(),
        ),
    ):
        if transform is not None:
            env = traced.envoy(path)
            output = env.output
            env.output = _replace_first(output, transform(_first(output)))
        logits = wrapped.output.logits.save()
    return logits


def clean_logits(loaded: LoadedModel, batch: SequenceBatch) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits


class _PassThrough(nn.Module):
    """Stands in for a block below the site: returns its input hidden states untouched."""

    def __init__(self, original: nn.Module, attributes: tuple[str, ...]) -> None:
        super().__init__()
        for attr in attributes:
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))

    def forward(self, hidden_states: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class _Given(_PassThrough):
    """Stands in for the block whose output (the resid site) is given."""

    def __init__(self, original: nn.Module, attributes: tuple[str, ...], value: Any) -> None:
        super().__init__(original, attributes)
        self.value = value

    def forward(self, hidden_states: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        return self.value


class _StopForward(Exception):
    pass


@dataclass
class LowerCache:
    """What the blocks below the site computed for one batch."""

    site_output: torch.Tensor  # (B, T, d): the site's clean output
    block_input: torch.Tensor | None  # (B, T, d): hidden state entering the site's block (mlp/attn sites)
    output_rest: tuple | None  # the rest of the block's output when it is a tuple (resid site)

    def rows(self, keep: torch.Tensor) -> LowerCache:
        """The cache of the sequences ``keep`` only (tensors with a batch dimension are sliced)."""
        size = self.site_output.shape[0]

        def part(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
                return value[keep]
            return value

        rest = None if self.output_rest is None else tuple(part(v) for v in self.output_rest)
        return LowerCache(self.site_output[keep], part(self.block_input), rest)


@dataclass
class LowRankDelta:
    """The site's new output as ``x + coefficients @ rows``: (B, T, k) and (k, d)."""

    coefficients: torch.Tensor
    rows: torch.Tensor

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.coefficients) + tensor_bytes(self.rows)


@dataclass
class ScoreJob:
    """One batch of one condition: the site's output set to ``value`` (None: left as the model
    computes it), or, on NDIF, to the clean output plus ``delta`` when one is given."""

    batch: SequenceBatch
    cache: LowerCache
    value: torch.Tensor | None
    ce: bool = False
    delta: LowRankDelta | None = None


@dataclass
class JobScores:
    """Per sequence: Σ target log-prob, all targets argmax; the summed next-token NLL and its count."""

    seq_logprob: torch.Tensor
    seq_correct: torch.Tensor
    nll_sum: float = 0.0
    nll_count: int = 0


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


# padded tokens per stacked forward of the upper blocks (bench/ablate_batching.py on the default
# study, quiet 2-core CPU): forwards of ~800-1,500 tokens are fastest; wider ones fall out of the
# caches (16,384 tokens: 0.66x the speed of one forward per batch of 16 sequences)
FUSE_TOKENS = 2_048


def _fusable(job: ScoreJob) -> bool:
    """Whether ``job`` may share a forward: no CE (it needs every position's logits, summed per
    job), no NDIF delta, and a cache holding only tensors the stacking knows how to pad."""
    return not job.ce and job.delta is None and job.cache.output_rest is None


def fusable_groups(jobs: list[ScoreJob], max_tokens: int) -> list[list[ScoreJob]]:
    """Consecutive jobs grouped, in order, so that each group's stacked batch (its sequences times
    the widest width) holds at most ``max_tokens`` tokens; a job that may not share a forward, or
    that alone exceeds the budget, is a group of its own."""
    groups: list[list[ScoreJob]] = []
    current: list[ScoreJob] = []
    rows, width = 0, 0
    for job in jobs:
        if not _fusable(job):
            if current:
                groups.append(current)
            groups.append([job])
            current, rows, width = [], 0, 0
            continue
        size, w = job.batch.size, int(job.batch.input_ids.shape[1])
        if current and (rows + size) * max(width, w) > max_tokens:
            groups.append(current)
            current, rows, width = [], 0, 0
        current.append(job)
        rows, width = rows + size, max(width, w)
    if current:
        groups.append(current)
    return groups


def _pad_columns(t: torch.Tensor, width: int, value: int | float = 0) -> torch.Tensor:
    """``t`` (B, T, ...) right-padded along dim 1 to ``width``."""
    if t.shape[1] == width:
        return t
    pad = t.new_full((t.shape[0], width - t.shape[1], *t.shape[2:]), value)
    return torch.cat([t, pad], dim=1)


def stack_jobs(jobs: list[ScoreJob]) -> tuple[SequenceBatch, LowerCache, torch.Tensor]:
    """One right-padded batch of the jobs' sequences (in order), its cache and the site's value.
    Extra columns are padding (attention mask 0, position 0): real tokens never attend to them."""
    width = max(int(job.batch.input_ids.shape[1]) for job in jobs)
    pred_rows, offset = [], 0
    for job in jobs:
        pred_rows.append(job.batch.pred_rows + offset)
        offset += job.batch.size

    def cat(name: str) -> torch.Tensor:
        parts = [getattr(job.batch, name) for job in jobs]
        if parts[0].dim() == 2:
            parts = [_pad_columns(p, width) for p in parts]
        return torch.cat(parts)

    batch = SequenceBatch(
        input_ids=cat("input_ids"),
        attention_mask=cat("attention_mask"),
        position_ids=cat("position_ids"),
        lengths=cat("lengths"),
        target_starts=cat("target_starts"),
        pred_rows=torch.cat(pred_rows),
        pred_cols=cat("pred_cols"),
        target_ids=cat("target_ids"),
    )
    inputs = [job.cache.block_input for job in jobs]
    block_input = None if inputs[0] is None else torch.cat([_pad_columns(t, width) for t in inputs])
    site = torch.cat([_pad_columns(job.cache.site_output, width) for job in jobs])
    value = torch.cat(
        [
            _pad_columns((job.cache.site_output if job.value is None else job.value).to(site.dtype), width)
            for job in jobs
        ]
    )
    return batch, LowerCache(site, block_input, None), value


class SplitModel:
    """A loaded causal LM split at (layer, site): ``lower`` once per batch, ``upper`` per condition."""

    def __init__(
        self, loaded: LoadedModel, layer: int, site: str | Site, study_dtype: torch.dtype | None = None
    ) -> None:
        self.loaded = loaded
        # the blocks above the site of every condition (``score_all``) under autocast to this dtype
        self.study_dtype = None if study_dtype in (None, torch.float32) else study_dtype
        # ``score_all`` stacks jobs into forwards of up to this many padded tokens (None: one per job)
        self.fuse_tokens: int | None = FUSE_TOKENS
        self.layer = layer
        self.site = Site(site).value
        self.model = loaded.model
        self.blocks = loaded.module(loaded.adapter.blocks_path)
        self.block = self.blocks[layer]
        self.site_module = loaded.site_module(layer, self.site)
        adapter = loaded.adapter
        self.adapter = adapter
        self.base = adapter.base_model(self.model)
        self.unembed = adapter.unembedding(self.model)
        self.softcap = adapter.logit_softcap(self.model)
        # the blocks above a resid site as one fused float32 forward where they are a standard
        # Llama-style stack (model/fused_blocks.py); None: transformers' eager blocks
        above = list(self.blocks)[layer + 1 :]
        self.fused_upper = FusedDecoderStack.recognise(self.base, above) if self.site == "resid" else None

    @property
    def upper_blocks(self) -> str:
        """How the conditions run the blocks above the site: ``fused`` (float32 Llama-style stacks,
        model/fused_blocks.py) or ``transformers`` (the model's own blocks)."""
        return "fused" if self.fused_upper is not None and self.study_dtype is None else "transformers"

    def _inputs(self, batch: SequenceBatch) -> dict[str, Any]:
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "position_ids": batch.position_ids,
            "use_cache": False,
        }

    def lower(self, batch: SequenceBatch) -> LowerCache:
        """Run the model up to the site (no further) and keep what the upper part needs."""
        captured: dict[str, Any] = {}

        def grab_block_input(module, args, kwargs):
            captured["block_input"] = args[0] if args else kwargs["hidden_states"]

        def grab_site(module, args, output):
            captured["output"] = output
            raise _StopForward

        handles = [self.site_module.register_forward_hook(grab_site)]
        if self.site != "resid":
            handles.append(self.block.register_forward_pre_hook(grab_block_input, with_kwargs=True))
        try:
            with torch.no_grad():
                self.base(**self._inputs(batch))
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        output = captured["output"]
        rest = tuple(output[1:]) if isinstance(output, tuple) and self.site == "resid" else None
        return LowerCache(_first(output).detach(), captured.get("block_input"), rest)

    @contextmanager
    def _upper_mode(self, cache: LowerCache, site_value: torch.Tensor) -> Iterator[None]:
        originals = [self.blocks[i] for i in range(self.layer + 1)]
        handles = []
        try:
            for i in range(self.layer):
                self.blocks[i] = _PassThrough(originals[i], self.adapter.block_attributes)
            if self.site == "resid":
                value = site_value if cache.output_rest is None else (site_value, *cache.output_rest)
                self.blocks[self.layer] = _Given(originals[self.layer], self.adapter.block_attributes, value)
            else:

                def give_block_input(module, args, kwargs):
                    if args:
                        return (cache.block_input, *tuple(args[1:])), kwargs
                    return args, {**kwargs, "hidden_states": cache.block_input}

                def give_site(module, args, output):
                    return _replace_first(output, site_value)

                handles.append(self.block.register_forward_pre_hook(give_block_input, with_kwargs=True))
                handles.append(self.site_module.register_forward_hook(give_site))
            yield
        finally:
            for h in handles:
                h.remove()
            for i, block in enumerate(originals):
                self.blocks[i] = block

    def unembed_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.unembed(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def upper(
        self,
        batch: SequenceBatch,
        cache: LowerCache,
        site_value: torch.Tensor,
        all_positions: bool = False,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Logits with the site's output set to ``site_value``: at the target predictions (M, V), or
        at every position (B, T, V) when ``all_positions``. Differentiable in ``site_value``.
        ``dtype`` (bfloat16): the blocks' matrix products under autocast to it; the residual stream
        they add into, the final norm, the unembedding and the logits stay in the model's dtype."""
        site_value = site_value.to(cache.site_output.dtype)
        low = dtype is not None and dtype != site_value.dtype
        fused = self.fused_upper
        if fused is not None and not low and fused.takes(site_value):
            hidden = fused(site_value, batch.position_ids)
            norm = self.final_norm()
            hidden = hidden if norm is None else norm(hidden)
        else:
            with (
                self._upper_mode(cache, site_value),
                torch.autocast(site_value.device.type, dtype=dtype, enabled=low),
            ):
                hidden = self.base(**self._inputs(batch)).last_hidden_state
        hidden = hidden.to(site_value.dtype)
        if all_positions:
            return self.unembed_hidden(hidden)
        return self.unembed_hidden(hidden[batch.pred_rows, batch.pred_cols])

    def score_all(self, jobs: list[ScoreJob], purpose: str = "condition") -> list[JobScores]:
        """The scores of every job: consecutive jobs stacked along the batch dimension into forwards
        of up to ``fuse_tokens`` padded tokens (``fusable_groups``), or, with ``fuse_tokens`` None
        (the eager reference), the upper blocks once per job. Stacking only pads: every sequence
        sees the same tokens, so the scores agree with the eager path up to float rounding."""
        out: list[JobScores] = []
        groups = (
            [[job] for job in jobs] if self.fuse_tokens is None else fusable_groups(jobs, self.fuse_tokens)
        )
        for group in groups:
            if len(group) == 1:
                out.append(self._score_one(group[0]))
                continue
            batch, cache, value = stack_jobs(group)
            scores = self._score_one(ScoreJob(batch, cache, value))
            start = 0
            for job in group:
                stop = start + job.batch.size
                out.append(JobScores(scores.seq_logprob[start:stop], scores.seq_correct[start:stop]))
                start = stop
        return out

    def _score_one(self, job: ScoreJob) -> JobScores:
        batch = job.batch
        value = job.cache.site_output if job.value is None else job.value
        logits = self.upper(batch, job.cache, value, all_positions=job.ce, dtype=self.study_dtype)
        nll_sum, nll_count = 0.0, 0
        if job.ce:
            nll_sum, nll_count = next_token_nll(logits, batch)
            logits = logits[batch.pred_rows, batch.pred_cols]
        seq_lp, seq_ok = sequence_scores(logits, batch)
        return JobScores(seq_lp, seq_ok, nll_sum, nll_count)

    def unembedding_extremes(self, directions: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """Per direction (F, d), the ``n`` largest and the ``n`` largest negated unembedding scores
        ``direction @ W_U.T``: (values, token ids) of each, (F, n) apiece (n at most the vocabulary)."""
        unembed = self.unembed.weight.detach().float()
        scores = (directions.to(unembed.device) @ unembed.T).cpu()  # (F, vocab)
        n = min(n, scores.shape[1])  # a small vocabulary (a synthetic task's) has fewer tokens
        top, bottom = torch.topk(scores, n, dim=1), torch.topk(-scores, n, dim=1)
        return top.values, top.indices, bottom.values, bottom.indices

    def final_norm(self) -> nn.Module | None:
        """The norm applied before the unembedding (the adapter's ``final_norm``)."""
        return self.adapter.final_norm(self.model)

    def through_final_norm(self, directions: torch.Tensor) -> torch.Tensor:
        """Residual directions as the final norm passes them on (the adapter's ``through_final_norm``)."""
        return self.adapter.through_final_norm(directions, self.final_norm())
