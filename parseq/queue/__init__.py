"""Sending messages: the broker (picked by URL scheme) and the two messages Parseq sends, by
actor name. No actor code (that is ``parseq.worker.actors``).

May import: ``parseq.core``.
"""
