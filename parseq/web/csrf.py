"""CSRF protection over the whole app: Flask-WTF's ``CSRFProtect``, one instance shared by
the admin (which installs it, ``web.admin.auth``) and the REST API, whose blueprints exempt
themselves (``web.api.base``): bearer tokens, not cookies, so no cross-site request can carry
one."""

from __future__ import annotations

from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
