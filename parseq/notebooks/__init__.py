"""Notebook parsers: validation and the command that runs one (``validate``), and the
executors that run inside the parser's own interpreter (``nbexec``: standard library only;
``nbkernel``: a Jupyter kernel), with their pieces and the HTML rendering of results.

May import: ``parseq.core`` (the executors import only their own siblings).
"""
