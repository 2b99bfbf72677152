"""SAE training speed and quality: scircuits against SAELens and sparsify, on the same data, CPU.

    python bench/train.py                         # 262,144 x 576 synthetic tokens, d_sae 4,608, k 32
    python bench/train.py --tokens 16384          # a quick check
    python bench/train.py --store runs/.../activations.zarr
    python bench/train.py --device cuda --peers-python python3 --skip-saelens   # a GPU, peers importable

The peers run in their own virtual environment (default .scircuits-cache/venv-peers, git-ignored),
created on first use with torch==2.13.0 installed FIRST (so sae-lens / eai-sparsify cannot pull a
CUDA torch), then sae-lens and eai-sparsify. The project's .venv is never touched.

Each trainer runs in its own process (same thread count) on the same float32 array: one pass,
batch 4,096, Adam. Reported per trainer: tokens/s over the training loop, peak RSS of its process,
and on held-out tokens FVU, L0 and dead fraction (definitions in docs/metrics.md).

Rows: ours topk (float32 and bfloat16 encoder product), sparsify TopK (SparseCoder, the training
step its Trainer does: FVU + AuxK loss, decoder-parallel gradient removed, unit-norm decoder), SAELens
TopK (TopKTrainingSAE.training_forward_pass), ours relu and SAELens standard (StandardTrainingSAE).
This file is run by the project venv (driver and ours) and by the peers' venv (``--worker``); the
worker code imports neither scircuits nor the other peer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEERS_VENV = ROOT / ".scircuits-cache" / "venv-peers"
PEER_PACKAGES = ["sae-lens", "eai-sparsify"]
EVAL_TOKENS = 8192


# -- data ---------------------------------------------------------------------------------------


def make_synthetic(path: Path, n_tokens: int, d_model: int, seed: int = 0) -> None:
    """Activation-like data: sparse non-negative combinations (about 24 per token) of 16,384 unit
    atoms, with a shared offset and a few dimensions of large variance, plus noise."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    n_atoms = 16384
    atoms = torch.randn(n_atoms, d_model, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = torch.randn(d_model, generator=g) * 0.5
    scales = torch.ones(d_model)
    scales[:4] = 6.0
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_tokens, d_model))
    popularity = torch.rand(n_atoms, generator=g).pow(3) + 1e-3
    per_token = 24
    for start in range(0, n_tokens, 8192):
        n = min(8192, n_tokens - start)
        idx = torch.multinomial(popularity, n * per_token, replacement=True, generator=g).view(n, per_token)
        mags = torch.rand(n, per_token, generator=g) * 2
        x = torch.nn.functional.embedding_bag(idx, atoms, per_sample_weights=mags, mode="sum")
        x = (x + offset) * scales + 0.05 * torch.randn(n, d_model, generator=g)
        out[start : start + n] = x.numpy()
    out.flush()


def export_store(store: str, path: Path, n_tokens: int) -> int:
    """Copy up to n_tokens shuffled rows of a store into a .npy file (the bench's shared input)."""
    import numpy as np

    from scircuits.store import ActivationStore

    s = ActivationStore(store)
    n = min(n_tokens, s.n_tokens)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, s.d_model))
    done = 0
    for batch in s.iter_batches(8192, seed=0, split="all"):
        take = min(batch.shape[0], n - done)
        out[done : done + take] = batch[:take].numpy()
        done += take
        if done >= n:
            break
    out.flush()
    return n


# -- shared measurement (runs in every venv) --------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_loop(
    data: Any, batch: int, step: Callable[[Any], None], eval_fn: Callable[[Any], dict], device: str = "cpu"
) -> dict:
    """Every trainer gets each batch as a float32 tensor already on ``device`` (the host-to-device
    copy is outside the timed step for all alike); on a GPU the clock stops after a synchronize."""
    import torch

    cuda = device.startswith("cuda")
    n_train = data.shape[0] - EVAL_TOKENS
    steps = n_train // batch

    def batch_at(i: int) -> Any:
        return torch.from_numpy(data[i * batch : (i + 1) * batch].copy()).to(device)

    step(batch_at(0))  # warm-up step (allocations, kernel selection), not timed
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = 0.0
    for i in range(1, steps):
        x = batch_at(i)
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step(x)
        if cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
    metrics = eval_fn(torch.from_numpy(data[n_train:].copy()).to(device))
    return {
        "tokens_per_s": (steps - 1) * batch / seconds,
        "steps": steps,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        **metrics,
    }


def reconstruction_metrics(x: Any, x_hat: Any, acts: Any) -> dict:
    x64, e64 = x.double(), (x - x_hat).double()
    fvu = float(e64.pow(2).sum() / (x64 - x64.mean(dim=0)).pow(2).sum())
    active = acts > 0
    return {
        "fvu": fvu,
        "l0": float(active.sum(dim=1).float().mean()),
        "dead_fraction": float((~active.any(dim=0)).float().mean()),
    }


# -- workers ----------------------------------------------------------------------------------------


def worker_ours(args: argparse.Namespace, data: Any) -> dict:
    import torch

    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.training import SAETrainer

    hparams = {"k": args.k} if args.variant == "topk" else {"l1": args.l1, "decorrelation": 0.0}
    sae = get_plugins().saes.get(args.variant).build(data.shape[1], args.d_sae, hparams).to(args.device)
    sae.encoder_bf16 = args.bf16
    steps = (data.shape[0] - EVAL_TOKENS) // args.batch
    # the peers' loops run Adam at a constant rate: so does ours here (no warm-up, no decay)
    trainer = SAETrainer(
        sae, lr=args.lr, total_steps=steps, warmup_steps=0, decay_fraction=0.0, grad_clip=1.0
    )
    trainer.initialize_from_sample(torch.from_numpy(data[:4096].copy()))

    def evaluate(x: Any) -> dict:
        with torch.no_grad():
            acts = sae.encode(x * trainer.scale)
            return reconstruction_metrics(x, sae.decode(acts) / trainer.scale, acts)

    return run_loop(data, args.batch, trainer.train_step, evaluate, args.device)


def worker_sparsify(args: argparse.Namespace, data: Any) -> dict:
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    cfg = SparseCoderConfig(num_latents=args.d_sae, k=args.k)
    sae = SparseCoder(data.shape[1], cfg, device=args.device)
    sample = torch.from_numpy(data[:4096].copy()).to(args.device)
    with torch.no_grad():
        sae.b_dec.copy_(sample.mean(dim=0))  # sparsify's Trainer initialises b_dec from the data
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    tokens_since_fired = torch.zeros(args.d_sae, dtype=torch.long, device=args.device)
    dead_after = 10_000_000

    def step(x: Any) -> None:
        dead = tokens_since_fired >= dead_after
        out = sae(x, dead_mask=dead if dead.any() else None)
        loss = out.fvu + (1 / 32) * out.auxk_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        tokens_since_fired.add_(x.shape[0])
        tokens_since_fired[out.latent_indices.flatten().unique()] = 0

    def evaluate(x: Any) -> dict:
        with torch.no_grad():
            out = sae(x)
            acts = torch.zeros(x.shape[0], args.d_sae, device=x.device).scatter(
                1, out.latent_indices, out.latent_acts.float()
            )
            return reconstruction_metrics(x, out.sae_out, acts)

    return run_loop(data, args.batch, step, evaluate, args.device)


def worker_saelens(args: argparse.Namespace, data: Any) -> dict:
    import torch
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    if args.variant == "topk":
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=data.shape[1], d_sae=args.d_sae, k=args.k, device=args.device)
        )
        coefficients: dict[str, float] = {}
    else:
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

        # SAELens' MSE sums over dimensions where ours averages: the same pressure is l1 * d_in.
        l1 = args.l1 * data.shape[1]
        sae = StandardTrainingSAE(
            StandardTrainingSAEConfig(
                d_in=data.shape[1], d_sae=args.d_sae, l1_coefficient=l1, device=args.device
            )
        )
        coefficients = {"l1": l1}
    sample = torch.from_numpy(data[:4096].copy()).to(args.device)
    with torch.no_grad():
        sae.b_dec.copy_(sample.mean(dim=0))
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    fired_recently = torch.zeros(args.d_sae, dtype=torch.long, device=args.device)
    done = [0]

    def step(x: Any) -> None:
        dead = fired_recently >= 10_000_000
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients=coefficients,
                dead_neuron_mask=dead,
                n_training_steps=done[0],
                is_logging_step=False,
            )
        )
        done[0] += 1
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        fired_recently.add_(x.shape[0])
        fired_recently[(out.feature_acts > 0).any(dim=0)] = 0

    def evaluate(x: Any) -> dict:
        with torch.no_grad():
            acts = sae.encode(x)
            return reconstruction_metrics(x, sae.decode(acts), acts)

    return run_loop(data, args.batch, step, evaluate, args.device)


WORKERS = {"ours": worker_ours, "sparsify": worker_sparsify, "saelens": worker_saelens}


def worker_main(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    data = np.load(args.data, mmap_mode="r")
    result = WORKERS[args.worker](args, data)
    print("RESULT " + json.dumps(result), flush=True)


# -- driver -----------------------------------------------------------------------------------------


def ensure_peers_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [
        str(python),
        "-c",
        "import torch, sae_lens, sparsify; assert torch.__version__.startswith('2.13.0')",
    ]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"[bench] setting up {venv} (torch==2.13.0 first, then {' '.join(PEER_PACKAGES)})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *PEER_PACKAGES, "torch==2.13.0"], check=True)
    subprocess.run(check, check=True)
    return python


def run_worker(
    python: str, name: str, variant: str, data: Path, args: argparse.Namespace, bf16: bool = False
) -> dict:
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--variant",
        variant,
        "--data",
        str(data),
        "--d-sae",
        str(args.d_sae),
        "--k",
        str(args.k),
        "--batch",
        str(args.batch),
        "--lr",
        str(args.lr),
        "--l1",
        str(args.l1),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ] + (["--bf16"] if bf16 else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=262_144)
    p.add_argument("--d-model", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--l1", type=float, default=0.03, help="L1 coefficient of the relu/standard rows")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--store", help="bench on (up to --tokens rows of) this activation store instead")
    p.add_argument("--peers-venv", type=Path, default=DEFAULT_PEERS_VENV)
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--skip-relu", action="store_true")
    p.add_argument("--skip-saelens", action="store_true", help="leave SAELens out (sparsify only)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (every trainer on it)")
    p.add_argument(
        "--peers-python",
        help="an interpreter that imports the peers already (e.g. on a GPU machine); no venv is made",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    # worker role
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--variant", default="topk", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args)
        return

    with tempfile.TemporaryDirectory(prefix="scircuits-bench-") as tmp:
        data = Path(tmp) / "acts.npy"
        if args.store:
            n = export_store(args.store, data, args.tokens + EVAL_TOKENS)
            source = f"store {args.store} ({n} rows)"
        else:
            make_synthetic(data, args.tokens + EVAL_TOKENS, args.d_model)
            source = f"synthetic {args.tokens} x {args.d_model}"
        ours = sys.executable
        if args.skip_peers:
            peers = None
        elif args.peers_python:
            peers = args.peers_python
        else:
            peers = str(ensure_peers_venv(args.peers_venv))
        plan = [("ours topk", ours, "ours", "topk", False), ("ours topk bf16", ours, "ours", "topk", True)]
        if peers:
            plan += [
                ("sparsify topk", peers, "sparsify", "topk", False),
            ]
            if not args.skip_saelens:
                plan.append(("saelens topk", peers, "saelens", "topk", False))
        if not args.skip_relu:
            plan.append(("ours relu", ours, "ours", "relu", False))
            plan.append(("ours relu bf16", ours, "ours", "relu", True))
            if peers and not args.skip_saelens:
                plan.append(("saelens standard", peers, "saelens", "relu", False))
        rows = []
        for label, python, worker, variant, bf16 in plan:
            print(f"[bench] {label} ...", file=sys.stderr, flush=True)
            rows.append({"trainer": label, **run_worker(python, worker, variant, data, args, bf16)})

    print(
        f"\nSAE training, {args.device}, {args.threads} threads, {source}, d_sae {args.d_sae}, k {args.k}, "
        f"batch {args.batch}, one pass, held-out {EVAL_TOKENS} tokens\n"
    )
    gpu = args.device.startswith("cuda")
    memory = "peak GPU MB" if gpu else "peak RSS MB"
    header = f"{'trainer':<18} {'tokens/s':>10} {memory:>12} {'FVU':>7} {'L0':>7} {'dead':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['trainer']:<18} failed: {r['error']}")
            continue
        peak = r["peak_gpu_mb"] if gpu else r["peak_rss_mb"]
        print(
            f"{r['trainer']:<18} {r['tokens_per_s']:>10,.0f} {peak:>12,.0f} {r['fvu']:>7.3f} "
            f"{r['l0']:>7.1f} {r['dead_fraction']:>6.3f}"
        )
    by_name = {r["trainer"]: r for r in rows if "error" not in r}
    for ours_name, peer_name in (
        ("ours topk", "sparsify topk"),
        ("ours topk bf16", "sparsify topk"),
        ("ours relu", "saelens standard"),
        ("ours relu bf16", "saelens standard"),
    ):
        if ours_name in by_name and peer_name in by_name:
            ratio = by_name[ours_name]["tokens_per_s"] / by_name[peer_name]["tokens_per_s"]
            print(f"{ours_name} / {peer_name}: {ratio:.2f}x tokens/s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"source": source, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
