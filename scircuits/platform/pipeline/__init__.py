"""`scircuits run`: the stages as units (``stages``), the run (``run``), pipeline.json (``state``)."""
