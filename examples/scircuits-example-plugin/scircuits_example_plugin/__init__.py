"""Example scircuits plugin, written only against the names ``scircuits`` exports: a benchmark and an
ablation (here), an SAE variant (``tied_sae``) and an analysis (``analysis``). The entry point names
this module; hook implementations of the other modules are imported into it, so the plugin manager
finds them here."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from scircuits import Ablation, Benchmark, Example, hookimpl
from scircuits_example_plugin.analysis import SpliceAgreementAnalysis

from .model import register_models
from .tied_sae import register_sae_variants

__all__ = [
    "register_ablations",
    "register_analyses",
    "register_benchmarks",
    "register_models",
    "register_sae_variants",
]

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Russia": "Moscow",
    "Egypt": "Cairo",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Ireland": "Dublin",
    "Canada": "Ottawa",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Cuba": "Havana",
    "Hungary": "Budapest",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Belgium": "Brussels",
    "Thailand": "Bangkok",
}


class CapitalsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_shots: int = Field(default=2, ge=0, le=4)


class CapitalsBenchmark(Benchmark):
    name = "capitals"
    description = "Few-shot 'The capital of X is' → ' Y' over 24 countries (example plugin)."
    Options = CapitalsOptions

    def examples(self, split="test", limit=None, seed=0, options=None):
        self.check_split(split)
        opts = self.parse_options(options)
        countries = sorted(CAPITALS)
        rng = random.Random(seed)
        for i, country in enumerate(countries[:limit]):
            others = [c for c in countries if c != country]
            shots = "".join(
                f"The capital of {c} is {CAPITALS[c]}.\n" for c in rng.sample(others, opts.n_shots)
            )
            yield Example(
                id=f"capitals/{split}/{i}",
                prompt=f"{shots}The capital of {country} is",
                target=f" {CAPITALS[country]}",
                delimiter=".",  # the shots end each answer with "."; scored with it
                meta={"country": country},
            )


class SignFlipAblation(Ablation):
    name = "sign-flip"
    description = "Multiply the chosen features by -1 (example plugin)."

    def apply(self, acts, indices, stats=None, options=None, generator=None):
        out = acts.clone()
        out[..., indices] = -acts[..., indices]
        return out


@hookimpl
def register_benchmarks(register):
    register(CapitalsBenchmark())


@hookimpl
def register_ablations(register):
    register(SignFlipAblation())


@hookimpl
def register_analyses(register):
    register(SpliceAgreementAnalysis())
