"""parseq.worker."""
