"""Running a loaded model: one nnsight wrapper (tracing), the SAE splice, sequences and scoring."""
