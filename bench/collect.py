"""Collection speed: our tracing + store write against plain transformers on the same prompts.

    python bench/collect.py                                  # SmolLM2, layer 15, 16 x 128 tokens, 8 batches
    python bench/collect.py --batches 2 --batch-size 4 --seq-len 64 --rounds 1   # a quick check
    python bench/collect.py --device cuda --model-dtype bfloat16 --batch-size 64 --batches 16
    python bench/collect.py --layers 3,9,15,21               # four sites in one forward (a collection)

On the same token batches (arithmetic few-shot prompts cut to --seq-len tokens, so no padding):

- full forward   a plain transformers forward through every block and the lm_head
- hook stop      a torch forward hook on block --layer that raises to stop the forward there
- ours           the collect stage's loop (nnsight trace stopped after the layer + store write)

With --layers L1,L2,...: ours reads every listed block's --site in one forward and writes one store
per site (the collection `collect --layers` writes, manifest included); hook stop stops a bare
forward after the last of them (capturing only that block's output).

Each round runs every method once over all batches (interleaved, so machine drift hits them alike);
the table gives the median tokens/s over rounds, the ratios the issue sets targets for
(ours / hook stop >= 0.9; hook stop / full forward >= 1.7 at layer 15 of 30) and the peak RSS.
Not a test: figures depend on whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scircuits.platform.collect.collection import trace_into_stores
from scircuits.platform.config import CollectConfig
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.model.sequences import encode_example


class StopForward(Exception):
    pass


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_full_forward(model, batches) -> float:
    synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch, use_cache=False)
    synchronize()
    return time.perf_counter() - start


def time_hook_stop(model, block, batches) -> float:
    captured = []

    def hook(_module, _inputs, output):
        captured.append((output[0] if isinstance(output, tuple) else output).float().cpu())
        raise StopForward

    handle = block.register_forward_hook(hook)
    try:
        synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(StopForward):
                    model(input_ids=batch, use_cache=False)
                captured.clear()
        synchronize()
        return time.perf_counter() - start
    finally:
        handle.remove()


def time_ours(
    config: CollectConfig,
    loaded,
    sites: list[tuple[int, str]],
    benchmark,
    options,
    workdir: Path,
    round_index: int,
    peaks: list[float],
) -> float:
    out = workdir / f"round{round_index}.zarr"
    many = len(sites) > 1  # several sites: a collection (manifest + one store per site), as the CLI writes

    def collect():
        return trace_into_stores(
            config.model_copy(update={"out": str(out)}), loaded, sites, benchmark, options, many=many
        )

    if reset_peak_rss():
        before = rss_mib()
        summary = collect()
        peaks.append(hwm_mib() - before)
    else:
        summary = collect()
    shutil.rmtree(out, ignore_errors=True)
    return summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--model-path")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--layers", help="several blocks in one forward, e.g. 3,9,15,21 (overrides --layer)")
    parser.add_argument("--site", default="resid", choices=["resid", "mlp", "attn"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true", help="leave out the full forward (saves time)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="store dtype")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--json-out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument(
        "--model-dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    plugins = get_plugins()
    rss_start = rss_mib()
    loaded = plugins.models.get(args.model).load(
        model_path=args.model_path, dtype=args.model_dtype, device=args.device
    )
    rss_loaded = rss_mib()
    if args.layers:
        layers = sorted(
            {loaded.adapter.layer_or_default(int(x), loaded.n_layers) for x in args.layers.split(",")}
        )
    else:
        layers = [loaded.adapter.layer_or_default(args.layer, loaded.n_layers)]
    layer = layers[-1]  # the forward stops after the last
    sites = [(block, args.site) for block in layers]
    benchmark = plugins.benchmarks.get("arithmetic")
    n_examples = args.batch_size * args.batches
    # Enough shots that every prompt is longer than --seq-len; encode_example keeps its end.
    config = CollectConfig(
        model=args.model,
        model_path=args.model_path,
        layer=layer,
        layers=",".join(map(str, layers)) if len(layers) > 1 else None,
        site=args.site,
        limit=n_examples,
        batch_size=args.batch_size,
        dtype=args.dtype,
        max_length=args.seq_len,
        progress=False,
        device=args.device,
        model_dtype=args.model_dtype,
        benchmark_options={"n_shots": max(3, args.seq_len // 8), "n_examples": max(n_examples, 200)},
    )
    options = benchmark.parse_options(config.benchmark_options)
    examples = list(benchmark.examples(config.split, config.limit, config.seed, options))
    sequences = [encode_example(loaded.tokenizer, e, args.seq_len).input_ids for e in examples]
    lengths = {len(s) for s in sequences}
    if lengths != {args.seq_len}:
        raise SystemExit(
            f"prompts are {sorted(lengths)} tokens long, not all {args.seq_len}; lower --seq-len"
        )
    batches = [
        torch.tensor(sequences[i : i + args.batch_size]).to(args.device)
        for i in range(0, n_examples, args.batch_size)
    ]
    block = loaded.module(f"{loaded.adapter.blocks_path}.{layer}")
    n_tokens = n_examples * args.seq_len

    workdir = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    times: dict[str, list[float]] = {"full forward": [], "hook stop": [], "ours": []}
    if args.skip_full:
        del times["full forward"]
    ours_peaks: list[float] = []  # RSS growth above the level before each collection
    try:
        # warm-up: one batch each (this also pages in every weight)
        if not args.skip_full:
            time_full_forward(loaded.model, batches[:1])
        rss_warm = rss_mib()
        time_hook_stop(loaded.model, block, batches[:1])
        warm = config.model_copy(update={"limit": args.batch_size})
        time_ours(warm, loaded, sites, benchmark, options, workdir, -1, [])
        for round_index in range(args.rounds):
            if not args.skip_full:
                times["full forward"].append(time_full_forward(loaded.model, batches))
            times["hook stop"].append(time_hook_stop(loaded.model, block, batches))
            times["ours"].append(
                time_ours(config, loaded, sites, benchmark, options, workdir, round_index, ours_peaks)
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rate = {name: n_tokens / statistics.median(ts) for name, ts in times.items()}
    print(
        f"model {args.model} ({loaded.n_layers} blocks, d_model {loaded.d_model}), "
        f"{args.site} of block{'s' if len(layers) > 1 else ''} {','.join(map(str, layers))}"
        f"{' (one forward, stopped after the last)' if len(layers) > 1 else ''}; "
        f"{args.batches} batches of {args.batch_size} x {args.seq_len} tokens, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads, {args.device}, model {args.model_dtype}, "
        f"store dtype {args.dtype}"
    )
    print(f"{'method':<14} {'tokens/s':>10} {'rounds (s)':>28}")
    for name, ts in times.items():
        print(f"{name:<14} {rate[name]:>10.0f} {', '.join(f'{t:.2f}' for t in ts):>28}")
    ours_vs_hook = rate["ours"] / rate["hook stop"]
    print(f"ours / hook stop       {ours_vs_hook:.3f}   (target >= 0.9)")
    stop_vs_full = None
    if not args.skip_full:
        stop_vs_full = rate["hook stop"] / rate["full forward"]
        print(
            f"hook stop / full       {stop_vs_full:.3f}   (target >= 1.7 for layer 15 of 30; "
            f"ideal {loaded.n_layers / (layer + 1):.2f} without embedding and lm_head costs)"
        )
        print(f"ours / full            {rate['ours'] / rate['full forward']:.3f}")
    print(
        f"RSS: start {rss_start:.0f} MiB, model loaded {rss_loaded:.0f} MiB, "
        f"after a forward {rss_warm:.0f} MiB, "
        f"process peak {peak_rss_mib():.0f} MiB"
        + ("" if args.skip_full else " (includes the full forward's logits)")
    )
    if ours_peaks:
        print(
            f"RSS growth while collecting (ours): at most {max(ours_peaks):.0f} MiB above the level before it"
        )
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    if args.json or args.json_out:
        text = json.dumps(
            {
                "tokens_per_s": rate,
                "seconds": times,
                "ours_vs_hook_stop": ours_vs_hook,
                "hook_stop_vs_full": stop_vs_full,
                "rss_loaded_mib": rss_loaded,
                "rss_after_forward_mib": rss_warm,
                "collect_rss_growth_mib": max(ours_peaks) if ours_peaks else None,
                "peak_rss_mib": peak_rss_mib(),
                "n_tokens": n_tokens,
                "layer": layer,
                "layers": layers,
                "threads": torch.get_num_threads(),
                "device": args.device,
                "model_dtype": args.model_dtype,
                "gpu_peak_allocated_mib": gpu_peak,
            },
            indent=2,
        )
        if args.json:
            print(text)
        if args.json_out:
            args.json_out.write_text(text)


if __name__ == "__main__":
    main()
