"""Per-task baselines trained outside polytask's networks, on polytask's own data handling."""
