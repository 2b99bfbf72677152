"""The dashboard's data: the streaming scan against a dense encoding, the pages written, the export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from scircuits.cli import main
from scircuits.platform.common.artifacts import read_marker, write_marker
from scircuits.platform.dashboard import build_dashboard
from scircuits.platform.dashboard.scan import (
    Runs,
    ScanSettings,
    encode_block,
    fill_windows,
    make_windows,
    scan_store,
)
from scircuits.platform.dashboard.site import MARKER, link_from_report
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.checkpoint import load_sae
from scircuits.store import ActivationStore
from tests.dashboard_run import read_js, tiny_run
from tests.read_only import make_read_only

# The fields of SAEDashboard's NeuronpediaDashboardFeature / NeuronpediaDashboardActivation (to_dict).
NP_FEATURE_FIELDS = {
    "feature_index",
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_l1",
    "correlated_neurons_pearson",
    "correlated_features_indices",
    "correlated_features_l1",
    "correlated_features_pearson",
    "neg_str",
    "neg_values",
    "pos_str",
    "pos_values",
    "frac_nonzero",
    "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "n_prompts_total",
    "n_tokens_in_prompt",
    "dataset",
    "decoder_weights_dist",
    "activations",
}
NP_ACTIVATION_FIELDS = {"bin_min", "bin_max", "bin_contains", "tokens", "values"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def dense(run):
    """The store encoded at once (small enough here), with the rows the scan leaves out zeroed."""
    store = ActivationStore(run / "activations.zarr")
    sae, _ = load_sae(run / "sae", get_plugins())
    f = encode_block(sae, store.read_rows(0, store.n_tokens)).numpy()
    f[store.positions < 1] = 0.0
    return store, sae, f


def test_streaming_scan_matches_the_dense_encoding(dense):
    store, sae, f = dense
    settings = ScanSettings(block_rows=300, n_top=5, reservoir=16)  # many blocks, a small reservoir
    scan = scan_store(sae, store.read_rows, store.positions, store.n_tokens, 1, settings)
    assert scan.n_tokens == int((store.positions >= 1).sum())
    np.testing.assert_array_equal(scan.counts, (f > 0).sum(0))
    np.testing.assert_allclose(scan.maxes, f.max(0), rtol=1e-6)
    np.testing.assert_array_equal(scan.hist.sum(1), scan.counts)
    for latent in range(f.shape[1]):
        expected = np.sort(f[:, latent])[::-1][:5]
        expected = expected[expected > 0]
        top = scan.top(latent)
        np.testing.assert_allclose([v for _, v in top], expected, rtol=1e-6)
        assert all(f[row, latent] == pytest.approx(v) for row, v in top)
        sample = scan.sample(latent)
        assert len(sample) == min(16, int(scan.counts[latent]))
        assert len({r for r, _ in sample}) == len(sample)
        assert all(f[row, latent] > 0 and f[row, latent] == pytest.approx(v) for row, v in sample)


def test_the_reservoir_is_a_uniform_sample():
    """Fed in blocks, each nonzero row of a latent ends up in its sample equally often over seeds."""
    from scircuits.platform.dashboard.scan import Scan

    rows, reservoir, seeds = 600, 10, 300
    values = torch.rand(rows, 2, generator=torch.Generator().manual_seed(0)) + 0.1
    values[::3, 1] = 0.0  # latent 1 fires on two rows in three
    hits = np.zeros((rows, 2))
    for seed in range(seeds):
        scan = Scan(d_sae=2, n_top=3, reservoir=reservoir)
        rng = np.random.default_rng(seed)
        for start in range(0, rows, 70):
            scan.add(values[start : start + 70], start, rng)
        for latent in (0, 1):
            drawn = [r for r, _ in scan.sample(latent)]
            assert len(drawn) == len(set(drawn)) == reservoir
            hits[drawn, latent] += 1
    assert hits[::3, 1].sum() == 0
    for latent, fired in ((0, np.arange(rows)), (1, np.flatnonzero(values[:, 1] > 0))):
        expected = seeds * reservoir / fired.size
        # early and late rows alike (a biased reservoir favours one end), no row far off
        for part in np.array_split(fired, 4):
            assert hits[part, latent].mean() == pytest.approx(expected, rel=0.1)
        assert hits[fired, latent].max() < expected + 6 * np.sqrt(expected)


def test_context_windows_hold_the_dense_activations_within_their_example(dense):
    store, sae, f = dense
    runs = Runs.of(store.example_ids)
    rows = [10, 500, store.n_tokens - 1, int(runs.starts[3])]
    settings = ScanSettings(before=7, after=3)
    windows = make_windows([(5, r) for r in rows] + [(9, rows[1])], runs, settings)
    fill_windows(sae, store.read_rows, windows, block_rows=128, left_out=store.positions < 1)
    for window in windows:
        assert len(set(store.example_ids[window.lo : window.hi])) == 1
        assert window.lo <= window.row < window.hi <= window.row + 4
        np.testing.assert_allclose(
            window.values, f[window.lo : window.hi, window.latent], rtol=1e-5, atol=1e-6
        )


def test_the_dashboard_has_one_page_per_active_feature_and_consistent_data(run, dense):
    store, _, f = dense
    site = run / "dashboard"  # written by `scircuits run`'s report stage
    active = np.flatnonzero((f > 0).any(0))
    pages = sorted(int(p.stem) for p in (site / "features").glob("*.html"))
    assert pages == sorted(int(i) for i in active)
    assert sorted(int(p.stem) for p in (site / "data" / "features").glob("*.js")) == pages

    index = read_js(site / "data" / "index.js")
    results = json.loads((run / "causal" / "results.json").read_text())
    described = [feat["id"] for feat in results["features"]]
    assert [row[0] for row in index["rows"]][: len(described)] == described  # ranked features first
    assert len(index["rows"]) == len(pages)

    examples = {}
    for shard in (site / "data" / "examples").glob("*.js"):
        examples.update({int(k): v for k, v in read_js(shard).items()})
    runs = Runs.of(store.example_ids)
    tokenizer = __import__("scircuits.testing", fromlist=["tiny_tokenizer"]).tiny_tokenizer()
    first = described[0]
    data = read_js(site / "data" / "features" / f"{first}.js")
    assert data["ablation"]["exact_logprob_ci"] == results["features"][0]["exact_logprob_ci"]
    assert data["n_fired"] == int((f[:, first] > 0).sum())
    assert sum(data["histogram"]["counts"]) == data["n_fired"]
    assert data["top"][0]["activation"] == pytest.approx(f[:, first].max(), rel=1e-3)
    assert [e["token"] for e in data["promoted"]] == [e["token"] for e in results["features"][0]["promoted"]]
    for ctx in data["top"] + [c for band in data["quantiles"] for c in band["contexts"]]:
        row = int(runs.starts[ctx["run"]]) + ctx["start"]
        np.testing.assert_allclose(ctx["values"], f[row : row + len(ctx["values"]), first], atol=1e-3)
        assert ctx["values"][ctx["focus"]] == pytest.approx(ctx["activation"], abs=1e-3)
        token_ids = store.token_ids[runs.starts[ctx["run"]] : runs.ends[ctx["run"]]]
        assert examples[ctx["run"]] == [tokenizer.decode([int(t)]) for t in token_ids]
    assert data["quantiles"] and data["quantiles"][0]["bin_min"] >= data["quantiles"][-1]["bin_max"] - 1e-6


def test_neuronpedia_batches_carry_saedashboard_fields(run):
    folder = run / "dashboard" / "neuronpedia"
    batches = sorted(folder.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    features = []
    for path in batches:
        batch = json.loads(path.read_text())
        assert set(batch) == {"model_id", "layer", "sae_set", "features"} and batch["layer"] == 2
        features += batch["features"]
    n_pages = len(list((run / "dashboard" / "features").glob("*.html")))
    assert len(features) == n_pages
    skipped = json.loads((folder / "skipped_indexes.json").read_text())["skipped_indexes"]
    d_sae = json.loads((run / "causal" / "results.json").read_text())["d_sae"]
    assert sorted(skipped + [f["feature_index"] for f in features]) == list(range(d_sae))
    for feature in features:
        assert set(feature) == NP_FEATURE_FIELDS
        assert len(feature["pos_str"]) == len(feature["pos_values"]) == 10
        assert len(feature["freq_hist_data_bar_values"]) == len(feature["freq_hist_data_bar_heights"])
        assert feature["activations"] and feature["activations"][0]["bin_min"] == -1
        for act in feature["activations"]:
            assert set(act) == NP_ACTIVATION_FIELDS and len(act["tokens"]) == len(act["values"])


def test_the_report_links_to_the_dashboard_once(run):
    for name in ("report.md", "report.html"):
        text = (run / name).read_text()
        assert "dashboard/index.html" in text and text.count(MARKER) == 1
    link_from_report(run, run / "dashboard")
    assert (run / "report.html").read_text().count(MARKER) == 1


def test_features_option_limits_the_pages_to_the_ranked_ones(run, tmp_path, capsys):
    main(["dashboard", str(run), "--features", "4", "--out", str(tmp_path / "site")])
    results = json.loads((run / "causal" / "results.json").read_text())
    pages = {int(p.stem) for p in (tmp_path / "site" / "features").glob("*.html")}
    assert pages == {feat["id"] for feat in results["features"][:4]}
    assert "4 feature pages" in capsys.readouterr().out


def test_a_latent_that_never_fires_gets_no_page(run, tmp_path):
    """Silence one latent of a copy of the run's SAE: it leaves the site and the export's batches."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("dashboard", "report.*"))
    weights = load_file(str(copy / "sae" / "sae_weights.safetensors"))
    weights["W_enc"][:, 7] = 0.0
    weights["b_enc"][7] = -1e4
    if "threshold" in weights:
        weights["threshold"][7] = 1e4
    save_file(weights, str(copy / "sae" / "sae_weights.safetensors"))
    summary = build_dashboard(copy, get_plugins())
    assert not (copy / "dashboard" / "features" / "7.html").exists()
    assert summary.n_pages == summary.n_active < summary.d_sae
    skipped = json.loads((copy / "dashboard" / "neuronpedia" / "skipped_indexes.json").read_text())
    assert 7 in skipped["skipped_indexes"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "is not a directory"),
        (lambda tmp: tmp, "results.json is missing"),
    ],
)
def test_bad_run_directories_fail_in_one_line(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", str(make(tmp_path))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_features_must_be_positive(run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", str(run), "--features", "0"])
    assert exit_info.value.code == 2


def run_copy(run, where):
    """A copy of the run (with its dashboard, as `cp -r` leaves it)."""
    shutil.copytree(run, where)
    return where


def dashboard_refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("Error")]
    assert exit_info.value.code == 2 and "Traceback" not in err and len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("marker", ["this version", "earlier version"])
def test_another_runs_dashboard_is_refused_and_moved_aside_with_force(run, tmp_path, capsys, marker):
    site = tmp_path / "site"
    main(["dashboard", str(run), "--features", "3", "--out", str(site)])
    if marker == "earlier version":  # its marker names only the kind; its manifest names the run
        write_marker(site, "dashboard", "dashboard")
    pages = sorted(p.name for p in (site / "features").iterdir())
    other = run_copy(run, tmp_path / "other")
    line = dashboard_refused([str(other), "--features", "2", "--out", str(site)], capsys)
    assert f"{site} holds the dashboard of the run {run.resolve()}, not of {other}" in line
    assert "pass --force to move it aside" in line
    assert sorted(p.name for p in (site / "features").iterdir()) == pages
    main(["dashboard", str(run), "--features", "3", "--out", str(site)])  # its own run: rewritten
    assert not list(tmp_path.glob("site.superseded-*"))
    main(["dashboard", str(other), "--features", "2", "--out", str(site), "--force"])
    [aside] = tmp_path.glob("site.superseded-*")
    assert sorted(p.name for p in (aside / "features").iterdir()) == pages
    assert len(list((site / "features").iterdir())) == 2
    assert json.loads((site / "manifest.json").read_text())["run_dir"] == str(other)


def test_a_runs_own_dashboard_with_an_earlier_marker_is_rebuilt_in_place(run, tmp_path):
    copy = run_copy(run, tmp_path / "copy")
    write_marker(copy / "dashboard", "dashboard", "dashboard")
    main(["dashboard", str(copy), "--features", "2"])
    assert read_marker(copy / "dashboard").identity == str(copy.resolve())
    assert len(list((copy / "dashboard" / "features").iterdir())) == 2
    assert not list(tmp_path.glob("*.superseded-*"))


def test_a_read_only_run_stops_the_dashboard_in_one_line(run, tmp_path, capsys, monkeypatch):
    copy = run_copy(run, tmp_path / "copy")
    pages = sorted(p.name for p in (copy / "dashboard" / "features").iterdir())
    make_read_only(monkeypatch, copy)
    line = dashboard_refused([str(copy), "--features", "2"], capsys)
    assert f"{copy / 'dashboard'}: cannot write here (Operation not permitted); choose another --out" in line
    assert sorted(p.name for p in (copy / "dashboard" / "features").iterdir()) == pages


def test_a_truncated_compare_file_and_a_compare_folder_as_circuit_fail_in_one_line(run, tmp_path, capsys):
    cmp = tmp_path / "cmp"
    cmp.mkdir()
    (cmp / "results.json").write_text('{"format": "scircuits.compare",\n "runs": [')
    line = dashboard_refused([str(run), "--out", str(tmp_path / "site"), "--compare", str(cmp)], capsys)
    assert (
        "results.json, line 2: not valid JSON" in line
        and "rerun `scircuits compare`" in line
        and "validation error" not in line
    )
    write_marker(cmp, "compare", "compare")
    line = dashboard_refused([str(run), "--out", str(tmp_path / "site"), "--circuit", str(cmp)], capsys)
    assert f"--circuit {cmp} holds a compare artifact, not a circuit" in line
    assert not (tmp_path / "site").exists()
