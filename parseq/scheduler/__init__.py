"""The scheduler service: turns due schedule occurrences into pending runs (``firing``),
re-sends pending runs the broker never got (``sweeper``), one active leader at a time.

May import: ``parseq.services`` and everything below it; not ``web``, ``worker``, ``cli``.
"""
