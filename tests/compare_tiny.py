"""Tiny runs for the compare tests: two architectures with different tokenizers, made by `scircuits run`."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np

from scircuits import file_sha256
from scircuits.cli import main
from scircuits.testing import save_tiny_model, tiny_loaded_model, tiny_model


def digit_pair_tokenizer():
    """Like the tiny character tokenizer (same special ids) but digits go in pairs: "161" is "16","1"."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(("<pad>", "<bos>", "<eos>", "<unk>"))}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    for i in range(100):
        vocab.setdefault(f"{i:02d}", len(vocab))
        vocab.setdefault(str(i), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[0-9]{1,2}|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_models(folder: Path) -> tuple[Path, Path]:
    """A: llama-like (SmolLM2 architecture), character tokenizer. B: GPT-2 architecture, digit pairs."""
    a = save_tiny_model(tiny_loaded_model("smollm2-135m"), folder / "tiny-llama")
    b = folder / "tiny-gpt2"
    model = tiny_model("gpt2-medium", seed=1, vocab_size=256)
    model.save_pretrained(b)
    digit_pair_tokenizer().save_pretrained(b)
    return a, b


def tiny_run(model_folder: Path, layer: int, out: Path, seed: int = 0) -> Path:
    main(
        [
            "run", "--model", f"hf:{model_folder}", "--layer", str(layer), "--limit", "16",
            "--collect-limit", "48", "--train-tokens", "6000", "--train-batch-size", "512",
            "--top-k", "1,4", "--random-controls", "1", "--exact-top", "8", "--seed", str(seed),
            "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    (run,) = [p for p in out.iterdir() if p.name.endswith(f"resid{layer}")]
    return run


def permuted_copy(run, dest, perm):
    """A copy of ``run`` whose SAE is the same SAE with latents reordered: new latent j = old perm[j]."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, dest)
    weights = load_file(str(dest / "sae" / "sae_weights.safetensors"))
    weights["W_enc"] = weights["W_enc"][:, perm].contiguous()
    weights["b_enc"] = weights["b_enc"][perm].contiguous()
    weights["W_dec"] = weights["W_dec"][perm].contiguous()
    save_file(weights, str(dest / "sae" / "sae_weights.safetensors"), metadata={"format": "pt"})
    results_path = dest / "causal" / "results.json"
    results = json.loads(results_path.read_text())
    new_id = np.argsort(perm)  # old latent i is new latent new_id[i]
    results["config"]["sae"] = str(dest / "sae")
    # measured as if with the permuted SAE: its record names those weights
    results["provenance"]["sae"]["weights_sha256"] = file_sha256(dest / "sae" / "sae_weights.safetensors")
    for feature in results["features"]:
        feature["id"] = int(new_id[feature["id"]])
    results_path.write_text(json.dumps(results))
    return dest
