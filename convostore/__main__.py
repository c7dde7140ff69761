"""``python -m convostore``: the same as the ``convostore`` command."""

from convostore._ops.cli import main

raise SystemExit(main())
