"""The ``parseq`` command (``python -m parseq.cli`` too): the all-in-one server, each service
alone, one-off runs, users, tokens, migrations, envs. Imports of the commands' dependencies sit
inside the commands: ``parseq --help`` should not load Flask-Admin or boto3.

May import: everything.
"""
