"""Activation store throughput: our writer (uncompressed and compressed) against a numpy memmap of the
same rows, the compression ratio of each codec, the shuffling reader's throughput, and whether the
reader's prefetch hides the reads behind a training-sized matrix product per batch (``--work``).

    python bench/store.py --dtype bfloat16 ...                 # bfloat16 stores (uint16 bits)

    python bench/store.py --store runs/x/activations.zarr      # rows of a real store (best)
    python bench/store.py --npy acts.npy                       # rows of a (tokens, d_model) .npy file
    python bench/store.py                                      # generated Gaussian rows (labelled so)

Rows are loaded into memory first (at most --rows), so only writing and reading are timed. Not a test:
figures depend on the disk and on whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scircuits.store import ActivationStore, ActivationStoreWriter
from scircuits.store.format import encode_acts, storage_dtype
from scircuits.store.location import size_on_disk

CODECS = ["none", "zstd:1", "zstd:3", "blosc-lz4", "blosc-zstd:1"]


@dataclass
class Rows:
    acts: np.ndarray  # (n, d_model) in the store dtype (float32 for bfloat16, rounded when written)
    token_ids: np.ndarray
    example_ids: np.ndarray
    label: str

    def examples(self):
        """(example id, token ids, acts) per example, split where example_ids changes."""
        cuts = np.flatnonzero(np.diff(self.example_ids)) + 1
        bounds = np.concatenate([[0], cuts, [len(self.example_ids)]])
        for start, stop in itertools.pairwise(bounds):
            yield int(self.example_ids[start]), self.token_ids[start:stop], self.acts[start:stop]


def load_rows(args: argparse.Namespace) -> Rows:
    dtype = np.dtype("float32" if args.dtype == "bfloat16" else args.dtype)
    if args.store:
        store = ActivationStore(args.store)
        n = min(args.rows, store.n_tokens)
        a = store.attrs
        label = (
            f"store {args.store} (source={a.get('source')}, "
            f"{a.get('model')} {a.get('site')}{a.get('layer')}, "
            f"{a.get('data_source')})"
        )
        return Rows(
            store.read_rows(0, n).astype(dtype),
            store.read_ids("token_ids", 0, n),
            store.read_ids("example_ids", 0, n),
            label,
        )
    if args.npy:
        acts = np.load(args.npy, mmap_mode="r")[: args.rows].astype(dtype)
        label = f"npy {args.npy} (examples of {args.example_tokens} rows assumed)"
    else:
        rng = np.random.default_rng(0)
        acts = rng.standard_normal((args.rows, args.d_model), dtype=np.float32).astype(dtype)
        label = "GENERATED Gaussian rows (not activations; compression figures meaningless)"
    n = acts.shape[0]
    return Rows(
        acts, np.zeros(n, dtype=np.int32), (np.arange(n) // args.example_tokens).astype(np.int32), label
    )


def stored_nbytes(rows: Rows, dtype: str) -> int:
    return rows.acts.size * (2 if dtype == "bfloat16" else rows.acts.itemsize)


def bench_memmap(rows: Rows, workdir: Path, chunk_rows: int, dtype: str) -> float:
    """Reference write: the same rows (as uint16 bits for bfloat16, encoded inside the timing)."""
    path = workdir / "memmap.npy"
    start = time.perf_counter()
    shape = rows.acts.shape
    out = np.lib.format.open_memmap(path, mode="w+", dtype=storage_dtype(dtype), shape=shape)
    for i in range(0, rows.acts.shape[0], chunk_rows):
        out[i : i + chunk_rows] = encode_acts(rows.acts[i : i + chunk_rows], dtype)
    out.flush()
    del out
    return time.perf_counter() - start


def bench_writer(rows: Rows, path: Path, codec: str, chunk_rows: int | None, dtype: str) -> float:
    attrs = {
        "source": "imported",
        "model": "bench",
        "model_id": "bench",
        "model_revision": "bench",
        "layer": 0,
        "site": "resid",
        "data_source": {"kind": "benchmark", "benchmark": "bench", "split": "bench"},
    }
    start = time.perf_counter()
    with ActivationStoreWriter.open(
        path,
        attrs,
        d_model=rows.acts.shape[1],
        dtype=dtype,
        chunk_rows=chunk_rows,
        compressor=None if codec == "none" else codec,
    ) as writer:
        for example_id, token_ids, acts in rows.examples():
            writer.append_example(example_id, token_ids, acts)
    return time.perf_counter() - start


def bench_reader(path: Path, batch_size: int) -> tuple[float, int]:
    store = ActivationStore(path)
    start = time.perf_counter()
    n = sum(batch.shape[0] for batch in store.iter_batches(batch_size, split="all"))
    seconds = time.perf_counter() - start
    if n != store.n_tokens:
        raise RuntimeError(f"reader returned {n} rows of {store.n_tokens}")
    return seconds, n


def bench_prefetch(path: Path, batch_size: int, work: int, prefetch: int) -> tuple[float, float]:
    """(seconds reading with training-like work per batch, seconds of the work alone on the same
    batches held in memory): a matrix product (batch x d) @ (d x work*d) and back, as an SAE step."""
    import torch

    store = ActivationStore(path, prefetch=prefetch)
    d = store.d_model
    gen = torch.Generator().manual_seed(0)
    w_enc = torch.randn(d, work * d, generator=gen) / d**0.5
    w_dec = torch.randn(work * d, d, generator=gen) / d**0.5

    def step(x: torch.Tensor) -> None:
        torch.relu(x @ w_enc) @ w_dec

    start = time.perf_counter()
    held = []
    for batch in store.iter_batches(batch_size, split="all"):
        step(batch)
        if len(held) < 64:
            held.append(batch)
    with_reads = time.perf_counter() - start
    start = time.perf_counter()
    n = 0
    while n < store.n_tokens:
        for batch in held:
            step(batch)
            n += batch.shape[0]
            if n >= store.n_tokens:
                break
    return with_reads, time.perf_counter() - start


def bench_memmap_random_batches(path: Path, batch_size: int) -> float:
    """Reference: random row batches fancy-indexed out of a memmap (in the page cache)."""
    data = np.load(path, mmap_mode="r")
    order = np.random.default_rng(0).permutation(data.shape[0])
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        np.asarray(data[np.sort(order[i : i + batch_size])], dtype=np.float32)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", help="take rows from this activation store")
    parser.add_argument("--npy", help="take rows from this (tokens, d_model) .npy file")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to use (default 200,000)")
    parser.add_argument("--d-model", type=int, default=576, help="width of generated rows")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    parser.add_argument(
        "--work", type=int, default=8, help="prefetch check: SAE width multiple of the per-batch product"
    )
    parser.add_argument("--example-tokens", type=int, default=128, help="rows per example without a store")
    parser.add_argument(
        "--chunk-rows", type=int, default=None, help="store chunk rows (default: the writer's)"
    )
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated compressors to compare")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is shown")
    parser.add_argument("--workdir", help="where to write (default: a temporary folder, removed after)")
    args = parser.parse_args()

    import torch  # noqa: F401  (imported before any timing: iter_batches yields torch tensors)

    rows = load_rows(args)
    n, d_model = rows.acts.shape
    raw_mb = stored_nbytes(rows, args.dtype) / 1e6
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="scircuits-bench-store-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        chunk_rows = args.chunk_rows
        codecs = args.codecs.split(",")
        warmup = Rows(rows.acts[:2048], rows.token_ids[:2048], rows.example_ids[:2048], rows.label)
        for codec in codecs:  # first use of a codec, thread pools and files costs extra: not measured
            bench_writer(warmup, workdir / "warmup.zarr", codec, chunk_rows, args.dtype)
            shutil.rmtree(workdir / "warmup.zarr")

        def best_write(run, path: Path) -> float:
            times = []
            for _ in range(args.repeat):
                if path.is_dir():
                    shutil.rmtree(path)
                path.unlink(missing_ok=True)
                times.append(run())
            return min(times)

        memmap_s = best_write(
            lambda: bench_memmap(rows, workdir, chunk_rows or 4096, args.dtype), workdir / "memmap.npy"
        )
        table = [("numpy memmap", "-", memmap_s, raw_mb, None, None)]
        readers = []
        for codec in codecs:
            path = workdir / f"store-{codec.replace(':', '_')}.zarr"
            seconds = best_write(
                lambda path=path, codec=codec: bench_writer(rows, path, codec, chunk_rows, args.dtype), path
            )
            acts_bytes = size_on_disk(path / "acts")
            table.append((f"writer {codec}", codec, seconds, raw_mb, raw_mb * 1e6 / acts_bytes, acts_bytes))
            read_s = min(bench_reader(path, args.batch_size)[0] for _ in range(args.repeat))
            readers.append((f"iter_batches {codec}", read_s, n * d_model * 4 / 1e6))
        memmap_read_s = min(
            bench_memmap_random_batches(workdir / "memmap.npy", args.batch_size) for _ in range(args.repeat)
        )
        readers.append(("memmap random batches (fancy index)", memmap_read_s, n * d_model * 4 / 1e6))
        first = workdir / f"store-{codecs[0].replace(':', '_')}.zarr"
        overlap = {
            depth: min(
                (bench_prefetch(first, args.batch_size, args.work, depth) for _ in range(args.repeat)),
                key=lambda t: t[0],
            )
            for depth in (0, 2)
        }
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"data: {rows.label}")
    print(
        f"rows: {n:,} x {d_model} {args.dtype} = {raw_mb:,.1f} MB; chunk rows "
        f"{chunk_rows or 'writer default'}; batch {args.batch_size}; best of {args.repeat}"
    )
    print()
    print(f"{'WRITE':<26}{'MB/s':>9}{'tokens/s':>12}{'x memmap':>10}{'ratio':>8}{'acts on disk':>15}")
    memmap_rate = raw_mb / memmap_s
    for name, _codec, seconds, mb, ratio, stored in table:
        rate = mb / seconds
        ratio_text = "-" if ratio is None else f"{ratio:.3f}"
        stored_text = "-" if stored is None else f"{stored / 1e6:,.1f} MB"
        print(
            f"{name:<26}{rate:>9,.0f}{n / seconds:>12,.0f}{rate / memmap_rate:>10.2f}"
            f"{ratio_text:>8}{stored_text:>15}"
        )
    print()
    print(f"{'READ (float32 batches)':<38}{'MB/s':>9}{'tokens/s':>12}")
    for name, seconds, mb in readers:
        print(f"{name:<38}{mb / seconds:>9,.0f}{n / seconds:>12,.0f}")
    print()
    print(f"READ + an SAE-sized product per batch (d_sae = {args.work} x d_model), store {codecs[0]}")
    for depth, (with_reads, in_memory) in overlap.items():
        print(
            f"  prefetch {depth}: {n / with_reads:>10,.0f} tokens/s; the same work on batches in memory "
            f"{n / in_memory:>10,.0f} tokens/s; ratio {in_memory / with_reads:.2f}"
        )


if __name__ == "__main__":
    main()
