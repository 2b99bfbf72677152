"""Errors of the activation store. Each says what was wrong and what to do."""

from __future__ import annotations

from scircuits.errors import DataFormatError, ScircuitsError


class StoreError(ScircuitsError):
    """Base of the activation store's errors."""


class StoreMismatchError(StoreError):
    """An existing store was made by a different command (model, layer, config...)."""


class NonFiniteActivationsError(StoreError):
    """An example's activations hold NaN or inf (or overflow the store's dtype)."""

    def __init__(self, message: str, *, example_index: int, n_nan: int, n_inf: int, n_overflow: int):
        super().__init__(message)
        self.example_index = example_index
        self.n_nan = n_nan
        self.n_inf = n_inf
        self.n_overflow = n_overflow


class NotAStoreError(StoreError, DataFormatError):
    """The path is missing, or is not a format-v1 scircuits activation store."""


class DamagedStoreError(NotAStoreError):
    """A store's data file is missing or cannot be decoded."""


class StoreLockedError(StoreError):
    """Another process is writing to the same store."""


class StoreCompleteError(StoreError):
    """Rows were appended to a store that is already complete."""
