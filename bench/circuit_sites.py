"""Edge attribution's cost against the number of sites and of nodes (docs/circuits.md, "Edges").

    python bench/circuit_sites.py [--layers 8] [--examples 16] [--nodes 8]

On a tiny random SmolLM2-architecture model (``--layers`` blocks, width 64) with a random ReLU SAE
at the resid site of the first S blocks, S = 2..layers: the seconds of ``edge_weights`` over the
examples, its backward passes (plain and batched) and the number of edges, with ``--nodes`` circuit
nodes per site; then, at the most sites, the same with 2x and 4x the nodes. The backward count grows
with the sites (2 + S − 1 per batch), not with the edges. Not a test: times depend on whatever else
runs on the machine (a shared CPU when measured for docs/circuits.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from scircuits.platform.circuit import attribution as A
from scircuits.platform.circuit.sites import SiteSAE
from scircuits.platform.circuit.spliced import SplicedModel
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.testing import tiny_loaded_model
from scircuits.testing.published import random_sae


def measure(loaded, examples, n_sites: int, nodes: int) -> tuple[float, float, A.Counter, int]:
    plugins = get_plugins()
    saes = [
        SiteSAE(
            layer,
            "resid",
            random_sae(plugins, "relu", loaded.d_model, 4 * loaded.d_model, seed=layer, noise=0.3),
            "",
        )
        for layer in range(n_sites)
    ]
    model = SplicedModel(loaded, saes)
    batches = model.prepare(examples, 8, None, 1)
    base = A.baseline_of(batches, "selection-mean")
    effects = A.node_effects(model, batches, base)
    circuit = [
        sorted(int(j) for j in torch.as_tensor(e).abs().argsort(descending=True)[:nodes]) for e in effects
    ]
    counter = A.Counter()
    started, cpu = time.perf_counter(), time.process_time()
    weights = A.edge_weights(model, batches, base, circuit, counter)
    return time.perf_counter() - started, time.process_time() - cpu, counter, len(weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = tiny_loaded_model("smollm2-135m", num_hidden_layers=args.layers)
    examples = list(get_plugins().benchmarks.get("arithmetic").examples("test", args.examples, 0, {}))
    print("| sites | nodes/site | edges | backward passes (plain + batched) | wall s | CPU s |")
    print("|---|---|---|---|---|---|")
    rows = [(s, args.nodes) for s in range(2, args.layers + 1)]
    rows += [(args.layers, 2 * args.nodes), (args.layers, 4 * args.nodes)]
    for n_sites, nodes in rows:
        wall, cpu, counter, edges = measure(loaded, examples, n_sites, nodes)
        print(
            f"| {n_sites} | {nodes} | {edges} | {counter.backwards} + {counter.batched_backwards} | "
            f"{wall:.2f} | {cpu:.2f} |"
        )


if __name__ == "__main__":
    main()
