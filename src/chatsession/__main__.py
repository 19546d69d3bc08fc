"""``python -m chatsession``: the same as the ``chatsession`` command."""

from chatsession.cli import main

raise SystemExit(main())
