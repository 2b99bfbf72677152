"""`scircuits run` orchestration: stage skipping, config-hash invalidation, resume, early weights check.

The stages are replaced by fakes that write the artifacts' completion markers, so these tests
check the pipeline's decisions alone, in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import scircuits.platform.collect.collection as collect_module
import scircuits.platform.pipeline.run as pipeline_run
from scircuits.platform.causal.results import RESULTS_FILE
from scircuits.platform.common.artifacts import write_marker
from scircuits.platform.config import RunConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.pipeline.run import plan
from scircuits.platform.pipeline.run import run_pipeline as run_with
from scircuits.platform.pipeline.stages import STAGES
from scircuits.platform.train.checkpoint import META_FILE, WEIGHTS_FILE
from scircuits.store.synthetic import synthetic_attrs, write_synthetic_store


def run_pipeline(config):
    return run_with(config, get_plugins())


class FakeStages:
    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        self.resumed: list[bool] = []
        self.fail_train = False
        fakes = {
            "collect": self.collect,
            "train": self.train,
            "ablate": self.ablate,
            "circuit_collect": self.circuit,
            "circuit_train": self.circuit,
            "circuit": self.circuit,
            "report": self.report,
        }
        for stage in STAGES:
            fake = fakes[stage.name]
            monkeypatch.setattr(
                stage, "run", lambda config, run_dir, plugins, resume, f=fake: f(config, run_dir, resume)
            )
        monkeypatch.setattr(pipeline_run, "check_weights_available", lambda adapter, model_path: None)

    def circuit(self, config, run_dir, resume):
        self.calls.append("circuit")  # only with --circuit-sae (tests/test_dashboard_circuit.py runs it)

    def collect(self, config, run_dir, resume):
        self.calls.append("collect")
        write_synthetic_store(
            config.out,
            n_examples=3,
            d_model=4,
            attrs={**synthetic_attrs(), "config_hash": config.config_hash()},
        )
        return Path(config.out)

    def train(self, config, run_dir, resume):
        self.calls.append("train")
        self.resumed.append(resume)
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        if self.fail_train:
            write_marker(out, "sae", config.config_hash())
            (out / "training_state").mkdir()
            raise KeyboardInterrupt  # killed half-way
        save_file({"w": torch.zeros(1)}, str(out / WEIGHTS_FILE))  # a whole (tiny) safetensors file
        (out / META_FILE).write_text(json.dumps({"complete": True, "config_hash": config.config_hash()}))
        return out

    def ablate(self, config, run_dir, resume):
        self.calls.append("ablate")
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULTS_FILE).write_text(json.dumps({"config_hash": config.config_hash()}))
        return out

    def report(self, config, run_dir, resume):
        self.calls.append("report")
        for name in ("report.md", "report.html"):
            (run_dir / name).write_text("report")
        return []


@pytest.fixture
def stages(monkeypatch):
    return FakeStages(monkeypatch)


def config(tmp_path, **overrides) -> RunConfig:
    return RunConfig(out=str(tmp_path / "runs"), progress=False, **overrides)


def test_run_directory_is_named_after_model_benchmark_site_and_layer(tmp_path):
    the_plan = plan(config(tmp_path, layer=7, site="mlp"), get_plugins())
    assert the_plan.run_dir == tmp_path / "runs" / "smollm2-135m__arithmetic__mlp7"
    assert (
        plan(config(tmp_path), get_plugins()).run_dir.name == "smollm2-135m__arithmetic__resid15"
    )  # the adapter's default


def test_a_model_named_by_a_long_folder_path_keeps_the_run_directory_name_short():
    from scircuits.platform.pipeline.run import run_dir_name

    deep = "hf:/" + "/".join(["a-rather-long-folder-name"] * 12) + "/tiny-model"
    name = run_dir_name(deep, "arithmetic", "resid", 2)
    assert len(name) < 120 and name.endswith("__arithmetic__resid2") and "tiny-model-" in name
    assert name != run_dir_name(deep.replace("tiny", "tinx"), "arithmetic", "resid", 2)


def test_run_directory_names_the_benchmark_prompt_mode(tmp_path):
    names = [
        plan(config(tmp_path, benchmark=name, benchmark_options=options), get_plugins()).run_dir.name
        for name, options in (("gsm8k", {}), ("gsm8k", {"cot": "gold"}), ("math", {"cot": "none"}))
    ]
    assert names == [
        "smollm2-135m__gsm8k-cot-none__resid15",
        "smollm2-135m__gsm8k-cot-gold__resid15",
        "smollm2-135m__math-cot-none__resid15",
    ]


def test_collection_and_evaluation_use_disjoint_splits_and_enough_examples(tmp_path):
    the_plan = plan(config(tmp_path, limit=50, collect_limit=900), get_plugins())
    assert (the_plan.collect.split, the_plan.ablate.split) == ("train", "test")
    # arithmetic generates n_examples per split (a prefix of any larger n): each stage asks for enough
    assert the_plan.collect.benchmark_options["n_examples"] == 900
    assert the_plan.ablate.benchmark_options["n_examples"] == 200  # the benchmark's default covers 50
    assert plan(config(tmp_path, limit=300), get_plugins()).ablate.benchmark_options["n_examples"] == 300
    chosen = plan(config(tmp_path, benchmark_options={"n_examples": 1000}), get_plugins())
    assert (
        chosen.collect.benchmark_options["n_examples"]
        == chosen.ablate.benchmark_options["n_examples"]
        == 1000
    )


def test_the_default_stages_get_the_examples_they_ask_for(tmp_path):
    the_plan = plan(config(tmp_path), get_plugins())
    for stage in (the_plan.collect, the_plan.ablate):
        benchmark = get_plugins().benchmarks.get(stage.benchmark)
        examples = list(benchmark.examples(stage.split, stage.limit, stage.seed, stage.benchmark_options))
        assert len(examples) == stage.limit


def test_impossible_benchmark_options_stop_the_run_before_any_work(tmp_path, stages):
    with pytest.raises(ConfigError, match="distinct test problems"):
        run_pipeline(config(tmp_path, limit=5000))
    assert stages.calls == []


def test_a_complete_run_is_skipped_entirely(tmp_path, stages):
    run_dir = run_pipeline(config(tmp_path))
    assert stages.calls == ["collect", "train", "ablate", "report"]
    stages.calls.clear()
    assert run_pipeline(config(tmp_path)) == run_dir
    assert stages.calls == []


def test_a_relative_out_is_the_same_run_as_its_absolute_spelling(tmp_path, stages, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = run_pipeline(RunConfig(out="runs", progress=False))
    assert run_dir == tmp_path / "runs" / run_dir.name and run_dir.is_absolute()
    stages.calls.clear()
    assert run_pipeline(config(tmp_path)) == run_dir
    assert stages.calls == []


@pytest.mark.parametrize(
    "change, redone",
    [
        ({"exact_top": 3}, ["ablate", "report"]),
        ({"top_k": [1, 2]}, ["ablate", "report"]),
        ({"train_tokens": 5000}, ["train", "ablate", "report"]),
        ({"sae": "relu"}, ["train", "ablate", "report"]),
        ({"collect_limit": 300}, ["collect", "train", "ablate", "report"]),
    ],
)
def test_a_changed_flag_redoes_the_stages_it_affects_and_those_after(tmp_path, stages, change, redone):
    run_pipeline(config(tmp_path))
    stages.calls.clear()
    run_pipeline(config(tmp_path, **change))
    assert stages.calls == redone
    stages.calls.clear()
    run_pipeline(config(tmp_path, **change))
    assert stages.calls == []


def test_volatile_flags_redo_nothing(tmp_path, stages):
    run_pipeline(config(tmp_path))
    stages.calls.clear()
    run_pipeline(RunConfig(out=str(tmp_path / "runs"), progress=True))
    assert stages.calls == []


def test_stale_artifacts_are_moved_aside_not_deleted_before_a_stage_is_redone(tmp_path, stages):
    run_dir = run_pipeline(config(tmp_path))
    (run_dir / "sae" / "leftover.txt").write_text("from the old SAE")
    run_pipeline(config(tmp_path, train_tokens=5000))
    assert not (run_dir / "sae" / "leftover.txt").exists()
    [aside] = run_dir.glob("sae.superseded-*")
    assert (aside / "leftover.txt").read_text() == "from the old SAE"
    assert (aside / WEIGHTS_FILE).is_file()


@pytest.mark.parametrize("bookkeeping", [".scircuits-lock", ".scircuits-group-lock"])
def test_a_stage_folder_with_its_lock_file_is_moved_aside_whole(tmp_path, stages, bookkeeping):
    """A real stage leaves its lock file behind; redoing the stage moves the folder aside, lock file
    and all (it used to be put back, and removing the emptied folder then failed)."""
    run_dir = run_pipeline(config(tmp_path))
    for stage in ("sae", "causal"):
        (run_dir / stage / bookkeeping).write_text("")
    run_pipeline(config(tmp_path, train_tokens=5000))
    for stage in ("sae", "causal"):
        [aside] = run_dir.glob(f"{stage}.superseded-*")
        assert (aside / bookkeeping).exists()
    assert (run_dir / "sae" / WEIGHTS_FILE).is_file()


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name not in ("pipeline.json", ".scircuits-lock")
    }


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"sae_hparams": {"foo": 1}}, "foo"),
        ({"ablation": "nosuch"}, "nosuch"),
        ({"sae_hparams": {"k": 100000}}, "k=100000"),
        ({"top_k": [1, 100000]}, "--top-k 100000"),
    ],
)
def test_a_bad_setting_for_an_existing_run_touches_nothing(tmp_path, stages, bad, message):
    run_dir = run_pipeline(config(tmp_path))
    before = snapshot(run_dir)
    stages.calls.clear()
    from scircuits.errors import ScircuitsError

    with pytest.raises(ScircuitsError, match=message) as caught:
        run_pipeline(config(tmp_path, **bad))
    assert "\n" not in str(caught.value)
    assert stages.calls == [] and snapshot(run_dir) == before
    assert not list(run_dir.glob("*.superseded-*"))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_lost_pipeline_json_keeps_complete_matching_artifacts(tmp_path, stages, damage):
    run_dir = run_pipeline(config(tmp_path))
    (run_dir / "sae" / "mine.txt").write_text("user file")
    before = snapshot(run_dir)
    state = run_dir / "pipeline.json"
    if damage == "missing":
        state.unlink()
    else:
        state.write_text(state.read_text()[:30])
    stages.calls.clear()
    run_pipeline(config(tmp_path))
    assert stages.calls == ["report"]  # only the pages, which record no identity, are redone
    after = snapshot(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("report")} == {
        k: v for k, v in before.items() if not k.startswith("report")
    }


def test_a_second_run_on_one_directory_is_refused(tmp_path, stages):
    from scircuits.platform.common.artifacts import ArtifactError, FolderLock

    run_dir = plan(config(tmp_path), get_plugins()).run_dir
    with FolderLock(run_dir, "run"), pytest.raises(ArtifactError, match="another scircuits process"):
        run_pipeline(config(tmp_path))
    assert stages.calls == []


def test_an_interrupted_training_is_resumed_not_restarted(tmp_path, stages):
    stages.fail_train = True
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(tmp_path))
    assert stages.calls == ["collect", "train"] and stages.resumed == [False]
    stages.fail_train = False
    stages.calls.clear()
    run_dir = run_pipeline(config(tmp_path))
    assert stages.calls == ["train", "ablate", "report"]
    assert stages.resumed == [False, True]
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert state["stages"]["train"]["completed_key"] == state["stages"]["train"]["started_key"]


def test_unavailable_weights_stop_the_run_before_any_work(tmp_path, monkeypatch, capsys):
    from scircuits.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(collect_module, "collect", lambda config, plugins: pytest.fail("collect ran"))
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--model", "phi-2", "--benchmark", "logic", "--out", str(out)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "microsoft/phi-2" in message
    for way in ("--model-path", "Hugging Face cache", "--remote"):
        assert way in message
    assert "Traceback" not in message
    assert not out.exists()


def test_a_moved_run_directory_and_weights_folder_skip_every_stage(tmp_path, stages):
    weights = tmp_path / "weights"
    weights.mkdir()
    run_dir = run_pipeline(config(tmp_path, model_path=str(weights)))
    assert stages.calls == ["collect", "train", "ablate", "report"]
    moved_weights, moved_out = tmp_path / "elsewhere" / "weights", tmp_path / "elsewhere" / "runs"
    moved_out.mkdir(parents=True)
    weights.rename(moved_weights)
    run_dir.rename(moved_out / run_dir.name)
    stages.calls.clear()
    moved = RunConfig(out=str(moved_out), progress=False, model_path=str(moved_weights))
    assert run_pipeline(moved) == moved_out / run_dir.name
    assert stages.calls == []


def test_each_stage_is_a_unit_in_one_ordered_list(tmp_path):
    assert [s.name for s in STAGES] == [
        "collect", "train", "ablate", "circuit_collect", "circuit_train", "circuit", "report"
    ]  # fmt: skip
    the_plan = plan(config(tmp_path), get_plugins())
    # the circuit is an analysis asked for with --circuit-sae or --circuit-layers: without them the
    # run has none of its stages
    assert list(the_plan.keys) == ["collect", "train", "ablate", "report"]
    for stage in (s for s in STAGES if s.name in the_plan.keys):
        assert not stage.complete(the_plan.run_dir, the_plan.configs[stage.name])
        if stage.Config is not None:
            assert isinstance(the_plan.configs[stage.name], stage.Config)


@pytest.mark.parametrize("inside", ["", "causal"])
def test_an_out_that_is_or_is_inside_a_run_directory_is_refused(tmp_path, stages, inside):
    from scircuits.errors import ScircuitsError

    run_dir = run_pipeline(config(tmp_path))
    before = snapshot(run_dir)
    stages.calls.clear()
    with pytest.raises(ScircuitsError, match="the folder runs are made in: give") as caught:
        run_pipeline(RunConfig(out=str(run_dir / inside), progress=False))
    assert "\n" not in str(caught.value) and str(run_dir.parent) in str(caught.value)
    assert stages.calls == [] and snapshot(run_dir) == before


def test_a_missing_circuit_sae_is_refused_before_any_stage(tmp_path, stages):
    from scircuits.errors import ScircuitsError

    missing = str(tmp_path / "no-such-sae")
    with pytest.raises(ScircuitsError, match=f"--circuit-sae {missing}: no such folder"):
        run_pipeline(config(tmp_path, circuit_sae=[missing]))
    assert stages.calls == [] and not (tmp_path / "runs").exists()
