"""Scoring the pipeline against known variables: feature recovery, causal recovery, specificity.

Pure numpy (the linear probe uses torch, imported inside it). Inputs are plain arrays:

- ``acts``: (N, D) activations of N tokens: SAE feature activations, raw residual dimensions, the
  features of a random-decoder SAE or of an SAE trained on an untrained model;
- ``labels``: from :func:`variable_labels`, one binary label per (variable, value), e.g.
  ``carry_in=1``, defined only on the tokens where that variable is determined.

Feature recovery: for each label, the best single unit's AUROC (and its best-threshold F1) and the
share of labels with a unit at AUROC >= 0.9. SAE features are read one way (a feature fires for
the value), raw dimensions both ways (a residual direction's sign is arbitrary). The probe ceiling
is a logistic regression on the raw activations, scored on tokens it was not fitted on.

Causal recovery: a ranking of features (e.g. by attribution) against a known causal set: precision
and recall at k, and the ranking's AUROC. Specificity: the per-problem effect of an edit on
problems that depend on the edited variable and on problems that do not, each with a bootstrap
interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

AUROC_RECOVERED = 0.9
# Keys of the ground truth that name a position rather than a computed value.
INDEX_KEYS = frozenset({"column", "step"})


@dataclass(frozen=True)
class Label:
    """A binary target: ``rows`` index the tokens where the variable is defined, ``y`` its value there."""

    name: str  # "carry_in=1"
    rows: np.ndarray  # (n,) int
    y: np.ndarray  # (n,) bool

    @property
    def n_positive(self) -> int:
        return int(self.y.sum())


def variable_labels(
    token_variables: Sequence[Mapping[str, int]],
    *,
    exclude: Iterable[str] = INDEX_KEYS,
    min_count: int = 10,
) -> list[Label]:
    """One-vs-rest labels ``key=value`` from per-token variable dicts (``{}`` where none).

    A label needs at least ``min_count`` tokens on each side; rarer ones are left out.
    """
    skip = set(exclude)
    values: dict[str, dict[int, None]] = {}
    for cell in token_variables:
        for key, value in cell.items():
            if key not in skip:
                values.setdefault(key, {})[int(value)] = None
    labels: list[Label] = []
    for key in sorted(values):
        rows = np.array([i for i, cell in enumerate(token_variables) if key in cell], dtype=np.int64)
        observed = np.array([int(token_variables[i][key]) for i in rows])
        for value in sorted(values[key]):
            y = observed == value
            if y.sum() >= min_count and (~y).sum() >= min_count:
                labels.append(Label(f"{key}={value}", rows, y))
    return labels


# -- AUROC and F1 -----------------------------------------------------------------------------------


def auroc(scores: np.ndarray, y: np.ndarray, chunk: int = 256) -> np.ndarray:
    """AUROC of each column of ``scores`` (N,) or (N, F) at predicting boolean ``y`` (N,); ties count half."""
    scores = np.asarray(scores, dtype=np.float64)
    single = scores.ndim == 1
    if single:
        scores = scores[:, None]
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both classes")
    from scipy.stats import rankdata

    out = np.empty(scores.shape[1])
    for start in range(0, scores.shape[1], chunk):
        ranks = rankdata(scores[:, start : start + chunk], axis=0)  # ties share their average rank
        out[start : start + chunk] = (ranks[y].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out[0] if single else out


def best_f1(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(F1, threshold) of the best rule ``score >= threshold`` for one unit."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y[order]
    tp = np.cumsum(t)
    k = np.arange(1, len(s) + 1)
    last_of_value = np.ones(len(s), dtype=bool)
    last_of_value[:-1] = s[1:] != s[:-1]  # a threshold admits every token tied with it
    f1 = 2 * tp / (k + t.sum())
    f1 = np.where(last_of_value, f1, -1.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s[best])


# -- feature recovery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRecovery:
    label: str
    n: int
    n_positive: int
    unit: int  # best unit (feature or dimension); for a probe, -1
    auroc: float
    f1: float
    sign: int = 1  # -1: the unit predicts the label by being low (raw dimensions only)


@dataclass(frozen=True)
class Recovery:
    """Per-label best-unit scores and the share of labels recovered at AUROC >= ``threshold``."""

    source: str  # "sae", "raw", "probe", "random-decoder", "untrained-model", ...
    labels: tuple[LabelRecovery, ...]
    threshold: float = AUROC_RECOVERED

    @property
    def share_recovered(self) -> float:
        if not self.labels:
            return float("nan")
        return sum(r.auroc >= self.threshold for r in self.labels) / len(self.labels)

    @property
    def mean_auroc(self) -> float:
        return float(np.mean([r.auroc for r in self.labels])) if self.labels else float("nan")

    def by_label(self) -> dict[str, LabelRecovery]:
        return {r.label: r for r in self.labels}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "threshold": self.threshold,
            "share_recovered": self.share_recovered,
            "mean_auroc": self.mean_auroc,
            "labels": [asdict(r) for r in self.labels],
        }


def feature_recovery(
    acts: np.ndarray, labels: Sequence[Label], *, source: str, signed: bool = False
) -> Recovery:
    """For each label, the single column of ``acts`` with the highest AUROC (both signs when ``signed``)."""
    acts = np.asarray(acts)
    out: list[LabelRecovery] = []
    for label in labels:
        x = acts[label.rows]
        active = np.flatnonzero(x.max(axis=0) != x.min(axis=0))  # constant columns score 0.5
        if active.size == 0:
            out.append(LabelRecovery(label.name, len(label.rows), label.n_positive, -1, 0.5, 0.0))
            continue
        aucs = auroc(x[:, active], label.y)
        signs = np.ones_like(aucs)
        if signed:
            signs = np.where(aucs >= 0.5, 1.0, -1.0)
            aucs = np.maximum(aucs, 1.0 - aucs)
        best = int(np.argmax(aucs))
        unit = int(active[best])
        f1, _ = best_f1(signs[best] * x[:, unit], label.y)
        out.append(
            LabelRecovery(
                label.name, len(label.rows), label.n_positive, unit, float(aucs[best]), f1, int(signs[best])
            )
        )
    return Recovery(source, tuple(out))


def probe_recovery(
    acts: np.ndarray,
    labels: Sequence[Label],
    *,
    groups: np.ndarray | None = None,
    test_fraction: float = 0.3,
    l2: float = 1e-3,
    seed: int = 0,
) -> Recovery:
    """The ceiling: a logistic-regression probe per label on ``acts``, AUROC and F1 on held-out tokens.

    ``groups`` (one id per token, e.g. the problem) keeps all tokens of a problem on one side.
    """
    acts = np.asarray(acts, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out: list[LabelRecovery] = []
    for label in labels:
        x, y = acts[label.rows], label.y
        g = groups[label.rows] if groups is not None else np.arange(len(label.rows))
        unique = np.unique(g)
        held = set(rng.choice(unique, size=max(1, int(len(unique) * test_fraction)), replace=False).tolist())
        test = np.array([gi in held for gi in g])
        if y[test].all() or (~y[test]).all() or y[~test].all() or (~y[~test]).all():
            continue
        scores = fit_logistic(x, y, ~test, l2=l2).scores(x)
        f1, _ = best_f1(scores[test], y[test])
        out.append(
            LabelRecovery(
                label.name, int(test.sum()), int(y[test].sum()), -1, float(auroc(scores[test], y[test])), f1
            )
        )
    return Recovery("probe", tuple(out))


@dataclass(frozen=True)
class LogisticFit:
    """A logistic regression in the raw space of its inputs: ``scores(x) = x @ weights + bias``.

    ``weights`` is (d,) and ``bias`` a float for a binary fit (the logit of the positive class);
    (d, C) and (C,) for a multinomial one (one logit per class).
    """

    weights: np.ndarray
    bias: float | np.ndarray

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weights + self.bias


def fit_logistic(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, *, n_classes: int | None = None, l2: float = 1e-3
) -> LogisticFit:
    """A logistic regression fitted on the rows ``train`` of ``x`` (LBFGS, inputs standardised on those
    rows, L2 penalty ``l2`` on the standardised weights), returned in the raw space of ``x``.

    ``n_classes`` None: ``y`` is boolean and the fit binary (sigmoid); else ``y`` holds class indices
    0 .. n_classes - 1 and the fit is multinomial (softmax). The one probe fit of scircuits: the
    ground-truth ceiling (``probe_recovery``, ``probe_direction``) and the ``probes`` analysis use it.
    """
    import torch

    x = np.asarray(x, dtype=np.float64)
    train = np.asarray(train, dtype=bool)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xs = torch.tensor((x[train] - mu) / sd, dtype=torch.float64)
    shape = (x.shape[1],) if n_classes is None else (x.shape[1], n_classes)
    w = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(shape[1:], dtype=torch.float64, requires_grad=True)
    if n_classes is None:
        ys = torch.tensor(np.asarray(y)[train], dtype=torch.float64)
        loss_of = torch.nn.functional.binary_cross_entropy_with_logits
    else:
        ys = torch.tensor(np.asarray(y)[train], dtype=torch.long)
        loss_of = torch.nn.functional.cross_entropy
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(xs @ w + b, ys) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / (sd if n_classes is None else sd[:, None])
    bias = b.detach().numpy() - mu @ w_raw
    return LogisticFit(w_raw, float(bias) if n_classes is None else bias)


def probe_direction(
    acts: np.ndarray, y: np.ndarray, train: np.ndarray | None = None, l2: float = 1e-3
) -> np.ndarray:
    """The unit direction (in the space of ``acts``) of a logistic probe for boolean ``y``, fitted on
    the rows ``train`` (all by default): what an interchange intervention on the probe patches."""
    acts = np.asarray(acts, dtype=np.float64)
    train = np.ones(len(acts), dtype=bool) if train is None else np.asarray(train, dtype=bool)
    w = fit_logistic(acts, np.asarray(y, dtype=bool), train, l2=l2).weights
    return w / np.linalg.norm(w)


def random_decoder_features(acts: np.ndarray, d_sae: int, k: int, seed: int = 0) -> np.ndarray:
    """Features of a TopK SAE whose decoder is random unit directions (encoder = decoder transposed).

    The baseline of "Sanity checks for SAEs": what a dictionary that learned nothing recovers.
    """
    acts = np.asarray(acts, dtype=np.float64)
    rng = np.random.default_rng(seed)
    decoder = rng.standard_normal((d_sae, acts.shape[1]))
    decoder /= np.linalg.norm(decoder, axis=1, keepdims=True)
    pre = np.maximum((acts - acts.mean(0)) @ decoder.T, 0.0)
    if k < d_sae:
        cutoff = np.partition(pre, d_sae - k, axis=1)[:, d_sae - k][:, None]
        pre = np.where(pre >= cutoff, pre, 0.0)
    return pre


# -- causal recovery --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankingRecovery:
    """A feature ranking (best first) against the known causal set."""

    causal_set: tuple[int, ...]
    precision_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    auroc: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ranking_recovery(
    scores: np.ndarray, causal_set: Iterable[int], ks: Sequence[int] = (1, 5, 10, 20)
) -> RankingRecovery:
    """``scores`` (F,) rank the features (higher first, e.g. |attribution|); ``causal_set`` the true ones."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.zeros(len(scores), dtype=bool)
    members = sorted({int(f) for f in causal_set})
    if not members:
        raise ValueError(
            "the causal set is empty: no feature is aligned with a variable the answer depends on"
        )
    truth[members] = True
    order = np.argsort(-scores, kind="stable")
    precision, recall = {}, {}
    for k in ks:
        hits = int(truth[order[:k]].sum())
        precision[int(k)] = hits / k
        recall[int(k)] = hits / len(members)
    area = float(auroc(scores, truth)) if truth.sum() < len(truth) else float("nan")
    return RankingRecovery(tuple(members), precision, recall, area)


def aligned_features(
    recovery: Recovery, labels: Iterable[str], min_auroc: float = AUROC_RECOVERED
) -> set[int]:
    """The best feature of each named label, where it reaches ``min_auroc``: a known causal set."""
    wanted = set(labels)
    return {r.unit for r in recovery.labels if r.label in wanted and r.auroc >= min_auroc and r.unit >= 0}


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Specificity:
    """Mean per-problem effect (edited - clean) where the answer depends on the edited variable and
    where it does not, and their difference, with bootstrap intervals."""

    dependent: Interval
    independent: Interval
    difference: Interval  # dependent - independent
    confidence: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def specific(self) -> bool:
        """The edit moves dependent problems and leaves independent ones alone."""
        return self.dependent.excludes_zero and not self.independent.excludes_zero

    def to_dict(self) -> dict[str, Any]:
        def interval(i: Interval) -> dict[str, Any]:
            return {**asdict(i), "excludes_zero": i.excludes_zero}

        return {
            "dependent": interval(self.dependent),
            "independent": interval(self.independent),
            "difference": interval(self.difference),
            "confidence": self.confidence,
            "specific": self.specific,
            **self.extra,
        }


def _bootstrap_means(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    if len(values) == 0:
        return np.full(n_boot, np.nan)
    picks = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[picks].mean(axis=1)


def specificity(
    clean: np.ndarray,
    edited: np.ndarray,
    depends: np.ndarray,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Specificity:
    """Per-problem scores (log-prob of the answer, or correct as 0/1) before and after an edit.

    ``depends[i]``: whether problem i's answer depends on the edited variable. Intervals are
    percentile bootstraps over problems, resampled within each group.
    """
    clean, edited = np.asarray(clean, dtype=np.float64), np.asarray(edited, dtype=np.float64)
    depends = np.asarray(depends, dtype=bool)
    if not (clean.shape == edited.shape == depends.shape) or clean.ndim != 1:
        raise ValueError("clean, edited and depends must be 1-D arrays of one length")
    effect = edited - clean
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100

    def interval(values: np.ndarray, boots: np.ndarray) -> Interval:
        if len(values) == 0:
            return Interval(float("nan"), float("nan"), float("nan"), 0)
        low, high = np.percentile(boots, [tail, 100 - tail])
        return Interval(float(values.mean()), float(low), float(high), len(values))

    dep, ind = effect[depends], effect[~depends]
    boot_dep, boot_ind = _bootstrap_means(dep, rng, n_boot), _bootstrap_means(ind, rng, n_boot)
    diff_value = np.array([dep.mean() - ind.mean()]) if len(dep) and len(ind) else np.array([])
    diff = interval(diff_value, boot_dep - boot_ind)
    return Specificity(interval(dep, boot_dep), interval(ind, boot_ind), diff, confidence)
