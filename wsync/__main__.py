"""``python -m wsync``: the same as the ``wsync`` command; it only calls the CLI's ``main``."""

from wsync._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
