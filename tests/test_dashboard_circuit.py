"""A run that holds a circuit: a circuit over the tiny run's own SAE (resid2) and two random SAEs
(resid0, mlp1), written into RUN/circuit, drawn by `scircuits dashboard RUN` (checked as files and in
Chromium, skipped as the other browser tests are when Chromium or Playwright is missing) and given a
section in the run's report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from scircuits.cli import main
from scircuits.platform.circuit.results import CurvePoint, read_circuit
from scircuits.platform.circuit.stage import run_circuit
from scircuits.platform.config import CircuitConfig
from scircuits.platform.dashboard import build_dashboard
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.report.build import write_report
from scircuits.platform.report.circuit import verdict
from scircuits.platform.train.checkpoint import save_sae
from scircuits.testing.published import random_sae
from tests.dashboard_run import read_js, tiny_run
from tests.test_dashboard_browser import Watched, browser  # noqa: F401  (the browser fixture)

_SITE: dict[str, Path] = {}


def circuit_into(run: Path, out: Path, sae_seed: int = 0) -> Path:
    """A circuit over random SAEs at resid0 and mlp1 (decoders scaled down, so that the run's own SAE at
    resid2 has nodes in it) and the run's own SAE at resid2."""
    config = json.loads((run / "causal" / "results.json").read_text())["config"]
    d_in = json.loads((run / "sae" / "cfg.json").read_text())["d_in"]
    specs = []
    for k, (layer, site) in enumerate([(0, "resid"), (1, "mlp")]):
        sae = random_sae(get_plugins(), "relu", d_in, 2 * d_in, seed=sae_seed + k, noise=0.3)
        with torch.no_grad():
            sae.W_dec.mul_(0.15)
        meta = {"store": {"attrs": {"model": config["model"], "layer": layer, "site": site}}}
        specs.append(str(save_sae(out.parent / f"sae-{out.name}-{k}", sae, cfg={}, scircuits_meta=meta)))
    cfg = CircuitConfig(
        model=config["model"],
        benchmark="arithmetic",
        sae=[*specs, str(run / "sae")],
        limit=8,
        node_selection="global",
        nodes=24,
        sizes=[4],
        random_circuits=1,
        exact_top=2,
        bootstrap=100,
        out=str(out),
        progress=False,
    )
    return run_circuit(cfg, get_plugins())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A copy of the tiny run with RUN/circuit, its dashboard rebuilt (the shared run stays as it is)."""
    if "site" not in _SITE:
        run = tmp_path_factory.mktemp("circuit-run") / "run"
        shutil.copytree(tiny_run(tmp_path_factory), run)
        circuit_into(run, run / "circuit")
        build_dashboard(run, get_plugins())
        _SITE["site"] = run / "dashboard"
    return _SITE["site"]


def test_the_circuit_page_holds_every_node_and_links_only_pages_of_the_runs_sae(site):
    run = site.parent
    results = read_circuit(run / "circuit")
    graph = json.loads((run / "circuit" / "graph.json").read_text())
    data = read_js(site / "data" / "circuit.js")
    assert {n["id"] for n in data["nodes"]} == {n["node_id"] for n in graph["nodes"]}
    assert len(data["edges"]) == len(graph["links"])
    assert {s["name"]: s["linked"] for s in data["sites"]} == {"resid0": False, "mlp1": False, "resid2": True}
    pages = {int(p.stem) for p in (site / "features").glob("*.html")}
    for node in data["nodes"]:
        expected = node["kind"] == "feature" and node["site"] == "resid2" and node["feature"] in pages
        assert (node["href"] is not None) == expected, node
        assert (node["why"] is None) == (expected or node["kind"] == "metric"), node
    assert any(n["href"] for n in data["nodes"]), "the circuit keeps no node with a page: nothing to check"
    assert any(n["site"] != "resid2" and n["kind"] == "feature" for n in data["nodes"])
    manifest = json.loads((site / "manifest.json").read_text())
    assert manifest["circuit"] == str(run / "circuit")
    for name in ("assets/vendor/cytoscape.min.js", "assets/vendor/cytoscape.LICENSE", "assets/circuit.js"):
        assert (site / name).stat().st_size > 0
    assert 'href="circuit.html"' in (site / "index.html").read_text()
    assert f"{len(results.nodes)} nodes" in (site / "circuit.html").read_text()


def test_nodes_link_by_the_weights_the_circuit_used_not_by_what_its_path_holds_now(site):
    """The circuit records each local SAE's weights hash: a retrained run SAE (other weights at the
    same path) no longer gets the old circuit's nodes, and a relative path read from another folder
    still links."""
    from scircuits.platform.dashboard.sources import read_run, site_of_run_sae

    run = site.parent
    results = read_circuit(run / "circuit")
    inputs = read_run(run, get_plugins())
    ours = next(s for s in results.sites if s.name == "resid2")
    assert ours.sae_sha256 is not None and site_of_run_sae(results, inputs) == "resid2"
    retrained = results.model_copy(
        update={
            "sites": [
                s.model_copy(update={"sae_sha256": "0" * 64}) if s is ours else s for s in results.sites
            ]
        }
    )
    assert site_of_run_sae(retrained, inputs) is None
    elsewhere = results.model_copy(
        update={
            "sites": [s.model_copy(update={"sae": "relative/sae"}) if s is ours else s for s in results.sites]
        }
    )
    assert site_of_run_sae(elsewhere, inputs) == "resid2"


def test_a_site_rebuilt_elsewhere_without_the_circuit_keeps_no_stale_page(site, tmp_path):
    run = site.parent
    other = tmp_path / "run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("circuit", "dashboard"))
    out = other / "dashboard"
    shutil.copytree(site, out)  # a site that drew a circuit, rebuilt for its copied run that has none
    build_dashboard(other, get_plugins())  # (another run's site elsewhere is refused, not rebuilt)
    assert not (out / "circuit.html").exists() and not (out / "data" / "circuit.js").exists()
    assert "circuit.html" not in (out / "index.html").read_text()


def test_a_circuit_that_is_not_one_or_of_another_model_is_refused_in_one_line(site, tmp_path, capsys):
    run = site.parent
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", str(run), "--circuit", str(tmp_path), "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results.json there" in err[0]
    assert not (tmp_path / "s").exists()

    other = tmp_path / "other"
    shutil.copytree(run / "circuit", other)
    data = json.loads((other / "results.json").read_text())
    data["model"] = "smollm2-135m"
    (other / "results.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", str(run), "--circuit", str(other), "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give a circuit of the run's model" in err[0]
    assert not (tmp_path / "s").exists()


SHOWN_NODES = "SC_CY.nodes('.feature, .error').filter(n => n.visible()).length"


def shown_nodes(page) -> int:
    return page.evaluate(f"() => {SHOWN_NODES}")


def wait_shown(page, count: int) -> None:
    """Wait (up to 10 s) until the graph shows ``count`` nodes: a key press on the slider reaches the
    page's input handler asynchronously on a loaded machine. Fails with the count actually shown."""
    try:
        page.wait_for_function(f"() => {SHOWN_NODES} === {count}", timeout=10_000)
    except Exception:
        assert shown_nodes(page) == count


def test_the_graph_loads_cleanly_filters_by_threshold_and_links_to_feature_pages(browser, site):  # noqa: F811
    data = read_js(site / "data" / "circuit.js")
    graph = json.loads((site.parent / "circuit" / "graph.json").read_text())
    watched = Watched(browser)
    try:
        page = watched.page
        warnings: list[str] = []  # Cytoscape reports style mistakes as console warnings
        page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
        watched.open(site / "circuit.html")
        page.wait_for_function("() => window.SC_CY !== undefined")
        drawn = page.evaluate("() => SC_CY.nodes('.feature, .error, .metric').length")
        assert drawn == len(graph["nodes"])
        assert page.evaluate("() => SC_CY.edges().length") == len(graph["links"])
        assert page.locator("#nodes tbody tr").count() == len(graph["nodes"]) - 1  # the metric has no row
        effects = sorted({abs(n["effect"]) for n in data["nodes"] if n["kind"] != "metric"})
        total = len(graph["nodes"]) - 1
        assert shown_nodes(page) == total
        assert page.locator("#shown").text_content() == f"{total} of {total} nodes shown"

        slider = page.get_by_label("Hide nodes with |effect| below")
        for _ in range(3):
            slider.press("ArrowRight")
        expected = sum(abs(n["effect"]) >= effects[3] for n in data["nodes"] if n["kind"] != "metric")
        assert 0 < expected < total
        wait_shown(page, expected)
        assert page.locator("#nodes tbody tr:not([hidden])").count() == expected
        assert page.locator("#shown").text_content() == f"{expected} of {total} nodes shown"
        kept = {n["id"] for n in data["nodes"] if n["kind"] == "metric" or abs(n["effect"]) >= effects[3]}
        visible_edges = sum(e["source"] in kept and e["target"] in kept for e in data["edges"])
        assert page.evaluate("() => SC_CY.edges().filter(e => e.visible()).length") == visible_edges
        assert page.locator("#edges tbody tr:not([hidden])").count() == visible_edges
        slider.press("Home")
        wait_shown(page, total)

        label = page.evaluate("() => SC_CY.edges()[0].style('label')")
        assert label == page.evaluate("() => SC.fmt(SC_CY.edges()[0].data('weight'))") and label != ""

        linked = next(n for n in data["nodes"] if n["href"])
        box = page.locator("#graph").bounding_box()
        at = page.evaluate(f"() => SC_CY.getElementById({json.dumps(linked['id'])}).renderedPosition()")
        with page.expect_navigation():
            page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
        page.wait_for_selector("#histogram")
        assert Path(unquote(urlparse(page.url).path)) == (site / linked["href"]).resolve()
        assert page.locator("h1").text_content() == f"Feature {linked['feature']}"

        watched.open(site / "circuit.html")
        row_link = page.locator("#nodes tbody").get_by_role("link", name=linked["label"])
        target = Path(unquote(urlparse(row_link.evaluate("a => a.href")).path))
        assert target == (site / linked["href"]).resolve()
        assert page.locator("#nodes tbody a").count() == sum(1 for n in data["nodes"] if n["href"])
        assert watched.problems == [] and warnings == []
    finally:
        watched.page.close()


def test_the_run_report_gets_a_circuit_section_with_figure_table_and_verdict(site):
    run = site.parent
    results = read_circuit(run / "circuit")
    write_report([run], get_plugins())
    md = (run / "report.md").read_text()
    section = md[md.index("\n## Circuit\n") :]
    assert "![The circuit" in section and (run / "figures" / "circuit.png").stat().st_size > 1000
    assert section.count("\n| ") == 1 + len(results.curves)  # header + one row per circuit size
    whole = next(p for p in results.curves if p.size == len(results.nodes))
    assert verdict(whole) in section
    assert "[Open the interactive graph](dashboard/circuit.html)" in section
    assert 'href="dashboard/circuit.html"' in (run / "report.html").read_text()


def point(f: float, ci: list[float], r: float) -> CurvePoint:
    return CurvePoint(
        size=5,
        faithfulness=f,
        faithfulness_ci=ci,
        completeness=None,
        completeness_ci=None,
        random_draws=3,
        random_faithfulness=r,
    )


@pytest.mark.parametrize(
    "f,ci,r,words",
    [
        (0.0, [0.0, 0.0], 0.0, "Negative result: at 5 nodes the circuit is no more faithful than random"),
        (0.1, [0.0, 0.3], 0.2, "Negative result"),
        (0.0, [0.0, 0.0], -0.004, "Negative result: at 5 nodes the circuit carries none of the behaviour"),
        (0.5, [0.1, 0.9], 0.2, "not distinguishable from chance"),
        (0.8, [0.6, 0.9], 0.2, "more faithful than random circuits of its size"),
        (float("nan"), [], 0.2, "undefined"),
    ],
)
def test_the_verdict_states_a_negative_result_plainly(f, ci, r, words):
    assert words in verdict(point(f, ci, r))


def test_run_with_circuit_saes_finds_reports_and_draws_the_circuit_and_resumes(site, tmp_path, caplog):
    """`scircuits run --circuit-sae A,B`: the circuit stage writes RUN/circuit after the study, the
    report gets its section, the dashboard its page; run again, every stage is up to date; without
    the flag the plan has no circuit stage and the other stages keep their keys."""
    from scircuits.platform.pipeline.run import plan
    from scircuits.platform.pipeline.state import PipelineState

    base = site.parent
    model = json.loads((base / "causal" / "results.json").read_text())["config"]["model"]
    specs = [str(p) for p in sorted(base.glob("sae-circuit-*"))]
    assert len(specs) == 2  # the random resid0 and mlp1 SAEs the fixture made
    args = [
        "run", "--model", model, "--layer", "2", "--limit", "8", "--collect-limit", "40",
        "--train-tokens", "4000", "--train-batch-size", "512", "--expansion", "2", "--top-k", "1,4",
        "--random-controls", "2", "--exact-top", "3", "--bootstrap", "100",
        "--out", str(tmp_path / "runs"), "--no-progress", "--circuit-sae", ",".join(specs),
    ]  # fmt: skip
    main(args)
    (run,) = list((tmp_path / "runs").iterdir())
    results = read_circuit(run / "circuit")
    assert [s.name for s in results.sites] == ["resid0", "mlp1", "resid2"]
    assert results.sites[2].sae == str(run / "sae") and results.n_selection + results.n_evaluation == 8
    stages = PipelineState(run).data.stages
    assert stages["circuit"].completed_key is not None
    assert "\n## Circuit\n" in (run / "report.md").read_text()
    assert (run / "dashboard" / "circuit.html").is_file()

    caplog.clear()
    with caplog.at_level("INFO"):
        main(args)
    said = caplog.text
    for name in ("collect", "train", "ablate", "circuit", "report"):
        assert f"{name}: up to date" in said, name

    with_circuit = plan(with_circuit_config(run, specs), get_plugins())
    without = plan(with_circuit_config(run, []), get_plugins())
    assert "circuit" in with_circuit.keys and "circuit" not in without.keys
    assert all(without.keys[k] == with_circuit.keys[k] for k in ("collect", "train", "ablate"))


def with_circuit_config(run: Path, saes: list[str]):
    from scircuits.platform.config import RunConfig
    from scircuits.platform.pipeline.state import PipelineState

    recorded = dict(PipelineState(run).data.run_config or {})
    recorded["circuit_sae"] = saes
    return RunConfig.model_validate(recorded)


def test_positions_kept_show_as_a_table_per_node_that_follows_the_slider(browser, site, tmp_path):  # noqa: F811
    """A circuit with positions kept (results.json's position_tokens and by_position, written here
    over the tiny run's circuit: the arithmetic prompts differ in length, so the command would refuse
    kept positions on them) gets the "Effects by position" table: one column per position with its
    index and token, one row per node with its values, hidden with the node by the slider."""
    from scircuits.platform.circuit.results import PositionToken, write_circuit

    run = tmp_path / "run"
    shutil.copytree(site.parent, run, ignore=shutil.ignore_patterns("dashboard"))
    results = read_circuit(run / "circuit")
    tokens = [
        PositionToken(index=0, token="<bos>", tokens=["<bos>"], distinct=1),
        PositionToken(index=1, token=None, tokens=["7", "9", "1"], distinct=3),
        PositionToken(index=2, token="+", tokens=["+"], distinct=1),
    ]
    shares = (0.0, 0.75, 0.25)
    nodes = [n.model_copy(update={"by_position": [n.effect * s for s in shares]}) for n in results.nodes]
    write_circuit(run / "circuit", results.model_copy(update={"nodes": nodes, "position_tokens": tokens}))
    build_dashboard(run, get_plugins())
    site_dir = run / "dashboard"
    data = read_js(site_dir / "data" / "circuit.js")
    assert [p["label"] for p in data["positions"]] == ["'<bos>'", "'7'|'9'|'1' (3)", "'+'"]
    watched = Watched(browser)
    try:
        page = watched.page
        watched.open(site_dir / "circuit.html")
        page.wait_for_function("() => window.SC_CY !== undefined")
        assert page.locator("#positions-section").is_visible()
        heads = page.locator("#positions thead th").all_text_contents()
        assert heads == ["Node", "0 '<bos>'", "1 '7'|'9'|'1' (3)", "2 '+'"]
        assert page.locator("#positions tbody tr").count() == len(nodes)
        first = nodes[0]
        row = page.locator(f'#positions tbody tr[data-id="{first.id}"] td').all_text_contents()
        expected = page.evaluate(f"() => {json.dumps(first.by_position)}.map(v => SC.fmt(v))")
        assert row == expected
        effects = sorted({abs(n.effect) for n in nodes})
        slider = page.get_by_label("Hide nodes with |effect| below")
        for _ in range(3):
            slider.press("ArrowRight")
        shown = sum(abs(n.effect) >= effects[3] for n in nodes)
        wait_shown(page, shown)
        assert page.locator("#positions tbody tr:not([hidden])").count() == shown
        assert watched.problems == []
    finally:
        watched.page.close()


def test_positions_summed_leave_the_positions_table_hidden(site):
    assert read_js(site / "data" / "circuit.js")["positions"] is None
    assert '<section id="positions-section" hidden>' in (site / "circuit.html").read_text()
