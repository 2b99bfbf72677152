"""The collect stage: a benchmark's sequences traced at one site into an activation store."""
