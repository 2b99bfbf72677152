"""The four built-in ablations on tensors."""

from __future__ import annotations

import pytest
import torch

from scircuits import FeatureStats
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import load_plugins

ABLATIONS = load_plugins(entry_points_too=False).ablations


@pytest.fixture
def acts() -> torch.Tensor:
    return torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5) + 1.0


IDX = torch.tensor([1, 3])
KEEP = torch.tensor([0, 2, 4])


def assert_untouched(out: torch.Tensor, acts: torch.Tensor) -> None:
    assert torch.equal(out[..., KEEP], acts[..., KEEP])


def test_zero(acts):
    before = acts.clone()
    out = ABLATIONS.get("zero").apply(acts, IDX)
    assert torch.equal(acts, before), "input must not be modified in place"
    assert torch.all(out[..., IDX] == 0)
    assert_untouched(out, acts)


def test_mean_uses_stored_feature_means(acts):
    stats = FeatureStats(mean=torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]))
    out = ABLATIONS.get("mean").apply(acts, IDX, stats)
    assert torch.all(out[..., 1] == 20.0) and torch.all(out[..., 3] == 40.0)
    assert_untouched(out, acts)


def test_mean_without_stats_says_what_is_missing(acts):
    with pytest.raises(ConfigError, match="needs feature statistics"):
        ABLATIONS.get("mean").apply(acts, IDX, None)


def test_resample_draws_values_of_the_same_feature_and_is_seeded(acts):
    samples = torch.tensor(
        [[0.0, 100.0, 0.0, 300.0, 0.0], [0.0, 101.0, 0.0, 301.0, 0.0], [0.0, 102.0, 0.0, 302.0, 0.0]]
    )
    stats = FeatureStats(mean=samples.mean(0), samples=samples)
    ablation = ABLATIONS.get("resample")
    out = ablation.apply(acts, IDX, stats, {"seed": 3})
    again = ablation.apply(acts, IDX, stats, {"seed": 3})
    other = ablation.apply(acts, IDX, stats, {"seed": 4})
    assert torch.equal(out, again)
    assert not torch.equal(out, other)
    assert_untouched(out, acts)
    # feature 1 and feature 3 come from the same sampled row at every position
    assert set(out[..., 1].flatten().tolist()) <= {100.0, 101.0, 102.0}
    assert torch.equal(out[..., 3] - out[..., 1], torch.full_like(out[..., 1], 200.0))


def test_clamp_to_value_and_scale(acts):
    clamp = ABLATIONS.get("clamp")
    out = clamp.apply(acts, IDX, options={"value": 7.5})
    assert torch.all(out[..., IDX] == 7.5)
    assert_untouched(out, acts)
    scaled = clamp.apply(acts, IDX, options={"scale": -2.0})
    assert torch.equal(scaled[..., IDX], acts[..., IDX] * -2.0)
    assert torch.all(clamp.apply(acts, IDX)[..., IDX] == 0.0)  # default: clamp to 0


def test_clamp_rejects_both_or_unknown_options(acts):
    clamp = ABLATIONS.get("clamp")
    with pytest.raises(ConfigError, match="exactly one of value"):
        clamp.apply(acts, IDX, options={"value": 1.0, "scale": 2.0})
    with pytest.raises(ConfigError, match="Valid fields: value, scale"):
        clamp.apply(acts, IDX, options={"factor": 2.0})


def test_ablations_keep_dtype_and_gradients():
    acts = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    out = ABLATIONS.get("zero").apply(acts, IDX)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert torch.equal(acts.grad[:, IDX], torch.zeros(4, 2, dtype=torch.float64))
    assert torch.equal(acts.grad[:, KEEP], torch.ones(4, 3, dtype=torch.float64))


class InPlace:
    name = "in-place"

    def __init__(self, result=None):
        self.result = result

    def parse_options(self, options):
        return options

    def apply(self, acts, indices, stats=None, options=None, generator=None):
        acts[..., indices] = 0  # the plugin edits its input
        return acts if self.result is None else self.result(acts)


def test_the_study_gives_an_ablation_its_own_copy_and_checks_what_it_returns(acts):
    from scircuits.platform.causal.checked_ablation import CheckedAblation

    before = acts.clone()
    out = CheckedAblation(InPlace(), "plugin m9").apply(acts, IDX, None, None, None)
    assert torch.equal(acts, before), "the study's features are never edited by a plugin"
    assert torch.equal(out, ABLATIONS.get("zero").apply(acts, IDX))
    for result, says in (
        (lambda a: a[..., :4], r"returned shape \(2, 3, 4\), not a tensor of the features' shape"),
        (lambda a: a.numpy(), "returned ndarray, not a tensor"),
        (lambda a: a * float("nan"), "returned NaN or infinite values"),
        (lambda a: 1 / 0, "failed: ZeroDivisionError: division by zero"),
    ):
        with pytest.raises(ConfigError, match=rf"^ablation 'in-place' of plugin m9 {says}.*--ablation"):
            CheckedAblation(InPlace(result), "m9").apply(acts, IDX, None, None, None)
