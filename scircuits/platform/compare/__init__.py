"""Comparing the features of two or more runs' SAEs (``scircuits compare``; docs/compare.md).

Modules, each with one job:
  correlation       streaming Pearson correlation between two SAEs' latents (sufficient statistics)
  matching          max-correlation matches both ways, one-to-one (Hungarian) matches, distributions
  alignment         pairing token positions of two tokenizations on character spans
  geometry          RSA of matched decoder directions, shuffled-pairing p-value; random rotations
  causal_agreement  exact-effect correlation of matched pairs, top-k overlap
  sources           paired activation chunks from stores or traced models; running top contexts
  runs              reading a run directory
  internals         every scircuits-internal function compare calls (re-point these after moves)
  schema            the typed results (compare/results.json)
  study             the orchestration: references (ceiling, floors), pairs, results
  report            report.md and figures
"""
