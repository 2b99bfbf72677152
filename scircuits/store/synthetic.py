"""Synthetic stores for tests and benches, labelled ``source="synthetic"``: never mistaken for traced ones."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from scircuits.store.writer import ActivationStoreWriter


def synthetic_example(
    index: int, d_model: int, *, seed: int = 0, max_tokens: int = 24, vocab: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids, acts) of example ``index``: the same arrays every time for the same arguments."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(1, max_tokens + 1))
    token_ids = rng.integers(0, vocab, size=n, dtype=np.int32)
    acts = rng.standard_normal((n, d_model), dtype=np.float32) * (
        1 + np.arange(d_model, dtype=np.float32) % 3
    )
    return token_ids, acts


def synthetic_attrs(seed: int = 0, **extra: Any) -> dict[str, Any]:
    """Identity attributes of a synthetic store made by :func:`synthetic_example` with ``seed``."""
    return {"source": "synthetic", "model": "synthetic", "benchmark": "synthetic", "seed": seed, **extra}


def write_synthetic_store(
    path: str | os.PathLike[str],
    *,
    n_examples: int,
    d_model: int,
    seed: int = 0,
    max_tokens: int = 24,
    dtype: str = "float16",
    chunk_rows: int | None = None,
    compressor: str | None = None,
    attrs: dict[str, Any] | None = None,
) -> str:
    """Write (or finish) a complete synthetic store of ``n_examples`` examples; returns its path."""
    with ActivationStoreWriter.open(
        path,
        attrs or synthetic_attrs(seed=seed),
        d_model=d_model,
        dtype=dtype,
        chunk_rows=chunk_rows,
        compressor=compressor,
    ) as writer:
        for index in range(writer.n_examples_written, n_examples if not writer.complete else 0):
            writer.append_example(index, *synthetic_example(index, d_model, seed=seed, max_tokens=max_tokens))
    return os.fspath(path)
