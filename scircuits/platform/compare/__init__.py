"""Comparing the features of two or more runs' SAEs (``scircuits compare``).

Modules, each with one job:
  correlation  streaming Pearson correlation between two SAEs' latents (sufficient statistics)
  matching     max-correlation matches both ways, one-to-one (Hungarian) matches, distributions
"""
