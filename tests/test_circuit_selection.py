"""The circuit's node selection: globally (the top nodes over every site) or per site (the top nodes of
each site, so that every site has nodes), the curves' circuits and their matched random circuits
(per site: as many random nodes at each site as the top circuit has there), the command end to end
on the tiny model with either selection, the fast path against the eager one, the config's key and
the one-line refusal of a bad selection."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from scircuits.platform.causal.statistics import Bootstrap
from scircuits.platform.circuit import attribution as A
from scircuits.platform.circuit import stage
from scircuits.platform.circuit.evaluate import candidates, curves
from scircuits.platform.circuit.results import read_circuit
from scircuits.platform.circuit.selection import select
from scircuits.platform.circuit.spliced import SplicedModel
from scircuits.platform.config import CircuitConfig
from scircuits.platform.manager.plugin_set import get_plugins
from tests import test_circuit
from tests.test_circuit import config, saved_saes, site_saes
from tests.test_circuit_fast import TOL, assert_close

tiny, examples = test_circuit.tiny, test_circuit.examples  # the fixtures, shared

# three sites: effects of 5 features and the error term (last) each
EFFECTS = [
    np.array([9.0, -8.0, 7.0, 0.0, 0.5, 6.5]),
    np.array([0.1, -0.2, 0.0, 0.3, 0.0, 0.05]),
    np.array([0.0, 5.0, -0.4, 0.0, 0.0, 1.0]),
]


def test_the_global_budget_takes_the_largest_effects_wherever_they_are():
    ranking, kept = select(EFFECTS, per_site=False, budget=4, threshold=0.0)
    assert kept == [(0, 0), (0, 1), (0, 2), (0, 5)]  # site 0 holds the four largest: sites 1, 2 get none
    assert ranking.top(4) == kept and ranking.ranked[0] == (0, 0)


def test_the_per_site_budget_takes_the_largest_effects_of_each_site_in_the_global_order():
    ranking, kept = select(EFFECTS, per_site=True, budget=2, threshold=0.0)
    assert kept == [(0, 0), (0, 1), (2, 1), (2, 5), (1, 3), (1, 1)]
    assert Counter(i for i, _ in kept) == {0: 2, 1: 2, 2: 2}
    assert ranking.top(2) == kept
    # a site with fewer nodes of nonzero effect than the budget gives what it has
    _, five = select(EFFECTS, per_site=True, budget=5, threshold=0.0)
    assert Counter(i for i, _ in five) == {0: 5, 1: 4, 2: 3}
    # the threshold applies per node, in both selections
    _, above = select(EFFECTS, per_site=True, budget=5, threshold=0.25)
    assert sorted(above) == [(0, 0), (0, 1), (0, 2), (0, 4), (0, 5), (1, 3), (2, 1), (2, 2), (2, 5)]
    _, none = select(EFFECTS, per_site=False, budget=30, threshold=100.0)
    assert none == []


def test_random_circuits_per_site_match_the_top_circuits_count_at_every_site():
    ranking, _ = select(EFFECTS, per_site=True, budget=2, threshold=0.0)
    pool = [(i, j) for i in range(3) for j in range(6)]
    rng = np.random.default_rng(0)
    for size in (1, 2, 3):
        top = Counter(i for i, _ in ranking.top(size))
        for _ in range(20):
            pick = ranking.random(size, pool, rng)
            assert Counter(i for i, _ in pick) == top and len(set(pick)) == len(pick)
    assert ranking.has_random(2, pool)
    assert ranking.has_random(6, pool)  # the top circuit takes 5, 4, 3 of each site's 6
    eligible = [n for nodes in ranking.by_site for n in nodes]
    assert not ranking.has_random(6, eligible)  # every site would be drawn whole
    glob, _ = select(EFFECTS, per_site=False, budget=2, threshold=0.0)
    assert len(glob.random(5, pool, rng)) == 5 and glob.has_random(17, pool) and not glob.has_random(18, pool)


@pytest.fixture(scope="module")
def spliced(tiny, examples):
    out = {}
    for fast in (True, False):
        model = SplicedModel(tiny, site_saes(tiny.d_model), fast=fast)
        batches = model.prepare(examples, 4, None, 1)
        out[fast] = (model, batches, A.baseline_of(batches, "selection-mean"))
    return out


def test_per_site_curves_count_sizes_per_site_draw_matched_random_circuits_and_match_the_eager_path(spliced):
    (fast, fb, fbase), (eager, eb, ebase) = spliced[True], spliced[False]
    effects = A.node_effects(eager, eb, ebase)
    ranking, _ = select(effects, per_site=True, budget=3, threshold=0.0)
    boot = Bootstrap(sum(len(cb.layouts) for cb in eb), 50, 0)
    ref_f, points_f = curves(fast, fb, fbase, ranking, [1, 3], 3, boot, 0)
    ref_e, points_e = curves(eager, eb, ebase, ranking, [1, 3], 3, boot, 0)
    assert_close(ref_f, ref_e)
    assert_close(points_f, points_e)
    assert [p["nodes_per_site"] for p in points_f] == [1, 3]
    assert [p["size"] for p in points_f] == [len(ranking.top(1)), len(ranking.top(3))]
    assert points_f[0]["size"] == len(fast.sites)  # one node at every site
    full, empty = ref_f["full"]["mean"], ref_f["empty"]["mean"]
    for p in points_f:
        assert p["random_draws"] == 3 and len(p["random_faithfulness_draws"]) == 3
        # m(C) is kept beside the ratio it gives
        assert p["faithfulness"] == pytest.approx((p["score"]["mean"] - empty) / (full - empty), rel=1e-9)
        assert p["completeness"] == pytest.approx(
            (p["complement_score"]["mean"] - empty) / (full - empty), rel=1e-9
        )
        assert p["score"]["low"] <= p["score"]["mean"] <= p["score"]["high"]
        assert p["random_faithfulness"] == pytest.approx(
            float(np.mean(p["random_faithfulness_draws"])), abs=0.5
        )  # the mean circuit's ratio, near the draws' mean
    assert len(candidates(fast, fbase)) > points_f[-1]["size"]


def test_the_command_with_a_per_site_budget_keeps_nodes_at_every_site_on_either_path(
    tiny, tmp_path, monkeypatch
):
    specs = saved_saes(tmp_path, tiny.d_model)
    cfg = config(tmp_path, specs, node_selection="per-site", nodes_per_site=3, sizes=[1, 2])
    fast = stage.find_circuit(cfg, get_plugins(), loaded=tiny)
    assert Counter(n.site for n in fast.nodes) == {"resid0": 3, "mlp1": 3, "resid2": 3}
    assert [abs(n.effect) for n in fast.nodes] == sorted((abs(n.effect) for n in fast.nodes), reverse=True)
    assert [(p.nodes_per_site, p.size) for p in fast.curves] == [(1, 3), (2, 6), (3, 9)]
    assert fast.thresholds["node_selection"] == "per-site" and fast.thresholds["nodes_per_site"] == 3
    monkeypatch.setattr(stage, "SplicedModel", lambda loaded, saes: SplicedModel(loaded, saes, fast=False))
    eager = stage.find_circuit(cfg, get_plugins(), loaded=tiny)
    assert [n.id for n in fast.nodes] == [n.id for n in eager.nodes]
    np.testing.assert_allclose([e.weight for e in fast.edges], [e.weight for e in eager.edges], **TOL)
    assert_close([p.model_dump() for p in fast.curves], [p.model_dump() for p in eager.curves])


def test_the_report_states_the_per_site_budget_and_sizes(tiny, tmp_path):
    specs = saved_saes(tmp_path, tiny.d_model)
    cfg = config(tmp_path, specs, node_selection="per-site", nodes_per_site=2, sizes=[1])
    out = stage.run_circuit(cfg, get_plugins(), loaded=tiny)
    report = (out / "report.md").read_text()
    assert "the top 2 of each site" in report and "| 6 (2 per site) |" in report
    assert read_circuit(out).curves[0].nodes_per_site == 1


def test_the_selection_enters_the_key_and_the_global_one_keeps_the_earlier_key():
    glob = CircuitConfig(sae=["a", "b"], node_selection="global")
    assert glob.identity()["sizes"] == [1, 2, 5, 10, 20, 50, 100]
    assert not {"node_selection", "nodes_per_site"} & set(glob.identity())
    assert CircuitConfig(sae=["a", "b"], node_selection="global", nodes_per_site=3).config_hash() == (
        glob.config_hash()
    )
    # the sizes as measured: a default and the same list given are one key
    explicit = CircuitConfig(sae=["a", "b"], node_selection="global", sizes=[1, 2, 5, 10, 20, 50, 100])
    assert explicit.config_hash() == glob.config_hash()
    per_site = CircuitConfig(sae=["a", "b"])  # the default selection
    assert per_site.node_selection == "per-site"
    assert per_site.identity()["sizes"] == [8, 32, 128, 512] and "nodes" not in per_site.identity()
    assert per_site.config_hash() != glob.config_hash()
    assert CircuitConfig(sae=["a", "b"], node_selection="per-site", nodes=5).config_hash() == (
        per_site.config_hash()
    )


def test_a_bad_node_selection_is_refused_in_one_line(tmp_path, capsys):
    from scircuits.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "circuit",
                "--sae",
                "a",
                "--sae",
                "b",
                "--node-selection",
                "per-layer",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "per-layer" in err, err
    assert not (tmp_path / "o").exists()
