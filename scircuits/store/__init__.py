"""The Zarr activation store, format v1 (see DESIGN.md): a resumable writer and a streaming reader."""

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
