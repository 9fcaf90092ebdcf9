"""Training: the compiled step, losses, optimizer, loop, checkpoints, metrics, config checks."""
