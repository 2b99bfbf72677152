"""Readers of published checkpoint layouts: Gemma Scope (npz), Llama Scope, sparsify.

Each returns SAELens' view of the checkpoint (cfg fields and tensors with SAELens names, applying
to raw activations), as SAELens' own loaders build it, with one difference where the publisher's
code disagrees with SAELens: sparsify always subtracts ``b_dec`` before encoding (its ``Sae.encode``),
so we read it that way.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from scircuits import DataFormatError, HubLocation, PublishedSAE, SAESource


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object")
    return data


def load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataFormatError(
            f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})"
        ) from None


def need(tensors: dict[str, Any], names: tuple[str, ...], where: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DataFormatError(f"{where}: missing {', '.join(missing)} (has {', '.join(sorted(tensors))})")


def where_text(folder: Path, where: HubLocation | None) -> str:
    """The repository and folder names to read layer and site from (a hub location, else the path,
    which in the hub cache holds ``models--ORG--NAME``)."""
    return f"{where.repo_id}/{where.path}" if where is not None else str(folder.resolve())


class GemmaScope(SAESource):
    """``google/gemma-scope-*``: ``layer_N/width_W/average_l0_L/params.npz``, JumpReLU with per-latent
    thresholds; the encoder reads x itself (no ``b_dec`` subtracted)."""

    name = "gemma-scope"
    description = "Gemma Scope (google/gemma-scope-*): layer_N/width_W/average_l0_L/params.npz, JumpReLU"

    def matches(self, folder: Path, where: HubLocation | None = None) -> bool:
        return (folder / "params.npz").is_file()

    def read(self, folder: Path, where: HubLocation | None = None) -> PublishedSAE:
        import numpy as np
        import torch

        path = folder / "params.npz"
        try:
            with np.load(path) as data:
                raw = {key: np.asarray(data[key]) for key in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise DataFormatError(f"{path}: not a readable npz file ({exc})") from None
        tensors = {
            ("W_" + k[2:] if k.startswith("w_") else k): torch.tensor(v, dtype=torch.float32)
            for k, v in raw.items()
        }
        need(tensors, ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"), path)
        tensors.pop("scaling_factor", None)
        d_in, d_sae = tensors["W_enc"].shape
        text = where_text(folder, where)
        layer = re.search(r"layer_(\d+)", text)
        hook = None
        if layer is not None:
            if "-res" in text:
                hook = f"blocks.{layer.group(1)}.hook_resid_post"
            elif "-mlp" in text:
                hook = f"blocks.{layer.group(1)}.hook_mlp_out"
            elif "-att" in text:
                raise DataFormatError(
                    f"{path}: Gemma Scope's attention SAEs read the heads' outputs (hook_z) before the "
                    "output projection, which is not a site scircuits splices; use a -res or -mlp SAE"
                )
        l0 = re.search(r"average_l0_(\d+)", text)
        cfg = {
            "architecture": "jumprelu",
            "d_in": int(d_in),
            "d_sae": int(d_sae),
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "metadata": {"hook_name": hook},
        }
        metrics = {"l0": int(l0.group(1))} if l0 else {}
        return PublishedSAE(cfg, tensors, hook, [path], metrics)


class LlamaScope(SAESource):
    """``fnlp/Llama3_1-8B-Base-L*``: ``hyperparams.json`` + ``checkpoints/final.safetensors``
    (``encoder.weight`` d_sae x d_in, ``decoder.weight`` d_in x d_sae), one JumpReLU threshold for all
    latents, trained on inputs scaled to a mean norm of sqrt(d_in) (folded into the weights here, as
    SAELens does)."""

    name = "llama-scope"
    description = "Llama Scope (fnlp/Llama3_1-8B-Base-L*): hyperparams.json + checkpoints/final.safetensors"

    def matches(self, folder: Path, where: HubLocation | None = None) -> bool:
        return (folder / "hyperparams.json").is_file() and (
            folder / "checkpoints" / "final.safetensors"
        ).is_file()

    def read(self, folder: Path, where: HubLocation | None = None) -> PublishedSAE:
        import torch

        hp_path, weights_path = folder / "hyperparams.json", folder / "checkpoints" / "final.safetensors"
        hp = read_json(hp_path)
        loaded = load_safetensors(weights_path)
        need(loaded, ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"), weights_path)
        try:
            d_in, d_sae = int(hp["d_model"]), int(hp["d_sae"])
            threshold = float(hp["jump_relu_threshold"])
            norm_in = hp.get("dataset_average_activation_norm", {}).get("in")
            hook = str(hp["hook_point_in"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"{hp_path}: missing or malformed {exc}") from None
        if hp.get("hook_point_out", hook) != hook:
            raise DataFormatError(
                f"{hp_path}: reads {hook} and writes {hp['hook_point_out']}: a transcoder, not an SAE"
            )
        # inputs were scaled by sqrt(d_in) / mean norm: folded into the weights (SAELens'
        # fold_activation_norm_scaling_factor), the threshold scaled as SAELens scales it
        scale = math.sqrt(d_in) / float(norm_in) if norm_in else 1.0
        tensors = {
            "W_enc": loaded["encoder.weight"].float().T * scale,
            "W_dec": loaded["decoder.weight"].float().T / scale,
            "b_enc": loaded["encoder.bias"].float(),
            "b_dec": loaded["decoder.bias"].float() / scale,
            "threshold": torch.full((d_sae,), threshold * scale),
        }
        cfg = {
            "architecture": "jumprelu",
            "d_in": d_in,
            "d_sae": d_sae,
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "metadata": {"hook_name": hook},
        }
        metrics = {"top_k": hp["top_k"]} if "top_k" in hp else {}
        return PublishedSAE(cfg, tensors, hook, [hp_path, weights_path], {"input_scale": scale, **metrics})


class Sparsify(SAESource):
    """EleutherAI's sparsify: ``<hookpoint>/cfg.json`` + ``<hookpoint>/sae.safetensors``
    (``encoder.weight`` d_sae x d_in, ``W_dec`` d_sae x d_in), TopK with its own k; the folder name is
    the hookpoint (``layers.N`` under the base model)."""

    name = "sparsify"
    description = "sparsify (EleutherAI): layers.N/cfg.json + layers.N/sae.safetensors, TopK"

    def matches(self, folder: Path, where: HubLocation | None = None) -> bool:
        return (folder / "cfg.json").is_file() and (folder / "sae.safetensors").is_file()

    def read(self, folder: Path, where: HubLocation | None = None) -> PublishedSAE:
        cfg_path, weights_path = folder / "cfg.json", folder / "sae.safetensors"
        raw = read_json(cfg_path)
        loaded = load_safetensors(weights_path)
        if raw.get("transcode") or "W_skip" in loaded:
            raise DataFormatError(f"{folder}: a sparsify transcoder (or skip connection), not an SAE")
        if raw.get("activation", "topk") != "topk":
            raise DataFormatError(f"{cfg_path}: activation {raw['activation']!r}; only topk is read")
        need(loaded, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), weights_path)
        d_sae, d_in = loaded["encoder.weight"].shape
        try:
            k = int(raw["k"])
        except (KeyError, TypeError, ValueError):
            raise DataFormatError(f"{cfg_path}: no integer 'k'") from None
        tensors = {
            "W_enc": loaded["encoder.weight"].float().T,
            "W_dec": loaded["W_dec"].float(),
            "b_enc": loaded["encoder.bias"].float(),
            "b_dec": loaded["b_dec"].float(),
        }
        hook = folder.name if re.fullmatch(r"(\w+\.)*layers\.\d+(\.\w+)?", folder.name) else None
        cfg = {
            "architecture": "topk",
            "k": k,
            "d_in": int(d_in),
            "d_sae": int(d_sae),
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "metadata": {"hook_name": hook},
        }
        return PublishedSAE(cfg, tensors, hook, [cfg_path, weights_path])
