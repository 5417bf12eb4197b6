"""The rules that the admin, the REST API, the CLI, the scheduler and the workers share:
parsers on disk (``registry``), runs and their lifecycle, retries, recording a run's end,
schedules, tokens, sessions, notifications, metrics, live logs, the reaper.

May import: ``parseq.db``, ``parseq.queue`` (to send), ``parseq.storage``, ``parseq.envs``,
``parseq.notebooks``, ``parseq.sandbox`` (plain-value helpers) and ``parseq.core``.
"""
