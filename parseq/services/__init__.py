"""parseq.services."""
