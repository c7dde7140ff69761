"""``python -m convostore``: the same as the ``convostore`` command."""

from .cli import main

raise SystemExit(main())
