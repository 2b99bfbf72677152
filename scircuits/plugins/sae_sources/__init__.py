"""Built-in SAE sources: SAELens' release table (``saelens:``) and the published layouts of Gemma
Scope, Llama Scope and sparsify. Importing this package does not import torch."""

from scircuits import hookimpl

from .layouts import GemmaScope, LlamaScope, Sparsify
from .releases import SAELensReleases


@hookimpl
def register_sae_sources(register):
    for source in (SAELensReleases(), GemmaScope(), LlamaScope(), Sparsify()):
        register(source)
