"""Training a small decoder-only transformer (LlamaForCausalLM) on a synthetic task, on the CPU.

Deterministic given the seed: the weights are initialised after ``torch.manual_seed(seed)`` and the
training problems come from a generator seeded by (task, size, seed). The loss is the cross-entropy
of the answer tokens only (the prompt's symbols are random and unpredictable). Held-out accuracy is
exact match, teacher-forced: every answer token is the argmax (how ``scircuits`` scores a target),
on test-split problems that training never sees.

The output folder holds ``config.json`` + ``model.safetensors`` (save_pretrained), the tokenizer,
``training.jsonl`` (the curve) and ``synth.json`` (task, seed, settings, accuracy, times, versions).
It is written to a temporary folder and renamed into place when complete.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .tasks import ExhaustedError, Problem, TaskSpec, task_spec
from .tokenizer import build_tokenizer, encode_problem_ids

INFO_FILE = "synth.json"
CURVE_FILE = "training.jsonl"


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


def train_model(
    settings: TrainSettings,
    out: str | Path,
    *,
    overwrite: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train, write the folder ``out`` and return its ``synth.json`` record."""
    import torch
    from transformers import LlamaForCausalLM

    from ._internal import UserError, now_iso

    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
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
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.to("cpu").save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / CURVE_FILE).write_text("".join(json.dumps(r) + "\n" for r in curve))
    (tmp / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return record


def read_info(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
