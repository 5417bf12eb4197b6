"""parseq.storage."""
