"""The commands that show a client at work: ``wsync demo`` and ``wsync chat``.

``demo``: a server crash in the middle of a stream, and nothing lost.

Starts a ``ProtocolServer`` in-process, connects a ``Client``, streams messages, crashes the
server (``restart(down_for=..., wait=False)``: every connection reset, the port refusing),
keeps sending while it is down, lets it come back, and checks every future against the
content it must carry. Wiring and narration only; it uses the public API and nothing else.

``chat``: lines read from stdin are sent; responses and state changes are shown as they
come, and lines typed while the connection is down are queued.

Every line goes through a ``Console``: the client's callbacks write from ``wsync-callbacks``,
the main thread writes too, and the demo's server watcher from ``wsync-demo-watch``.
"""

from __future__ import annotations

import collections
import functools
import sys
import threading
import time
from typing import TYPE_CHECKING, Final

from wsync._backoff import Backoff
from wsync._cli import (
    CHAT_EMBEDDED_HELP,
    CHAT_HELP,
    DEFAULT_TIMEOUT,
    EXIT_OK,
    CommandFailed,
    Console,
    checked_url,
    classify,
    client_ssl_context,
    import_server,
)
from wsync._client import Client
from wsync._errors import ClientClosed, WsyncError
from wsync._futures import MessageFuture
from wsync._values import ConnectionState, Status

if TYPE_CHECKING:
    from wsync.testing import ProtocolServer

__all__ = ["run_chat", "run_demo"]

RESPONSE_DELAY: Final = 0.4  # the server answers late, so some messages are in flight at the crash
SEND_INTERVAL: Final = 0.25
BACKOFF: Final = Backoff(initial=0.2, factor=1.5, max_delay=1.0, max_attempts=None)
WAIT: Final = 10.0  # bound on connecting and on the final flush: the demo ends in any case


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
        status += console.style(f"  conversation {state.conversation_id[:8]}", "dim")
    if state.error and state.status is Status.DISCONNECTED:
        status += f": {state.error}"
    return status


def _answer(content: str, client_id: str) -> str:
    return f"ack: {content}"


class _Demo:
    def __init__(self, console: Console) -> None:
        self.out = console
        self.started = time.monotonic()
        self.client: Client | None = None
        self.crashed_at: float | None = None

    # --- narration --------------------------------------------------------------------------

    def say(self, who: str, text: str, style: str = "") -> None:
        elapsed = time.monotonic() - self.started
        stamp = self.out.style(f"{elapsed:5.2f}s", "dim")
        label = self.out.style(f"{who:<6}", style or "bold")
        self.out.line(f"{stamp}  {label}  {text}")

    def depth(self) -> str:
        assert self.client is not None
        stats = self.client.stats()
        return self.out.style(f"queued {stats.queued}, in flight {stats.in_flight}", "dim")

    def on_state(self, state: ConnectionState) -> None:
        """on_state_change: runs on the client's callbacks thread, in order."""
        text = describe_state(self.out, state)
        if state.status is Status.DISCONNECTED and state.error and self.client is not None:
            nxt = state.attempt + 1
            text += self.out.style(f"; attempt {nxt} in {BACKOFF.delay(nxt):.2f} s", "dim")
        if state.status is Status.CONFIRMED and self.crashed_at is not None:
            assert self.client is not None
            stats = self.client.stats()
            unanswered = stats.queued + stats.in_flight
            text += self.out.style(f"  reconnected: writing the {unanswered} unanswered", "green")
        self.say("state", text, STATUS_STYLE[state.status])

    def on_done(self, number: int, sent_at: float, future: MessageFuture) -> None:
        """A future's done-callback: the callbacks thread (or the sender, if already done)."""
        if future.cancelled() or future.exception() is not None:
            mark = self.out.style(self.out.glyph("✗", "x"), "red")
            self.say("answer", f"{mark} #{number:02d} failed: {future.exception()}", "red")
            return
        ms = (time.monotonic() - sent_at) * 1000
        mark = self.out.style(self.out.glyph("✓", "ok"), "green")
        content = future.result().content
        self.say("answer", f"{mark} #{number:02d} {content!r} after {ms:.0f} ms   {self.depth()}",
                 "green")

    # --- the run ------------------------------------------------------------------------------

    def run(self, messages: int, down_for: float) -> int:
        from wsync.testing import ProtocolServer

        server = ProtocolServer(handler=_answer)
        server.response_delay = RESPONSE_DELAY
        server.start()
        watcher: threading.Thread | None = None
        finished = threading.Event()
        try:
            self.say("server", f"listening on {server.url}; answers 'ack: <message>' after "
                               f"{RESPONSE_DELAY:g} s", "magenta")
            client = Client(server.url, client_id="wsync-demo", backoff=BACKOFF,
                            heartbeat_interval=1.0, on_state_change=self.on_state)
            self.client = client
            try:
                client.connect(timeout=WAIT)
                client.flush(timeout=WAIT)  # lets the state lines print before the first send
                sent: list[tuple[str, MessageFuture]] = []
                crash_after = max(1, messages // 3)
                for number in range(1, messages + 1):
                    content = f"message {number:02d}"
                    future = client.send(content)
                    sent.append((content, future))
                    future.add_done_callback(
                        functools.partial(self.on_done, number, time.monotonic())
                    )
                    self.say("send", f"#{number:02d} {content!r}   {self.depth()}", "blue")
                    if number == crash_after:
                        self.say("server", self.out.style(
                            f"CRASH: every connection reset, port refusing for {down_for:g} s;"
                            " the client keeps sending", "red", "bold"), "magenta")
                        self.crashed_at = time.monotonic()
                        server.restart(down_for=down_for, wait=False)
                        watcher = threading.Thread(
                            target=self._watch, args=(server, finished),
                            name="wsync-demo-watch", daemon=True,
                        )
                        watcher.start()
                    time.sleep(SEND_INTERVAL)
                drained = client.flush(timeout=WAIT)
                stats = client.stats()
            finally:
                client.close()
            return self._summary(sent, drained, stats.sent, stats.reconnects, server)
        finally:
            finished.set()
            server.stop()
            if watcher is not None:
                watcher.join(WAIT)

    def _watch(self, server: ProtocolServer, finished: threading.Event) -> None:
        back = server.wait_until(lambda: server.listening or finished.is_set(), timeout=WAIT)
        if back and not finished.is_set():
            self.say("server", "back up on the same port", "magenta")

    def _summary(
        self,
        sent: list[tuple[str, MessageFuture]],
        drained: bool,
        writes: int,
        reconnects: int,
        server: ProtocolServer,
    ) -> int:
        answered = lost = 0
        for content, future in sent:
            if future.done() and not future.cancelled() and future.exception() is None:
                response = future.result()
                if response.message_id == future.message_id and response.content == (
                    _answer(content, "")
                ):
                    answered += 1
                    continue
            lost += 1
        arrivals = server.received
        firsts: list[str] = []
        seen: collections.Counter[str] = collections.Counter()
        for received in arrivals:
            if not seen[received.message_id]:
                firsts.append(received.message_id)
            seen[received.message_id] += 1
        in_order = firsts == [future.message_id for _, future in sent]
        elapsed = time.monotonic() - self.started
        dot = self.out.glyph(" · ", ", ")
        verdict = self.out.style(f"lost {lost}", "green" if lost == 0 else "red", "bold")
        self.out.line()
        self.out.line(self.out.style("summary", "bold") + ": " + dot.join([
            f"sent {len(sent)}", f"answered {answered}", f"resent {max(0, writes - len(sent))}",
            verdict, f"reconnects {reconnects}", f"{elapsed:.1f} s",
        ]))
        repeats = len(arrivals) - len(seen)
        self.out.line(
            f"the server saw {len(arrivals)} arrivals ({repeats} repeated with the same "
            f"messageId: at-least-once); first arrivals {'in' if in_order else 'NOT in'} "
            "send order"
        )
        if lost == 0 and drained:
            self.out.line(self.out.style("every message got its own response", "green"))
            return 0
        self.out.line(self.out.style(f"{lost} message(s) without their response", "red"))
        return 1


def run_demo(console: Console, *, messages: int = 16, down_for: float = 2.0) -> int:
    """Run the demo, writing to ``console``; return 0 only if nothing was lost.

    Needs the ``wsync[server]`` extra. Takes about ``messages * 0.25 + 1`` seconds.

    Args:
        console: where every line goes.
        messages: how many messages to send; the server crashes after a third of them.
        down_for: seconds the server stays down.
    """
    return _Demo(console).run(messages, down_for)


# --- chat -----------------------------------------------------------------------------------


class _Chat:
    """``wsync chat``: lines in, responses out, state changes inline."""

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
            self.out.line(f"{mark} {error}")
            return
        response = future.result()
        ms = (time.monotonic() - sent_at) * 1000
        arrow = self.out.style(self.out.glyph("←", "<"), "green")
        self.out.line(f"{arrow} {response.content}  {self.out.style(f'({ms:.0f} ms)', 'dim')}")

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        client = self.client
        assert client is not None
        name, _, rest = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/stats":
            self.out.line(str(client.stats()))
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


def _read_line(interactive: bool) -> str | None:
    """One line from stdin without its newline; None at EOF."""
    if interactive:
        try:
            return input("> ")
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
    """``wsync chat``: send each line read from stdin, show responses and states as they come.

    Args:
        out: where every line goes.
        url: the server; None starts an embedded echo server (needs ``wsync[server]``).
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
    else:
        url = checked_url(url)
    chat = _Chat(out, server)
    interactive = sys.stdin.isatty()
    try:
        client = Client(
            url,
            client_id=client_id,
            on_state_change=chat.on_state,
            backoff=Backoff(initial=0.5, max_delay=5.0, max_attempts=None),
            connect_timeout=min(timeout, DEFAULT_TIMEOUT),
            ssl_context=client_ssl_context(cafile, url),
        )
        chat.client = client
        where = "an embedded echo server at " if server is not None else ""
        out.line(f"wsync chat: {where}{client.url} as client {client.client_id}")
        try:
            try:
                client.connect(timeout=timeout)
            except WsyncError as exc:
                raise CommandFailed(*classify(exc)) from None
            client.flush(timeout=1.0)  # lets the state lines above print first
            out.line(out.style(CHAT_HELP + "; Ctrl-D or Ctrl-C to leave", "dim"))
            while True:
                line = _read_line(interactive)
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
