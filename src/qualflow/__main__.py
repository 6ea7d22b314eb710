"""``python -m qualflow``: the same as the ``qualflow`` command."""

from qualflow.cli import main

main()
