"""Running a trained synth model on benchmark examples: activations at known positions, answer
scores with SAE features ablated at chosen positions, and attribution (torch, imported inside).

These are the measurements :mod:`scircuits.plugins.synth.scoring` scores. The model is a plain
transformers causal LM; the site is the output of block ``layer`` (``model.model.layers[layer]``,
the resid site of scircuits). An SAE edit is applied with its error term: the block output
``x`` becomes ``x - sum_f a_f(x) W_dec[f]`` over the ablated features f (zero ablation), which is
what splicing ``x = decode(encode(x)) + error`` and zeroing those latents gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scircuits import Example


@dataclass
class Traced:
    """Block-output activations of every token of every example, with the per-token ground truth."""

    acts: np.ndarray  # (N_tokens, d_model) float32
    example_index: np.ndarray  # (N_tokens,) which example each row belongs to
    position: np.ndarray  # (N_tokens,) position in its sequence
    variables: list[dict[str, int]]  # (N_tokens,) ground truth of each row


def _ids(tokenizer: Any, example: Example) -> list[int]:
    ids = (
        tokenizer(example.prompt)["input_ids"]
        + tokenizer(example.target, add_special_tokens=False)["input_ids"]
    )
    if tokenizer.convert_ids_to_tokens(ids) != list(example.meta["tokens"]):
        raise ValueError(f"{example.id}: the tokenizer does not split the example as its ground truth does")
    return ids


def _block(model: Any, layer: int) -> Any:
    return model.model.layers[layer]


def _output(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def trace(
    model: Any, tokenizer: Any, examples: Sequence[Example], layer: int, batch_size: int = 256
) -> Traced:
    """Block ``layer``'s output at every token (examples of a task share one length)."""
    import torch

    captured: list[torch.Tensor] = []
    handle = _block(model, layer).register_forward_hook(
        lambda _m, _i, out: captured.append(_output(out).detach())
    )
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                model(input_ids=torch.tensor([_ids(tokenizer, e) for e in chunk]))
    finally:
        handle.remove()
    acts = torch.cat(captured).float()  # (E, T, D)
    n, t, d = acts.shape
    variables = [dict(cell) for e in examples for cell in e.meta["variables"]]
    return Traced(
        acts=acts.reshape(n * t, d).numpy(),
        example_index=np.repeat(np.arange(n), t),
        position=np.tile(np.arange(t), n),
        variables=variables,
    )


def answer_scores(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    layer: int | None = None,
    sae: Any = None,
    features: Sequence[int] = (),
    positions: np.ndarray | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Per example (log-prob of the answer, all answer tokens argmax) with ``features`` of ``sae``
    zero-ablated at block ``layer``'s output where ``positions`` (E, T) bool is true (default: every
    position >= 1). No features: the clean model."""
    import torch

    ids_all = torch.tensor([_ids(tokenizer, e) for e in examples])
    first = int(examples[0].meta["answer_start"])
    feats = torch.tensor(list(features), dtype=torch.long)
    if positions is None:
        positions = np.ones(ids_all.shape, dtype=bool)
        positions[:, 0] = False
    mask_all = torch.tensor(positions)
    logprobs, correct = [], []
    for start in range(0, len(examples), batch_size):
        ids = ids_all[start : start + batch_size]
        mask = mask_all[start : start + batch_size]
        handle = None
        if len(feats):

            def edit(_m: Any, _i: Any, out: Any, mask: torch.Tensor = mask) -> Any:
                x = _output(out)
                a = sae.encode(x)[..., feats]  # (B, T, k)
                delta = torch.einsum("btk,kd->btd", a, sae.W_dec[feats].to(x.dtype))
                edited = x - delta * mask[..., None].to(x.dtype)
                return (edited, *out[1:]) if isinstance(out, tuple) else edited

            handle = _block(model, layer).register_forward_hook(edit)
        try:
            with torch.no_grad():
                logits = model(input_ids=ids).logits[:, first - 1 : -1].float()
        finally:
            if handle is not None:
                handle.remove()
        targets = ids[:, first:]
        lp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
        logprobs.append(lp.sum(-1))
        correct.append((logits.argmax(-1) == targets).all(-1))
    return torch.cat(logprobs).numpy(), torch.cat(correct).numpy()


def attribution(
    model: Any, tokenizer: Any, examples: Sequence[Example], layer: int, sae: Any, batch_size: int = 128
) -> np.ndarray:
    """Per feature, the first-order estimate of the mean change of the answer's log-prob when it is
    zero-ablated at every position >= 1: mean over examples of -sum_pos a_f W_dec[f] . grad."""
    import torch

    first = int(examples[0].meta["answer_start"])
    total = None
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids = torch.tensor([_ids(tokenizer, e) for e in chunk])
        store: dict[str, torch.Tensor] = {}

        def keep(_m: Any, _i: Any, out: Any, store: dict[str, torch.Tensor] = store) -> None:
            x = _output(out)
            x.retain_grad()
            store["x"] = x

        handle = _block(model, layer).register_forward_hook(keep)
        try:
            logits = model(input_ids=ids).logits[:, first - 1 : -1].float()
        finally:
            handle.remove()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, first:, None]).sum()
        model.zero_grad(set_to_none=True)
        lp.backward()
        x, grad = store["x"].detach(), store["x"].grad
        with torch.no_grad():
            a = sae.encode(x)[:, 1:]  # (B, T-1, F)
            per_feature_grad = grad[:, 1:] @ sae.W_dec.T.to(grad.dtype)  # (B, T-1, F)
            contribution = -(a * per_feature_grad).sum(dim=(0, 1))
        total = contribution if total is None else total + contribution
    assert total is not None
    return (total / len(examples)).numpy()
