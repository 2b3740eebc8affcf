"""``python -m fedmedlora.cli``: the same as the ``fedmedlora`` command."""

from fedmedlora.cli import main

main()
