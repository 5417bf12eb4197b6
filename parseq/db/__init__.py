"""parseq.db."""
