"""compare and dashboard read the run folder they are given (issue 19): its own sae/ and store, never
the absolute paths results.json recorded; a deleted or damaged SAE, a damaged store, results.json of
the wrong types or absurd nesting are one line and exit code 2; seed twins are keyed by the SAE's
config and the store's identity; a stale comparison no longer blocks the dashboard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scircuits.cli import main
from tests.dashboard_run import compared_run, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


def own_copy(run: Path, dest: Path) -> Path:
    """A copy of ``run`` as `scircuits run` would have written it at ``dest`` (its results.json
    records its own absolute paths)."""
    shutil.copytree(run, dest)
    path = dest / "causal" / "results.json"
    results = json.loads(path.read_text())
    results["config"].update(sae=str(dest / "sae"), store=str(dest / "activations.zarr"))
    path.write_text(json.dumps(results))
    return dest


def refused(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    last = err.splitlines()[-1]  # compare may note what it skipped before it refuses
    assert last.startswith("Error:") and "Traceback" not in err, err
    return last


def compare(a: Path, b: Path, out: Path, capsys) -> dict:
    main(
        [
            "compare",
            str(a),
            str(b),
            "--out",
            str(out),
            "--no-train-twins",
            "--permutations",
            "9",
            "--no-progress",
        ]
    )
    return json.loads((out / "results.json").read_text())


def noise_sae(sae: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(sae / "sae_weights.safetensors"))
    generator = torch.Generator().manual_seed(7)
    for key in ("W_enc", "W_dec"):
        weights[key] = torch.randn(weights[key].shape, generator=generator)
    save_file(weights, str(sae / "sae_weights.safetensors"), metadata={"format": "pt"})


def test_compare_uses_the_sae_of_the_folder_given_not_the_recorded_path(run, tmp_path, capsys):
    original = own_copy(run, tmp_path / "first" / run.name)
    copied = tmp_path / "copied" / run.name
    shutil.copytree(original, copied)  # its results.json still names original/sae
    noise_sae(original / "sae")  # the original's SAE changes later (a rerun, say)
    capsys.readouterr()
    (pair,) = compare(copied, original, tmp_path / "cmp", capsys)["pairs"]
    assert pair["comparison"]["hungarian"]["mean"] < 0.9  # the copy's own SAE against the new one
    err = capsys.readouterr().err
    assert "is not the SAE" in err and "causal agreement is left out" in err  # original's ids are stale

    shutil.rmtree(copied / "sae")
    err = refused(["compare", str(copied), str(original), "--out", str(tmp_path / "o")], capsys)
    assert str(copied / "sae") in err and "does not exist" in err

    damaged = tmp_path / "damaged" / run.name
    shutil.copytree(run, damaged)
    weights = damaged / "sae" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    err = refused(["compare", str(damaged), str(run), "--out", str(tmp_path / "o")], capsys)
    assert str(damaged / "sae") in err and "safetensors" in err
    assert not (tmp_path / "o").exists()


def test_the_recorded_store_is_used_only_when_the_folder_has_none(run, tmp_path, capsys):
    without = tmp_path / "without" / run.name
    shutil.copytree(run, without)
    shutil.rmtree(without / "activations.zarr")
    other = tmp_path / "with" / run.name
    shutil.copytree(run, other)  # compare refreshes the dashboards it compared: never the shared run's
    capsys.readouterr()
    (pair,) = compare(without, other, tmp_path / "cmp", capsys)["pairs"]
    assert pair["comparison"]["hungarian"]["mean"] > 0.9999  # same SAE, same store
    assert "(same store identity)" in capsys.readouterr().err


def test_a_damaged_store_or_results_file_is_one_line_in_compare_and_dashboard(run, tmp_path, capsys):
    store = tmp_path / "store" / run.name
    shutil.copytree(run, store)
    meta = store / "activations.zarr" / "acts" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:100])
    for args in (["compare", str(store), str(run), "--out", str(tmp_path / "o")], ["dashboard", str(store)]):
        assert "metadata of array 'acts' cannot be read" in refused(args, capsys)

    typed = tmp_path / "typed" / run.name
    shutil.copytree(run, typed)
    path = typed / "causal" / "results.json"
    good = json.loads(path.read_text())
    for change, needle in (
        ({"layer": "fifteen"}, "layer"),
        ({"config": ["not", "a", "dict"]}, "config"),
        ({"features": [{"id": "x"}]}, "features"),
    ):
        path.write_text(json.dumps({**good, **change}))
        for args in (
            ["compare", str(typed), str(run), "--out", str(tmp_path / "o")],
            ["dashboard", str(typed)],
        ):
            err = refused(args, capsys)
            assert str(path) in err and needle in err
    path.write_text("[" * 100_000 + "]" * 100_000)
    for args in (["compare", str(typed), str(run), "--out", str(tmp_path / "o")], ["dashboard", str(typed)]):
        assert "nested too deeply" in refused(args, capsys)
    assert not (tmp_path / "o").exists()


def test_seed_twins_are_keyed_by_the_sae_config_and_the_store_not_the_folder_name(run, tmp_path):
    from scircuits.platform.compare import internals
    from scircuits.platform.compare.runs import read_run
    from scircuits.platform.compare.study import CompareOptions, seed_twin
    from scircuits.platform.manager.plugin_set import get_plugins

    same_a = tmp_path / "a" / run.name
    same_b = tmp_path / "b" / run.name
    wider = tmp_path / "c" / run.name
    for dest in (same_a, same_b, wider):
        shutil.copytree(run, dest)
    meta_path = wider / "sae" / "scircuits.json"
    meta = json.loads(meta_path.read_text())
    meta["config_hash"] = "0" * 16  # as if trained with other settings (e.g. --expansion 4)
    meta_path.write_text(json.dumps(meta))
    options = CompareOptions(out=str(tmp_path / "cmp"), train_twins=False)
    core = internals.Core(get_plugins())

    def twin_dir(path: Path) -> str:
        _, note = seed_twin(read_run(path), options, core)
        return note.split("--out ")[1].split()[0]

    assert twin_dir(same_a) == twin_dir(same_b)  # the same SAE config on the same store: one twin
    assert twin_dir(wider) != twin_dir(same_a)  # one name, another SAE: its own twin


def test_a_stale_comparison_is_dropped_with_a_note_not_refused(tmp_path_factory, tmp_path, capsys):
    _, copy, compare_dir, _ = compared_run(tmp_path_factory)
    moved = tmp_path / "moved" / copy.name
    shutil.copytree(copy, moved)  # its dashboard records compare_dir, which compared `copy`
    capsys.readouterr()
    main(["dashboard", str(moved)])
    err = capsys.readouterr().err
    assert f"dropped the comparison {compare_dir}" in err
    recorded = moved / "dashboard" / "comparisons.json"
    assert not recorded.exists() or json.loads(recorded.read_text())["compare_dirs"] == []


def test_dashboard_reads_the_sae_of_the_folder_given(run, tmp_path, capsys):
    copied = own_copy(run, tmp_path / "copied" / run.name)
    moved = tmp_path / "moved" / run.name
    shutil.copytree(copied, moved)  # its results.json names copied/sae
    shutil.rmtree(moved / "sae")
    err = refused(["dashboard", str(moved)], capsys)
    assert "no SAE checkpoint found" in err and str(moved / "sae") in err


def test_a_split_the_benchmark_lacks_is_refused_before_any_twin_is_trained(run, tmp_path, capsys):
    copy = own_copy(run, tmp_path / "copy")
    line = refused(
        ["compare", str(run), str(copy), "--out", str(tmp_path / "c"), "--split", "nosuch", "--no-progress"],
        capsys,
    )
    assert "has no split 'nosuch'" in line
    assert not list(tmp_path.glob("**/*twin*")) and not list(run.parent.glob("**/*twin*"))


def test_too_few_tokens_per_comparison_are_warned(run, tmp_path, capsys):
    # copies on both sides: compare links itself into the runs' dashboards, and the run is shared
    first, second = own_copy(run, tmp_path / "first"), own_copy(run, tmp_path / "second")
    args = ["compare", str(first), str(second), "--out", str(tmp_path / "c"), "--no-train-twins"]
    main([*args, "--permutations", "9", "--max-tokens", "50", "--no-progress"])
    assert "warning: --max-tokens 50: correlations over so few tokens are noise" in capsys.readouterr().err
