"""Starting and supervising one process under limits: resource limits, the user it runs as,
the spawn (with the ``prlimit``/``setpriv`` launcher or a fork server), supervision of its
output, timeout and cancel. Plain values in, plain values out.

May import: ``parseq.core``.
"""
