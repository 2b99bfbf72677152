"""Exact checks of the attribution (docs/circuits.md, "Exact checks").

A node: patched alone to its baseline, every site after it recomputed (error terms kept): the
change of the score, per example. An edge u → d: u patched, every site's output held at its clean
value except u's site, and d recomputed from its input: Σ ∂m/∂d · (d − clean d), the exact form of
the linear edge weight; an edge u → metric: the change of the score in that same frozen forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scircuits.platform.causal.statistics import spearman, spearman_interval
from scircuits.platform.circuit.attribution import (
    OUTPUT,
    Baseline,
    Counter,
    Node,
    frozen_forward,
    total_gradients,
)
from scircuits.platform.circuit.spliced import CircuitBatch, SplicedModel


def _patched(
    cb: CircuitBatch, base: Baseline, node: Node, features: torch.Tensor, error: torch.Tensor, d_sae: int
):
    i, j = node
    mask = cb.mask
    if j < d_sae:
        features = features.clone()
        features[..., j] = torch.where(mask, base.features[i][j], features[..., j])
    else:
        error = torch.where(mask[..., None], base.errors[i], error)
    return features, error


def exact_node_effects(
    model: SplicedModel,
    batches: Sequence[CircuitBatch],
    base: Baseline,
    nodes: Sequence[Node],
    counter: Counter | None = None,
) -> list[float]:
    """Per node, the mean change of the score when it alone is patched."""
    counter = counter or Counter()
    n_examples = sum(len(cb.layouts) for cb in batches)
    clean = [model.clean_scores(cb)[0] for cb in batches]
    effects = []
    for node in nodes:
        total = 0.0
        for cb, reference in zip(batches, clean, strict=True):

            def handler(
                i: int, x: torch.Tensor, cb: CircuitBatch = cb, node: Node = node
            ) -> torch.Tensor | None:
                if i != node[0]:
                    return None
                features, error = model.encode(i, x)
                features, error = _patched(cb, base, node, features, error, model.sites[i].d_sae)
                return model.decode(i, features, error, x)

            total += float((model.scores(cb, handler, start=node[0])[0] - reference).sum())
        counter.add("exact", forwards=len(batches))
        effects.append(total / max(n_examples, 1))
    return effects


def exact_edge_effects(
    model: SplicedModel,
    batches: Sequence[CircuitBatch],
    base: Baseline,
    edges: Sequence[tuple[Node, Node]],
    counter: Counter | None = None,
) -> list[float]:
    """Per edge, the exact direct effect (module docstring), per example."""
    counter = counter or Counter()
    n_examples = sum(len(cb.layouts) for cb in batches)
    by_source: dict[Node, list[int]] = {}
    for k, (source, _) in enumerate(edges):
        by_source.setdefault(source, []).append(k)
    totals = np.zeros(len(edges))
    for cb in batches:
        fresh = cb.gradients is None
        clean_scores, grads_f, grads_e = total_gradients(model, cb)
        counter.add("exact", forwards=int(fresh), backwards=int(fresh))
        for source, ks in by_source.items():
            i = source[0]
            leaves_f, leaves_e = list(cb.features), list(cb.errors)
            leaves_f[i], leaves_e[i] = _patched(
                cb, base, source, cb.features[i], cb.errors[i], model.sites[i].d_sae
            )
            # a forward that ends at the last site read when no edge of this source reaches the metric
            targets = [edges[k][1] for k in ks]
            stop = None if OUTPUT in targets else max(t for t, _ in targets)
            with torch.no_grad():
                scores, recomputed = frozen_forward(model, cb, leaves_f, leaves_e, start=i, stop=stop)
            counter.add("exact", forwards=1)
            for k in ks:
                target = edges[k][1]
                if target == OUTPUT:
                    assert scores is not None  # stop is None when a target is the metric
                    totals[k] += float((scores - clean_scores).sum())
                    continue
                t, j = target
                f, e = recomputed[t]
                if j < model.sites[t].d_sae:
                    totals[k] += float((grads_f[t][..., j] * (f[..., j] - cb.features[t][..., j])).sum())
                else:
                    totals[k] += float((grads_e[t] * (e - cb.errors[t])).sum())
    return list(totals / max(n_examples, 1))


def agreement(
    attributed: Sequence[float], exact: Sequence[float], seed: int, replicates: int
) -> dict[str, object]:
    """Spearman's ρ between attribution and exact effects with its bootstrap interval, and the items
    whose exact effect has the opposite sign."""
    a, b = np.asarray(attributed, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    opposite = [int(k) for k in np.flatnonzero(np.sign(a) * np.sign(b) < 0)]
    return {
        "n": len(a),
        "spearman": spearman(a, b) if len(a) else None,
        "spearman_ci": spearman_interval(a, b, replicates=replicates, seed=seed) if len(a) else None,
        "opposite_sign": opposite,
    }
