"""Built-in model adapters, registered through the public plugin API like any third-party plugin.

Importing this package imports no torch or transformers: adapters load them when they load weights.
"""

from scircuits import hookimpl
from scircuits.plugins.models.declarations import HF_ADAPTERS
from scircuits.plugins.models.generic import GenericHFAdapter
from scircuits.plugins.models.smollm2 import SmolLM2Adapter


@hookimpl
def register_models(register):
    register(SmolLM2Adapter())
    for adapter in HF_ADAPTERS:
        register(adapter)
    register(GenericHFAdapter())
