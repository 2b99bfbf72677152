"""The core engine. It knows no concrete model, benchmark, SAE variant or ablation.

Subpackages, each using only those before it (docs/architecture.md, checked by tests/test_structure.py):
``contract`` (what plugins implement), ``manager`` (loading plugins), ``model`` (tracing, splice,
scoring), ``train``, ``collect``, ``common``; then the causal study, the report and the pipeline.
"""
