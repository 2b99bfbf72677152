"""Built-in analyses of the causal study, registered like any plugin's: baseline and
reconstruction, ranking, sweeps with controls, exact per-feature ablation, faithfulness, logit
effects, feature contexts and probes of declared per-token variables (in that order)."""

from scircuits import hookimpl

from .baseline import Baseline
from .exact import ExactAblation
from .faithfulness import Faithfulness
from .features import FeatureContexts, LogitEffects
from .probes import Probes
from .ranking import Ranking
from .sweeps import Sweeps


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
        Probes(),
    ):
        register(analysis)
