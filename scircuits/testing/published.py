"""Published SAE layouts written from a scircuits SAE, and a Hugging Face hub cache that holds them.

``hub_repo`` lays files out as huggingface_hub's cache does (``models--ORG--NAME/refs/<rev>``,
``snapshots/<commit>/...`` linking to ``blobs/<hash>``, the hash being the sha256 of a large file
and the git blob sha1 of a JSON file), so the same loader reads them with ``HF_HUB_OFFLINE=1`` as it
would read a download. The ``*_files`` functions convert an SAE module (weights on raw activations)
into each tool's layout, as that tool writes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scircuits.platform.train.checkpoint import saelens_cfg


def random_sae(
    plugins: Any,
    variant: str,
    d_in: int,
    d_sae: int,
    seed: int = 0,
    noise: float = 0.05,
    log_threshold: float = -2.0,
    **hparams: Any,
) -> Any:
    """A ``variant`` SAE of ``plugins`` with random weights (eval mode); a JumpReLU one gets one
    threshold, exp(``log_threshold``), for every latent (as Llama Scope has)."""
    torch.manual_seed(seed)
    sae = plugins.saes.get(variant).build(d_in, d_sae, hparams)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * noise)
        if hasattr(sae, "log_threshold"):
            sae.log_threshold.fill_(log_threshold)
    return sae.eval()


def _blob_name(name: str, data: bytes) -> str:
    if name.endswith(".json"):
        return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()
    return hashlib.sha256(data).hexdigest()


def hub_repo(cache: str | Path, repo_id: str, files: Mapping[str, bytes], revision: str = "main") -> str:
    """Write ``files`` ({path in the repo: content}) as a snapshot of ``repo_id`` in the hub cache
    ``cache``; returns the commit (a hash of the contents)."""
    root = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    digest = hashlib.sha1(usedforsecurity=False)
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    commit = digest.hexdigest()
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    (root / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / _blob_name(name, data)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


def _safetensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _weights(sae: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in sae.saelens_tensors().items()}


def _without_input_shift(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder bias for an encoder that reads x itself (``apply_b_dec_to_input = False``)."""
    return {**w, "b_enc": w["b_enc"] - w["b_dec"] @ w["W_enc"]}


def saelens_files(sae: Any, hook_name: str, folder: str = "") -> dict[str, bytes]:
    """SAELens' layout (cfg.json + sae_weights.safetensors) as SAELens 6 writes it."""
    prefix = f"{folder}/" if folder else ""
    cfg = saelens_cfg(sae, {"metadata": {"hook_name": hook_name}})
    return {f"{prefix}cfg.json": _json(cfg), f"{prefix}sae_weights.safetensors": _safetensors(_weights(sae))}


def gemma_scope_files(sae: Any, folder: str) -> dict[str, bytes]:
    """Gemma Scope's ``params.npz`` (W_enc, W_dec, b_enc, b_dec, threshold; the encoder reads x)."""
    import numpy as np

    w = _without_input_shift(_weights(sae))
    buffer = io.BytesIO()
    np.savez(buffer, **{k: w[k].numpy() for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    return {f"{folder}/params.npz": buffer.getvalue()}


def llama_scope_files(
    sae: Any, folder: str, hook_name: str, norm_in: float, threshold: float
) -> dict[str, bytes]:
    """Llama Scope's layout for an SAE with one threshold for every latent: hyperparams.json and
    checkpoints/final.safetensors, on inputs scaled to mean norm sqrt(d_in) (``norm_in`` is the raw
    mean norm the scale came from)."""
    w = _without_input_shift(_weights(sae))
    scale = math.sqrt(sae.d_in) / norm_in
    hp = {
        "d_model": sae.d_in,
        "d_sae": sae.d_sae,
        "hook_point_in": hook_name,
        "hook_point_out": hook_name,
        "jump_relu_threshold": threshold / scale,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_in},
        "act_fn": "jumprelu",
        "top_k": 50,
    }
    weights = {
        "encoder.weight": (w["W_enc"] / scale).T.contiguous(),
        "encoder.bias": w["b_enc"],
        "decoder.weight": (w["W_dec"] * scale).T.contiguous(),
        "decoder.bias": w["b_dec"] * scale,
    }
    return {
        f"{folder}/hyperparams.json": _json(hp),
        f"{folder}/checkpoints/final.safetensors": _safetensors(weights),
    }


def sparsify_files(sae: Any, hookpoint: str) -> dict[str, bytes]:
    """sparsify's ``<hookpoint>/cfg.json`` + ``sae.safetensors`` for a TopK SAE."""
    w = _weights(sae)
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, sae.d_sae // sae.d_in),
        "normalize_decoder": True,
        "num_latents": sae.d_sae,
        "k": int(sae.hparams["k"]),
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": sae.d_in,
    }
    weights = {
        "encoder.weight": w["W_enc"].T.contiguous(),
        "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
    }
    return {f"{hookpoint}/cfg.json": _json(cfg), f"{hookpoint}/sae.safetensors": _safetensors(weights)}
