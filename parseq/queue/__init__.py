"""parseq.queue."""
