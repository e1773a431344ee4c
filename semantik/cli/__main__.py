"""``python -m semantik.cli``: the same as the ``semantik`` command."""

from semantik.cli.main import main

main()
