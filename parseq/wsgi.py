"""WSGI entry point for production servers: ``gunicorn 'parseq.wsgi:app'``."""

from parseq.app import create_app

app = create_app()
