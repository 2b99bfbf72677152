"""The torch modules of the built-in SAE variants. Imported lazily by ``SAEVariant.build``.

Every loss term is on the scale of a per-element mean squared error (``mse``), so coefficients
are comparable across widths. Definitions:

- relu:      mse + l1 * mean_t sum_i f_i |W_dec,i| + decorrelation * mean_{i!=j} corr(f_i, f_j)^2
- topk:      mse + auxk_alpha * auxk   (auxk: the k_aux largest dead latents reconstruct the residual,
             normalised by the residual's variance)
- batchtopk: as topk, with the k * batch largest activations of the whole batch kept; the inference
             threshold is a running mean of the smallest kept activation
- jumprelu:  mse + l0 * mean_t #{i: pre_i > theta_i}  (step gradient by a rectangle kernel of
             ``bandwidth``; straight-through for the thresholds)
- gated:     mse + l1 * mean_t sum_i relu(pi_gate,i) |W_dec,i| + aux mse of the gate path through a
             frozen copy of the decoder
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from scircuits import (
    SparseAutoencoder,
    TrainOutput,
    encoder_product,
    fired_counts,
    mse_per_element,
)

from .sparse_ops import (
    dense_decode,
    dense_topk_encode,
    relu_step,
    scatter_dense,
    sparse_decode,
    topk_encode,
)

# -- relu (SAELens "standard") ---------------------------------------------------------------


class ReLUSAE(SparseAutoencoder):
    variant = "relu"
    saelens_architecture = "standard"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activation(x).relu()

    fused = True  # train_forward through ``relu_step``; False: the eager reference below

    def train_forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        # decorrelation needs f itself; a subclass with its own encode is not this step's relu
        if not self.fused or self.hparams["decorrelation"] > 0 or type(self).encode is not ReLUSAE.encode:
            return self.train_forward_eager(x)
        decoded, f_sum, fired = relu_step(
            x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.encoder_bf16
        )
        x_hat = decoded + self.b_dec
        mse = mse_per_element(x, x_hat)
        l1 = (f_sum * self.W_dec.norm(dim=1)).sum() / x.shape[0]
        loss = mse + self.hparams["l1"] * l1
        return TrainOutput(
            {"mse": mse, "l1": l1, "loss": loss}, x_hat, fired, float(fired.sum()) / x.shape[0]
        )

    def train_forward_eager(self, x: torch.Tensor) -> TrainOutput:
        f = self.encode(x)
        # with encoder_bf16 the decoder product runs in bfloat16 too: relu has no sparse path
        x_hat = encoder_product(f, self.W_dec, self.encoder_bf16) + self.b_dec
        dec_norms = self.W_dec.norm(dim=1)
        mse = mse_per_element(x, x_hat)
        l1 = (f * dec_norms).sum(dim=-1).mean()
        terms = {"mse": mse, "l1": l1}
        loss = mse + self.hparams["l1"] * l1
        if self.hparams["decorrelation"] > 0:
            terms["decorrelation"] = decorrelation_penalty(f[: self.hparams["decorrelation_tokens"]])
            loss = loss + self.hparams["decorrelation"] * terms["decorrelation"]
        terms["loss"] = loss
        with torch.no_grad():
            fired = fired_counts(f)
            l0 = float((f > 0).sum(dim=-1).float().mean())
        return TrainOutput(terms, x_hat, fired, l0)


def decorrelation_penalty(f: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean squared Pearson correlation over distinct latent pairs, across the tokens of ``f``.

    Uses ``sum_{ij} C_ij^2 = ||Z Z^T||_F^2 / n^2`` with Z the standardised activations, so the cost
    is O(n^2 d_sae) rather than O(n d_sae^2) when there are fewer tokens than latents.
    """
    n, m = f.shape
    if n < 2 or m < 2:
        return f.new_zeros(())
    z = f - f.mean(dim=0, keepdim=True)
    z = z / (z.pow(2).mean(dim=0, keepdim=True).sqrt() + eps)
    gram = z @ z.t() if n <= m else z.t() @ z
    total = gram.pow(2).sum() / (n * n)
    diagonal = (z.pow(2).mean(dim=0)).pow(2).sum()
    return (total - diagonal).clamp_min(0) / (m * (m - 1))


# -- topk ------------------------------------------------------------------------------------


class TopKSAE(SparseAutoencoder):
    variant = "topk"
    saelens_architecture = "topk"
    unit_norm_decoder = True
    # rows of norm 1/sqrt(3), as a default nn.Linear init gives at any width: measured on
    # bench/train.py, one pass ends at FVU 0.667 against 0.684 with norm-1 rows
    encoder_init_scale = 3**-0.5

    def __init__(self, d_in: int, d_sae: int, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(d_in, d_sae, hparams)
        self.k = int(self.hparams["k"])
        self.uses_dead_mask = self.hparams["auxk_alpha"] > 0
        window = self.hparams.get("dead_tokens")
        self.dead_tokens = int(window) if window is not None else None
        self.sparse = bool(self.hparams.get("sparse", True))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = dense_topk_encode(x - self.b_dec, self.W_enc, self.b_enc, self.k, self.encoder_bf16)
        return scatter_dense(indices, values, self.d_sae)

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encode = topk_encode if self.sparse else dense_topk_encode
        return encode(x, self.W_enc, self.b_enc, self.k, self.encoder_bf16, self.b_dec)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        decode = sparse_decode if self.sparse else dense_decode
        return decode(indices, values, self.W_dec) + self.b_dec

    def train_forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        values, indices = self.encode_sparse(x)
        x_hat = self.decode_sparse(values, indices)
        terms = self.reconstruction_terms(x, x_hat, dead_mask)
        with torch.no_grad():
            active = values > 0
            fired = torch.zeros(self.d_sae, dtype=torch.long, device=x.device)
            fired.index_add_(0, indices[active], torch.ones_like(indices[active]))
            l0 = float(active.sum(dim=-1).float().mean())
        return TrainOutput(terms, x_hat, fired, l0)

    def reconstruction_terms(
        self, x: torch.Tensor, x_hat: torch.Tensor, dead_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """mse, plus AuxK on the dead latents when there are any; ``loss`` is their weighted sum."""
        terms = {"mse": mse_per_element(x, x_hat)}
        terms["loss"] = terms["mse"]
        if dead_mask is not None and self.hparams["auxk_alpha"] > 0:
            terms["auxk"] = self.auxk_loss(x, x_hat, dead_mask)
            terms["loss"] = terms["mse"] + self.hparams["auxk_alpha"] * terms["auxk"]
        return terms

    def auxk_loss(self, x: torch.Tensor, x_hat: torch.Tensor, dead_mask: torch.Tensor) -> torch.Tensor:
        """The largest ``k_aux`` dead latents reconstruct the residual the live ones left; only the
        dead latents' pre-activations are computed."""
        dead = dead_mask.nonzero().squeeze(1)
        if dead.numel() == 0:
            return x.new_zeros(())
        k_aux = min(self.hparams.get("k_aux") or x.shape[-1] // 2, dead.numel())
        residual = (x - x_hat).detach()
        # only the dead latents' pre-activations: (B, n_dead), not (B, d_sae) with the rest masked
        pre = encoder_product(x - self.b_dec, self.W_enc[:, dead], self.encoder_bf16) + self.b_enc[dead]
        values, local = pre.topk(k_aux, dim=-1, sorted=False)
        e_hat = sparse_decode(dead[local], values.relu(), self.W_dec)
        variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-8)
        return (e_hat - residual).pow(2).sum(dim=-1).mean() / variance

    def saelens_cfg(self) -> dict[str, Any]:
        return {"k": self.k}


# -- batchtopk (saved as SAELens "jumprelu") --------------------------------------------------


class BatchTopKSAE(TopKSAE):
    variant = "batchtopk"
    saelens_architecture = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(d_in, d_sae, hparams)
        # -1: not estimated yet (the first batch sets it)
        self.register_buffer("threshold", torch.full((), -1.0))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activation(x)
        return pre.relu() * (pre > self.threshold.clamp_min(0))

    def train_forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        pre = self.pre_activation(x)
        acts = pre.relu()
        flat = acts.reshape(-1)
        values, flat_idx = flat.topk(self.k * acts.shape[0], sorted=False)
        f = torch.zeros_like(flat).scatter(0, flat_idx, values).reshape(acts.shape)
        x_hat = self.decode(f)
        terms = self.reconstruction_terms(x, x_hat, dead_mask)
        with torch.no_grad():
            fired = fired_counts(f)
            l0 = float((f > 0).sum(dim=-1).float().mean())
            positive = values[values > 0]
            smallest = float(positive.min()) if positive.numel() else 0.0
        return TrainOutput(terms, x_hat, fired, l0, extra={"smallest_kept": smallest})

    @torch.no_grad()
    def after_step(self, out: TrainOutput) -> None:
        super().after_step(out)
        smallest = out.extra["smallest_kept"]
        if float(self.threshold) < 0:
            self.threshold.fill_(smallest)
        else:
            momentum = self.hparams["threshold_momentum"]
            self.threshold.mul_(momentum).add_((1 - momentum) * smallest)

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        threshold = self.threshold.clamp_min(0).expand(self.d_sae).contiguous()
        return {**super().saelens_tensors(), "threshold": threshold}

    def load_saelens_tensor(self, name: str, value: torch.Tensor) -> None:
        if name != "threshold":
            return super().load_saelens_tensor(name, value)
        if value.shape != (self.d_sae,) or not torch.all(value == value[0]):
            raise ValueError(f"batchtopk expects one threshold shared by all {self.d_sae} latents")
        self.threshold.fill_(float(value[0]))

    def saelens_cfg(self) -> dict[str, Any]:
        return {}


# -- jumprelu --------------------------------------------------------------------------------


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dpre = H(pre - theta); d/dtheta by the rectangle-kernel estimate."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = grad * (pre > theta)
        grad_theta = (-(theta / bw) * _rectangle((pre - theta) / bw) * grad).sum(dim=0)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    """H(pre - theta); gradient only to theta, by the rectangle-kernel estimate."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_theta = (-(1.0 / bw) * _rectangle((pre - theta) / bw) * grad).sum(dim=0)
        return None, grad_theta, None


class JumpReLUSAE(SparseAutoencoder):
    variant = "jumprelu"
    saelens_architecture = "jumprelu"
    # the thresholds and the kernel bandwidth are in units of the pre-activations; with free decoder
    # norms the encoder could rescale them and the fixed bandwidth would drift against them
    unit_norm_decoder = True

    def __init__(self, d_in: int, d_sae: int, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(d_in, d_sae, hparams)
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(self.hparams["init_threshold"])))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activation(x)
        return pre.relu() * (pre > self.threshold)

    def train_forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        pre = self.pre_activation(x)
        theta = self.threshold
        bandwidth = self.hparams["bandwidth"]
        f = _JumpReLU.apply(pre, theta, bandwidth)
        x_hat = self.decode(f)
        mse = mse_per_element(x, x_hat)
        l0 = _Step.apply(pre, theta, bandwidth).sum(dim=-1).mean()
        terms = {"mse": mse, "l0": l0, "loss": mse + self.hparams["l0"] * l0}
        with torch.no_grad():
            fired = fired_counts(f)
        return TrainOutput(terms, x_hat, fired, float(l0.detach()))

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(), "threshold": self.threshold}

    def load_saelens_tensor(self, name: str, value: torch.Tensor) -> None:
        if name == "threshold":
            self._assign("log_threshold", value.clamp_min(1e-30).log())
        else:
            super().load_saelens_tensor(name, value)


# -- gated -----------------------------------------------------------------------------------


class GatedSAE(SparseAutoencoder):
    """Gated SAE (Rajamanoharan et al. 2024). SAELens' gated architecture has no ``b_enc``: the
    gate bias is ``b_gate`` and the magnitude path is ``W_enc * exp(r_mag)`` with ``b_mag``."""

    variant = "gated"
    saelens_architecture = "gated"

    def __init__(self, d_in: int, d_sae: int, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(d_in, d_sae, hparams)
        del self.b_enc
        self.b_gate = nn.Parameter(torch.zeros(d_sae))
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_mag = nn.Parameter(torch.zeros(d_sae))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        for name in ("b_gate", "r_mag", "b_mag"):
            if hasattr(self, name):
                getattr(self, name).zero_()

    def _paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = encoder_product(x - self.b_dec, self.W_enc, self.encoder_bf16)
        gate = base + self.b_gate
        magnitude = base * self.r_mag.exp() + self.b_mag
        return gate, magnitude

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        gate, magnitude = self._paths(x)
        return (gate > 0).to(magnitude.dtype) * magnitude.relu()

    def train_forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        gate, magnitude = self._paths(x)
        f = (gate > 0).to(magnitude.dtype) * magnitude.relu()
        x_hat = self.decode(f)
        gate_acts = gate.relu()
        mse = mse_per_element(x, x_hat)
        l1 = (gate_acts * self.W_dec.norm(dim=1)).sum(dim=-1).mean()
        via_gate = gate_acts @ self.W_dec.detach() + self.b_dec.detach()
        aux = mse_per_element(x, via_gate)
        terms = {"mse": mse, "l1": l1, "aux": aux, "loss": mse + self.hparams["l1"] * l1 + aux}
        with torch.no_grad():
            fired = fired_counts(f)
            l0 = float((f > 0).sum(dim=-1).float().mean())
        return TrainOutput(terms, x_hat, fired, l0)

    @torch.no_grad()
    def absorb_input_shift(self, shift: torch.Tensor) -> None:
        self.b_gate.add_(shift)
        self.b_mag.add_(shift * self.r_mag.exp())

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "W_enc": self.W_enc,
            "W_dec": self.W_dec,
            "b_dec": self.b_dec,
            "b_gate": self.b_gate,
            "r_mag": self.r_mag,
            "b_mag": self.b_mag,
        }


MODULES: dict[str, type[SparseAutoencoder]] = {
    cls.variant: cls for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE)
}


def build_module(variant: str, d_in: int, d_sae: int, hparams: dict[str, Any]) -> SparseAutoencoder:
    return MODULES[variant](d_in, d_sae, hparams)
