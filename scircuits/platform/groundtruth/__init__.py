"""Ground truth: training small models on synthetic tasks (the ``synth_tasks`` plugin family) and
scoring a study's features against the tasks' known variables. Exported from ``scircuits``."""
