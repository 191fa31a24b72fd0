"""What every ``wsync`` command shares: the console, exit codes, failure classification, helpers.

The leaf of the ``wsync._cli`` package: commands import it, and it imports no command and no
argument parsing. Everything a command prints goes through a :class:`Console` (a stream, a
lock, colour only on a terminal), so ``main(argv)`` runs in-process in tests and the demo can
write to a ``StringIO``. Text that came from a server (responses, error frames, refusals)
goes through :func:`printable` first: a server must not be able to move the cursor, retitle
the terminal or crash the command with an unencodable character.

Failures are told apart by their type and ``ConnectError.phase``, never by message text. It
uses the public ``wsync`` API only (plus the two internal error types the tree names); the
test server (``wsync.testing``, extra ``wsync-client[server]``) is imported only on demand.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import urlsplit

from wsync import Client, ConnectionState, Status
from wsync._errors import (
    ConnectError,
    ConnectTimeout,
    HandshakeError,
    ServerError,
    TLSError,
    UpgradeRejected,
)

if TYPE_CHECKING:
    from wsync.testing import ProtocolServer

__all__ = [
    "DEFAULT_TIMEOUT",
    "EXIT_BAD_URL",
    "EXIT_CODES",
    "EXIT_CODES_HELP",
    "EXIT_FAILED",
    "EXIT_HANDSHAKE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_TLS",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "SERVER_HINT",
    "STATUS_STYLE",
    "CommandFailed",
    "Console",
    "classify",
    "describe_state",
    "import_server",
    "make_client",
    "printable",
    "printable_json",
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

#: Every exit code, by name (each distinct).
EXIT_CODES: Final = {
    "EXIT_OK": EXIT_OK,
    "EXIT_FAILED": EXIT_FAILED,
    "EXIT_USAGE": EXIT_USAGE,
    "EXIT_BAD_URL": EXIT_BAD_URL,
    "EXIT_UNREACHABLE": EXIT_UNREACHABLE,
    "EXIT_TLS": EXIT_TLS,
    "EXIT_HANDSHAKE": EXIT_HANDSHAKE,
    "EXIT_TIMEOUT": EXIT_TIMEOUT,
    "EXIT_INTERRUPTED": EXIT_INTERRUPTED,
}

DEFAULT_TIMEOUT: Final = 10.0
SERVER_HINT: Final = "this command needs the test server: pip install 'wsync-client[server]'"

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


# --- text from a server ---------------------------------------------------------------------------

# C0 controls but tab (ESC starts every terminal escape sequence; CR and LF would break the
# one-line-per-message output), DEL, C1 controls (0x9b is a one-byte CSI), the two Unicode line
# breaks (str.splitlines() splits on them) and lone surrogates (UTF-8 cannot encode them).
_UNSAFE: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED: Final = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe to print on a terminal, on one line, in any encoding that has ASCII.

    Control characters and lone surrogates become Python-style escapes (ESC is ``\\x1b``,
    a newline ``\\n``, a lone surrogate ``\\udc80``, as ``backslashreplace`` writes them);
    everything else, tabs and non-ASCII letters included, is kept. A backslash is kept as it
    is, so the escaping is for reading, not for parsing: ``wsync send --json`` is exact.
    """
    return _UNSAFE.sub(_escape, text)


# JSON allows these raw; a terminal does not (C1 controls), nor UTF-8 (lone surrogates).
_JSON_UNSAFE: Final = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable_json(value: dict[str, Any]) -> str:
    """``value`` as one line of JSON, non-ASCII kept, with nothing a terminal would act on.

    JSON escapes C0 controls itself; DEL, C1 controls, U+2028/U+2029 and lone surrogates
    become ``\\uXXXX`` escapes too, which decode back to the same text.
    """
    text = json.dumps(value, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# --- output ---------------------------------------------------------------------------------------

_STYLES: Final = {
    "bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33",
    "blue": "34", "magenta": "35", "cyan": "36",
}
_ERASE_LINE: Final = "\r\x1b[K"  # back to column 0, clear to the end of the line


def wants_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set (https://no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


def is_terminal(stream: object) -> bool:
    """Tell whether ``stream`` is a terminal; never raises."""
    isatty = getattr(stream, "isatty", None)
    try:
        return callable(isatty) and bool(isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


class Console:
    """Where a command writes: whole lines, one at a time, from any thread.

    Each line is written and flushed at once, so output is live even into a file or a pipe
    (``wsync serve > log``). A character the stream cannot encode is written as a
    ``backslashreplace`` escape instead of raising.

    Args:
        stream: the text stream (``sys.stdout``, a ``StringIO``).
        colour: use ANSI colours; None decides from the stream (a TTY, no ``NO_COLOR``).
    """

    def __init__(self, stream: TextIO, *, colour: bool | None = None) -> None:
        self.stream = stream
        self.colour = wants_colour(stream) if colour is None else colour
        self._encoding: str | None = getattr(stream, "encoding", None)
        try:
            "✓✗●→←·…".encode(self._encoding or "utf-8")
            self.unicode = True
        except UnicodeEncodeError:
            self.unicode = False
        except LookupError:  # an encoding Python does not know: write as the stream does
            self.unicode, self._encoding = False, None
        # One line at a time: callbacks write from wsync-callbacks while the main thread does.
        # Guards the stream, `broken` and `_prompt`.
        self._lock = threading.Lock()
        self.broken = False  # the reader went away (`wsync demo | head`): write no more
        self._prompt: Callable[[], str] | None = None

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
        """Write ``text`` and a newline, and flush.

        While a prompt is shown (:meth:`prompting`), the line is written above it: the
        prompt line is erased, the line written, and the prompt drawn again.
        """
        with self._lock:
            if self.broken:
                return
            data = text + "\n"
            if self._prompt is not None:
                data = _ERASE_LINE + data + self._prompt()
            if self._encoding is not None:
                data = data.encode(self._encoding, "backslashreplace").decode(self._encoding)
            try:
                self.stream.write(data)
                self.stream.flush()
            except BrokenPipeError:
                self.broken = True  # not an error of ours; the command carries on quietly

    def prompting(self, redraw: Callable[[], str]) -> _Prompting:
        """While in this context, lines written go above the prompt that ``redraw()`` returns.

        For a terminal only: the caller shows the prompt itself (``input(prompt)``) inside
        the context; ``redraw`` runs with the console's lock held, on the writing thread.
        """
        return _Prompting(self, redraw)

    def _set_prompt(self, redraw: Callable[[], str] | None) -> None:
        with self._lock:
            self._prompt = redraw

    def detach_if_broken(self) -> None:
        """After a broken pipe, point the stream's descriptor at /dev/null.

        So that the interpreter's last flush at exit does not fail with a traceback.
        """
        if not self.broken:
            return
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            return
        try:
            os.dup2(devnull, self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass  # not a real file (a StringIO): nothing will flush it at exit
        finally:
            os.close(devnull)


class _Prompting:
    """The context manager :meth:`Console.prompting` returns."""

    def __init__(self, console: Console, redraw: Callable[[], str]) -> None:
        self._console = console
        self._redraw = redraw

    def __enter__(self) -> None:
        self._console._set_prompt(self._redraw)

    def __exit__(self, *exc_info: object) -> None:
        self._console._set_prompt(None)


# --- failures -------------------------------------------------------------------------------------


class CommandFailed(Exception):
    """A command failed; ``main`` prints ``reason`` as one line and exits with ``code``.

    Raise it ``from`` the error it reports: ``--log-level debug`` shows that chain.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (or contexts), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _phases(exc: BaseException) -> set[str]:
    return {e.phase for e in _chain(exc) if isinstance(e, ConnectError) and e.phase is not None}


def _timed_out(exc: BaseException) -> bool:
    """A timeout anywhere in the chain, the machine's confirm timeout included."""
    timeouts = (TimeoutError, concurrent.futures.TimeoutError)  # distinct types on Python 3.10
    return any(isinstance(e, timeouts) for e in _chain(exc)) or "confirm" in _phases(exc)


def classify(
    exc: BaseException, *, timeout: float | None = None, url: str | None = None
) -> tuple[int, str]:
    """Map an error to ``(exit code, one-line reason)``, by type and ``ConnectError.phase``.

    First match wins: TLS (5), a refused upgrade or handshake (6), a ``connect(timeout=...)``
    that ran out while every attempt failed (4, saying why they failed), any other timeout
    (7), any other ``ConnectError`` (4), a server's error frame (1), anything else (1).

    Args:
        exc: the error.
        timeout: the seconds the user gave, to report a ``ConnectTimeout`` in their figures
            rather than the client's own measure of them.
        url: the (redacted) URL, named in a timeout's reason.

    Returns:
        The exit code and a reason that is safe to print (see :func:`printable`).
    """
    chain = list(_chain(exc))
    phases = _phases(exc)
    # The client's give-up error says "could not connect: <why>"; the CLI says that itself.
    reason = printable(str(exc).removeprefix("could not connect: ") or type(exc).__name__)
    if "tls" in phases or any(isinstance(e, (TLSError, ssl.SSLError)) for e in chain):
        return EXIT_TLS, f"tls failure: {reason}"
    if "handshake" in phases or any(
        isinstance(e, (HandshakeError, UpgradeRejected)) for e in chain
    ):
        return EXIT_HANDSHAKE, f"handshake refused: {reason}"
    if isinstance(exc, ConnectTimeout):
        if timeout is not None:
            reason = f"not confirmed within {timeout:g} s" + (f": {url}" if url else "")
        cause = exc.__cause__
        if (
            isinstance(cause, ConnectError)
            and not _timed_out(cause)
            and "cancelled" not in _phases(cause)
        ):
            # Every attempt failed until the time ran out: why they failed is the news.
            why = printable(str(cause))
            return EXIT_UNREACHABLE, f"could not connect: {why} (gave up: {reason})"
    if _timed_out(exc):
        return EXIT_TIMEOUT, f"timed out: {reason}"
    if isinstance(exc, ConnectError):
        return EXIT_UNREACHABLE, f"could not connect: {reason}"
    if isinstance(exc, ServerError):
        return EXIT_FAILED, reason
    return EXIT_FAILED, f"error: {reason}"


# --- helpers --------------------------------------------------------------------------------------


def make_client(url: str, *, cafile: str | None = None, **options: Any) -> Client:
    """A ``wsync.Client`` for ``url``; a bad URL or ``--cafile`` becomes :class:`CommandFailed`.

    The client validates the URL itself (one validation, one set of messages).

    Args:
        url: the URL the user gave.
        cafile: PEM file of CA certificates to trust, for ``wss://`` only.
        options: passed on to ``Client``; the caller's own, so only the URL can be wrong.

    Raises:
        CommandFailed: exit 3 for a bad URL, exit 2 for a ``--cafile`` that cannot be used.
    """
    context = None
    if cafile is not None:
        scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
        if scheme == "ws":
            raise CommandFailed(EXIT_USAGE, "--cafile is for wss:// URLs only")
        if scheme == "wss":  # any other scheme: the client says what is wrong with the URL
            try:
                context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise CommandFailed(EXIT_USAGE, f"cannot use --cafile {cafile}: {exc}") from exc
    try:
        return Client(url, ssl_context=context, **options)
    except (TypeError, ValueError) as exc:
        raise CommandFailed(EXIT_BAD_URL, f"bad URL: {printable(str(exc))}") from exc


def import_server() -> type[ProtocolServer]:
    """The test server class, or :class:`CommandFailed` saying which extra to install."""
    try:
        from wsync.testing import ProtocolServer
    except ImportError as exc:
        raise CommandFailed(EXIT_FAILED, SERVER_HINT) from exc
    return ProtocolServer


STATUS_STYLE: Final = {
    Status.CONNECTING: "yellow",
    Status.PENDING: "yellow",
    Status.CONFIRMED: "green",
    Status.DISCONNECTED: "red",
    Status.CLOSED: "dim",
}


def describe_state(console: Console, state: ConnectionState) -> str:
    """One readable phrase for a state, e.g. ``disconnected (attempt 2): connection refused``."""
    status = console.style(state.status.value, STATUS_STYLE[state.status], "bold")
    if state.attempt and state.status is not Status.CONFIRMED:
        status += f" (attempt {state.attempt})"
    if state.status is Status.CONFIRMED and state.conversation_id:
        status += console.style(f"  conversation {printable(state.conversation_id[:8])}", "dim")
    if state.error and state.status is Status.DISCONNECTED:
        status += f": {printable(state.error)}"
    return status
