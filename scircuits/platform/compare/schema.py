"""The typed results of ``scircuits compare`` (``compare/results.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 2  # 2: PairResult.floors
FORMAT = "scircuits.compare"


class MatchedDistribution(BaseModel):
    """Matched correlations: mean/quantiles over the matched latents; shares above 0.5/0.7/0.9 over
    all live latents of the matching's source side (for one-to-one matches: A's), so a latent left
    unmatched counts as below."""

    n: int
    mean: float | None
    median: float | None
    q10: float | None
    q90: float | None
    above_05: float
    above_07: float
    above_09: float
    hist_edges: list[float]
    hist_counts: list[int]


class Geometry(BaseModel):
    """RSA (Spearman) of matched decoder directions; p from a shuffled-pairing null."""

    rsa: float | None
    p_value: float | None
    null_mean: float | None
    null_q95: float | None
    n_pairs: int
    n_permutations: int


class MatchedPair(BaseModel):
    a: int
    b: int
    corr: float


ComparisonKind = Literal[
    "pair", "ceiling-seed", "floor-untrained", "floor-rotation", "pair-floor-untrained", "pair-floor-rotation"
]


class Comparison(BaseModel):
    kind: ComparisonKind
    a: str  # what was compared (run label, or "twin seed 1", "untrained", "random basis")
    b: str
    source: Literal["model", "store", "stores"]
    alignment: Literal["token", "char-span"]
    n_tokens: int
    d_a: int
    d_b: int
    alive_a: int
    alive_b: int
    max_a_to_b: MatchedDistribution
    max_b_to_a: MatchedDistribution
    hungarian: MatchedDistribution
    hungarian_method: str
    geometry: Geometry
    top_pairs: list[MatchedPair]
    seconds: float


class Reference(BaseModel):
    """A run's own ceiling (seed twin on its store) and floors (untrained SAE, random basis)."""

    ceiling: Comparison | None = None
    floor_untrained: Comparison | None = None
    floor_rotation: Comparison | None = None
    twin_path: str | None = None
    note: str | None = None  # why a reference is missing, and how to get it


class PairFloors(BaseModel):
    """Floors of a pair of runs on different models, layers or sites, in the pair's own spaces and on
    its tokens: one side's SAE replaced by an untrained SAE of its variant and size, or by a random
    orthonormal basis of its activation space, applied to that side's own activations.
    ``a_vs_*_b`` floor the pair's A → B figures (``max_a_to_b``, ``hungarian``); ``*_a_vs_b`` floor
    its B → A figures (``max_b_to_a``)."""

    a_vs_untrained_b: Comparison
    untrained_a_vs_b: Comparison
    a_vs_basis_b: Comparison
    basis_a_vs_b: Comparison


class RunEntry(BaseModel):
    path: str  # as given on the command line
    resolved_path: str | None = None  # absolute, so a dashboard can find its run in these results
    label: str
    model: str
    layer: int
    site: str
    benchmark: str
    sae_variant: str
    d_model: int
    d_sae: int
    reference: Reference


class EffectAgreement(BaseModel):
    n_pairs: int
    pearson: float | None
    ci: tuple[float, float] | None
    pairs: list[tuple[int, int, float, float]]
    note: str | None = None  # why there is none: a run without measured features


class TopKAgreement(BaseModel):
    k: int
    matched_in_top_k: int
    expected_by_chance: float


class ContextSide(BaseModel):
    latent: int
    contexts: list[tuple[str, str, float]]  # (text before the token, the token, activation)


class ContextPair(BaseModel):
    corr: float
    a: ContextSide
    b: ContextSide


class PairResult(BaseModel):
    a: int  # index into runs
    b: int
    comparison: Comparison
    alignment_pairs: int
    alignment_tokens_a: int
    alignment_tokens_b: int
    effect_agreement: EffectAgreement
    top_k: list[TopKAgreement]
    # the floors in the pair's spaces (runs on different models, layers or sites); None when both
    # runs read the same activations, whose own references (RunEntry.reference) are then in place
    floors: PairFloors | None = None
    contexts: list[ContextPair] = Field(default_factory=list)
    # every live latent's matches (one-to-one and max-correlation both ways), as arrays in an .npz
    # file beside results.json (path relative to it; keys in docs/formats.md)
    matches_file: str | None = None


class CompareResults(BaseModel):
    format: str = FORMAT
    schema_version: int = SCHEMA_VERSION
    options: dict[str, Any]
    runs: list[RunEntry]
    pairs: list[PairResult]
    provenance: dict[str, Any]
    wall_seconds: float
