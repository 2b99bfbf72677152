"""The causal study with --remote, on nnsight's local stand-in for NDIF (the same serialise /
execute / deserialise path, user modules hidden): the same study as a local run, in a number of
requests set by the conditions (not by the examples), with only per-target scores coming back."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scircuits.platform.causal.stage import AblateInputs, run_ablate
from scircuits.platform.config import AblateConfig
from scircuits.platform.contract.ablations import Ablation
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import get_plugins, load_plugins
from scircuits.platform.model.scoring import layout_examples, make_batch
from scircuits.platform.model.tracing import check_ndif, load_remote
from scircuits.plugins.saes.modules import ReLUSAE
from scircuits.testing import save_tiny_model, tiny_loaded_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    local = tiny_loaded_model("smollm2-135m", seed=7)
    folder = save_tiny_model(local, tmp_path_factory.mktemp("tiny"))
    remote = load_remote(get_plugins().models.get("smollm2-135m"), model_path=str(folder), backend="local")
    assert remote.model.device.type == "meta"  # the stand-in runs the weights; none are here
    return local, remote


@pytest.fixture(scope="module")
def examples():
    return list(get_plugins().benchmarks.get("arithmetic").examples("test", 12, 0, {}))


def sae_for(d: int) -> ReLUSAE:
    torch.manual_seed(0)
    return ReLUSAE(d, 2 * d).eval()


def config(tmp_path, name: str, **overrides) -> AblateConfig:
    values = dict(
        sae="",
        out=str(tmp_path / name),
        top_k=[1, 3],
        random_controls=2,
        exact_top=3,
        faithfulness_n=[1, 4],
        bootstrap=200,
        progress=False,
        layer=2,
        batch_size=4,
        reconstruction_gate=False,  # a random SAE on a tiny model, on purpose
    )
    values.update(overrides)
    return AblateConfig(**values)


def study(tmp_path, loaded, examples, name: str, plugins=None, **overrides) -> tuple[dict, list[dict]]:
    plugins = plugins or load_plugins(entry_points_too=False)
    sae = sae_for(loaded.d_model)
    cfg = config(tmp_path, name, remote=loaded.device != "cpu", **overrides)
    out = run_ablate(cfg, plugins, inputs=AblateInputs(loaded, sae, {}, examples, 2))
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    return results, rows


def assert_close(a, b, path="", rel=1e-4, abs_=1e-4):
    """Equal structures; numbers within rounding (the remote run adds the edit to the site's output
    as decoder-row changes where the local one decodes the edited features)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}", rel, abs_)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]", rel, abs_)
    elif isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert b == pytest.approx(a, rel=rel, abs=abs_), path
    else:
        assert a == b, path


STUDY_ONLY = ("provenance", "wall_seconds", "remote", "config", "config_hash", "splice")


def test_a_remote_study_equals_the_local_study(models, examples, tmp_path):
    local, remote = models
    here, here_rows = study(tmp_path, local, examples, "local")
    far, far_rows = study(tmp_path, remote, examples, "remote")
    assert here["remote"] is None and far["remote"]["requests"] > 0
    assert far["config"]["remote"] is True
    for key in set(here) - set(STUDY_ONLY):
        assert_close(here[key], far[key], key)
    assert (
        far["features"][0]["promoted"] and far["features"][0]["promoted"] == here["features"][0]["promoted"]
    )
    assert_close(here_rows, far_rows)
    # the splice check on NDIF: target log-probs, within the tolerance
    assert (
        far["splice"]["max_abs_logit_diff"] < 1e-4 and far["splice"]["edited_fast_path_max_abs_diff"] < 1e-4
    )


class Halve(Ablation):
    """A plugin's ablation (as a third-party package would register it): halve the features."""

    name = "halve-test"
    description = "Multiply the chosen features by 0.5 (test plugin)."

    def apply(self, acts, indices, stats=None, options=None, generator=None):
        out = acts.clone()
        out[..., indices] = 0.5 * acts[..., indices]
        return out


@pytest.mark.parametrize(
    "ablation,options",
    [("resample", {}), ("clamp", {"value": 2.0}), ("halve-test", {})],
)
def test_every_ablation_runs_inside_the_remote_trace_as_it_runs_here(
    models, examples, tmp_path, ablation, options
):
    local, remote = models
    plugins = load_plugins(entry_points_too=False)
    plugins.ablations.add(Halve(), "test-plugin")
    small = dict(
        ablation=ablation,
        ablation_options=options,
        sweep_also=[],
        top_k=[2],
        random_controls=1,
        exact_top=2,
        faithfulness_n=[1],
        bootstrap=100,
    )
    here, here_rows = study(tmp_path, local, examples, f"{ablation}-local", plugins=plugins, **small)
    far, far_rows = study(tmp_path, remote, examples, f"{ablation}-remote", plugins=plugins, **small)
    assert here["sweeps"][0]["ablation"] == ablation
    assert_close(here["sweeps"], far["sweeps"], "sweeps")
    assert_close(here_rows, far_rows)
    by = far["remote"]["by_purpose"]
    assert by["top 2"]["bytes_up"] < by["reconstruction"]["bytes_up"]  # sent as decoder-row changes


ONCE = (
    "site activations (once)",
    "attribution gradients (once)",
    "splice check (once)",
    "final norm (once)",
    "logit effects (once)",
)


def test_the_number_of_requests_is_set_by_the_conditions_not_the_examples(
    models, examples, tmp_path, monkeypatch
):
    from nnsight.schema.request import RequestModel

    serialize, sent = RequestModel.serialize, []

    def measured(*args, **kwargs):
        blob = serialize(*args, **kwargs)
        sent.append(len(blob))
        return blob

    monkeypatch.setattr(RequestModel, "serialize", staticmethod(measured))
    _, remote = models
    sequences, _ = layout_examples(remote.tokenizer, examples, None)
    targets = int(make_batch(sequences, 0).target_ids.numel())  # target tokens of every sequence
    few, _ = study(tmp_path, remote, examples, "big-batches", batch_size=64)
    sent_few = list(sent)
    many, _ = study(tmp_path, remote, examples, "small-batches", batch_size=2)
    assert len(sent_few) == few["remote"]["requests"]  # one request per session, each counted
    assert len(sent) - len(sent_few) == many["remote"]["requests"]
    for result in (few, many):
        by = result["remote"]["by_purpose"]
        for purpose in ONCE:
            assert by[purpose]["requests"] == 1
        # at most one request per condition, and one more for the splice scores that attribution
        # weighs when the selection split's batches were never scored (attribution counts as 3)
        conditions = result["n_conditions"] - 3
        assert conditions <= result["remote"]["requests"] - len(ONCE) <= conditions + 1
        # what comes back per condition: a log-prob (4 bytes) and a hit (1 byte) per target token
        # and one NLL sum (4 bytes) per batch where the CE loss is needed; nothing of the size of
        # logits or activations
        for purpose, entry in by.items():
            if purpose not in ONCE:
                assert entry["bytes_down"] <= entry["requests"] * 5 * targets + entry["traces"] * 4
    assert abs(many["remote"]["requests"] - few["remote"]["requests"]) <= 1
    activations = many["remote"]["by_purpose"]["site activations (once)"]
    assert activations["bytes_down"] >= many["n_tokens"] * remote.d_model * 4
    print(json.dumps({"few": few["remote"], "many": many["remote"], "sent_few": sent_few}, indent=1))


def test_a_missing_ndif_key_or_an_unserved_model_is_one_line_before_any_work(monkeypatch, tmp_path):
    import nnsight.ndif

    adapter = get_plugins().models.get("llama-3-8b")
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None, raising=False)
    with pytest.raises(ConfigError, match=r"NDIF_API_KEY"):
        check_ndif(adapter)
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    served = {"deployments": {"x": {"repo_id": "openai-community/gpt2", "deployment_level": "HOT"}}}
    monkeypatch.setattr(nnsight.ndif, "status", lambda raw=False: served)
    with pytest.raises(
        ConfigError, match=r"does not serve meta-llama/Meta-Llama-3-8B.*openai-community/gpt2"
    ):
        check_ndif(adapter)
    monkeypatch.setattr(nnsight.ndif, "status", lambda raw=False: {})
    with pytest.raises(ConfigError, match=r"status page"):
        check_ndif(adapter)
    served["deployments"]["y"] = {"repo_id": adapter.hf_id}
    monkeypatch.setattr(nnsight.ndif, "status", lambda raw=False: served)
    check_ndif(adapter)  # served: no error


def test_ablate_remote_refuses_before_reading_anything(monkeypatch, tmp_path, capsys):
    from scircuits.cli import main

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    import nnsight

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None, raising=False)
    out = tmp_path / "causal"
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--remote", "--sae", str(tmp_path / "absent"), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NDIF_API_KEY" in err[0]
    assert not out.exists()
