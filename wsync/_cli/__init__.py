"""The ``wsync`` command line: ``main(argv) -> exit code`` (the console script and ``-m wsync``).

The package's layout is its architecture::

    _main.py     the argument parser and main(): runs one command, maps failures to exit codes
    _console.py  the leaf: Console, exit codes, failure classification, shared helpers
    _demo.py     wsync demo      (one module per command; none imports another)
    _serve.py    wsync serve
    _send.py     wsync send
    _chat.py     wsync chat

Wiring only, on wsync's public API: no protocol or connection logic lives here.
"""

from __future__ import annotations

from wsync._cli._main import main

__all__ = ["main"]
