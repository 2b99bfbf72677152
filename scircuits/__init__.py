"""scircuits: sparse-feature circuit analysis of language models.

The names below are the public plugin API: a plugin of any family (built-in or third-party) imports
only these. Nothing here imports torch, transformers or nnsight: the SAE torch module base and its
helpers (``SparseAutoencoder``, ``TrainOutput``, ``encoder_product``, ``mse_per_element``,
``fired_counts``) are loaded on first access, so listing plugins stays fast.
"""

from typing import TYPE_CHECKING, Any

from scircuits.errors import ConfigError, DataFormatError, ScircuitsError
from scircuits.platform.causal.context import StudyContext
from scircuits.platform.causal.controls import ControlSamplingError
from scircuits.platform.causal.results import StudyResults
from scircuits.platform.causal.significance import KTest, top_k_significance
from scircuits.platform.causal.statistics import Interval, spearman, spearman_interval
from scircuits.platform.common.device import check_device
from scircuits.platform.common.provenance import base_provenance, cache_root, file_sha256, now_iso
from scircuits.platform.contract.ablations import Ablation, FeatureStats
from scircuits.platform.contract.analyses import Analysis, AnalysisResult
from scircuits.platform.contract.benchmarks import Benchmark, Example
from scircuits.platform.contract.errors import PluginConflictError, UnknownNameError, WeightsUnavailableError
from scircuits.platform.contract.hf_loading import WeightsSource
from scircuits.platform.contract.hookspecs import hookimpl
from scircuits.platform.contract.models import HFModelAdapter, LoadedModel, ModelAdapter, Site
from scircuits.platform.contract.sae_sources import HubLocation, PublishedSAE, SAESource
from scircuits.platform.contract.saes import SAEVariant
from scircuits.platform.contract.synth_tasks import (
    MIN_LABEL_TOKENS,
    SynthCounterfactual,
    SynthProblem,
    SynthTask,
    SynthTaskBenchmark,
)
from scircuits.platform.groundtruth.scoring import (
    AUROC_RECOVERED,
    Label,
    LabelRecovery,
    RankingRecovery,
    Recovery,
    Specificity,
    aligned_features,
    auroc,
    best_f1,
    feature_recovery,
    probe_direction,
    probe_recovery,
    random_decoder_features,
    ranking_recovery,
    specificity,
    variable_labels,
)
from scircuits.platform.groundtruth.training import TrainSettings as SynthTrainSettings
from scircuits.platform.groundtruth.training import read_info as read_synth_info
from scircuits.platform.groundtruth.training import train_model as train_synth_model
from scircuits.platform.report.document import ReportDocument
from scircuits.version import __version__

if TYPE_CHECKING:
    from scircuits.platform.contract.sae_module import (
        SparseAutoencoder,
        TrainOutput,
        encoder_product,
        fired_counts,
        mse_per_element,
    )


def load_sae(path: Any, plugins: Any = None, device: str = "cpu") -> Any:
    """(SAE module in eval mode, info) from a checkpoint folder, with the SAE variants of ``plugins``.

    The convenience for plugin authors: ``plugins`` defaults to the process-wide plugin set (the
    core's own functions always take the plugin set). Imports torch when called.
    """
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.checkpoint import load_sae as load_checkpoint

    return load_checkpoint(path, plugins if plugins is not None else get_plugins(), device)


def synth_tasks(plugins: Any = None) -> Any:
    """The registry of synthetic tasks (``register_synth_tasks``): ``.get(name)``, ``.names()``.

    ``plugins`` defaults to the process-wide plugin set, as for :func:`load_sae`.
    """
    from scircuits.platform.manager.plugin_set import get_plugins

    return (plugins if plugins is not None else get_plugins()).synth_tasks


_TORCH_NAMES = ("SparseAutoencoder", "TrainOutput", "encoder_product", "fired_counts", "mse_per_element")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from scircuits.platform.contract import sae_module

        return getattr(sae_module, name)
    raise AttributeError(f"module 'scircuits' has no attribute {name!r}")


__all__ = [
    "AUROC_RECOVERED",
    "MIN_LABEL_TOKENS",
    "Ablation",
    "Analysis",
    "AnalysisResult",
    "Benchmark",
    "ConfigError",
    "ControlSamplingError",
    "DataFormatError",
    "Example",
    "FeatureStats",
    "HFModelAdapter",
    "HubLocation",
    "Interval",
    "KTest",
    "Label",
    "LabelRecovery",
    "LoadedModel",
    "ModelAdapter",
    "PluginConflictError",
    "PublishedSAE",
    "RankingRecovery",
    "Recovery",
    "ReportDocument",
    "SAESource",
    "SAEVariant",
    "ScircuitsError",
    "Site",
    "SparseAutoencoder",
    "Specificity",
    "StudyContext",
    "StudyResults",
    "SynthCounterfactual",
    "SynthProblem",
    "SynthTask",
    "SynthTaskBenchmark",
    "SynthTrainSettings",
    "TrainOutput",
    "UnknownNameError",
    "WeightsSource",
    "WeightsUnavailableError",
    "__version__",
    "aligned_features",
    "auroc",
    "base_provenance",
    "best_f1",
    "cache_root",
    "check_device",
    "encoder_product",
    "feature_recovery",
    "file_sha256",
    "fired_counts",
    "hookimpl",
    "load_sae",
    "mse_per_element",
    "now_iso",
    "probe_direction",
    "probe_recovery",
    "random_decoder_features",
    "ranking_recovery",
    "read_synth_info",
    "spearman",
    "spearman_interval",
    "specificity",
    "synth_tasks",
    "top_k_significance",
    "train_synth_model",
    "variable_labels",
]
