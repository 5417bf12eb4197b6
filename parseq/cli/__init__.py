"""parseq.cli."""
