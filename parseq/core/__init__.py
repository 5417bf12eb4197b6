"""parseq.core."""
