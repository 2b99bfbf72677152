"""Linear probes scored honestly: held out by example, against a control task and a baseline.

- The split keeps every token of an example on one side (``example_split``).
- The probe is a multinomial logistic regression on standardised inputs (``fit_probe``, the public
  ``scircuits.fit_logistic`` that the ground-truth scoring uses too), scored on
  the held-out tokens: accuracy over the variable's values, and per value the AUROC of its
  log-probability (one value against the rest).
- The control task (Hewitt & Liang 2019, "Designing and interpreting probes with control tasks"):
  every token type (token id) gets one value drawn at random from the variable's empirical
  distribution, fixed for all its occurrences (``control_values``). A probe that scores well on it
  memorises token identity; selectivity = real score − control score.
- ``identity_accuracy``: the held-out accuracy of the best rule that sees only the token id (each
  type's most common value in training), how much of the variable token identity alone gives.

Pure numpy (the fit is scircuits' own); nothing here knows about studies or benchmarks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

import scircuits

CONTROL_DRAWS = 100  # redraws allowed to get a control task with at least two values


def example_split(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: a ``test_fraction`` of the distinct ``groups`` (examples), at
    least one on each side, all rows of a group on one side."""
    groups = np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError("a held-out split needs at least two examples")
    n_test = min(len(unique) - 1, max(1, round(len(unique) * test_fraction)))
    held = np.random.default_rng(seed).choice(unique, size=n_test, replace=False)
    return np.isin(groups, held)


def control_values(values: np.ndarray, token_ids: np.ndarray, seed: int) -> np.ndarray | None:
    """Per row, the control task's value: each token type's value drawn once from the empirical
    distribution of ``values``. None when the rows hold fewer than two token types (token identity
    then carries nothing, and the control task would be constant)."""
    values, token_ids = np.asarray(values), np.asarray(token_ids)
    types, inverse = np.unique(token_ids, return_inverse=True)
    if len(types) < 2:
        return None
    support, counts = np.unique(values, return_counts=True)
    if len(support) < 2:
        return None
    rng = np.random.default_rng(seed)
    for _ in range(CONTROL_DRAWS):
        drawn = rng.choice(support, size=len(types), p=counts / counts.sum())
        if len(np.unique(drawn)) >= 2:
            return drawn[inverse]
    return None


def identity_accuracy(token_ids: np.ndarray, values: np.ndarray, test: np.ndarray) -> float:
    """Held-out accuracy of predicting ``values`` from the token id alone (each type's most common
    training value; a type unseen in training gets the overall most common one)."""
    train = ~test
    overall = Counter(values[train].tolist()).most_common(1)[0][0]
    by_type: dict[int, Counter] = {}
    for t, v in zip(token_ids[train].tolist(), values[train].tolist(), strict=True):
        by_type.setdefault(t, Counter())[v] += 1
    guess = np.array([by_type[t].most_common(1)[0][0] if t in by_type else overall for t in token_ids[test]])
    return float((guess == values[test]).mean())


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return float(scircuits.auroc(np.asarray(scores, dtype=np.float64), positive))


def fit_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, n_classes: int, l2: float) -> np.ndarray:
    """Log-probabilities (n, n_classes) of every row under a multinomial logistic regression fitted to
    class indices ``y`` on ``train`` (``scircuits.fit_logistic``: LBFGS, inputs standardised on the
    training rows)."""
    logits = scircuits.fit_logistic(x, y, train, n_classes=n_classes, l2=l2).scores(x)
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class ProbeScore:
    """Held-out scores of one probe: accuracy, and per value the AUROC of its log-probability."""

    accuracy: float
    auroc: dict[int, float | None] = field(default_factory=dict)


def probe_scores(x: np.ndarray, values: np.ndarray, test: np.ndarray, l2: float = 1e-3) -> ProbeScore:
    """Fit on the rows outside ``test``, score on ``test``. A value never seen in training is never
    predicted (its held-out rows count as errors) and has no AUROC."""
    x, values = np.asarray(x, dtype=np.float64), np.asarray(values)
    classes = np.unique(values[~test])
    if len(classes) < 2:
        majority = classes[0] if len(classes) else None
        return ProbeScore(float((values[test] == majority).mean()), {int(v): None for v in np.unique(values)})
    index = {int(c): i for i, c in enumerate(classes)}
    y = np.array([index.get(int(v), -1) for v in values])
    logp = fit_probe(x, np.maximum(y, 0), ~test, len(classes), l2)
    predicted = classes[np.argmax(logp[test], axis=1)]
    per_value: dict[int, float | None] = {}
    for v in np.unique(values):
        column = index.get(int(v))
        per_value[int(v)] = None if column is None else auroc(logp[test, column], values[test] == v)
    return ProbeScore(float((predicted == values[test]).mean()), per_value)


def majority_accuracy(values: np.ndarray, test: np.ndarray) -> float:
    """Held-out accuracy of always answering the most common training value."""
    majority = Counter(values[~test].tolist()).most_common(1)[0][0]
    return float((values[test] == majority).mean())


def random_projection(token_ids: np.ndarray, positions: np.ndarray, width: int, seed: int) -> np.ndarray:
    """The input with no computation: a fixed random Gaussian vector per token id plus one per
    position (a randomly initialised embedding of both), ``width`` wide."""
    rng = np.random.default_rng(seed)
    types, t_index = np.unique(token_ids, return_inverse=True)
    places, p_index = np.unique(positions, return_inverse=True)
    return (
        rng.standard_normal((len(types), width))[t_index] + rng.standard_normal((len(places), width))[p_index]
    )
