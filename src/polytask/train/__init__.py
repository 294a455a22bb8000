"""Training: the step, evaluation and the epoch loop with checkpoints."""
