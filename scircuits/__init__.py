"""scircuits: sparse-feature circuit analysis of language models.

The names below are the public plugin API. Third-party plugins import only these. Nothing here
imports torch, transformers or nnsight: heavy libraries load when a plugin actually does work.
"""

from scircuits.platform.ablations import Ablation, FeatureStats
from scircuits.platform.benchmarks import Benchmark, Example
from scircuits.platform.hookspecs import hookimpl
from scircuits.platform.models import HFModelAdapter, LoadedModel, ModelAdapter, Site
from scircuits.platform.saes import SAEVariant

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
