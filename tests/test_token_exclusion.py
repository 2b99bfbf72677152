"""Issue 20: sinks and outlier-norm tokens left out of SAE training (recorded), the run-relative AuxK
window acting and reviving latents, and rare latents counted apart from dead ones."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scircuits.platform.config import TrainConfig
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.checkpoint import LOG_FILE, META_FILE
from scircuits.platform.train.exclusion import TokenExclusion, fit_exclusion, token_exclusion_of
from scircuits.platform.train.metrics import RARE_FREQUENCY, ReconstructionStats
from scircuits.platform.train.training import default_dead_window, train
from scircuits.store import ActivationStore
from scircuits.store.synthetic import synthetic_attrs, write_synthetic_store
from scircuits.store.writer import ActivationStoreWriter

D = 8
SINK_NORM = 400.0
OUTLIER_NORM = 150.0


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit_rows(rng: np.random.Generator, n: int, norm: float) -> np.ndarray:
    rows = rng.standard_normal((n, D)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True) * norm


@pytest.fixture(scope="module")
def sink_store(tmp_path_factory):
    """300 examples of 12 tokens: position 0 a sink (|x| = 400), every 25th example one outlier at
    position 5 (|x| = 150), every other token |x| in [1, 3)."""
    path = tmp_path_factory.mktemp("sinks") / "acts.zarr"
    rng = np.random.default_rng(0)
    with ActivationStoreWriter.open(
        path, synthetic_attrs(seed=7), d_model=D, dtype="float32", chunk_rows=256
    ) as writer:
        for index in range(300):
            acts = unit_rows(rng, 12, 1.0) * rng.uniform(1, 3, (12, 1)).astype(np.float32)
            acts[0] = unit_rows(rng, 1, SINK_NORM)[0]
            if index % 25 == 0:
                acts[5] = unit_rows(rng, 1, OUTLIER_NORM)[0]
            writer.append_example(index, np.arange(12, dtype=np.int32), acts)
    return str(path)


def test_the_rule_leaves_out_sinks_and_outliers_and_says_so(sink_store):
    store = ActivationStore(sink_store)
    record, rows = fit_exclusion(store, "outliers", 10.0)
    assert record.position0 and record.rows == 3600
    assert record.excluded_position0 == 300 and record.excluded_by_norm == 12 and record.excluded == 312
    assert 1.0 < record.median_norm < 3.0 and record.norm_cutoff == pytest.approx(10 * record.median_norm)
    norms = np.linalg.norm(store.read_rows(0, store.n_tokens), axis=1)
    assert set(rows.tolist()) == set(np.flatnonzero((store.positions == 0) | (norms > 100)).tolist())
    view = store.excluding(rows)
    assert view.n_rows("all") == 3600 - 312 and store.n_rows("all") == 3600
    assert view.n_rows("train") + view.n_rows("eval") == 3600 - 312
    seen = 0
    for batch in view.iter_labelled_batches(128, split="all"):
        assert not (batch.positions == 0).any() and float(batch.acts.norm(dim=1).max()) < 3.01
        seen += batch.acts.shape[0]
    assert seen == 3600 - 312
    assert "312 of 3600 tokens left out" in record.describe()
    none, kept_all = fit_exclusion(store, "none")
    assert none.excluded == 0 and kept_all.size == 0 and not none.active


def test_a_store_without_sinks_keeps_its_rows(tmp_path):
    """Gaussian rows (no sink, no outlier): nothing is left out, position 0 included."""
    store = ActivationStore(write_synthetic_store(tmp_path / "s.zarr", n_examples=200, d_model=16))
    record, rows = fit_exclusion(store, "outliers")
    assert record.excluded == 0 and rows.size == 0 and not record.position0
    assert record.position0_median_norm is not None and record.position0_median_norm < record.norm_cutoff


def test_single_token_examples_are_not_taken_for_sinks(tmp_path):
    """Every row at position 0: nothing to compare it with, so position 0 is kept."""
    path = tmp_path / "one.zarr"
    rng = np.random.default_rng(1)
    with ActivationStoreWriter.open(path, synthetic_attrs(seed=3), d_model=D, dtype="float32") as writer:
        for index in range(50):
            writer.append_example(index, np.array([1], dtype=np.int32), unit_rows(rng, 1, 5.0))
    record, rows = fit_exclusion(ActivationStore(path), "outliers")
    assert not record.position0 and rows.size == 0


def test_kept_mask_applies_the_recorded_cut_to_a_study_batch():
    rule = TokenExclusion(rule="outliers", factor=10, median_norm=2.0, norm_cutoff=20.0, position0=True)
    x = torch.ones(2, 4, D)
    x[0, 2] *= 50  # |x| = 50 sqrt(8)
    positions = torch.arange(4).expand(2, 4)
    kept = rule.kept(x, positions)
    assert kept.tolist() == [[False, True, False, True], [False, True, True, True]]
    meta = {"token_exclusion": rule.model_dump()}
    assert token_exclusion_of(meta) == rule and token_exclusion_of({}) is None


def train_config(store: str, out, **overrides) -> TrainConfig:
    values = dict(
        store=store,
        sae="topk",
        hparams={"k": 2},
        expansion=2,
        batch_size=128,
        epochs=2,
        lr=3e-3,
        warmup_steps=2,
        eval_every=1000,
        log_every=5,
        out=str(out),
        progress=False,
    )
    return TrainConfig(**{**values, **overrides})


def test_training_leaves_the_sinks_out_of_the_fit_and_the_scale_and_records_it(sink_store, tmp_path):
    out = train(train_config(sink_store, tmp_path / "sae"), get_plugins())
    meta = json.loads((out / META_FILE).read_text())
    record = TokenExclusion.model_validate(meta["token_exclusion"])
    assert record.excluded == 312 and record.position0
    # the input scale is sqrt(d) / E|x| over the kept training rows (all of them fit in the sample)
    store = ActivationStore(sink_store)
    view = store.excluding(fit_exclusion(store, "outliers")[1])
    kept = torch.cat(list(view.iter_batches(4096, split="train")))
    assert meta["input_scale"] == pytest.approx(math.sqrt(D) / float(kept.norm(dim=1).mean()), rel=1e-5)
    assert meta["metrics"]["tokens"] == view.n_rows("eval")
    everything = train(train_config(sink_store, tmp_path / "all", exclude_tokens="none"), get_plugins())
    meta_all = json.loads((everything / META_FILE).read_text())
    assert meta_all["token_exclusion"]["excluded"] == 0
    assert meta_all["input_scale"] < meta["input_scale"] / 5  # the sinks set the scale when kept
    assert meta_all["metrics"]["tokens"] == store.n_rows("eval")


def test_an_exclusion_that_leaves_too_few_rows_says_how_to_keep_them(tmp_path):
    path = tmp_path / "sinks_only.zarr"
    rng = np.random.default_rng(2)
    with ActivationStoreWriter.open(path, synthetic_attrs(seed=4), d_model=D, dtype="float32") as writer:
        for index in range(40):
            acts = unit_rows(rng, 3, 1.0)
            acts[0] = unit_rows(rng, 1, SINK_NORM)[0]
            writer.append_example(index, np.arange(3, dtype=np.int32), acts)
    with pytest.raises(Exception, match="--exclude-tokens none"):
        train(train_config(str(path), tmp_path / "sae", batch_size=80), get_plugins())


# -- dead and rare latents ---------------------------------------------------------------------


def test_rare_latents_are_counted_apart_from_dead_ones():
    stats = ReconstructionStats(d_sae=4)
    tokens = 30_000
    acts = torch.zeros(tokens, 4)
    acts[:, 0] = 1.0  # fires everywhere
    acts[7, 1] = 1.0  # fires once: 1 / 30,000 < 1e-4, rare
    acts[:6, 2] = 1.0  # fires on 2e-4 of the tokens: neither
    x = torch.randn(tokens, 3)
    stats.update(x, x, acts)
    usage = stats.result()
    assert usage["dead_fraction"] == 0.25 and usage["rare_fraction"] == 0.25
    assert RARE_FREQUENCY == 1e-4


def test_the_dead_window_is_relative_to_the_run():
    assert default_dead_window(1_200_128, 4096) == 120_013  # the default run: a tenth of its tokens
    assert default_dead_window(100_000_000, 4096) == 1_000_000  # at most the old fixed window
    assert default_dead_window(20_000, 512) == 5_120  # at least ten batches


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """128 unit atoms in 32 dimensions, 3 per token: with 128 latents at a high rate, latents die
    and the atoms they would have taken stay unlearnt."""
    path = tmp_path_factory.mktemp("planted") / "acts.zarr"
    rng = np.random.default_rng(5)
    atoms = rng.standard_normal((128, 32)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    with ActivationStoreWriter.open(
        path, synthetic_attrs(seed=11), d_model=32, dtype="float32", chunk_rows=4096
    ) as writer:
        for index in range(800):
            picks = rng.integers(0, 128, (50, 3))
            mags = rng.uniform(0.5, 1.5, (50, 3, 1)).astype(np.float32)
            acts = (mags * atoms[picks]).sum(axis=1) + 0.01 * rng.standard_normal((50, 32)).astype(np.float32)
            writer.append_example(index, np.arange(50, dtype=np.int32), acts)
    return str(path)


def test_auxk_acts_in_the_run_and_revives_latents(planted_store, tmp_path):
    def run(name: str, alpha: float) -> tuple[dict, list[dict]]:
        cfg = train_config(
            planted_store,
            tmp_path / name,
            hparams={"k": 3, "auxk_alpha": alpha},
            expansion=4,
            batch_size=256,
            epochs=None,
            tokens=300 * 256,
            lr=3e-2,
            warmup_steps=10,
        )
        out = train(cfg, get_plugins())
        meta = json.loads((out / META_FILE).read_text())
        log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
        return meta, log

    with_auxk, log = run("auxk", 1 / 32)
    without, _ = run("plain", 0.0)
    assert with_auxk["dead_window_tokens"] == 7_680  # a tenth of the 76,800 training tokens
    assert with_auxk["token_exclusion"]["excluded"] == 0  # nothing outlying in planted data
    assert any(r.get("auxk", 0) > 0 and r["dead_fraction_train"] > 0 for r in log)
    m, m0 = with_auxk["metrics"], without["metrics"]
    assert m["usage_tokens"] == m0["usage_tokens"] > 30_000
    # a prototype of this problem (60,000 rows, no store) measured dead 0.05 with AuxK against 0.18
    # without, FVU 0.13 against 0.20
    assert m0["dead_fraction"] > 0.1 and m["dead_fraction"] < m0["dead_fraction"] / 2
    assert m["fvu"] < m0["fvu"]


def test_a_study_of_an_sae_without_a_recorded_rule_measures_the_outliers_on_its_own_tokens():
    """``--exclude-tokens``: auto takes the checkpoint's rule where it has one; for an SAE that records
    none (a published one) auto and outliers measure the rule on the study's own real tokens (position
    0 a sink here, padding ignored); none keeps every token."""
    from types import SimpleNamespace

    from scircuits.platform.causal.runner import study_token_exclusion

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, D, generator=generator)
    x[:, 0] *= 1000  # the sinks
    x[2, 3] *= 500  # one outlier
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 5] = 0  # padding, never counted
    x[1, 5] *= 10_000
    batch = SimpleNamespace(attention_mask=mask, position_ids=torch.arange(6).expand(3, 6))
    data = SimpleNamespace(batches=[SimpleNamespace(batch=batch, cache=SimpleNamespace(site_output=x))])
    recorded = TokenExclusion(rule="outliers", factor=10, median_norm=1.0, norm_cutoff=10.0)

    assert study_token_exclusion("auto", recorded, data) is recorded
    assert study_token_exclusion("none", recorded, data) is None
    for setting, given in (("auto", None), ("outliers", recorded)):
        measured = study_token_exclusion(setting, given, data)
        assert measured is not None and measured.position0 and measured.rows == 17
        assert measured.excluded == 4 and measured.excluded_by_norm == 1
        kept = measured.kept(x, batch.position_ids)
        assert not kept[:, 0].any() and not kept[2, 3] and kept[0, 1:].all()
