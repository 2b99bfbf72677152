"""Feature circuits across several SAE sites: nodes, edges, held-out faithfulness and completeness,
exact checks (docs/circuits.md)."""
