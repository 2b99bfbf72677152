"""Where paired feature activations come from: chunks of codes (n_rows, d_sae) for two encoders,
rows being the same tokens, plus a label for every row (for top contexts).

- ``store_chunks``: one store's activations encoded by two encoders (an SAE and its seed twin, an
  untrained SAE, a random basis). Rows are tokens at positions >= 1 (position 0, the first token and
  attention sink, is left out as the causal study leaves it out).
- ``paired_store_chunks``: two stores that hold the same examples with the same token ids (the same
  model at two layers, say); token aligned.
- ``model_chunks``: each run's model traced on the same benchmark examples, each SAE encoding its
  own model's activations, positions paired on character spans (``alignment``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scircuits.platform.compare import internals
from scircuits.platform.compare.alignment import pair_positions, spanned_sequence

Encoder = Callable[[Any], np.ndarray]  # torch (n, d_model) -> numpy (n, d)
FIRST_POSITION = 1
BLOCK_ROWS = 4096


@dataclass
class Chunk:
    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray  # (n, 4) int64: example, char start in A, char end, char start in B (-1: none)


def sae_encoder(sae: Any) -> Encoder:
    def encode(x: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            return sae.encode(x.float()).numpy()

    return encode


def basis_encoder(basis: np.ndarray) -> Encoder:
    """Projections on the rows of ``basis`` (a random rotation: the random-rotation baseline)."""
    import torch

    weights = torch.from_numpy(np.ascontiguousarray(basis.T, dtype=np.float32))

    def encode(x: Any) -> np.ndarray:
        return (x.float() @ weights).numpy()

    return encode


def _store_labels(example_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    minus = np.full(len(positions), -1, dtype=np.int64)
    return np.stack([example_ids.astype(np.int64), minus, positions.astype(np.int64), minus], axis=1)


def store_chunks(store: Any, encode_a: Encoder, encode_b: Encoder, max_tokens: int | None) -> Iterator[Chunk]:
    import torch

    stop_at = store.n_tokens if max_tokens is None else min(store.n_tokens, max_tokens)
    for start in range(0, stop_at, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, stop_at)
        positions = store.read_ids("positions", start, stop)
        keep = positions >= FIRST_POSITION
        x = torch.from_numpy(np.asarray(store.read_rows(start, stop)[keep], dtype=np.float32))
        labels = _store_labels(store.read_ids("example_ids", start, stop)[keep], positions[keep])
        yield Chunk(encode_a(x), encode_b(x), labels)


def stores_hold_the_same_tokens(store_a: Any, store_b: Any) -> bool:
    if store_a.n_tokens != store_b.n_tokens or store_a.n_tokens == 0:
        return False
    return all(
        np.array_equal(store_a.read_ids(name), store_b.read_ids(name))
        for name in ("example_ids", "token_ids")
    )


def paired_store_chunks(
    store_a: Any, store_b: Any, encode_a: Encoder, encode_b: Encoder, max_tokens: int | None
) -> Iterator[Chunk]:
    import torch

    stop_at = store_a.n_tokens if max_tokens is None else min(store_a.n_tokens, max_tokens)
    for start in range(0, stop_at, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, stop_at)
        positions = store_a.read_ids("positions", start, stop)
        keep = positions >= FIRST_POSITION
        xa = torch.from_numpy(np.asarray(store_a.read_rows(start, stop)[keep], dtype=np.float32))
        xb = torch.from_numpy(np.asarray(store_b.read_rows(start, stop)[keep], dtype=np.float32))
        labels = _store_labels(store_a.read_ids("example_ids", start, stop)[keep], positions[keep])
        yield Chunk(encode_a(xa), encode_b(xb), labels)


@dataclass
class ModelSide:
    """One run's model, traced at its layer and site, and the encoder of its SAE."""

    loaded: Any
    tracer: Any
    encode: Encoder

    @classmethod
    def open(cls, model: str, model_path: str | None, layer: int, site: str, encode: Encoder) -> ModelSide:
        loaded = internals.load_model(model, model_path)
        return cls(loaded, internals.site_tracer(loaded, layer, site), encode)


@dataclass
class AlignmentCounts:
    examples: int = 0
    pairs: int = 0
    tokens_a: int = 0
    tokens_b: int = 0
    same_tokens: int = 0  # examples whose two tokenizations had the same spans

    @property
    def mode(self) -> str:
        if self.examples and self.same_tokens == self.examples:
            return "token"
        return "char-span"


def model_chunks(
    side_a: ModelSide,
    side_b: ModelSide,
    examples: Sequence[Any],
    batch_size: int,
    counts: AlignmentCounts,
    texts: list[str],
) -> Iterator[Chunk]:
    """Codes of both runs on ``examples``, paired on character spans; appends each text to ``texts``."""
    for first in range(0, len(examples), batch_size):
        batch = examples[first : first + batch_size]
        seqs_a = [spanned_sequence(side_a.loaded.tokenizer, ex.prompt, ex.target) for ex in batch]
        seqs_b = [spanned_sequence(side_b.loaded.tokenizer, ex.prompt, ex.target) for ex in batch]
        acts_a = side_a.tracer.trace([s.input_ids for s in seqs_a])
        acts_b = side_b.tracer.trace([s.input_ids for s in seqs_b])
        rows_a, rows_b, labels = [], [], []
        for offset, (sa, sb, xa, xb) in enumerate(zip(seqs_a, seqs_b, acts_a, acts_b, strict=True)):
            pairs = pair_positions(sa, sb)
            counts.examples += 1
            counts.pairs += len(pairs.a)
            counts.tokens_a += int((sa.ends >= 0).sum())
            counts.tokens_b += int((sb.ends >= 0).sum())
            counts.same_tokens += pairs.same_tokens
            texts.append(sa.text)
            if len(pairs.a) == 0:
                continue
            rows_a.append(xa[pairs.a])
            rows_b.append(xb[pairs.b])
            index = np.full(len(pairs.a), first + offset, dtype=np.int64)
            labels.append(np.stack([index, sa.starts[pairs.a], pairs.ends, sb.starts[pairs.b]], axis=1))
        if rows_a:
            import torch

            yield Chunk(
                side_a.encode(torch.cat(rows_a)), side_b.encode(torch.cat(rows_b)), np.concatenate(labels)
            )


class TopRows:
    """The ``n_top`` largest activations of every latent over a stream, with their row labels."""

    def __init__(self, d: int, n_top: int = 4) -> None:
        self.values = np.full((n_top, d), -np.inf, dtype=np.float32)
        self.labels = np.full((n_top, d, 4), -1, dtype=np.int64)
        self.n_top = n_top

    def update(self, codes: np.ndarray, labels: np.ndarray) -> None:
        take = min(self.n_top, len(codes))
        if take == 0:
            return
        top = np.argpartition(-codes, take - 1, axis=0)[:take]  # (take, d) row indices
        values = np.concatenate([self.values, np.take_along_axis(codes, top, axis=0)])
        new_labels = labels[top]  # (take, d, 4)
        all_labels = np.concatenate([self.labels, new_labels])
        keep = np.argsort(-values, axis=0, kind="stable")[: self.n_top]
        self.values = np.take_along_axis(values, keep, axis=0)
        self.labels = np.take_along_axis(all_labels, keep[:, :, None], axis=0)

    def of(self, latent: int) -> list[tuple[float, np.ndarray]]:
        return [
            (float(self.values[r, latent]), self.labels[r, latent])
            for r in range(self.n_top)
            if np.isfinite(self.values[r, latent]) and self.values[r, latent] > 0
        ]
