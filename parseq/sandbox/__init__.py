"""parseq.sandbox."""
