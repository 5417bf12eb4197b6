"""parseq.web.admin."""
