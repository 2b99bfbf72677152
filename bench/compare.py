"""Benchmark of the matching core: two TopK SAEs' codes over the same tokens -> correlation, max
matches and one-to-one matches. Prints time per phase and the peak resident memory.

    PYTHONPATH=$PWD python bench/compare.py --d-sae 16384 --tokens 200000 --k 32

The codes are synthetic (this measures the matching machinery, not a model): B's latents are a
permutation of A's on a share of the latents (``--shared``), independent TopK codes elsewhere, so
the result must recover the planted permutation on the shared part; the script checks that.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from scipy import sparse

from scircuits.platform.compare.correlation import CorrelationAccumulator
from scircuits.platform.compare.matching import distribution, hungarian_matches, max_matches


def topk_codes(rng: np.random.Generator, n: int, d: int, k: int) -> sparse.csr_matrix:
    """n tokens of TopK-like codes: k latents per token drawn with Zipf-ish frequencies (a repeated
    draw merges, so a few tokens have fewer than k), positive values."""
    weights = 1.0 / np.arange(1, d + 1) ** 0.5
    cols = rng.choice(d, size=(n, k), p=weights / weights.sum())
    values = rng.exponential(1.0, size=(n, k)).astype(np.float32)
    indptr = np.arange(0, n * k + 1, k)
    codes = sparse.csr_matrix((values.ravel(), cols.ravel(), indptr), shape=(n, d))
    codes.sum_duplicates()
    return codes


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--shared", type=float, default=0.5, help="share of B's latents that copy A's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    d = args.d_sae
    perm = rng.permutation(d)
    n_shared = int(args.shared * d)
    shared_b = perm[:n_shared]  # B latent perm[i] copies A latent i for i < n_shared

    rows: list[tuple[str, float, float]] = []
    start = time.perf_counter()
    acc = CorrelationAccumulator(d, d)
    generate = 0.0
    for first in range(0, args.tokens, args.chunk):
        n = min(args.chunk, args.tokens - first)
        t0 = time.perf_counter()
        a = topk_codes(rng, n, d, args.k)
        own = topk_codes(rng, n, d, args.k).tocsc()
        # B: the shared latents copy A's columns, the rest are B's own codes
        a_csc = a.tocsc()
        b = sparse.hstack([a_csc[:, :n_shared], own[:, n_shared:]], format="csc")
        order = np.empty(d, dtype=np.int64)  # column j of b_stack goes to B latent order[j]
        order[:n_shared] = shared_b
        order[n_shared:] = perm[n_shared:]
        b = b[:, np.argsort(order)].tocsr()
        generate += time.perf_counter() - t0
        acc.add(a, b)
    accumulate = time.perf_counter() - start - generate
    rows.append(("accumulate A^T B + moments", accumulate, peak_rss_mib()))
    t0 = time.perf_counter()
    cm = acc.finish()
    rows.append(("finish -> correlation", time.perf_counter() - t0, peak_rss_mib()))
    t0 = time.perf_counter()
    forward, backward = max_matches(cm)
    rows.append(("max matches both ways", time.perf_counter() - t0, peak_rss_mib()))
    t0 = time.perf_counter()
    hung = hungarian_matches(cm)
    rows.append((f"one-to-one ({hung.method})", time.perf_counter() - t0, peak_rss_mib()))

    a_of_b = np.full(d, -1)
    a_of_b[shared_b] = np.arange(n_shared)
    planted = a_of_b[hung.b_index] == hung.a_index
    recovered = int(planted.sum())
    dist = distribution(hung.corr, d)
    print(f"d_sae={d} tokens={args.tokens} k={args.k} chunk={args.chunk} shared={args.shared}")
    print(f"{'phase':36s} {'seconds':>9s} {'peak RSS MiB':>13s}")
    for name, seconds, rss in rows:
        print(f"{name:36s} {seconds:9.1f} {rss:13.0f}")
    print(f"{'(generating synthetic codes)':36s} {generate:9.1f}")
    print(
        f"planted pairs recovered one-to-one: {recovered}/{n_shared}; "
        f"alive A {int(cm.alive_a.sum())}, B {int(cm.alive_b.sum())}; "
        f"max-match mean A->B {forward.corr.mean():.3f}, B->A {backward.corr.mean():.3f}; "
        f"hungarian share > 0.9: {dist.above_09:.3f}"
    )
    if recovered < n_shared:
        sys.exit(f"only {recovered}/{n_shared} planted pairs recovered")


if __name__ == "__main__":
    main()
