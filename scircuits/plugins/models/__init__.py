"""Built-in models (registered through the public plugin API)."""

from scircuits import hookimpl


@hookimpl
def register_models(register):
    pass
