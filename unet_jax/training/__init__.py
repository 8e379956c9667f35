"""A training run: its plan, the jitted step and losses, batch sampling, the loop, the run
directory with its checkpoints, and the presets."""
