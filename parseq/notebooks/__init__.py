"""parseq.notebooks."""
