"""Text corpora as an activation source: reading local files and HF datasets, packing, bad input,
and `scircuits collect --corpus` end to end on a tiny model (rows, resume after kill -9)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from scircuits.platform.collect import corpus
from scircuits.platform.collect.collection import run_collect
from scircuits.platform.config import CollectConfig
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.store import ActivationStore
from scircuits.testing import save_tiny_model, tiny_loaded_model
from tests.cli_helpers import run_cli
from tests.collect_helpers import (
    collect_process_command,
    one_line,
    recorded,
    tiny_collect_args,
)
from tests.test_collect import reference_rows

DOCS = [f"document {i} tells of {'many ' * (i % 7)}things, number {i * 7}." for i in range(120)]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    loaded = tiny_loaded_model("gpt2-medium", seed=11)
    folder = save_tiny_model(loaded, tmp_path_factory.mktemp("tiny-gpt2"))
    return folder, loaded


def write_jsonl(path: Path, docs: list[str], column: str = "text") -> Path:
    path.write_text("".join(json.dumps({column: d, "n": i}) + "\n" for i, d in enumerate(docs)))
    return path


class WordTokenizer:
    """Ids 10, 11, ... per word, no special tokens; bos 1 eos 2 (a stand-in to check packing by hand)."""

    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, texts, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": [[10 + len(w) for w in t.split()] for t in texts]}


def test_the_three_file_kinds_give_the_same_documents(tmp_path):
    docs = DOCS[:20]
    (tmp_path / "c.txt").write_text("\n".join(docs[:10]) + "\n\n" + "\n".join(docs[10:]) + "\n")
    write_jsonl(tmp_path / "c.jsonl", docs)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), tmp_path / "c.parquet")
    txt = [t for _, t in corpus.documents(corpus.CorpusSpec(str(tmp_path / "c.txt")))]
    jsonl = [t for _, t in corpus.documents(corpus.CorpusSpec(str(tmp_path / "c.jsonl")))]
    parquet = [
        t for _, t in corpus.documents(corpus.CorpusSpec(str(tmp_path / "c.parquet"), text_column="body"))
    ]
    assert txt == jsonl == parquet == docs
    where = [w for w, _ in corpus.documents(corpus.CorpusSpec(str(tmp_path / "c.txt")))]
    assert where[10] == f"{tmp_path / 'c.txt'}:12"  # the blank line is skipped, line numbers kept


def test_packing_is_bos_first_separated_deterministic_per_seed():
    spec_docs = ["a bb ccc", "dddd", "ee f gg hhh iiii"]
    tokenizer = WordTokenizer()
    packing = corpus.Packing.for_tokenizer(tokenizer, 4)
    assert packing.record() == {"context_size": 4, "bos_token_id": 1, "separator_token_id": 1}
    stream: list[int] = []
    for i, d in enumerate(spec_docs):
        stream += ([1] if i else []) + [10 + len(w) for w in d.split()]

    class Fixed(corpus.CorpusSpec):
        pass

    import scircuits.platform.collect.corpus as module

    original = module.shuffled_documents
    module.shuffled_documents = lambda spec, seed: iter(spec_docs)
    try:
        packed = list(corpus.contexts(Fixed("x"), tokenizer, packing, seed=0))
    finally:
        module.shuffled_documents = original
    assert all(len(c) == 4 and c[0] == 1 for c in packed)
    body = [t for c in packed for t in c[1:]]
    assert body == stream[: len(body)] and len(stream) - len(body) < 3  # only a short tail dropped


def test_documents_are_permuted_by_seed_and_the_same_for_the_same_seed(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    spec = corpus.CorpusSpec(str(path))
    a, b, c = (list(corpus.shuffled_documents(spec, s)) for s in (0, 0, 1))
    assert a == b and a != c and sorted(a) == sorted(DOCS)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.jsonl", b"", r"empty\.jsonl:1: the file is empty"),
        ("latin.txt", b"good line\nsecond\ncaf\xe9 au lait\n", r"latin\.txt:3: not UTF-8 text \(byte 0xe9"),
        (
            "nocol.jsonl",
            b'{"text": "ok"}\n{"body": "no text here"}\n',
            r"nocol\.jsonl:2: no text column 'text'.*body",
        ),
        ("bad.jsonl", b'{"text": "ok"}\n{oops\n', r"bad\.jsonl:2: not a JSON object"),
    ],
)
def test_bad_files_are_one_line_naming_file_and_line(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(corpus.CorpusError, match=match):
        corpus.check_readable(corpus.CorpusSpec(str(tmp_path / name)))


def test_bad_corpus_through_the_cli_exits_2_in_one_line_and_keeps_what_exists(tmp_path, tiny_gpt2):
    folder, _ = tiny_gpt2
    bad = tmp_path / "c.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x y z"]}), bad)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = run_cli(
        *tiny_collect_args(folder, "--corpus", str(bad), "--out", str(tmp_path / "out"), "--no-progress")
    )
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert f"{bad}:1: no text column 'text'" in line and "body" in line
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_hf_dataset_streamed_from_a_local_dataset_folder_matches_the_file(tmp_path):
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    write_jsonl(data / "train.jsonl", DOCS[:30])
    from_hub = [t for _, t in corpus.documents(corpus.CorpusSpec(f"hub:{tmp_path / 'ds'}", split="train"))]
    assert from_hub == DOCS[:30]
    with pytest.raises(corpus.CorpusError, match=r"no text column 'body'.*text"):
        next(corpus.documents(corpus.CorpusSpec(f"hub:{tmp_path / 'ds'}", text_column="body")))


def test_offline_missing_dataset_is_one_line_naming_id_cache_flag_and_data(tmp_path, tiny_gpt2):
    folder, _ = tiny_gpt2
    offline = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    args = tiny_collect_args(
        folder, "--corpus", "no-such-org/no-such-corpus-xyz", "--out", str(tmp_path / "o")
    )
    result = run_cli(*args, env=offline)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    for needed in ("no-such-org/no-such-corpus-xyz", str(tmp_path / "hf"), "HF_DATASETS_OFFLINE", "--data"):
        assert needed in line
    assert not (tmp_path / "o").exists()


def test_online_with_the_hub_unreachable_a_hub_corpus_fails_at_once(tmp_path, tiny_gpt2):
    """`datasets` would retry the hub for about half a minute first; the probe says it at once."""
    folder, _ = tiny_gpt2
    online = {"HF_DATASETS_OFFLINE": "0", "HF_HUB_OFFLINE": "0", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    online |= {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "https://hub.invalid"}  # RFC 2606
    online |= dict.fromkeys(("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"), "")
    args = tiny_collect_args(
        folder, "--corpus", "hub:no-such-org/no-such-corpus-xyz", "--out", str(tmp_path / "o")
    )
    start = time.monotonic()
    result = run_cli(*args, env=online)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "no-such-org/no-such-corpus-xyz" in line and "the hub cannot be reached (hub.invalid" in line, line
    assert time.monotonic() - start < 25  # against about 30 s of retries on top of the start-up
    assert not (tmp_path / "o").exists()


def test_corpus_store_rows_are_the_packed_contexts_traced(tmp_path, tiny_gpt2):
    folder, loaded = tiny_gpt2
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    out = tmp_path / "s.zarr"
    summary = run_collect(
        CollectConfig(
            model="gpt2-medium",
            model_path=str(folder),
            layer=2,
            corpus=str(path),
            context_size=16,
            tokens=300,
            batch_size=4,
            out=str(out),
            progress=False,
            dtype="float32",
        ),
        get_plugins(),
    )
    assert summary.n_examples == 19 and summary.n_tokens == 19 * 16  # ceil(300 / 16) contexts
    store = ActivationStore(out)
    assert store.attrs["data_source"]["kind"] == "corpus" and store.attrs["data_source"]["context_size"] == 16
    assert "benchmark" not in store.attrs and store.attrs["format_version"] == 2
    packing = corpus.Packing.for_tokenizer(loaded.tokenizer, 16)
    expected = list(corpus.contexts(corpus.CorpusSpec(str(path)), loaded.tokenizer, packing, 0, limit=19))
    acts = store.read_rows(0, store.n_tokens)
    for index, ids in enumerate(expected):
        rows = store.example_ids == index
        assert store.token_ids[rows].tolist() == ids and ids[0] == packing.bos_id
        assert store.positions[rows].tolist() == list(range(16))
        np.testing.assert_allclose(acts[rows], reference_rows(loaded, 2, "resid", ids), rtol=1e-4, atol=1e-5)


def corpus_command(folder: Path, corpus_path: Path, out: Path, tokens: int) -> list[str]:
    return collect_process_command(
        folder,
        "--layer",
        "1",
        "--corpus",
        str(corpus_path),
        "--context-size",
        "16",
        "--tokens",
        str(tokens),
        "--batch-size",
        "3",
        "--chunk-rows",
        "64",
        "--out",
        str(out),
        "--no-progress",
    )


def test_corpus_collection_resumes_after_kill_9_to_the_same_content(tmp_path, tiny_gpt2):
    folder, _ = tiny_gpt2
    path = write_jsonl(tmp_path / "c.jsonl", DOCS * 20)
    killed, whole = tmp_path / "killed.zarr", tmp_path / "whole.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tokens = 16 * 900
    process = subprocess.Popen(
        corpus_command(folder, path, killed, tokens), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if recorded(killed).get("n_examples", 0) >= 10:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    at_kill = recorded(killed)
    assert not at_kill["complete"] and 10 <= at_kill["n_examples"] < 900
    resumed = subprocess.run(
        corpus_command(folder, path, killed, tokens), env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    traced_now = int(re.search(r"\((\d+) examples traced now", resumed.stdout).group(1))
    assert traced_now == 900 - at_kill["n_examples"]
    uninterrupted = subprocess.run(
        corpus_command(folder, path, whole, tokens), env=env, capture_output=True, text=True, timeout=600
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    a, b = ActivationStore(killed), ActivationStore(whole)
    assert a.n_tokens == b.n_tokens == 900 * 16
    assert np.array_equal(a.read_rows(0, a.n_tokens), b.read_rows(0, b.n_tokens))
    for name in ("token_ids", "example_ids", "positions"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


def test_a_corpus_shorter_than_one_context_is_one_line_and_makes_no_store(tmp_path, tiny_gpt2):
    folder, _ = tiny_gpt2
    short = tmp_path / "short.txt"
    short.write_text("a few words\n")
    out = tmp_path / "store.zarr"
    args = ["--corpus", str(short), "--layer", "2", "--out", str(out), "--no-progress"]
    result = run_cli(*tiny_collect_args(folder, *args))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert f"--corpus {short} gives fewer tokens than one context of --context-size" in line
    assert not out.exists()


@pytest.mark.parametrize("source", ["hub:", "", "hub:  "])
def test_a_corpus_that_names_nothing_is_one_line(source):
    with pytest.raises(corpus.CorpusError, match="names no corpus: give a text file or folder"):
        corpus.CorpusSpec(source)
