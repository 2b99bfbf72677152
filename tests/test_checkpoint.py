"""SAE checkpoints: round trip for every variant, SAELens' format rules, no pickle, folding."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from scircuits.platform.contract.errors import DataFormatError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.checkpoint import (
    CFG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    is_complete,
    load_sae,
    save_sae,
)

VARIANTS = ["relu", "topk", "batchtopk", "jumprelu", "gated"]
D_IN, D_SAE = 12, 40
# SAELens (>= 6) rules: architecture spelling and the tensors its SAE classes hold
# (load_state_dict is strict).
SAELENS_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "gated": "gated",
}
SAELENS_TENSORS = {
    "standard": {"W_enc": (D_IN, D_SAE), "W_dec": (D_SAE, D_IN), "b_enc": (D_SAE,), "b_dec": (D_IN,)},
    "topk": {"W_enc": (D_IN, D_SAE), "W_dec": (D_SAE, D_IN), "b_enc": (D_SAE,), "b_dec": (D_IN,)},
    "jumprelu": {
        "W_enc": (D_IN, D_SAE),
        "W_dec": (D_SAE, D_IN),
        "b_enc": (D_SAE,),
        "b_dec": (D_IN,),
        "threshold": (D_SAE,),
    },
    "gated": {
        "W_enc": (D_IN, D_SAE),
        "W_dec": (D_SAE, D_IN),
        "b_dec": (D_IN,),
        "b_gate": (D_SAE,),
        "r_mag": (D_SAE,),
        "b_mag": (D_SAE,),
    },
}
SAELENS_CFG_KEYS = {
    "architecture",
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
}


def trained_like(name: str):
    """A module with non-trivial values in every tensor (as after training)."""
    torch.manual_seed(1)
    sae = get_plugins().saes.get(name).build(D_IN, D_SAE, {"k": 5} if "topk" in name else {})
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if name == "batchtopk":
            sae.threshold.fill_(0.05)
        if name == "jumprelu":
            sae.log_threshold.copy_(torch.rand(D_SAE).mul(0.2).add(0.01).log())
    return sae.eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_round_trip(tmp_path, name):
    sae = trained_like(name)
    save_sae(tmp_path, sae, cfg={"metadata": {"model_name": "m"}}, scircuits_meta={"config_hash": "abc"})
    loaded, info = load_sae(tmp_path, get_plugins())
    assert type(loaded) is type(sae) and info["variant"] == name
    x = torch.randn(30, D_IN) * 2
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-6)
        assert torch.allclose(loaded(x), sae(x), atol=1e-6)
    assert is_complete(tmp_path, "abc") and not is_complete(tmp_path, "other")


@pytest.mark.parametrize("name", VARIANTS)
def test_files_follow_saelens_rules(tmp_path, name):
    save_sae(
        tmp_path, trained_like(name), cfg={}, scircuits_meta={"config_hash": "h", "metrics": {"fvu": 0.1}}
    )
    assert {p.name for p in tmp_path.iterdir()} == {CFG_FILE, WEIGHTS_FILE, META_FILE}
    cfg = json.loads((tmp_path / CFG_FILE).read_text())
    arch = SAELENS_ARCH[name]
    assert cfg["architecture"] == arch
    assert set(cfg) >= SAELENS_CFG_KEYS
    assert cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE and cfg["dtype"] == "float32"
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["sae_lens_version"] >= "6"
    if arch == "topk":
        assert cfg["k"] == 5
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == SAELENS_TENSORS[arch]
    assert all(v.dtype == torch.float32 for v in tensors.values())
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["complete"] is True and meta["variant"] == name and meta["config_hash"] == "h"
    assert meta["metrics"] == {"fvu": 0.1} and "scircuits_version" in meta
    if name == "batchtopk":
        assert torch.allclose(tensors["threshold"], torch.full((D_SAE,), 0.05))


def test_saelens_jumprelu_semantics_of_batchtopk(tmp_path):
    """Saved as jumprelu: relu(pre) * (pre > threshold) with pre = (x - b_dec) W_enc + b_enc."""
    sae = trained_like("batchtopk")
    save_sae(tmp_path, sae, cfg={}, scircuits_meta={})
    t = load_file(str(tmp_path / WEIGHTS_FILE))
    x = torch.randn(20, D_IN)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    expected = pre.relu() * (pre > t["threshold"])
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), expected, atol=1e-6)


def test_a_plain_saelens_checkpoint_loads(tmp_path):
    """No scircuits.json, apply_b_dec_to_input false: the SAELens encoder semantics are kept."""
    torch.manual_seed(0)
    w_enc, w_dec = torch.randn(D_IN, D_SAE), torch.randn(D_SAE, D_IN)
    b_enc, b_dec = torch.randn(D_SAE), torch.randn(D_IN)
    save_file({"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}, str(tmp_path / WEIGHTS_FILE))
    (tmp_path / CFG_FILE).write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": D_IN,
                "d_sae": D_SAE,
                "dtype": "float32",
                "device": "cpu",
                "apply_b_dec_to_input": False,
                "normalize_activations": "none",
                "metadata": {"sae_lens_version": "6.5.0"},
            }
        )
    )
    sae, info = load_sae(tmp_path, get_plugins())
    x = torch.randn(10, D_IN)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), (x @ w_enc + b_enc).relu(), atol=1e-5)
    assert info["variant"] == "relu" and info["meta"] == {}


def test_refuses_pickle(tmp_path):
    (tmp_path / CFG_FILE).write_text(json.dumps({"architecture": "standard", "d_in": 2, "d_sae": 4}))
    torch.save({"W_enc": torch.zeros(2, 4)}, tmp_path / "sae_weights.pt")
    with pytest.raises(DataFormatError, match="unpickling"):
        load_sae(tmp_path, get_plugins())


def test_bad_cfg_json_names_the_file(tmp_path):
    save_sae(tmp_path, trained_like("relu"), cfg={}, scircuits_meta={})
    (tmp_path / CFG_FILE).write_text('{\n  "d_in": 3,\n  oops\n}')
    with pytest.raises(DataFormatError, match=r"cfg.json, line 3"):
        load_sae(tmp_path, get_plugins())


def test_wrong_tensor_shapes_are_reported(tmp_path):
    save_sae(tmp_path, trained_like("relu"), cfg={}, scircuits_meta={})
    cfg = json.loads((tmp_path / CFG_FILE).read_text())
    cfg["d_sae"] = D_SAE + 1
    (tmp_path / CFG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(DataFormatError, match=rf"the weights do not match .*d_sae {D_SAE + 1}\).*shape"):
        load_sae(tmp_path, get_plugins())


@pytest.mark.parametrize("name", VARIANTS)
def test_folding_the_input_scale_applies_to_raw_activations(name):
    sae = trained_like(name)
    scale = 3.7
    x = torch.randn(25, D_IN)
    with torch.no_grad():
        acts = sae.encode(x * scale)
        recon = sae.decode(acts) / scale
        sae.fold_input_scale(scale)
        assert torch.allclose(sae.encode(x), acts, atol=1e-5)
        assert torch.allclose(sae(x), recon, atol=1e-5)


def test_an_interrupted_overwrite_is_not_complete(tmp_path, monkeypatch):
    from scircuits.platform.train import checkpoint

    save_sae(tmp_path, trained_like("relu"), cfg={}, scircuits_meta={"config_hash": "h"})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write_tensors_atomic", crash)
    with pytest.raises(checkpoint.ArtifactError, match="cannot write the checkpoint"):
        save_sae(tmp_path, trained_like("relu"), cfg={}, scircuits_meta={"config_hash": "h"})
    assert not is_complete(tmp_path, "h")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(
        DataFormatError, match=r"an unfinished checkpoint \(its scircuits.json says complete: false"
    ):
        load_sae(tmp_path, get_plugins())  # ablate, circuit and compare do not study it


def test_a_k_that_does_not_fit_the_latents_is_a_format_error(tmp_path):
    save_sae(tmp_path, trained_like("topk"), cfg={}, scircuits_meta={})
    meta = json.loads((tmp_path / "scircuits.json").read_text())
    for k in (D_SAE + 1, 0):
        meta["hparams"]["k"] = k
        (tmp_path / "scircuits.json").write_text(json.dumps(meta))
        with pytest.raises(DataFormatError, match=rf"k = {k} does not fit the SAE's {D_SAE} latents"):
            load_sae(tmp_path, get_plugins())
