"""scircuits: sparse-feature circuit analysis of language models.

The names below are the public plugin API. Third-party plugins import only these. Nothing here
imports torch, transformers or nnsight: heavy libraries load when a plugin actually does work.
"""

from scircuits.platform.contract.ablations import Ablation, FeatureStats
from scircuits.platform.contract.benchmarks import Benchmark, Example
from scircuits.platform.contract.hookspecs import hookimpl
from scircuits.platform.contract.models import HFModelAdapter, LoadedModel, ModelAdapter, Site
from scircuits.platform.contract.saes import SAEVariant

__version__ = "0.1.0"

__all__ = [
    "Ablation",
    "Benchmark",
    "Example",
    "FeatureStats",
    "HFModelAdapter",
    "LoadedModel",
    "ModelAdapter",
    "SAEVariant",
    "Site",
    "__version__",
    "hookimpl",
]
