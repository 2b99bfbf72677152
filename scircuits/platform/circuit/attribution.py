"""Node and edge attribution over the spliced sites (docs/circuits.md, "Attribution").

A node is one SAE feature at one site, or the site's SAE error term. Its effect is the linear
estimate of the change of the benchmark's score when the node is patched to its baseline, summed
over the patched positions and averaged over the selection examples:

    effect(n) = Σ_positions ∂m/∂n · (baseline(n) − n)

with ∂m/∂n the total gradient (through every downstream site), from one backward pass per batch for
every node at once; or integrated gradients along the straight path to the baseline, site by site.

An edge u → d (u at an earlier site) is the direct effect: ∂m/∂d · ∂d/∂u · Δu, with ∂d/∂u taken
with every site between them frozen at its clean value, summed over both positions. For each
downstream site one batched backward (``is_grads_batched``: one vector per downstream node) gives
the edges from every upstream site, so a batch costs O(sites) backward passes, not O(edges).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from scircuits.platform.circuit.spliced import CircuitBatch, SplicedModel

Node = tuple[int, int]  # (site index, feature index; the site's d_sae for its error term)
OUTPUT: Node = (-1, 0)  # the metric


@dataclass
class Baseline:
    """Per site, the value each node is patched to, and how often each feature fires (selection)."""

    features: list[torch.Tensor]  # (d_sae,)
    errors: list[torch.Tensor]  # (d_model,)
    frequency: list[np.ndarray]  # (d_sae,) share of the patched selection tokens where it fires
    activation: list[np.ndarray]  # (d_sae,) mean activation there
    kind: str = "selection-mean"


def baseline_of(batches: Sequence[CircuitBatch], kind: str) -> Baseline:
    n_sites = len(batches[0].features)
    sums_f = [torch.zeros(b.shape[-1], dtype=torch.float64) for b in batches[0].features]
    fired = [torch.zeros(b.shape[-1], dtype=torch.float64) for b in batches[0].features]
    sums_e = [torch.zeros(b.shape[-1], dtype=torch.float64) for b in batches[0].errors]
    count = 0
    for cb in batches:
        for i in range(n_sites):
            f = cb.features[i][cb.mask]
            sums_f[i] += f.double().sum(0).cpu()
            fired[i] += (f > 0).double().sum(0).cpu()
            sums_e[i] += cb.errors[i][cb.mask].double().sum(0).cpu()
        count += int(cb.mask.sum())
    count = max(count, 1)
    device, dtype = batches[0].features[0].device, batches[0].features[0].dtype
    mean_f = [(s / count).to(device, dtype) for s in sums_f]
    mean_e = [(s / count).to(device, dtype) for s in sums_e]
    if kind == "zeros":
        mean_f, mean_e = [torch.zeros_like(m) for m in mean_f], [torch.zeros_like(m) for m in mean_e]
    return Baseline(
        mean_f,
        mean_e,
        [(f / count).numpy() for f in fired],
        [(s / count).numpy() for s in sums_f],
        kind,
    )


def deltas(cb: CircuitBatch, base: Baseline, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(baseline − clean) of the features and the error term of site i, zero outside the mask."""
    mask = cb.mask[..., None]
    d_f = (base.features[i] - cb.features[i]) * mask
    d_e = (base.errors[i] - cb.errors[i]) * mask
    return d_f, d_e


@dataclass
class Counter:
    """Forward and backward passes run, per batch kind."""

    forwards: int = 0
    backwards: int = 0
    batched_backwards: int = 0
    by_stage: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, forwards: int = 0, backwards: int = 0, batched: int = 0) -> None:
        self.forwards += forwards
        self.backwards += backwards
        self.batched_backwards += batched
        self.by_stage[stage] = self.by_stage.get(stage, 0) + backwards + batched


def total_gradients(
    model: SplicedModel, cb: CircuitBatch
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Per-example scores, and ∂(Σ scores)/∂node for every feature and error term (total gradients);
    computed once per batch (kept in ``cb.gradients``).

    At each site the features used downstream are a copy of the encoded ones, and the error term is
    computed from the encoded ones: the site's gradient then splits into the node gradients without
    double counting (the upstream activation gets exactly the gradient of the site's output)."""
    nodes_f: list[torch.Tensor | None] = [None] * len(model.sites)
    nodes_e: list[torch.Tensor | None] = [None] * len(model.sites)

    def handler(i: int, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        features, error = model.encode(i, x)
        node = features.clone()
        node.retain_grad()
        error.retain_grad()
        nodes_f[i], nodes_e[i] = node, error
        return model.decode(i, node, error, x)

    if cb.gradients is not None:
        return cb.gradients
    with torch.enable_grad():
        scores = model.objective(cb, handler)
        scores.sum().backward()
    grads_f = [n.grad if n.grad is not None else torch.zeros_like(n) for n in nodes_f]  # type: ignore[union-attr]
    grads_e = [n.grad if n.grad is not None else torch.zeros_like(n) for n in nodes_e]  # type: ignore[union-attr]
    cb.gradients = (scores.detach(), grads_f, grads_e)  # the same batch's exact checks reuse them
    return cb.gradients


def node_effects(
    model: SplicedModel,
    batches: Sequence[CircuitBatch],
    base: Baseline,
    method: str = "patching",
    ig_steps: int = 8,
    counter: Counter | None = None,
) -> list[np.ndarray]:
    """Per site, the effect of each feature and (last entry) of the error term, per example."""
    n_sites = len(model.sites)
    totals = [np.zeros(s.d_sae + 1) for s in model.sites]
    n_examples = sum(len(cb.layouts) for cb in batches)
    counter = counter or Counter()
    for cb in batches:
        if method == "ig":
            grads_f, grads_e = integrated_gradients(model, cb, base, ig_steps)
            counter.add("nodes", forwards=n_sites * ig_steps, backwards=n_sites * ig_steps)
        else:
            fresh = cb.gradients is None
            _, grads_f, grads_e = total_gradients(model, cb)
            counter.add("nodes", forwards=int(fresh), backwards=int(fresh))
        for i in range(n_sites):
            d_f, d_e = deltas(cb, base, i)
            totals[i][:-1] += (grads_f[i] * d_f).sum(dim=(0, 1)).double().cpu().numpy()
            totals[i][-1] += float((grads_e[i] * d_e).sum())
    return [t / max(n_examples, 1) for t in totals]


def integrated_gradients(
    model: SplicedModel, cb: CircuitBatch, base: Baseline, steps: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per site, the mean gradient along the straight path from the clean nodes to the baseline, the
    site alone moved (the others computed as the model computes them)."""
    grads_f, grads_e = [], []
    for i in range(len(model.sites)):
        d_f, d_e = deltas(cb, base, i)
        acc_f, acc_e = torch.zeros_like(d_f), torch.zeros_like(d_e)
        for k in range(steps):
            alpha = (k + 0.5) / steps
            with torch.enable_grad():
                leaf_f = (cb.features[i] + alpha * d_f).requires_grad_(True)
                leaf_e = (cb.errors[i] + alpha * d_e).requires_grad_(True)

                def handler(
                    j: int, x: torch.Tensor, i=i, leaf_f=leaf_f, leaf_e=leaf_e
                ) -> torch.Tensor | None:
                    return model.decode(i, leaf_f, leaf_e, x) if j == i else None

                scores = model.objective(cb, handler, start=i)
                g_f, g_e = torch.autograd.grad(scores.sum(), [leaf_f, leaf_e])
            acc_f += g_f
            acc_e += g_e
        grads_f.append(acc_f / steps)
        grads_e.append(acc_e / steps)
    return grads_f, grads_e


def frozen_forward(
    model: SplicedModel,
    cb: CircuitBatch,
    leaves_f: list[torch.Tensor],
    leaves_e: list[torch.Tensor],
    start: int = 0,
    stop: int | None = None,
) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Scores with every site's output set from the given nodes (``leaves``), and each site's nodes
    as recomputed from its input: their change measures only direct effects of upstream nodes.
    ``start``: the leaves of the sites before it are the clean nodes, so the forward may begin there
    (``SplicedModel.logits``; their recomputed nodes are then not given). ``stop``: the forward ends
    at that site (no scores; the recomputed nodes after it not given)."""
    recomputed: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.sites)

    def handler(i: int, x: torch.Tensor) -> torch.Tensor:
        recomputed[i] = model.encode(i, x)
        return model.decode(i, leaves_f[i], leaves_e[i], x)

    if stop is not None:
        model.run_to(cb, handler, stop, start)
        return None, recomputed  # type: ignore[return-value]
    scores = model.objective(cb, handler, start)
    return scores, recomputed  # type: ignore[return-value]


def edge_weights(
    model: SplicedModel,
    batches: Sequence[CircuitBatch],
    base: Baseline,
    circuit: list[list[int]],
    counter: Counter | None = None,
) -> dict[tuple[Node, Node], float]:
    """The weight of every edge between the circuit's nodes (``circuit[i]``: node indices at site i),
    and from each to the metric (``OUTPUT``), per example."""
    counter = counter or Counter()
    weights: dict[tuple[Node, Node], float] = {}
    n_examples = sum(len(cb.layouts) for cb in batches)

    def add(key: tuple[Node, Node], value: float) -> None:
        weights[key] = weights.get(key, 0.0) + value

    for cb in batches:
        fresh = cb.gradients is None
        _, grads_f, grads_e = total_gradients(model, cb)
        d = [deltas(cb, base, i) for i in range(len(model.sites))]
        with torch.enable_grad():
            leaves_f = [f.clone().requires_grad_(True) for f in cb.features]
            leaves_e = [e.clone().requires_grad_(True) for e in cb.errors]
            scores, recomputed = frozen_forward(model, cb, leaves_f, leaves_e)
            assert scores is not None
            direct = torch.autograd.grad(
                scores.sum(), leaves_f + leaves_e, retain_graph=True, allow_unused=True
            )
            n = len(model.sites)
            for i, nodes in enumerate(circuit):
                g_f, g_e = direct[i], direct[n + i]
                for j in nodes:
                    add(((i, j), OUTPUT), _weight(g_f, g_e, d[i], j, model.sites[i].d_sae))
            for down, down_nodes in enumerate(circuit):
                ups = [u for u in range(down) if circuit[u]]
                if not down_nodes or not ups:
                    continue
                d_sae = model.sites[down].d_sae
                vec_f = torch.zeros(
                    (len(down_nodes), *cb.features[down].shape), dtype=cb.features[down].dtype
                )
                vec_e = torch.zeros((len(down_nodes), *cb.errors[down].shape), dtype=cb.errors[down].dtype)
                for k, j in enumerate(down_nodes):
                    if j < d_sae:
                        vec_f[k, ..., j] = grads_f[down][..., j]
                    else:
                        vec_e[k] = grads_e[down]
                grads = torch.autograd.grad(
                    list(recomputed[down]),
                    [leaves_f[u] for u in ups] + [leaves_e[u] for u in ups],
                    grad_outputs=[vec_f.to(cb.features[down].device), vec_e.to(cb.errors[down].device)],
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
                counter.add("edges", batched=1)
                for a, u in enumerate(ups):
                    g_f, g_e = grads[a], grads[len(ups) + a]
                    for up_j in circuit[u]:
                        w = _batched_weight(g_f, g_e, d[u], up_j, model.sites[u].d_sae, len(down_nodes))
                        for k, j in enumerate(down_nodes):
                            add(((u, up_j), (down, j)), float(w[k]))
        counter.add("edges", forwards=1 + fresh, backwards=1 + fresh)
    return {k: v / max(n_examples, 1) for k, v in weights.items()}


def _weight(
    g_f: torch.Tensor | None,
    g_e: torch.Tensor | None,
    delta: tuple[torch.Tensor, torch.Tensor],
    j: int,
    d_sae: int,
) -> float:
    if j < d_sae:
        return 0.0 if g_f is None else float((g_f[..., j] * delta[0][..., j]).sum())
    return 0.0 if g_e is None else float((g_e * delta[1]).sum())


def _batched_weight(
    g_f: torch.Tensor | None,
    g_e: torch.Tensor | None,
    delta: tuple[torch.Tensor, torch.Tensor],
    j: int,
    d_sae: int,
    k: int,
) -> torch.Tensor:
    if j < d_sae:
        if g_f is None:
            return torch.zeros(k)
        return (g_f[..., j] * delta[0][..., j]).sum(dim=(1, 2)).double().cpu()
    if g_e is None:
        return torch.zeros(k)
    return (g_e * delta[1]).sum(dim=(1, 2, 3)).double().cpu()
