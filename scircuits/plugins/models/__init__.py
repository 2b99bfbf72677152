"""Built-in model adapters, registered through the public plugin API like any third-party plugin.

Importing this package imports no torch or transformers: adapters load them when they load weights.
"""

from scircuits import hookimpl

from .declarations import HF_ADAPTERS
from .generic import GenericHFAdapter
from .smollm2 import SmolLM2Adapter


@hookimpl
def register_models(register):
    register(SmolLM2Adapter())
    for adapter in HF_ADAPTERS:
        register(adapter)
    register(GenericHFAdapter())
