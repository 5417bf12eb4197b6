"""The REST API under ``/api/v1``: routes, request schemas, downloads, health, OpenAPI."""
