"""SAE training: the optimiser loop and stage, DDP, checkpoints, metrics, validation on planted
dictionaries."""
