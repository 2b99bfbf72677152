"""The results-file JSON rule now lives in the contract (``scircuits.platform.contract.jsonvalues``),
which the contract's ``StudyResults`` needs; this name stays for code that imports it from here."""

from scircuits.platform.contract.jsonvalues import dumps, finite_or_none, load_file, validate_nulls_as_nan

__all__ = ["dumps", "finite_or_none", "load_file", "validate_nulls_as_nan"]
