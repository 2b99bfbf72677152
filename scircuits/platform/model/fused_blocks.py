"""The blocks above a splice site as one fused float32 forward, for Llama-style decoders.

The study runs the same blocks many times (every condition, every batch), and in transformers'
eager code a quarter of their time is elementwise work between the matrix products: the RMS norms
as four passes each, rotary embeddings through ``cat``, the MLP's ``act(gate) * up`` allocating
each intermediate. ``FusedDecoderStack`` computes the same function with fewer passes:

* ``torch.rms_norm`` for each norm; the residual additions folded into the output projections
  (``addmm``);
* q, k and v as one product, gate and up as one (their weights concatenated once, where the
  copies stay within ``CONCATENATE_BYTES``; a larger model's products run apart on its own weights);
* ``silu(gate) * up`` in place; attention through ``scaled_dot_product_attention`` with a causal
  mask, which is exact for right-padded batches (a real token never sees a pad to its right).

It takes only blocks it can prove it reproduces: transformers' Llama, Mistral and Qwen2 decoder
layers with their standard parts (RMS norms, SiLU gated MLP without biases, rotary embeddings from
the base model's own ``rotary_emb``, full attention). Anything else, gradients, autocast, a batch
longer than a sliding window, or a hook on any of the blocks' modules (a circuit's later sites) runs
the eager blocks: ``recognise`` returns None or ``takes`` False.
``tests/test_fused_blocks.py`` holds both paths to the same hidden states on tiny random models of
each architecture and on the study's model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

FUSED_BLOCK_TYPES = frozenset({"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"})
NORM_TYPES = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"})


@dataclass
class _Block:
    qkv: list[torch.Tensor]  # (d, q + 2 kv) as one product, or q, k, v apart: (d, n) views
    qkv_bias: torch.Tensor | None
    o_weight: torch.Tensor  # (heads * head_dim, d) view of o_proj.weight.T
    o_bias: torch.Tensor | None
    gate_up: list[torch.Tensor]  # (d, 2 I) as one product, or gate and up apart
    down_weight: torch.Tensor  # (I, d) view of down_proj.weight.T
    norm1: torch.Tensor
    eps1: float
    norm2: torch.Tensor
    eps2: float


class FusedDecoderStack:
    """``blocks`` (consecutive decoder layers) as one function of the residual stream."""

    # q/k/v and gate/up are concatenated into one product each (copies of those weights) while the
    # copies of the whole stack stay within this many bytes; above it (a large model) the products
    # run apart on the model's own weights, so the fused path costs no memory
    CONCATENATE_BYTES = 512 * 2**20

    def __init__(self, blocks: list[nn.Module], rotary: nn.Module, sliding_window: int | None) -> None:
        first = blocks[0].self_attn
        self.n_heads = first.config.num_attention_heads
        self.n_kv = first.config.num_key_value_heads
        self.head_dim = first.head_dim
        self.scaling = float(first.scaling)
        self.intermediate = blocks[0].mlp.gate_proj.out_features
        self.rotary = rotary
        self.sliding_window = sliding_window
        copies = sum(
            getattr(b.self_attn, n).weight.nbytes for b in blocks for n in ("q_proj", "k_proj", "v_proj")
        ) + sum(getattr(b.mlp, n).weight.nbytes for b in blocks for n in ("gate_proj", "up_proj"))
        self.concatenated = copies <= self.CONCATENATE_BYTES
        self.blocks = [self._pack(b, self.concatenated) for b in blocks]
        self.modules = [m for b in blocks for m in b.modules()]  # whose hooks the fused forward would skip

    @staticmethod
    def _pack(block: nn.Module, concatenate: bool) -> _Block:
        attn, mlp = block.self_attn, block.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        with torch.no_grad():
            biases = [p.bias for p in projections]
            qkv_bias = (
                None
                if all(b is None for b in biases)
                else torch.cat(
                    [
                        b.detach()
                        if b is not None
                        else torch.zeros(p.out_features, dtype=p.weight.dtype, device=p.weight.device)
                        for b, p in zip(biases, projections, strict=True)
                    ]
                )
            )
            if concatenate:
                qkv = [torch.cat([p.weight for p in projections]).T.contiguous()]
                gate_up = [torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).T.contiguous()]
            else:
                qkv = [p.weight.detach().T for p in projections]
                gate_up = [mlp.gate_proj.weight.detach().T, mlp.up_proj.weight.detach().T]
        return _Block(
            qkv=qkv,
            qkv_bias=qkv_bias,
            o_weight=attn.o_proj.weight.detach().T,
            o_bias=None if attn.o_proj.bias is None else attn.o_proj.bias.detach(),
            gate_up=gate_up,
            down_weight=mlp.down_proj.weight.detach().T,
            norm1=block.input_layernorm.weight.detach(),
            eps1=float(block.input_layernorm.variance_epsilon),
            norm2=block.post_attention_layernorm.weight.detach(),
            eps2=float(block.post_attention_layernorm.variance_epsilon),
        )

    @classmethod
    def recognise(cls, base: nn.Module, blocks: list[nn.Module]) -> FusedDecoderStack | None:
        """A fused stack of ``blocks`` under ``base`` (the model without its unembedding), or None
        when any block is not one this module reproduces exactly."""
        if not blocks or not isinstance(getattr(base, "rotary_emb", None), nn.Module):
            return None
        if not all(_standard(block) for block in blocks):
            return None
        shapes = {
            (b.self_attn.head_dim, float(b.self_attn.scaling), b.mlp.gate_proj.out_features) for b in blocks
        }
        if len(shapes) != 1:
            return None
        config = blocks[0].self_attn.config
        window = getattr(config, "sliding_window", None)
        if getattr(config, "use_sliding_window", True) is False:
            window = None
        return cls(blocks, base.rotary_emb, int(window) if window else None)

    def takes(self, hidden: torch.Tensor) -> bool:
        """Whether this call can be fused: float32, no gradient, within any sliding window, and no
        hook on any part of the blocks (a circuit reads and edits later sites through hooks)."""
        return (
            not self.hooked()
            and hidden.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled(hidden.device.type)
            and (self.sliding_window is None or hidden.shape[1] <= self.sliding_window)
        )

    def hooked(self) -> bool:
        """Whether a forward hook (module or global) would see the blocks' modules run."""
        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)

    def __call__(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The residual stream (B, T, d) after every block (before the final norm)."""
        batch, width, d = hidden.shape
        cos, sin = self.rotary(hidden, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        h = hidden.reshape(batch * width, d)
        nq, nkv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        for block in self.blocks:
            x = torch.rms_norm(h, (d,), block.norm1, block.eps1)
            qkv = _products(x, block.qkv)
            if block.qkv_bias is not None:
                qkv += block.qkv_bias
            q = qkv[:, :nq].view(batch, width, self.n_heads, self.head_dim).transpose(1, 2)
            k = qkv[:, nq : nq + nkv].view(batch, width, self.n_kv, self.head_dim).transpose(1, 2)
            v = qkv[:, nq + nkv :].view(batch, width, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            attended = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scaling, enable_gqa=self.n_kv != self.n_heads
            )
            attended = attended.transpose(1, 2).reshape(batch * width, nq)
            h = torch.addmm(h, attended, block.o_weight)
            if block.o_bias is not None:
                h += block.o_bias
            x = torch.rms_norm(h, (d,), block.norm2, block.eps2)
            gate_up = _products(x, block.gate_up)
            gated = F.silu(gate_up[:, : self.intermediate])
            gated.mul_(gate_up[:, self.intermediate :])
            h = torch.addmm(h, gated, block.down_weight)
        return h.view(batch, width, d)


def _products(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """x times the weights side by side: one product, or one per weight written into one buffer."""
    if len(weights) == 1:
        return x @ weights[0]
    out = x.new_empty(x.shape[0], sum(w.shape[1] for w in weights))
    start = 0
    for w in weights:
        torch.mm(x, w, out=out[:, start : start + w.shape[1]])
        start += w.shape[1]
    return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb`` for one tensor: x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
    return torch.cat((x1 * c1 - x2 * s1, x2 * c2 + x1 * s2), -1)


def _standard(block: nn.Module) -> bool:
    """A decoder layer whose every part is the standard one ``FusedDecoderStack`` computes."""
    if type(block).__name__ not in FUSED_BLOCK_TYPES:
        return False
    attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    if attn is None or mlp is None or getattr(block, "attention_type", "full_attention") != "full_attention":
        return False
    linears = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not all(type(p) is nn.Linear for p in linears):
        return False
    if any(getattr(mlp, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")):
        return False
    config: Any = getattr(attn, "config", None)
    if config is None or getattr(config, "hidden_act", None) != "silu":
        return False
    if any(hasattr(attn, n) for n in ("q_norm", "k_norm")):  # Qwen3-style per-head norms
        return False
    norms = (getattr(block, "input_layernorm", None), getattr(block, "post_attention_layernorm", None))
    if not all(type(n).__name__ in NORM_TYPES and hasattr(n, "variance_epsilon") for n in norms):
        return False
    if getattr(attn, "head_dim", None) is None or getattr(attn, "scaling", None) is None:
        return False
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    return (
        attn.q_proj.out_features == n_heads * attn.head_dim
        and attn.k_proj.out_features == n_kv * attn.head_dim == attn.v_proj.out_features
        and attn.head_dim % 2 == 0
    )
