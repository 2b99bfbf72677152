"""The circuit as the API returns it and reads it back (``scircuits.circuit``, ``load_circuit``): a
one-line repr, an HTML table, its tables as DataFrames, its folder; `scircuits circuit --json` prints
it; results.json on disk keeps its format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import scircuits
from scircuits.cli import main
from scircuits.platform.circuit.results import CircuitResults
from scircuits.platform.circuit.stage import run_circuit
from scircuits.platform.contract import jsonvalues
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.testing import tiny_loaded_model
from tests.test_circuit import config, saved_saes


@pytest.fixture(scope="module")
def circuit_dir(tmp_path_factory) -> Path:
    tiny = tiny_loaded_model("smollm2-135m")
    folder = tmp_path_factory.mktemp("api-circuit")
    specs = saved_saes(folder, tiny.d_model)
    return run_circuit(config(folder, specs), get_plugins(), loaded=tiny)


def test_load_circuit_reads_the_folder_into_a_result_like_the_others(circuit_dir):
    circuit = scircuits.load_circuit(circuit_dir)
    assert isinstance(circuit, scircuits.CircuitResult) and isinstance(circuit, CircuitResults)
    assert circuit.path == str(circuit_dir)
    text = repr(circuit)
    assert text.startswith("CircuitResult(path=") and "\n" not in text and len(text) < 300
    assert f"nodes={len(circuit.nodes)}" in text and "resid0" in text
    html = circuit._repr_html_()
    assert "<table>" in html and "faithfulness" in html and circuit.nodes[0].id in html
    nodes = circuit.to_pandas()
    assert list(nodes["id"]) == [n.id for n in circuit.nodes] and "effect" in nodes
    assert len(circuit.to_pandas("edges")) == len(circuit.edges)
    curves = circuit.to_pandas("curves")
    assert list(curves["size"]) == [p.size for p in circuit.curves] and "faithfulness" in curves
    assert circuit.point() is not None and circuit.point().size == len(circuit.nodes)
    with pytest.raises(scircuits.ConfigError, match=r"no table 'nope'; its tables: nodes, edges, curves"):
        circuit.table("nope")
    assert scircuits.load_circuit(circuit_dir / "results.json").model_dump() == circuit.model_dump()
    (circuit_dir.parent / "circuit").symlink_to(circuit_dir)  # a run directory holding circuit/
    in_run = scircuits.load_circuit(circuit_dir.parent)
    assert in_run.path == str(circuit_dir.parent / "circuit")
    assert in_run.model_dump(exclude={"path"}) == circuit.model_dump(exclude={"path"})


def test_results_json_keeps_its_format(circuit_dir):
    on_disk = json.loads((circuit_dir / "results.json").read_text())
    assert "path" not in on_disk and on_disk["format"] == "scircuits.circuit"
    loaded = scircuits.load_circuit(circuit_dir).model_dump(mode="python")
    assert {k: v for k, v in loaded.items() if k != "path"}.keys() == on_disk.keys()


def test_load_circuit_refuses_what_is_no_circuit_in_one_line(tmp_path):
    with pytest.raises(scircuits.ConfigError, match=r"results\.json does not exist: give the --out folder"):
        scircuits.load_circuit(tmp_path)
    (tmp_path / "results.json").write_text('{"format": "scircuits.compare"}')
    with pytest.raises(scircuits.ConfigError, match=r"is not a scircuits circuit"):
        scircuits.load_circuit(tmp_path)
    (tmp_path / "results.json").write_text('{"format": "scircuits.circuit", "nodes": 3}')
    with pytest.raises(scircuits.ConfigError, match=r"does not match the circuit schema") as raised:
        scircuits.load_circuit(tmp_path)
    assert "\n" not in str(raised.value)
    with pytest.raises(scircuits.ConfigError, match=r"load_circuit: the circuit folder must be a path"):
        scircuits.load_circuit(None)


def test_circuit_json_prints_the_result(circuit_dir, tmp_path, monkeypatch, capsys):
    """`scircuits circuit --json` prints what load_circuit reads (the stage itself stubbed: the
    circuit above is its output)."""
    import scircuits.platform.circuit.stage as stage

    monkeypatch.setattr(stage, "run_circuit", lambda config, plugins: circuit_dir)
    specs = [str(tmp_path / "a"), str(tmp_path / "b")]
    main(["circuit", *[f"--sae={s}" for s in specs], "--out", str(tmp_path / "c"), "--json"])
    printed = json.loads(capsys.readouterr().out)
    expected = jsonvalues.dumps(scircuits.load_circuit(circuit_dir).model_dump(mode="python"))
    assert printed == json.loads(expected) and printed["path"] == str(circuit_dir)
    main(["circuit", *[f"--sae={s}" for s in specs], "--out", str(tmp_path / "c")])
    assert capsys.readouterr().out.startswith(f"{circuit_dir / 'results.json'}: ")
