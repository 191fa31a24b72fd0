"""``wsync``'s entry point: the argument parser and ``main(argv)``, which runs one command.

Parses arguments, shows wsync's log records on stderr for the length of the command, runs
the command's ``run(args, out, err)`` and turns a :class:`CommandFailed` or Ctrl-C into one
line on stderr and an exit code. No command logic lives here, and no command imports this.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import wsync
from wsync._cli import _chat, _demo, _send, _serve
from wsync._cli._console import (
    DEFAULT_TIMEOUT,
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandFailed,
    Console,
    printable,
)
from wsync._values import validate_client_id

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

_COMMANDS: Final[dict[str, Callable[[argparse.Namespace, Console, Console], int]]] = {
    "demo": _demo.run,
    "serve": _serve.run,
    "send": _send.run,
    "chat": _chat.run,
}


# --- arguments ----------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {text}")
    return value


def _client_id(text: str) -> str:
    try:
        return validate_client_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# "none" (the default): the command reports every outcome itself, in one line; wsync's own
# records (a WARNING per failed attempt, the ERROR when it gives up) would say it twice.
_LOG_LEVELS: Final = ("none", "debug", "info", "warning", "error")

_DESCRIPTION: Final = """\
wsync: a synchronous, threaded WebSocket client that does not lose messages.

Messages sent while the connection is down are queued, resent after the client
reconnects (same messageId), and answered exactly as if nothing had happened."""

_EPILOG: Final = f"""\
examples:
  wsync demo                                 see a server crash and nothing lost
  wsync serve --port 8765                    run the test server in this terminal
  wsync send ws://127.0.0.1:8765 hello       send a message, print the response
  wsync chat                                 chat with an embedded echo server

'wsync COMMAND --help' explains each command.

{EXIT_CODES_HELP}"""


def build_parser() -> argparse.ArgumentParser:
    """The ``wsync`` argument parser: every command, its options, examples and exit codes."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="wsync", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=raw
    )
    parser.add_argument("--version", action="version", version=f"wsync {wsync.__version__}")
    parser.add_argument(
        "--log-level", choices=_LOG_LEVELS, default="none",
        help="how much of wsync's own logging to show on stderr, e.g. warning for every "
        "failed attempt (default: none: the command reports outcomes itself)",
    )
    # Also accepted after the command; SUPPRESS keeps a value given before it.
    logging_flags = argparse.ArgumentParser(add_help=False)
    logging_flags.add_argument(
        "--log-level", choices=_LOG_LEVELS, default=argparse.SUPPRESS,
        help="how much of wsync's own logging to show on stderr (default: none)",
    )
    client_flags = argparse.ArgumentParser(add_help=False)
    client_flags.add_argument(
        "--client-id", type=_client_id, default=None, metavar="ID",
        help="the client id to connect with (default: a random UUID)",
    )
    client_flags.add_argument(
        "--timeout", type=_positive_float, default=DEFAULT_TIMEOUT, metavar="S",
        help=f"seconds to wait at most (default: {DEFAULT_TIMEOUT:g})",
    )
    client_flags.add_argument(
        "--cafile", metavar="FILE", default=None,
        help="for wss://: trust the CA certificates in this PEM file "
             "(default: the system's trust store)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", parents=[logging_flags], formatter_class=raw,
        help="watch a server crash mid-stream and every message still arrive",
        description="Start an embedded test server and a client, stream messages, crash the\n"
                    "server mid-stream, keep sending while it is down, bring it back, and\n"
                    "check that every message got its right response. Takes a few seconds.",
        epilog="Exits 0 only when nothing was lost.",
    )
    demo.add_argument("--messages", type=_count, default=16, metavar="N",
                      help="messages to send (default: 16)")
    demo.add_argument("--down-for", type=_positive_float, default=2.0, metavar="S",
                      help="seconds the server stays down (default: 2)")

    serve = commands.add_parser(
        "serve", parents=[logging_flags], formatter_class=raw,
        help="run the wsync test server (echo) until Ctrl-C",
        description="Run wsync's test server (wsync.testing.ProtocolServer), which answers\n"
                    "every message with its own content, until Ctrl-C or SIGTERM.\n"
                    "For trying the client out and for tests, not for production.",
        epilog="examples:\n"
               "  wsync serve\n"
               "  wsync serve --port 9000 --quiet\n"
               "  wsync serve --certfile cert.pem --keyfile key.pem   (serves wss://)",
    )
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=_serve.DEFAULT_PORT,
                       help=f"TCP port; 0 picks a free one (default: {_serve.DEFAULT_PORT})")
    serve.add_argument("--certfile", metavar="FILE", help="PEM certificate: serve wss://")
    serve.add_argument("--keyfile", metavar="FILE", help="PEM private key of --certfile")
    serve.add_argument("--quiet", action="store_true", help="do not print each message")

    send = commands.add_parser(
        "send", parents=[logging_flags, client_flags], formatter_class=raw,
        help="send messages and print each response",
        description="Connect, send each MESSAGE, print each response on its own line (in\n"
                    "the order of the messages), close. --timeout bounds the whole command.\n\n"
                    "Line N of the output is about message N. A message the server answered\n"
                    "with an error leaves its line empty (--json: {messageId, error}), and\n"
                    "stderr says 'message N of M failed: ...'; the exit code is then 1.\n"
                    "Control characters from the server are shown escaped (ESC as \\x1b,\n"
                    "a newline as \\n), so each response is one line.",
        epilog="examples:\n"
               "  wsync send ws://127.0.0.1:8765 hello world\n"
               "  wsync send ws://127.0.0.1:8765 hello --json\n"
               "  wsync send wss://example.test/ws ping --cafile ca.pem --timeout 3\n\n"
               + EXIT_CODES_HELP,
    )
    send.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the server")
    send.add_argument("messages", metavar="MESSAGE", nargs="+", help="message text")
    send.add_argument("--json", action="store_true",
                      help="print JSON lines: {messageId, content, timestamp}, "
                           "or {messageId, error} for a message that failed")
    send.add_argument("--retries", type=_count, default=0, metavar="N",
                      help="connection attempts to make after a failed one (default: 0)")

    chat = commands.add_parser(
        "chat", parents=[logging_flags, client_flags], formatter_class=raw,
        help="type lines, see responses and connection changes",
        description="Interactive: each line you type is sent; responses and connection\n"
                    "state changes are shown as they happen. Lines typed while the\n"
                    "connection is down are queued and sent after it comes back.\n"
                    "Without URL, an embedded echo server is started.",
        epilog="examples:\n"
               "  wsync chat\n"
               "  wsync chat ws://127.0.0.1:8765 --client-id alice\n\n"
               + _chat.CHAT_HELP + "\n" + _chat.CHAT_EMBEDDED_HELP,
    )
    chat.add_argument("url", metavar="URL", nargs="?", default=None,
                      help="ws:// or wss:// URL (default: start an embedded server)")
    return parser


@contextlib.contextmanager
def _logging_to_stderr(level: str) -> Iterator[None]:
    """Show wsync's log records on stderr for the length of a command, then stop.

    With ``none``, nothing: not even Python's last-resort handler prints them.
    """
    handler: logging.Handler = (
        logging.NullHandler() if level == "none" else logging.StreamHandler(sys.stderr)
    )
    detailed = level in ("debug", "info")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if detailed
        else "wsync: %(levelname)s: %(message)s"
    ))
    package_logger = logging.getLogger(wsync.__name__)  # every wsync module's logger is below
    previous = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.CRITICAL + 1 if level == "none" else level.upper())
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wsync`` command line and return its exit code.

    Output goes to ``sys.stdout`` and ``sys.stderr`` as they are when it is called.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit code; see ``EXIT_CODES_HELP`` (0 success, 2 bad arguments, ...).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exit_:
        # --help, --version and usage errors: report the code instead of leaving the caller.
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        return EXIT_USAGE
    out, err = Console(sys.stdout), Console(sys.stderr)
    run = _COMMANDS[args.command]
    with _logging_to_stderr(args.log_level):
        try:
            return run(args, out, err)
        except CommandFailed as failure:
            logger.debug("wsync %s failed", args.command, exc_info=failure.__cause__)
            err.line(f"wsync {args.command}: {printable(failure.reason)}")
            return failure.code
        except KeyboardInterrupt:
            err.line(f"wsync {args.command}: interrupted")
            return EXIT_INTERRUPTED
        finally:
            out.detach_if_broken()
