"""scircuits: sparse-feature circuit analysis of language models.

The names below are the public plugin API. Third-party plugins import only these. Nothing here
imports torch, transformers or nnsight: heavy libraries load when a plugin actually does work.
"""

from scircuits.platform.ablations import Ablation, FeatureStats
from scircuits.platform.benchmarks import Benchmark, Example
from scircuits.platform.causal.context import StudyContext
from scircuits.platform.causal.results import StudyResults
from scircuits.platform.causal.statistics import Interval, spearman
from scircuits.platform.contract.analyses import Analysis, AnalysisResult
from scircuits.platform.hookspecs import hookimpl
from scircuits.platform.models import HFModelAdapter, LoadedModel, ModelAdapter, Site
from scircuits.platform.report.document import ReportDocument
from scircuits.platform.saes import SAEVariant

__version__ = "0.1.0"

__all__ = [
    "Ablation",
    "Analysis",
    "AnalysisResult",
    "Benchmark",
    "Example",
    "FeatureStats",
    "HFModelAdapter",
    "Interval",
    "LoadedModel",
    "ModelAdapter",
    "ReportDocument",
    "SAEVariant",
    "Site",
    "StudyContext",
    "StudyResults",
    "__version__",
    "hookimpl",
    "spearman",
]
