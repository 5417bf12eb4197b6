"""``python -m parseq.cli``: the ``parseq`` command."""

from parseq.cli.main import main

main()
