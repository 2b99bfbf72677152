"""The CPU fast paths of the SAE kernels: the TopK ones give the very bits of the plain PyTorch ops they
replace, so a default run trains the same SAE as before them; the fused ReLU step agrees with the
eager one up to rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scircuits.plugins.saes import sparse_ops
from scircuits.plugins.saes.sparse_ops import (
    STABLE_SORT_PAIRS,
    _embedding_bag_weight_grad,
    _token_order_weight_grad,
    chunked_topk,
    encoder_preactivation,
    scatter_outer,
    sparse_decode,
)


def bags(n_tokens: int, n_latents: int, k: int, repeats: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(n_tokens)
    if repeats:  # a latent more than once in a token's bag (not top-k, but scatter_outer allows it)
        return torch.randint(0, n_latents, (n_tokens, k), generator=g)
    return torch.rand(n_tokens, n_latents, generator=g).topk(k, dim=1).indices


@pytest.mark.parametrize("width", [8, 24, 32, 40, 576])
@pytest.mark.parametrize("repeats", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_scatter_outer_on_the_cpu_is_embedding_bags_backward_bit_for_bit(repeats, threads, width):
    # from 32,768 (token, latent) pairs (a training batch has 4,096 x k) embedding_bag's backward
    # sorts them stably (a radix sort) and so sums each latent's rows in token order, one fused
    # multiply-add each, as the sparse product does (rows narrower than 32 floats, which MKL rounds
    # otherwise, stay with embedding_bag's backward)
    torch.manual_seed(0)
    indices = bags(4100, 300, 8, repeats)
    assert indices.numel() >= STABLE_SORT_PAIRS
    weights, rows = torch.randn(4100, 8), torch.randn(4100, width)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = scatter_outer(indices, weights, rows, 300)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(fast, _embedding_bag_weight_grad(indices, weights, rows, 300))
    assert not torch.equal(fast, torch.zeros_like(fast))


def test_the_sparse_product_sums_in_token_order_with_fused_multiply_adds():
    torch.manual_seed(4)
    indices, weights, rows = bags(90, 20, 4), torch.randn(90, 4), torch.randn(90, 64)
    expected = torch.zeros(20, 64)
    for token in range(90):
        for j in range(4):
            latent = indices[token, j]
            expected[latent] = torch.addcmul(expected[latent], rows[token], weights[token, j].expand(64))
    # (at a model's width: MKL rounds rows of 8 or 16 floats otherwise)
    assert torch.equal(_token_order_weight_grad(indices, weights, rows, 20), expected)


def test_below_the_stable_sort_scatter_outer_keeps_embedding_bags_own_order():
    # there embedding_bag's unstable sort may reorder a latent's rows (AuxK with a few dead latents
    # has k_aux < 8): its backward stays in use, so a default run trains the SAE it trained before
    torch.manual_seed(5)
    indices, weights, rows = bags(3000, 500, 5), torch.randn(3000, 5), torch.randn(3000, 64)
    assert indices.numel() < STABLE_SORT_PAIRS
    fast = scatter_outer(indices, weights, rows, 500)
    assert torch.equal(fast, _embedding_bag_weight_grad(indices, weights, rows, 500))
    assert not torch.equal(fast, _token_order_weight_grad(indices, weights, rows, 500))


def test_sparse_decode_gradients_are_embedding_bags_bit_for_bit():
    torch.manual_seed(1)
    indices = bags(5500, 200, 6)
    values = torch.rand(5500, 6, requires_grad=True)
    w_dec = torch.randn(200, 32, requires_grad=True)
    upstream = torch.randn(5500, 32)
    out = sparse_decode(indices, values, w_dec)
    grads = torch.autograd.grad(out, (values, w_dec), upstream)
    plain = F.embedding_bag(indices, w_dec, per_sample_weights=values, mode="sum")
    plain_grads = torch.autograd.grad(plain, (values, w_dec), upstream)
    assert torch.equal(out, plain)
    for a, b in zip(grads, plain_grads, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():  # no graph kept when nothing needs a gradient
        assert torch.equal(sparse_decode(indices, values, w_dec), plain)


@pytest.mark.parametrize("bf16", [False, True])
def test_chunked_topk_selects_what_the_whole_matrix_selects(monkeypatch, bf16):
    torch.manual_seed(2)
    x, w, b = torch.randn(1000, 48), torch.randn(48, 400), torch.randn(400)
    monkeypatch.setattr(sparse_ops, "ROW_CHUNK", 128)  # 8 chunks, the last one short
    values, indices = chunked_topk(x, w, b, 16, bf16)
    whole_values, whole_indices = encoder_preactivation(x, w, b, bf16).topk(16, dim=-1, sorted=False)
    assert values.dtype == (torch.bfloat16 if bf16 else torch.float32)
    if bf16:  # oneDNN may block a bfloat16 product by rows: the same selection up to ties
        assert torch.allclose(values.float().sort(1).values, whole_values.float().sort(1).values)
    else:
        assert torch.equal(values, whole_values) and torch.equal(indices, whole_indices)


def test_bf16_preactivations_round_once_and_stay_near_float32():
    torch.manual_seed(3)
    x, w, b = torch.randn(64, 96), torch.randn(96, 128) * 0.1, torch.randn(128)
    low = encoder_preactivation(x, w, b, True)
    assert low.dtype == torch.bfloat16
    exact = x.bfloat16().double() @ w.bfloat16().double() + b.bfloat16().double()
    # one rounding of the float32-accumulated sum: within half a bfloat16 step (2^-8 relative) of it
    assert ((low.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


def test_sparse_decode_backward_runs_again_on_a_retained_graph():
    indices = bags(40, 30, 4)
    values = torch.rand(40, 4, requires_grad=True)
    w_dec = torch.randn(30, 8, requires_grad=True)
    loss = sparse_decode(indices, values, w_dec).pow(2).sum()
    loss.backward(retain_graph=True)
    first = values.grad.clone(), w_dec.grad.clone()
    loss.backward()
    assert torch.equal(values.grad, 2 * first[0]) and torch.equal(w_dec.grad, 2 * first[1])


def test_the_latent_sort_is_reused_only_for_equal_indices():
    from scircuits.plugins.saes.sparse_ops import _LatentOrder

    indices = bags(4100, 300, 8)
    first = _LatentOrder.of(indices, 300)
    assert _LatentOrder.of(indices.clone(), 300) is first  # the same pairs: the sort is reused
    changed = indices.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 300
    if changed[0, 0] in changed[0, 1:]:  # keep the bag's latents distinct
        changed[0, 0] = next(i for i in range(300) if i not in changed[0])
    other = _LatentOrder.of(changed, 300)
    assert other is not first and not torch.equal(other[0], first[0])
    weights, rows = torch.randn(4100, 8), torch.randn(4100, 16)
    assert torch.equal(
        scatter_outer(changed, weights, rows, 300), _embedding_bag_weight_grad(changed, weights, rows, 300)
    )


def relu_sae(bf16: bool, decorrelation: float = 0.0):
    from scircuits.plugins.saes.modules import ReLUSAE

    torch.manual_seed(0)
    sae = ReLUSAE(64, 256)
    sae.hparams = {"l1": 5.0, "decorrelation": decorrelation, "decorrelation_tokens": 128}
    sae.encoder_bf16 = bf16
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.1)
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.1)
    return sae


def relu_step_of(sae, x: torch.Tensor, fused: bool):
    sae.fused = fused
    sae.zero_grad()
    out = sae.train_forward(x)
    out.terms["loss"].backward()
    return out, {name: p.grad.clone() for name, p in sae.named_parameters()}


def test_the_fused_relu_step_is_the_eager_one_in_float32():
    sae, x = relu_sae(False), torch.randn(512, 64)
    (fused, g_fused), (eager, g_eager) = relu_step_of(sae, x, True), relu_step_of(sae, x, False)
    assert set(fused.terms) == set(eager.terms) == {"mse", "l1", "loss"}
    for name in fused.terms:
        torch.testing.assert_close(fused.terms[name], eager.terms[name], rtol=1e-6, atol=0)
    torch.testing.assert_close(fused.x_hat, eager.x_hat, rtol=0, atol=0)
    assert torch.equal(fused.fired, eager.fired) and fused.l0 == eager.l0 and 0 < fused.l0 < 256
    for name, grad in g_eager.items():
        torch.testing.assert_close(g_fused[name], grad, rtol=1e-5, atol=1e-7)
    # the input's gradient is formed only when asked for, and then it is the eager one
    grads = []
    for fused in (True, False):
        sae.fused = fused
        inputs = x.clone().requires_grad_(True)
        sae.train_forward(inputs).terms["loss"].backward()
        grads.append(inputs.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def test_the_fused_relu_step_in_bfloat16_is_as_near_float32_as_the_eager_one():
    x = torch.randn(512, 64)
    _, reference = relu_step_of(relu_sae(False), x, False)
    errors = {}
    for fused in (True, False):
        _, grads = relu_step_of(relu_sae(True), x, fused)
        errors[fused] = {n: float((grads[n] - g).norm() / g.norm()) for n, g in reference.items()}
    for name, eager_error in errors[False].items():
        assert 0 < errors[True][name] <= 1.25 * eager_error + 1e-4, (name, errors)
    assert errors[True]["W_enc"] < 0.05  # bfloat16's own rounding, not a wrong gradient


def test_the_relu_step_keeps_the_eager_path_for_the_decorrelation_term():
    sae, x = relu_sae(False, decorrelation=0.1), torch.randn(256, 64)
    out, _ = relu_step_of(sae, x, True)
    assert "decorrelation" in out.terms
