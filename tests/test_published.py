"""Published SAEs read through the hub cache offline: each layout (SAELens, Gemma Scope, Llama Scope,
sparsify) written from an SAE of ours into a fake hub cache and read back by the same loader as a
download, hook names mapped to sites both ways, and the bad inputs (unknown names, an offline miss,
a damaged download, a d_in or site mismatch) refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from scircuits import ConfigError, DataFormatError
from scircuits.cli import main
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.platform.train.checkpoint import load_sae
from scircuits.testing import published as P

PLUGINS = load_plugins(entry_points_too=False)
D_IN, D_SAE = 576, 128  # SmolLM2-135M's width: the CLI's checks run against its adapter
GEMMA_REPO, LLAMA_REPO = "google/gemma-scope-2b-pt-res", "fnlp/Llama3_1-8B-Base-LXR-8x"
LLAMA_FACTOR = 20.177339901477833  # SAELens' norm_scaling_factor of llama_scope_lxr_8x/l3r_8x


def random_sae(variant: str, seed: int = 0, **hparams):
    return P.random_sae(PLUGINS, variant, D_IN, D_SAE, seed, **hparams)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def saes():
    return {"topk": random_sae("topk", k=8), "jumprelu": random_sae("jumprelu")}


def write_layouts(cache: Path, saes) -> dict[str, tuple[str, object, str]]:
    """{layout: (spec, original SAE, the hook name the files give)}."""
    topk, jr = saes["topk"], saes["jumprelu"]
    hook = "blocks.3.hook_resid_post"
    P.hub_repo(cache, "org/saelens-saes", P.saelens_files(topk, hook, hook))
    P.hub_repo(cache, GEMMA_REPO, P.gemma_scope_files(jr, "layer_3/width_16k/average_l0_20"))
    norm_in = D_IN**0.5 / LLAMA_FACTOR
    threshold = float(jr.threshold[0].detach())
    P.hub_repo(
        cache, LLAMA_REPO, P.llama_scope_files(jr, "Llama3_1-8B-Base-L3R-8x", hook, norm_in, threshold)
    )
    P.hub_repo(cache, "org/sparsify-saes", P.sparsify_files(topk, "layers.3"))
    return {
        "saelens-layout": (f"hf:org/saelens-saes/{hook}", topk, hook),
        "gemma-scope": (f"hf:{GEMMA_REPO}/layer_3/width_16k/average_l0_20", jr, hook),
        "llama-scope": ("saelens:llama_scope_lxr_8x/l3r_8x", jr, hook),
        "sparsify": ("hf:org/sparsify-saes/layers.3", topk, "layers.3"),
    }


@pytest.mark.parametrize("layout", ["saelens-layout", "gemma-scope", "llama-scope", "sparsify"])
def test_each_layout_reads_back_the_sae_it_was_written_from(hub, saes, layout):
    spec, original, hook = write_layouts(hub, saes)[layout]
    sae, info = load_sae(spec, PLUGINS)
    x = torch.randn(256, D_IN) * 3
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), original.encode(x), atol=1e-5, rtol=0)
        assert torch.allclose(sae(x), original(x), atol=1e-5, rtol=0)
        assert (sae.encode(x) > 0).any()  # the comparison saw active latents
    source = info["source"]
    assert source["format"] == layout and info["hook_name"] == hook
    assert (len(source["commit"]) == 40 and source["repo_id"] in spec) or layout == "llama-scope"
    assert all(h.startswith(("sha256:", "git sha1:")) for h in source["files"].values())


def test_an_adapter_maps_its_sites_to_hook_names_both_ways():
    adapter = PLUGINS.models.get("smollm2-135m")
    for layer in (0, 15, 29):
        for site in ("resid", "mlp", "attn"):
            hook = adapter.hook_name(layer, site)
            assert adapter.site_of_hook(hook) == (layer, site)
            assert adapter.site_of_hook(adapter.site_path(layer, site)) == (layer, site)
    assert adapter.hook_name(15, "resid") == "blocks.15.hook_resid_post"
    assert adapter.site_of_hook("blocks.16.hook_resid_pre") == (15, "resid")
    assert adapter.site_of_hook("layers.7") == (7, "resid")  # sparsify's hookpoint
    assert adapter.site_of_hook("layers.7.mlp") == (7, "mlp")
    assert adapter.site_of_hook("layers.15.resid") == (15, "resid")  # our cfg.json before this change
    gpt2 = PLUGINS.models.get("gpt2-medium")
    assert gpt2.site_of_hook("transformer.h.4.attn") == (4, "attn")
    for bad in ("blocks.0.hook_resid_pre", "blocks.3.attn.hook_z", "blocks.99.hook_mlp_out", "hook_embed"):
        with pytest.raises(ConfigError):
            adapter.site_of_hook(bad)


def test_unknown_release_or_sae_id_lists_close_matches():
    source = PLUGINS.sae_sources.get("saelens")
    with pytest.raises(ConfigError, match="gemma-scope-2b-pt-res-canonical"):
        source.resolve("gemma-scope-2b-pt-res-canonicl/layer_3/width_16k/canonical")
    with pytest.raises(ConfigError, match=r"close matches: layer_3/width_16k/canonical"):
        source.resolve("gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonicl")
    location = source.resolve("gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonical@abc")
    assert (location.repo_id, location.revision) == (GEMMA_REPO, "abc")
    assert location.path.startswith("layer_3/width_16k/average_l0_")


def one_line_exit_2(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_an_offline_miss_exits_2_naming_the_repo_cache_offline_flag_and_a_folder(hub, capsys):
    err = one_line_exit_2(["ablate", "--sae", "hf:org/not-downloaded/layers.3", "--limit", "4"], capsys)
    for part in ("org/not-downloaded/layers.3", str(hub), "HF_HUB_OFFLINE", "--sae DIR"):
        assert part in err


@pytest.mark.parametrize(
    "spec,says",
    [
        ("hf:org/saelens-saes/../..", "no '.' or '..' parts"),
        ("hf:org/saelens-saes/./x", "no '.' or '..' parts"),
        ("hf:org/bad name/x", "'org/bad name' is not a Hugging Face repository id"),
    ],
)
def test_a_hub_folder_outside_its_repository_is_refused(hub, capsys, spec, says):
    err = one_line_exit_2(["ablate", "--sae", spec, "--limit", "4"], capsys)
    assert says in err, err


def test_a_width_mismatch_is_refused_before_the_model_loads(hub, capsys, monkeypatch):
    torch.manual_seed(1)
    narrow = PLUGINS.saes.get("topk").build(64, 128, {"k": 4})
    P.hub_repo(hub, "org/narrow", P.sparsify_files(narrow, "layers.3"))
    adapter = type(PLUGINS.models.get("smollm2-135m"))

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(adapter, "load", never)
    err = one_line_exit_2(["ablate", "--sae", "hf:org/narrow/layers.3", "--limit", "4"], capsys)
    assert "width 64" in err and "576" in err


def test_a_site_mismatch_names_the_hook_and_the_flag(hub, saes, capsys, monkeypatch):
    write_layouts(hub, saes)
    adapter = type(PLUGINS.models.get("smollm2-135m"))
    monkeypatch.setattr(adapter, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    spec = "hf:org/saelens-saes/blocks.3.hook_resid_post"
    err = one_line_exit_2(["ablate", "--sae", spec, "--layer", "5", "--limit", "4"], capsys)
    assert "blocks.3.hook_resid_post" in err and "--layer 5" in err
    err = one_line_exit_2(["ablate", "--sae", spec, "--site", "mlp", "--limit", "4"], capsys)
    assert "blocks.3.hook_resid_post" in err and "--site mlp" in err


def test_a_truncated_download_is_detected_and_never_used(hub, saes):
    spec = write_layouts(hub, saes)["sparsify"][0]
    snapshot = next((hub / "models--org--sparsify-saes" / "snapshots").iterdir())
    blob = Path(os.path.realpath(snapshot / "layers.3" / "sae.safetensors"))
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="damaged or truncated"):
        load_sae(spec, PLUGINS)


def test_a_folder_of_an_unknown_layout_says_what_it_reads(tmp_path):
    (tmp_path / "weights.npy").write_bytes(b"\0")
    with pytest.raises(DataFormatError, match=r"sae_weights\.safetensors"):
        load_sae(tmp_path, PLUGINS)


def test_run_with_a_published_sae_skips_collection_and_training(hub, saes, monkeypatch, tmp_path):
    from scircuits.platform.config import RunConfig
    from scircuits.platform.pipeline.run import run_pipeline
    from tests.test_pipeline import FakeStages

    write_layouts(hub, saes)
    stages = FakeStages(monkeypatch)
    spec = "hf:org/sparsify-saes/layers.3"
    config = RunConfig(out=str(tmp_path / "runs"), progress=False, sae=spec)
    run_dir = run_pipeline(config, PLUGINS)
    assert stages.calls == ["ablate", "report"]
    assert run_dir.name.startswith("smollm2-135m__arithmetic__resid3__hf-org-sparsify-saes")
    assert not (run_dir / "activations.zarr").exists() and not (run_dir / "sae").exists()
    run_pipeline(config, PLUGINS)
    assert stages.calls == ["ablate", "report"]  # the second run is up to date
    other = run_pipeline(
        config.model_copy(
            update={
                "train": config.train.model_copy(
                    update={"sae": "hf:org/saelens-saes/blocks.3.hook_resid_post"}
                )
            }
        ),
        PLUGINS,
    )
    assert other != run_dir and stages.calls[-2:] == ["ablate", "report"]
    with pytest.raises(ConfigError, match=r"layers\.3 .*--layer 5"):
        run_pipeline(config.model_copy(update={"layer": 5}), PLUGINS)


def small_study(sae: str, out: Path):
    """A small study's settings on a tiny model, the gate off (a random SAE on a random model)."""
    from scircuits.platform.config import AblateConfig

    return AblateConfig(
        sae=sae,
        out=str(out),
        limit=6,
        top_k=[1],
        random_controls=2,
        exact_top=1,
        faithfulness_n=[1],
        bootstrap=50,
        progress=False,
        reconstruction_gate=False,
    ).with_plugin_defaults(PLUGINS)


def test_a_study_of_a_published_sae_records_what_it_read_and_the_gate_reference(hub, tmp_path):
    """A real (tiny, random) model, the causal study end to end on a SAELens release read from the
    hub cache: the layer comes from the hook name, provenance names the release, repository, commit
    and file hashes, and the gate's growth check uses the release's variance explained."""
    import json

    from scircuits.platform.causal.stage import load_inputs, run_ablate
    from scircuits.testing import tiny_loaded_model

    tiny = tiny_loaded_model("smollm2-135m")
    sae = P.random_sae(PLUGINS, "topk", tiny.d_model, 64, k=4)
    hook = "blocks.3.hook_resid_pre"  # gpt2-small-res-jb's table gives variance explained 0.999
    P.hub_repo(hub, "jbloom/GPT2-Small-SAEs-Reformatted", P.saelens_files(sae, hook, hook))
    config = small_study(f"saelens:gpt2-small-res-jb/{hook}", tmp_path / "causal")
    inputs = load_inputs(config, PLUGINS, loaded=tiny)
    assert inputs.layer == 2  # hook_resid_pre of block 3 is block 2's output
    results = json.loads((run_ablate(config, PLUGINS, inputs=inputs) / "results.json").read_text())
    source = results["provenance"]["sae"]["source"]
    assert source["repo_id"] == "jbloom/GPT2-Small-SAEs-Reformatted" and len(source["commit"]) == 40
    assert source["facts"]["release"] == "gpt2-small-res-jb" and set(source["files"]) == {
        "cfg.json",
        "sae_weights.safetensors",
    }
    gate = results["gate"]
    assert gate["reference_metric"] == "fvu" and gate["reference"] == pytest.approx(0.001)
    assert gate["error_growth"] == pytest.approx(results["sae_metrics_eval"]["fvu"] / 0.001)
    assert "metadata" in gate["reference_source"] and results["layer"] == 2


def test_a_study_of_an_sae_without_metadata_measures_its_gate_reference_afresh(hub, tmp_path):
    """An SAE that records no error of its own (SAELens layout, no metrics): the gate's growth check
    compares with its error measured now on as many examples of the benchmark's train split, stated
    as such with the token count; the value is the one those examples give."""
    import json

    from scircuits.platform.causal.evaluation import prepare_eval
    from scircuits.platform.causal.stage import load_inputs, run_ablate
    from scircuits.platform.causal.study import reconstruction_metrics
    from scircuits.platform.model.splice import SplitModel
    from scircuits.testing import tiny_loaded_model

    tiny = tiny_loaded_model("smollm2-135m")
    sae = P.random_sae(PLUGINS, "topk", tiny.d_model, 64, k=4)
    hook = "blocks.3.hook_resid_post"
    P.hub_repo(hub, "org/saelens-saes", P.saelens_files(sae, hook, hook))
    config = small_study(f"hf:org/saelens-saes/{hook}", tmp_path / "causal")
    inputs = load_inputs(config, PLUGINS, loaded=tiny)
    assert inputs.reference is not None and inputs.reference.split == "train"
    gate = json.loads((run_ablate(config, PLUGINS, inputs=inputs) / "results.json").read_text())["gate"]

    examples = list(
        PLUGINS.benchmarks.get(config.benchmark).examples("train", 6, 0, config.benchmark_options)
    )
    assert examples != inputs.examples
    data = prepare_eval(SplitModel(tiny, 3, "resid"), inputs.sae, tiny.tokenizer, examples, 16, None)
    expected = reconstruction_metrics(data)
    assert gate["reference_metric"] == "relative_error"
    assert gate["reference"] == pytest.approx(expected["relative_error"], rel=1e-6)
    assert gate["reference_tokens"] == expected["tokens"] > 0
    assert gate["reference_source"].startswith(
        f"a fresh measurement on {expected['tokens']} tokens of 6 examples of the benchmark's train split"
    )
    assert gate["error_growth"] == pytest.approx(gate["relative_error"] / gate["reference"])
    assert gate["training_relative_error"] is None  # not a training store's


def test_the_gate_reference_prefers_training_then_metadata_then_a_fresh_measurement():
    from types import SimpleNamespace

    from scircuits.platform.causal.stage import reference_examples
    from scircuits.platform.config import AblateConfig
    from scircuits.plugins.analyses.baseline import gate_reference

    asked = []

    def context(training=None, published=None, fresh=None):
        def measure():
            asked.append(1)
            return fresh

        return SimpleNamespace(
            sae_training_metrics=training or {},
            sae_info={"published_metrics": published or {}},
            fresh_reconstruction_metrics=measure,
        )

    fresh = {"split": "train", "examples": 4, "tokens": 40, "relative_error": 0.2, "fvu": 0.3}
    metrics = {"relative_error": 0.25, "fvu": 0.3}
    assert gate_reference(context({"relative_error": 0.1, "tokens": 99}, fresh=fresh), metrics)[::3] == (
        "relative_error",
        99,
    )
    assert gate_reference(context(published={"relative_error": 0.05}, fresh=fresh), metrics)[2] == (
        "the published SAE's metadata"
    )
    assert gate_reference(context(published={"variance_explained": 0.9}, fresh=fresh), metrics)[0] == "fvu"
    assert not asked  # metadata first: no measurement made
    metric, value, source, tokens = gate_reference(context(fresh=fresh), metrics)
    assert (metric, value, tokens) == ("relative_error", 0.2, 40) and "fresh measurement on 40" in source
    assert gate_reference(context(), metrics)[:2] == (None, None)
    assert "growth limit does not apply" in gate_reference(context(), metrics)[2]
    # evaluating on the train split leaves no other split to measure on
    arithmetic = PLUGINS.benchmarks.get("arithmetic")
    assert reference_examples(arithmetic, AblateConfig(split="train"), 6) is None
    assert reference_examples(arithmetic, AblateConfig(), 6).split == "train"


def test_an_sae_of_a_layer_past_the_models_blocks_is_one_line(hub, tmp_path):
    """A published SAE whose hook names block 7 of a model of 4 blocks: IndexError before."""
    from scircuits.platform.causal.stage import load_inputs
    from scircuits.platform.contract.errors import ConfigError
    from scircuits.testing import tiny_loaded_model

    tiny = tiny_loaded_model("smollm2-135m")
    sae = P.random_sae(PLUGINS, "topk", tiny.d_model, 64, k=4)
    hook = f"blocks.{tiny.n_layers + 3}.hook_resid_post"
    P.hub_repo(hub, "org/deep-saes", P.saelens_files(sae, hook, hook))
    config = small_study(f"hf:org/deep-saes/{hook}", tmp_path / "causal")
    with pytest.raises(
        ConfigError, match=rf"reads layer {tiny.n_layers + 3}, but .* has {tiny.n_layers} layers"
    ):
        load_inputs(config, PLUGINS, loaded=tiny)
    assert not (tmp_path / "causal").exists()
