"""Each SAE variant: forward, loss terms, backward; sparse kernels against the dense fallback."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import torch

from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.plugins.saes.modules import decorrelation_penalty
from scircuits.plugins.saes.sparse_ops import dense_decode, dense_topk_encode, sparse_decode, topk_encode

VARIANTS = ["relu", "topk", "batchtopk", "jumprelu", "gated"]
EXPECTED_TERMS = {
    "relu": {"loss", "mse", "l1", "decorrelation"},
    "topk": {"loss", "mse", "auxk"},
    "batchtopk": {"loss", "mse", "auxk"},
    "jumprelu": {"loss", "mse", "l0"},
    "gated": {"loss", "mse", "l1", "aux"},
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, d_in: int = 16, d_sae: int = 64, **hparams):
    return get_plugins().saes.get(name).build(d_in, d_sae, {"k": 4, **hparams} if "topk" in name else hparams)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_loss_backward(name):
    torch.manual_seed(0)
    sae = build(name)
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    out = sae.train_forward(x, dead_mask=dead)
    assert set(out.terms) == EXPECTED_TERMS[name]
    assert all(torch.isfinite(v) for v in out.terms.values())
    assert out.x_hat.shape == x.shape and out.fired.shape == (64,)
    out.terms["loss"].backward()
    for pname, p in sae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sae.W_enc.grad.abs().sum() > 0 and sae.W_dec.grad.abs().sum() > 0
    f = sae.encode(x)
    assert f.shape == (32, 64) and (f >= 0).all()
    assert sae(x).shape == x.shape
    assert torch.allclose(sae(x), sae.decode(f))


@pytest.mark.parametrize("name", ["topk", "batchtopk"])
def test_k_sparsity(name):
    torch.manual_seed(0)
    sae = build(name)
    x = torch.randn(50, 16)
    out = sae.train_forward(x)
    assert int((out.fired).sum()) <= 4 * 50
    if name == "topk":
        assert ((sae.encode(x) > 0).sum(dim=1) <= 4).all()


def test_batchtopk_learns_an_inference_threshold():
    torch.manual_seed(0)
    sae = build("batchtopk")
    assert float(sae.threshold) < 0
    out = sae.train_forward(torch.randn(64, 16))
    sae.after_step(out)
    assert float(sae.threshold) == pytest.approx(out.extra["smallest_kept"])
    pre = sae.pre_activation(torch.randn(8, 16))
    f = sae.encode(torch.randn(8, 16))
    assert ((f == 0) | (f > float(sae.threshold))).all() and pre.shape == f.shape


def test_jumprelu_threshold_gets_a_gradient_from_the_l0_penalty():
    torch.manual_seed(0)
    sae = build("jumprelu", l0=1.0, init_threshold=0.5, bandwidth=1.0)
    out = sae.train_forward(torch.randn(64, 16) * 3)
    out.terms["l0"].backward()
    # raising a threshold lowers L0: the gradient of L0 w.r.t. log-threshold is negative somewhere
    assert (sae.log_threshold.grad < 0).any()


@pytest.mark.parametrize("name", ["topk", "batchtopk", "jumprelu"])
def test_unit_norm_decoder_is_kept(name):
    torch.manual_seed(0)
    sae = build(name)
    assert sae.unit_norm_decoder
    x = torch.randn(32, 16)
    opt = torch.optim.SGD(sae.parameters(), lr=0.5)
    out = sae.train_forward(x)
    out.terms["loss"].backward()
    sae.before_step()
    rows = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    assert (sae.W_dec.grad * rows).sum(dim=1).abs().max() < 1e-5
    opt.step()
    sae.after_step(out)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)


def test_jumprelu_decoder_rows_stay_unit_norm_through_training():
    """Over many Adam steps of the training loop (not one hand-made step): with the norms fixed the
    thresholds and the kernel bandwidth stay in the units of the pre-activations."""
    from scircuits.platform.train.training import SAETrainer

    torch.manual_seed(0)
    sae = build("jumprelu", l0=0.01, init_threshold=0.1, bandwidth=0.05)
    trainer = SAETrainer(sae, lr=1e-2, total_steps=60, warmup_steps=5)
    x = torch.randn(2048, 16) * 3.0
    trainer.initialize_from_sample(x)
    start = sae.W_enc.detach().clone()
    for step in range(60):
        trainer.train_step(x[(step * 128) % 2048 :][:128])
    assert not torch.equal(sae.W_enc, start)  # it trained
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    # the saved copy applies to raw activations: its rows all have norm 1 / input scale
    folded = trainer.folded_copy()
    assert torch.allclose(folded.W_dec.norm(dim=1), torch.full((64,), 1 / trainer.scale), rtol=1e-5)


def test_sparse_topk_kernels_match_the_dense_fallback():
    torch.manual_seed(0)
    d, m, k = 24, 96, 6
    w_enc = torch.randn(d, m, requires_grad=True)
    b_enc = torch.randn(m, requires_grad=True)
    w_dec = torch.randn(m, d, requires_grad=True)
    x = torch.randn(40, d, requires_grad=True)
    target = torch.randn(40, d)

    def run(encode, decode):
        for t in (w_enc, b_enc, w_dec, x):
            t.grad = None
        values, indices = encode(x, w_enc, b_enc, k)
        loss = (decode(indices, values, w_dec) - target).pow(2).sum()
        loss.backward()
        return values.detach(), indices, [t.grad.clone() for t in (w_enc, b_enc, w_dec, x)]

    v1, i1, g1 = run(topk_encode, sparse_decode)
    v2, i2, g2 = run(dense_topk_encode, dense_decode)
    assert torch.equal(i1.sort(dim=1).values, i2.sort(dim=1).values)
    assert torch.allclose(v1.sort(dim=1).values, v2.sort(dim=1).values)
    for a, b in zip(g1, g2, strict=False):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_b_dec_gradient_through_the_sparse_encoder_matches_the_dense_one():
    # b_dec given to the kernel: its gradient is -W_enc @ (the b_enc gradient), no per-token rows
    torch.manual_seed(0)
    x, w_enc, b_enc, b_dec = torch.randn(50, 24), torch.randn(24, 96), torch.randn(96), torch.randn(24)
    results = []
    for encode in (topk_encode, dense_topk_encode):
        params = [t.clone().requires_grad_() for t in (w_enc, b_enc, b_dec)]
        values, indices = encode(x, params[0], params[1], 6, False, params[2])
        order = indices.argsort(dim=1)
        (values.gather(1, order) * torch.arange(1.0, 7.0)).sum().backward()
        results.append(
            [indices.gather(1, order), values.gather(1, order).detach(), *(p.grad for p in params)]
        )
    sparse, dense = results
    assert torch.equal(sparse[0], dense[0])
    for a, b in zip(sparse[1:], dense[1:], strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert float(sparse[4].abs().sum()) > 0  # b_dec did get a gradient


def masked_auxk(sae, x: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """AuxK as it was first written: every latent's pre-activation, the live ones masked."""
    k_aux = min(x.shape[-1] // 2, int(dead.sum()))
    residual = (x - x_hat).detach()
    pre = sae.pre_activation(x).masked_fill(~dead, float("-inf"))
    values, indices = pre.topk(k_aux, dim=-1)
    e_hat = dense_decode(indices, values.relu(), sae.W_dec)
    variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean()
    return (e_hat - residual).pow(2).sum(dim=-1).mean() / variance


@pytest.mark.parametrize("n_dead", [3, 20, 64])
def test_auxk_on_the_dead_latents_alone_is_the_masked_auxk(n_dead):
    torch.manual_seed(n_dead)
    sae = build("topk", d_in=16, d_sae=64)
    x = torch.randn(40, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64)[:n_dead]] = True
    x_hat = sae.decode_sparse(*sae.encode_sparse(x)).detach()
    ours = sae.auxk_loss(x, x_hat, dead)
    ours_grads = torch.autograd.grad(ours, (sae.W_enc, sae.b_enc, sae.W_dec))
    reference = masked_auxk(sae, x, x_hat, dead)
    reference_grads = torch.autograd.grad(reference, (sae.W_enc, sae.b_enc, sae.W_dec))
    assert float(ours.detach()) > 0 and torch.allclose(ours, reference, rtol=1e-5)
    for a, b in zip(ours_grads, reference_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(sae.auxk_loss(x, x_hat, torch.zeros(64, dtype=torch.bool))) == 0.0


def test_topk_module_sparse_and_eager_paths_agree():
    torch.manual_seed(0)
    sparse, eager = build("topk", sparse=True), build("topk", sparse=False)
    eager.load_state_dict(sparse.state_dict())
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    a, b = sparse.train_forward(x, dead), eager.train_forward(x, dead)
    assert torch.allclose(a.terms["loss"], b.terms["loss"], rtol=1e-5)
    a.terms["loss"].backward()
    b.terms["loss"].backward()
    for (name, p), q in zip(sparse.named_parameters(), eager.parameters(), strict=False):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_bf16_encoder_product_stays_close_to_float32():
    torch.manual_seed(0)
    sae = build("topk", d_in=64, d_sae=256)
    x = torch.randn(256, 64)
    full = sae.train_forward(x).terms["mse"].detach()
    sae.encoder_bf16 = True
    half = sae.train_forward(x).terms["mse"].detach()
    assert abs(float(half) - float(full)) / float(full) < 0.05


def test_decorrelation_penalty():
    torch.manual_seed(0)
    independent = torch.randn(4000, 8).relu()
    base = torch.randn(4000, 1).relu()
    correlated = base.repeat(1, 8) + 0.01 * torch.rand(4000, 8)
    assert float(decorrelation_penalty(independent)) < 0.01
    assert float(decorrelation_penalty(correlated)) > 0.9


def brute_force_decorrelation(f: torch.Tensor) -> float:
    """Mean over distinct latent pairs of the squared Pearson correlation, by torch.corrcoef."""
    c = torch.corrcoef(f.double().t())
    m = c.shape[0]
    off_diagonal = c[~torch.eye(m, dtype=torch.bool)]
    return float(off_diagonal.pow(2).sum() / (m * (m - 1)))


@pytest.mark.parametrize("shape", [(6, 20), (200, 12), (40, 40)])
def test_decorrelation_penalty_matches_corrcoef(shape):
    """Both Gram forms (fewer tokens than latents, and more) against a brute-force computation."""
    torch.manual_seed(1)
    base = torch.randn(shape[0], 1)
    f = (torch.randn(*shape) + 0.7 * base).relu() + 0.01 * torch.rand(*shape)  # partly correlated
    expected = brute_force_decorrelation(f)
    assert 0.01 < expected < 0.9
    assert float(decorrelation_penalty(f)) == pytest.approx(expected, rel=1e-4)


def test_hyperparameters_are_validated():
    variant = get_plugins().saes.get("topk")
    with pytest.raises(ConfigError, match="l1"):
        variant.build(8, 16, {"l1": 0.1})
    with pytest.raises(ConfigError, match="k"):
        variant.build(8, 16, {"k": 0})


def test_listing_variants_does_not_import_torch():
    code = (
        "import sys; import scircuits.plugins.saes as s; "
        "from scircuits.platform.manager.plugin_set import get_plugins; "
        "names = sorted(v.name for v in get_plugins().saes); "
        "print(names); assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = ast.literal_eval(result.stdout.strip().splitlines()[-1])  # installed plugins' variants too
    assert {"batchtopk", "gated", "jumprelu", "relu", "topk"} <= set(names)
