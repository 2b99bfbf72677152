"""SAE training from an activation store: checkpoint, log, skip, resume equality, streaming, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from scircuits.cli.train import train as train_command
from scircuits.platform.config import TrainConfig
from scircuits.platform.contract.errors import ConfigError, DataFormatError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.checkpoint import LOG_FILE, META_FILE, STATE_META_FILE, WEIGHTS_FILE, load_sae
from scircuits.platform.train.training import (
    LR_RULE,
    SAETrainer,
    apply_preset,
    default_lr,
    derived_seeds,
    geometric_median,
    train,
    width_scaled_lr,
)
from scircuits.store import ActivationStore
from scircuits.store.synthetic import write_synthetic_store

D_MODEL = 16


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "acts.zarr"
    return write_synthetic_store(path, n_examples=240, d_model=D_MODEL, dtype="float32", chunk_rows=256)


def config(store, out, **overrides) -> TrainConfig:
    values = dict(
        store=str(store),
        sae="topk",
        hparams={"k": 4},
        expansion=2,
        batch_size=64,
        epochs=2,
        lr=3e-3,
        warmup_steps=5,
        eval_every=10,
        log_every=5,
        eval_tokens=512,
        checkpoint_every=7,
        out=str(out),
        progress=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_train_writes_a_complete_checkpoint_and_log(store, tmp_path):
    out = train(config(store, tmp_path / "sae"), get_plugins())
    meta = json.loads((out / META_FILE).read_text())
    assert meta["complete"] and meta["variant"] == "topk" and meta["store"]["attrs"]["source"] == "synthetic"
    assert meta["config_hash"] == config(store, tmp_path / "sae").config_hash()
    assert set(meta["metrics"]) >= {"fvu", "l0", "dead_fraction", "mse", "explained_variance"}
    assert meta["metrics"]["l0"] <= 4 and meta["metrics"]["fvu"] < 1.0
    assert not (out / STATE_META_FILE).exists()
    records = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert len(evals) >= 2 and records[-1]["final"] is True
    assert any("mse" in r and "lr" in r for r in records)
    sae, _ = load_sae(out, get_plugins())
    x = torch.randn(5, D_MODEL)
    assert sae(x).shape == x.shape


def test_a_complete_checkpoint_with_the_same_config_is_skipped(store, tmp_path, capsys):
    cfg = config(store, tmp_path / "sae", epochs=1)
    train(cfg, get_plugins())
    before = (tmp_path / "sae" / WEIGHTS_FILE).stat().st_mtime_ns
    train(cfg, get_plugins())
    assert (tmp_path / "sae" / WEIGHTS_FILE).stat().st_mtime_ns == before
    assert "skipping" in capsys.readouterr().err
    train(config(store, tmp_path / "sae", epochs=1, seed=5), get_plugins())  # another config trains again
    assert (tmp_path / "sae" / WEIGHTS_FILE).stat().st_mtime_ns != before


def test_an_sae_of_an_unfinished_store_is_trained_again_once_the_store_is_finished(tmp_path, capsys):
    """It was kept ("already holds a complete checkpoint") though its store had grown since."""
    from scircuits.store import ActivationStoreWriter
    from scircuits.store.synthetic import synthetic_attrs, synthetic_example

    path = tmp_path / "acts.zarr"
    with ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D_MODEL, dtype="float32") as writer:
        for i in range(120):
            writer.append_example(i, *synthetic_example(i, D_MODEL))
        writer.close(complete=False)
    cfg = config(path, tmp_path / "sae", epochs=1)
    train(cfg, get_plugins())
    first = json.loads((tmp_path / "sae" / META_FILE).read_text())["store"]["attrs"]["n_tokens"]
    write_synthetic_store(path, n_examples=240, d_model=D_MODEL, dtype="float32")  # finishes it
    capsys.readouterr()
    train(cfg, get_plugins())
    assert "was trained on the store before it was complete; moved it" in capsys.readouterr().err
    meta = json.loads((tmp_path / "sae" / META_FILE).read_text())
    assert meta["store"]["attrs"]["n_tokens"] > first and meta["store"]["attrs"]["complete"]
    assert list(tmp_path.glob("sae.superseded-*"))


@pytest.mark.parametrize(
    "sae,hparams,stop",
    [
        ("topk", {"k": 4, "dead_tokens": 64}, 11),  # mid-epoch; AuxK active (dead latents)
        ("batchtopk", {"k": 4}, 50),  # in the second epoch
        ("jumprelu", {}, 11),
    ],
)
def test_resume_ends_with_the_same_weights(store, tmp_path, sae, hparams, stop):
    straight = train(config(store, tmp_path / "straight", sae=sae, hparams=hparams), get_plugins())
    interrupted = config(store, tmp_path / "resumed", sae=sae, hparams=hparams)
    train(interrupted, get_plugins(), stop_after_steps=stop)
    state = json.loads((tmp_path / "resumed" / STATE_META_FILE).read_text())
    assert state["step"] == stop and state["batch_in_epoch"] > 0
    assert state["epoch"] == (1 if stop == 50 else 0)
    assert not (tmp_path / "resumed" / META_FILE).exists()
    train(interrupted.model_copy(update={"resume": True}), get_plugins())
    assert (straight / WEIGHTS_FILE).read_bytes() == (tmp_path / "resumed" / WEIGHTS_FILE).read_bytes()


def test_resume_continues_the_log_from_the_saved_step_on_whole_lines(store, tmp_path):
    """Records logged after the last saved state, and a line the interruption cut, are dropped:
    the resumed log holds the same records as the uninterrupted run's (a log and an eval record
    may share a step)."""
    hparams = {"k": 4}
    straight = train(config(store, tmp_path / "straight", hparams=hparams, log_every=5), get_plugins())
    interrupted = config(store, tmp_path / "resumed", hparams=hparams, log_every=5)
    train(interrupted, get_plugins(), stop_after_steps=11)
    log_file = tmp_path / "resumed" / LOG_FILE
    with open(log_file, "a") as fh:  # what an interruption after the saved state leaves
        fh.write(json.dumps({"step": 15, "loss": 1.0}) + "\n" + '{"step": 20, "lo')
    train(interrupted.model_copy(update={"resume": True}), get_plugins())
    lines = log_file.read_text().splitlines()
    resumed = [json.loads(line)["step"] for line in lines]  # every line whole
    assert resumed == [json.loads(line)["step"] for line in (straight / LOG_FILE).read_text().splitlines()]
    assert resumed.count(15) == 1 and 20 in resumed and len(resumed) > 4


def test_a_cut_training_state_says_how_to_start_over(store, tmp_path):
    train(config(store, tmp_path / "sae"), get_plugins(), stop_after_steps=3)
    meta = tmp_path / "sae" / STATE_META_FILE
    meta.write_text(meta.read_text()[:20])
    with pytest.raises(DataFormatError, match=r"not valid JSON .*drop --resume \(add --force\)"):
        train(config(store, tmp_path / "sae", resume=True), get_plugins())


def test_resume_refuses_a_state_of_another_config(store, tmp_path):
    train(config(store, tmp_path / "sae"), get_plugins(), stop_after_steps=3)
    with pytest.raises(ConfigError, match="different config"):
        train(config(store, tmp_path / "sae", lr=1e-2, resume=True), get_plugins())


def test_resume_refuses_a_state_of_another_process_count(store, tmp_path):
    train(config(store, tmp_path / "sae"), get_plugins(), stop_after_steps=3)
    meta_path = tmp_path / "sae" / STATE_META_FILE
    state = json.loads(meta_path.read_text())
    assert state["world_size"] == 1
    meta_path.write_text(json.dumps({**state, "world_size": 2}))  # as two processes leave it
    with pytest.raises(ConfigError, match=r"state of 2 process\(es\), now 1; resume it with --nproc 2"):
        train(config(store, tmp_path / "sae", resume=True), get_plugins())
    assert json.loads(meta_path.read_text())["step"] == 3  # the state is kept


def test_training_streams_batches_from_the_reader(store, tmp_path, monkeypatch):
    requested: list[int] = []
    original = ActivationStore.iter_batches
    original_read_rows = ActivationStore.read_rows

    def spy(self, batch_size, **kwargs):
        requested.append(batch_size)
        yield from original(self, batch_size, **kwargs)

    def no_whole_reads(self, start, stop):
        # the token-exclusion pass reads one stored block at a time; nothing reads the whole store
        if stop - start > self.block_rows:
            raise AssertionError("training must not read more than a block outside the streaming reader")
        return original_read_rows(self, start, stop)

    monkeypatch.setattr(ActivationStore, "iter_batches", spy)
    monkeypatch.setattr(ActivationStore, "read_rows", no_whole_reads)
    train(config(store, tmp_path / "sae", epochs=1), get_plugins())
    n_tokens = ActivationStore(store).n_tokens
    assert requested and max(requested) < n_tokens
    assert 64 in requested


def test_the_default_learning_rate_rule():
    assert width_scaled_lr(2**14) == pytest.approx(2e-4)
    assert width_scaled_lr(4 * 2**14) == pytest.approx(1e-4)
    # sparsify's width rule at a 64-token batch, square-root batch scaling from there
    assert default_lr(2**14, 64) == pytest.approx(2e-4)
    assert default_lr(1024, 4096) == pytest.approx(6.4e-3)  # the issue 11 planted check at the defaults
    assert default_lr(1024, 1024) == pytest.approx(3.2e-3)
    assert default_lr(4 * 1024, 1024) == pytest.approx(1.6e-3)
    assert default_lr(2**14, 4096) == pytest.approx(1.6e-3)
    with pytest.raises(ValueError):
        default_lr(1024, 0)


def test_without_lr_the_rule_is_used_and_recorded(store, tmp_path):
    assert TrainConfig(store="s").lr is None and TrainConfig(store="s").warmup_steps is None
    out = train(
        config(store, tmp_path / "sae", lr=None, warmup_steps=None, batch_size=128, epochs=1), get_plugins()
    )
    meta = json.loads((out / META_FILE).read_text())
    expected = 2e-4 / (2 * D_MODEL / 2**14) ** 0.5 * (128 / 64) ** 0.5
    assert meta["train_config"]["lr"] == pytest.approx(expected)
    assert meta["lr_rule"] == LR_RULE
    steps = meta["steps"]
    assert meta["train_config"]["warmup_steps"] == max(1, steps // 10)
    first = json.loads((out / LOG_FILE).read_text().splitlines()[0])
    # the first log line is at step 5, past a warm-up of max(1, steps // 10) = 1 step: the full rate
    assert first["lr"] == pytest.approx(expected)
    given = train(config(store, tmp_path / "given", lr=1e-3, epochs=1), get_plugins())
    given_meta = json.loads((given / META_FILE).read_text())
    assert given_meta["train_config"]["lr"] == 1e-3 and given_meta["lr_rule"] == "given"


def test_initialisation_and_batch_order_have_independent_seeds(store, tmp_path, monkeypatch):
    seeds = derived_seeds(0)
    assert seeds.init != seeds.data and derived_seeds(0) == seeds and derived_seeds(1) != seeds
    initial, batch_seeds = [], []
    original_init, original_iter = SAETrainer.initialize_from_sample, ActivationStore.iter_batches

    def spy_init(self, x_raw):
        initial.append(self.sae.W_dec.detach().clone())
        return original_init(self, x_raw)

    def spy_iter(self, *args, **kwargs):
        batch_seeds.append(kwargs["seed"])
        return original_iter(self, *args, **kwargs)

    monkeypatch.setattr(SAETrainer, "initialize_from_sample", spy_init)
    monkeypatch.setattr(ActivationStore, "iter_batches", spy_iter)
    out = train(config(store, tmp_path / "sae", epochs=1), get_plugins())
    assert json.loads((out / META_FILE).read_text())["seeds"] == {"seed": 0, **seeds._asdict()}
    assert batch_seeds and set(batch_seeds) == {seeds.data}
    torch.manual_seed(seeds.init)
    expected = get_plugins().saes.get("topk").build(D_MODEL, 2 * D_MODEL, {"k": 4}).W_dec
    assert torch.equal(initial[0], expected)


def test_the_prior_study_preset():
    cfg = apply_preset(TrainConfig(store="s", preset="prior-study"), get_plugins())
    assert (cfg.sae, cfg.expansion, cfg.epochs, cfg.batch_size, cfg.lr) == ("relu", 8, 20, 32, 1e-4)
    assert cfg.hparams == {"l1": 1e-4, "decorrelation": 0.01}
    mine = apply_preset(
        TrainConfig(store="s", preset="prior-study", lr=1e-3, hparams={"l1": 1e-3}), get_plugins()
    )
    assert mine.lr == 1e-3 and mine.hparams["l1"] == 1e-3 and mine.hparams["decorrelation"] == 0.01
    with pytest.raises(ConfigError, match="prior-study"):
        apply_preset(TrainConfig(store="s", preset="nope"), get_plugins())
    old_name = apply_preset(TrainConfig(store="s", preset="phase4"), get_plugins())  # the earlier name
    assert old_name == cfg.model_copy(update={"preset": "phase4"})


def test_geometric_median_resists_outliers():
    points = torch.zeros(101, 3)
    points[:3] = 1000.0
    assert geometric_median(points).norm() < 1.0
    assert points.mean(dim=0).norm() > 10


def test_cli_train(store, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = [
        "--store",
        str(store),
        "--sae",
        "relu",
        "--l1",
        "0.01",
        "--sae-option",
        "decorrelation_tokens=32",
        "--expansion",
        "2",
        "--batch-size",
        "64",
        "--tokens",
        "640",
        "--out",
        str(out),
        "--no-progress",
    ]
    result = runner.invoke(train_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / META_FILE).read_text())
    assert meta["hparams"]["l1"] == 0.01 and meta["hparams"]["decorrelation_tokens"] == 32
    assert meta["steps"] == 10 and meta["tokens"] == 640
    bad = runner.invoke(
        train_command, ["--store", str(store), "--sae", "relu", "--k", "3", "--out", str(out)]
    )
    assert bad.exit_code != 0 and "k" in str(bad.exception)


def test_the_old_hparam_flag_still_works_and_warns_once(store, tmp_path):
    """--sae-option is the one name on train and run; --hparam, train's old name, is a hidden alias."""
    out = tmp_path / "old"
    args = [
        "--store",
        str(store),
        "--sae",
        "relu",
        "--hparam",
        "l1=0.02",
        "--hparam",
        "decorrelation_tokens=16",
    ]
    args += ["--sae-option", "decorrelation_tokens=32"]  # the new name wins over the old one
    args += ["--expansion", "2", "--batch-size", "64", "--tokens", "320", "--out", str(out), "--no-progress"]
    import logging

    records: list[str] = []
    counter = logging.Handler()
    counter.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("scircuits").addHandler(counter)
    try:
        result = CliRunner().invoke(train_command, args, catch_exceptions=False)
    finally:
        logging.getLogger("scircuits").removeHandler(counter)
    assert result.exit_code == 0, result.output
    assert "--hparam is deprecated: use --sae-option" in result.stderr
    assert sum("--hparam is deprecated" in m for m in records) == 1  # one warning per invocation
    meta = json.loads((out / META_FILE).read_text())
    assert meta["hparams"]["l1"] == 0.02 and meta["hparams"]["decorrelation_tokens"] == 32
    from scircuits.cli.causal import run as run_command

    for command in (train_command, run_command):
        shown = CliRunner().invoke(command, ["--help"]).output
        assert "--sae-option" in shown and "--hparam" not in shown


def test_cli_train_from_a_config_file(store, tmp_path):
    cfg_file = tmp_path / "train.toml"
    cfg_file.write_text(
        f'[train]\nstore = "{store}"\nsae = "gated"\nexpansion = 2\nbatch_size = 64\n'
        f'tokens = 320\nout = "{tmp_path / "from_file"}"\nprogress = false\n'
    )
    result = CliRunner().invoke(train_command, ["--config", str(cfg_file)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "from_file" / META_FILE).read_text())["variant"] == "gated"


def test_presets_live_on_the_variant_of_the_plugin_set_given():
    from scircuits import SAEVariant
    from scircuits.platform.manager.plugin_set import load_plugins

    class Planted(SAEVariant):
        name = "planted-only"
        saelens_architecture = "standard"
        presets = {"tiny": {"expansion": 2, "lr": 5e-4}}  # noqa: RUF012

    plugins = load_plugins(entry_points_too=False)
    plugins.saes.add(Planted(), owner="test")
    cfg = apply_preset(TrainConfig(store="s", preset="tiny"), plugins)
    assert (cfg.sae, cfg.expansion, cfg.lr) == ("planted-only", 2, 5e-4)
    with pytest.raises(ConfigError, match="unknown preset 'tiny'"):
        apply_preset(TrainConfig(store="s", preset="tiny"), load_plugins(entry_points_too=False))
    with pytest.raises(ConfigError, match="'topk' has no preset 'prior-study'"):
        apply_preset(TrainConfig(store="s", preset="prior-study", sae="topk"), plugins)


def test_a_lost_worker_process_says_how_to_continue(store, tmp_path, monkeypatch):
    from scircuits.errors import ScircuitsError
    from scircuits.platform.train import training

    def died(*args, **kwargs):
        raise ScircuitsError("a distributed training process died: process 1 terminated with signal SIGKILL")

    monkeypatch.setattr(training, "launch", died)
    with pytest.raises(
        ScircuitsError,
        match=r"SIGKILL; the last saved training state in .* run the same command with --resume",
    ):
        train(config(store, tmp_path / "sae", nproc=2, batch_size=64), get_plugins())
