"""The dashboard's data, as written to disk: one FeaturePage per feature, one IndexRow per index line."""

from __future__ import annotations

from pydantic import BaseModel


class Context(BaseModel):
    """A window of one traced sequence around a token where the feature fires."""

    run: int  # index of the sequence (run of equal example id) in the store; keys the example shards
    example: int  # the benchmark example id recorded in the store
    start: int  # offset of the window's first token in the sequence
    focus: int  # index of the token of interest inside the window
    activation: float
    values: list[float]  # the feature's activation on every token of the window


class QuantileGroup(BaseModel):
    """Contexts drawn from one quantile band of a uniform sample of the feature's nonzero activations."""

    quantile: int  # 1 = lowest band
    of: int  # how many bands
    bin_min: float
    bin_max: float
    fraction: float  # share of the sampled nonzero activations in this band
    contexts: list[Context]


class Histogram(BaseModel):
    """Counts of nonzero activations in log-spaced bins: bin i covers [edges[i], edges[i + 1])."""

    edges: list[float]
    counts: list[int]


class LogitEffect(BaseModel):
    token: str
    logit: float


class Ablation(BaseModel):
    """What results.json records for a feature it describes (keys as there)."""

    rank: int | None = None
    attribution: float | None = None
    mean_activation: float | None = None
    frequency: float | None = None
    exact_logprob_delta: float | None = None
    exact_logprob_ci: list[float] | None = None
    exact_accuracy_delta: float | None = None
    exact_accuracy_ci: list[float] | None = None


class Match(BaseModel):
    """A feature of another run matched to this one by `scircuits compare` (data/matches/<id>.js)."""

    comparison: int  # index into window.SC_COMPARISONS (data/comparisons.js)
    run: str  # the other run's label
    feature: int
    similarity: float  # activation correlation over the compared tokens
    kinds: list[str]  # "one-to-one" (Hungarian) and/or "max-correlation" (this feature's best partner)
    href: str | None = None  # the other run's feature page, relative to this site's features/ folder


class FeaturePage(BaseModel):
    id: int
    n_fired: int
    n_tokens: int
    frequency: float  # n_fired / n_tokens over the store's tokens at positions >= first_position
    mean_activation: float  # over those tokens, zeros included
    max_activation: float
    histogram: Histogram
    top: list[Context]
    quantiles: list[QuantileGroup]
    promoted: list[LogitEffect]
    suppressed: list[LogitEffect]
    ablation: Ablation | None = None


class IndexRow(BaseModel):
    id: int
    frequency: float
    max_activation: float
    rank: int | None
    attribution: float | None
    exact_logprob_delta: float | None
    exact_logprob_ci: list[float] | None
    summary: str  # the most frequent tokens among the top contexts
