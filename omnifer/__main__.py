"""``python -m omnifer`` is the ``omnifer`` command."""

from omnifer.cli import main

main()
