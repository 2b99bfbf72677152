"""The Zarr activation store, format v1 (docs/formats.md): a resumable writer and a streaming reader.

with ActivationStoreWriter.open(path, attrs, d_model=576) as writer:   # resumes a killed run
    for index, example in enumerate(examples):
        if index < writer.n_examples_written:
            continue
        writer.append_example(index, token_ids, acts)                    # (n,), (n, d_model)

store = ActivationStore(path)                                           # local path or fsspec URL
for batch in store.iter_batches(4096, seed=0, split="train", epoch=0):  # float32 torch tensors
    ...
"""

from scircuits.store.errors import (
    NonFiniteActivationsError,
    NotAStoreError,
    StoreCompleteError,
    StoreLockedError,
    StoreMismatchError,
)
from scircuits.store.format import FORMAT, FORMAT_VERSION
from scircuits.store.reader import ActivationStore, LabelledBatch
from scircuits.store.writer import ActivationStoreWriter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ActivationStore",
    "ActivationStoreWriter",
    "LabelledBatch",
    "NonFiniteActivationsError",
    "NotAStoreError",
    "StoreCompleteError",
    "StoreLockedError",
    "StoreMismatchError",
]
