"""The Flask-Admin panel at ``/admin``: dashboard, parsers, runs, schedules, tokens, login."""
