"""scircuits: sparse-feature circuit analysis of language models.

Two sets of names live here, and importing ``scircuits`` loads neither (only the error classes):
every name is imported on first access, so ``import scircuits`` stays fast and loads no numpy,
scipy, torch, transformers or nnsight (tests/test_api_import.py checks it).

- The research API (docs/api.md): ``collect``, ``train``, ``ablate``, ``run``, ``circuit``,
  ``compare`` and ``dashboard`` take the stage configs the CLI uses (``CollectConfig``, ...) and return
  typed results (``CollectResult``, ..., ``AblateResult`` being results.json's schema); ``load_run``,
  ``load_study``, ``load_circuit`` and ``load_comparison`` read what they made into the same objects.
- The plugin API (docs/plugins.md): the names a plugin of any family, built-in or third-party,
  imports.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from scircuits.errors import ConfigError, DataFormatError, ScircuitsError
from scircuits.version import __version__

if TYPE_CHECKING:
    from scircuits.api.circuit_result import CircuitResult
    from scircuits.api.results import (
        AblateResult,
        CollectResult,
        CompareResult,
        DashboardResult,
        FeatureView,
        RunResult,
        TrainResult,
    )
    from scircuits.api.stages import (
        ablate,
        circuit,
        collect,
        compare,
        dashboard,
        load_circuit,
        load_comparison,
        load_run,
        load_study,
        run,
        train,
    )
    from scircuits.platform.causal.adjusted import AdjustedContrast, adjusted_contrast, set_log_ratios
    from scircuits.platform.causal.controls import ControlSamplingError
    from scircuits.platform.causal.significance import (
        KTest,
        top_k_significance,
    )
    from scircuits.platform.causal.statistics import (
        Interval,
        spearman,
        spearman_interval,
    )
    from scircuits.platform.circuit.ground_truth import (
        GroundTruthScore,
        circuit_ground_truth,
        score_circuit_ground_truth,
    )
    from scircuits.platform.circuit.results import CircuitResults
    from scircuits.platform.common.device import check_device
    from scircuits.platform.common.logs import set_level as set_log_level
    from scircuits.platform.common.provenance import (
        base_provenance,
        cache_root,
        file_sha256,
        now_iso,
    )
    from scircuits.platform.compare.study import CompareOptions
    from scircuits.platform.config.circuit import CircuitConfig
    from scircuits.platform.config.stages import (
        AblateConfig,
        CollectConfig,
        RunConfig,
        TrainConfig,
    )
    from scircuits.platform.contract.ablations import (
        Ablation,
        FeatureStats,
    )
    from scircuits.platform.contract.analyses import (
        Analysis,
        AnalysisResult,
    )
    from scircuits.platform.contract.benchmarks import (
        Benchmark,
        Example,
    )
    from scircuits.platform.contract.errors import (
        PluginConflictError,
        UnknownNameError,
        WeightsUnavailableError,
    )
    from scircuits.platform.contract.hf_loading import WeightsSource
    from scircuits.platform.contract.hookspecs import hookimpl
    from scircuits.platform.contract.hub_datasets import (
        datasets_cache,
        hub_cache,
        hub_nothing_cached,
        hub_offline,
        hub_unreachable,
    )
    from scircuits.platform.contract.models import (
        HFModelAdapter,
        LoadedModel,
        ModelAdapter,
        Site,
    )
    from scircuits.platform.contract.options import describe_validation_error
    from scircuits.platform.contract.sae_module import (
        SparseAutoencoder,
        TrainOutput,
        encoder_product,
        fired_counts,
        mse_per_element,
    )
    from scircuits.platform.contract.sae_sources import (
        HubLocation,
        PublishedSAE,
        SAESource,
    )
    from scircuits.platform.contract.saes import SAEVariant
    from scircuits.platform.contract.study import StudyContext, StudyResults
    from scircuits.platform.contract.synth_tasks import (
        MIN_LABEL_TOKENS,
        SynthCounterfactual,
        SynthProblem,
        SynthTask,
        SynthTaskBenchmark,
    )
    from scircuits.platform.groundtruth.rotation import rotate_residual, rotate_synth_model
    from scircuits.platform.groundtruth.scoring import (
        AUROC_RECOVERED,
        Label,
        LabelRecovery,
        LogisticFit,
        RankingRecovery,
        Recovery,
        Specificity,
        aligned_features,
        auroc,
        best_f1,
        feature_recovery,
        fit_logistic,
        probe_direction,
        probe_recovery,
        random_decoder_features,
        ranking_recovery,
        specificity,
        variable_labels,
    )
    from scircuits.platform.groundtruth.training import (
        TrainSettings as SynthTrainSettings,
    )
    from scircuits.platform.groundtruth.training import (
        read_info as read_synth_info,
    )
    from scircuits.platform.groundtruth.training import (
        train_model as train_synth_model,
    )
    from scircuits.platform.report.document import ReportDocument

# public name -> (module, attribute), imported on first access
_LAZY: dict[str, tuple[str, str]] = {
    "AUROC_RECOVERED": ("scircuits.platform.groundtruth.scoring", "AUROC_RECOVERED"),
    "AblateConfig": ("scircuits.platform.config.stages", "AblateConfig"),
    "AblateResult": ("scircuits.api.results", "AblateResult"),
    "AdjustedContrast": ("scircuits.platform.causal.adjusted", "AdjustedContrast"),
    "Ablation": ("scircuits.platform.contract.ablations", "Ablation"),
    "Analysis": ("scircuits.platform.contract.analyses", "Analysis"),
    "AnalysisResult": ("scircuits.platform.contract.analyses", "AnalysisResult"),
    "Benchmark": ("scircuits.platform.contract.benchmarks", "Benchmark"),
    "CollectConfig": ("scircuits.platform.config.stages", "CollectConfig"),
    "CollectResult": ("scircuits.api.results", "CollectResult"),
    "CompareOptions": ("scircuits.platform.compare.study", "CompareOptions"),
    "CompareResult": ("scircuits.api.results", "CompareResult"),
    "ControlSamplingError": ("scircuits.platform.causal.controls", "ControlSamplingError"),
    "DashboardResult": ("scircuits.api.results", "DashboardResult"),
    "Example": ("scircuits.platform.contract.benchmarks", "Example"),
    "FeatureStats": ("scircuits.platform.contract.ablations", "FeatureStats"),
    "FeatureView": ("scircuits.api.results", "FeatureView"),
    "HFModelAdapter": ("scircuits.platform.contract.models", "HFModelAdapter"),
    "HubLocation": ("scircuits.platform.contract.sae_sources", "HubLocation"),
    "Interval": ("scircuits.platform.causal.statistics", "Interval"),
    "KTest": ("scircuits.platform.causal.significance", "KTest"),
    "Label": ("scircuits.platform.groundtruth.scoring", "Label"),
    "LabelRecovery": ("scircuits.platform.groundtruth.scoring", "LabelRecovery"),
    "LogisticFit": ("scircuits.platform.groundtruth.scoring", "LogisticFit"),
    "LoadedModel": ("scircuits.platform.contract.models", "LoadedModel"),
    "MIN_LABEL_TOKENS": ("scircuits.platform.contract.synth_tasks", "MIN_LABEL_TOKENS"),
    "ModelAdapter": ("scircuits.platform.contract.models", "ModelAdapter"),
    "PluginConflictError": ("scircuits.platform.contract.errors", "PluginConflictError"),
    "PublishedSAE": ("scircuits.platform.contract.sae_sources", "PublishedSAE"),
    "RankingRecovery": ("scircuits.platform.groundtruth.scoring", "RankingRecovery"),
    "Recovery": ("scircuits.platform.groundtruth.scoring", "Recovery"),
    "ReportDocument": ("scircuits.platform.report.document", "ReportDocument"),
    "RunConfig": ("scircuits.platform.config.stages", "RunConfig"),
    "RunResult": ("scircuits.api.results", "RunResult"),
    "SAESource": ("scircuits.platform.contract.sae_sources", "SAESource"),
    "SAEVariant": ("scircuits.platform.contract.saes", "SAEVariant"),
    "Site": ("scircuits.platform.contract.models", "Site"),
    "SparseAutoencoder": ("scircuits.platform.contract.sae_module", "SparseAutoencoder"),
    "Specificity": ("scircuits.platform.groundtruth.scoring", "Specificity"),
    "StudyContext": ("scircuits.platform.contract.study", "StudyContext"),
    "StudyResults": ("scircuits.platform.contract.study", "StudyResults"),
    "SynthCounterfactual": ("scircuits.platform.contract.synth_tasks", "SynthCounterfactual"),
    "SynthProblem": ("scircuits.platform.contract.synth_tasks", "SynthProblem"),
    "SynthTask": ("scircuits.platform.contract.synth_tasks", "SynthTask"),
    "SynthTaskBenchmark": ("scircuits.platform.contract.synth_tasks", "SynthTaskBenchmark"),
    "SynthTrainSettings": ("scircuits.platform.groundtruth.training", "TrainSettings"),
    "TrainConfig": ("scircuits.platform.config.stages", "TrainConfig"),
    "TrainOutput": ("scircuits.platform.contract.sae_module", "TrainOutput"),
    "TrainResult": ("scircuits.api.results", "TrainResult"),
    "UnknownNameError": ("scircuits.platform.contract.errors", "UnknownNameError"),
    "WeightsSource": ("scircuits.platform.contract.hf_loading", "WeightsSource"),
    "WeightsUnavailableError": ("scircuits.platform.contract.errors", "WeightsUnavailableError"),
    "ablate": ("scircuits.api.stages", "ablate"),
    "circuit": ("scircuits.api.stages", "circuit"),
    "CircuitConfig": ("scircuits.platform.config.circuit", "CircuitConfig"),
    "CircuitResult": ("scircuits.api.circuit_result", "CircuitResult"),
    "CircuitResults": ("scircuits.platform.circuit.results", "CircuitResults"),
    "GroundTruthScore": ("scircuits.platform.circuit.ground_truth", "GroundTruthScore"),
    "circuit_ground_truth": ("scircuits.platform.circuit.ground_truth", "circuit_ground_truth"),
    "score_circuit_ground_truth": ("scircuits.platform.circuit.ground_truth", "score_circuit_ground_truth"),
    "aligned_features": ("scircuits.platform.groundtruth.scoring", "aligned_features"),
    "auroc": ("scircuits.platform.groundtruth.scoring", "auroc"),
    "base_provenance": ("scircuits.platform.common.provenance", "base_provenance"),
    "best_f1": ("scircuits.platform.groundtruth.scoring", "best_f1"),
    "cache_root": ("scircuits.platform.common.provenance", "cache_root"),
    "check_device": ("scircuits.platform.common.device", "check_device"),
    "collect": ("scircuits.api.stages", "collect"),
    "compare": ("scircuits.api.stages", "compare"),
    "dashboard": ("scircuits.api.stages", "dashboard"),
    "describe_validation_error": ("scircuits.platform.contract.options", "describe_validation_error"),
    "encoder_product": ("scircuits.platform.contract.sae_module", "encoder_product"),
    "feature_recovery": ("scircuits.platform.groundtruth.scoring", "feature_recovery"),
    "file_sha256": ("scircuits.platform.common.provenance", "file_sha256"),
    "fit_logistic": ("scircuits.platform.groundtruth.scoring", "fit_logistic"),
    "fired_counts": ("scircuits.platform.contract.sae_module", "fired_counts"),
    "hookimpl": ("scircuits.platform.contract.hookspecs", "hookimpl"),
    "datasets_cache": ("scircuits.platform.contract.hub_datasets", "datasets_cache"),
    "hub_cache": ("scircuits.platform.contract.hub_datasets", "hub_cache"),
    "hub_nothing_cached": ("scircuits.platform.contract.hub_datasets", "hub_nothing_cached"),
    "hub_offline": ("scircuits.platform.contract.hub_datasets", "hub_offline"),
    "hub_unreachable": ("scircuits.platform.contract.hub_datasets", "hub_unreachable"),
    "load_circuit": ("scircuits.api.stages", "load_circuit"),
    "load_comparison": ("scircuits.api.stages", "load_comparison"),
    "load_run": ("scircuits.api.stages", "load_run"),
    "load_study": ("scircuits.api.stages", "load_study"),
    "mse_per_element": ("scircuits.platform.contract.sae_module", "mse_per_element"),
    "now_iso": ("scircuits.platform.common.provenance", "now_iso"),
    "probe_direction": ("scircuits.platform.groundtruth.scoring", "probe_direction"),
    "probe_recovery": ("scircuits.platform.groundtruth.scoring", "probe_recovery"),
    "random_decoder_features": ("scircuits.platform.groundtruth.scoring", "random_decoder_features"),
    "ranking_recovery": ("scircuits.platform.groundtruth.scoring", "ranking_recovery"),
    "read_synth_info": ("scircuits.platform.groundtruth.training", "read_info"),
    "rotate_residual": ("scircuits.platform.groundtruth.rotation", "rotate_residual"),
    "rotate_synth_model": ("scircuits.platform.groundtruth.rotation", "rotate_synth_model"),
    "run": ("scircuits.api.stages", "run"),
    "set_log_level": ("scircuits.platform.common.logs", "set_level"),
    "spearman": ("scircuits.platform.causal.statistics", "spearman"),
    "spearman_interval": ("scircuits.platform.causal.statistics", "spearman_interval"),
    "specificity": ("scircuits.platform.groundtruth.scoring", "specificity"),
    "top_k_significance": ("scircuits.platform.causal.significance", "top_k_significance"),
    "adjusted_contrast": ("scircuits.platform.causal.adjusted", "adjusted_contrast"),
    "set_log_ratios": ("scircuits.platform.causal.adjusted", "set_log_ratios"),
    "train": ("scircuits.api.stages", "train"),
    "train_synth_model": ("scircuits.platform.groundtruth.training", "train_model"),
    "variable_labels": ("scircuits.platform.groundtruth.scoring", "variable_labels"),
}


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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scircuits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AUROC_RECOVERED",
    "MIN_LABEL_TOKENS",
    "AblateConfig",
    "AblateResult",
    "Ablation",
    "AdjustedContrast",
    "Analysis",
    "AnalysisResult",
    "Benchmark",
    "CircuitConfig",
    "CircuitResult",
    "CircuitResults",
    "CollectConfig",
    "CollectResult",
    "CompareOptions",
    "CompareResult",
    "ConfigError",
    "ControlSamplingError",
    "DashboardResult",
    "DataFormatError",
    "Example",
    "FeatureStats",
    "FeatureView",
    "GroundTruthScore",
    "HFModelAdapter",
    "HubLocation",
    "Interval",
    "KTest",
    "Label",
    "LabelRecovery",
    "LoadedModel",
    "LogisticFit",
    "ModelAdapter",
    "PluginConflictError",
    "PublishedSAE",
    "RankingRecovery",
    "Recovery",
    "ReportDocument",
    "RunConfig",
    "RunResult",
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
    "TrainConfig",
    "TrainOutput",
    "TrainResult",
    "UnknownNameError",
    "WeightsSource",
    "WeightsUnavailableError",
    "__version__",
    "ablate",
    "adjusted_contrast",
    "aligned_features",
    "auroc",
    "base_provenance",
    "best_f1",
    "cache_root",
    "check_device",
    "circuit",
    "circuit_ground_truth",
    "collect",
    "compare",
    "dashboard",
    "datasets_cache",
    "describe_validation_error",
    "encoder_product",
    "feature_recovery",
    "file_sha256",
    "fired_counts",
    "fit_logistic",
    "hookimpl",
    "hub_cache",
    "hub_nothing_cached",
    "hub_offline",
    "hub_unreachable",
    "load_circuit",
    "load_comparison",
    "load_run",
    "load_sae",
    "load_study",
    "mse_per_element",
    "now_iso",
    "probe_direction",
    "probe_recovery",
    "random_decoder_features",
    "ranking_recovery",
    "read_synth_info",
    "rotate_residual",
    "rotate_synth_model",
    "run",
    "score_circuit_ground_truth",
    "set_log_level",
    "set_log_ratios",
    "spearman",
    "spearman_interval",
    "specificity",
    "synth_tasks",
    "top_k_significance",
    "train",
    "train_synth_model",
    "variable_labels",
]
