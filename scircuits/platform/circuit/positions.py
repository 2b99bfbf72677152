"""Node effects and edge weights with positions kept apart (``--positions kept``, docs/circuits.md).

The circuit's nodes stay (site, feature) with positions summed; with positions kept, each node's
effect and each edge's weight are also split over positions: a node's effect at position t is
``∂m/∂n_t · (baseline − n_t)`` (its entries sum to the summed effect), and an edge u → d is a
(T, T) matrix, entry (s, t) the direct effect of u at position s on d at position t (its entries sum
to the summed weight; u → metric keeps u's position alone). This needs aligned positions: every
sequence of the same length, so that position t means the same token slot in every example (the
synth tasks' problems are). One batched backward per downstream site and batch, as for the summed
edges, with one vector per (downstream node, position).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from scircuits.platform.circuit.attribution import (
    OUTPUT,
    Baseline,
    Node,
    deltas,
    frozen_forward,
    total_gradients,
)
from scircuits.platform.circuit.spliced import CircuitBatch, SplicedModel
from scircuits.platform.contract.errors import ConfigError


def aligned_length(batches: Sequence[CircuitBatch]) -> int:
    """The one sequence length of every batch; ConfigError when the examples differ in length."""
    lengths = {int(n) for cb in batches for n in cb.batch.lengths}
    if len(lengths) != 1:
        raise ConfigError(
            f"--positions kept needs examples of one length (aligned positions), but these have "
            f"{len(lengths)} lengths ({min(lengths)}..{max(lengths)} tokens); use --positions summed"
        )
    return lengths.pop()


SHOWN_TOKENS = 5  # the most frequent tokens a position lists when its examples differ there


def position_tokens(tokenizer: Any, batches: Sequence[CircuitBatch]) -> list[dict[str, Any]]:
    """Per aligned position, what it holds over the examples: ``token``, the one token every example
    has there (None where they differ), and ``tokens``, the distinct tokens found there, most
    frequent first (at most ``SHOWN_TOKENS``), with ``distinct`` their number."""
    length = aligned_length(batches)
    seen: list[Counter[int]] = [Counter() for _ in range(length)]
    for cb in batches:
        for row in cb.batch.input_ids[:, :length].tolist():
            for t, token in enumerate(row):
                seen[t][int(token)] += 1
    out = []
    for t, counts in enumerate(seen):
        shown = [tokenizer.decode([token]) for token, _ in counts.most_common(SHOWN_TOKENS)]
        out.append(
            {
                "index": t,
                "token": shown[0] if len(counts) == 1 else None,
                "tokens": shown,
                "distinct": len(counts),
            }
        )
    return out


def _value(grad: torch.Tensor | None, delta: torch.Tensor, j: int | None) -> torch.Tensor:
    """(..., T) the product ∂·Δ of feature j (None: the error term, summed over its vector), summed
    over the batch dimension; zeros where no gradient reached."""
    if grad is None:
        return torch.zeros(delta.shape[:-1], dtype=torch.float64).sum(-2)
    value = grad[..., j] * delta[..., j] if j is not None else (grad * delta).sum(-1)
    return value.sum(-2).double().cpu()


def node_effects_by_position(
    model: SplicedModel, batches: Sequence[CircuitBatch], base: Baseline, nodes: Sequence[Node]
) -> dict[Node, np.ndarray]:
    """Per node, its attribution effect at each position (T,), per example (mean over examples)."""
    length = aligned_length(batches)
    out = {n: np.zeros(length) for n in nodes}
    n_examples = sum(len(cb.layouts) for cb in batches)
    for cb in batches:
        _, grads_f, grads_e = total_gradients(model, cb)
        for i, j in out:
            d_f, d_e = deltas(cb, base, i)
            if j < model.sites[i].d_sae:
                out[(i, j)] += _value(grads_f[i], d_f, j).numpy()
            else:
                out[(i, j)] += _value(grads_e[i], d_e, None).numpy()
    return {n: v / max(n_examples, 1) for n, v in out.items()}


def edge_weights_by_position(
    model: SplicedModel, batches: Sequence[CircuitBatch], base: Baseline, circuit: list[list[int]]
) -> dict[tuple[Node, Node], np.ndarray]:
    """Every edge between the circuit's nodes (``circuit[i]``: node indices at site i) as a (T, T)
    matrix [upstream position, downstream position], and u → metric as (T, 1); per example."""
    length = aligned_length(batches)
    weights: dict[tuple[Node, Node], np.ndarray] = {}
    n_examples = sum(len(cb.layouts) for cb in batches)
    n = len(model.sites)

    def add(key: tuple[Node, Node], value: np.ndarray) -> None:
        weights[key] = weights.get(key, 0) + value

    for cb in batches:
        _, grads_f, grads_e = total_gradients(model, cb)
        d = [deltas(cb, base, i) for i in range(n)]
        with torch.enable_grad():
            leaves_f = [f.clone().requires_grad_(True) for f in cb.features]
            leaves_e = [e.clone().requires_grad_(True) for e in cb.errors]
            scores, recomputed = frozen_forward(model, cb, leaves_f, leaves_e)
            direct = torch.autograd.grad(
                scores.sum(), leaves_f + leaves_e, retain_graph=True, allow_unused=True
            )
            for i, nodes in enumerate(circuit):
                for j in nodes:
                    feature = j < model.sites[i].d_sae
                    grad = direct[i] if feature else direct[n + i]
                    value = _value(grad, d[i][0] if feature else d[i][1], j if feature else None)
                    add(((i, j), OUTPUT), value.numpy()[:, None])
            for down, down_nodes in enumerate(circuit):
                ups = [u for u in range(down) if circuit[u]]
                if not down_nodes or not ups:
                    continue
                d_sae = model.sites[down].d_sae
                shape_f, shape_e = cb.features[down].shape, cb.errors[down].shape
                # one vector per (downstream node k, position t): k-major, t-minor
                vec_f = torch.zeros((len(down_nodes), length, *shape_f), dtype=cb.features[down].dtype)
                vec_e = torch.zeros((len(down_nodes), length, *shape_e), dtype=cb.errors[down].dtype)
                for k, j in enumerate(down_nodes):
                    for t in range(length):
                        if j < d_sae:
                            vec_f[k, t, :, t, j] = grads_f[down][:, t, j]
                        else:
                            vec_e[k, t, :, t] = grads_e[down][:, t]
                grads = torch.autograd.grad(
                    list(recomputed[down]),
                    [leaves_f[u] for u in ups] + [leaves_e[u] for u in ups],
                    grad_outputs=[vec_f.flatten(0, 1), vec_e.flatten(0, 1)],
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
                for a, u in enumerate(ups):
                    g_f, g_e = grads[a], grads[len(ups) + a]
                    for up_j in circuit[u]:
                        feature = up_j < model.sites[u].d_sae
                        grad = g_f if feature else g_e
                        delta = d[u][0] if feature else d[u][1]
                        # (K * T_down, T_up) -> (K, T_down, T_up)
                        value = _value(
                            grad,
                            delta[None].expand(len(down_nodes) * length, *delta.shape),
                            up_j if feature else None,
                        )
                        value = value.reshape(len(down_nodes), length, length).numpy()
                        for k, j in enumerate(down_nodes):
                            add(((u, up_j), (down, j)), value[k].T)
    return {k: v / max(n_examples, 1) for k, v in weights.items()}
