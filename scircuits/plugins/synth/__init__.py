"""Built-in plugin ``synth``: small transformers trained here on tasks with known variables.

Registers the synthetic tasks ``addition`` and ``logic`` (family ``synth_tasks``), their benchmarks
``synth-addition`` and ``synth-logic`` (examples carry per-token ground truth and counterfactuals in
``meta``), the models of the same names (the folders ``scircuits synth train`` writes), the analysis
``ground-truth`` (scores a study on any benchmark whose examples declare variables) and the command
``scircuits synth``. The trainer and the scoring functions are public (``scircuits``), so a third
party's task (hook ``register_synth_tasks``) trains and is scored the same way.
Importing this package imports no torch.
"""

from scircuits import SynthTaskBenchmark, hookimpl

from .models import SynthModelAdapter
from .tasks import BUILTIN_TASKS


@hookimpl
def register_synth_tasks(register):
    for task in BUILTIN_TASKS:
        register(task())


@hookimpl
def register_benchmarks(register):
    for task in BUILTIN_TASKS:
        register(SynthTaskBenchmark(task()))


@hookimpl
def register_analyses(register):
    from .analysis import GroundTruthAnalysis

    register(GroundTruthAnalysis())


@hookimpl
def register_models(register):
    for task in BUILTIN_TASKS:
        register(SynthModelAdapter.for_task(task.name))


@hookimpl
def register_commands(cli):
    from .cli import synth  # click only; the training code loads when the command runs

    cli.add_command(synth)
