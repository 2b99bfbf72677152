"""Which nodes make the circuit, and the circuits of the evaluation curves (docs/circuits.md, "Circuit").

``global``: the nodes of largest |effect| over every site together; a circuit of size n is the top n.
``per-site``: each site ranks its own nodes; a circuit of size n is the top n *of each site*. Random
circuits are matched to the top circuit: globally the same number of nodes drawn among every active
node; per site the same number at each site, drawn among that site's active nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scircuits.platform.circuit.attribution import Node


@dataclass
class Selection:
    """The nodes ranked for the circuit and its curves."""

    per_site: bool
    # every node, largest |effect| first (global): the circuits are its prefixes
    ranked: list[Node]
    # per site, the nodes eligible for the circuit (nonzero |effect|, above the node threshold),
    # largest |effect| first (per-site): a circuit of size n takes the first n of each
    by_site: list[list[Node]]

    def top(self, size: int) -> list[Node]:
        """The top circuit of ``size`` (nodes in all, or per site), in the order ranked."""
        if not self.per_site:
            return list(self.ranked[:size])
        rank = {node: r for r, node in enumerate(self.ranked)}
        return sorted((n for nodes in self.by_site for n in nodes[:size]), key=rank.__getitem__)

    def random(self, size: int, pool: Sequence[Node], rng: np.random.Generator) -> list[Node]:
        """A random circuit matched to ``top(size)``, drawn from ``pool`` (the active nodes)."""
        if not self.per_site:
            return [pool[int(k)] for k in rng.choice(len(pool), size=size, replace=False)]
        picked: list[Node] = []
        for site, nodes in enumerate(self.by_site):
            here = [n for n in pool if n[0] == site]
            count = min(size, len(nodes), len(here))
            picked.extend(here[int(k)] for k in rng.choice(len(here), size=count, replace=False))
        return picked

    def has_random(self, size: int, pool: Sequence[Node]) -> bool:
        """Whether a random circuit of ``size`` can differ from the whole pool."""
        if not self.per_site:
            return len(pool) > size
        return any(
            sum(1 for n in pool if n[0] == site) > min(size, len(nodes))
            for site, nodes in enumerate(self.by_site)
        )


def select(
    effects: Sequence[np.ndarray], per_site: bool, budget: int, threshold: float
) -> tuple[Selection, list[Node]]:
    """The ranking of every node by |effect| and the circuit: the top ``budget`` nodes (global) or the
    top ``budget`` of each site (per-site), those below ``threshold`` or with no effect left out; the
    circuit comes in the global ranking's order (largest |effect| first)."""
    everything: list[Node] = [(i, j) for i, e in enumerate(effects) for j in range(len(e))]
    magnitude = np.array([abs(effects[i][j]) for i, j in everything])
    order = np.argsort(-magnitude, kind="stable")
    ranked = [everything[k] for k in order]

    def eligible(node: Node) -> bool:
        value = abs(effects[node[0]][node[1]])
        return value >= threshold and value > 0

    by_site = [[n for n in ranked if n[0] == i and eligible(n)] for i in range(len(effects))]
    selection = Selection(per_site, ranked, by_site)
    if per_site:
        return selection, selection.top(budget)
    return selection, [n for n in ranked[:budget] if eligible(n)]
