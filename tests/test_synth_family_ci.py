"""A CI-sized ground-truth family that trains every time (issue 20, item 6).

Three seeds of 2-digit addition at 2 × 64 must each reach 0.99 held-out exact match under the retry
rule, and synth.json must say what the rule did. The settings are docs/ground_truth.md's "CI-sized
family"; the test fails if any seed misses the target on both attempts.
"""

from __future__ import annotations

import json

import pytest

from scircuits import SynthTrainSettings, train_synth_model
from scircuits.platform.groundtruth.training import attempt_batch_size
from scircuits.plugins.synth.tasks import AdditionTask

# 8 heads of 8 dims: with the default 2 heads, 2-digit addition sat on its loss plateau (held-out
# ~0.01) past 1,000 steps on some seeds; with 8 every seed tried left it by step 500-800
CI_FAMILY = {
    "layers": 2,
    "d_model": 64,
    "heads": 8,
    "lr": 5e-3,
    "batch_size": 64,
    "steps": 1200,
    "eval_every": 100,
    "eval_examples": 500,
    "stop_at": 0.995,
    "target": 0.99,
    "max_attempts": 2,
    "patience": 8,
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_seed_of_the_ci_family_reaches_the_target_and_records_what_the_rule_did(seed, tmp_path):
    record = train_synth_model(AdditionTask(2), SynthTrainSettings(**CI_FAMILY, seed=seed), tmp_path / "m")
    attempts = record["attempts"]
    summary = [(a["batch_size"], a["steps_done"], a["heldout_accuracy"], a["outcome"]) for a in attempts]
    assert record["reached_target"] and record["heldout_accuracy"] >= 0.99, summary
    # the rule's record: attempt n ran from the seed with attempt_batch_size(64, n); only the last one
    # reached the target
    assert [(a["seed"], a["batch_size"]) for a in attempts] == [
        (seed, attempt_batch_size(CI_FAMILY["batch_size"], n)) for n in range(len(attempts))
    ]
    assert all(a["heldout_accuracy"] < 0.99 for a in attempts[:-1])
    assert record["attempt"] == len(attempts) - 1 and record["batch_size"] == attempts[-1]["batch_size"]
    assert json.loads((tmp_path / "m" / "synth.json").read_text())["attempts"] == attempts
