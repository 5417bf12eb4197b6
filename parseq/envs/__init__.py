"""parseq.envs."""
