"""The running top activations per latent that give matched features their contexts."""

from __future__ import annotations

import numpy as np

from scircuits.platform.compare.sources import TopRows


def test_top_rows_keep_each_latents_largest_activations_across_chunks():
    rng = np.random.default_rng(0)
    codes = np.maximum(rng.normal(size=(500, 7)), 0).astype(np.float32)
    codes[:, 6] = 0.0  # a latent that never fires has no contexts
    labels = np.stack([np.arange(500), -np.ones(500), np.arange(500) * 2, -np.ones(500)], 1).astype(np.int64)
    top = TopRows(7, n_top=3)
    for start in range(0, 500, 64):
        top.update(codes[start : start + 64], labels[start : start + 64])
    for latent in range(6):
        expected_rows = np.argsort(-codes[:, latent])[:3]
        got = top.of(latent)
        assert [v for v, _ in got] == list(codes[expected_rows, latent])
        assert [int(lab[0]) for _, lab in got] == list(expected_rows)
        assert [int(lab[2]) for _, lab in got] == list(expected_rows * 2)
    assert top.of(6) == []
