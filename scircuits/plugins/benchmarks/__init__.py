"""Built-in benchmarks (registered through the public plugin API)."""

from scircuits import hookimpl


@hookimpl
def register_benchmarks(register):
    pass
