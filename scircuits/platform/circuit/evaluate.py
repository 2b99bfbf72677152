"""Faithfulness and completeness of circuits on held-out examples (docs/circuits.md, "Evaluation").

With every node outside a set C patched to its baseline at the patched positions (features and
error terms, site after site, each site encoding what the ablated sites above it passed on):

    faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅)),   completeness(C) = faithfulness(M \\ C)

m(M): the model (every node kept), m(∅): every node patched. Intervals resample the evaluation
examples (one paired bootstrap for every condition); random circuits of the same size are drawn
among the nodes active on the selection examples (every error term counts as active).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scircuits.platform.causal.statistics import Bootstrap, derived_seed
from scircuits.platform.circuit.attribution import Baseline, Counter, Node
from scircuits.platform.circuit.selection import Selection
from scircuits.platform.circuit.spliced import CircuitBatch, SplicedModel


def keep_masks(model: SplicedModel, kept: Sequence[Node]) -> tuple[list[torch.Tensor], list[bool]]:
    """Per site, a (d_sae,) bool of the features kept, and whether its error term is kept."""
    keep_f = [torch.zeros(s.d_sae, dtype=torch.bool) for s in model.sites]
    keep_e = [False] * len(model.sites)
    for i, j in kept:
        if j < model.sites[i].d_sae:
            keep_f[i][j] = True
        else:
            keep_e[i] = True
    return keep_f, keep_e


def cut_off(model: SplicedModel, keep_f: Sequence[torch.Tensor], keep_e: Sequence[bool]) -> bool:
    """Whether a resid site after the last site that keeps a node exists. A resid site keeping no
    node passes on the baseline at every patched position, whatever the sites before it passed on,
    and the clean model's values at the others (the first positions, patched nowhere, see only
    themselves; padding is never attended to); with no node kept after it either, the condition
    computes from there exactly what ∅ computes, so it scores exactly as m(∅)."""
    kept = [i for i in range(len(model.sites)) if keep_e[i] or bool(keep_f[i].any())]
    last = max(kept, default=-1)
    return any(s.site == "resid" for s in model.sites[last + 1 :])


def scores_keeping(
    model: SplicedModel,
    batches: Sequence[CircuitBatch],
    base: Baseline,
    kept: Sequence[Node] | None,
    complement: bool = False,
    empty: np.ndarray | None = None,
) -> np.ndarray:
    """Per example, the score with every node outside ``kept`` patched (``complement``: the nodes in
    it patched); ``kept`` None: the model, no node patched. ``empty``: m(∅)'s scores, returned on
    the fast path for a condition ``cut_off`` (no forward run)."""
    out: list[np.ndarray] = []
    if kept is None:
        for cb in batches:
            out.append(model.clean_scores(cb)[0].numpy())
        return np.concatenate(out)
    keep_f, keep_e = keep_masks(model, kept)
    if complement:
        keep_f, keep_e = [~k for k in keep_f], [not k for k in keep_e]
    if empty is not None and model.fast and cut_off(model, keep_f, keep_e):
        return empty
    # a site that keeps every node is left as the model computes it (no SAE pass: the splice is exact
    # up to rounding), and the forward starts at the first site that patches something
    edited = [not (keep_e[i] and bool(keep_f[i].all())) for i in range(len(model.sites))]
    if not any(edited):
        return scores_keeping(model, batches, base, None)
    start = edited.index(True)
    for cb in batches:
        mask = cb.mask[..., None]

        def handler(i: int, x: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor | None:
            if not edited[i]:
                return None
            features, error = model.encode(i, x)
            patched = mask & ~keep_f[i].to(features.device)
            features = torch.where(patched, base.features[i], features)
            if not keep_e[i]:
                error = torch.where(mask, base.errors[i], error)
            return model.decode(i, features, error, x)

        out.append(model.scores(cb, handler, start)[0].numpy())
    return np.concatenate(out)


def ratio(kept: np.ndarray, empty: np.ndarray, full: np.ndarray) -> float | None:
    denominator = float(full.mean() - empty.mean())
    return None if denominator == 0 else float((kept.mean() - empty.mean()) / denominator)


def candidates(model: SplicedModel, base: Baseline) -> list[Node]:
    """The nodes random circuits are drawn from: features that fire on the selection tokens, and
    every site's error term."""
    nodes: list[Node] = []
    for i, s in enumerate(model.sites):
        nodes.extend((i, int(j)) for j in np.flatnonzero(base.frequency[i] > 0))
        nodes.append((i, s.d_sae))
    return nodes


def curves(
    model: SplicedModel,
    batches: Sequence[CircuitBatch],
    base: Baseline,
    ranked: Sequence[Node] | Selection,
    sizes: Sequence[int],
    random_circuits: int,
    bootstrap: Bootstrap,
    seed: int,
    counter: Counter | None = None,
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """The reference scores (m(M), m(∅)) and, per size, the faithfulness and completeness of the
    top-ranked circuit and of matched random circuits, with intervals. ``ranked``: a ``Selection``
    (sizes per site when it is per-site), or the nodes ranked globally."""
    counter = counter or Counter()
    selection = ranked if isinstance(ranked, Selection) else Selection(False, list(ranked), [])
    full = scores_keeping(model, batches, base, None)  # the preparing pass's scores (fast path)
    empty = scores_keeping(model, batches, base, [])
    counter.add("evaluation", forwards=len(batches) * (1 if model.fast else 2))

    def measure(nodes: Sequence[Node], complement: bool = False) -> np.ndarray:
        scores = scores_keeping(model, batches, base, nodes, complement, empty)
        counter.add("evaluation", forwards=0 if scores is empty else len(batches))
        return scores

    reference = {
        "full": bootstrap.interval(full).__dict__,
        "empty": bootstrap.interval(empty).__dict__,
    }
    pool = candidates(model, base)
    points: list[dict[str, object]] = []
    for size in sizes:
        circuit = selection.top(size)
        kept = measure(circuit)
        removed = measure(circuit, complement=True)
        rng = np.random.default_rng(derived_seed(seed, 6151, size))
        random_kept, random_removed = [], []
        for _ in range(random_circuits if selection.has_random(size, pool) else 0):
            pick = selection.random(size, pool, rng)
            random_kept.append(measure(pick))
            random_removed.append(measure(pick, complement=True))
        point: dict[str, object] = {
            "size": len(circuit),
            "nodes_per_site": size if selection.per_site else None,
            "faithfulness": ratio(kept, empty, full),
            "faithfulness_ci": bootstrap.ratio_interval(kept, empty, full),
            "completeness": ratio(removed, empty, full),
            "completeness_ci": bootstrap.ratio_interval(removed, empty, full),
            "random_draws": len(random_kept),
            # m(C) and m(M \ C) themselves, per example mean with its interval
            "score": bootstrap.interval(kept).__dict__,
            "complement_score": bootstrap.interval(removed).__dict__,
        }
        if random_kept:
            rk, rr = np.mean(random_kept, axis=0), np.mean(random_removed, axis=0)
            point.update(
                {
                    "random_faithfulness": ratio(rk, empty, full),
                    "random_faithfulness_ci": bootstrap.ratio_interval(rk, empty, full),
                    "random_completeness": ratio(rr, empty, full),
                    "random_completeness_ci": bootstrap.ratio_interval(rr, empty, full),
                    # each draw's own value: how far apart random circuits of this size fall
                    "random_faithfulness_draws": [ratio(k, empty, full) for k in random_kept],
                    "random_completeness_draws": [ratio(r, empty, full) for r in random_removed],
                }
            )
        points.append(point)
    return reference, points
