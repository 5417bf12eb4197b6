"""parseq.web."""
