"""The scoring functions, public in ``scircuits`` (kept here for imports that name this module)."""

from scircuits import (
    Label,
    LabelRecovery,
    RankingRecovery,
    Recovery,
    Specificity,
    aligned_features,
    auroc,
    best_f1,
    feature_recovery,
    probe_recovery,
    random_decoder_features,
    ranking_recovery,
    specificity,
    variable_labels,
)

__all__ = [
    "Label",
    "LabelRecovery",
    "RankingRecovery",
    "Recovery",
    "Specificity",
    "aligned_features",
    "auroc",
    "best_f1",
    "feature_recovery",
    "probe_recovery",
    "random_decoder_features",
    "ranking_recovery",
    "specificity",
    "variable_labels",
]
