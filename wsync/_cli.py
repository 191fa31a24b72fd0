"""The ``wsync`` command line: parses arguments and wires commands to the library.

``serve`` and ``send`` here; ``demo`` and ``chat`` in ``_demo.py``. Wiring only: no protocol or
connection logic lives here. Everything is written through a ``Console`` (a stream, a lock,
colour only on a terminal), so ``main(argv)`` runs in-process in tests and the demo can write
to a ``StringIO``. The test server (``wsync.testing``, extra ``wsync[server]``) is imported
only by the commands that start one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Final, TextIO

from wsync._backoff import Backoff
from wsync._errors import (
    ConnectError,
    HandshakeError,
    ServerError,
    TLSError,
    UpgradeRejected,
    WsyncError,
)
from wsync._handshake import is_loopback_host, validate_url
from wsync._values import validate_client_id

if TYPE_CHECKING:
    from wsync.testing import ProtocolServer

__all__ = [
    "EXIT_BAD_URL",
    "EXIT_FAILED",
    "EXIT_HANDSHAKE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_TLS",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CommandFailed",
    "Console",
    "classify",
    "main",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # anything else: a server 'error' answer, a missing extra, a port in use
EXIT_USAGE: Final = 2  # bad arguments (argparse)
EXIT_BAD_URL: Final = 3
EXIT_UNREACHABLE: Final = 4  # refused, unreachable, DNS failure, connection lost for good
EXIT_TLS: Final = 5
EXIT_HANDSHAKE: Final = 6  # the server refused the WebSocket upgrade or the wsync handshake
EXIT_TIMEOUT: Final = 7
EXIT_INTERRUPTED: Final = 130  # Ctrl-C during demo or send (chat and serve exit 0)

DEFAULT_PORT: Final = 8765
DEFAULT_TIMEOUT: Final = 10.0
_SERVER_EXTRA: Final = "this command needs the test server: pip install 'wsync[server]'"

EXIT_CODES_HELP: Final = f"""\
exit codes:
  {EXIT_OK}    success (every message answered)
  {EXIT_FAILED}    other failure (e.g. the server answered a message with an error frame)
  {EXIT_USAGE}    bad arguments
  {EXIT_BAD_URL}    bad URL (not ws:// or wss://, no host, bad port)
  {EXIT_UNREACHABLE}    could not connect: refused, unreachable, DNS failure, connection lost
  {EXIT_TLS}    TLS failure: certificate not trusted, wrong host name, TLS handshake failed
  {EXIT_HANDSHAKE}    the server refused the WebSocket upgrade or the wsync handshake
  {EXIT_TIMEOUT}    timed out (no confirm or no response within --timeout)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
Each failure prints one line on stderr saying why."""


# --- output -------------------------------------------------------------------------------------

_STYLES: Final = {
    "bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33",
    "blue": "34", "magenta": "35", "cyan": "36",
}



def wants_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set (https://no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Console:
    """Where a command writes: whole lines, one at a time, from any thread.

    Args:
        stream: the text stream (``sys.stdout``, a ``StringIO``).
        colour: use ANSI colours; None decides from the stream (a TTY, no ``NO_COLOR``).
    """

    def __init__(self, stream: TextIO, *, colour: bool | None = None) -> None:
        self.stream = stream
        self.colour = wants_colour(stream) if colour is None else colour
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            "✓✗●→·…".encode(encoding)
            self.unicode = True
        except (UnicodeEncodeError, LookupError):
            self.unicode = False
        self._lock = threading.Lock()  # one line at a time: callbacks write too
        self.broken = False  # the reader went away (`wsync demo | head`): write no more

    def style(self, text: str, *styles: str) -> str:
        """``text`` in the given styles (names in ``_STYLES``) when colour is on."""
        if not self.colour or not styles:
            return text
        codes = ";".join(_STYLES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def glyph(self, fancy: str, plain: str) -> str:
        """``fancy`` if the stream can encode it, else ``plain``."""
        return fancy if self.unicode else plain

    def line(self, text: str = "") -> None:
        """Write ``text`` and a newline, and flush (output is live, even into a pipe)."""
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except BrokenPipeError:
                self.broken = True  # not an error of ours; the command carries on quietly

    def detach_if_broken(self) -> None:
        """After a broken pipe, point the stream's descriptor at /dev/null.

        So that the interpreter's last flush at exit does not fail with a traceback.
        """
        if not self.broken:
            return
        with contextlib.suppress(AttributeError, OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)


# --- failures -----------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_timeout(exc: BaseException) -> bool:
    # The machine's "no connect_confirm within connect_timeout" is a plain ConnectError.
    return any(
        isinstance(e, TimeoutError) or "no connect_confirm within" in str(e) for e in _chain(exc)
    )


def classify(exc: BaseException) -> tuple[int, str]:
    """Map an error to ``(exit code, one-line reason)``. Reasons never carry content."""
    chain = list(_chain(exc))
    reason = str(exc).removeprefix("could not connect: ") or type(exc).__name__
    if any(isinstance(e, (TLSError, ssl.SSLError)) for e in chain):
        return EXIT_TLS, f"tls failure: {reason}"
    if any(isinstance(e, (HandshakeError, UpgradeRejected)) for e in chain):
        return EXIT_HANDSHAKE, f"handshake refused: {reason}"
    cause = exc.__cause__
    if isinstance(exc, TimeoutError) and isinstance(cause, ConnectError) and not _is_timeout(cause):
        # connect(timeout=...) ran out while every attempt was refused: say why they failed.
        return EXIT_UNREACHABLE, f"could not connect: {cause} (gave up: {reason})"
    if _is_timeout(exc) or isinstance(exc, concurrent.futures.TimeoutError):
        return EXIT_TIMEOUT, f"timed out: {reason}"
    if isinstance(exc, ConnectError):
        return EXIT_UNREACHABLE, f"could not connect: {reason}"
    if isinstance(exc, ServerError):
        return EXIT_FAILED, reason
    return EXIT_FAILED, f"error: {reason}"


class CommandFailed(Exception):
    """A command failed; ``main`` prints ``reason`` as one line and exits with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def checked_url(url: str) -> str:
    try:
        return validate_url(url)
    except (TypeError, ValueError) as exc:
        raise CommandFailed(EXIT_BAD_URL, f"bad URL: {exc}") from None


def client_ssl_context(cafile: str | None, url: str) -> ssl.SSLContext | None:
    if cafile is None:
        return None
    if not url.startswith("wss://"):
        raise CommandFailed(EXIT_USAGE, "--cafile is for wss:// URLs only")
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CommandFailed(EXIT_USAGE, f"cannot use --cafile {cafile}: {exc}") from None


def import_server() -> type[ProtocolServer]:
    try:
        from wsync.testing import ProtocolServer
    except ImportError:
        raise CommandFailed(EXIT_FAILED, _SERVER_EXTRA) from None
    return ProtocolServer


# --- serve --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM raise KeyboardInterrupt like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(args: argparse.Namespace, out: Console) -> int:
    server_class = import_server()
    if (args.certfile is None) != (args.keyfile is None):
        raise CommandFailed(EXIT_USAGE, "--certfile and --keyfile go together")
    context = None
    if args.certfile is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise CommandFailed(EXIT_USAGE, f"cannot load the certificate: {exc}") from None
    host = args.host.strip("[]")
    remote = not is_loopback_host(f"ws://[{host}]:1" if ":" in host else f"ws://{host}:1")

    def handler(content: str, client_id: str) -> str:
        if not args.quiet:
            first = content.splitlines()[0] if content else ""
            shown = first if len(first) <= 80 and first == content else first[:77] + "..."
            out.line(f"{out.style(client_id, 'cyan')}: {shown}")
        return content

    server = server_class(
        args.host, args.port, handler=handler, ssl_context=context, allow_remote=remote
    )
    try:
        server.start()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f"{args.host}:{args.port}"
        raise CommandFailed(EXIT_FAILED, f"cannot listen on {where}: {reason}") from None
    try:
        out.line(f"wsync test server listening on {out.style(server.url, 'bold')}")
        if remote:
            out.line("warning: listening beyond loopback; this test server has no "
                     "authentication and keeps every message in memory")
        out.line(out.style("echoing every message; Ctrl-C to stop", "dim"))
        with _sigterm_interrupts(), contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    finally:
        server.stop()
    out.line("stopped")
    return EXIT_OK


# --- send ---------------------------------------------------------------------------------------


def _print_response(out: Console, response: object, *, as_json: bool) -> None:
    from wsync.protocol import Response, format_timestamp

    assert isinstance(response, Response)
    if as_json:
        out.line(json.dumps({
            "messageId": response.message_id,
            "content": response.content,
            "timestamp": format_timestamp(response.timestamp),
        }, ensure_ascii=False))
    else:
        out.line(response.content)


def _send(args: argparse.Namespace, out: Console, err: Console) -> int:
    from wsync._client import Client

    url = checked_url(args.url)
    context = client_ssl_context(args.cafile, url)
    timeout: float = args.timeout
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        return max(0.0, deadline - time.monotonic())

    client = Client(
        url,
        client_id=args.client_id,
        backoff=Backoff(initial=0.5, max_attempts=args.retries),
        # Longer than the whole budget, so that connect(timeout=...) is what times out.
        connect_timeout=args.timeout + 1.0,
        ssl_context=context,
    )
    try:
        try:
            client.connect(timeout=remaining())
        except WsyncError as exc:
            raise CommandFailed(*classify(exc)) from None
        futures = [client.send(message) for message in args.messages]
        code = EXIT_OK
        for index, future in enumerate(futures):
            try:
                _print_response(out, future.result(remaining()), as_json=args.json)
            except concurrent.futures.TimeoutError:
                left = len(futures) - index
                raise CommandFailed(
                    EXIT_TIMEOUT,
                    f"timed out: no response to {left} of {len(futures)} messages "
                    f"within {args.timeout:g} s: {client.url}",
                ) from None
            except ServerError as exc:
                err.line(f"wsync send: {exc}")
                code = code or EXIT_FAILED
            except WsyncError as exc:
                raise CommandFailed(*classify(exc)) from None
        return code
    finally:
        client.close()


CHAT_HELP: Final = (
    "type a line and press Enter to send it; commands: /stats /reconnect /help /quit"
)
CHAT_EMBEDDED_HELP: Final = "embedded server only: /drop (reset the connection), /restart [S]"


# --- chat and demo (in _demo.py) ---------------------------------------------------------------


def _chat(args: argparse.Namespace, out: Console) -> int:
    from wsync._demo import run_chat

    return run_chat(
        out, args.url, client_id=args.client_id, timeout=args.timeout, cafile=args.cafile
    )


def _demo(args: argparse.Namespace, out: Console) -> int:
    import_server()
    from wsync._demo import run_demo

    return run_demo(out, messages=args.messages, down_for=args.down_for)


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


_LOG_LEVELS: Final = ("debug", "info", "warning", "error")

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


def _build_parser() -> argparse.ArgumentParser:
    from wsync import __version__

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="wsync", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=raw
    )
    parser.add_argument("--version", action="version", version=f"wsync {__version__}")
    parser.add_argument(
        "--log-level", choices=_LOG_LEVELS, default="warning",
        help="how much of wsync's own logging to show on stderr (default: warning)",
    )
    # Also accepted after the command; SUPPRESS keeps a value given before it.
    logging_flags = argparse.ArgumentParser(add_help=False)
    logging_flags.add_argument(
        "--log-level", choices=_LOG_LEVELS, default=argparse.SUPPRESS,
        help="how much of wsync's own logging to show on stderr (default: warning)",
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
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT,
                       help=f"TCP port; 0 picks a free one (default: {DEFAULT_PORT})")
    serve.add_argument("--certfile", metavar="FILE", help="PEM certificate: serve wss://")
    serve.add_argument("--keyfile", metavar="FILE", help="PEM private key of --certfile")
    serve.add_argument("--quiet", action="store_true", help="do not print each message")

    send = commands.add_parser(
        "send", parents=[logging_flags, client_flags], formatter_class=raw,
        help="send messages and print each response",
        description="Connect, send each MESSAGE, print each response on its own line (in\n"
                    "the order of the messages), close. --timeout bounds the whole command.",
        epilog="examples:\n"
               "  wsync send ws://127.0.0.1:8765 hello world\n"
               "  wsync send ws://127.0.0.1:8765 hello --json\n"
               "  wsync send wss://example.test/ws ping --cafile ca.pem --timeout 3\n\n"
               + EXIT_CODES_HELP,
    )
    send.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the server")
    send.add_argument("messages", metavar="MESSAGE", nargs="+", help="message text")
    send.add_argument("--json", action="store_true",
                      help="print JSON lines: {messageId, content, timestamp}")
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
               + CHAT_HELP + "\n" + CHAT_EMBEDDED_HELP,
    )
    chat.add_argument("url", metavar="URL", nargs="?", default=None,
                      help="ws:// or wss:// URL (default: start an embedded server)")
    return parser


@contextlib.contextmanager
def _logging_to_stderr(level: str) -> Iterator[None]:
    """Show wsync's log records on stderr for the length of a command, then stop."""
    handler = logging.StreamHandler(sys.stderr)
    detailed = level in ("debug", "info")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if detailed
        else "wsync: %(levelname)s: %(message)s"
    ))
    wsync_logger = logging.getLogger("wsync")
    previous = wsync_logger.level
    wsync_logger.addHandler(handler)
    wsync_logger.setLevel(level.upper())
    try:
        yield
    finally:
        wsync_logger.removeHandler(handler)
        wsync_logger.setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wsync`` command line and return its exit code.

    Output goes to ``sys.stdout`` and ``sys.stderr`` as they are when it is called.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit code; see ``EXIT_CODES_HELP`` (0 success, 2 bad arguments, ...).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exit_:
        # --help, --version and usage errors: report the code instead of leaving the caller.
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        return EXIT_USAGE
    out, err = Console(sys.stdout), Console(sys.stderr)
    commands: dict[str, Callable[[], int]] = {
        "demo": lambda: _demo(args, out),
        "serve": lambda: _serve(args, out),
        "send": lambda: _send(args, out, err),
        "chat": lambda: _chat(args, out),
    }
    with _logging_to_stderr(args.log_level):
        try:
            return commands[args.command]()
        except CommandFailed as failure:
            err.line(f"wsync {args.command}: {failure.reason}")
            return failure.code
        except KeyboardInterrupt:
            err.line(f"wsync {args.command}: interrupted")
            return EXIT_INTERRUPTED
        finally:
            out.detach_if_broken()
