"""The ``wsync`` command line: parses arguments and wires commands to the library.

A placeholder until the client exists: ``demo`` says plainly that it cannot run yet.
Wiring only; no protocol or connection logic lives here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    from wsync import __version__

    parser = argparse.ArgumentParser(
        prog="wsync",
        description="A synchronous, threaded WebSocket client SDK.",
    )
    parser.add_argument("--version", action="version", version=f"wsync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "demo",
        help="show reconnection and queue flushing against an embedded server (not built yet)",
        description="Show reconnection and queue flushing against an embedded server.",
    )
    return parser


def _demo() -> int:
    print("wsync demo: the client is not built yet; this placeholder exits 0")
    return 0


_COMMANDS: Final[dict[str, Callable[[], int]]] = {"demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wsync`` command line and return its exit code.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 on success; 2 for a usage error (argparse has already printed why).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exit_:
        # --help, --version and usage errors: report the code instead of leaving the caller.
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        return 1
    return _COMMANDS[args.command]()
