"""parseq.scheduler."""
