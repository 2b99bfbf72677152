"""Built-in analyses of the causal study, registered like any plugin's: baseline and
reconstruction, ranking, sweeps with controls, exact per-feature ablation, faithfulness, logit
effects and feature contexts (in that order)."""

from scircuits import hookimpl
from scircuits.plugins.analyses.baseline import Baseline
from scircuits.plugins.analyses.exact import ExactAblation
from scircuits.plugins.analyses.faithfulness import Faithfulness
from scircuits.plugins.analyses.features import FeatureContexts, LogitEffects
from scircuits.plugins.analyses.ranking import Ranking
from scircuits.plugins.analyses.sweeps import Sweeps


@hookimpl
def register_analyses(register):
    for analysis in (
        Baseline(),
        Ranking(),
        Sweeps(),
        ExactAblation(),
        Faithfulness(),
        LogitEffects(),
        FeatureContexts(),
    ):
        register(analysis)
