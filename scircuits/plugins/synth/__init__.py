"""Built-in plugin ``synth``: small transformers trained here on tasks with known variables.

Registers the analysis ``ground-truth`` (scores a study on these benchmarks against the known
variables), the benchmarks ``synth-addition`` and ``synth-logic`` (examples carry per-token ground
truth and counterfactual pairs in ``meta``) and the models of the same names (the folders
``scircuits synth train`` writes). ``scoring`` holds the feature- and causal-recovery measures.
Importing this package imports no torch.
"""

from scircuits import hookimpl

from .benchmarks import SynthBenchmark
from .models import SynthModelAdapter

TASK_NAMES = ("addition", "logic")


@hookimpl
def register_benchmarks(register):
    for task in TASK_NAMES:
        register(SynthBenchmark(task))


@hookimpl
def register_analyses(register):
    from .analysis import GroundTruthAnalysis

    register(GroundTruthAnalysis())


@hookimpl
def register_models(register):
    for task in TASK_NAMES:
        register(SynthModelAdapter.for_task(task))


@hookimpl
def register_commands(cli):
    from .cli import synth  # click only; the training code loads when the command runs

    cli.add_command(synth)
