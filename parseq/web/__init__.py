"""HTTP: the Flask app factory, security headers, login and token throttling, the REST API
(``web.api``) and the admin panel (``web.admin``).

May import: ``parseq.services`` and everything below it; not ``worker``, ``scheduler``,
``cli``.
"""
