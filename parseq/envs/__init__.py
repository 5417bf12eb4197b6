"""Per-parser virtualenvs: requirement parsing and policy, the env cache keyed by requirement
set, and the build (virtualenv, then uv or pip).

May import: ``parseq.core``.
"""
