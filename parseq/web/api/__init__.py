"""parseq.web.api."""
