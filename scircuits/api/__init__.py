"""The Python API (docs/api.md): the stage entry points (``stages``) and their typed results
(``results``), exported from ``scircuits`` itself."""
