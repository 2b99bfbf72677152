"""Corpus collection at scale: peak RSS over many tokens, and throughput with one rank against two.

    python bench/collect_memory.py corpus --out /tmp/c21speed/corpus          # build the local corpus
    python bench/collect_memory.py memory --corpus /tmp/c21speed/corpus/corpus.jsonl \\
        --tokens 10000000 --layers 0 --store /tmp/c21speed/mem.zarr      # one real `scircuits collect`
    python bench/collect_memory.py ranks --corpus /tmp/c21speed/corpus/corpus.jsonl \\
        --tokens 65536 --layers 3 --rounds 2                               # --nproc 1 against --nproc 2

``corpus`` writes a .jsonl corpus (one document per file, key ``text``) GENERATED from text that is on
this machine: the benchmark files of --data (GSM8K/MATH/LogiQA), then .md/.rst/.txt/.py files of the
venv's site-packages and /usr/share/doc, in sorted path order, until --min-chars characters. It is a
stand-in for web text (much of it is source code), labelled as such in its ``corpus.json``.

``memory`` runs the real command (`scircuits collect --corpus ... --layers L --tokens N`) as a child
process and samples, every --every seconds, the resident memory of the child and its descendants
(psutil) against the tokens the store records (its ``n_tokens`` attribute, written as chunks become
durable). The peak is the kernel's ``ru_maxrss`` of the child (``os.wait4``) and the sampled maximum
of the process tree; CPU seconds are the child's user + system time. The store is deleted afterwards
unless --keep.

``ranks`` runs `scircuits collect --nproc 1` and `--nproc 2` on the same corpus, tokens and layers,
alternating, each rank with one torch thread (OMP_NUM_THREADS=1; the launcher gives each of N ranks
cpu_count / N threads, 1 here). The rate is tokens over the time from the first recorded chunk to the
end (steady state: the model loads and the first chunk are left out), and also over the whole
command's wall time. Not a test: figures depend on whatever else runs on the machine; the load
average is printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

SCIRCUITS = [sys.executable, "-m", "scircuits"]
TEXT_SUFFIXES = (".md", ".rst", ".txt", ".py")
MAX_DOC_CHARS = 200_000


# ------------------------------------------------------------------------------------------ corpus
def _text_files(root: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(TEXT_SUFFIXES):
                found.append(Path(dirpath) / name)
    return sorted(found)


def _benchmark_texts(data: Path) -> list[str]:
    texts = []
    for path in sorted(p for p in data.rglob("*") if p.suffix in (".jsonl", ".json", ".txt")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                text = "\n".join(str(v) for v in record.values() if isinstance(v, str))
                if text.strip():
                    texts.append(text)
    return texts


def build_corpus(out: Path, data: Path, roots: list[Path], min_chars: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.jsonl"
    n_docs = n_chars = 0
    used: dict[str, int] = {}
    with corpus.open("w", encoding="utf-8") as f:

        def add(text: str, source: str) -> None:
            nonlocal n_docs, n_chars
            f.write(json.dumps({"text": text}) + "\n")
            n_docs += 1
            n_chars += len(text)
            used[source] = used.get(source, 0) + len(text)

        if data.is_dir():
            for text in _benchmark_texts(data):
                add(text, str(data))
        for root in roots:
            if n_chars >= min_chars:
                break
            for path in _text_files(root):
                if n_chars >= min_chars:
                    break
                try:
                    text = path.read_text(encoding="utf-8")[:MAX_DOC_CHARS]
                except (OSError, UnicodeDecodeError):
                    continue
                if text.strip():
                    add(text, str(root))
    record = {
        "what": "GENERATED local corpus (benchmark text, then package docs and source files): a stand-in "
        "for web text, not web text",
        "path": str(corpus),
        "documents": n_docs,
        "characters": n_chars,
        "characters_by_source": used,
    }
    (out / "corpus.json").write_text(json.dumps(record, indent=2))
    return record


# ------------------------------------------------------------------------------------- measuring
def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _recorded_tokens(store: Path) -> int:
    """Tokens the store (or every shard of a collection) records as durable now."""
    total = 0
    for meta in [store / "zarr.json", *store.glob("*/*/zarr.json"), *store.glob("*/zarr.json")]:
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError):
            continue
        if "n_tokens" in attrs and "d_model" in attrs:
            total += int(attrs["n_tokens"])
    return total


def run_sampled(cmd: list[str], env: dict[str, str], store: Path, every: float) -> dict:
    """Run ``cmd``; sample (seconds, tokens recorded, tree RSS) every ``every`` seconds."""
    samples: list[tuple[float, int, int]] = []
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    done = threading.Event()
    output: list[str] = []

    def drain() -> None:
        assert proc.stdout is not None
        output.extend(proc.stdout)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic() - start, _recorded_tokens(store), _tree_rss(ps)))
            done.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    reader.join(timeout=5)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}:\n{''.join(output)[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # the child's own; spawned ranks are in their own rusage
        "ru_maxrss_mib": usage.ru_maxrss / 1024,
        "samples": samples,
        "output_tail": "".join(output)[-2000:],
    }


def collect_cmd(args: argparse.Namespace, store: Path, nproc: int = 1) -> list[str]:
    cmd = [
        *SCIRCUITS,
        "collect",
        "--corpus",
        str(args.corpus),
        "--tokens",
        str(args.tokens),
        "--context-size",
        str(args.context_size),
        "--batch-size",
        str(args.batch_size),
        "--dtype",
        args.dtype,
        "--out",
        str(store),
        "--no-progress",
    ]
    cmd += ["--layers", args.layers] if "," in args.layers else ["--layer", args.layers]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    return cmd


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def steady_rate(samples: list[tuple[float, int, int]], wall: float, final_tokens: int) -> float | None:
    """Tokens per second from the first recorded chunk to the end of the command."""
    first = next(((t, n) for t, n, _ in samples if n > 0), None)
    if first is None or wall <= first[0]:
        return None
    return (final_tokens - first[1]) / (wall - first[0])


def thread_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def memory(args: argparse.Namespace) -> dict:
    store = args.store
    if store.exists():
        raise SystemExit(f"{store} exists; give a new --store (it is deleted after the measurement)")
    load_before = os.getloadavg()
    try:
        result = run_sampled(collect_cmd(args, store), thread_env(args.threads), store, args.every)
        final = _recorded_tokens(store)
        size = du_bytes(store)
    finally:
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    samples = result["samples"]
    peak_sampled = max((rss for _, _, rss in samples), default=0) / 2**20
    curve = []  # the tree's RSS at each million tokens recorded (first sample at or past it)
    for mark in range(0, final + 1, args.curve_step):
        hit = next((s for s in samples if s[1] >= mark), None)
        if hit is not None:
            curve.append({"tokens": hit[1], "seconds": round(hit[0], 1), "rss_mib": round(hit[2] / 2**20)})
    report = {
        "mode": "memory",
        "command": " ".join(collect_cmd(args, store)),
        "tokens": final,
        "wall_s": result["wall_s"],
        "cpu_s": result["cpu_s"],
        "tokens_per_s_wall": final / result["wall_s"],
        "peak_rss_mib_ru_maxrss": result["ru_maxrss_mib"],
        "peak_rss_mib_sampled_tree": peak_sampled,
        "store_bytes": size,
        "store_deleted": not args.keep,
        "rss_curve": curve,
        "threads": args.threads or "torch default",
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    print(
        f"collect --corpus {args.tokens:,} tokens asked, {final:,} stored at {args.layers} ({args.dtype}): "
        f"wall {result['wall_s']:.0f} s, CPU {result['cpu_s']:.0f} s, "
        f"{final / result['wall_s']:.0f} tokens/s (wall)"
    )
    print(
        f"peak RSS {result['ru_maxrss_mib']:.0f} MiB (ru_maxrss), {peak_sampled:.0f} MiB (sampled tree); "
        f"target < 2 GB ({2e9 / 2**20:.0f} MiB): "
        f"{'met' if result['ru_maxrss_mib'] * 2**20 < 2e9 else 'NOT met'}"
    )
    print(f"store {size / 1e9:.2f} GB{' (deleted)' if not args.keep else ''}")
    print("RSS against tokens:", ", ".join(f"{c['tokens']:,}: {c['rss_mib']} MiB" for c in curve))
    print(f"load average before {load_before}, after {os.getloadavg()}")
    return report


def ranks(args: argparse.Namespace) -> dict:
    runs: dict[int, list[dict]] = {1: [], 2: []}
    load_before = os.getloadavg()
    for round_index in range(args.rounds):
        for nproc in (1, 2):
            store = args.workdir / f"ranks{nproc}-r{round_index}"
            shutil.rmtree(store, ignore_errors=True)
            try:
                result = run_sampled(collect_cmd(args, store, nproc), thread_env(1), store, args.every)
                final = _recorded_tokens(store)
            finally:
                shutil.rmtree(store, ignore_errors=True)
            steady = steady_rate(result["samples"], result["wall_s"], final)
            runs[nproc].append(
                {
                    "tokens": final,
                    "wall_s": result["wall_s"],
                    "tokens_per_s_wall": final / result["wall_s"],
                    "tokens_per_s_steady": steady,
                    "loadavg_after": os.getloadavg(),
                }
            )
            print(
                f"round {round_index} --nproc {nproc}: {final:,} tokens, wall {result['wall_s']:.1f} s, "
                f"{final / result['wall_s']:.0f} tok/s whole command, "
                f"{steady or float('nan'):.0f} tok/s steady; "
                f"load {os.getloadavg()}"
            )

    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1 :][:2]) / 2

    summary = {}
    for kind in ("tokens_per_s_steady", "tokens_per_s_wall"):
        one = median([r[kind] for r in runs[1] if r[kind]])
        two = median([r[kind] for r in runs[2] if r[kind]])
        # "within 1.2x of twice the one-rank throughput": 2 * one / two <= 1.2
        summary[kind] = {"one_rank": one, "two_ranks": two, "twice_one_over_two": 2 * one / two}
        print(
            f"{kind}: one rank {one:.0f}, two ranks {two:.0f}; 2 x one / two = {2 * one / two:.3f} "
            f"(target <= 1.2: {'met' if 2 * one / two <= 1.2 else 'NOT met'})"
        )
    print(f"load average before {load_before}, after {os.getloadavg()}; {os.cpu_count()} CPUs")
    return {
        "mode": "ranks",
        "runs": runs,
        "summary": summary,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def _matmul_rate(seconds: float) -> float:
    """GFLOP/s of one thread multiplying 512 x 576 by 576 x 1536 (a block's MLP shape) for ``seconds``."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return n * 2 * 512 * 576 * 1536 / (time.perf_counter() - start) / 1e9


def cores(args: argparse.Namespace) -> dict:
    """The machine's own scaling, without scircuits: one single-threaded matrix-product process alone,
    then two at once (what --nproc 2 asks of the two cores)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1) as pool:
        alone = pool.submit(_matmul_rate, args.seconds).result()
    with ProcessPoolExecutor(2) as pool:
        both = [f.result() for f in [pool.submit(_matmul_rate, args.seconds) for _ in range(2)]]
    ratio = sum(both) / alone
    print(
        f"one process alone {alone:.1f} GFLOP/s; two at once {both[0]:.1f} + {both[1]:.1f} GFLOP/s: "
        f"{ratio:.2f}x the one (2.00 for two free cores); load {os.getloadavg()}"
    )
    return {
        "mode": "cores",
        "alone_gflops": alone,
        "both_gflops": both,
        "ratio": ratio,
        "loadavg": os.getloadavg(),
    }


def _proc_status(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def watch(args: argparse.Namespace) -> dict:
    """Follow a running collection (``--pid``, writing ``--store``) until it ends: every --every
    seconds its RSS, its kernel peak (VmHWM), its CPU seconds and the tokens its store records, one
    JSON line each to --json-out's ``.jsonl`` (so that what was seen survives a stopped run)."""
    proc = psutil.Process(args.pid)
    lines = (args.json_out or Path("watch.json")).with_suffix(".jsonl")
    start = time.monotonic()
    last: dict = {}
    with lines.open("a") as f:
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            try:
                status, cpu = _proc_status(args.pid), proc.cpu_times()
            except (OSError, psutil.Error):
                break
            last = {
                "seconds": round(time.monotonic() - start, 1),
                "tokens": _recorded_tokens(args.store),
                "rss_mib": round(status["VmRSS"] / 2**20),
                "peak_rss_mib": round(status["VmHWM"] / 2**20),
                "cpu_s": round(cpu.user + cpu.system, 1),
                "loadavg": os.getloadavg(),
            }
            f.write(json.dumps(last) + "\n")
            f.flush()
            time.sleep(args.every)
    print(json.dumps(last))
    return last


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["corpus", "memory", "ranks", "watch", "cores"])
    parser.add_argument("--seconds", type=float, default=15.0, help="cores: seconds per measurement")
    parser.add_argument("--pid", type=int, help="watch: the collecting process")
    parser.add_argument("--out", type=Path, default=Path("/tmp/c21speed/corpus"), help="corpus: folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="corpus: benchmark data")
    parser.add_argument(
        "--root",
        type=Path,
        action="append",
        help="corpus: folders of text files (default: site-packages, /usr/share/doc)",
    )
    parser.add_argument("--min-chars", type=int, default=60_000_000, help="corpus: stop after this many")
    parser.add_argument("--corpus", type=Path, help="memory/ranks: the corpus file")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--layers", default="0", help="a block, or several: 3,6,9,12")
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--store", type=Path, default=Path("/tmp/c21speed/memory.zarr"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/c21speed"))
    parser.add_argument("--keep", action="store_true", help="memory: keep the store")
    parser.add_argument("--threads", type=int, default=None, help="memory: OMP_NUM_THREADS of the command")
    parser.add_argument("--rounds", type=int, default=2, help="ranks: alternating rounds")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument(
        "--curve-step", type=int, default=1_000_000, help="memory: tokens between curve points"
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.mode == "corpus":
        roots = args.root or [Path(p) for p in sys.path if p.endswith("site-packages")] + [
            Path("/usr/share/doc")
        ]
        report = build_corpus(args.out, args.data, roots, args.min_chars)
        print(json.dumps(report, indent=2))
    elif args.mode not in ("watch", "cores"):
        if args.corpus is None:
            raise SystemExit(f"{args.mode}: give --corpus (build one with `{sys.argv[0]} corpus`)")
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = memory(args) if args.mode == "memory" else ranks(args)
    if args.mode == "watch":
        report = watch(args)
    if args.mode == "cores":
        report = cores(args)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
