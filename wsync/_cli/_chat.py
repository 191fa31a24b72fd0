"""``wsync chat``: lines read from stdin are sent; responses and state changes show as they come.

Lines typed while the connection is down are queued and sent after it comes back. Without a
URL an embedded echo server is started (extra ``wsync-client[server]``), which ``/drop`` and
``/restart`` can fault. Wiring only, on the public ``wsync.Client``; imports no other command.

On a terminal the ``> `` prompt stays at the bottom: a response or state change that arrives
while the user types is written above it, and the prompt (and what was typed so far, when
``readline`` is available) is drawn again. Text from the server is made :func:`printable`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING, Final

import attrs

from wsync import (
    Backoff,
    Client,
    ClientClosed,
    ConnectionState,
    MessageFuture,
    Stats,
    Status,
    WsyncError,
)
from wsync._cli._console import (
    DEFAULT_TIMEOUT,
    EXIT_OK,
    STATUS_STYLE,
    CommandFailed,
    Console,
    classify,
    describe_state,
    import_server,
    is_terminal,
    make_client,
    printable,
)

if TYPE_CHECKING:
    from wsync.testing import ProtocolServer

__all__ = ["CHAT_EMBEDDED_HELP", "CHAT_HELP", "PROMPT", "format_stats", "run", "run_chat"]

CHAT_HELP: Final = (
    "type a line and press Enter to send it; commands: /stats /reconnect /help /quit"
)
CHAT_EMBEDDED_HELP: Final = "embedded server only: /drop (reset the connection), /restart [S]"
PROMPT: Final = "> "


def format_stats(console: Console, stats: Stats) -> str:
    """``Client.stats()`` for people: ``sent 3 · received 3 · ... · last rtt 0.4 ms``."""
    parts = []
    for name, value in attrs.asdict(stats).items():
        label = name.replace("_", " ")
        if name == "last_rtt":
            value = "-" if value is None else f"{value * 1000:.1f} ms"
        parts.append(f"{label} {value}")
    return console.glyph(" · ", ", ").join(parts)


class _Chat:
    """Lines in, responses out, state changes inline."""

    def __init__(self, out: Console, server: ProtocolServer | None) -> None:
        self.out = out
        self.server = server
        self.client: Client | None = None

    def on_state(self, state: ConnectionState) -> None:
        dot = self.out.glyph("●", "*")
        self.out.line(f"{self.out.style(dot, STATUS_STYLE[state.status])} "
                      f"{describe_state(self.out, state)}")

    def on_done(self, sent_at: float, future: MessageFuture) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, ClientClosed):
            return  # said once, at exit
        if error is not None:
            mark = self.out.style(self.out.glyph("✗", "x"), "red")
            self.out.line(f"{mark} {printable(str(error))}")
            return
        response = future.result()
        ms = (time.monotonic() - sent_at) * 1000
        arrow = self.out.style(self.out.glyph("←", "<"), "green")
        self.out.line(f"{arrow} {printable(response.content)}  "
                      f"{self.out.style(f'({ms:.0f} ms)', 'dim')}")

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        client = self.client
        assert client is not None
        name, _, rest = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/stats":
            self.out.line(format_stats(self.out, client.stats()))
        elif name == "/reconnect":
            client.reconnect()
        elif name == "/drop" and self.server is not None:
            self.out.line(f"server: dropped {self.server.drop_connections()} connection(s)")
        elif name == "/restart" and self.server is not None:
            try:
                down_for = float(rest or "2")
                self.server.restart(down_for=down_for, wait=False)
            except (ValueError, RuntimeError) as exc:
                self.out.line(f"cannot restart: {exc}")
            else:
                self.out.line(f"server: down for {down_for:g} s; keep typing, lines are queued")
        else:
            self.out.line(CHAT_HELP)
            if self.server is not None:
                self.out.line(CHAT_EMBEDDED_HELP)
        return True

    def send(self, line: str) -> None:
        client = self.client
        assert client is not None
        future = client.send(line)
        future.add_done_callback(functools.partial(self.on_done, time.monotonic()))
        if client.state.status is not Status.CONFIRMED:
            queued = client.stats().queued
            self.out.line(self.out.style(f"(queued: {queued} waiting for the connection)", "dim"))


class _Input:
    """stdin, one line at a time; on a terminal, behind a prompt that other lines keep intact."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.interactive = is_terminal(sys.stdin) and is_terminal(out.stream)
        self._readline: ModuleType | None = None
        if self.interactive:
            try:
                # input() then edits lines and keeps history, and what was typed can be redrawn.
                import readline
            except ImportError:  # not on every platform; the prompt alone is redrawn
                pass
            else:
                self._readline = readline

    def _prompt_and_typed(self) -> str:
        # Runs on whichever thread writes the line (wsync-callbacks mostly) while the main
        # thread waits in input(): readline only reads a copy of its buffer here.
        typed = self._readline.get_line_buffer() if self._readline is not None else ""
        return PROMPT + typed

    def read(self) -> str | None:
        """One line without its newline; None at end of input."""
        if self.interactive:
            with self.out.prompting(self._prompt_and_typed):
                try:
                    return input(PROMPT)
                except EOFError:
                    return None
        line = sys.stdin.readline()
        return line.rstrip("\r\n") if line else None


def run_chat(
    out: Console,
    url: str | None,
    *,
    client_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cafile: str | None = None,
) -> int:
    """Send each line read from stdin, show responses and states as they come.

    Args:
        out: where every line goes.
        url: the server; None starts an embedded echo server (``wsync-client[server]``).
        client_id: the client id; None: a random one.
        timeout: seconds for connecting, and for the last responses at end of input.
        cafile: PEM file of CA certificates to trust for ``wss://``.

    Returns:
        0 when the user leaves (end of input, ``/quit``, Ctrl-C).

    Raises:
        CommandFailed: bad URL, or the first connection failed (its exit code and reason).
    """
    server: ProtocolServer | None = None
    if url is None:
        server = import_server()().start()
        url = server.url
    chat = _Chat(out, server)
    stdin = _Input(out)
    try:
        client = make_client(
            url,
            cafile=cafile,
            client_id=client_id,
            on_state_change=chat.on_state,
            backoff=Backoff(initial=0.5, max_delay=5.0, max_attempts=None),
            connect_timeout=min(timeout, DEFAULT_TIMEOUT),
        )
        chat.client = client
        where = "an embedded echo server at " if server is not None else ""
        out.line(f"wsync chat: {where}{client.url} as client {client.client_id}")
        try:
            try:
                client.connect(timeout=timeout)
            except WsyncError as exc:
                raise CommandFailed(*classify(exc, timeout=timeout, url=client.url)) from exc
            client.flush(timeout=1.0)  # lets the state lines above print first
            out.line(out.style(CHAT_HELP + "; Ctrl-D or Ctrl-C to leave", "dim"))
            while True:
                line = stdin.read()
                if line is None:
                    # End of input: give the last lines their responses, then leave.
                    client.flush(timeout=timeout)
                    break
                if not line.strip():
                    continue
                if line.startswith("/"):
                    if not chat.command(line.strip()):
                        break
                    continue
                chat.send(line)
        except KeyboardInterrupt:
            out.line()
        finally:
            unanswered = client.stats()
            client.close()
        left = unanswered.queued + unanswered.in_flight
        if left:
            out.line(f"left with {left} message(s) unanswered")
        return EXIT_OK
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``wsync chat``: 0 when the user leaves; see :func:`run_chat`."""
    return run_chat(
        out, args.url, client_id=args.client_id, timeout=args.timeout, cafile=args.cafile
    )
