"""The core engine. It knows no concrete model, benchmark, SAE variant or ablation."""
