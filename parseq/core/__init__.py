"""The vocabulary every package shares: settings (``config``, ``PARSEQ_*`` only here), the
exception tree (``errors``), str enums, a run's argv rules, secret redaction, thread pools.

May import: nothing of Parseq's (the standard library and small pure helpers only).
"""
