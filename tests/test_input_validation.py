"""User mistakes in stage configs and on the command line: one line, exit 2, refused before any work,
alike from the CLI, a config file and the Python API (the same pydantic configs)."""

from __future__ import annotations

import pytest

from scircuits.cli import main
from scircuits.platform.config import AblateConfig, CircuitConfig, CollectConfig, RunConfig, TrainConfig
from scircuits.platform.contract.errors import ConfigError


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a command that must be refused with exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (
            lambda: AblateConfig(top_k=[0, -1]),
            r"top_k: give positive integers, e.g. \[1, 5, 20, 50\].*--top-k",
        ),
        (lambda: AblateConfig(top_k=[]), r"top_k: give positive integers"),
        (lambda: AblateConfig(top_k=[5, 5]), r"top_k: give each number once"),
        (lambda: AblateConfig(faithfulness_n=[0, -1]), r"faithfulness_n: give positive integers"),
        (lambda: RunConfig(top_k=[]), r"ablate\.top_k: give positive integers.*--top-k"),
        (lambda: RunConfig(faithfulness_n=[1, 1]), r"ablate\.faithfulness_n: give each number once"),
        (lambda: CircuitConfig(sizes=[]), r"sizes: give positive integers"),
        (lambda: CircuitConfig(sizes=[0, -1]), r"sizes: give positive integers"),
        (lambda: CircuitConfig(sae=["a", "a"]), r"sae: a given more than once"),
        (lambda: RunConfig(circuit_sae=["a", "a"]), r"circuit_sae: a given more than once"),
    ],
)
def test_lists_of_counts_are_checked_in_the_config(build, needle):
    with pytest.raises(ConfigError, match=needle):
        build()


def test_a_config_files_bad_top_k_is_refused_before_collecting(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.toml"
    path.write_text("[run.ablate]\ntop_k = []\n")
    assert "top_k: give positive integers" in refused(["run", "--config", str(path)], capsys)
    path.write_text("[run.ablate]\ntop_k = [0, -1]\n")
    assert "top_k: give positive integers" in refused(["run", "--config", str(path)], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["run.toml"]


def test_conflicting_settings_are_refused():
    with pytest.raises(ConfigError, match=r"--tokens 2000 and --epochs 1: give one"):
        TrainConfig(tokens=2000, epochs=1)
    with pytest.raises(ConfigError, match=r"--layer 3 and --layers 4,5: give one"):
        CollectConfig(layer=3, layers="4,5")
    with pytest.raises(ConfigError, match=r"--site mlp and --sites resid,attn: give one"):
        CollectConfig(site="mlp", sites="resid,attn")
    with pytest.raises(ConfigError, match=r"--corpus c.jsonl and --benchmark: a corpus collection reads no"):
        CollectConfig(corpus="c.jsonl", benchmark="gsm8k")
    with pytest.raises(ConfigError, match=r"--corpus c.jsonl and --data/--option"):
        CollectConfig(corpus="c.jsonl", benchmark_options={"data": "/nonexistent"})
    with pytest.raises(ConfigError, match=r"--train-tokens 5000 and --train-epochs 1: give one"):
        RunConfig(train_epochs=1, train_tokens=5000)
    assert (RunConfig(train_epochs=1).train.tokens, RunConfig().train.tokens) == (None, 1_200_000)


@pytest.mark.parametrize("text", ["[run]\ntrain_tokens = 500000\n", "[run.train]\ntokens = 500000\n"])
def test_a_flag_for_epochs_replaces_the_files_tokens_and_the_reverse(tmp_path, text):
    """--train-tokens and --train-epochs are one setting given two ways: a flag (or an API keyword)
    for one replaces the other where a config file (or a given config) set it."""
    from scircuits.api.stages import stage_config
    from scircuits.platform.config.stages import TrainConfig

    file = tmp_path / "c.toml"
    file.write_text(text)
    by_file = RunConfig.from_sources(file, {})
    assert (by_file.train.tokens, by_file.train.epochs) == (500_000, None)
    by_flag = RunConfig.from_sources(file, {"train_epochs": 2})
    assert (by_flag.train.tokens, by_flag.train.epochs) == (None, 2)
    file.write_text("[run.train]\nepochs = 3\n")
    assert RunConfig.from_sources(file, {"train_tokens": 4096}).train.tokens == 4096
    file.write_text("[train]\nstore = 'x'\ntokens = 9000\n")
    assert (
        TrainConfig.from_sources(file, {"epochs": 2}).tokens,
        TrainConfig.from_sources(file, {}).tokens,
    ) == (None, 9000)
    keyword = stage_config(RunConfig, RunConfig(train_epochs=1), {"train_tokens": 5000})
    assert (keyword.train.tokens, keyword.train.epochs) == (5000, None)
    with pytest.raises(ConfigError, match=r"--train-tokens 5000 and --train-epochs 1: give one"):
        RunConfig.from_sources(None, {"train_tokens": 5000, "train_epochs": 1})
    assert CollectConfig(layer=3, layers="3,6").site_list() == [(3, "resid"), (6, "resid")]
    for empty in ("layers", "sites"):  # an empty list was read as not given (the default site traced)
        with pytest.raises(ConfigError, match=rf"--{empty}: give"):
            CollectConfig(**{empty: ""})


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--store", "x", "--tokens", "2000", "--epochs", "1"],
        ["collect", "--layer", "3", "--layers", "4,5"],
        ["collect", "--corpus", "ok.jsonl", "--benchmark", "gsm8k"],
        ["collect", "--corpus", "ok.jsonl", "--data", "/nonexistent"],
    ],
)
def test_conflicting_flags_are_one_line_and_nothing_written(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "give" in refused(argv, capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["collect", "--layers", "3,3"], "--layers 3,3: give each block once"),
        (["collect", "--layers", "3", "--sites", "mlp,mlp"], "--sites mlp,mlp: give each site once"),
        (["run", "--circuit-layers", "3,3"], "--circuit-layers 3,3: give each block once"),
        (["train", "--store", "x", "--sae", ","], "--sae ',': give one or more SAE variant names"),
        (["validate", "sae", "--sae", ","], "--sae ',': give one or more SAE variant names"),
        (["validate", "sae", "--sae", "topk,relu,topk"], "--sae topk,relu,topk: topk given twice"),
        (["validate", "sae", "--epochs", "3"], "--epochs 3: the hard problem trains for --tokens"),
        (["synth", "train", "--task", "addition", "--steps", "0"], "'--steps': 0 is not in the range"),
        (["run", "--sae", "./nosae/"], "--sae ./nosae/: no such checkpoint folder (--sae takes an SAE"),
        (["train", "--store", "x", "--sae", "./nosae/"], "--sae ./nosae/: a path, but `scircuits train`"),
        (["validate", "sae", "--sae", "./nosae/"], "--sae ./nosae/: a path, but `scircuits validate sae`"),
    ],
)
def test_do_nothing_or_misread_input_is_refused(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert needle in refused(argv, capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_api_path_as_sae_is_not_read_as_a_variant():
    with pytest.raises(ConfigError, match=r"--sae ./nosae/: no such checkpoint folder"):
        TrainConfig(sae="./nosae/")
    with pytest.raises(ConfigError, match=r"--sae ./nosae/: no such checkpoint folder"):
        RunConfig(sae="./nosae/")
    assert RunConfig(sae="hf:org/repo/path").train.sae == "hf:org/repo/path"


def test_config_file_tables_that_would_be_ignored_are_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nexpansion = 4\n[trian]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown table \[trian\]; did you mean \[train\]\?"):
        TrainConfig.from_sources(path)
    path.write_text("[run.ablate]\nlimit = 4\n")
    with pytest.raises(ConfigError, match=r"\[run\.\*\] tables are read by `scircuits run --config`"):
        AblateConfig.from_sources(path)
    path.write_text("[train]\nexpansion = 4\n[hparams]\nk = 4\n")
    with pytest.raises(ConfigError, match=r"hparams would be ignored because a \[train\] table exists"):
        TrainConfig.from_sources(path)
    path.write_text("[collect]\nlayer = 2\n[train]\nexpansion = 4\n[run]\nlimit = 8\n")
    assert TrainConfig.from_sources(path).expansion == 4  # one file for several commands


def test_a_setting_given_twice_in_a_run_file_is_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[run]\nlimit = 8\n[run.ablate]\nlimit = 4\n")
    with pytest.raises(ConfigError, match=r"limit is set twice.*\[run\].*\[run\.ablate\]; keep one"):
        RunConfig.from_sources(path)
    assert RunConfig.from_sources(None, {"limit": 8}).ablate.limit == 8


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: TrainConfig(expnsion=4), "unknown setting 'expnsion'; did you mean 'expansion'?"),
        (lambda: TrainConfig(tokns=2000), "unknown setting 'tokns'; did you mean 'tokens'?"),
        (lambda: RunConfig(tokns=2000), "unknown setting 'tokns'; did you mean 'train_tokens'?"),
        (lambda: TrainConfig(k=32), "it goes in hparams: `hparams = {k = 32}`"),
    ],
)
def test_an_unknown_setting_names_the_closest_one(build, needle):
    with pytest.raises(ConfigError) as err:
        build()
    assert needle in str(err.value)
    if "did you mean" in needle:
        assert "hparams" not in str(err.value)


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("hf:/no/such/folder", "no such folder, and not a Hugging Face repository id"),
        ("hf:./nosuch", "no such folder, and not a Hugging Face repository id"),
        ("hf:{file}", "is a file: give the folder holding config.json"),
        ("hf:", "hf: needs a repository id or a folder"),
    ],
)
def test_a_model_folder_that_is_missing_or_a_file_is_one_line(model, needle, tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"")
    model = model.format(file=tmp_path / "weights.bin")
    line = refused(["collect", "--model", model, "--limit", "4", "--out", str(tmp_path / "s.zarr")], capsys)
    assert needle in line and model in line
    assert not (tmp_path / "s.zarr").exists()


def test_a_folder_without_sae_weights_says_what_it_holds(tmp_path):
    from scircuits.errors import DataFormatError
    from scircuits.platform.train.checkpoint import WEIGHTS_FILE, read_saelens_folder
    from scircuits.store import ActivationStoreWriter

    attrs = {"source": "imported", "model": "m", "model_id": "m", "model_revision": "r", "layer": 0}
    attrs |= {"site": "resid", "data_source": {"kind": "benchmark", "benchmark": "b", "split": "test"}}
    store = tmp_path / "acts.zarr"
    with ActivationStoreWriter.open(store, attrs, d_model=4, dtype="float32") as writer:
        writer.append_example(0, [1, 2], [[0.0] * 4, [1.0] * 4])
    with pytest.raises(DataFormatError, match="it is an activation store"):
        read_saelens_folder(store)
    sites = tmp_path / "saes"
    for name in ("layers.3", "layers.9"):
        (sites / name).mkdir(parents=True)
        (sites / name / WEIGHTS_FILE).write_bytes(b"")
    held = r"it holds SAE checkpoints \(layers\.3, layers\.9\): give one of them"
    with pytest.raises(DataFormatError, match=held):
        read_saelens_folder(sites)


def test_every_list_setting_of_every_command_takes_a_comma_list_on_the_command_line():
    """An Optional[Annotated[list[int], ...]] field (circuit --sizes) was a plain-text option whose
    every value was refused ("Input should be a valid list")."""
    from scircuits.platform.config.circuit import CircuitConfig
    from scircuits.platform.config.options import option_for, run_fields
    from scircuits.platform.config.stages import AblateConfig, CollectConfig, TrainConfig

    fields = [*run_fields().items()]
    for config in (CollectConfig, TrainConfig, AblateConfig, CircuitConfig):
        fields += list(config.model_fields.items())
    lists = [(name, info) for name, info in fields if "list[" in str(info.annotation)]
    assert any(name == "sizes" for name, _ in lists) and any(name == "top_k" for name, _ in lists)
    for name, info in lists:
        option = option_for(name, info)

        @option
        def command(**kwargs):
            return kwargs

        [param] = command.__click_params__
        assert param.metavar in ("N,N,...", "NAME,NAME,..."), (name, info.annotation)
