"""Reconstruction metrics: FVU as docs/metrics.md defines it, and the per-token relative error beside it."""

from __future__ import annotations

import torch

from scircuits.platform.train.metrics import ReconstructionStats, fvu


def test_fvu_matches_its_definition_across_merged_batches():
    torch.manual_seed(0)
    x = torch.randn(64, 8) * 3 + 1
    x_hat = x + 0.1 * torch.randn(64, 8)
    acts = torch.relu(torch.randn(64, 16))
    a, b = ReconstructionStats(16), ReconstructionStats(16)
    a.update(x[:40], x_hat[:40], acts[:40])
    b.update(x[40:], x_hat[40:], acts[40:])
    a.merge(b)
    result = a.result()
    assert abs(result["fvu"] - fvu(x, x_hat)) < 1e-9
    assert abs(result["l0"] - float((acts > 0).sum()) / 64) < 1e-9
    expected_rel = float(((x - x_hat).pow(2).sum(1) / x.pow(2).sum(1)).mean())
    assert abs(result["relative_error"] - expected_rel) < 1e-6


def test_a_massive_dimension_dominates_fvu_but_not_the_relative_error():
    torch.manual_seed(1)
    y = torch.randn(256, 16)  # a few massive tokens (attention sinks)
    y[:8, 3] = 5000.0
    y_hat = y.clone()
    y_hat[:, :3] = 0.0
    stats = ReconstructionStats(4)
    stats.update(y, y_hat, torch.ones(256, 4))
    result = stats.result()
    assert result["top_dim_variance_share"] > 0.99
    assert result["fvu"] < 0.01  # looks nearly perfect
    assert result["relative_error"] > 0.1
