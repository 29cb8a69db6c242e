"""The training stage: a run's loop, its checkpoints, compiled steps and memory plan, and the classification task's data."""
