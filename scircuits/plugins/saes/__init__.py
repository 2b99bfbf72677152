"""Built-in SAE variants: relu, topk, batchtopk, jumprelu, gated (registered through the public
plugin API). Importing this package does not import torch."""

from scircuits import hookimpl

from .variants import BUILTIN_VARIANTS


@hookimpl
def register_sae_variants(register):
    for variant_class in BUILTIN_VARIANTS:
        register(variant_class())
