"""The GPU check: the default study on CUDA and the speed of each part, in one table, in under 8 minutes.

    python bench/gpu.py --out /tmp/gpu-check            # on a machine with a CUDA GPU
    python bench/gpu.py --device cpu --quick --out DIR  # the same script, small settings, no GPU

Sections (each in its own process; one that fails is reported in the table and the others still run):

1. the default study (`scircuits run` at its defaults) on the device, stage by stage, with the
   causal table (top-k effects against matched controls);
2. collection tokens/s against a bare forward and a hook-stopped forward on the same batches
   (bench/collect.py), the model in bfloat16;
3. TopK training tokens/s: ours (float32, and with the bfloat16 encoder product) against sparsify's
   SparseCoder on the same GPU and the same data, in the same run (bench/train.py);
4. the study in bfloat16 against float32: `scircuits ablate` with --model-dtype bfloat16 on the
   default run's SAE and settings, compared with the run's float32 study; plus the largest
   |logit difference| of the clean model in bfloat16 against float32 on the study's prompts;
5. the peak GPU memory of each section (the device's used memory, sampled every 50 ms through NVML,
   CUDA context included) and of each process where it reports its own.

Writes table.md (the table) and gpu.json (every figure) under --out. Not a test: figures depend on
the machine. Nothing here is hard-coded: every number is read from what the commands wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN_NAME = "smollm2-135m__arithmetic__resid15"
# the run's ablate settings that differ from the ablate command's defaults (RunAblate in
# scircuits/platform/config/stages.py): the bf16 study repeats the run's study with these
RUN_ABLATE_FLAGS = [
    "--limit",
    "160",
    "--top-k",
    "1,5,20,50",
    "--exact-top",
    "50",
    "--faithfulness-n",
    "1,5,10,20,50,100",
]
# --quick: a tiny random SmolLM2-architecture model and small settings, every section's code path in
# about a minute (a smoke run of the script itself; its figures mean nothing)
QUICK_STUDY = [
    "--layer",
    "2",
    "--limit",
    "12",
    "--top-k",
    "1,4",
    "--random-controls",
    "2",
    "--exact-top",
    "3",
]
QUICK_RUN_FLAGS = [
    *QUICK_STUDY,
    "--collect-limit",
    "40",
    "--train-tokens",
    "4000",
    "--train-batch-size",
    "512",
    "--expansion",
    "2",
]


class MemoryWatch:
    """The largest used memory of GPU 0 while the block runs, sampled through NVML (None without it)."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self._nvml = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
            self.peak_mib = used if self.peak_mib is None else max(self.peak_mib, used)
            self._stop.wait(self.period)

    def __enter__(self) -> MemoryWatch:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._stop.set()
            self._thread.join()


def run_command(cmd: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; wall seconds, exit status and peak device memory."""
    started = time.perf_counter()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    with MemoryWatch() as watch, log.open("w") as out:
        try:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.perf_counter() - started
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return {
        "rc": rc,
        "seconds": round(seconds, 1),
        "peak_gpu_mib": watch.peak_mib,
        "tail": tail,
        "log": log.name,
    }


def scircuits(*args: str) -> list[str]:
    return [sys.executable, "-m", "scircuits", *args]


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
    for name in ("transformers", "nnsight", "zarr", "sparsify"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # the table says what is missing
            info[name] = f"missing ({type(exc).__name__})"
    return info


def causal_table(results_path: Path) -> dict[str, Any]:
    """Per k of the main sweep: the top set's effect on the gold log-prob with its interval, the
    matched controls' mean effect, the adjusted p and the call; and the splice check."""
    results = json.loads(results_path.read_text())
    sweep = results["sweeps"]
    rows = []
    for step in sweep:
        test = step.get("test_logprob") or {}
        rows.append(
            {
                "k": step["k"],
                "effect": step["logprob_delta"],
                "ci": list(step["logprob_ci"]),
                "controls_mean": (step.get("control") or {}).get("logprob_delta"),
                "p_adjusted": test.get("p_adjusted"),
                "significant": step.get("significant_logprob"),
            }
        )
    return {
        "ablation": sweep[0]["ablation"] if sweep else None,
        "rows": rows,
        "splice": results.get("splice"),
        "wall_seconds": results.get("wall_seconds"),
    }


def stage_seconds(run_dir: Path) -> dict[str, float | None]:
    state = json.loads((run_dir / "pipeline.json").read_text())
    return {name: s.get("seconds") for name, s in state["stages"].items()}


def compare_studies(fp32: dict[str, Any], bf16: dict[str, Any]) -> list[dict[str, Any]]:
    """Per k: the two effects, their difference, the float32 interval's half-width, and whether the
    significance call agrees."""
    out = []
    for a, b in zip(fp32["rows"], bf16["rows"], strict=True):
        half = (a["ci"][1] - a["ci"][0]) / 2
        diff = b["effect"] - a["effect"]
        out.append(
            {
                "k": a["k"],
                "fp32": a["effect"],
                "bf16": b["effect"],
                "diff": diff,
                "fp32_half_width": half,
                "within_half_width": abs(diff) <= half,
                "same_call": a["significant"] == b["significant"],
            }
        )
    return out


def logit_agreement(device: str, n_examples: int, model_path: Path | None = None) -> dict[str, Any]:
    """Largest |logit difference| of the clean model in bfloat16 against float32 on the default
    benchmark's first prompts (both on ``device``)."""
    import torch

    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.model.scoring import make_batch
    from scircuits.platform.model.sequences import encode_example

    plugins = get_plugins()
    adapter = plugins.models.get("smollm2-135m")
    benchmark = plugins.benchmarks.get("arithmetic")
    options = benchmark.parse_options({})
    examples = list(benchmark.examples("test", n_examples, 0, options))
    where = str(model_path) if model_path else None
    fp32 = adapter.load(model_path=where, dtype="float32", device=device)
    sequences = [encode_example(fp32.tokenizer, e, None) for e in examples]
    pad = fp32.tokenizer.pad_token_id or 0
    batch = make_batch(sequences, pad).to(device)
    mask = batch.attention_mask.bool()
    with torch.no_grad():
        ref = fp32.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    del fp32
    bf16 = adapter.load(model_path=where, dtype="bfloat16", device=device)
    with torch.no_grad():
        low = bf16.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    diff = (low - ref)[mask].abs()
    argmax_same = (low.argmax(-1) == ref.argmax(-1))[mask].float().mean()
    return {
        "examples": len(examples),
        "tokens": int(mask.sum()),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "logit_scale": float(ref[mask].abs().mean()),
        "argmax_agreement": float(argmax_same),
    }


def fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def row(what: str, figure: str, memory: Any = None) -> str:
    return f"| {what} | {figure} | {fmt(memory, '.0f') if memory is not None else ''} |"


def failed(what: str, section: dict[str, Any]) -> str:
    return row(what, f"failed ({section.get('rc')}): {' / '.join(section.get('tail', []))}")


def render(report: dict[str, Any]) -> str:
    env = report["environment"]
    quick = " (quick settings)" if report["quick"] else ""
    lines = [
        f"GPU check, {env.get('date')}: {env.get('gpu', 'no GPU')} ({env.get('gpu_memory_gib', '–')} GiB, "
        f"driver {env.get('driver', '–')}), torch {env['torch']} (CUDA {env.get('cuda')}), "
        f"transformers {env.get('transformers')}, nnsight {env.get('nnsight')}, "
        f"sparsify {env.get('sparsify')}; device {report['device']}{quick}",
        "",
        "| what | figure | peak GPU MiB |",
        "| --- | --- | --- |",
    ]
    study = report.get("study", {})
    if study.get("rc") == 0:
        for name, seconds in study["stages"].items():
            lines.append(row(f"default study: {name}", f"{fmt(seconds, '.1f')} s"))
        lines.append(row("default study: whole command", f"{study['seconds']:.1f} s", study["peak_gpu_mib"]))
        splice = study["causal"].get("splice") or {}
        lines.append(
            row(
                "default study: splice max abs logit diff (float32)",
                fmt(splice.get("max_abs_logit_diff"), ".2e"),
            )
        )
        for r in study["causal"]["rows"]:
            lines.append(
                row(
                    f"default study: top {r['k']} effect on gold log-prob (95% CI); controls' mean; p adj.",
                    f"{r['effect']:.3f} ({r['ci'][0]:.3f}, {r['ci'][1]:.3f}); {fmt(r['controls_mean'])}; "
                    f"{fmt(r['p_adjusted'], '.3g')}",
                )
            )
    elif study:
        lines.append(failed("default study", study))
    collect = report.get("collect", {})
    if collect.get("rc") == 0:
        r = collect["result"]
        rate = r["tokens_per_s"]
        lines.append(
            row(
                f"collection, tokens/s: ours / hook stop / full forward ({r['model_dtype']})",
                f"{rate['ours']:,.0f} / {rate['hook stop']:,.0f} / {rate['full forward']:,.0f} "
                f"(ours / full {rate['ours'] / rate['full forward']:.2f}×)",
                collect["peak_gpu_mib"],
            )
        )
    elif collect:
        lines.append(failed("collection", collect))
    train = report.get("train", {})
    if train.get("rc") == 0:
        trainers = {r["trainer"]: r for r in train["result"]["rows"]}
        for name, r in trainers.items():
            if "error" in r:
                lines.append(row(f"training, {name}", f"failed: {r['error']}"))
                continue
            lines.append(
                row(
                    f"training, {name}: tokens/s; held-out FVU",
                    f"{r['tokens_per_s']:,.0f}; {r['fvu']:.3f}",
                    r.get("peak_gpu_mb"),
                )
            )
        peer = trainers.get("sparsify topk")
        if peer and "error" not in peer:
            for ours in ("ours topk", "ours topk bf16"):
                if ours in trainers and "error" not in trainers[ours]:
                    ratio = trainers[ours]["tokens_per_s"] / peer["tokens_per_s"]
                    lines.append(row(f"training, {ours} / sparsify topk", f"{ratio:.2f}× tokens/s"))
    elif train:
        lines.append(failed("training", train))
    bf16 = report.get("bf16", {})
    if bf16.get("refused_at_default_tolerance"):
        refused = " / ".join(bf16["refused_at_default_tolerance"])
        lines.append(row("bf16 study at the default splice tolerance", f"REFUSED: {refused}"))
    if bf16.get("rc") == 0:
        lines.append(
            row("bf16 study: whole ablate command", f"{bf16['seconds']:.1f} s", bf16["peak_gpu_mib"])
        )
        splice = bf16["causal"].get("splice") or {}
        lines.append(
            row(
                f"bf16 study: splice max abs logit diff (tolerance {fmt(splice.get('tolerance'), 'g')})",
                fmt(splice.get("max_abs_logit_diff"), ".2e"),
            )
        )
        for r in bf16.get("agreement", []):
            within = "within" if r["within_half_width"] else "OUTSIDE"
            lines.append(
                row(
                    f"bf16 vs fp32 study, top {r['k']}: effects; difference vs fp32 CI half-width; same call",
                    f"{r['bf16']:.3f} vs {r['fp32']:.3f}; {r['diff']:+.3f} vs {r['fp32_half_width']:.3f} "
                    f"({within}); {'yes' if r['same_call'] else 'NO'}",
                )
            )
    elif bf16:
        lines.append(failed("bf16 study", bf16))
    logits = report.get("logits", {})
    if "max_abs_logit_diff" in logits:
        lines.append(
            row(
                "clean model bf16 vs fp32: max / mean abs logit diff "
                f"(mean abs logit {logits['logit_scale']:.2f}); argmax agreement",
                f"{logits['max_abs_logit_diff']:.3f} / {logits['mean_abs_logit_diff']:.4f}; "
                f"{logits['argmax_agreement']:.4f} over {logits['tokens']} tokens",
            )
        )
    elif logits:
        lines.append(row("clean model bf16 vs fp32", f"failed: {logits.get('error')}"))
    lines.append(row("whole check", f"{report['seconds']:.0f} s"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the logs, table.md and gpu.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small settings (a smoke run of the script)")
    p.add_argument("--train-tokens", type=int, default=2_000_000, help="bench/train.py --tokens")
    p.add_argument(
        "--skip", default="", help="comma list of sections to skip: study,collect,train,bf16,logits"
    )
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.perf_counter()
    report: dict[str, Any] = {"device": args.device, "quick": args.quick, "environment": environment()}

    def save() -> None:
        report["seconds"] = time.perf_counter() - started
        (out / "gpu.json").write_text(json.dumps(report, indent=2))
        table = render(report)
        (out / "table.md").write_text(table + "\n")

    runs = out / "runs"
    run_dir = runs / RUN_NAME
    model_flags: list[str] = []
    tiny: Path | None = None
    if args.quick:
        from scircuits.testing import save_tiny_model, tiny_loaded_model

        tiny = save_tiny_model(tiny_loaded_model("smollm2-135m"), out / "tiny")
        model_flags = ["--model", f"hf:{tiny}"]
    if "study" not in skip:
        print("[gpu] 1/5 the default study", file=sys.stderr, flush=True)
        flags = [*model_flags, *QUICK_RUN_FLAGS] if args.quick else []
        study = run_command(
            scircuits("run", "--device", args.device, "--out", str(runs), "--no-progress", *flags),
            out / "study.log",
            timeout=300,
        )
        if args.quick and runs.is_dir():
            run_dir = next(runs.iterdir(), run_dir)
        if study["rc"] == 0:
            study["stages"] = stage_seconds(run_dir)
            study["causal"] = causal_table(run_dir / "causal" / "results.json")
        report["study"] = study
        save()
    if "collect" not in skip:
        print("[gpu] 2/5 collection against a bare forward", file=sys.stderr, flush=True)
        quick_sizes = [*model_flags, "--layer", "2", "--batch-size", "4", "--batches", "2", "--seq-len", "32",
                       "--rounds", "1"]  # fmt: skip
        full_sizes = ["--batch-size", "64", "--batches", "16", "--seq-len", "128", "--rounds", "3"]
        sizes = quick_sizes if args.quick else full_sizes
        dtype = "float32" if args.device == "cpu" else "bfloat16"
        result_file = out / "collect.json"
        collect = run_command(
            [sys.executable, str(ROOT / "bench" / "collect.py"), "--device", args.device,
             "--model-dtype", dtype, *sizes, "--json-out", str(result_file)],
            out / "collect.log",
            timeout=120,
        )  # fmt: skip
        if collect["rc"] == 0:
            collect["result"] = json.loads(result_file.read_text())
        report["collect"] = collect
        save()
    if "train" not in skip:
        print("[gpu] 3/5 TopK training against sparsify", file=sys.stderr, flush=True)
        tokens = 40_000 if args.quick else args.train_tokens
        width = ["--d-sae", "1152"] if args.quick else []
        result_file = out / "train.json"
        train = run_command(
            [sys.executable, str(ROOT / "bench" / "train.py"), "--device", args.device,
             "--tokens", str(tokens), "--skip-relu", "--skip-saelens", "--peers-python", sys.executable,
             "--json", str(result_file), *width],
            out / "train.log",
            timeout=150,
        )  # fmt: skip
        if train["rc"] == 0:
            train["result"] = json.loads(result_file.read_text())
        report["train"] = train
        save()
    if "bf16" not in skip and report.get("study", {}).get("rc") == 0:
        print("[gpu] 4/5 the study in bfloat16", file=sys.stderr, flush=True)
        flags = [*model_flags, *QUICK_STUDY] if args.quick else RUN_ABLATE_FLAGS
        where = ["--sae", str(run_dir / "sae"), "--store", str(run_dir / "activations.zarr")]

        def bf16_study(*extra: str, log: str) -> dict[str, Any]:
            return run_command(
                scircuits("ablate", *where, "--device", args.device, "--model-dtype", "bfloat16",
                          "--out", str(out / "causal-bf16"), "--no-progress", *flags, *extra),
                out / log,
                timeout=200,
            )  # fmt: skip

        bf16 = bf16_study(log="bf16.log")
        if bf16["rc"] != 0 and "does not reproduce the clean model" in (out / "bf16.log").read_text():
            # the default bfloat16 tolerance refused the splice: say so, and still compare the studies
            refused = bf16["tail"]
            bf16 = bf16_study("--splice-tolerance", "100", "--force", log="bf16-retry.log")
            bf16["refused_at_default_tolerance"] = refused
        if bf16["rc"] == 0:
            bf16["causal"] = causal_table(out / "causal-bf16" / "results.json")
            bf16["agreement"] = compare_studies(report["study"]["causal"], bf16["causal"])
        report["bf16"] = bf16
        save()
    if "logits" not in skip:
        print("[gpu] 5/5 clean logits, bfloat16 against float32", file=sys.stderr, flush=True)
        try:
            report["logits"] = logit_agreement(args.device, 8 if args.quick else 64, tiny)
        except Exception as exc:
            report["logits"] = {"error": f"{type(exc).__name__}: {exc}"}
        save()
    save()
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
