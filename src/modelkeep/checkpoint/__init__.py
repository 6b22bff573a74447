"""Checkpoints during training: callbacks, retention, async writer, exact resume."""
