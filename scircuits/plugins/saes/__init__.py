"""Built-in saes (registered through the public plugin API)."""

from scircuits import hookimpl


@hookimpl
def register_sae_variants(register):
    pass
