"""The shuffling reader: determinism, epochs, train/eval split by example, DDP shares, bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from scircuits.platform.contract.errors import ConfigError
from scircuits.store import ActivationStore
from scircuits.store.synthetic import write_synthetic_store

D, CHUNK_ROWS, N_EXAMPLES = 8, 32, 80


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    path = tmp_path_factory.mktemp("batches") / "s.zarr"
    write_synthetic_store(path, n_examples=N_EXAMPLES, d_model=D, chunk_rows=CHUNK_ROWS, dtype="float32")
    return ActivationStore(path)


def row_keys(batches) -> list[tuple[int, int]]:
    """(example id, position) of every row, in order: identifies a row uniquely."""
    return [(int(e), int(p)) for b in batches for e, p in zip(b.example_ids, b.positions, strict=False)]


def rows_of(store: ActivationStore, example_ids) -> set[tuple[int, int]]:
    wanted = np.isin(store.example_ids, example_ids)
    return set(zip(store.example_ids[wanted].tolist(), store.positions[wanted].tolist(), strict=False))


def test_split_is_by_whole_examples_and_seeded(store):
    train, eval_ = store.split_examples(0.2, seed=0)
    assert len(eval_) == round(0.2 * N_EXAMPLES) and len(train) + len(eval_) == N_EXAMPLES
    assert not set(train) & set(eval_)
    np.testing.assert_array_equal(store.split_examples(0.2, seed=0)[1], eval_)
    assert not np.array_equal(store.split_examples(0.2, seed=1)[1], eval_)
    assert len(store.split_examples(0.001, seed=0)[1]) == 1  # a positive fraction keeps one example
    assert len(store.split_examples(0.0, seed=0)[1]) == 0
    with pytest.raises(ConfigError, match="eval_fraction"):
        store.split_examples(1.0, seed=0)


def test_every_train_row_exactly_once_per_epoch_and_never_an_eval_row(store):
    train_ids, eval_ids = store.split_examples(0.1, seed=0)
    keys = row_keys(
        store.iter_labelled_batches(16, seed=3, split="train", eval_fraction=0.1, shuffle_buffer_rows=48)
    )
    assert len(keys) == len(set(keys))
    assert set(keys) == rows_of(store, train_ids)
    eval_keys = row_keys(
        store.iter_labelled_batches(16, seed=3, split="eval", eval_fraction=0.1, shuffle_buffer_rows=48)
    )
    assert set(eval_keys) == rows_of(store, eval_ids) and not set(eval_keys) & set(keys)
    assert store.n_rows("train", eval_fraction=0.1) == len(keys)


def test_batches_carry_the_stored_rows(store):
    reference = store.read_rows(0, store.n_tokens)
    index = {
        key: i
        for i, key in enumerate(zip(store.example_ids.tolist(), store.positions.tolist(), strict=False))
    }
    for batch in store.iter_labelled_batches(16, seed=1, split="all", shuffle_buffer_rows=40):
        rows = [index[(int(e), int(p))] for e, p in zip(batch.example_ids, batch.positions, strict=False)]
        np.testing.assert_array_equal(batch.acts.numpy(), reference[rows])
        np.testing.assert_array_equal(batch.token_ids, store.token_ids[rows])


def test_deterministic_per_seed_and_different_per_epoch_and_seed(store):
    def order(**kw):
        return row_keys(store.iter_labelled_batches(16, shuffle_buffer_rows=48, **kw))

    first = order(seed=5, epoch=0)
    assert first == order(seed=5, epoch=0)
    assert first != order(seed=5, epoch=1) and set(first) == set(order(seed=5, epoch=1))
    assert first != order(seed=6, epoch=0)
    # the plain tensor batches are the same rows in the same order
    plain = np.concatenate([b.numpy() for b in store.iter_batches(16, seed=5, shuffle_buffer_rows=48)])
    labelled = np.concatenate(
        [b.acts.numpy() for b in store.iter_labelled_batches(16, seed=5, shuffle_buffer_rows=48)]
    )
    np.testing.assert_array_equal(plain, labelled)


def test_rows_are_mixed_across_chunks(store):
    """A batch draws rows from several chunks, not one chunk's rows in a run."""
    batch = next(iter(store.iter_labelled_batches(32, seed=0, split="all", shuffle_buffer_rows=128)))
    row_index = {
        key: i
        for i, key in enumerate(zip(store.example_ids.tolist(), store.positions.tolist(), strict=False))
    }
    chunks = {
        row_index[(int(e), int(p))] // CHUNK_ROWS
        for e, p in zip(batch.example_ids, batch.positions, strict=False)
    }
    assert len(chunks) >= 3


@pytest.mark.parametrize("world_size,drop_last", [(2, False), (3, False), (3, True)])
def test_rank_shares_are_disjoint_and_equally_long(store, world_size, drop_last):
    shares = [
        [
            b
            for b in store.iter_labelled_batches(
                16,
                seed=2,
                rank=rank,
                world_size=world_size,
                drop_last=drop_last,
                shuffle_buffer_rows=48,
                epoch=1,
            )
        ]
        for rank in range(world_size)
    ]
    expected = store.batches_per_epoch(16, world_size=world_size, drop_last=drop_last)
    assert [len(s) for s in shares] == [expected] * world_size
    if drop_last:
        assert all(b.acts.shape == (16, D) for s in shares for b in s)
    keys = [row_keys(s) for s in shares]
    flat = [k for ks in keys for k in ks]
    assert len(flat) == len(set(flat))
    train = rows_of(store, store.split_examples(0.05, 0)[0])
    assert set(flat) <= train
    if not drop_last:  # at most one row per rank is left out
        assert len(train) - len(flat) <= world_size - 1


def test_drop_last_and_batch_counts(store):
    n = store.n_rows("train")
    full = list(store.iter_batches(16, drop_last=True, shuffle_buffer_rows=48))
    assert len(full) == n // 16 and all(b.shape == (16, D) for b in full)
    every = list(store.iter_batches(16, shuffle_buffer_rows=48))
    assert len(every) == -(-n // 16) and sum(b.shape[0] for b in every) == n
    assert every[0].dtype.is_floating_point and str(every[0].dtype) == "torch.float32"


def test_bad_options_are_explained(store):
    with pytest.raises(ConfigError, match="rank 2 is not in"):
        next(store.iter_batches(8, rank=2, world_size=2))
    with pytest.raises(ConfigError, match="split must be"):
        next(store.iter_batches(8, split="test"))


def test_reader_holds_at_most_buffer_plus_one_chunk(tmp_path):
    """Bounded memory: the counters and the Python heap stay at buffer + one chunk, far below the store."""
    d_model, chunk_rows, buffer_rows = 64, 256, 512
    path = write_synthetic_store(
        tmp_path / "big.zarr", n_examples=600, d_model=d_model, chunk_rows=chunk_rows, max_tokens=64
    )
    store = ActivationStore(path)
    store_bytes = store.n_tokens * d_model * 4
    assert store.n_tokens > 30 * chunk_rows
    _ = store.example_ids, store.unique_example_ids  # cached id columns are not batch memory
    batches = store.iter_batches(128, split="all", shuffle_buffer_rows=buffer_rows)
    tracemalloc.start()
    try:
        n_rows = 0
        for batch in batches:
            n_rows += batch.shape[0]
            del batch
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n_rows == store.n_tokens
    counters = store.last_counters
    assert counters.peak_rows_held <= buffer_rows + chunk_rows
    assert counters.blocks_read == -(-store.n_tokens // chunk_rows) and counters.rows_read == store.n_tokens
    bound = (buffer_rows + 3 * chunk_rows) * d_model * 4 + 4 * 128 * d_model * 4 + (256 << 10)
    assert peak < bound < store_bytes / 2, (peak, bound, store_bytes)


@pytest.mark.parametrize(
    "batch_size,buffer_rows,world_size,drop_last",
    [(16, 64, 1, False), (7, 40, 1, True), (32, 300, 2, True), (5, 8, 3, False)],
)
def test_seeking_yields_the_batches_an_unsought_stream_yields_there(
    tmp_path, batch_size, buffer_rows, world_size, drop_last
):
    path = write_synthetic_store(tmp_path / "s.zarr", n_examples=40, d_model=8, seed=3, chunk_rows=32)
    store = ActivationStore(path)
    for rank in range(world_size):
        options = dict(
            seed=4,
            epoch=1,
            shuffle_buffer_rows=buffer_rows,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        full = [b.numpy() for b in store.iter_batches(batch_size, **options)]
        assert len(full) > 3
        for start in (1, 2, len(full) // 2, len(full) - 1, len(full)):
            sought = [b.numpy() for b in store.iter_batches(batch_size, start_batch=start, **options)]
            assert len(sought) == len(full) - start
            assert all(np.array_equal(a, b) for a, b in zip(full[start:], sought, strict=True))


def test_seeking_reads_no_activations_of_the_skipped_batches(tmp_path):
    path = write_synthetic_store(tmp_path / "s.zarr", n_examples=200, d_model=8, seed=1, chunk_rows=16)
    store = ActivationStore(path)
    options = dict(seed=0, shuffle_buffer_rows=32)
    n = len(list(store.iter_batches(8, **options)))
    list(store.iter_batches(8, start_batch=n - 1, **options))
    # only the blocks holding the rows of the last batch (the buffer's rows) are read
    assert store.last_counters.rows_read <= 32 + 16 * 4 < store.n_tokens
