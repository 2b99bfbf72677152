"""The causal study: evaluation data and the shared per-batch machinery (``evaluation``, ``study``),
the context analyses run with (``context``), the registered analyses in order (``registry``), the
runner (``runner``), statistics (``statistics``), the results schema and artifacts (``results``) and
the ablate stage (``stage``)."""
