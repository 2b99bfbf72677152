"""An exact change of the residual basis of a Llama-class model: the same function, no privileged axes.

Training privileges the residual stream's coordinates (RMSNorm's per-coordinate gains, Adam's
per-coordinate updates), so a variable may sit on one raw dimension for reasons the function does not
need. Two steps remove that and leave the function as it was:

1. **Fold the RMSNorm gains.** ``RMSNorm(x) = g * x / rms(x)``, and every norm output is read only by
   linear maps (q/k/v after ``input_layernorm``, gate/up after ``post_attention_layernorm``, lm_head
   after the final norm), so ``W @ diag(g)`` replaces ``W`` and ``g`` becomes 1.
2. **Rotate the residual stream** by a seeded Haar-random orthogonal ``R`` (``x -> x @ R``): the
   embedding rows become ``E @ R``, every write into the stream (o_proj, down_proj and their biases)
   is followed by ``R``, every read (the folded q/k/v/gate/up/lm_head) is preceded by ``R.T``.
   ``rms(x @ R) = rms(x)`` because ``R`` is orthogonal, so the (unit-gain) norms commute with it.

The arithmetic is done in float64 and written back in the model's dtype; :func:`rotate_synth_model`
measures the largest logit difference on real inputs and records it with the seed in ``synth.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from scircuits.platform.common.artifacts import (
    check_can_create,
    check_out_apart,
    publish_dir,
    tmp_name,
    write_marker,
)
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.provenance import now_iso
from scircuits.platform.contract.errors import ConfigError, DataFormatError
from scircuits.platform.contract.synth_tasks import SynthTask
from scircuits.platform.groundtruth.tokenizer import encode_problem_ids
from scircuits.platform.groundtruth.training import INFO_FILE, KIND, _io_errno, read_info, versions

log = get_logger(__name__)

FOLD = (
    "RMSNorm gains folded into the maps that read the normed stream (q/k/v_proj, gate/up_proj, "
    "lm_head) and set to 1; then residual x -> x @ R: embed_tokens @ R, o_proj/down_proj outputs @ R, "
    "q/k/v/gate/up/lm_head inputs @ R.T (float64 arithmetic)"
)
CHECK_PROBLEMS = 500  # held-out problems whose logits are compared before and after
# save_pretrained writes these; every other file of the source folder is copied as it is
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


def haar_orthogonal(d: int, seed: int) -> Any:
    """A ``d x d`` orthogonal matrix drawn from the Haar measure (float64), a pure function of ``seed``."""
    import torch

    gauss = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    return q * torch.sign(torch.diagonal(r))[None, :]  # the sign fix makes the draw Haar


def check_llama(model: Any) -> None:
    """Refuse a model whose residual stream this rotation does not know all readers and writers of."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind != "llama":
        raise ConfigError(
            f"rotating the residual stream needs a Llama model (LlamaForCausalLM); this one is "
            f"{kind or type(model).__name__!r}"
        )
    if getattr(config, "tie_word_embeddings", False):
        raise ConfigError(
            "rotating the residual stream needs untied embeddings (tie_word_embeddings false); the fold "
            "changes lm_head but not the embedding"
        )


def rotate_residual(model: Any, seed: int) -> Any:
    """Fold the RMSNorm gains and rotate the residual stream of a Llama model in place (see the module
    docstring); return ``R`` (float64). The model computes the same function up to float rounding."""
    import torch

    check_llama(model)
    core = model.model
    d = core.embed_tokens.weight.shape[1]
    rot = haar_orthogonal(d, seed)

    def update(linear: Any, new: Any) -> None:
        linear.weight.data.copy_(new.to(linear.weight.dtype))

    def read(linear: Any, gain: Any) -> None:  # input x @ R.T, gain folded: W -> W diag(g) R
        update(linear, (linear.weight.double() * gain[None, :]) @ rot)

    def write(linear: Any) -> None:  # output followed by R: W -> R.T W, b -> b R
        update(linear, rot.T @ linear.weight.double())
        if linear.bias is not None:
            linear.bias.data.copy_((linear.bias.double() @ rot).to(linear.bias.dtype))

    def unit(norm: Any) -> Any:
        gain = norm.weight.detach().double().clone()
        norm.weight.data.fill_(1.0)
        return gain

    with torch.no_grad():
        update(core.embed_tokens, core.embed_tokens.weight.double() @ rot)
        for block in core.layers:
            gain = unit(block.input_layernorm)
            for name in ("q_proj", "k_proj", "v_proj"):
                read(getattr(block.self_attn, name), gain)
            write(block.self_attn.o_proj)
            gain = unit(block.post_attention_layernorm)
            read(block.mlp.gate_proj, gain)
            read(block.mlp.up_proj, gain)
            write(block.mlp.down_proj)
        read(model.lm_head, unit(core.norm))
    return rot


def max_logit_difference(before: Any, after: Any, ids: Any, batch: int = 250) -> tuple[float, float]:
    """(max |logit difference| of the two models on ``ids``, max |logit| of ``before``)."""
    import torch

    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            logits = before(input_ids=chunk).logits.double()
            worst = max(worst, float((logits - after(input_ids=chunk).logits.double()).abs().max()))
            scale = max(scale, float(logits.abs().max()))
    return worst, scale


def _check_inputs(task: SynthTask | None, info: dict[str, Any], tokenizer: Any) -> tuple[Any, str]:
    """Input ids to compare logits on: the task's held-out problems, when the caller has the task;
    else seeded random sequences over the vocabulary (the rotation does not depend on the task)."""
    import torch

    if task is not None:
        problems = task.heldout_problems(CHECK_PROBLEMS)
        ids = torch.tensor([encode_problem_ids(tokenizer, p.tokens) for p in problems], dtype=torch.long)
        return ids, f"{len(problems)} held-out problems of task {task.name} ({task.size_name} {task.size})"
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (CHECK_PROBLEMS, 16), generator=generator)
    return ids, f"{CHECK_PROBLEMS} random sequences of 16 tokens (task {info.get('task')!r} not given)"


def rotate_synth_model(
    source: str | Path, out: str | Path, seed: int, task: SynthTask | None = None
) -> dict[str, Any]:
    """Write ``out``: the trained synth model of ``source`` with its norm gains folded and its residual
    stream rotated by ``R(seed)``; its ``synth.json`` is the source's plus ``rotation`` (seed, fold,
    measured max logit difference, source). ``out`` must not exist; ``source`` is only read. ``task``
    (the source's task at its size) supplies the inputs the logits are compared on."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    source = Path(source).expanduser()
    info = read_info(source) if source.is_dir() else None
    if info is None:
        raise ConfigError(f"{source}: not a synth model folder (no {INFO_FILE}); give a `synth train` --out")
    target = check_out_apart(out, read=[source])
    if target.exists() or target.is_symlink():
        raise ConfigError(f"--out {out} exists; give a new folder (nothing was written)")
    check_can_create(target)
    config_kind = _config_kind(source)
    if config_kind != "llama":
        raise ConfigError(
            f"{source}: rotating the residual stream needs a Llama model (LlamaForCausalLM); this one is "
            f"{config_kind!r}"
        )
    if seed < 0:
        raise ConfigError(f"--seed {seed}: give a seed >= 0")
    from safetensors import SafetensorError

    tokenizer = AutoTokenizer.from_pretrained(source)
    try:
        original = LlamaForCausalLM.from_pretrained(source).eval()
    except SafetensorError as exc:
        raise DataFormatError(
            f"{source}: the model's weights cannot be read ({str(exc).splitlines()[0]}); the folder is "
            "damaged: train it again (`scircuits synth train`)"
        ) from None
    check_llama(original)
    rotated = LlamaForCausalLM.from_pretrained(source).eval()
    rotate_residual(rotated, seed)
    ids, described = _check_inputs(task, info, tokenizer)
    difference, scale = max_logit_difference(original, rotated, ids)
    # the float rounding of the source itself: the same model in float32 and in float64
    in_float64 = LlamaForCausalLM.from_pretrained(source).double().eval()
    rounding, _ = max_logit_difference(original, in_float64, ids)
    log.info(f"[synth] rotated {source} (seed {seed}): max |logit difference| {difference:.2e}, {described}")
    record = dict(info)
    record["rotation"] = {
        "seed": seed,
        "fold": FOLD,
        "max_abs_logit_diff": difference,
        "max_abs_logit": scale,
        "rounding_reference": rounding,
        "rounding_reference_is": "max |logit difference| of the source model in float32 vs float64",
        "checked_on": described,
        "dtype": str(next(rotated.parameters()).dtype).removeprefix("torch."),
        "source": str(source.resolve()),
        "source_synth_json_sha256": hashlib.sha256((source / INFO_FILE).read_bytes()).hexdigest(),
        "previous": info.get("rotation"),
        "created": now_iso(),
        "versions": versions(),
    }
    staging = tmp_name(target)
    try:
        staging.mkdir(parents=True)
        rotated.save_pretrained(staging)
        skip = (*MODEL_FILES, INFO_FILE)
        for path in sorted(source.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.name not in skip:
                shutil.copy2(path, staging / path.name)
        write_marker(staging, KIND, f"rotated-{seed}-{record['rotation']['source_synth_json_sha256'][:16]}")
        (staging / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
        publish_dir(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        code = _io_errno(exc)
        if code is None:
            raise
        raise ConfigError(
            f"{target}: cannot write the rotated model ({os.strerror(code).lower()}); free space or choose "
            "another --out (nothing was written)"
        ) from None
    return record


def _config_kind(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
