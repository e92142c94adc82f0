"""Training through the adapter, evaluation over a loader, checkpoints."""
