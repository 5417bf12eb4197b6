"""WSGI entry point for production servers: ``gunicorn 'parseq.web.wsgi:app'``."""

from parseq.web.app import create_app

app = create_app()
