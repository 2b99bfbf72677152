"""The stacked scoring of the blocks above the site (``SplitModel.score_all`` with ``fuse_tokens``,
``Study.run_many``) against the eager reference (one forward per job): the same per-sequence scores
on every architecture and site, and a whole study with the same per-example effects and the same
significance calls."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scircuits.platform.causal.stage import AblateInputs, run_ablate
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.platform.model import splice
from scircuits.platform.model.scoring import make_batch
from scircuits.platform.model.sequences import EncodedSequence
from scircuits.platform.model.splice import ScoreJob, SplitModel, fusable_groups, spliced_output
from scircuits.testing import tiny_loaded_model
from tests.test_splice import ARCHITECTURES, padded_batch, random_sae
from tests.test_study_statistics import config as study_config
from tests.test_study_statistics import examples, tiny  # noqa: F401 (fixtures)
from tests.test_study_statistics import random_sae as study_sae


def narrow_batch():
    """Narrower than ``padded_batch`` (7 columns, not 14): stacking pads it."""
    seqs = [EncodedSequence(tuple(range(40, 47)), 3), EncodedSequence(tuple(range(80, 85)), 2)]
    return make_batch(seqs, pad_id=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_stacked_jobs_score_as_one_forward_per_job(architecture):
    """Jobs of different widths, edited and not, stacked into one forward give each sequence the
    scores of its own forward, at every site; a CE job keeps its own forward and its NLL."""
    loaded = tiny_loaded_model(architecture)
    sae = random_sae(loaded.d_model)
    for site in ("resid", "mlp", "attn"):
        split = SplitModel(loaded, 1, site)
        jobs = []
        for batch in (padded_batch(), narrow_batch(), padded_batch()):
            cache = split.lower(batch)
            with torch.no_grad():
                edited = spliced_output(sae, cache.site_output, edit=lambda f: f * 0.5)
            jobs += [ScoreJob(batch, cache, None), ScoreJob(batch, cache, edited)]
        jobs.insert(2, ScoreJob(jobs[0].batch, jobs[0].cache, None, ce=True))
        split.fuse_tokens = None
        with torch.no_grad():
            eager = split.score_all(jobs)
            split.fuse_tokens = 10_000
            fused = split.score_all(jobs)
        assert [len(g) for g in fusable_groups(jobs, 10_000)] == [2, 1, 4]
        for a, b in zip(eager, fused, strict=True):
            torch.testing.assert_close(a.seq_logprob, b.seq_logprob, rtol=0, atol=1e-5)
            assert torch.equal(a.seq_correct, b.seq_correct), (architecture, site)
            assert (a.nll_sum, a.nll_count) == (b.nll_sum, b.nll_count) or math.isclose(
                a.nll_sum, b.nll_sum, rel_tol=1e-6
            )
        assert fused[2].nll_count > 0  # the CE job ran on its own


def test_groups_keep_the_token_budget_and_the_order():
    batch = padded_batch()  # 3 sequences x 14 columns = 42 tokens
    cache = splice.LowerCache(torch.zeros(3, 14, 4), None, None)
    jobs = [ScoreJob(batch, cache, None) for _ in range(5)]
    groups = fusable_groups(jobs, 100)
    assert [len(g) for g in groups] == [2, 2, 1] and [j for g in groups for j in g] == jobs
    assert [len(g) for g in fusable_groups(jobs, 10)] == [1] * 5  # one job over the budget runs alone
    rest = ScoreJob(batch, splice.LowerCache(torch.zeros(3, 14, 4), None, (torch.zeros(1),)), None)
    assert [len(g) for g in fusable_groups([jobs[0], rest, jobs[1]], 1000)] == [1, 1, 1]


def numbers(value, path=""):
    """Every number in a JSON value, by its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        yield path, value
    elif isinstance(value, int | float):
        yield path, float(value)


@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_a_stacked_study_reproduces_the_eager_study(tiny, examples, tmp_path, monkeypatch, ablation):  # noqa: F811
    """The whole study stacked (several conditions per forward) and eager (one forward per batch
    and condition): every results.json number within 1e-5, every flag and significance call the
    same, and every example's scores within 1e-5."""
    plugins = load_plugins(entry_points_too=False)
    outputs = {}
    for name, budget in (("eager", None), ("stacked", splice.FUSE_TOKENS)):
        monkeypatch.setattr(splice, "FUSE_TOKENS", budget)
        # every analysis at a size that draws 20 control sets per k; batches of other widths; the
        # resample pool of other batches' examples
        settings = dict(random_controls=20, exact_top=6, ablation=ablation, batch_size=4)
        config = study_config(tmp_path / name, **settings)
        inputs = AblateInputs(tiny, study_sae(tiny.d_model, seed=1), {}, examples, 2)
        out = run_ablate(config, plugins, inputs=inputs)
        results = json.loads((out / "results.json").read_text())
        rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
        outputs[name] = (results, rows)
    (eager, eager_rows), (stacked, stacked_rows) = outputs["eager"], outputs["stacked"]
    skip = ("provenance", "wall_seconds", "config")
    a = dict(numbers({k: v for k, v in eager.items() if k not in skip}))
    b = dict(numbers({k: v for k, v in stacked.items() if k not in skip}))
    assert a.keys() == b.keys()
    differing = {
        path: (a[path], b[path])
        for path in a
        if not (
            a[path] == b[path]
            or (
                isinstance(a[path], float)
                and isinstance(b[path], float)
                and (abs(a[path] - b[path]) <= 1e-5 or (math.isnan(a[path]) and math.isnan(b[path])))
            )
        )
    }
    assert not differing, differing
    calls = [(s["significant_logprob"], s["significant_accuracy"]) for s in eager["sweeps"]]
    assert calls == [(s["significant_logprob"], s["significant_accuracy"]) for s in stacked["sweeps"]]
    assert (
        eager["n_conditions"] == stacked["n_conditions"]
        and eager["sequences_run"] == stacked["sequences_run"]
    )
    for x, y in zip(eager_rows, stacked_rows, strict=True):
        assert x["scores"].keys() == y["scores"].keys()
        for key, score in x["scores"].items():
            assert abs(score["logprob"] - y["scores"][key]["logprob"]) <= 1e-5
            assert score["correct"] == y["scores"][key]["correct"]
    assert np.isfinite([s["logprob_delta"] for s in stacked["sweeps"]]).all()
