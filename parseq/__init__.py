"""Parseq: run, schedule and collect the results of web parsers written in Python.

Kept free of imports so that importing a submodule (the SDK in a parser's process) never pulls
Flask or the database layer in. The app factory is :func:`parseq.web.app.create_app`.
"""

__version__ = "0.1.0"
