"""``wsync serve``: run the test server (an echo) in this terminal until Ctrl-C or SIGTERM.

Wiring only: the server is ``wsync.testing.ProtocolServer`` (extra ``wsync-client[server]``).
Imports no other command. Each message is printed as one line, flushed at once (so
``wsync serve > log`` is live), with the client's content made :func:`printable`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import ssl
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Final

from wsync._cli._console import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    Console,
    import_server,
    printable,
)

__all__ = ["DEFAULT_PORT", "run"]

DEFAULT_PORT: Final = 8765
_SHOWN: Final = 80  # characters of a message shown per line


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


def _is_loopback(host: str) -> bool:
    """The test server's own rule: ``localhost`` or a loopback address needs no opt-in."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if (certfile is None) != (keyfile is None):
        raise CommandFailed(EXIT_USAGE, "--certfile and --keyfile go together")
    if certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise CommandFailed(EXIT_USAGE, f"cannot load the certificate: {exc}") from exc
    return context


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Serve until interrupted; 0 when stopped by Ctrl-C or SIGTERM.

    Raises:
        CommandFailed: the extra is missing, the certificate cannot be used, or the port
            cannot be listened on.
    """
    server_class = import_server()
    context = _server_context(args.certfile, args.keyfile)
    host = args.host.strip("[]")
    remote = not _is_loopback(host)

    def handler(content: str, client_id: str) -> str:
        if not args.quiet:
            shown = printable(content)
            if len(shown) > _SHOWN:
                shown = shown[: _SHOWN - 3] + "..."
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
        raise CommandFailed(EXIT_FAILED, f"cannot listen on {where}: {reason}") from exc
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
