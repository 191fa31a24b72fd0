"""``python -m wsync``: the same as the ``wsync`` command."""

from wsync._cli import main

raise SystemExit(main())
