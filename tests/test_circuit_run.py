"""`scircuits run --circuit-layers`: the run collects the extra sites in one forward, trains their SAEs
in one joint pass and finds the circuit over them and its own SAE; resumable; bad blocks refused in one
line before anything is written; the default run's stage keys do not move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scircuits.cli import main
from scircuits.platform.circuit.results import read_circuit
from scircuits.platform.config import RunConfig
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.pipeline.run import plan
from scircuits.platform.pipeline.state import PipelineState
from scircuits.platform.train.checkpoint import is_complete, read_json
from scircuits.store.collection import read_manifest
from scircuits.testing import save_tiny_model, tiny_loaded_model

_MODEL: dict[str, Path] = {}


def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    if "model" not in _MODEL:
        _MODEL["model"] = save_tiny_model(
            tiny_loaded_model("smollm2-135m"), tmp_path_factory.mktemp("circuit-run") / "tiny"
        )
    return f"hf:{_MODEL['model']}"


def run_args(model: str, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", model, "--layer", "2", "--limit", "8", "--collect-limit", "40",
        "--train-tokens", "4000", "--train-batch-size", "512", "--expansion", "2", "--top-k", "1,4",
        "--random-controls", "2", "--exact-top", "3", "--bootstrap", "100",
        "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def test_run_collects_and_trains_the_circuit_sites_itself_and_resumes(tmp_path_factory, tmp_path, caplog):
    model = tiny_model(tmp_path_factory)
    args = run_args(model, tmp_path / "runs", "--circuit-layers", "1,0,2")  # its own block 2 is left out
    with caplog.at_level("INFO"):
        main(args)
    (run,) = list((tmp_path / "runs").iterdir())
    # the two extra sites: one collection from one forward, one joint pass training both SAEs
    assert read_manifest(run / "circuit_activations").sites == ["resid0", "resid1"]
    assert "2 SAE(s) in one pass" in caplog.text
    index = read_json(run / "circuit_saes" / "index.json")
    assert [e["site"] for e in index["saes"]] == ["resid0", "resid1"]
    folders = [run / "circuit_saes" / f"blocks.{layer}.hook_resid_post" for layer in (0, 1)]
    assert all(is_complete(folder) for folder in folders)
    # the extra SAEs share the run's SAE settings: the same config hash as the run's own SAE's
    own_hash = read_json(run / "sae" / "scircuits.json")["config_hash"]
    assert {read_json(f / "scircuits.json")["config_hash"] for f in folders} == {own_hash}
    results = read_circuit(run / "circuit")
    assert [s.name for s in results.sites] == ["resid0", "resid1", "resid2"]
    assert [s.sae for s in results.sites] == [*map(str, folders), str(run / "sae")]
    assert "\n## Circuit\n" in (run / "report.md").read_text()
    stages = PipelineState(run).data.stages
    assert all(stages[name].completed_key for name in ("circuit_collect", "circuit_train", "circuit"))

    caplog.clear()
    with caplog.at_level("INFO"):
        main(args)
    for name in ("collect", "train", "ablate", "circuit_collect", "circuit_train", "circuit", "report"):
        assert f"{name}: up to date" in caplog.text, name

    # pipeline.json lost: the artifacts prove themselves (each stage's config hash is in its files)
    (run / "pipeline.json").unlink()
    caplog.clear()
    with caplog.at_level("INFO"):
        main(args)
    for name in ("circuit_collect", "circuit_train", "circuit"):
        assert f"{name}: up to date" in caplog.text, name


def test_without_circuit_flags_the_plan_and_its_keys_are_unchanged(tmp_path):
    plugins = get_plugins()
    plain = plan(RunConfig(out=str(tmp_path)), plugins)
    with_circuit = plan(RunConfig(out=str(tmp_path), circuit_layers="3,9,21"), plugins)
    assert list(plain.keys) == ["collect", "train", "ablate", "report"]
    assert all(plain.keys[k] == with_circuit.keys[k] for k in ("collect", "train", "ablate"))
    assert with_circuit.configs["circuit_collect"].layers == "3,9,21"
    saes = with_circuit.configs["circuit"].sae
    assert [Path(s).name for s in saes] == [
        "blocks.3.hook_resid_post", "blocks.9.hook_resid_post", "blocks.21.hook_resid_post", "sae"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "layers,words",
    [
        ("0,99", "--circuit-layers 0,99: layer 99 is out of range"),
        ("2", "--circuit-layers 2: only the run's own block (resid2)"),
        ("one,two", "--circuit-layers: give comma-separated block numbers"),
    ],
)
def test_bad_circuit_layers_are_one_line_before_anything_is_written(
    layers, words, tmp_path_factory, tmp_path, capsys
):
    model = tiny_model(tmp_path_factory)
    capsys.readouterr()  # what writing the tiny model printed
    with pytest.raises(SystemExit) as exit_info:
        main(run_args(model, tmp_path / "runs", "--circuit-layers", layers))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    if "out of range" in words:
        assert "it has layers 0.." in err  # the blocks that exist
    assert not (tmp_path / "runs").exists()


def test_the_run_config_records_the_circuit_layers(tmp_path):
    config = RunConfig(out=str(tmp_path), circuit_layers="9,3")
    assert config.circuit_layer_list() == [3, 9]
    assert json.loads(config.model_dump_json())["circuit_layers"] == "9,3"
