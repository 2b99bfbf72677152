"""`scircuits compare` end to end on tiny runs: a permuted copy of one SAE matches perfectly; two tiny
architectures with different tokenizers compare on character spans, with ceiling and floors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import scircuits
from scircuits.cli import main
from scircuits.platform.compare.runs import Run, tag_alike
from tests.compare_tiny import permuted_copy, tiny_models, tiny_run


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    model_a, model_b = tiny_models(root)
    return tiny_run(model_a, 2, root / "runs-a"), tiny_run(model_b, 1, root / "runs-b")


def test_a_permuted_copy_of_one_sae_matches_perfectly(tiny_runs, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="scircuits")
    run_a = tiny_runs[0]
    d_sae = json.loads((run_a / "sae" / "cfg.json").read_text())["d_sae"]
    perm = np.random.default_rng(0).permutation(d_sae)
    run_b = permuted_copy(run_a, tmp_path / "permuted", perm)
    out = tmp_path / "cmp"
    main(
        [
            "compare",
            str(run_a),
            str(run_b),
            "--out",
            str(out),
            "--no-train-twins",
            "--permutations",
            "99",
            "--no-progress",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "scircuits.compare" and results["schema_version"] == 2
    (pair,) = results["pairs"]
    c = pair["comparison"]
    assert c["source"] == "stores" and c["alignment"] == "token"
    assert pair["floors"] is None  # one model, layer and site: the run's own floors are the pair's
    # the best pair's contexts are the same tokens on both sides (decoded from the store)
    best = pair["contexts"][0]
    assert best["a"]["contexts"] and best["a"]["contexts"] == best["b"]["contexts"]
    assert c["hungarian"]["above_09"] == 1.0 and c["hungarian"]["mean"] > 0.9999
    assert c["max_a_to_b"]["above_09"] == 1.0 and c["max_b_to_a"]["above_09"] == 1.0
    assert all(perm[p["b"]] == p["a"] for p in c["top_pairs"]) and c["top_pairs"]
    assert c["geometry"]["rsa"] > 0.9999 and c["geometry"]["p_value"] == pytest.approx(1 / 100)
    eff = pair["effect_agreement"]
    assert eff["n_pairs"] == 8 and eff["pearson"] > 0.9999
    # results.json describes its top 10 features: k up to 10
    assert [(t["k"], t["matched_in_top_k"]) for t in pair["top_k"]] == [(5, 5), (10, 10)]
    ref = results["runs"][0]["reference"]
    assert ref["ceiling"] is None and "scircuits train" in ref["note"] and "--seed 1" in ref["note"]
    assert ref["floor_untrained"]["hungarian"]["mean"] < 0.999
    assert ref["floor_rotation"]["d_b"] == results["runs"][0]["d_model"]
    report = (out / "report.md").read_text()
    assert "ceiling A" in report and "floor A" in report and (out / "figures" / "pair0-1.png").is_file()
    printed = capsys.readouterr().out
    assert "mean max corr 1.000, one-to-one 1.000 (A's ceiling" in printed
    labels = [r["label"] for r in results["runs"]]
    assert labels[1] == f"{labels[0].rsplit(' (', 1)[0]} (permuted)" and labels[0] != labels[1]
    assert f"{labels[0]} vs {labels[1]}:" in printed
    assert f"compare: {labels[0]} vs {labels[1]}" in caplog.text  # the progress line
    table = scircuits.load_comparison(out).to_pandas()
    assert list(zip(table["comparison"], table["run_a"], strict=True)) == [
        ("pair", 0),
        ("floor_untrained", 0),
        ("floor_rotation", 0),
        ("floor_untrained", 1),
        ("floor_rotation", 1),
    ]
    assert (table["a"][0], table["b"][0]) == tuple(labels) and table["b"][1] == "untrained"


def test_two_architectures_with_different_tokenizers_compare_on_character_spans(tiny_runs, tmp_path):
    out = tmp_path / "cmp"
    main(
        [
            "compare",
            *map(str, tiny_runs),
            "--out",
            str(out),
            "--limit",
            "24",
            "--permutations",
            "49",
            "--no-progress",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    (pair,) = results["pairs"]
    c = pair["comparison"]
    assert c["source"] == "model" and c["alignment"] == "char-span"
    # the digit-pair tokenizer has fewer tokens; every one of its tokens ends where a character does
    assert 0 < pair["alignment_pairs"] == pair["alignment_tokens_b"] < pair["alignment_tokens_a"]
    assert c["n_tokens"] == pair["alignment_pairs"]
    for run in results["runs"]:
        ref = run["reference"]
        assert ref["ceiling"]["kind"] == "ceiling-seed" and ref["twin_path"].startswith(str(out / "twins"))
        assert ref["floor_untrained"] and ref["floor_rotation"]
    assert -1 <= c["hungarian"]["mean"] <= 1 and c["hungarian"]["n"] > 0
    # two models: the floors in the pair's spaces, on the pair's own tokens and alignment
    floors = pair["floors"]
    run_a, run_b = results["runs"]
    for name, (d_a, d_b) in {
        "a_vs_untrained_b": (run_a["d_sae"], run_b["d_sae"]),
        "a_vs_basis_b": (run_a["d_sae"], run_b["d_model"]),
        "untrained_a_vs_b": (run_a["d_sae"], run_b["d_sae"]),
        "basis_a_vs_b": (run_a["d_model"], run_b["d_sae"]),
    }.items():
        f = floors[name]
        assert (f["d_a"], f["d_b"]) == (d_a, d_b) and f["source"] == "model"
        assert f["n_tokens"] == c["n_tokens"] and f["alignment"] == "char-span"
    report = (out / "report.md").read_text()
    assert "floor (A → B)" in report and "floor (B → A)" in report and "own store, another space" in report
    contexts = pair["contexts"]
    assert contexts and all(side["contexts"] for ctx in contexts for side in (ctx["a"], ctx["b"]))
    assert "alignment: char-span" in (out / "report.md").read_text()
    # a second compare reuses the seed twins it trained
    twin_files = sorted(p.name for p in (out / "twins").iterdir())
    main(
        [
            "compare",
            *map(str, tiny_runs),
            "--out",
            str(out),
            "--limit",
            "8",
            "--permutations",
            "9",
            "--no-progress",
        ]
    )
    assert sorted(p.name for p in (out / "twins").iterdir()) == twin_files


def test_bad_run_directories_fail_with_one_line(tiny_runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tiny_runs[0]), str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "missing" in err and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tiny_runs[0]), str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "causal/results.json and no sae/scircuits.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tiny_runs[0])])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["compare", *map(str, tiny_runs), "--limit", "0"])
    assert exc.value.code == 2 and "--limit 0" in capsys.readouterr().err
    out = tmp_path / "refused"
    with pytest.raises(SystemExit) as exc:
        main(["compare", *map(str, tiny_runs), "--source", "store", "--out", str(out), "--no-progress"])
    assert exc.value.code == 2 and "do not hold the same tokens" in capsys.readouterr().err
    assert not out.exists()  # refused before any work


def test_a_run_without_causal_results_compares_without_causal_agreement(tiny_runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_runs[0], unfinished)
    shutil.rmtree(unfinished / "causal")
    out = tmp_path / "cmp"
    args = ["compare", str(tiny_runs[0]), str(unfinished), "--out", str(out), "--no-train-twins"]
    main([*args, "--permutations", "9", "--no-progress"])
    (pair,) = json.loads((out / "results.json").read_text())["pairs"]
    assert pair["comparison"]["hungarian"]["mean"] > 0.9999  # the same SAE on the same store
    assert pair["effect_agreement"]["n_pairs"] == 0 and pair["top_k"] == []
    assert (
        pair["effect_agreement"]["note"]
        == f"{unfinished}: its causal stage has not finished (no causal/results.json)"
    )
    assert f"None: {unfinished}: its causal stage has not finished" in (out / "report.md").read_text()
    assert "causal agreement is left out" in capsys.readouterr().err


def alike(path: str, seed: int | None) -> Run:
    meta = {} if seed is None else {"seeds": {"seed": seed}}
    return Run(Path(path), {"layer": 2, "site": "resid"}, {"model": "m"}, "sae", None, meta)


def test_runs_of_one_model_and_site_are_told_apart_by_seed_else_by_folder():
    by_seed = [alike("a/x", 0), alike("b/x", 1), alike("c/y", None)]
    tag_alike(by_seed[:2])
    assert [r.label for r in by_seed[:2]] == ["m resid2 (seed 0)", "m resid2 (seed 1)"]
    by_folder = [alike("/r/runs/x", 0), alike("/r/runs-seed1/x", 0), alike("/r/runs/z", None)]
    tag_alike(by_folder)
    assert [r.label for r in by_folder] == [
        "m resid2 (runs/x)",
        "m resid2 (runs-seed1/x)",
        "m resid2 (runs/z)",
    ]
    other = [alike("a/x", 0), Run(Path("b/x"), {"layer": 3}, {"model": "m"}, "sae", None)]
    tag_alike(other)
    assert [r.tag for r in other] == [None, None]
