"""Several SAEs spliced into the model at once, each site's output passing through a handler.

Every site keeps its SAE error term, ``out = decode(f) + (x - decode(encode(x)))``, so the spliced
model computes what the model computes (``check_exact`` measures it); the handlers edit features or
error terms, or swap them for leaves autograd can differentiate. The forward stops at the target
predictions: the unembedding runs only there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch

from scircuits.platform.causal.evaluation import edit_mask, encoded_batches, group_batches
from scircuits.platform.circuit.sites import SiteSAE
from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.contract.errors import ScircuitsError
from scircuits.platform.contract.models import LoadedModel
from scircuits.platform.model.scoring import (
    ExampleLayout,
    SequenceBatch,
    example_objective,
    example_scores,
    sequence_scores,
)
from scircuits.platform.model.splice import LowerCache, SplitModel, _first, _replace_first, _StopForward

# handler(site index, the site's output x) -> its new output, or None to leave it
Handler = Callable[[int, torch.Tensor], torch.Tensor | None]
Metric = Callable[[torch.Tensor, SequenceBatch, Sequence[ExampleLayout]], torch.Tensor]


class CircuitSpliceError(ScircuitsError):
    """The SAEs spliced together do not reproduce the model."""


@dataclass
class CircuitBatch:
    """One batch of examples with each site's clean SAE features and error term."""

    batch: SequenceBatch
    example_indices: list[int]  # positions in the split's example list
    layouts: list[ExampleLayout]
    mask: torch.Tensor  # (B, T) the positions nodes are patched at
    features: list[torch.Tensor]  # per site (B, T, d_sae)
    errors: list[torch.Tensor]  # per site (B, T, d_model)
    # per site, the clean model's pass up to it (``SplitModel.lower``'s cache): a forward can start
    # there, the blocks below being the same in every condition; None: the eager path only
    lower: list[LowerCache] | None = None
    # the total gradients of the score (``attribution.total_gradients``) once computed: the exact
    # checks reuse the node attribution's
    gradients: tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None = None
    # per example (score, correct) of the model itself, from the same clean pass (fast path)
    clean: tuple[torch.Tensor, torch.Tensor] | None = None

    def split(self, size: int) -> list[CircuitBatch]:
        """The batch as consecutive sub-batches of about ``size`` sequences (examples whole), of the
        same width, every tensor a view of this batch's rows. The total gradients are cut too: a
        sequence's score depends on its own tokens only, so its rows of the gradient of the summed
        scores are the gradient of its own example's score (padding is never attended to)."""
        if len(self.batch.input_ids) <= size:
            return [self]
        out = []
        for group in group_batches(self.layouts, size):
            rows = [j for k in group for j in self.layouts[k].sequence_indices]
            first, last = min(rows), max(rows) + 1  # an example's sequences are consecutive
            seqs, examples = slice(first, last), slice(group[0], group[-1] + 1)
            layouts = [
                ExampleLayout(
                    self.layouts[k].example_id,
                    tuple(j - first for j in self.layouts[k].sequence_indices),
                    self.layouts[k].answer_index,
                )
                for k in group
            ]
            gradients = None
            if self.gradients is not None:
                scores, grads_f, grads_e = self.gradients
                gradients = (scores[examples], [g[seqs] for g in grads_f], [g[seqs] for g in grads_e])
            out.append(
                CircuitBatch(
                    self.batch.rows(torch.arange(first, last, device=self.mask.device)),
                    self.example_indices[examples],
                    layouts,
                    self.mask[seqs],
                    [f[seqs] for f in self.features],
                    [e[seqs] for e in self.errors],
                    None if self.lower is None else [c.rows(seqs) for c in self.lower],  # type: ignore[arg-type]
                    gradients,
                    None if self.clean is None else (self.clean[0][examples], self.clean[1][examples]),
                )
            )
        return out


class SplicedModel:
    """The model with one SAE per site; ``run(batch, handler)`` gives per-example scores."""

    def __init__(self, loaded: LoadedModel, sites: Sequence[SiteSAE], fast: bool = True) -> None:
        self.loaded = loaded
        self.sites = list(sites)
        self.modules = [loaded.site_module(s.layer, s.site) for s in self.sites]
        adapter = loaded.adapter
        self.base = adapter.base_model(loaded.model)
        self.unembed = adapter.unembedding(loaded.model)
        self.softcap = adapter.logit_softcap(loaded.model)
        self.params = [p for p in loaded.model.parameters()] + [
            p for s in self.sites for p in s.sae.parameters()
        ]
        for p in self.params:  # gradients are taken with respect to activations only
            p.requires_grad_(False)
        # per-example metric from the target logits (logits, batch, layouts), None: the benchmark's
        # score (circuit/metrics.py)
        self.metric: Metric | None = None
        # the fast path (module docstring): one split of the model per site; False: every forward
        # runs the whole model (the eager reference the tests compare the fast path with)
        self.splits = [SplitModel(loaded, s.layer, s.site) for s in self.sites]
        self.fast = fast

    @contextmanager
    def handled(self, handler: Handler | None) -> Iterator[None]:
        handles = []
        if handler is not None:
            for i, module in enumerate(self.modules):

                def hook(module, args, output, i=i):
                    new = handler(i, _first(output))
                    return None if new is None else _replace_first(output, new)

                handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def target_logits(self, batch: SequenceBatch, handler: Handler | None) -> torch.Tensor:
        with self.handled(handler):
            hidden = self.base(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            ).last_hidden_state
        return self.at_targets(hidden, batch)

    def at_targets(self, hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """The logits at the target predictions from the last hidden states."""
        logits = self.unembed(hidden[batch.pred_rows, batch.pred_cols])
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def logits(self, cb: CircuitBatch, handler: Handler | None, start: int = 0) -> torch.Tensor:
        """The target logits with ``handler`` at the sites. ``start``: the handler leaves every site
        before it as the model computes it (the caller's promise), so the fast path begins there:
        the blocks below come from ``cb.lower``, the handler edits the site's cached clean output
        and the blocks above run with it (``SplitModel.upper``)."""
        if not self.fast or cb.lower is None:
            return self.target_logits(cb.batch, handler)
        cache = cb.lower[start]
        value = None if handler is None else handler(start, cache.site_output)
        after: Handler | None = None
        if handler is not None:

            def after(i: int, x: torch.Tensor) -> torch.Tensor | None:
                return handler(i, x) if i > start else None

        with self.handled(after):
            return self.splits[start].upper(cb.batch, cache, cache.site_output if value is None else value)

    def clean_scores(self, cb: CircuitBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example (score, correct) of the model itself (no site edited)."""
        if self.fast and cb.clean is not None:
            return cb.clean
        return self.scores(cb, None)

    def run_to(self, cb: CircuitBatch, handler: Handler, stop: int, start: int = 0) -> None:
        """The forward of ``logits`` up to site ``stop`` only (its handler called, nothing after it
        run): for a handler that records what it reads, when nothing beyond ``stop`` is wanted."""

        def until(i: int, x: torch.Tensor) -> torch.Tensor | None:
            new = handler(i, x)
            if i == stop:
                raise _StopForward
            return new

        with suppress(_StopForward):
            self.logits(cb, until, start)

    def objective(self, cb: CircuitBatch, handler: Handler | None, start: int = 0) -> torch.Tensor:
        """Per example, the benchmark's score (``example_objective``) or ``metric``, with its graph."""
        return self.objective_of(self.logits(cb, handler, start), cb.batch, cb.layouts)

    def scores(
        self, cb: CircuitBatch, handler: Handler | None, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example (score, correct), no graph."""
        with torch.no_grad():
            return self.scores_of(self.logits(cb, handler, start), cb.batch, cb.layouts)

    def objective_of(
        self, logits: torch.Tensor, batch: SequenceBatch, layouts: Sequence[ExampleLayout]
    ) -> torch.Tensor:
        """Per example, the score from the target logits, with its graph: ``metric`` when set."""
        if self.metric is not None:
            return self.metric(logits, batch, layouts)
        seq_lp, _ = sequence_scores(logits, batch)
        return example_objective(seq_lp, layouts)

    def scores_of(
        self, logits: torch.Tensor, batch: SequenceBatch, layouts: Sequence[ExampleLayout]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example (score, correct) from the target logits; with ``metric``, correct = above 0."""
        if self.metric is not None:
            values = self.metric(logits.detach(), batch, layouts).to(torch.float64).cpu()
            return values, values > 0
        seq_lp, seq_ok = sequence_scores(logits.detach(), batch)
        return example_scores(seq_lp, seq_ok, layouts)

    # -- the SAE at a site -----------------------------------------------------------------------

    def encode(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, error term) of the site's output ``x``."""
        sae = self.sites[i].sae
        xs = x.to(sae.W_dec.dtype)
        features = sae.encode(xs)
        return features, xs - sae.decode(features)

    def decode(self, i: int, features: torch.Tensor, error: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (self.sites[i].sae.decode(features) + error).to(like.dtype)

    def prepare(
        self, examples: list[Example], batch_size: int, max_length: int | None, first_position: int
    ) -> list[CircuitBatch]:
        """Encode and batch the examples; record every site's clean features and error term."""
        device = next(self.loaded.model.parameters()).device
        out: list[CircuitBatch] = []
        chunks = encoded_batches(self.loaded.tokenizer, examples, batch_size, max_length, device)
        for group, local_layouts, batch in chunks:
            features: list[torch.Tensor | None] = [None] * len(self.sites)
            errors: list[torch.Tensor | None] = [None] * len(self.sites)

            def record(
                i: int,
                x: torch.Tensor,
                features: list[torch.Tensor | None] = features,
                errors: list[torch.Tensor | None] = errors,
            ) -> None:
                features[i], errors[i] = (t.detach() for t in self.encode(i, x))

            with torch.no_grad(), self.handled(record), self.lower_caught() as lower:
                hidden = self.base(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                ).last_hidden_state
                clean = None
                if self.fast:  # the model's own scores come with this pass (as ``target_logits``)
                    clean = self.scores_of(self.at_targets(hidden, batch), batch, local_layouts)
            mask = edit_mask(batch, first_position)
            out.append(
                CircuitBatch(
                    batch,
                    list(group),
                    local_layouts,
                    mask,
                    features,  # type: ignore[arg-type]
                    errors,  # type: ignore[arg-type]
                    lower() if self.fast else None,
                    clean=clean,
                )
            )
        return out

    @contextmanager
    def lower_caught(self) -> Iterator[Callable[[], list[LowerCache]]]:
        """During one clean forward, what ``SplitModel.lower`` keeps at every site (its output, the
        rest of a block's tuple output, a non-resid site's block input), for all sites at once."""
        outputs: list = [None] * len(self.sites)
        inputs: list[torch.Tensor | None] = [None] * len(self.sites)
        handles = []
        for i, (site, module) in enumerate(zip(self.sites, self.modules, strict=True)):

            def grab(module, args, output, i=i):
                outputs[i] = output

            handles.append(module.register_forward_hook(grab))
            if site.site != "resid":

                def grab_input(module, args, kwargs, i=i):
                    inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach()

                handles.append(self.splits[i].block.register_forward_pre_hook(grab_input, with_kwargs=True))

        def caches() -> list[LowerCache]:
            out = []
            for i, site in enumerate(self.sites):
                output = outputs[i]
                rest = tuple(output[1:]) if isinstance(output, tuple) and site.site == "resid" else None
                out.append(LowerCache(_first(output).detach(), inputs[i], rest))
            return out

        try:
            yield caches
        finally:
            for h in handles:
                h.remove()

    def check_exact(self, batches: Sequence[CircuitBatch], tolerance: float) -> dict[str, float]:
        """Max |logit difference| of the model with every SAE spliced in (error terms kept) against
        the model alone, at the target predictions; CircuitSpliceError beyond ``tolerance``."""

        def splice(i: int, x: torch.Tensor) -> torch.Tensor:
            features, error = self.encode(i, x)
            return self.decode(i, features, error, x)

        worst = 0.0
        with torch.no_grad():
            for cb in batches:
                clean = self.target_logits(cb.batch, None)
                spliced = self.target_logits(cb.batch, splice)
                worst = max(worst, float((spliced - clean).abs().max()))
        if not worst <= tolerance:  # NaN fails too
            raise CircuitSpliceError(
                f"the model with the SAEs of {', '.join(s.name for s in self.sites)} spliced in (error terms "
                f"kept) differs from the model by {worst:.3g} in the logits, beyond --splice-tolerance "
                f"{tolerance:g}: an SAE does not match its site, or the model runs in low precision"
            )
        return {"max_abs_logit_diff": worst, "tolerance": tolerance, "sites": len(self.sites)}
