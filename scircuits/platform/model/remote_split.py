"""The split model of a causal study run on NDIF: the same two halves as ``SplitModel``, each run as
whole-model nnsight traces batched in sessions (one session = one NDIF request).

* ``lower_all``: one session; per batch a trace that stops after the site and saves its output (the
  study needs it once, here, for the SAE features, the feature statistics and the ablation values).
* ``score_all``: one session per condition; per batch a trace that sets the site's output inside
  the trace and saves only the target tokens' log-probs and argmax hits (M values each), and the
  summed next-token NLL when a condition needs the CE loss. No logits or activations come back.
* ``grad_all``: one session; per batch a trace whose backward saves the gradient of the scored
  objective at the site (attribution needs it once).

The site's new output travels as the change the edit makes: ``x + coefficients @ rows`` where
``rows`` are the decoder rows of the features the edit changed and ``coefficients`` their change per
token (an ablation of k features sends k numbers per token and k decoder rows), or as the whole new
output where that is smaller (an edit of most features, the reconstruction-alone conditions).
``RequestLog`` counts the requests and the bytes that came back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scircuits.platform.contract.models import LoadedModel, Site
from scircuits.platform.model.scoring import SequenceBatch
from scircuits.platform.model.splice import JobScores, LowerCache, ScoreJob, tensor_bytes
from scircuits.platform.model.tracing import traced_model


@dataclass
class RequestRecord:
    purpose: str
    traces: int
    bytes_up_values: int  # the tensors this side sent (site values, deltas, inputs)
    bytes_down: int  # the tensors that came back


@dataclass
class RequestLog:
    """Every NDIF request a study made (one per session)."""

    records: list[RequestRecord] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.records)

    def summary(self) -> dict[str, Any]:
        by_purpose: dict[str, dict[str, int]] = {}
        for r in self.records:
            entry = by_purpose.setdefault(
                r.purpose, {"requests": 0, "traces": 0, "bytes_up": 0, "bytes_down": 0}
            )
            entry["requests"] += 1
            entry["traces"] += r.traces
            entry["bytes_up"] += r.bytes_up_values
            entry["bytes_down"] += r.bytes_down
        return {"requests": self.requests, "by_purpose": by_purpose}


def batch_bytes(batch: SequenceBatch) -> int:
    return sum(
        tensor_bytes(t)
        for t in (batch.input_ids, batch.attention_mask, batch.position_ids, batch.pred_rows, batch.pred_cols)
    ) + tensor_bytes(batch.target_ids)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class RemoteSplitModel:
    """A remotely run causal LM at (layer, site): the study's ``SplitModel`` for ``--remote``."""

    remote = True

    def __init__(self, loaded: LoadedModel, layer: int, site: str | Site) -> None:
        self.loaded = loaded
        self.layer = layer
        self.site = Site(site).value
        self.model = loaded.model  # on the meta device: the weights stay on NDIF
        self.adapter = loaded.adapter
        self.traced = traced_model(loaded)
        self.envoy = self.traced.envoy(loaded.site_path(layer, self.site))
        self.log = RequestLog()

    def _session(self) -> Any:
        return self.traced.nn.session(remote=self.traced.remote)

    def _inputs(self, batch: SequenceBatch) -> dict[str, Any]:
        return {
            "input_ids": batch.input_ids.cpu(),
            "attention_mask": batch.attention_mask.cpu(),
            "position_ids": batch.position_ids.cpu(),
            "use_cache": False,
        }

    def lower_all(self, batches: Sequence[SequenceBatch]) -> list[LowerCache]:
        """The site's clean output of every batch, in one request."""
        import nnsight

        envoy, nn = self.envoy, self.traced.nn
        inputs = [self._inputs(b) for b in batches]
        with torch.no_grad():  # noqa: SIM117 - nnsight reads the inner block's own source
            with self._session():
                outputs = nnsight.save([])
                for kwargs in inputs:
                    with nn.trace(**kwargs) as tracer:
                        output = envoy.output
                        output = output[0] if isinstance(output, tuple) else output
                        outputs.append(output.save())
                        tracer.stop()
        caches = [LowerCache(out.detach().cpu(), None, None) for out in outputs]
        self.log.records.append(
            RequestRecord(
                "site activations (once)",
                len(batches),
                sum(batch_bytes(b) for b in batches),
                sum(tensor_bytes(c.site_output) for c in caches),
            )
        )
        return caches

    def score_all(self, jobs: Sequence[ScoreJob], purpose: str = "condition") -> list[JobScores]:
        """The scores of every job, in one request."""
        import nnsight

        envoy, nn = self.envoy, self.traced.nn
        plans = []
        up = 0
        for job in jobs:
            b = job.batch
            if job.delta is not None and job.delta.rows.shape[0] == 0:
                edit: tuple[str, Any] = ("none", None)
            elif job.delta is not None:
                edit = ("delta", (job.delta.coefficients.cpu(), job.delta.rows.cpu()))
                up += job.delta.nbytes
            elif job.value is not None:
                edit = ("value", job.value.detach().cpu())
                up += tensor_bytes(job.value)
            else:
                edit = ("none", None)
            plans.append(
                (self._inputs(b), edit, b.pred_rows.cpu(), b.pred_cols.cpu(), b.target_ids.cpu(), job.ce)
            )
            up += batch_bytes(b)
        with torch.no_grad():  # noqa: SIM117 - nnsight reads the inner block's own source
            with self._session():
                results = nnsight.save([])
                for kwargs, (kind, payload), rows, cols, targets, ce in plans:
                    with nn.trace(**kwargs):
                        if kind != "none":
                            output = envoy.output
                            x = output[0] if isinstance(output, tuple) else output
                            if kind == "delta":
                                new = x + (payload[0] @ payload[1]).to(x.dtype)
                            else:
                                new = payload.to(x.dtype)
                            envoy.output = (new, *output[1:]) if isinstance(output, tuple) else new
                        logits = nn.output.logits
                        target = logits[rows, cols].float()
                        token_logprob = (
                            torch.log_softmax(target, dim=-1).gather(1, targets[:, None]).squeeze(1)
                        )
                        hit = target.argmax(dim=-1) == targets
                        nll = None
                        if ce:
                            following = kwargs["input_ids"][:, 1:]
                            mask = kwargs["attention_mask"][:, 1:].bool()
                            nll = torch.nn.functional.cross_entropy(
                                logits[:, :-1].float()[mask], following[mask], reduction="sum"
                            )
                        results.append(
                            (token_logprob.save(), hit.save(), None if nll is None else nll.save())
                        )
        out = []
        down = 0
        for job, (token_logprob, hit, nll) in zip(jobs, results, strict=True):
            down += tensor_bytes(token_logprob) + tensor_bytes(hit) + tensor_bytes(nll)
            out.append(per_sequence(job.batch, token_logprob, hit, nll))
        self.log.records.append(RequestRecord(purpose, len(jobs), up, down))
        return out

    def grad_all(
        self, batches: Sequence[SequenceBatch], weights: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per batch, the gradient at the site's output of Σ_sequences weight · (Σ target log-prob)
        (``weights``: one per sequence), in one request."""
        import nnsight

        envoy, nn = self.envoy, self.traced.nn
        plans = [
            (
                self._inputs(b),
                w.detach().float().cpu(),
                b.pred_rows.cpu(),
                b.pred_cols.cpu(),
                b.target_ids.cpu(),
            )
            for b, w in zip(batches, weights, strict=True)
        ]
        with torch.enable_grad():  # noqa: SIM117 - nnsight reads the inner block's own source
            with self._session():
                grads = nnsight.save([])
                for kwargs, w, rows, cols, targets in plans:
                    with nn.trace(**kwargs):
                        output = envoy.output
                        x = output[0] if isinstance(output, tuple) else output
                        x.requires_grad_(True)
                        target = nn.output.logits[rows, cols].float()
                        token_logprob = (
                            torch.log_softmax(target, dim=-1).gather(1, targets[:, None]).squeeze(1)
                        )
                        objective = (w[rows] * token_logprob).sum()
                        with objective.backward():
                            grads.append(x.grad.save())
        grads = [g.detach().cpu() for g in grads]
        self.log.records.append(
            RequestRecord(
                "attribution gradients (once)",
                len(batches),
                sum(batch_bytes(b) + tensor_bytes(w) for b, w in zip(batches, weights, strict=True)),
                sum(tensor_bytes(g) for g in grads),
            )
        )
        return grads

    def _module_path(self, module: Any) -> str:
        return next(name for name, m in self.model.named_modules() if m is module)

    def final_norm(self) -> torch.nn.Module | None:
        """The final norm rebuilt here from its parameters and buffers (a few vectors; one request,
        made once): what the adapter's ``through_final_norm`` reads."""
        if hasattr(self, "_final_norm"):
            return self._final_norm
        import copy

        import nnsight

        meta = self.adapter.final_norm(self.model)
        if meta is None:
            self._final_norm = None
            return None
        envoy = self.traced.envoy(self._module_path(meta))
        names = [n for n, _ in meta.named_parameters()] + [n for n, _ in meta.named_buffers()]
        nn = self.traced.nn
        first = torch.zeros((1, 1), dtype=torch.long)
        with torch.no_grad():  # noqa: SIM117 - nnsight reads the inner block's own source
            with self._session():
                values = nnsight.save([])
                with nn.trace(input_ids=first) as tracer:
                    for name in names:
                        part = envoy
                        for attr in name.split("."):
                            part = getattr(part, attr)
                        values.append(part.detach().save())
                    tracer.stop()
        here = copy.deepcopy(meta).to_empty(device="cpu")
        state = dict(zip(names, [v.detach().cpu() for v in values], strict=True))
        here.load_state_dict(state, strict=False)
        self._final_norm = here.eval()
        self.log.records.append(
            RequestRecord(
                "final norm (once)", 1, tensor_bytes(first), sum(tensor_bytes(v) for v in state.values())
            )
        )
        return self._final_norm

    def through_final_norm(self, directions: torch.Tensor) -> torch.Tensor:
        return self.adapter.through_final_norm(directions, self.final_norm())

    def unembedding_extremes(self, directions: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """``SplitModel.unembedding_extremes`` computed on NDIF, in one request: the directions go
        up, the (F, n) extremes come back (never the unembedding matrix)."""
        import nnsight

        local_unembed = self.adapter.unembedding(self.model)
        unembed = self.traced.envoy(self._module_path(local_unembed))
        n = min(n, int(local_unembed.weight.shape[0]))
        nn = self.traced.nn
        first = torch.zeros((1, 1), dtype=torch.long)
        directions = directions.detach().float().cpu()
        with torch.no_grad():  # noqa: SIM117 - nnsight reads the inner block's own source
            with self._session():
                out = nnsight.save([])
                with nn.trace(input_ids=first) as tracer:
                    scores = directions @ unembed.weight.float().T
                    top, bottom = torch.topk(scores, n, dim=1), torch.topk(-scores, n, dim=1)
                    out.append(
                        (top.values.save(), top.indices.save(), bottom.values.save(), bottom.indices.save())
                    )
                    tracer.stop()
        result = tuple(t.detach().cpu() for t in out[0])
        self.log.records.append(
            RequestRecord(
                "logit effects (once)",
                1,
                tensor_bytes(first) + tensor_bytes(directions),
                sum(tensor_bytes(t) for t in result),
            )
        )
        return result


def per_sequence(
    batch: SequenceBatch, token_logprob: torch.Tensor, hit: torch.Tensor, nll: torch.Tensor | None
) -> JobScores:
    """Per-sequence scores from per-target ones, as ``scoring.sequence_scores`` sums them."""
    device = batch.pred_rows.device
    token_logprob, token_hit = token_logprob.to(device), hit.to(device).to(torch.float32)
    seq_logprob = torch.zeros(batch.size, dtype=token_logprob.dtype, device=device)
    seq_logprob = seq_logprob.index_add(0, batch.pred_rows, token_logprob)
    misses = torch.zeros(batch.size, device=device).index_add(0, batch.pred_rows, 1.0 - token_hit)
    if nll is None:
        return JobScores(seq_logprob, misses == 0)
    mask = batch.attention_mask[:, 1:].bool()
    return JobScores(seq_logprob, misses == 0, float(nll), int(mask.sum()))
