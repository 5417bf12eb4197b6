"""Running a claimed run: the Dramatiq actors and workers, preparing and supervising the run's
process, its heartbeat (watchdog), the files it leaves, uploads that survive an outage, SDK
shipping, and the worker process's own heartbeat row.

May import: ``parseq.services`` and everything below it; not ``web``, ``scheduler``, ``cli``.
"""
