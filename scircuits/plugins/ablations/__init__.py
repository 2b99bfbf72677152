"""Built-in ablations: zero, mean, resample, clamp."""

from scircuits import hookimpl

from .strategies import ClampAblation, MeanAblation, ResampleAblation, ZeroAblation


@hookimpl
def register_ablations(register):
    for ablation in (ZeroAblation(), MeanAblation(), ResampleAblation(), ClampAblation()):
        register(ablation)
