"""Training a small decoder-only transformer (LlamaForCausalLM) on a synthetic task, on the CPU.

Deterministic given the seed: the weights are initialised after ``torch.manual_seed(seed)`` and the
training problems come from a generator seeded by (task, size, seed). The loss is the cross-entropy
of the answer tokens only (the prompt's symbols are random and unpredictable). Held-out accuracy is
exact match, teacher-forced: every answer token is the argmax (how ``scircuits`` scores a target),
on test-split problems that training never sees.

The output folder holds ``config.json`` + ``model.safetensors`` (save_pretrained), the tokenizer,
``training.jsonl`` (the curve) and ``synth.json`` (task, seed, settings, accuracy, times, versions).
It follows scircuits' artifact rule: the folder is locked while it is written (a second trainer is
refused), files scircuits did not write are refused (moved aside with ``force``, never deleted), a
model of other settings is moved aside to ``<name>.superseded-<time>``, and the same settings'
complete model is kept (skipped). The files are written under ``.synth.tmp-PID`` in the folder and
moved in when complete, ``synth.json`` last (the folder is complete when it names these settings).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .tasks import ExhaustedError, Problem, TaskSpec, task_spec
from .tokenizer import build_tokenizer, encode_problem_ids

INFO_FILE = "synth.json"
CURVE_FILE = "training.jsonl"
KIND = "synth-model"
STAGING = ".synth.tmp-"


class TrainSettings(BaseModel):
    """Everything that decides the trained weights (and how the run is logged)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no NaN or inf in a number

    task: Literal["addition", "logic"]
    size: int | None = Field(default=None, description="digits (addition) or steps (logic); None: default")
    layers: int = Field(default=2, ge=1, le=12)
    d_model: int = Field(default=128, ge=8, le=1024)
    heads: int | None = Field(default=None, ge=1, description="None: d_model // 32 (at least 1)")
    mlp_ratio: int = Field(default=4, ge=1, le=8)
    seed: int = Field(default=0, ge=0)
    steps: int = Field(default=6000, ge=0)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: int = Field(default=100, ge=0)
    eval_every: int = Field(default=250, ge=1)
    eval_examples: int = Field(default=2000, ge=1)
    threads: int = Field(
        default=1, ge=1, description="torch CPU threads (1: deterministic and best on a busy CPU)"
    )
    device: str = Field(default="cpu", description="cpu, or cuda for a GPU (not bit-reproducible there)")
    stop_at: float | None = Field(
        default=None, gt=0, le=1, description="stop at the first evaluation with held-out accuracy >= this"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainSettings:
        spec = task_spec(self.task, self.size)  # ValueError on a bad size
        self.size = spec.size
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.n_heads}")
        return self

    @property
    def n_heads(self) -> int:
        return self.heads or max(1, self.d_model // 32)

    @property
    def spec(self) -> TaskSpec:
        return task_spec(self.task, self.size)


def model_config(settings: TrainSettings, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    length = settings.spec.sequence_length()
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.d_model,
        intermediate_size=settings.mlp_ratio * settings.d_model,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.n_heads,
        num_key_value_heads=settings.n_heads,
        max_position_embeddings=max(64, 2 ** math.ceil(math.log2(length))),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def batch_tensors(tokenizer: Any, problems: list[Problem], device: Any = "cpu") -> tuple[Any, Any]:
    """(input_ids, labels): labels are -100 except on the answer tokens. Problems of a task share a length."""
    import torch

    ids = torch.tensor([encode_problem_ids(tokenizer, p.tokens) for p in problems], dtype=torch.long)
    ids = ids.to(device)
    labels = ids.clone()
    labels[:, : problems[0].answer_start] = -100
    return ids, labels


def exact_match(model: Any, tokenizer: Any, problems: list[Problem], batch_size: int = 500) -> float:
    """Share of problems whose every answer token is the argmax given the gold prefix."""
    import torch

    hits = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            ids, _ = batch_tensors(tokenizer, chunk, next(model.parameters()).device)
            first = chunk[0].answer_start
            logits = model(input_ids=ids).logits[:, first - 1 : -1]
            hits += int((logits.argmax(-1) == ids[:, first:]).all(dim=1).sum())
    model.train()
    return hits / len(problems)


def _lr_at(step: int, settings: TrainSettings) -> float:
    if settings.warmup and step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    span = max(1, settings.steps - settings.warmup)
    progress = min(1.0, (step - settings.warmup) / span)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def heldout_problems(spec: TaskSpec, n: int) -> list[Problem]:
    """The fixed held-out set (test split; the same for every training seed); fewer when fewer exist."""
    problems: list[Problem] = []
    stream = spec.problems("test", seed=0, stream="heldout")
    while len(problems) < n:
        try:
            problems.append(next(stream))
        except ExhaustedError:
            break
    return problems


def versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    from scircuits import __version__

    return {
        "scircuits": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
    }


def settings_identity(settings: TrainSettings) -> str:
    """The content key of what decides the weights (the folder's marker identity)."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def _adopt_earlier(out: Path) -> None:
    """A model folder an earlier version wrote (synth.json, no marker) is recognised as ours."""
    from ._internal import read_marker, write_marker

    if not out.is_dir() or read_marker(out) is not None:
        return
    try:
        info = read_info(out)
        identity = settings_identity(TrainSettings(**info["settings"])) if info else None
    except (ValueError, TypeError, KeyError):
        identity = None
    if info is not None and info.get("kind") == "scircuits-synth-model":
        write_marker(out, KIND, identity or "earlier")


def is_complete(out: Path, settings: TrainSettings) -> bool:
    try:
        info = read_info(out)
    except ValueError:
        return False
    return info is not None and info.get("settings") == settings.model_dump(mode="json")


def train_model(
    settings: TrainSettings,
    out: str | Path,
    *,
    force: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train, write the folder ``out`` and return its ``synth.json`` record (the folder's own record,
    without training, when it already holds this model)."""
    from ._internal import FolderLock, UserError, check_device, claim_folder, remove_orphans

    if not str(out).strip():
        raise UserError("--out is empty: give the folder to write the model to")
    out = Path(out).expanduser()
    check_device(settings.device)
    with FolderLock(out, "synth model"):
        remove_orphans(out)
        remove_orphans(out.parent, prefix=f"{out.name}.tmp-")  # where earlier versions staged
        _adopt_earlier(out)
        claimed = claim_folder(out, KIND, settings_identity(settings), force=force)
        if claimed.moved_to is not None:
            held = (
                "files scircuits did not write" if claimed.state == "forced" else "a model of other settings"
            )
            print(f"[synth] {out} held {held}; moved it to {claimed.moved_to}", file=sys.stderr)
        if claimed.state == "same" and is_complete(out, settings):
            print(f"[synth] {out} already holds this model (same settings); kept it", file=sys.stderr)
            return read_info(out) or {}
        return _train_into(settings, out, on_eval)


def _train_into(
    settings: TrainSettings, out: Path, on_eval: Callable[[dict[str, Any]], None] | None
) -> dict[str, Any]:
    import torch
    from transformers import LlamaForCausalLM

    from ._internal import now_iso

    spec = settings.spec
    tokenizer = build_tokenizer(spec)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(model_config(settings, tokenizer)).to(settings.device)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay
    )
    heldout = heldout_problems(spec, settings.eval_examples)
    stream: Iterator[Problem] = spec.training_problems(settings.seed)
    curve: list[dict[str, Any]] = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    step = 0

    def evaluate(step: int, loss: float | None) -> dict[str, Any]:
        row = {
            "step": step,
            "loss": loss,
            "heldout_accuracy": exact_match(model, tokenizer, heldout),
            "wall_s": round(time.perf_counter() - wall0, 3),
            "cpu_s": round(time.process_time() - cpu0, 3),
        }
        if on_eval is not None:
            on_eval(row)
        return row

    curve.append(evaluate(0, None))
    running: list[float] = []
    stopped_early = False
    for step in range(1, settings.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step - 1, settings)
        ids, labels = batch_tensors(
            tokenizer, [next(stream) for _ in range(settings.batch_size)], settings.device
        )
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(float(loss.detach()))
        if step % settings.eval_every == 0 or step == settings.steps:
            row = evaluate(step, sum(running) / len(running))
            row["lr"] = optimizer.param_groups[0]["lr"]
            curve.append(row)
            running = []
            if settings.stop_at is not None and row["heldout_accuracy"] >= settings.stop_at:
                stopped_early = step < settings.steps
                break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    model.eval()
    final = exact_match(model, tokenizer, heldout)
    record = {
        "kind": "scircuits-synth-model",
        "task": spec.name,
        "size": spec.size,
        "size_name": "digits" if spec.name == "addition" else "steps",
        "seed": settings.seed,
        "settings": settings.model_dump(mode="json"),
        "architecture": "LlamaForCausalLM",
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "steps_done": step,
        "stopped_early": stopped_early,
        "heldout_accuracy": final,
        "heldout_examples": len(heldout),
        "heldout": "test split (fixed hash of the problem), seed 0, stream 'heldout'",
        "train_wall_s": round(wall, 2),
        "train_cpu_s": round(cpu, 2),
        "torch_threads": torch.get_num_threads(),
        "device": settings.device,
        "created": now_iso(),
        "versions": versions(),
    }
    write_folder(out, model, tokenizer, curve, record)
    return record


def write_folder(
    out: Path, model: Any, tokenizer: Any, curve: list[dict[str, Any]], record: dict[str, Any]
) -> None:
    """Write the files under ``out/.synth.tmp-PID`` and move them in, synth.json last. A full or
    unwritable disk is one line; the staging files are removed and nothing else is touched."""
    from ._internal import UserError, publish_into

    tmp = out / f"{STAGING}{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.to("cpu").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CURVE_FILE).write_text("".join(json.dumps(r) + "\n" for r in curve))
        (tmp / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
        publish_into(tmp, out, last=INFO_FILE)
    except Exception as exc:
        code = _io_errno(exc)
        if code is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"{out}: cannot write the trained model ({os.strerror(code).lower()}); free space or choose "
            "another --out, then run again (nothing already there was removed)"
        ) from None


def _io_errno(exc: BaseException) -> int | None:
    """The errno of a write failure: an OSError's, or the one safetensors names only in its text."""
    if isinstance(exc, OSError):
        code = exc.errno
    else:
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    return code if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG) else None


def read_info(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
